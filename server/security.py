"""The web service's guards: who may come in (password, session cookie, bearer token), CSRF, login rate
limiting, the security headers every response carries, and safe names for uploaded files.

Auth is on when an admin password or an API token is configured; bound to anything but loopback the service
refuses to start without one (`check_bind`). With auth off (loopback, nothing configured) every route is
open, but CSRF still guards unsafe requests: a web page the person visits must not be able to drive the
service on 127.0.0.1 from their browser.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import threading
import time
import unicodedata
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from litestar.config.csrf import CSRFConfig
from litestar.datastructures import MutableScopeHeaders
from litestar.middleware.csrf import CSRFMiddleware
from litestar.types import ASGIApp, HTTPResponseBodyEvent, HTTPResponseStartEvent, Message, Receive, Scope, Send

from kb.errors import ConfigError
from kb.settings import Settings

SESSION_COOKIE = "kb_session"
CSRF_COOKIE = "csrftoken"
CSRF_HEADER = "x-csrftoken"
CSRF_FIELD = "_csrf_token"  # the field Litestar's csrf_input writes into forms

CSP = ("default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; object-src 'self'; "
       "frame-src 'self'; style-src 'self'; script-src 'self'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'self'")
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "SAMEORIGIN",
    "cross-origin-opener-policy": "same-origin",
}

# Paths anyone may reach: the login page, static files, the health probe.
PUBLIC_PREFIXES = ("/static/",)
PUBLIC_PATHS = frozenset({"/login", "/api/v1/health", "/favicon.ico"})


# -- passwords --------------------------------------------------------------------------------------
def hash_password(password: str) -> str:
    """An argon2id hash of a password, for the admin_password_hash setting."""
    from argon2 import PasswordHasher

    return PasswordHasher().hash(password)


def is_loopback(host: str) -> bool:
    """Whether a bind address only accepts connections from this machine."""
    h = host.strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def check_bind(settings: Settings) -> None:
    """Refuse (ConfigError, one line) to listen beyond loopback without a password or token configured."""
    if not is_loopback(settings.host) and not settings.auth_configured():
        raise ConfigError(
            f"refusing to listen on {settings.host}: anyone on the network could read the library. Set "
            "admin_password_hash (make one with `kb hash-password`), admin_password_env/_file or "
            "api_token_env/_file, or keep host = 127.0.0.1"
        )


class Guard:
    """Checks passwords, tokens and session cookies; counts failed logins per client address."""

    def __init__(self, settings: Settings, secret_path: Path | None = None, *, max_failures: int = 5,
                 window_s: float = 300.0, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.enabled = settings.auth_configured()
        self.password_login = settings.admin_password_hash is not None or settings.admin_password is not None
        self.max_failures = max_failures
        self.window_s = window_s
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._revoked: dict[str, float] = {}  # session nonce -> its expiry (logout before it ran out)
        self._lock = threading.Lock()
        self._hasher: Any = None
        self.secret = _load_secret(secret_path) if secret_path is not None else secrets.token_bytes(32)
        # a changed password (or token) ends every session made under the old one
        pw = settings.admin_password_hash or settings.admin_password
        material = (pw.get_secret_value() if pw else "") + "\0" + (
            settings.api_token.get_secret_value() if settings.api_token else "")
        self._key = hmac.new(self.secret, material.encode(), hashlib.sha256).digest()

    # -- credentials --------------------------------------------------------------------------------
    def check_password(self, password: str) -> bool:
        s = self.settings
        if s.admin_password_hash is not None:
            from argon2 import PasswordHasher
            from argon2.exceptions import InvalidHashError, VerificationError

            if self._hasher is None:
                self._hasher = PasswordHasher()
            try:
                return bool(self._hasher.verify(s.admin_password_hash.get_secret_value(), password))
            except (VerificationError, InvalidHashError):
                return False
        if s.admin_password is not None:
            return hmac.compare_digest(
                hashlib.sha256(password.encode()).digest(),
                hashlib.sha256(s.admin_password.get_secret_value().encode()).digest(),
            )
        return False

    def check_token(self, token: str) -> bool:
        """A bearer token: the API token, compared in constant time."""
        t = self.settings.api_token
        if t is None:
            return False
        return hmac.compare_digest(hashlib.sha256(token.encode()).digest(),
                                   hashlib.sha256(t.get_secret_value().encode()).digest())

    # -- sessions -----------------------------------------------------------------------------------
    def new_session(self) -> str:
        """A signed session value: expiry, nonce, HMAC (nothing to store; logout revokes the nonce)."""
        expiry = int(self.clock() + self.settings.session_hours * 3600)
        body = f"{expiry}.{secrets.token_urlsafe(16)}"
        return f"{body}.{self._sign(body)}"

    def _sign(self, body: str) -> str:
        return hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()

    def check_session(self, value: str | None) -> bool:
        if not value or value.count(".") != 2:
            return False
        expiry_s, nonce, sig = value.split(".")
        if not hmac.compare_digest(sig, self._sign(f"{expiry_s}.{nonce}")):
            return False
        try:
            expiry = int(expiry_s)
        except ValueError:
            return False
        with self._lock:
            if nonce in self._revoked:
                return False
        return expiry > self.clock()

    def end_session(self, value: str | None) -> None:
        if value and self.check_session(value):
            expiry_s, nonce, _ = value.split(".")
            now = self.clock()
            with self._lock:
                self._revoked = {n: e for n, e in self._revoked.items() if e > now}
                self._revoked[nonce] = float(expiry_s)

    # -- login rate limit ---------------------------------------------------------------------------
    def retry_after(self, client: str) -> int:
        """Seconds until this client may try a password again (0: now)."""
        now = self.clock()
        with self._lock:
            q = self._failures.get(client)
            if not q:
                return 0
            while q and q[0] <= now - self.window_s:
                q.popleft()
            if len(q) < self.max_failures:
                return 0
            return max(1, int(q[0] + self.window_s - now + 0.999))

    def failed(self, client: str) -> None:
        with self._lock:
            if len(self._failures) > 10000:  # a flood of addresses must not grow this without bound
                self._failures.clear()
            self._failures.setdefault(client, deque(maxlen=self.max_failures * 2)).append(self.clock())

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)


def _load_secret(path: Path) -> bytes:
    """The key that signs session cookies: made once per data directory (0600), so logins survive restarts."""
    try:
        data = path.read_bytes()
        if len(data) >= 32:
            return data
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    data = secrets.token_bytes(32)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return data


# -- middleware -------------------------------------------------------------------------------------
@dataclass
class AuthState:
    guard: Guard
    csrf: CSRFConfig
    bearer_paths: tuple[str, ...] = ("/api/",)
    exempt_csrf: set[str] = field(default_factory=set)  # paths that check CSRF themselves (streamed upload)


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", []):
        if k == name:
            return v.decode("latin-1")
    return None


def _cookie(scope: Scope, name: str) -> str | None:
    raw = _header(scope, b"cookie")
    if not raw:
        return None
    for part in raw.split(";"):
        k, _, v = part.strip().partition("=")
        if k == name:
            return v
    return None


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


async def security_headers(message: Message, scope: Scope) -> None:
    """A before-send hook: the CSP and the other security headers on every HTTP response (404s, errors and
    redirects too), unless the handler set its own (an original's stricter CSP)."""
    if message["type"] == "http.response.start":
        headers = MutableScopeHeaders.from_message(message)
        for k, v in SECURITY_HEADERS.items():
            if k not in headers:
                headers[k] = v


class AuthMiddleware:
    """Sets scope["user"] ("admin" or None) and scope["auth"] ("open", "session", "bearer" or None), refuses
    what needs a login, and runs Litestar's CSRF check on everything not authenticated by a bearer token."""

    def __init__(self, app: ASGIApp, state: AuthState) -> None:
        self.app = app
        self.state = state
        self.csrf = CSRFMiddleware(app, state.csrf)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        guard = self.state.guard
        path: str = scope.get("path", "")
        bearer = _header(scope, b"authorization")
        method = None
        if bearer is not None and bearer[:7].lower() == "bearer ":
            if guard.check_token(bearer[7:].strip()):
                method = "bearer"
            else:
                await _deny(scope, send, 401, "invalid bearer token")
                return
        elif not guard.enabled:
            method = "open"
        elif guard.check_session(_cookie(scope, SESSION_COOKIE)):
            method = "session"
        scope["user"] = "admin" if method is not None else None
        scope["auth"] = method
        public = path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)
        if method is None and not public:
            await _deny(scope, send, 401, "log in first (or send an API token: Authorization: Bearer ...)")
            return
        if method == "bearer" or path in self.state.exempt_csrf:
            await self.app(scope, receive, send)  # a token is not sent by a browser on its own: no CSRF risk
            return
        await self.csrf(scope, receive, send)


async def _deny(scope: Scope, send: Send, status: int, message: str) -> None:
    """401 as JSON for the API, a redirect to the login page for a page a browser asked for."""
    import json
    from urllib.parse import quote

    path = scope.get("path", "")
    accept = _header(scope, b"accept") or ""
    if status == 401 and scope.get("method") == "GET" and not path.startswith("/api/") and "html" in accept:
        target = path + ("?" + scope["query_string"].decode("latin-1") if scope.get("query_string") else "")
        headers: list[tuple[bytes, bytes]] = [
            (b"location", f"/login?next={quote(target, safe='')}".encode()), (b"content-length", b"0")]
        start: HTTPResponseStartEvent = {"type": "http.response.start", "status": 303, "headers": headers}
        await send(start)
        empty: HTTPResponseBodyEvent = {"type": "http.response.body", "body": b"", "more_body": False}
        await send(empty)
        return
    body = json.dumps({"error": {"type": "NotAuthorized", "message": message}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="kb"'))
    first: HTTPResponseStartEvent = {"type": "http.response.start", "status": status, "headers": headers}
    await send(first)
    last: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": False}
    await send(last)


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a path on this site only (never //host or a scheme)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    if any(ord(c) < 32 for c in target):
        return "/"
    return target


# -- upload names -----------------------------------------------------------------------------------
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f/\\:*?\"<>|\u2028\u2029\u202a-\u202e\u2066-\u2069]")
MAX_NAME_BYTES = 200


def sanitize_filename(name: str | None) -> str:
    """A file name safe to create in the inbox: no folders, no control or shell-special characters, no
    leading dots (hidden files are ignored by the watcher), at most 200 bytes (the extension kept)."""
    name = unicodedata.normalize("NFC", name or "")
    name = name.replace("\\", "/").rsplit("/", 1)[-1]  # a browser may send a path: keep its last part
    name = _UNSAFE.sub("_", name).strip().lstrip(".").strip()
    name = re.sub(r"_+", "_", name)
    if not name or name in (".", ".."):
        name = "upload"
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem or len(ext) > 16:
        stem, ext = name, ""
    ext_part = f".{ext}" if ext else ""
    while len((stem + ext_part).encode()) > MAX_NAME_BYTES:
        stem = stem[:-1]
    return (stem or "upload") + ext_part


def free_name(folder: Path, name: str) -> str:
    """`name`, or `name (2)`, `name (3)`... : the first not taken in the folder."""
    if not (folder / name).exists():
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    for i in range(2, 10000):
        candidate = f"{stem} ({i})" + (f".{ext}" if ext else "")
        if not (folder / candidate).exists():
            return candidate
    return f"{stem}-{secrets.token_hex(4)}" + (f".{ext}" if ext else "")
