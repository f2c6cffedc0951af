"""The same pipeline against a Chroma server (`chroma run` + HttpClient) instead of the embedded store."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import AppFactory

CHROMA = str(Path(sys.executable).parent / "chroma")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def chroma_server(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = (tmp_path / "chroma.log").open("w")
    proc = subprocess.Popen(
        [CHROMA, "run", "--path", str(tmp_path / "chroma-server"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url + "/api/v2/heartbeat", timeout=1)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("chroma server did not start: " + (tmp_path / "chroma.log").read_text())
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_pipeline_against_chroma_server(make_app: AppFactory, tmp_path: Path, chroma_server: str) -> None:
    app = make_app(chroma_url=chroma_server)
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.txt").write_text("Notes about the greenhouse tomatoes.")
    (folder / "b.txt").write_text("Notes about the harbour pier.")
    r = app.ingestor.ingest([folder])
    assert r.added == 2
    assert app.index().all_ids() == app.catalog.all_chunk_ids()
    hits = app.searcher.search("harbour pier", k=1)
    assert hits[0].document.paths == [str(folder / "b.txt")]
    (folder / "b.txt").unlink()
    app.ingestor.ingest([folder])
    assert app.index().count() == app.catalog.chunk_count() == 1
    assert not (tmp_path / "data" / "chroma").exists()  # nothing was written to the embedded store
