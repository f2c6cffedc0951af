"""Placeholder pages until the ui branch lands (its server/ui/__init__.py replaces this file at merge).

The contract: `ui_routes()` gives the page handlers, TEMPLATE_DIR the Jinja templates, STATIC_DIR the static
files served under /static.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar import Request, get
from litestar.response import Template
from litestar.types import ControllerRouterHandler

TEMPLATE_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"


@get("/", sync_to_thread=False)
def home(request: Request[Any, Any, Any], q: str | None = None) -> Template:
    """The search page (placeholder: a form; results come from /api/v1/search)."""
    return Template(template_name="placeholder.html", context={"q": q or "", "request": request})


@get("/login", sync_to_thread=False)
def login_page(request: Request[Any, Any, Any], next: str = "/") -> Template:
    """The login form: posts password, next and the CSRF field to /login."""
    return Template(template_name="login.html", context={"next": next})


def ui_routes() -> list[ControllerRouterHandler]:
    return [home, login_page]
