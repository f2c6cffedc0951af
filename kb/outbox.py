"""The durable outbox: every e-mail kb sends is written to the catalog first, then delivered from there.

Each message has an idempotency key (UNIQUE in the table): `meeting:<content hash>`, `digest:<period end>`,
... Queueing a key that is already there does nothing, whatever state the message is in, so nothing is
sent twice because it was asked for twice (a rerun job, a restarted service, a second `kb` process).

Delivery is at least once. A message is marked `sending`, with a lease, before the SMTP conversation starts,
and `sent` after the server's final answer. If the process dies between that answer and the bookkeeping,
the lease runs out and the message is sent again: a duplicate, but one with the same Message-ID (derived
from the key), which many mail systems drop and any person can recognise. The other choice, never sending
again a message whose fate is unknown, would lose mail every time the process died during the conversation
(a far longer window than the microseconds between the final '250' and the UPDATE): we chose duplicates.

Failures: a passing one (server down, 4xx, login) is retried with exponential backoff and jitter, up to
`max_attempts`; a permanent one (5xx to this message) fails it at once. Both stay visible in `kb status`.
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from kb.catalog import Catalog
from kb.paths import safe_text
from kb.smtp import Delivery, SendError

QUEUED = "queued"
SENDING = "sending"
SENT = "sent"
FAILED = "failed"


@dataclass(frozen=True)
class OutgoingMail:
    """A message ready to queue: its key, the envelope recipients (from the settings) and its bytes."""

    key: str
    kind: str
    subject: str
    recipients: list[str]
    message: bytes
    message_id: str


@dataclass
class OutboxEntry:
    id: int
    key: str
    kind: str
    message_id: str
    subject: str
    recipients: list[str]
    state: str
    attempts: int
    next_attempt: float
    last_error: str | None
    reply: str | None
    created_at: float
    updated_at: float
    sent_at: float | None
    message: bytes

    def to_dict(self) -> dict[str, Any]:
        """The entry for status and the API (without the message bytes)."""
        out = dict(self.__dict__)
        del out["message"]
        return out


class Transport(Protocol):
    def send(self, recipients: list[str], message: bytes) -> Delivery: ...


class Outbox:
    """Queue, claim, and record messages. Safe across threads and processes (SQLite transactions)."""

    def __init__(
        self, catalog: Catalog, *, clock: Callable[[], float] = time.time, retry_base_s: float = 60.0,
        retry_max_s: float = 3600.0, max_attempts: int = 24, lease_s: float = 600.0,
        jitter: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.catalog = catalog
        self.clock = clock
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self.max_attempts = max_attempts
        self.lease_s = lease_s
        self.jitter = jitter

    # -- queueing ---------------------------------------------------------------------------------
    def add(self, db: sqlite3.Connection, mail: OutgoingMail) -> bool:
        """Queue inside the caller's transaction; False when the key is already there (nothing changes)."""
        now = self.clock()
        cur = db.execute(
            "INSERT INTO outbox(key, kind, message_id, subject, recipients, message, state, next_attempt,"
            " created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT(key) DO NOTHING",
            (mail.key, mail.kind, mail.message_id, mail.subject, json.dumps(mail.recipients), mail.message, QUEUED,
             now, now, now),
        )
        return cur.rowcount == 1

    def put(self, mail: OutgoingMail) -> bool:
        """Queue in a transaction of its own."""
        with self.catalog.transaction() as db:
            return self.add(db, mail)

    def has(self, key: str) -> bool:
        return bool(self.catalog.read("SELECT 1 FROM outbox WHERE key=?", (key,)))

    # -- sending ----------------------------------------------------------------------------------
    def claim(self, key: str | None = None) -> OutboxEntry | None:
        """Take the next due message (or one whose sender's lease ran out: it died mid-send) for sending."""
        now = self.clock()
        only = " AND key=?" if key is not None else ""
        with self.catalog.transaction() as db:
            row = db.execute(
                "SELECT * FROM outbox WHERE ((state=? AND next_attempt<=?) OR (state=? AND lease_until<?))"
                f"{only} ORDER BY next_attempt, id LIMIT 1",
                (QUEUED, now, SENDING, now, *([key] if key is not None else [])),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE outbox SET state=?, attempts=attempts+1, lease_until=?, updated_at=? WHERE id=?",
                (SENDING, now + self.lease_s, now, row["id"]),
            )
        entry = _entry(row)
        entry.state, entry.attempts = SENDING, entry.attempts + 1
        return entry

    def deliver(self, entry: OutboxEntry, transport: Transport) -> OutboxEntry:
        """Send one claimed message and record the outcome; returns the entry as recorded."""
        try:
            delivery = transport.send(entry.recipients, entry.message)
        except SendError as exc:
            self.failed(entry, str(exc), permanent=exc.permanent)
        except Exception as exc:  # a bug here must cost one attempt, never the sender thread
            self.failed(entry, f"internal error: {type(exc).__name__}: {exc}", permanent=False)
        else:
            self.sent(entry, delivery)
        got = self.entry(entry.key)
        assert got is not None
        return got

    def deliver_due(self, transport: Transport, limit: int = 100) -> list[OutboxEntry]:
        """Send every due message (at most `limit`); returns them as recorded."""
        due = self.next_due()
        if due is None or due > self.clock():  # a read first: no write lock taken on every idle wake
            return []
        out = []
        for _ in range(limit):
            entry = self.claim()
            if entry is None:
                break
            out.append(self.deliver(entry, transport))
        return out

    def sent(self, entry: OutboxEntry, delivery: Delivery) -> None:
        now = self.clock()
        note = None
        if delivery.refused:  # the others got it: sending again would duplicate theirs
            note = "refused by the server for " + "; ".join(f"{r}: {why}" for r, why in delivery.refused.items())
        with self.catalog.transaction() as db:
            db.execute(
                "UPDATE outbox SET state=?, reply=?, last_error=?, lease_until=NULL, updated_at=?, sent_at=?"
                " WHERE id=?",
                (SENT, safe_text(delivery.reply), note, now, now, entry.id),
            )

    def failed(self, entry: OutboxEntry, error: str, *, permanent: bool) -> float | None:
        """Record a failed attempt; returns when it is tried again (None: it will not be)."""
        now = self.clock()
        error = safe_text(error)
        retry_at: float | None = None
        if not permanent and entry.attempts < self.max_attempts:
            delay = min(self.retry_max_s, self.retry_base_s * 2 ** max(0, entry.attempts - 1))
            retry_at = now + delay * self.jitter(0.8, 1.2)  # jitter: many messages do not retry in step
        elif not permanent:
            error = f"gave up after {entry.attempts} tries: {error}"
        with self.catalog.transaction() as db:
            db.execute(
                "UPDATE outbox SET state=?, next_attempt=?, last_error=?, lease_until=NULL, updated_at=? WHERE id=?",
                (QUEUED if retry_at is not None else FAILED, retry_at or now, error, now, entry.id),
            )
        return retry_at

    def next_due(self) -> float | None:
        """When the earliest queued message is due (or a sending one's lease runs out); None: nothing waits."""
        rows = self.catalog.read(
            "SELECT min(CASE WHEN state=? THEN next_attempt ELSE lease_until END) t FROM outbox WHERE state IN (?,?)",
            (QUEUED, QUEUED, SENDING),
        )
        t = rows[0]["t"] if rows else None
        return None if t is None else float(t)

    def prune(self, older_than_s: float) -> int:
        """Drop the bytes of messages sent longer ago than this; the rows stay, and with them the keys that
        keep those messages from being sent again."""
        with self.catalog.transaction() as db:
            return int(db.execute(
                "UPDATE outbox SET message=X'' WHERE state=? AND sent_at<? AND length(message)>0",
                (SENT, self.clock() - older_than_s),
            ).rowcount)

    # -- people -----------------------------------------------------------------------------------
    def retry(self) -> int:
        """Failed messages (and waiting ones) are tried again now, with fresh attempts."""
        now = self.clock()
        with self.catalog.transaction() as db:
            return int(db.execute(
                "UPDATE outbox SET state=?, attempts=0, next_attempt=?, updated_at=? WHERE state IN (?,?)",
                (QUEUED, now, now, FAILED, QUEUED),
            ).rowcount)

    def entry(self, key: str) -> OutboxEntry | None:
        rows = self.catalog.read("SELECT * FROM outbox WHERE key=?", (key,))
        return _entry(rows[0]) if rows else None

    def entries(self, limit: int = 100) -> list[OutboxEntry]:
        """The most recent messages first."""
        return [_entry(r) for r in self.catalog.read("SELECT * FROM outbox ORDER BY id DESC LIMIT ?", (limit,))]

    def status(self) -> dict[str, Any]:
        """Counts by state, the messages that failed or wait after a failure, and the last one sent."""
        q = self.catalog.read
        counts = {r["state"]: r["n"] for r in q("SELECT state, count(*) n FROM outbox GROUP BY state")}
        problems = [
            {"key": r["key"], "subject": r["subject"], "state": r["state"], "error": r["last_error"],
             "attempts": r["attempts"], "retry_at": r["next_attempt"] if r["state"] == QUEUED else None,
             "at": r["updated_at"]}
            for r in q(
                "SELECT * FROM outbox WHERE state=? OR (state=? AND last_error IS NOT NULL)"
                " ORDER BY updated_at DESC LIMIT 20", (FAILED, QUEUED),
            )
        ]
        last = q(
            "SELECT key, subject, sent_at, reply FROM outbox WHERE state=? ORDER BY sent_at DESC, id DESC LIMIT 1",
            (SENT,),
        )
        return {
            "counts": counts, "problems": problems,
            "last_sent": dict(last[0]) if last else None,
        }


def _entry(r: sqlite3.Row) -> OutboxEntry:
    return OutboxEntry(
        id=r["id"], key=r["key"], kind=r["kind"], message_id=r["message_id"], subject=r["subject"],
        recipients=json.loads(r["recipients"]), state=r["state"], attempts=r["attempts"],
        next_attempt=r["next_attempt"], last_error=r["last_error"], reply=r["reply"], created_at=r["created_at"],
        updated_at=r["updated_at"], sent_at=r["sent_at"], message=bytes(r["message"]),
    )
