"""Watcher benchmark: a small file's arrival in a watched folder to being searchable, and the initial sync
rate of a real mailbox (Dovecot) of the notmuch test corpora.

Usage: python bench/watch.py [BENCH_DIR] [--runs 20] [--skip-mail]
BENCH_DIR defaults to ../shared/bench (mail from BENCH_DIR/email/notmuch_corpora/{default,lkml}). The service
runs as `kb watch` on default settings (settle interval, parser processes, lanes). Prints one JSON object on its
last line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from kb.settings import load_settings  # noqa: E402
from kbapp.client import Client  # noqa: E402

KB = str(Path(sys.executable).parent / "kb")


class Service:
    """`kb watch` in a subprocess, with a client on its socket."""

    def __init__(self, data: Path, env_extra: dict[str, str]) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("KB_")}
        self.env.update(KB_DATA_DIR=str(data), **env_extra)
        self.socket = load_settings(data_dir=data).socket_path
        self.log = (data.parent / f"{data.name}-service.log").open("wb")
        self.proc = subprocess.Popen([KB, "watch"], env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        self.client: Client | None = None

    def wait_ready(self, timeout_s: float = 300) -> Client:
        """Answering, and the catch-up scan of the (empty) inbox is done."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit("the service exited; see its log")
            client = Client.connect(self.socket)
            if client is not None:
                st = client.status()
                if st["jobs"].get("done", 0) >= 1 and not st["jobs"].get("queued") and not st["jobs"].get("running"):
                    self.client = client
                    return client
                client.close()
            time.sleep(0.2)
        raise SystemExit("the service did not become ready")

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def _query(data: Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows from the service's catalog, opened read-only beside it (empty until it exists)."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{data / 'catalog.sqlite3'}?mode=ro", uri=True, timeout=5)) as db:
            return list(db.execute(sql).fetchall())
    except sqlite3.OperationalError:
        return []


def folder_latency(tmp: Path, runs: int) -> dict[str, Any]:
    """Seconds from a small file landing in the watched folder to a search finding it (idle service)."""
    inbox = tmp / "inbox"
    inbox.mkdir()
    svc = Service(tmp / "folder-data", {"KB_INBOX": json.dumps([str(inbox)])})
    try:
        client = svc.wait_ready()
        times: list[float] = []
        for i in range(runs):
            word = f"wombat{i}quartz"
            note = inbox / f"note-{i}.txt"
            tmp_note = tmp / f".note-{i}.txt"
            tmp_note.write_text(f"A small note about the {word} by the harbour.\n")
            os.replace(tmp_note, note)  # arrives whole, as a finished download or a mail client's save
            t0 = time.perf_counter()
            while True:
                hits = client.search(word, k=1)
                if hits and hits[0]["path"] == str(note):
                    break
                if time.perf_counter() - t0 > 60:
                    raise SystemExit(f"{note} was not searchable after 60 s")
                time.sleep(0.05)
            times.append(time.perf_counter() - t0)
            time.sleep(0.3)
    finally:
        svc.stop()
    times.sort()
    return {
        "arrival_to_searchable_s_median": round(statistics.median(times), 3),
        "arrival_to_searchable_s_p95": round(times[min(len(times) - 1, int(0.95 * len(times)))], 3),
        "arrival_runs": runs,
    }


def mail_sync(tmp: Path, corpora: Path) -> dict[str, Any]:
    """Initial sync of a mailbox holding the notmuch corpora: messages per second fetched and queued, and
    messages per second until every message and attachment is in the library."""
    from dovecot import Dovecot  # tests/dovecot.py: a real Dovecot on loopback with a generated config

    files = [p for sub in ("default", "lkml") for p in sorted((corpora / sub).rglob("*")) if p.is_file()]
    messages = [p.read_bytes() for p in files]
    with Dovecot() as dc:  # its own world-readable root: as root, Dovecot reads mail as an unprivileged user
        dc.append_many("INBOX", messages)
        account = {"name": "bench", "host": "127.0.0.1", "port": dc.port, "security": "none",
                   "username": dc.user, "password_env": "KB_BENCH_MAIL_PW"}
        data = tmp / "mail-data"
        t0 = time.perf_counter()
        svc = Service(data, {"KB_INBOX": json.dumps([str(tmp / "mail-inbox")]), "KB_MAIL": json.dumps([account]),
                             "KB_BENCH_MAIL_PW": dc.password})
        try:
            deadline = time.monotonic() + 1800
            queued_at = done_at = None
            while time.monotonic() < deadline and done_at is None:
                if svc.proc.poll() is not None:
                    raise SystemExit("the service exited; see its log")
                mail_jobs = _query(data, "SELECT count(*) FROM jobs WHERE action='ingest' AND uri LIKE 'imap://%'")
                if queued_at is None and mail_jobs and mail_jobs[0][0] >= len(messages):
                    queued_at = time.perf_counter()
                busy = _query(data, "SELECT count(*) FROM jobs WHERE state IN ('queued', 'running')")
                if queued_at is not None and busy and not busy[0][0]:
                    done_at = time.perf_counter()
                time.sleep(0.05)
            svc.client = Client.connect(svc.socket)
            final = svc.client.status() if svc.client else {}
        finally:
            svc.stop()
    n = len(messages)
    if queued_at is None or done_at is None:
        return {"mail_messages": n, "mail_error": "the sync did not finish in time"}
    # From the catalog: the sync's own pace (first to last message job queued, after the service's start-up)
    # and the pace until every message and attachment was in the library.
    first, last_queued = _span(data, "SELECT min(created_at), max(created_at) FROM jobs WHERE uri LIKE 'imap://%'")
    _, last_done = _span(data, "SELECT min(created_at), max(updated_at) FROM jobs WHERE action='ingest'")
    chunks = _query(data, "SELECT count(*) FROM chunks")
    return {
        "mail_messages": n,
        "mail_sync_msgs_per_s": round(n / max(last_queued - first, 1e-3), 1),
        "mail_ingest_msgs_per_s": round(n / max(last_done - first, 1e-3), 2),
        "mail_chunks_per_s": round((chunks[0][0] if chunks else 0) / max(last_done - first, 1e-3), 1),
        "mail_service_start_to_synced_s": round(queued_at - t0, 2),
        "mail_sources": final.get("sources"),
        "mail_documents": final.get("documents"),
        "mail_chunks": chunks[0][0] if chunks else None,
        "mail_failed_sources": final.get("sources_by_status", {}).get("failed", 0),
    }


def _span(data: Path, sql: str) -> tuple[float, float]:
    rows = _query(data, sql)
    return (float(rows[0][0]), float(rows[0][1])) if rows and rows[0][0] is not None else (0.0, 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("bench", nargs="?", default=str(REPO.parent / "shared" / "bench"))
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--skip-mail", action="store_true")
    ap.add_argument("--skip-folder", action="store_true")
    args = ap.parse_args()
    corpora = Path(args.bench) / "email" / "notmuch_corpora"
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="kb-bench-watch-") as tmp:
        if not args.skip_folder:
            result.update(folder_latency(Path(tmp), args.runs))
        if not args.skip_mail:
            if not corpora.is_dir():
                sys.exit(f"no such folder: {corpora}")
            result.update(mail_sync(Path(tmp), corpora))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
