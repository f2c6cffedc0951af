"""The same pipeline against a Chroma server (`chroma run` + HttpClient) instead of the embedded store.

Several instances may share one server: each keeps its vectors in collections named after its instance id.
"""

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

from kb.embedding import SentenceTransformerEmbedder

pytestmark = pytest.mark.slow

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
    r = app.ingest([folder])
    assert (r["added"], r["failed"], r["complete"]) == (2, 0, True)
    assert app.index().all_ids() == app.catalog.all_chunk_ids()
    hits = app.search("harbour pier", k=1)
    assert hits[0]["paths"] == [str(folder / "b.txt")]
    (folder / "b.txt").unlink()
    r = app.ingest([folder])
    assert (r["removed"], r["unchanged"]) == (1, 1)
    assert app.index().count() == app.catalog.chunk_count() == 1
    assert not (tmp_path / "data" / "chroma").exists()  # nothing was written to the embedded store


def test_two_instances_share_a_server_but_not_their_vectors(
    make_app: AppFactory, tmp_path: Path, chroma_server: str, real_embedder: SentenceTransformerEmbedder
) -> None:
    one = make_app(embedder=real_embedder, data_dir=tmp_path / "one", chroma_url=chroma_server)
    two = make_app(embedder=real_embedder, data_dir=tmp_path / "two", chroma_url=chroma_server)
    pier = "Harbour works. The council approved the repair of the old harbour pier after the winter storms."
    f1, f2 = tmp_path / "f1", tmp_path / "f2"
    for folder, notes in (
        (f1, {"tomatoes": "Greenhouse diary. The tomatoes ripened early thanks to the heated greenhouse.",
              "pier": pier}),
        (f2, {"rocket": "Launch plan. The rocket launches on Tuesday from the coastal pad if the weather holds.",
              "bread": "Bakery notes. Our sourdough needs a starter fed twice a day and a long cold proof.",
              "pier": pier}),  # the same content in both: the same chunk ids in both
    ):
        folder.mkdir()
        for name, text in notes.items():
            (folder / f"{name}.txt").write_text(text + "\n")
    assert one.ingest([f1])["added"] == 2
    assert two.ingest([f2])["added"] == 3

    names = (one.catalog.get_meta("collection"), two.catalog.get_meta("collection"))
    assert names[0] != names[1] and set(one.vectors.names()) >= set(names)
    two_ids = two.index().all_ids()
    assert two_ids == two.catalog.all_chunk_ids() and len(two_ids) == 3
    assert one.index().all_ids() == one.catalog.all_chunk_ids()
    shared = one.index().all_ids() & two_ids
    assert len(shared) == 1  # the pier note's passage, in each instance's own collection

    assert one.forget([f1 / "pier.txt"]) == 1
    assert one.index().all_ids() == one.catalog.all_chunk_ids() and len(one.catalog.all_chunk_ids()) == 1
    assert two.index().all_ids() == two_ids >= shared  # forgetting in one removed nothing of two's
    one.reindex()
    one.recover()  # drops stale collections: only its own
    rebuilt = one.catalog.get_meta("collection")
    assert rebuilt is not None and rebuilt != names[0] and rebuilt.endswith("_2")
    assert one.index().name == rebuilt and one.index().all_ids() == one.catalog.all_chunk_ids()
    assert set(one.vectors.names()) == {rebuilt, names[1]}

    assert two.catalog.get_meta("collection") == names[1]
    assert two.index().all_ids() == two_ids == two.catalog.all_chunk_ids()
    assert two.search("repair of the harbour pier", k=1)[0]["path"] == str(f2 / "pier.txt")
    assert two.search("when does the rocket launch", k=1)[0]["path"] == str(f2 / "rocket.txt")
    hits = one.search("repair of the harbour pier", k=3)
    assert [h["path"] for h in hits] == [str(f1 / "tomatoes.txt")]
