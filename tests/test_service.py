"""`kb watch` as a real subprocess: other commands as its clients, kill -9 and SIGTERM, interrupted rebuilds.

Everything is real: the service process with its parser processes, the embedding model, the embedded
Chroma store, and `kb` commands run from this process. The catalog is read (read-only) while the service
runs; Chroma only after it has stopped.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import psutil
import pytest
from conftest import KB, AppFactory, kb_env
from fixtures import LOREM

from kb.embedding import SentenceTransformerEmbedder

pytestmark = pytest.mark.slow

T = TypeVar("T")

TOPICS = {
    "tomatoes": "Greenhouse diary. The tomatoes ripened early this year thanks to the heated greenhouse.",
    "pier": "Harbour works. The council approved the repair of the old harbour pier after the winter storms.",
    "rocket": "Launch plan. The rocket launches on Tuesday from the coastal pad if the weather holds.",
    "bread": "Bakery notes. Our sourdough bread needs a starter fed twice a day and a long cold proof.",
}


# -- helpers --------------------------------------------------------------------------------------
def env_for(data: Path, inbox: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment of every kb process of one test: the data dir, its inbox, unbuffered output."""
    inbox = inbox or data.parent / "inbox"
    return kb_env(data, KB_INBOX=json.dumps([str(inbox)]), PYTHONUNBUFFERED="1", **extra)


def kb(data: Path, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([KB, *args], env=env_for(data), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    if check:
        assert proc.returncode == 0, f"kb {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def kb_json(data: Path, *args: str) -> Any:
    return json.loads(kb(data, *args, "--json").stdout)


def query(data: Path, sql: str, params: tuple[Any, ...] = (), timeout: float = 30) -> list[tuple[Any, ...]]:
    """Rows from the catalog, opened read-only (as a person's sqlite3 shell would, beside the service)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            uri = f"file:{data / 'catalog.sqlite3'}?mode=ro"
            with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5)) as db:
                return list(db.execute(sql, params).fetchall())
        except sqlite3.OperationalError:  # not created yet, or busy for longer than the timeout
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def meta(data: Path, key: str) -> str | None:
    rows = query(data, "SELECT value FROM meta WHERE key=?", (key,))
    return str(rows[0][0]) if rows else None


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 15.0, *, interval: float = 0.05,
             why: Callable[[], str] = lambda: "") -> T:
    """Poll until check() returns something truthy; fail with `what` (and why()) after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{why()}")
        time.sleep(interval)


def reap(procs: list[subprocess.Popen[str]]) -> None:
    """Kill whatever a failed test left running."""
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def write_notes(folder: Path, n: int, prefix: str = "note") -> list[Path]:
    """n short distinct notes (one passage each: cheap to embed on a slow machine)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"{prefix}{i:02d}.txt"
        p.write_text(f"Note {i}. This short note records observation number {i} and the word Marker{i}.\n")
        paths.append(p)
    return paths


def write_topics(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, text in TOPICS.items():
        out[name] = folder / f"{name}.txt"
        out[name].write_text(text + "\n")
    return out


class Service:
    """`kb watch` in a subprocess, its output in a log file; killed on exit from the `with` block."""

    def __init__(self, data: Path, inbox: Path, log: Path, *, scan_interval: float = 3600.0, workers: int = 1) -> None:
        self.data = data
        self.inbox = inbox
        self.log = log
        self.scan_interval = scan_interval
        self.workers = workers
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None

    def __enter__(self) -> Service:
        self.inbox.mkdir(parents=True, exist_ok=True)
        self._log_file = self.log.open("ab")
        self.proc = subprocess.Popen(
            [KB, "watch", "--scan-interval", str(self.scan_interval)],
            env=env_for(self.data, self.inbox, KB_WORKERS=str(self.workers)),
            stdout=self._log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=60)
        if self._log_file is not None:
            self._log_file.close()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self) -> str:
        return "service log (tail):\n" + self.output()[-3000:]

    def wait_ready(self, timeout: float = 240) -> None:
        """Until the service has loaded its model and started its workers, and `kb status` reaches it."""
        wait_for("the service to start", lambda: "kb: watching" in self.output() or not self.running(), timeout,
                 why=self.tail)
        assert self.running(), self.tail()
        status = kb_json(self.data, "status")
        assert status["service"] == "running", status

    def stop(self, timeout: float = 90) -> tuple[int, float]:
        """SIGTERM; returns (exit code, seconds it took to exit)."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the service did not stop within {timeout} s of SIGTERM\n{self.tail()}")
        return rc, time.monotonic() - started

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=60)

    def children(self) -> list[psutil.Process]:
        """Its parser processes (they lead their own sessions, so a signal to the service never reaches them)."""
        try:
            return list(psutil.Process(self.pid).children(recursive=True))
        except psutil.NoSuchProcess:
            return []


def assert_gone(procs: list[psutil.Process], timeout: float = 30) -> None:
    """The given processes exit by themselves (a parser whose service died must not linger)."""
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    assert not alive, f"left running: {alive}"


def jobs_left(data: Path) -> list[tuple[Any, ...]]:
    return query(data, "SELECT id, key, state FROM jobs WHERE state IN ('queued', 'running')")


def indexed_count(data: Path, prefix: str) -> int:
    rows = query(data, "SELECT count(*) FROM sources WHERE status='indexed' AND uri LIKE ?", (prefix + "%",))
    return int(rows[0][0])


def assert_each_once(data: Path, files: list[Path]) -> None:
    """Each file: one source row, one indexed document with its chunks stored once, one version seen."""
    uris = [str(p) for p in files]
    marks = ",".join("?" * len(uris))
    rows = query(data, f"SELECT uri, count(*), min(status), min(doc_id) FROM sources WHERE uri IN ({marks})"
                       " GROUP BY uri", tuple(uris))
    assert {r[0] for r in rows} == set(uris)
    assert all(r[1] == 1 and r[2] == "indexed" and r[3] is not None for r in rows), rows
    docs = {r[3] for r in rows}
    assert len(docs) == len(uris)  # distinct contents: one document each
    for doc_id, status, chunk_count, n, distinct_seq in query(
        data, "SELECT d.id, d.status, d.chunk_count, count(c.id), count(DISTINCT c.seq) FROM documents d"
              " LEFT JOIN chunks c ON c.doc_id=d.id GROUP BY d.id",
    ):
        if doc_id in docs:
            assert status == "indexed" and chunk_count == n == distinct_seq and n > 0, (doc_id, status, chunk_count, n)
    versions = query(data, f"SELECT s.uri, count(v.id) FROM sources s LEFT JOIN versions v ON v.source_id=s.id"
                           f" WHERE s.uri IN ({marks}) GROUP BY s.uri", tuple(uris))
    assert all(n == 1 for _, n in versions), versions
    assert not query(data, "SELECT id FROM documents WHERE status!='indexed' AND status!='empty'")


@pytest.fixture
def real_app(make_app: AppFactory, real_embedder: SentenceTransformerEmbedder) -> Callable[[Path], Any]:
    """An App with the real model on a data dir (only once no kb process runs on it)."""
    return lambda data: make_app(embedder=real_embedder, data_dir=data)


def assert_vectors_match(app: Any) -> None:
    ids = app.index().all_ids()
    assert ids == app.catalog.all_chunk_ids()
    assert app.index().count() == len(ids) == app.catalog.chunk_count()


# -- 1. the service and its clients ---------------------------------------------------------------
def test_commands_are_clients_of_the_running_service(tmp_path: Path, real_app: Callable[[Path], Any]) -> None:
    data, inbox = tmp_path / "data", tmp_path / "inbox"
    files = write_topics(tmp_path / "docs")
    with Service(data, inbox, tmp_path / "watch.log") as svc:
        svc.wait_ready()
        first = kb_json(data, "ingest", str(files["tomatoes"]))
        assert (first["added"], first["failed"], first["complete"]) == (1, 0, True), first

        # two clients at once over the same folder, while a third searches
        both = [
            subprocess.Popen([KB, "ingest", str(tmp_path / "docs"), "--json"], env=env_for(data),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        try:
            hits = kb_json(data, "search", "tomatoes in the greenhouse")
            assert hits and hits[0]["path"] == str(files["tomatoes"])
            outs = [p.communicate(timeout=300) for p in both]
        finally:
            reap(both)
        for p, (out, err) in zip(both, outs, strict=True):
            assert p.returncode == 0, err
            r = json.loads(out)
            assert r["complete"] and r["files"] == 4 and r["failed"] == 0, r
            assert r["added"] + r["unchanged"] == 4 and r["updated"] == 0, r
            assert "busy" not in out + err

        hits = kb_json(data, "search", "when does the rocket launch", "-k", "3")
        assert hits[0]["path"] == str(files["rocket"]) and "rocket" in hits[0]["snippet"].lower()
        status = kb_json(data, "status")
        assert status["service"] == "running"
        assert status["documents"] == status["sources"] == 4 and status["chunks"] == 4
        assert status["sources_by_status"] == {"indexed": 4} and not status["failures"]
        assert status["jobs"].get("running", 0) == 0 and status["jobs"].get("queued", 0) == 0

        forgot = kb(data, "forget", str(files["pier"]))
        assert "forgot 1 file" in forgot.stdout
        hits = kb_json(data, "search", "repair of the harbour pier")
        assert hits and all(h["path"] != str(files["pier"]) for h in hits)
        status = kb_json(data, "status")
        assert (status["service"], status["documents"], status["chunks"]) == ("running", 3, 3)

        # a second service on the same directory refuses, clearly
        second = kb(data, "watch", check=False, timeout=120)
        assert second.returncode == 1, second.stderr
        assert "already runs" in second.stderr and str(svc.pid) in second.stderr and "Traceback" not in second.stderr
        assert svc.running()
        rc, _ = svc.stop()
        assert rc == 0, svc.tail()

    kept = [files["tomatoes"], files["rocket"], files["bread"]]
    assert_each_once(data, kept)
    assert query(data, "SELECT uri FROM sources ORDER BY uri") == [(str(p),) for p in sorted(kept)]
    # one job per source, each ran to its end; the pier's last job is its removal. A file asked for again while
    # its job runs gets one more (hash-checked, 'unchanged') run: see the last test for how that is reported.
    jobs = {r[0]: r[1:] for r in query(data, "SELECT uri, state, outcome, attempts FROM jobs WHERE key LIKE 'src:%'")}
    assert set(jobs) == {str(p) for p in files.values()}
    assert jobs.pop(str(files["pier"])) == ("done", "removed", 1)
    assert jobs.pop(str(files["tomatoes"])) == ("done", "added", 1)
    assert all(state == "done" and outcome in ("added", "unchanged") and attempts == 1
               for state, outcome, attempts in jobs.values()), jobs
    assert not jobs_left(data)
    assert_vectors_match(real_app(data))


# -- 2. latency -----------------------------------------------------------------------------------
def test_ingest_through_the_service_is_quick(tmp_path: Path) -> None:
    data, inbox = tmp_path / "data", tmp_path / "inbox"
    small = tmp_path / "small.txt"
    small.write_text(TOPICS["bread"] + "\n")
    with Service(data, inbox, tmp_path / "watch.log") as svc:
        svc.wait_ready()
        started = time.monotonic()
        r = kb_json(data, "ingest", str(small))
        seconds = time.monotonic() - started
        assert r["added"] == 1 and r["complete"], r
        hits = kb_json(data, "search", "how do I make sourdough bread", "-k", "1")
        assert hits and hits[0]["path"] == str(small)
        print(f"kb ingest of one small file through the service: {seconds:.2f} s")
        assert seconds < 10, f"{seconds:.1f} s from `kb ingest` to searchable"
        rc, _ = svc.stop()
        assert rc == 0


# -- 3. kill -9 of the service mid-work -----------------------------------------------------------
def test_kill_9_of_the_service_then_restart_finishes_exactly_once(
    tmp_path: Path, real_app: Callable[[Path], Any]
) -> None:
    data, inbox = tmp_path / "data", tmp_path / "inbox"
    files = write_notes(inbox, 40)
    prefix = str(inbox) + "/"
    with Service(data, inbox, tmp_path / "watch1.log") as svc:
        wait_for("a few documents", lambda: indexed_count(data, prefix) >= 5 or not svc.running(), 240,
                 interval=0.02, why=svc.tail)
        parsers = svc.children()
        svc.kill()
    assert parsers, "the service ran no parser process"
    assert_gone(parsers)
    done_at_kill = indexed_count(data, prefix)
    assert 5 <= done_at_kill < 40, f"{done_at_kill} indexed when killed: the kill did not land mid-work"

    with Service(data, inbox, tmp_path / "watch2.log") as svc:
        wait_for("all 40 files indexed", lambda: indexed_count(data, prefix) == 40 and not jobs_left(data), 300,
                 interval=0.2, why=lambda: svc.tail() + f"\njobs left: {jobs_left(data)}")
        status = kb_json(data, "status")
        assert status["service"] == "running" and status["documents"] == 40 and status["chunks"] == 40
        hits = kb_json(data, "search", "Marker17", "-k", "1")
        assert hits[0]["path"] == str(inbox / "note17.txt")
        rc, _ = svc.stop()
        assert rc == 0, svc.tail()

    assert_each_once(data, files)
    assert query(data, "SELECT count(*), count(DISTINCT content_hash) FROM documents") == [(40, 40)]
    # one job per file, done after one counted attempt. Its outcome is 'added', or 'unchanged' when it ran once more
    # after its document was stored (killed before recording its end; or re-asked by the start-up scan meanwhile)
    jobs = query(data, "SELECT state, outcome, attempts FROM jobs WHERE key LIKE 'src:%'")
    assert len(jobs) == 40 and all(j[0] == "done" and j[1] in ("added", "unchanged") and j[2] == 1 for j in jobs), jobs
    assert not jobs_left(data)
    app = real_app(data)
    assert_vectors_match(app)
    assert {h["path"] for h in app.search("observation number 23 Marker23", k=1)} == {str(inbox / "note23.txt")}


# -- 4. a rebuild killed halfway ------------------------------------------------------------------
def test_reindex_killed_keeps_search_and_the_next_start_completes_it(
    tmp_path: Path, real_app: Callable[[Path], Any]
) -> None:
    data, inbox = tmp_path / "data", tmp_path / "inbox"
    docs = tmp_path / "docs"
    topics = write_topics(docs)
    for i in range(6):  # passages to re-embed, so the rebuild is not over in a blink
        (docs / f"filler{i}.txt").write_text(f"Filler {i}\n\n" + LOREM * 12)
    r = kb_json(data, "ingest", str(docs))
    assert r["added"] == 10 and r["failed"] == 0, r
    first = meta(data, "collection")
    assert first is not None and first.endswith("_1")
    chunks = query(data, "SELECT count(*) FROM chunks")[0][0]

    proc = subprocess.Popen([KB, "reindex"], env=env_for(data), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        target = wait_for("the rebuild to start", lambda: meta(data, "reindex_target") or proc.poll() is not None,
                          240, interval=0.01)
    finally:
        proc.kill()
        proc.wait()
    assert isinstance(target, str), f"kb reindex ended (exit {proc.returncode}) before its rebuild was seen"
    assert meta(data, "reindex_target") == target and meta(data, "collection") == first, (
        "the kill did not land while the rebuild was in progress"
    )

    # search goes on with the old collection
    hits = kb_json(data, "search", "repair of the harbour pier", "-k", "1")
    assert hits[0]["path"] == str(topics["pier"])

    with Service(data, inbox, tmp_path / "watch.log") as svc:
        wait_for("the rebuild to complete", lambda: meta(data, "collection") == target
                 and meta(data, "reindex_target") is None, 300, interval=0.2, why=svc.tail)
        hits = kb_json(data, "search", "when does the rocket launch", "-k", "1")
        assert hits[0]["path"] == str(topics["rocket"])
        status = kb_json(data, "status")
        assert status["collection"] == target and status["service"] == "running"
        rc, _ = svc.stop()
        assert rc == 0, svc.tail()

    assert target.endswith("_2") and target.rsplit("_", 1)[0] == first.rsplit("_", 1)[0]
    assert query(data, "SELECT state, outcome FROM jobs WHERE key='reindex'") == [("done", "reindexed")]
    app = real_app(data)
    assert app.index().name == target
    assert_vectors_match(app)
    assert app.catalog.chunk_count() == chunks
    assert [n for n in app.vectors.names() if n.startswith("kb_")] == [target]  # the old one is dropped
    assert app.search("sourdough starter", k=1)[0]["path"] == str(topics["bread"])


# -- 5. SIGTERM while a file is being processed ---------------------------------------------------
def test_sigterm_mid_file_stops_gracefully_and_the_file_ends_up_indexed_once(
    tmp_path: Path, real_app: Callable[[Path], Any]
) -> None:
    from media_fixtures import save_pdf, text_page

    data, inbox = tmp_path / "data", tmp_path / "inbox"
    inbox.mkdir()
    # a scan read by OCR page after page: long enough to outlast the stop's 10 s of grace on most machines
    pages = [text_page([f"Page {i}. The lighthouse keeper logged storm number {i} in the harbour book."],
                       title=f"Log {i}") for i in range(20)]
    scan = save_pdf(pages, inbox / "logbook.pdf")
    key = f"src:{scan}"
    with Service(data, inbox, tmp_path / "watch1.log") as svc:
        wait_for("OCR of the scan to be under way",
                 lambda: query(data, "SELECT 1 FROM jobs WHERE key=? AND state='running' AND stage='ocr'", (key,))
                 or not svc.running(), 240, interval=0.02, why=svc.tail)
        parsers = svc.children()
        rc, seconds = svc.stop()
        print(f"service stopped {seconds:.1f} s after SIGTERM")
        assert rc == 0, svc.tail()
        assert seconds < 30, f"{seconds:.1f} s to stop"
        assert "kb: stopping" in svc.output()
    assert_gone(parsers, timeout=10)
    state, outcome = query(data, "SELECT state, outcome FROM jobs WHERE key=?", (key,))[0]
    # finished within the grace period, or put back to run again: never left 'running'
    assert (state, outcome) in (("done", "added"), ("queued", None)), (state, outcome)
    print(f"the job was {'finished' if state == 'done' else 'requeued'} by the stop")
    assert indexed_count(data, str(scan)) == (1 if state == "done" else 0)

    with Service(data, inbox, tmp_path / "watch2.log") as svc:
        svc.wait_ready()
        wait_for("the scan to be indexed", lambda: indexed_count(data, str(scan)) == 1 and not jobs_left(data), 300,
                 interval=0.2, why=svc.tail)
        rc, _ = svc.stop()
        assert rc == 0, svc.tail()

    assert_each_once(data, [scan])
    # 'unchanged' when the start-up scan asked for the file again while its document was being stored
    assert query(data, "SELECT state, outcome, attempts FROM jobs WHERE key=?", (key,)) in (
        [("done", "added", 1)], [("done", "unchanged", 1)]
    )
    app = real_app(data)
    assert_vectors_match(app)
    hits = app.search("lighthouse keeper storm number 17", k=3)
    assert hits[0]["path"] == str(scan)
    assert any(h["page"] <= 18 <= (h["page_end"] or h["page"]) for h in hits), hits  # the 18th page


# -- 6. two one-off commands ----------------------------------------------------------------------
def test_second_command_becomes_a_client_of_a_one_off_owner(tmp_path: Path) -> None:
    data = tmp_path / "data"
    big = write_notes(tmp_path / "big", 40)
    other = tmp_path / "other.txt"
    other.write_text(TOPICS["pier"] + "\n")
    first = subprocess.Popen([KB, "ingest", str(tmp_path / "big"), "--json"], env=env_for(data),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # the first command owns the directory and serves the API once its socket answers
        wait_for("the first command to serve", lambda: (data / ".run" / "kb.sock").exists() or first.poll() is not None,
                 240, interval=0.05)
        assert first.poll() is None, "the first kb ingest ended before the second could start"
        assert indexed_count(data, str(tmp_path / "big")) < 40
        second = kb(data, "ingest", str(other), "--json", check=False, timeout=300)
        out, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, err
    assert json.loads(out)["added"] == 40
    assert "busy" not in second.stdout + second.stderr
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["added"] == 1
    assert_each_once(data, [*big, other])
    assert not jobs_left(data)


def test_watch_started_during_a_one_off_command_waits_then_serves(tmp_path: Path) -> None:
    data, inbox = tmp_path / "data", tmp_path / "inbox"
    big = tmp_path / "big"
    write_notes(big, 40)
    first = subprocess.Popen([KB, "ingest", str(big), "--json"], env=env_for(data), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        wait_for("the first command to serve", lambda: (data / ".run" / "kb.sock").exists() or first.poll() is not None,
                 240, interval=0.05)
        assert first.poll() is None, "the one-off kb ingest ended before kb watch could start"
        with Service(data, inbox, tmp_path / "watch.log") as svc:
            while first.poll() is None:  # the service must wait for the one-off owner, not give up
                assert svc.running(), svc.tail()
                time.sleep(0.1)
            assert first.returncode == 0 and json.loads(first.communicate()[0])["added"] == 40
            svc.wait_ready()
            assert "waiting for another kb command" in svc.output()
            rc, _ = svc.stop()
            assert rc == 0, svc.tail()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()


# -- a file asked for twice while it is being read ------------------------------------------------
def test_a_file_asked_for_again_while_it_runs_is_reported_added_once(tmp_path: Path) -> None:
    data, inbox = tmp_path / "data", tmp_path / "inbox"
    docs = tmp_path / "docs"
    docs.mkdir()
    long = docs / "long.txt"
    long.write_text("\n\n".join(f"Section {i}\n\n" + (LOREM + f"Paragraph {i} is about topic{i}. ") * 3
                                 for i in range(40)))
    with Service(data, inbox, tmp_path / "watch.log", workers=2) as svc:
        svc.wait_ready()
        procs = [subprocess.Popen([KB, "ingest", str(docs), "--json"], env=env_for(data), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)]
        try:
            wait_for("the file's job to run", lambda: query(
                data, "SELECT 1 FROM jobs WHERE key=? AND state='running'", (f"src:{long}",)), 120, interval=0.02)
            procs.append(subprocess.Popen([KB, "ingest", str(docs), "--json"], env=env_for(data),
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
            outs = [p.communicate(timeout=300) for p in procs]
        finally:
            reap(procs)
        assert all(p.returncode == 0 for p in procs), outs
        first, second = (json.loads(out) for out, _ in outs)
        rc, _ = svc.stop()
        assert rc == 0
    assert_each_once(data, [long])  # written once, whatever the reports say
    assert second["added"] + second["unchanged"] == 1
    assert first["added"] == 1, f"the request that added the file reports {first}"
