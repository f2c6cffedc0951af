"""One IMAP connection for one mail account, read-only, with errors a person can act on.

A thin layer over imapclient: it connects with the account's security (TLS, STARTTLS, or plain to loopback
only, which the settings enforce), logs in without the password ever reaching a log or a message, selects
folders read-only (EXAMINE) and fetches with BODY.PEEK, so the mailbox is never changed. Every library,
socket and TLS error leaves as one of three exceptions, each with one clear line.
"""

from __future__ import annotations

import contextlib
import re
import select
import socket
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError, LoginError

from kb.errors import KbError
from kb.settings import MailAccount

_TIMING = re.compile(r"\s*\(\d+\.\d+( \+ \d+\.\d+)* secs\)\.?$")


class MailError(KbError):
    """A mail account cannot be read right now; the message says why in one line."""


class MailAuthError(MailError):
    """The server refused the user name or password: lasting until the settings change."""


class MailConnectError(MailError):
    """Unreachable server, TLS failure, timeout or a dropped connection: passing, worth retrying."""

    #: the server ended the session itself (EOF, BYE), as opposed to a timeout or a network error
    server_closed: bool = False


class MailFolderError(MailError):
    """A configured folder does not exist (or cannot be opened): that folder only."""


@dataclass(frozen=True)
class FolderInfo:
    """What a read-only select says about a folder."""

    name: str
    uidvalidity: int
    messages: int
    uidnext: int | None


class ImapConnection:
    """A logged-in, read-only session with one account. Not thread-safe: one per watcher thread."""

    def __init__(self, account: MailAccount, *, timeout_s: float = 30.0) -> None:
        self.account = account
        self.timeout_s = timeout_s
        self._client: IMAPClient | None = None
        self._idling = False
        self.selected: str | None = None

    @property
    def where(self) -> str:
        return f"{self.account.host}:{self.account.port}"

    # -- connecting -------------------------------------------------------------------------------
    def open(self) -> ImapConnection:
        """Connect and log in; raises MailConnectError or MailAuthError."""
        a = self.account
        context = None
        if a.security in ("tls", "starttls"):
            context = ssl.create_default_context()
            if not a.verify_tls:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        with self._errors("connecting to"):
            client = IMAPClient(
                a.host, port=a.port, ssl=a.security == "tls", ssl_context=context, timeout=self.timeout_s
            )
        self._client = client
        try:
            if a.security == "starttls":
                if b"STARTTLS" not in self._capabilities():
                    raise MailConnectError(
                        f"{self.where} does not offer STARTTLS (security 'starttls'); try security 'tls'"
                    )
                with self._errors("starting TLS with"):
                    client.starttls(context)
            if b"LOGINDISABLED" in self._capabilities():
                raise MailConnectError(
                    f"{self.where} refuses to log in over an unencrypted connection (LOGINDISABLED): "
                    "use security 'starttls' or 'tls'"
                )
            password = a.password.get_secret_value() if a.password is not None else ""
            try:
                if a.username.isascii() and password.isascii():
                    client.login(a.username, password)
                elif b"AUTH=PLAIN" in self._capabilities():  # LOGIN cannot carry non-ASCII; SASL PLAIN is UTF-8
                    client.plain_login(a.username, password)
                else:
                    raise MailAuthError(
                        f"login failed for user {a.username!r} at {self.where}: the user name or password has "
                        "non-ASCII characters, and this server offers no login method that can send them"
                    )
            except LoginError as exc:
                reason = self._scrub(_text(exc))
                if "UNAVAILABLE" in reason.upper():  # [UNAVAILABLE]: the server's auth backend is down
                    raise MailConnectError(f"{self.where} cannot log in right now: {reason}") from None
                raise MailAuthError(f"login failed for user {a.username!r} at {self.where}: {reason}") from None
            except (IMAPClientError, OSError) as exc:
                raise self._connect_error("logging in to", exc) from None
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Log out (politely if the connection still works) and drop the socket."""
        client, self._client = self._client, None
        self._idling = False
        self.selected = None
        if client is None:
            return
        with contextlib.suppress(Exception):
            client.logout()
        with contextlib.suppress(Exception):
            client.shutdown()

    def __enter__(self) -> ImapConnection:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def client(self) -> IMAPClient:
        if self._client is None:
            raise MailConnectError(f"not connected to {self.where}")
        return self._client

    def _capabilities(self) -> tuple[bytes, ...]:
        with self._errors("talking to"):
            return tuple(self.client.capabilities())

    def has_idle(self) -> bool:
        return b"IDLE" in self._capabilities()

    # -- reading ----------------------------------------------------------------------------------
    def select(self, folder: str) -> FolderInfo:
        """Open a folder read-only (EXAMINE): nothing we do can change it."""
        self.selected = None
        try:
            info = self.client.select_folder(folder, readonly=True)
        except (IMAPClientAbortError, OSError) as exc:
            raise self._connect_error("reading from", exc) from None
        except IMAPClientError as exc:
            reason = self._scrub(_text(exc)).removeprefix("select failed: ")
            raise MailFolderError(
                f"cannot open folder {folder!r} of {self.account.name}: {reason}{self._folders_hint()}"
            ) from None
        uidvalidity = info.get(b"UIDVALIDITY")
        if uidvalidity is None:
            raise MailFolderError(f"folder {folder!r} of {self.account.name} has no UIDVALIDITY (server bug?)")
        self.selected = folder
        next_uid = info.get(b"UIDNEXT")
        messages = int(info.get(b"EXISTS", 0))
        return FolderInfo(folder, int(uidvalidity), messages, None if next_uid is None else int(next_uid))

    def _folders_hint(self) -> str:
        """' (folders there: …)': what a person needs to correct a folder name."""
        try:
            names = sorted(str(f[2]) for f in self.client.list_folders())
        except Exception:  # only a hint: the error it accompanies matters more
            return ""
        more = f", … ({len(names)} in all)" if len(names) > 12 else ""
        return f" (folders there: {', '.join(names[:12])}{more})" if names else ""

    def sizes_after(self, last_uid: int) -> dict[int, int]:
        """UID -> size (RFC822.SIZE) of every message in the selected folder with a UID above last_uid.

        `UID SEARCH UID n:*` also answers with the highest message when it is below n (RFC 3501): filtered.
        """
        with self._errors("reading from"):
            uids = sorted(int(u) for u in self.client.search(["UID", f"{last_uid + 1}:*"]) if int(u) > last_uid)
            sizes: dict[int, int] = {}
            for i in range(0, len(uids), 1000):  # keeps each command line short
                rows = self.client.fetch(uids[i : i + 1000], ["RFC822.SIZE"])
                sizes.update({int(uid): int(data.get(b"RFC822.SIZE", 0)) for uid, data in rows.items()})
        return sizes

    def fetch_bodies(self, uids: Sequence[int]) -> tuple[dict[int, bytes], dict[int, str]]:
        """Raw bytes of these messages (BODY.PEEK[]: the \\Seen flag stays as it was).

        Returns (bodies, errors): a message the server will not give (or answers garbled) is reported in
        errors by UID, the others still come. A message expunged meanwhile is in neither.
        """
        if not uids:
            return {}, {}
        try:
            return self._fetch(uids), {}
        except MailConnectError:
            raise
        except IMAPClientError as exc:
            if len(uids) == 1:
                return {}, {uids[0]: f"the server would not give the message: {self._scrub(_text(exc))}"}
        # one bad message must not sink its batch: one at a time
        bodies: dict[int, bytes] = {}
        errors: dict[int, str] = {}
        for uid in uids:
            got, bad = self.fetch_bodies([uid])
            bodies.update(got)
            errors.update(bad)
        return bodies, errors

    def _fetch(self, uids: Sequence[int]) -> dict[int, bytes]:
        try:
            rows = self.client.fetch(list(uids), ["BODY.PEEK[]"])
        except (IMAPClientAbortError, OSError) as exc:
            raise self._connect_error("reading from", exc) from None
        out: dict[int, bytes] = {}
        wanted = set(uids)
        for uid, data in rows.items():
            body = data.get(b"BODY[]")
            if int(uid) in wanted and isinstance(body, bytes):
                out[int(uid)] = body
        missing = sorted(wanted - set(out))
        if missing:  # deleted meanwhile (fine), or a server that answered without the content (an error)
            with self._errors("reading from"):
                still = {int(u) for u in self.client.search(["UID", ",".join(map(str, missing))])}
            if still & set(missing):
                raise IMAPClientError(f"the server sent no content for UID {min(still & set(missing))}")
        return out

    # -- waiting for mail -------------------------------------------------------------------------
    def idle_start(self) -> None:
        """Enter IDLE on the selected folder."""
        with self._errors("waiting on"):
            self.client.idle()
        self._idling = True

    def idle_wait(self, timeout_s: float) -> list[Any]:
        """Up to timeout_s for the server's IDLE news (e.g. `(5, b'EXISTS')`); [] when nothing came.

        imapclient's idle_check answers [] both for "nothing yet" and for a closed connection: a socket that
        is readable yet yields no response is taken as the connection dropping.
        """
        client = self.client
        try:
            sock = client.socket()
            pending = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
            if not pending:
                readable, _, _ = select.select([sock], [], [], timeout_s)
                if not readable:
                    return []
            responses = list(client.idle_check(timeout=0))
        except (IMAPClientError, OSError, ValueError) as exc:
            raise self._connect_error("waiting on", exc) from None
        if not responses:
            raise MailConnectError(f"{self.where} closed the connection")
        if any(r and r[0] == b"BYE" for r in responses):
            raise MailConnectError(f"{self.where} closed the connection: {_text(responses[-1])}")
        return responses

    def idle_done(self) -> None:
        if not self._idling:
            return
        self._idling = False
        with self._errors("waiting on"):
            self.client.idle_done()

    # -- errors -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _errors(self, doing: str) -> Any:
        try:
            yield
        except MailError:
            raise
        except (IMAPClientError, OSError) as exc:
            raise self._connect_error(doing, exc) from None

    def _connect_error(self, doing: str, exc: BaseException) -> MailConnectError:
        err = MailConnectError(f"{doing} {self.where} failed: {self._scrub(describe(exc))}")
        err.server_closed = isinstance(exc, IMAPClientAbortError)
        return err

    def _scrub(self, text: str) -> str:
        """Belt and braces: a password never appears in a message, whatever a server or library said."""
        secret = self.account.password.get_secret_value() if self.account.password is not None else ""
        return text.replace(secret, "**********") if len(secret) >= 3 else text


def describe(exc: BaseException) -> str:
    """One readable line for a socket, TLS or protocol error."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({exc.verify_message}); set verify_tls = false only if you trust it"
    if isinstance(exc, ssl.SSLError):
        hint = " (a plain-text port? try security 'starttls')" if exc.reason == "WRONG_VERSION_NUMBER" else ""
        return f"TLS error: {exc.reason or exc}{hint}"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the server running, is the port right?)"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    if isinstance(exc, IMAPClientAbortError):
        return f"connection lost ({_text(exc)})"
    return _text(exc) or type(exc).__name__


def _text(value: object) -> str:
    if isinstance(value, BaseException):
        value = value.args[0] if value.args else str(value)
    if isinstance(value, (tuple, list)):
        return " ".join(_text(v) for v in value)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = str(value)
    if text.startswith("b'") and text.endswith("'"):  # imaplib puts repr(bytes) in some messages
        text = text[2:-1]
    text = _TIMING.sub("", text)  # Dovecot's "(0.001 + 0.000 secs)." says nothing to a person
    return " ".join(text.split())[:300]


def wait_backoff(attempt: int, *, base_s: float = 1.0, cap_s: float = 300.0) -> float:
    """Exponential backoff with jitter: ~1, 2, 4 … seconds up to cap_s, each ±25 %."""
    import random

    return min(cap_s, base_s * 2 ** max(0, attempt - 1)) * random.uniform(0.75, 1.25)


def chunked(items: Iterable[int], sizes: dict[int, int], *, count: int, total_bytes: int) -> list[list[int]]:
    """UIDs in order, grouped into batches of at most `count` messages and about `total_bytes` bytes."""
    batches: list[list[int]] = []
    cur: list[int] = []
    cur_bytes = 0
    for uid in items:
        n = sizes.get(uid, 0)
        if cur and (len(cur) >= count or cur_bytes + n > total_bytes):
            batches.append(cur)
            cur, cur_bytes = [], 0
        cur.append(uid)
        cur_bytes += n
    if cur:
        batches.append(cur)
    return batches
