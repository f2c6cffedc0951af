"""The web service's guards, through Litestar's test client on create_app over a real App (fake embedder):
auth on and off, login with its rate limit, sessions and logout, bearer tokens, CSRF, the security headers,
and the refusal to listen beyond loopback without a password."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import AppFactory
from litestar.testing import TestClient

from kb.errors import ConfigError
from kb.settings import load_settings
from kbapp.cli import main
from server.app import create_app
from server.security import CSP, check_bind, hash_password, is_loopback, safe_next

PASSWORD = "correct horse battery"
TOKEN = "tok-0123456789abcdef"
HTML = {"accept": "text/html"}


@pytest.fixture
def hashed() -> str:
    return hash_password(PASSWORD)


def client(app: Any, base_url: str = "http://testserver.local") -> TestClient[Any]:
    return TestClient(create_app(app, app.settings, secret_path=app.settings.data_dir / ".run" / "web-secret"),
                      base_url=base_url)


def csrf(c: TestClient[Any]) -> str:
    """The CSRF token a page would carry: GET a page (the cookie is set), read the cookie."""
    c.get("/login", headers=HTML)
    token = c.cookies.get("csrftoken")
    assert token
    return str(token)


@pytest.fixture
def locked(make_app: AppFactory, hashed: str, tmp_path: Path) -> Iterator[TestClient[Any]]:
    """A client of a service with an admin password and an API token."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    app = make_app(admin_password_hash=hashed, api_token_file=token_file)
    with client(app) as c:
        yield c


def login(c: TestClient[Any], password: str = PASSWORD, next: str = "/") -> Any:
    return c.post("/login", data={"password": password, "next": next, "_csrf_token": csrf(c)},
                  follow_redirects=False)


def test_open_on_loopback_without_a_password_with_security_headers_everywhere(make_app: AppFactory) -> None:
    app = make_app()
    with client(app) as c:
        for path in ("/", "/api/v1/documents", "/api/v1/status", "/no-such-page", "/api/v1/documents/999"):
            r = c.get(path, headers=HTML)
            assert r.status_code in (200, 404), (path, r.status_code)
            assert r.headers["content-security-policy"] == CSP
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["referrer-policy"] == "same-origin"
            assert r.headers["x-frame-options"] == "SAMEORIGIN"
        assert "unsafe-inline" not in CSP and "script-src 'self'" in CSP
        assert c.get("/api/v1/documents").json()["total"] == 0


def test_everything_but_login_static_and_health_needs_a_login(locked: TestClient[Any]) -> None:
    r = locked.get("/api/v1/documents")
    assert r.status_code == 401 and r.json()["error"]["type"] == "NotAuthorized"
    assert r.headers["www-authenticate"].startswith("Bearer")
    r = locked.get("/?q=boiler&kind=mail", headers=HTML, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login?next=%2F%3Fq%3Dboiler%26kind%3Dmail"
    for path in ("/api/v1/status", "/api/v1/search?q=x", "/api/v1/documents/1/original", "/api/v1/schema"):
        assert locked.get(path).status_code == 401, path
    assert locked.post("/api/v1/upload", files={"f": ("a.txt", b"x")}).status_code == 401
    assert locked.get("/login", headers=HTML).status_code == 200
    assert locked.get("/static/app.css").status_code == 200
    assert locked.get("/api/v1/health").json()["ok"] is True


def test_login_sets_a_strict_session_cookie_and_logout_ends_it(locked: TestClient[Any]) -> None:
    r = login(locked, next="/library")
    assert r.status_code == 303 and r.headers["location"] == "/library"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("kb_session=") and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert "Secure" not in cookie  # plain HTTP on loopback; see the next test for HTTPS
    session = locked.cookies.get("kb_session")
    assert locked.get("/api/v1/documents").status_code == 200
    r = locked.post("/logout", headers={"x-csrftoken": csrf(locked)}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert locked.get("/api/v1/documents").status_code == 401
    # the old cookie, kept and sent again, no longer works
    locked.cookies.set("kb_session", str(session))
    assert locked.get("/api/v1/documents").status_code == 401
    # a forged or tampered cookie neither
    for bad in ("1.2.3", "9999999999.abc.def", str(session)[:-2] + "00", "", "a" * 5000):
        locked.cookies.set("kb_session", bad)
        assert locked.get("/api/v1/documents").status_code == 401, bad


def test_cookie_is_secure_when_configured(make_app: AppFactory, hashed: str) -> None:
    app = make_app(admin_password_hash=hashed, cookie_secure=True)
    with client(app, "https://testserver.local") as c:
        assert "Secure" in login(c).headers["set-cookie"]
    with client(make_app(admin_password_hash=hashed, data_dir=app.settings.data_dir.parent / "b"),
                "https://testserver.local") as c:  # over HTTPS the cookie is Secure without the setting too
        assert "Secure" in login(c).headers["set-cookie"]


def test_wrong_password_and_open_redirects(locked: TestClient[Any]) -> None:
    r = login(locked, password="wrong password")
    assert r.status_code == 303 and r.headers["location"].startswith("/login?error=1")
    assert locked.get("/api/v1/documents").status_code == 401
    for evil in ("//evil.example/", "https://evil.example/", "/\\evil.example", "javascript:alert(1)"):
        r = login(locked, next=evil)
        assert r.headers["location"] == "/", evil
    assert safe_next("/documents/3?chunk=x") == "/documents/3?chunk=x"


def test_login_is_rate_limited_per_address(locked: TestClient[Any]) -> None:
    for _ in range(5):
        assert login(locked, password="guess guess").status_code == 303
    r = login(locked)  # even the right password waits now
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    assert r.json()["error"]["message"].startswith("too many failed logins")
    assert locked.get("/api/v1/documents").status_code == 401


def test_login_without_csrf_is_refused(locked: TestClient[Any]) -> None:
    r = locked.post("/login", data={"password": PASSWORD, "next": "/"}, follow_redirects=False)
    assert r.status_code == 403 and "CSRF" in r.json()["error"]["message"]
    assert locked.get("/api/v1/documents").status_code == 401


def test_bearer_token_for_the_api_needs_no_csrf(locked: TestClient[Any]) -> None:
    auth = {"authorization": f"Bearer {TOKEN}"}
    assert locked.get("/api/v1/documents", headers=auth).status_code == 200
    # an unsafe request with the token: no CSRF cookie or header needed (404: there is no document 5)
    r = locked.post("/api/v1/documents/5/retry", headers=auth)
    assert r.status_code == 404 and r.json() == {"error": {"type": "NotFound", "message": "no document 5"}}
    for bad in (f"Bearer {TOKEN}x", "Bearer ", f"Bearer {TOKEN[:-1]}", "Bearer " + "x" * 10000):
        r = locked.get("/api/v1/documents", headers={"authorization": bad})
        assert r.status_code == 401, bad


def test_csrf_guards_unsafe_requests_even_with_auth_off(make_app: AppFactory) -> None:
    """A page on another site must not drive the service on 127.0.0.1 through the person's browser."""
    app = make_app()
    with client(app) as c:
        token = csrf(c)
        assert c.post("/api/v1/documents/1/forget").status_code == 403
        assert c.post("/api/v1/documents/1/forget", headers={"x-csrftoken": "0" * 128}).status_code == 403
        assert c.post("/api/v1/reindex", json={}).status_code == 403
        r = c.post("/api/v1/documents/1/forget", headers={"x-csrftoken": token})
        assert r.status_code == 404  # past CSRF: there is no document 1
        # a token from another service (another secret) does not pass
        other = make_app(data_dir=app.settings.data_dir.parent / "other")
        with client(other) as c2:
            foreign = csrf(c2)
        assert c.post("/api/v1/documents/1/forget", headers={"x-csrftoken": foreign}).status_code == 403


def test_routes_naming_server_paths_are_not_served_over_http(make_app: AppFactory) -> None:
    """`kb ingest /etc` is the CLI's (Unix socket); over HTTP files come by upload, items by ref."""
    app = make_app()
    with client(app) as c:
        token = csrf(c)
        for route in ("/api/v1/ingest", "/api/v1/forget", "/api/v1/summarize"):
            r = c.post(route, json={"paths": ["/etc"]}, headers={"x-csrftoken": token})
            assert r.status_code in (404, 405), route
        assert c.get("/api/v1/search", params={"q": "x" * 2001}).status_code == 400


def test_unix_socket_api_needs_no_login_or_csrf(make_app: AppFactory, hashed: str) -> None:
    """The CLI's path: the socket's folder (0700) is the guard; its routes are the JSON API only."""
    from server.api import create_api

    app = make_app(admin_password_hash=hashed)
    with TestClient(create_api(app)) as c:
        assert c.get("/api/v1/documents").status_code == 200
        assert c.post("/api/v1/search", json={"query": "x"}).status_code == 200
        assert c.get("/").status_code == 404


def test_refuses_to_listen_beyond_loopback_without_a_password(tmp_path: Path, hashed: str) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")
    with pytest.raises(ConfigError, match=r"refusing to listen on 0\.0\.0\.0"):
        check_bind(load_settings(data_dir=tmp_path, host="0.0.0.0"))
    check_bind(load_settings(data_dir=tmp_path, host="0.0.0.0", admin_password_hash=hashed))
    check_bind(load_settings(data_dir=tmp_path))

    runner = CliRunner()
    env = {"KB_DATA_DIR": str(tmp_path / "data"), "KB_HOST": ""}
    r = runner.invoke(main, ["serve", "--host", "0.0.0.0", "--port", "0"], env=env)
    assert r.exit_code == 2
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("kb: error: refusing to listen on 0.0.0.0"), r.output
    assert "Traceback" not in r.output


def test_password_settings_and_hash_helper(tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["hash-password", "--password-stdin"], input=PASSWORD + "\n")
    assert r.exit_code == 0
    digest = r.output.strip()
    assert digest.startswith("$argon2id$") and PASSWORD not in digest
    from server.security import Guard

    g = Guard(load_settings(data_dir=tmp_path, admin_password_hash=digest))
    assert g.enabled and g.check_password(PASSWORD) and not g.check_password(PASSWORD + " ")
    assert not g.check_password("")
    with pytest.raises(ConfigError, match="argon2"):
        load_settings(data_dir=tmp_path, admin_password_hash="plaintext-password")
    pw = tmp_path / "pw"
    pw.write_text("short\n")
    with pytest.raises(ConfigError, match="shorter than 8"):
        load_settings(data_dir=tmp_path, admin_password_file=pw)
    pw.write_text(PASSWORD + "\n")
    s = load_settings(data_dir=tmp_path, admin_password_file=pw)
    assert Guard(s).check_password(PASSWORD)
    # secrets never appear in the printed configuration
    assert PASSWORD not in s.model_dump_json() and not re.search(r'"admin_password"', s.model_dump_json())
    assert load_settings(data_dir=tmp_path, port=9000).public_url() == "http://127.0.0.1:9000"
    assert load_settings(data_dir=tmp_path, base_url="https://kb.example.org/").public_url() == "https://kb.example.org"


def test_sessions_survive_a_restart_but_not_a_password_change(make_app: AppFactory, hashed: str) -> None:
    app = make_app(admin_password_hash=hashed)
    with client(app) as c:
        login(c)
        session = c.cookies.get("kb_session")
    with client(app) as c:  # a new app object (a restart), same data directory
        c.cookies.set("kb_session", str(session))
        assert c.get("/api/v1/documents").status_code == 200
    app2 = make_app(admin_password_hash=hash_password("another password"), data_dir=app.settings.data_dir)
    with client(app2) as c:
        c.cookies.set("kb_session", str(session))
        assert c.get("/api/v1/documents").status_code == 401


def test_the_listening_socket_is_tcp_so_answers_on_a_kept_alive_connection_are_not_held_back(
    make_app: AppFactory,
) -> None:
    """asyncio turns Nagle off only on sockets whose proto is TCP; with it on, each request after the first on
    a kept-alive connection waited ~40 ms for a delayed ACK. A real request over two requests of one connection
    checks the server answers (the speed itself is bench/serve.py's)."""
    import socket

    import httpx

    from kbapp.service import HttpServer

    app = make_app(port=0)
    server = HttpServer(app)
    try:
        assert server.socket.proto == socket.IPPROTO_TCP
        server.start()
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}") as c:
            assert [c.get("/api/v1/health").status_code for _ in range(2)] == [200, 200]
    finally:
        server.stop()
