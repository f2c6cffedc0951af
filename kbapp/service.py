"""The owner of writes: holds the data directory's lock, runs the workers, serves the API on a local socket.

`kb watch` runs one for as long as it is up; a one-off `kb ingest` with no service running becomes a
short-lived one, so a second terminal's `kb search` or `kb status` always has someone to ask.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from kb.lock import WriteLock
from kb.paths import absolute, to_uri
from kbapp.app import App
from kbapp.statusline import LiveLine

log = logging.getLogger(__name__)


class ApiServer:
    """The Litestar API served by uvicorn on a Unix socket, in a background thread."""

    def __init__(self, app: App, socket_path: Path) -> None:
        import uvicorn

        from server.api import create_api

        self.socket_path = socket_path
        # The folder, not the socket, carries the permission: uvicorn makes the socket itself 0666.
        socket_path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(socket_path.parent, 0o700)
        config = uvicorn.Config(
            create_api(app), uds=str(socket_path), log_level="warning", lifespan="off", access_log=False,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name="kb-api", daemon=True)

    def _serve(self) -> None:
        asyncio.run(self._server.serve())

    def start(self, timeout_s: float = 10.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)
        with contextlib.suppress(OSError):
            self.socket_path.unlink()


class HttpServer:
    """The web UI and JSON API (server/app.py) served by uvicorn on host:port, in a background thread.

    The socket is bound here, before the thread starts, so a port in use is one clear error at once.
    """

    def __init__(self, app: App) -> None:
        import socket

        import uvicorn

        from kb.errors import ConfigError
        from server.app import create_app
        from server.security import check_bind

        s = app.settings
        check_bind(s)
        family = socket.AF_INET6 if ":" in s.host else socket.AF_INET
        # IPPROTO_TCP named explicitly: asyncio turns Nagle off (TCP_NODELAY) only on sockets whose proto says
        # TCP, and with Nagle on, every request after the first on a kept-alive connection waited ~40 ms for
        # the client's delayed ACK (measured: health 44 ms instead of 1.5 ms)
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((s.host.strip("[]"), s.port))
        except OSError as exc:
            sock.close()
            raise ConfigError(f"cannot listen on {s.host}:{s.port}: {exc.strerror or exc} (settings host, port; "
                              "kb serve --host/--port)") from None
        sock.listen(128)
        sock.set_inheritable(True)
        self.socket = sock
        self.port = sock.getsockname()[1]
        secret = s.data_dir / ".run" / "web-secret"
        config = uvicorn.Config(
            create_app(app, s, secret_path=secret), log_level="warning", lifespan="off", access_log=False,
            timeout_graceful_shutdown=3, proxy_headers=False, server_header=False,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name="kb-http", daemon=True)

    def _serve(self) -> None:
        asyncio.run(self._server.serve(sockets=[self.socket]))

    def start(self, timeout_s: float = 10.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=8)
        with contextlib.suppress(OSError):
            self.socket.close()


class Owner:
    """This process as the owner of writes: the lock, start-up recovery, the API, the workers."""

    def __init__(
        self, app: App, lock: WriteLock, *, serve: bool = True, recover: bool = True, role: str = "one-off"
    ) -> None:
        self.app = app
        app.role = role
        self.lock = lock
        self.api: ApiServer | None = None
        self.recovered = recover
        if recover:
            app.recover()
            app.check()
        if serve:
            self.api = ApiServer(app, app.settings.socket_path)
            self.api.start()

    def close(self) -> None:
        self.app.stop_workers(grace_s=0)
        if self.api is not None:
            self.api.stop()
        if self.recovered:
            self.app.mark_clean()
        self.lock.release()


def run_service(
    app: App, lock: WriteLock, *, scan_interval_s: float | None = None, echo: Callable[[str], None],
    live: LiveLine | None = None, web: bool = False,
) -> None:
    """`kb watch`: mirror the inbox folders until SIGTERM/SIGINT.

    The folder watcher queues what changes as it happens; a catch-up scan at start takes in what changed
    while the service was down, and a reconciliation scan every `reconcile_interval_s` (or scan_interval_s)
    repairs any missed event (size and time first; the content hash only where they differ).
    """
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    http: HttpServer | None = None
    if web:  # `kb serve`: the pages answer at once; models load behind them (the status page says so)
        app.role = "service"
        app.loading["embedding"] = "loading"
        try:
            http = HttpServer(app)
        except BaseException:
            for sig, h in old.items():
                signal.signal(sig, h)
            raise
        http.start()
        echo(f"kb: open {app.settings.public_url() if app.settings.base_url else _url(app, http.port)}")
    try:
        owner = Owner(app, lock, role="service")
    except BaseException:
        if http is not None:
            http.stop()
        for sig, h in old.items():
            signal.signal(sig, h)
        raise
    watcher = None
    mail = None
    try:
        app.warm_up()  # the model and a parser process load now, not inside the first person's request
        app.start_workers()
        _start_mailout(app, echo)
        inbox = [str(p) for p in app.settings.inbox_paths]
        for p in app.settings.inbox_paths:
            # A new folder is created; one the library already holds documents from is not: missing, it is
            # an unmounted disk or a deleted folder, reported unhealthy with its documents kept.
            if not p.exists() and not app.catalog.sources_under(to_uri(absolute(p)).rstrip("/") + "/"):
                with contextlib.suppress(OSError):
                    p.mkdir(parents=True, exist_ok=True)
        watcher = app.folder_watcher()
        watcher.start()  # before the catch-up scan: nothing changing meanwhile is missed
        modes = watcher.modes()
        echo("kb: watching " + ", ".join(f"{p} ({modes.get(p) or 'unavailable'})" for p in modes)
             + f" (pid {os.getpid()}); Ctrl-C stops")
        if app.settings.mail:
            mail = app.mail_watcher()
            mail.start()
            echo("kb: reading mail from " + ", ".join(
                f"{a.name} ({a.username}@{a.host}: {', '.join(a.folders)})" for a in app.settings.mail))
        interval = app.settings.reconcile_interval_s if scan_interval_s is None else scan_interval_s
        next_scan = time.monotonic()
        while not stop.is_set():
            if time.monotonic() >= next_scan:
                app.submit_scan(inbox, key="scan:inbox")
                next_scan = time.monotonic() + interval if interval > 0 else float("inf")
            if live is not None:
                try:
                    live.show(app.live_summary())
                except Exception as exc:  # the status line is a nicety: never the reason the service stops
                    log.debug("status line: %s", exc)
            stop.wait(max(0.05, min(1.0 if live is not None else 5.0, next_scan - time.monotonic())))
        if live is not None:
            live.clear()
        echo("kb: stopping: finishing or requeueing work in flight")
        # the watchers first, so nothing new is queued while the work in flight finishes
        for w in (mail, watcher):
            if w is not None:
                w.stop()
        mail = watcher = None
        app.stop_workers(grace_s=10.0)
    finally:
        app.stop_mailout()
        if live is not None:
            live.clear()
        for w in (mail, watcher):  # after an error: stopped here instead
            if w is not None:
                w.stop()
        if http is not None:
            http.stop()
        owner.close()
        for s, h in old.items():
            signal.signal(s, h)


def _start_mailout(app: App, echo: Callable[[str], None]) -> None:
    """Mail out (issue 10): the outbox sender and the digest's schedule, when an SMTP server is configured."""
    mailout = app.start_mailout()
    s = app.settings
    if mailout is None or s.smtp is None:
        if s.digest_cron or s.meeting_mail_tags:
            echo("kb: digest_cron or meeting_mail_tags is set, but no SMTP server (setting smtp): no e-mail is sent")
        return
    digest = ""
    nxt = mailout.next_digest()
    if s.digest_cron and nxt is not None:
        digest = f"; digest '{s.digest_cron}' ({s.mail_timezone}), next {mailout.composer.when(nxt)}"
    echo(f"kb: sending mail through {s.smtp.host}:{s.smtp.port} to {', '.join(s.smtp.recipients)}{digest}")


def _url(app: App, port: int) -> str:
    host = app.settings.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}/"
