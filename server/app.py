"""The web application: the pages (server/ui), their static files and templates, the JSON API under /api/v1,
login and logout, with auth, CSRF and the security headers around all of it.

`create_app(library, settings)` is what `kb serve` runs (kbapp/service.py) and what the route tests use.
Pages and API handlers get `library` (the App) and `settings` as dependencies; `request.user` is "admin"
or None and `request.auth` says how the request got in ("open", "session", "bearer", or None);
`request.app.state.auth_enabled` says whether a login exists at all.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from litestar import Litestar, Request, Response, post
from litestar.config.csrf import CSRFConfig
from litestar.datastructures import Cookie, State
from litestar.di import Provide
from litestar.enums import RequestEncodingType
from litestar.exceptions import HTTPException
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.params import Body
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from kb.settings import Settings
from server.api import API, CORE_HANDLERS, PATH_HANDLERS, WEB_HANDLERS, _error
from server.files import original, upload
from server.security import (
    CSRF_COOKIE,
    CSRF_HEADER,
    SESSION_COOKIE,
    AuthMiddleware,
    AuthState,
    Guard,
    client_address,
    safe_next,
    security_headers,
)

if TYPE_CHECKING:
    SettingsDep = Settings
else:  # an injected dependency is passed as is, not validated as a model
    SettingsDep = Any


def _secure(request: Request[Any, Any, Any], settings: Settings) -> bool:
    return settings.cookie_secure or request.url.scheme == "https"


@post("/login", status_code=303, sync_to_thread=False)
def login(
    request: Request[Any, Any, Any], settings: SettingsDep,
    data: dict[str, str] = Body(media_type=RequestEncodingType.URL_ENCODED),  # noqa: B008
) -> Response[Any]:
    """Check the admin password; on success a session cookie and a redirect to `next` (this site only).
    Five failures from one address within five minutes: 429 with Retry-After."""
    guard: Guard = request.app.state.guard
    client = client_address(request.scope)
    wait = guard.retry_after(client)
    if wait:
        raise HTTPException(status_code=429, detail=f"too many failed logins: try again in {wait} s",
                            headers={"retry-after": str(wait)})
    target = safe_next(data.get("next"))
    if not guard.password_login:
        raise HTTPException(status_code=400, detail="no admin password is configured: use the API token")
    if not guard.check_password(str(data.get("password") or "")):
        guard.failed(client)
        if "json" in (request.headers.get("accept") or ""):
            raise HTTPException(status_code=401, detail="wrong password")
        return Redirect(f"/login?error=1&next={_quote(target)}", status_code=303)
    guard.succeeded(client)
    cookie = Cookie(key=SESSION_COOKIE, value=guard.new_session(), httponly=True, samesite="lax",
                    secure=_secure(request, settings), path="/", max_age=int(settings.session_hours * 3600))
    return Redirect(target, status_code=303, cookies=[cookie])


@post("/logout", status_code=303, sync_to_thread=False)
def logout(request: Request[Any, Any, Any], settings: SettingsDep) -> Response[Any]:
    """End the session (its cookie stops working even if kept) and go to the login page."""
    guard: Guard = request.app.state.guard
    guard.end_session(request.cookies.get(SESSION_COOKIE))
    gone = Cookie(key=SESSION_COOKIE, value="", httponly=True, samesite="lax", secure=_secure(request, settings),
                  path="/", max_age=0)
    return Redirect("/login" if guard.enabled else "/", status_code=303, cookies=[gone])


def _quote(s: str) -> str:
    from urllib.parse import quote

    return quote(s, safe="")


def create_app(library: Any, settings: Settings, *, secret_path: Path | None = None, debug: bool = False) -> Litestar:
    """The web application over a library (the App), with auth, CSRF, CSP, pages and the JSON API.

    `secret_path` holds the key that signs session cookies (kb serve: under the data directory, so logins
    survive a restart); without it a fresh key is made per process.
    """
    from server.ui import STATIC_DIR, TEMPLATE_DIR, ui_routes

    guard = Guard(settings, secret_path)
    # the CSRF secret derives from the session key: stable across restarts, never configured by hand
    csrf_secret = hashlib.sha256(b"kb-csrf\0" + guard.secret).hexdigest()
    csrf = CSRFConfig(secret=csrf_secret, cookie_name=CSRF_COOKIE, header_name=CSRF_HEADER,
                      cookie_httponly=False, cookie_samesite="strict", cookie_secure=settings.cookie_secure)
    auth = AuthState(guard=guard, csrf=csrf, exempt_csrf={f"{API}/upload"})
    return Litestar(
        route_handlers=[
            *ui_routes(), login, logout, *[h for h in CORE_HANDLERS if h not in PATH_HANDLERS], *WEB_HANDLERS,
            original, upload,
            create_static_files_router(path="/static", directories=[STATIC_DIR], send_as_attachment=False),
        ],
        dependencies={
            "library": Provide(lambda: library, use_cache=True, sync_to_thread=False),
            "settings": Provide(lambda: settings, use_cache=True, sync_to_thread=False),
        },
        template_config=TemplateConfig(directory=TEMPLATE_DIR, engine=JinjaTemplateEngine),
        middleware=[DefineMiddleware(AuthMiddleware, state=auth)],
        before_send=[security_headers],
        exception_handlers={Exception: _error},
        openapi_config=OpenAPIConfig(title="kb", version="1", path=f"{API}/schema"),
        state=State({"guard": guard, "auth_enabled": guard.enabled, "csrf_secret": csrf_secret,
                     "settings": settings}),
        logging_config=None,
        debug=debug,
    )
