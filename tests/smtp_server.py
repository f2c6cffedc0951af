"""A real SMTP server for the tests: aiosmtpd on 127.0.0.1 (a free port), collecting what it is sent.

It can be told to answer RCPT or DATA with an error (a 4xx or 5xx line), stopped (connections are refused)
and started again on the same port, and to offer STARTTLS or speak implicit TLS with a self-signed
certificate made by `openssl` for the test.
"""

from __future__ import annotations

import email
import socket
import ssl
import subprocess
import time
from email.message import EmailMessage
from email.policy import default
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1/localhost (openssl, 1 day)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


class Received:
    """One message as the server got it: the envelope and the bytes, parsed with the email package."""

    def __init__(self, envelope: Any) -> None:
        self.mail_from: str = envelope.mail_from
        self.rcpt_tos: list[str] = list(envelope.rcpt_tos)
        self.raw: bytes = envelope.original_content or envelope.content
        msg = email.message_from_bytes(self.raw, policy=default)
        assert isinstance(msg, EmailMessage)
        self.message: EmailMessage = msg

    def part(self, subtype: str) -> str:
        body = self.message.get_body(preferencelist=(subtype,))
        assert body is not None and body.get_content_subtype() == subtype, f"no text/{subtype} part"
        return str(body.get_content())


class _Handler:
    def __init__(self, server: SmtpServer) -> None:
        self.server = server

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if self.server.rcpt_reply:
            return self.server.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.server.data_reply:
            return self.server.data_reply
        self.server.received.append(Received(envelope))
        return f"250 2.0.0 Ok: queued as KB{len(self.server.received)}"


class SmtpServer:
    """aiosmtpd in a thread; `received` holds every message it accepted."""

    def __init__(self, *, tls: ssl.SSLContext | None = None, starttls: ssl.SSLContext | None = None) -> None:
        self.port = free_port()
        self.received: list[Received] = []
        self.rcpt_reply: str | None = None
        self.data_reply: str | None = None
        self._tls = tls
        self._starttls = starttls
        self._controller: Controller | None = None

    def start(self) -> SmtpServer:
        kwargs: dict[str, Any] = {}
        if self._starttls is not None:
            kwargs["server_kwargs"] = {"tls_context": self._starttls, "require_starttls": True}
        self._controller = Controller(
            _Handler(self), hostname="127.0.0.1", port=self.port, ssl_context=self._tls, **kwargs,
        )
        for _ in range(50):  # the port of a server just stopped may take a moment to be free again
            try:
                self._controller.start()
                break
            except (OSError, RuntimeError):
                time.sleep(0.1)
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def settings(self, **extra: Any) -> dict[str, Any]:
        """The `smtp` setting for this server (plain SMTP to loopback unless told otherwise)."""
        out: dict[str, Any] = {
            "host": "127.0.0.1", "port": self.port, "security": "none", "sender": "kb <kb@example.org>",
            "recipients": ["alice@example.org", "Bob <bob@example.org>"],
        }
        out.update(extra)
        return out
