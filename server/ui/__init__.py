"""The web UI's pages: server-rendered Jinja templates, one CSS file and a little plain JavaScript.

`create_app` (server/app.py) registers `ui_routes()`, serves STATIC_DIR at /static and renders templates
from TEMPLATE_DIR. `error_page` is the handler for pages that fail or do not exist (HTML, not JSON).
"""

from __future__ import annotations

from pathlib import Path

from litestar.types import ControllerRouterHandler

HERE = Path(__file__).resolve().parent
TEMPLATE_DIR: Path = HERE / "templates"
STATIC_DIR: Path = HERE / "static"


def ui_routes() -> list[ControllerRouterHandler]:
    """The page handlers (search, ask, documents, library, meetings, upload, status, login)."""
    from server.ui.pages import pages_router

    return [pages_router()]


__all__ = ["STATIC_DIR", "TEMPLATE_DIR", "ui_routes"]
