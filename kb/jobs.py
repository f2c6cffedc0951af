"""The durable job queue, in the catalog database so enqueueing and catalog changes share a transaction.

A job is one piece of work on one source (ingest this file, forget that one) or one singleton task
(reindex). Its unique key means the same work is never queued twice: asking again while it is queued
updates it, while it runs marks it to run once more afterwards, after it ended queues it afresh.
Workers claim jobs with a lease they renew by heartbeat; a job whose worker died is claimed again when
its lease runs out (and at once when the service starts, since no other worker can be alive then).
Failures worth retrying come back with exponential backoff; the others stay failed, with their reason,
until `kb retry` or a change to the source.
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from kb.catalog import Catalog

QUEUED = "queued"
RUNNING = "running"
DONE = "done"
FAILED = "failed"
HELD = "held"  # waits for a person to confirm (mass deletions)

LANE_FAST = "fast"  # documents, small files
LANE_SLOW = "slow"  # recordings, big files: never in the way of short work
LANE_MAINT = "maint"  # reindex, repair


@dataclass
class Job:
    id: int
    key: str
    action: str
    uri: str | None
    payload: dict[str, Any]
    lane: str
    priority: int
    state: str
    attempts: int
    max_attempts: int
    run_after: float
    last_error: str | None
    outcome: str | None
    stage: str | None
    done: float | None
    total: float | None
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class JobQueue:
    """Enqueue, claim, heartbeat, finish and inspect jobs. Thread-safe; one instance per process."""

    def __init__(
        self, catalog: Catalog, *, lease_s: float = 60.0, retry_base_s: float = 15.0, max_attempts: int = 5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.catalog = catalog
        self.owner = f"{uuid.uuid4().hex[:8]}"
        self.lease_s = lease_s
        self.retry_base_s = retry_base_s
        self.max_attempts = max_attempts
        self.clock = clock
        self._wake = threading.Condition()

    # -- producing --------------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A catalog transaction that wakes waiting workers once it commits."""
        with self.catalog.transaction() as db:
            yield db
        self.notify()

    def notify(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def wait(self, timeout: float, stop: Callable[[], bool] | None = None) -> None:
        """Sleep until new work may be there (an enqueue in this process), `stop()` holds, or the timeout.

        `stop` is checked under the same lock `notify` takes, so a stop signalled just before the wait
        (set, then notify) is never missed.
        """
        with self._wake:
            if stop is not None and stop():
                return
            self._wake.wait(timeout)

    def new_batch(self, action: str, info: dict[str, Any] | None = None) -> str:
        """A batch groups the jobs one request queued, so the requester can follow them."""
        batch = uuid.uuid4().hex[:16]
        with self.catalog.transaction() as db:
            db.execute(
                "INSERT INTO batches(id, action, info, created_at) VALUES (?,?,?,?)",
                (batch, action, json.dumps(info or {}), self.clock()),
            )
        return batch

    def update_batch(self, batch: str, info: dict[str, Any]) -> None:
        with self.catalog.transaction() as db:
            db.execute("UPDATE batches SET info=? WHERE id=?", (json.dumps(info), batch))

    def enqueue(
        self, db: sqlite3.Connection, action: str, uri: str | None = None, *, key: str | None = None,
        payload: dict[str, Any] | None = None, lane: str = LANE_FAST, priority: int = 0,
        batch: str | None = None, state: str = QUEUED, delay_s: float = 0.0,
    ) -> int:
        """Queue work inside the caller's transaction `db`; returns the job id. See the module docstring."""
        now = self.clock()
        key = key or f"src:{uri}"
        body = json.dumps(payload or {})
        row = db.execute("SELECT id, state FROM jobs WHERE key=?", (key,)).fetchone()
        if row is None:
            cur = db.execute(
                "INSERT INTO jobs(key, action, uri, payload, lane, priority, state, max_attempts, run_after,"
                " created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (key, action, uri, body, lane, priority, state, self.max_attempts, now + delay_s, now, now),
            )
            job_id = int(cur.lastrowid or 0)
        else:
            job_id = int(row["id"])
            if row["state"] == RUNNING:
                db.execute(
                    "UPDATE jobs SET rerun_action=?, payload=?, updated_at=? WHERE id=?",
                    (action, body, now, job_id),
                )
            else:
                # queued or held: the newest request wins (a delete after a create is a delete); finished:
                # start over with fresh attempts.
                db.execute(
                    "UPDATE jobs SET action=?, uri=?, payload=?, lane=?, priority=?, state=?, run_after=?,"
                    " attempts=CASE WHEN state IN (?, ?) THEN 0 ELSE attempts END,"
                    " last_error=CASE WHEN state IN (?, ?) THEN NULL ELSE last_error END,"
                    " outcome=NULL, stage=NULL, done=NULL, total=NULL, finished_at=NULL, updated_at=?"
                    " WHERE id=?",
                    (action, uri, body, lane, priority, state, now + delay_s, DONE, FAILED, DONE, FAILED, now,
                     job_id),
                )
        if batch is not None:
            # a request made while the job runs waits for the run it asked for, not the one in progress
            rerun = int(row is not None and row["state"] == RUNNING)
            db.execute(
                "INSERT INTO batch_jobs(batch_id, job_id, rerun) VALUES (?,?,?)"
                " ON CONFLICT(batch_id, job_id)"
                " DO UPDATE SET settled=0, outcome=NULL, error=NULL, rerun=excluded.rerun",
                (batch, job_id, rerun),
            )
        return job_id

    @staticmethod
    def _settle(db: sqlite3.Connection, job_id: int, outcome: str, error: str | None = None) -> None:
        """Tell the requests waiting for this run its outcome; requests for the next run keep waiting."""
        db.execute(
            "UPDATE batch_jobs SET settled=1, outcome=?, error=? WHERE job_id=? AND settled=0 AND rerun=0",
            (outcome, error, job_id),
        )
        db.execute("UPDATE batch_jobs SET rerun=0 WHERE job_id=? AND rerun=1", (job_id,))

    def submit(self, action: str, uri: str | None = None, **kwargs: Any) -> int:
        """Enqueue in a transaction of its own."""
        with self.transaction() as db:
            return self.enqueue(db, action, uri, **kwargs)

    # -- consuming --------------------------------------------------------------------------------
    def claim(self, lanes: Sequence[str], batches: Collection[str] | None = None) -> Job | None:
        """Take the next due job of these lanes (or one whose worker's lease ran out).

        With `batches`, only their jobs: a one-off command does the work asked of it, not the backlog.
        """
        now = self.clock()
        marks = ",".join("?" * len(lanes))
        only = ""
        if batches is not None:
            only = f" AND id IN (SELECT job_id FROM batch_jobs WHERE batch_id IN ({','.join('?' * len(batches))}))"
        with self.catalog.transaction() as db:
            row = db.execute(
                f"SELECT * FROM jobs WHERE lane IN ({marks}) AND ((state=? AND run_after<=?)"
                f" OR (state=? AND lease_until<?)){only} ORDER BY priority, run_after, id LIMIT 1",
                (*lanes, QUEUED, now, RUNNING, now, *(batches or ())),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state=?, attempts=attempts+1, lease_owner=?, lease_until=?, heartbeat_at=?,"
                " started_at=?, updated_at=?, stage=NULL, done=NULL, total=NULL WHERE id=?",
                (RUNNING, self.owner, now + self.lease_s, now, now, now, row["id"]),
            )
            job = _job(row)
        job.state, job.attempts = RUNNING, job.attempts + 1
        return job

    def next_due(self, lanes: Sequence[str]) -> float | None:
        """When the earliest queued job of these lanes becomes due (None: nothing queued)."""
        marks = ",".join("?" * len(lanes))
        rows = self.catalog._query(
            f"SELECT min(run_after) t FROM jobs WHERE lane IN ({marks}) AND state=?", (*lanes, QUEUED)
        )
        t = rows[0]["t"] if rows else None
        return None if t is None else float(t)

    def heartbeat(self, job_ids: Sequence[int]) -> None:
        """Renew the leases of jobs this process is working on."""
        if not job_ids:
            return
        now = self.clock()
        marks = ",".join("?" * len(job_ids))
        with self.catalog.transaction() as db:
            db.execute(
                f"UPDATE jobs SET lease_until=?, heartbeat_at=? WHERE id IN ({marks}) AND state=?",
                (now + self.lease_s, now, *job_ids, RUNNING),
            )

    def progress(self, job_id: int, stage: str, done: float | None, total: float | None) -> None:
        """Record how far a job has got (shown by `kb status` and the CLI's progress bar)."""
        with self.catalog.transaction() as db:
            db.execute(
                "UPDATE jobs SET stage=?, done=?, total=?, heartbeat_at=?, updated_at=? WHERE id=?",
                (stage, done, total, self.clock(), self.clock(), job_id),
            )

    def complete(self, job_id: int, outcome: str, db: sqlite3.Connection | None = None) -> None:
        """Mark a job done (inside the caller's transaction when given), or queue it again if re-asked."""
        if db is None:
            with self.transaction() as own:
                self._complete(own, job_id, outcome)
        else:
            self._complete(db, job_id, outcome)

    def _complete(self, db: sqlite3.Connection, job_id: int, outcome: str) -> None:
        now = self.clock()
        self._settle(db, job_id, outcome)
        row = db.execute("SELECT rerun_action FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is not None and row["rerun_action"]:
            db.execute(
                "UPDATE jobs SET state=?, action=rerun_action, rerun_action=NULL, attempts=0, run_after=?,"
                " outcome=?, last_error=NULL, lease_owner=NULL, lease_until=NULL, updated_at=?, finished_at=?"
                " WHERE id=?",
                (QUEUED, now, outcome, now, now, job_id),
            )
            return
        db.execute(
            "UPDATE jobs SET state=?, outcome=?, last_error=NULL, lease_owner=NULL, lease_until=NULL,"
            " updated_at=?, finished_at=? WHERE id=?",
            (DONE, outcome, now, now, job_id),
        )

    def fail(self, job_id: int, error: str, *, transient: bool) -> bool:
        """Record a failure; a transient one with attempts left is retried later. Returns True if it will be."""
        now = self.clock()
        with self.transaction() as db:
            row = db.execute("SELECT attempts, max_attempts, rerun_action FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                return False
            self._settle(db, job_id, "failed", error)
            if row["rerun_action"]:  # the source changed meanwhile: try the new bytes at once
                db.execute(
                    "UPDATE jobs SET state=?, action=rerun_action, rerun_action=NULL, attempts=0, run_after=?,"
                    " last_error=?, outcome='failed', lease_owner=NULL, lease_until=NULL, updated_at=? WHERE id=?",
                    (QUEUED, now, error, now, job_id),
                )
                return True
            if transient and row["attempts"] < row["max_attempts"]:
                delay = min(3600.0, self.retry_base_s * 2 ** (row["attempts"] - 1)) * random.uniform(0.9, 1.1)
                db.execute(
                    "UPDATE jobs SET state=?, run_after=?, last_error=?, outcome='failed', lease_owner=NULL,"
                    " lease_until=NULL, updated_at=? WHERE id=?",
                    (QUEUED, now + delay, error, now, job_id),
                )
                return True
            db.execute(
                "UPDATE jobs SET state=?, last_error=?, outcome='failed', lease_owner=NULL, lease_until=NULL,"
                " updated_at=?, finished_at=? WHERE id=?",
                (FAILED, error, now, now, job_id),
            )
            return False

    def defer(self, job_id: int, delay_s: float, note: str | None = None) -> None:
        """Put a claimed job back without counting the attempt (waiting for another job, or stopping)."""
        now = self.clock()
        with self.transaction() as db:
            db.execute(
                "UPDATE jobs SET state=?, attempts=max(0, attempts-1), run_after=?, stage=?, lease_owner=NULL,"
                " lease_until=NULL, updated_at=? WHERE id=? AND state=?",
                (QUEUED, now + delay_s, note, now, job_id, RUNNING),
            )

    def requeue_running(self) -> int:
        """At service start: every 'running' job belonged to a process that is gone. Run them again."""
        now = self.clock()
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE jobs SET state=?, attempts=max(0, attempts-1), run_after=?, lease_owner=NULL,"
                " lease_until=NULL, updated_at=? WHERE state=?",
                (QUEUED, now, now, RUNNING),
            )
            return int(cur.rowcount)

    # -- people -----------------------------------------------------------------------------------
    def retry(self, job_ids: Sequence[int] | None = None, batch: str | None = None) -> int:
        """Queue failed jobs again now (all of them when no ids are given), with fresh attempts; with
        `batch`, the requester can follow them."""
        where = "(state=? OR (state=? AND last_error IS NOT NULL))"
        params: list[Any] = [FAILED, QUEUED]
        if job_ids:
            where += f" AND id IN ({','.join('?' * len(job_ids))})"
            params += list(job_ids)
        return self._requeue(where, params, batch, reset_attempts=True)

    def release_held(self, *, confirm: bool, batch: str | None = None) -> int:
        """Held jobs (mass deletions): confirm runs them, otherwise they are dropped."""
        if confirm:
            return self._requeue("state=?", [HELD], batch, reset_attempts=False)
        with self.transaction() as db:
            return int(db.execute("DELETE FROM jobs WHERE state=?", (HELD,)).rowcount)

    def _requeue(self, where: str, params: list[Any], batch: str | None, *, reset_attempts: bool) -> int:
        now = self.clock()
        with self.transaction() as db:
            ids = [int(r["id"]) for r in db.execute(f"SELECT id FROM jobs WHERE {where}", params)]
            for i in range(0, len(ids), 500):
                part = ids[i : i + 500]
                marks = ",".join("?" * len(part))
                attempts = ", attempts=0" if reset_attempts else ""
                db.execute(
                    f"UPDATE jobs SET state=?, run_after=?, updated_at=?{attempts} WHERE id IN ({marks})",
                    (QUEUED, now, now, *part),
                )
                if batch is not None:
                    db.executemany(
                        "INSERT OR REPLACE INTO batch_jobs(batch_id, job_id) VALUES (?,?)", [(batch, j) for j in part]
                    )
            return len(ids)

    def prune(self, older_than_s: float = 7 * 86400) -> int:
        """Forget finished jobs after a while (failed ones stay until retried or their source changes)."""
        with self.transaction() as db:
            cur = db.execute(
                "DELETE FROM jobs WHERE state=? AND finished_at < ?", (DONE, self.clock() - older_than_s)
            )
            db.execute("DELETE FROM batches WHERE created_at < ?", (self.clock() - older_than_s,))
            return int(cur.rowcount)

    # -- inspecting -------------------------------------------------------------------------------
    def get(self, job_id: int) -> Job | None:
        rows = self.catalog._query("SELECT * FROM jobs WHERE id=?", (job_id,))
        return _job(rows[0]) if rows else None

    def by_key(self, key: str) -> Job | None:
        rows = self.catalog._query("SELECT * FROM jobs WHERE key=?", (key,))
        return _job(rows[0]) if rows else None

    def jobs(self, states: Sequence[str] = (), limit: int = 100) -> list[Job]:
        if states:
            marks = ",".join("?" * len(states))
            rows = self.catalog._query(
                f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY updated_at DESC LIMIT ?", (*states, limit)
            )
        else:
            rows = self.catalog._query("SELECT * FROM jobs ORDER BY updated_at DESC LIMIT ?", (limit,))
        return [_job(r) for r in rows]

    def counts(self) -> dict[str, int]:
        rows = self.catalog._query("SELECT state, count(*) n FROM jobs GROUP BY state")
        out = {r["state"]: int(r["n"]) for r in rows}
        retrying = self.catalog._query(
            "SELECT count(*) n FROM jobs WHERE state=? AND last_error IS NOT NULL", (QUEUED,)
        )[0]["n"]
        if retrying:
            out["retrying"] = int(retrying)
        return out

    def batch(self, batch: str) -> dict[str, Any] | None:
        """Where a request stands: its jobs by outcome, failures, work in progress; `complete` once every job
        has settled for it (a failure waiting for a retry counts: its requester does not wait out the backoff;
        a held removal counts too)."""
        head = self.catalog._query("SELECT * FROM batches WHERE id=?", (batch,))
        if not head:
            return None
        rows = self.catalog._query(
            "SELECT j.*, b.settled AS b_settled, b.outcome AS b_outcome, b.error AS b_error, b.rerun AS b_rerun"
            " FROM jobs j JOIN batch_jobs b ON b.job_id=j.id WHERE b.batch_id=? ORDER BY j.id", (batch,)
        )
        outcomes: dict[str, int] = {}
        failures: list[dict[str, Any]] = []
        running: list[dict[str, Any]] = []
        settled = 0
        for r in rows:
            j = _job(r)
            if r["b_settled"]:
                settled += 1
                outcome = r["b_outcome"] or "done"
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
                if outcome == "failed":
                    retrying = j.state == QUEUED and j.last_error is not None
                    failures.append({
                        "uri": j.uri, "error": r["b_error"], "job_id": j.id,
                        "retry_at": j.run_after if retrying else None,
                    })
            elif j.state == HELD:
                settled += 1
                outcomes["held"] = outcomes.get("held", 0) + 1
            elif j.state == RUNNING and not r["b_rerun"]:
                running.append({"uri": j.uri, "action": j.action, "stage": j.stage, "done": j.done, "total": j.total})
        return {
            "id": batch, "action": head[0]["action"], "info": json.loads(head[0]["info"]),
            "jobs": len(rows), "settled": settled, "complete": settled == len(rows),
            "outcomes": outcomes, "failures": failures, "running": running,
        }


def _job(r: sqlite3.Row) -> Job:
    return Job(
        id=r["id"], key=r["key"], action=r["action"], uri=r["uri"], payload=json.loads(r["payload"] or "{}"),
        lane=r["lane"], priority=r["priority"], state=r["state"], attempts=r["attempts"],
        max_attempts=r["max_attempts"], run_after=r["run_after"], last_error=r["last_error"], outcome=r["outcome"],
        stage=r["stage"], done=r["done"], total=r["total"], created_at=r["created_at"], updated_at=r["updated_at"],
        started_at=r["started_at"], finished_at=r["finished_at"],
    )


# -- what a job handler returns ---------------------------------------------------------------------
@dataclass
class Done:
    outcome: str  # added, updated, unchanged, empty, removed, ...


@dataclass
class Fail:
    error: str
    transient: bool = False  # worth retrying later (timeouts, crashes, a file still being written)


@dataclass
class Defer:
    """Not now, and not a failure: another job holds the content, or the service is stopping."""

    delay_s: float
    note: str | None = None


@dataclass
class Handoff:
    """The rest of the job (embedding and storing) runs on the runner's store thread, so this worker can
    parse its next source meanwhile. `work` returns the job's final result."""

    work: Callable[[], Done | Fail | Defer]


JobResult = Done | Fail | Defer | Handoff
