"""Shared fixtures: the real embedding model (loaded once per session) and app builders."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from kb.embedding import HashEmbedder, SentenceTransformerEmbedder
from kb.models import offline_environment
from kb.settings import load_settings
from kbapp.app import App

offline_environment()
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def real_embedder() -> SentenceTransformerEmbedder:
    emb = SentenceTransformerEmbedder("all-MiniLM-L6-v2", batch_size=32, threads=os.cpu_count() or 1)
    emb.embed(["warm up"])
    return emb


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, real_embedder: SentenceTransformerEmbedder) -> Iterator[App]:
    """A real App (the real model, embedded Chroma, parsing in-process) shared by one test module."""
    settings = load_settings(data_dir=tmp_path_factory.mktemp("app") / "data", workers=0, summary_llm=False)
    application = App(settings, embedder=real_embedder)
    yield application
    application.close()


AppFactory = Callable[..., App]


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[AppFactory]:
    """Build Apps on a temp data dir; pass embedder=... (default: the fast deterministic fake)."""
    apps: list[App] = []

    def build(embedder: Any = None, data_dir: Path | None = None, **overrides: Any) -> App:
        overrides.setdefault("workers", 0)
        # summaries of recordings stay extractive unless a test gives a model: the real one costs seconds each
        overrides.setdefault("summary_llm", False)
        settings = load_settings(data_dir=data_dir or tmp_path / "data", **overrides)
        app = App(settings, embedder=embedder or HashEmbedder())
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.close()


def kb_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """Environment for running the `kb` CLI as a subprocess against a temp data dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KB_")}
    env.update({"KB_DATA_DIR": str(data_dir), "KB_WORKERS": "0", "KB_SUMMARY_LLM": "false",
                "KB_LLM_PRELOAD": "false"}, **extra)
    return env


KB = str(Path(sys.executable).parent / "kb")


@pytest.fixture
def imap_server() -> Iterator[Any]:
    """A real Dovecot on 127.0.0.1 (generated config, Maildir, one user), stopped and removed afterwards."""
    import dovecot

    if not dovecot.available():
        pytest.skip(f"Dovecot is not installed ({dovecot.DOVECOT}; Debian package dovecot-imapd)")
    with dovecot.Dovecot() as server:
        yield server
