"""Sending one message over SMTP (stdlib smtplib), and telling a passing failure from a permanent one.

A passing failure (the server is down or unreachable, a 4xx answer, a TLS or login problem that a person can
fix in the settings) is retried by the outbox with backoff; a permanent one (a 5xx answer to this message's
sender, recipients or content) is recorded on the message and shown in `kb status`. The password is only
ever given to `login()`: no error message or log line contains it.
"""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass, field
from email.utils import parseaddr

from kb.errors import KbError
from kb.settings import SmtpServer


class SendError(KbError):
    """A message was not sent; `permanent` says whether trying again can help."""

    def __init__(self, message: str, *, permanent: bool, code: int | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.code = code


@dataclass
class Delivery:
    """The server took the message: its final answer, and recipients it refused (the others got it)."""

    reply: str
    refused: dict[str, str] = field(default_factory=dict)


def envelope(address: str) -> str:
    """The bare address of 'Name <a@example.org>' (settings checked it has no line breaks)."""
    return parseaddr(address)[1]


def _tls(cfg: SmtpServer) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if not cfg.verify_tls:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _where(cfg: SmtpServer) -> str:
    return f"{cfg.host}:{cfg.port}"


def _text(resp: bytes | str) -> str:
    s = resp.decode("utf-8", "replace") if isinstance(resp, bytes) else str(resp)
    return " ".join(s.split())


class SmtpTransport:
    """One SMTP conversation per `send` (kb sends a few messages a day: no connection is kept open)."""

    def __init__(self, cfg: SmtpServer) -> None:
        self.cfg = cfg

    def connect(self) -> smtplib.SMTP:
        """Connect, secure the connection as configured, and log in; raises SendError (never permanent)."""
        cfg = self.cfg
        assert cfg.port is not None  # set by the settings' validation
        try:
            conn: smtplib.SMTP
            if cfg.security == "tls":
                conn = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=cfg.timeout_s, context=_tls(cfg))
            else:
                conn = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout_s)
        except (OSError, smtplib.SMTPException) as exc:
            where = _where(cfg)
            raise SendError(f"cannot connect to the SMTP server {where}: {_describe(exc)}", permanent=False) from None
        try:
            conn.ehlo()
            if cfg.security == "starttls":
                if not conn.has_extn("starttls"):
                    raise SendError(f"the SMTP server {_where(cfg)} does not offer STARTTLS (security 'starttls')",
                                    permanent=False)
                conn.starttls(context=_tls(cfg))
                conn.ehlo()
            if cfg.username:
                assert cfg.password is not None  # the settings require one with a username
                conn.login(cfg.username, cfg.password.get_secret_value())
        except SendError:
            _close(conn)
            raise
        except smtplib.SMTPAuthenticationError as exc:
            _close(conn)
            # every message would fail alike until the settings are fixed: retried, and shown in `kb status`
            raise SendError(f"the SMTP server {_where(cfg)} refused the login of {cfg.username!r}: "
                            f"{exc.smtp_code} {_text(exc.smtp_error)}", permanent=False, code=exc.smtp_code) from None
        except (OSError, smtplib.SMTPException) as exc:
            _close(conn)
            raise SendError(f"SMTP server {_where(cfg)}: {_describe(exc)}", permanent=False) from None
        return conn

    def check(self) -> str:
        """Connect, log in and say NOOP: what `kb mail test` reports without sending anything."""
        conn = self.connect()
        try:
            code, resp = conn.noop()
            tls = {"tls": "implicit TLS", "starttls": "STARTTLS", "none": "no encryption"}[self.cfg.security]
            who = f" as {self.cfg.username}" if self.cfg.username else ""
            return f"connected to {_where(self.cfg)} ({tls}){who}; the server answers {code} {_text(resp)}"
        finally:
            _close(conn)

    def send(self, recipients: list[str], message: bytes) -> Delivery:
        """Send `message` (bytes with CRLF line ends) to these envelope recipients; raises SendError."""
        conn = self.connect()
        try:
            return _transmit(conn, envelope(self.cfg.sender), recipients, message)
        except SendError:
            raise
        except smtplib.SMTPServerDisconnected as exc:
            where = _where(self.cfg)
            raise SendError(f"the SMTP server {where} closed the connection: {exc}", permanent=False) from None
        except smtplib.SMTPResponseException as exc:
            raise _answer_error(exc.smtp_code, _text(exc.smtp_error), "") from None
        except (OSError, smtplib.SMTPException) as exc:
            raise SendError(f"SMTP server {_where(self.cfg)}: {_describe(exc)}", permanent=False) from None
        finally:
            _close(conn)


def _transmit(conn: smtplib.SMTP, sender: str, recipients: list[str], message: bytes) -> Delivery:
    """smtplib's sendmail, step by step, to keep the server's final answer (e.g. '250 2.0.0 queued as X')."""
    code, resp = conn.mail(sender)
    if code != 250:
        conn.rset()
        raise _answer_error(code, _text(resp), "refused the sender")
    refused: dict[str, str] = {}
    codes: list[int] = []
    for r in recipients:
        code, resp = conn.rcpt(r)
        if code not in (250, 251):
            refused[r] = f"{code} {_text(resp)}"
            codes.append(code)
    if len(refused) == len(recipients):
        conn.rset()
        permanent = all(c >= 500 for c in codes)
        detail = "; ".join(f"{r}: {why}" for r, why in refused.items())
        raise SendError(f"the SMTP server refused every recipient: {detail}", permanent=permanent, code=codes[0])
    code, resp = conn.data(message)
    if code != 250:
        conn.rset()
        raise _answer_error(code, _text(resp), "refused the message")
    return Delivery(reply=f"{code} {_text(resp)}", refused=refused)


def _answer_error(code: int, text: str, what: str) -> SendError:
    """A 5xx answer about this message is permanent; 4xx (and anything else) is worth another try."""
    said = f"the SMTP server {what}: " if what else "the SMTP server answered "
    return SendError(f"{said}{code} {text}".strip(), permanent=500 <= code < 600, code=code)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"{exc.smtp_code} {_text(exc.smtp_error)}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the server's TLS certificate is not trusted: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return str(exc) or type(exc).__name__


def _close(conn: smtplib.SMTP) -> None:
    try:
        conn.quit()
    except (OSError, smtplib.SMTPException):
        conn.close()
