"""The `kb` command end to end with the real embedding model and Chroma, including kill -9 recovery."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from conftest import KB, AppFactory, kb_env
from fixtures import LOREM, write_all_formats

from kb.embedding import SentenceTransformerEmbedder

pytestmark = pytest.mark.slow


def kb(data: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([KB, *args], env=kb_env(data), capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_ingest_search_status_forget(tmp_path: Path) -> None:
    data = tmp_path / "data"
    docs = tmp_path / "docs"
    files = write_all_formats(docs)
    out = json.loads(kb(data, "ingest", str(docs), "--json").stdout)
    assert out["added"] == len(files) and out["failed"] == 0

    hits = json.loads(kb(data, "search", "when does the rocket launch", "-k", "3", "--json").stdout)
    assert hits[0]["path"] == str(files["pptx"])
    assert hits[0]["page"] == 1 and hits[0]["score"] > 0 and "rocket" in hits[0]["snippet"].lower()
    hits = json.loads(kb(data, "search", "cost of the new pier", "--json").stdout)
    assert hits[0]["path"] == str(files["pdf"]) and hits[0]["page"] == 2

    only_mail = json.loads(kb(data, "search", "boiler", "--kind", "mail", "--json").stdout)
    assert only_mail and {h["kind"] for h in only_mail} == {"mail"}
    only_pdf = json.loads(kb(data, "search", "boiler", "--type", ".PDF", "--json").stdout)
    assert {h["file_type"] for h in only_pdf} == {"pdf"}

    text = kb(data, "search", "sourdough", "-k", "1").stdout
    assert "Bakery Hours" in text and "page.html" in text

    status = json.loads(kb(data, "status", "--json").stdout)
    assert status["documents"] == len(files) and status["documents_by_kind"]["mail"] == 1
    assert status["embed_model"] == "all-MiniLM-L6-v2" and status["service"] == "not running"
    assert status["jobs"] == {"done": len(files) + 1}  # one per file, and the folder's scan
    first_collection = status["collection"]
    assert first_collection.startswith("kb_") and first_collection.endswith("_1")

    again = json.loads(kb(data, "ingest", str(docs), "--json").stdout)
    assert again["files"] == again["unchanged"] == len(files)
    assert again["added"] == again["updated"] == again["failed"] == again["removed"] == 0 and again["complete"]

    assert "forgot 1 file" in kb(data, "forget", str(files["pptx"])).stdout
    hits = json.loads(kb(data, "search", "when does the rocket launch", "--json").stdout)
    assert all(h["path"] != str(files["pptx"]) for h in hits)

    out = kb(data, "reindex").stdout
    assert out.startswith("rebuilt the index in ") and "failed" not in out
    status = json.loads(kb(data, "status", "--json").stdout)
    assert status["collection"] == first_collection[: -len("1")] + "2"
    assert status["documents"] == len(files) - 1
    hits = json.loads(kb(data, "search", "cost of the new pier", "--json").stdout)
    assert hits[0]["path"] == str(files["pdf"])


def test_failures_reported(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "ok.txt").write_text("A perfectly fine note about otters.")
    (tmp_path / "in" / "broken.pdf").write_bytes(b"%PDF-1.7 not really")
    out = kb(data, "ingest", str(tmp_path / "in")).stdout
    assert "1 added" in out and "1 failed" in out and "broken.pdf" in out and "PDF" in out
    status = kb(data, "status").stdout
    assert "recent failures" in status and "broken.pdf" in status


def test_bad_setting_is_a_clear_error(tmp_path: Path) -> None:
    proc = subprocess.run([KB, "status"], env=kb_env(tmp_path, KB_WORKERS="lots"), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "KB_WORKERS" in proc.stderr and "Traceback" not in proc.stderr


def test_quiet_without_verbose(tmp_path: Path) -> None:
    data = tmp_path / "data"
    note = tmp_path / "note.txt"
    note.write_text("A perfectly fine note about otters.")
    proc = kb(data, "ingest", str(note))
    assert proc.stdout.startswith("1 files in ") and "1 added" in proc.stdout
    assert not [line for line in proc.stderr.splitlines() if line.startswith("INFO")], proc.stderr


def _doc_count(data: Path) -> int:
    try:
        with sqlite3.connect(f"file:{data / 'catalog.sqlite3'}?mode=ro", uri=True, timeout=1) as db:
            return int(db.execute("SELECT count(*) FROM documents").fetchone()[0])
    except sqlite3.Error:
        return 0


def _kill_when(data: Path, folder: Path, *, docs: int | None = None, after_s: float | None = None) -> None:
    """Run a one-off `kb ingest` (the owner of the directory) and kill -9 it at the given point."""
    proc = subprocess.Popen([KB, "ingest", str(folder)], env=kb_env(data), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        start = time.monotonic()
        while proc.poll() is None and time.monotonic() < deadline:
            if docs is not None and _doc_count(data) >= docs:
                break
            if after_s is not None and time.monotonic() - start >= after_s:
                break
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def test_kill_9_anywhere_then_rerun_is_clean(
    tmp_path: Path, make_app: AppFactory, real_embedder: SentenceTransformerEmbedder
) -> None:
    data = tmp_path / "data"
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(30):
        (folder / f"doc{i:02d}.txt").write_text(f"Document {i}\n\n" + (LOREM + f"Marker{i}. ") * 12)
    _kill_when(data, folder, after_s=1.0)  # during start-up
    _kill_when(data, folder, docs=4)  # mid-run
    _kill_when(data, folder, docs=12)
    for i in range(0, 30, 3):  # changed files: old versions must be replaced, never mixed
        (folder / f"doc{i:02d}.txt").write_text(f"Revised {i}\n\n" + (LOREM + f"Revision{i}. ") * 12)
    _kill_when(data, folder, after_s=9.0)  # replacing versions: the document count barely moves
    out = kb(data, "ingest", str(folder)).stdout
    assert out.startswith("30 files in ") and "0 failed" in out, out

    app = make_app(embedder=real_embedder, data_dir=data)
    stats = app.catalog.stats()
    assert stats["sources_by_status"] == {"indexed": 30}
    assert stats["documents"] == 30 and set(stats["documents_by_status"]) == {"indexed"}
    assert app.index().all_ids() == app.catalog.all_chunk_ids()
    assert app.index().count() == app.catalog.chunk_count()
    texts = [c.text for d in range(1, 200) for c in app.catalog.chunks_of(d)]
    assert not any(f"Marker{i}." in t for i in range(0, 30, 3) for t in texts)
    assert all(any(f"Revision{i}." in t for t in texts) for i in range(0, 30, 3))
    # nothing running or failed; a one-off command does only its own work, so a killed run's scan that never
    # started may wait for the service (it finds nothing new then): the only work allowed to be left
    counts = app.jobs.counts()
    assert set(counts) <= {"done", "queued"}, counts
    assert {j.action for j in app.jobs.jobs(["queued"])} <= {"scan"}
    app.close()
    again = json.loads(kb(data, "ingest", str(folder), "--json").stdout)
    assert again["unchanged"] == 30 and again["added"] == again["updated"] == again["failed"] == 0
