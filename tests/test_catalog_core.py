"""The catalog's migrations and job queue, and file names of any bytes (fast: SQLite only, fake clock)."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from conftest import AppFactory

from kb.catalog import Catalog
from kb.errors import CatalogError
from kb.jobs import DONE, FAILED, HELD, QUEUED, RUNNING, JobQueue
from kb.migrations import LATEST
from kb.paths import display, from_uri, to_uri

OLD = Path(__file__).parent / "data" / "catalog-foundation-v1.sqlite3"
SERVICE_V4 = Path(__file__).parent / "data" / "catalog-service-v4.sqlite3"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def queue(tmp_path: Path) -> JobQueue:
    return JobQueue(Catalog(tmp_path / "c.sqlite3"), clock=Clock(), retry_base_s=10, max_attempts=3)


def test_migration_from_the_foundation_catalog_keeps_documents(make_app: AppFactory, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(OLD, data / "catalog.sqlite3")
    app = make_app(data_dir=data)
    assert app.catalog.get_meta("schema_version") == str(LATEST)
    versions = [r["version"] for r in app.catalog.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == list(range(1, LATEST + 1))
    stats = app.catalog.stats()
    assert stats["documents"] == 2 and stats["chunks"] == 2
    assert app.catalog.get_meta("collection") == "kb_chunks"  # its vectors' collection, until a reindex
    # the Chroma store did not come along: recovery notices the missing vectors and repairs them
    report = app.recover()
    assert report.missing_vectors == 2
    app.start_workers()
    try:
        import time

        deadline = time.monotonic() + 30
        while app.jobs.by_key("repair").state != DONE and time.monotonic() < deadline:  # type: ignore[union-attr]
            time.sleep(0.05)
    finally:
        app.stop_workers()
    assert app.index().all_ids() == app.catalog.all_chunk_ids()
    found = app.search("lighthouse keeper wick", k=1)
    assert found[0]["path"] == "/tmp/oldgen/in/keeper.txt"


def test_a_newer_catalog_is_refused(tmp_path: Path) -> None:
    Catalog(tmp_path / "c.sqlite3").close()
    with sqlite3.connect(tmp_path / "c.sqlite3") as db:
        db.execute("INSERT INTO schema_migrations(version, name, applied_at) VALUES (?, 'future', 0)", (LATEST + 1,))
    with pytest.raises(CatalogError, match="newer kb"):
        Catalog(tmp_path / "c.sqlite3")


def test_a_catalog_of_the_service_core_upgrades_and_its_text_is_found(tmp_path: Path) -> None:
    """A catalog written by the previous code (schema 4: jobs, claims, outcomes) gains tags, mail sync state,
    chunk roles and the new keyword indexes (built from its rows) through recorded migrations 5 and 6."""
    from retrieval.filters import Filters
    from retrieval.lexical import Lexical
    from retrieval.query import parse

    path = tmp_path / "catalog.sqlite3"
    shutil.copy(SERVICE_V4, path)
    before = sqlite3.connect(path).execute("SELECT max(version) FROM schema_migrations").fetchone()[0]
    assert before == 4
    cat = Catalog(path)
    versions = [r["version"] for r in cat.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == list(range(1, LATEST + 1))
    sources = {from_uri(s.uri).name: s for s in cat.all_sources()}
    assert set(sources) == {"keeper.txt", "memo.eml"}
    assert all(s.tag is None and s.parent_uri is None and s.status == "indexed" for s in sources.values())
    assert cat.execute("SELECT count(*) n FROM mail_folders")[0]["n"] == 0
    assert {r["role"] for r in cat.execute("SELECT role FROM chunks")} == {None}
    found = Lexical(cat).documents(parse('"leaking boiler"'), 5, Filters())
    assert list(found) == [sources["memo.eml"].doc_id]
    found = Lexical(cat).documents(parse("wick AND lighthouse"), 5, Filters())
    assert list(found) == [sources["keeper.txt"].doc_id]


def test_migrations_run_once(tmp_path: Path) -> None:
    Catalog(tmp_path / "c.sqlite3").close()
    c = Catalog(tmp_path / "c.sqlite3")
    assert len(c.execute("SELECT * FROM schema_migrations")) == LATEST
    first = c.get_meta("instance_id")
    c.close()
    assert Catalog(tmp_path / "c.sqlite3").get_meta("instance_id") == first


def test_a_job_is_never_queued_twice(queue: JobQueue) -> None:
    a = queue.submit("ingest", "/x/a.txt")
    assert queue.submit("ingest", "/x/a.txt") == a
    assert queue.counts() == {QUEUED: 1}
    assert queue.submit("forget", "/x/a.txt") == a  # the newest request for a source wins
    job = queue.claim(["fast"])
    assert job is not None and job.action == "forget" and job.state == RUNNING
    # asked again while running: it runs once more afterwards, with the new action
    queue.submit("ingest", "/x/a.txt")
    queue.complete(a, "removed")
    again = queue.get(a)
    assert again is not None and again.state == QUEUED and again.action == "ingest"


def test_backoff_then_failed_then_retry(queue: JobQueue) -> None:
    clock: Clock = queue.clock  # type: ignore[assignment]
    j = queue.submit("ingest", "/x/half-written.pdf")
    for attempt in (1, 2):
        job = queue.claim(["fast"])
        assert job is not None and job.attempts == attempt
        assert queue.fail(j, "parsing stopped after 600 s without progress", transient=True)
        wait = queue.get(j).run_after - clock.now  # type: ignore[union-attr]
        assert 9 * 2 ** (attempt - 1) <= wait <= 11 * 2 ** (attempt - 1)  # exponential, with jitter
        assert queue.claim(["fast"]) is None  # not due yet
        clock.now += wait + 1
    assert queue.claim(["fast"]) is not None
    assert not queue.fail(j, "still broken", transient=True)  # attempts used up
    assert queue.get(j).state == FAILED and queue.get(j).last_error == "still broken"  # type: ignore[union-attr]
    assert queue.retry() == 1 and queue.get(j).state == QUEUED and queue.get(j).attempts == 0  # type: ignore[union-attr]
    job = queue.claim(["fast"])
    assert job is not None
    assert not queue.fail(j, "encrypted PDF", transient=False)  # a lasting failure is not retried
    assert queue.get(j).state == FAILED  # type: ignore[union-attr]


def test_lease_expiry_and_restart(queue: JobQueue) -> None:
    clock: Clock = queue.clock  # type: ignore[assignment]
    j = queue.submit("ingest", "/x/a.txt")
    assert queue.claim(["fast"]) is not None
    assert queue.claim(["fast"]) is None
    clock.now += queue.lease_s / 2
    queue.heartbeat([j])  # a live worker keeps its job
    clock.now += queue.lease_s * 0.9
    assert queue.claim(["fast"]) is None
    clock.now += queue.lease_s  # the worker died: its job is taken again
    again = queue.claim(["fast"])
    assert again is not None and again.id == j and again.attempts == 2
    # at service start every running job is orphaned and goes back without counting an attempt
    assert queue.requeue_running() == 1
    assert queue.get(j).state == QUEUED and queue.get(j).attempts == 1  # type: ignore[union-attr]


def test_lanes_keep_long_work_out_of_the_way(queue: JobQueue) -> None:
    queue.submit("ingest", "/x/meeting.mp3", lane="slow")
    queue.submit("ingest", "/x/note.txt", lane="fast")
    slow = queue.claim(["slow"])
    fast = queue.claim(["fast"])
    assert slow is not None and slow.uri == "/x/meeting.mp3"
    assert fast is not None and fast.uri == "/x/note.txt"


def test_batches_settle_and_held_jobs(queue: JobQueue) -> None:
    batch = queue.new_batch("ingest")
    with queue.transaction() as db:
        a = queue.enqueue(db, "ingest", "/x/a", batch=batch)
        b = queue.enqueue(db, "ingest", "/x/b", batch=batch)
        queue.enqueue(db, "forget", "/x/c", batch=batch, state=HELD)
    state = queue.batch(batch)
    assert state is not None and not state["complete"] and state["jobs"] == 3
    queue.claim(["fast"])
    queue.complete(a, "added")
    queue.claim(["fast"])
    queue.fail(b, "timed out", transient=True)  # retrying later: settled for the requester
    state = queue.batch(batch)
    assert state is not None and state["complete"]
    assert state["outcomes"] == {"added": 1, "failed": 1, "held": 1}
    assert state["failures"][0]["retry_at"] is not None
    assert queue.release_held(confirm=True) == 1


def test_uris_of_any_bytes_round_trip(tmp_path: Path) -> None:
    raw = os.fsencode(tmp_path) + b"/r\xe9sum\xff\x1b.txt"
    path = Path(os.fsdecode(raw))
    uri = to_uri(path)
    uri.encode("utf-8")  # storable
    assert os.fsencode(from_uri(uri)) == raw
    assert display(uri).endswith("/r\\xe9sum\\xff\\x1b.txt")
    # prefixes survive: a folder's uri is a prefix of its files' uris
    assert to_uri(path).startswith(to_uri(tmp_path) + "/")
