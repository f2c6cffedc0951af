"""IMAP mail sync: new messages in the watched folders become `ingest` jobs, each exactly once.

For every folder the catalog keeps (in `mail_folders`) the server's UIDVALIDITY and the highest UID whose
job is queued. A sync fetches the sizes of the messages above it, then their raw bytes in small batches;
each message goes to the blob store (fsynced) before ONE transaction per batch queues the batch's jobs and
advances last_uid. A crash anywhere re-fetches at most one uncommitted batch (identical bytes, the same
blobs) and never queues a message twice. The mailbox is only read (EXAMINE, BODY.PEEK).

A changed UIDVALIDITY (the folder was recreated) starts the folder over; the messages known under the old
one are forgotten after the refetch is queued, behind it, so identical content links to the existing
documents instead of being embedded again.

One thread per account: IDLE on the first folder when the server offers it (the others polled), polling
otherwise; a dropped connection reconnects with backoff; a refused login is reported on the account's
health and tried again only rarely. Watchers detect and queue; parsing is the ingest side's business.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kb.blobs import BlobStore
from kb.catalog import Catalog
from kb.jobs import FAILED, LANE_FAST, LANE_SLOW, QUEUED, RUNNING, JobQueue
from kb.paths import mail_uri
from kb.settings import MailAccount
from watchers.health import OK, STOPPED, HealthBoard
from watchers.imap import (
    FolderInfo,
    ImapConnection,
    MailAuthError,
    MailConnectError,
    MailError,
    MailFolderError,
    chunked,
    wait_backoff,
)

log = logging.getLogger(__name__)

KIND = "mail"
# Forgetting the messages of an old UIDVALIDITY waits behind the refetch (claimed after priority-0 work)
FORGET_PRIORITY = 10
FORGET_DELAY_S = 60.0
# A message the server drops the connection over (Dovecot does, for a corrupt file) is fetched alone after its
# batch failed, and after this many drops it is recorded as failed and skipped: the account goes on.
MAX_DROPS = 3


@dataclass
class FolderState:
    uidvalidity: int | None
    last_uid: int


@dataclass
class SyncReport:
    """What one pass over an account did (returned by sync_once, for tests and benchmarks)."""

    account: str
    queued: int = 0  # jobs queued for new messages (including the two kinds below)
    too_big: int = 0  # over the size limit: queued with the error, not downloaded
    failed: int = 0  # the server would not give the message: queued with the error
    forgotten: int = 0  # forget jobs for messages of an old UIDVALIDITY
    bytes: int = 0
    folders: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _mb(n: float) -> str:
    return f"{n / 2**20:.3g}"


def folder_prefix(account: str, folder: str, uidvalidity: int | None = None) -> str:
    """The common start of the uris of a folder's messages (of one UIDVALIDITY when given)."""
    base = mail_uri(account, folder, 0, 0).split(";UIDVALIDITY=", 1)[0] + ";UIDVALIDITY="
    return base if uidvalidity is None else f"{base}{uidvalidity}/"


class MailWatcher:
    """Keeps the library in step with the watched folders of every configured mail account."""

    def __init__(
        self, accounts: Sequence[MailAccount], catalog: Catalog, jobs: JobQueue, blobs: BlobStore,
        health: HealthBoard, *, max_message_bytes: int, slow_lane_bytes: int, timeout_s: float = 30.0,
        batch_count: int = 25, batch_bytes: int = 16 * 2**20, auth_retry_s: float = 1800.0,
        backoff_base_s: float = 1.0, backoff_cap_s: float = 300.0, idle_renew_s: float = 25 * 60.0,
    ) -> None:
        self.accounts = {a.name: a for a in accounts}
        self.catalog = catalog
        self.jobs = jobs
        self.blobs = blobs
        self.health = health
        self.max_message_bytes = max_message_bytes
        self.slow_lane_bytes = slow_lane_bytes
        self.timeout_s = timeout_s
        self.batch_count = batch_count
        self.batch_bytes = batch_bytes
        self.auth_retry_s = auth_retry_s
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.idle_renew_s = idle_renew_s
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._locks = {name: threading.Lock() for name in self.accounts}
        self._live: dict[str, ImapConnection] = {}
        self._failures: dict[str, int] = {}
        self._drops: dict[tuple[str, str, int], int] = {}  # (account, folder, uid) -> connections lost over it
        # Folders whose messages of an older UIDVALIDITY may still be in the library: every folder once per
        # process (a crash may have come between a reset and its forgets), and each folder after a reset.
        self._stale_check = {(a.name, f) for a in accounts for f in a.folders}
        self._stale_lock = threading.Lock()
        for a in accounts:
            health.register(KIND, a.name, tag=a.tag)

    # -- running ----------------------------------------------------------------------------------
    def start(self) -> None:
        """One thread per account; returns at once."""
        self._stop.clear()
        for account in self.accounts.values():
            t = threading.Thread(target=self._run, args=(account,), name=f"kb-mail-{account.name}", daemon=True)
            self._threads.append(t)
            t.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop every account's thread: an IDLE wait notices within a second; a socket operation still
        blocked after a moment has its connection shut under it."""
        self._stop.set()
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(timeout=min(2.0, max(0.0, deadline - time.monotonic())))
        for conn in list(self._live.values()):
            with contextlib.suppress(Exception):
                conn.client.socket().shutdown(2)
        for t in self._threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        self._threads = [t for t in self._threads if t.is_alive()]
        for name in self.accounts:
            self.health.update(KIND, name, state=STOPPED)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def sync_once(self, account: MailAccount | str) -> dict[str, Any]:
        """Connect, sync every watched folder of the account once, disconnect. Raises MailError."""
        acct = self.accounts[account] if isinstance(account, str) else account
        self._locks.setdefault(acct.name, threading.Lock())
        with ImapConnection(acct, timeout_s=self.timeout_s) as conn:
            return self._sync_account(conn, acct).to_dict()

    def _run(self, account: MailAccount) -> None:
        while not self._stop.is_set():
            conn = ImapConnection(account, timeout_s=self.timeout_s)
            try:
                conn.open()
                self._live[account.name] = conn
                idle = account.idle and conn.has_idle()
                self.health.update(KIND, account.name, mode="idle" if idle else "poll")
                self._serve(conn, account, idle)
            except MailAuthError as exc:
                # Lasting until someone fixes the settings: say so and try again only rarely.
                self._report(account, exc, retry_s=self.auth_retry_s)
                self._stop.wait(self.auth_retry_s)
            except MailError as exc:
                self._stop.wait(self._backoff(account, exc))
            except Exception as exc:  # a bug or a server answer nobody foresaw: never the end of the thread
                log.exception("mail account %s: unexpected error", account.name)
                error = MailError(f"unexpected error: {type(exc).__name__}: {exc}")
                self._stop.wait(self._backoff(account, error))
            finally:
                conn.close()  # while still listed, so stop() can cut a logout that hangs
                self._live.pop(account.name, None)

    def _backoff(self, account: MailAccount, exc: MailError) -> float:
        """Report a passing failure; the wait before the next try doubles with each failure in a row."""
        self._failures[account.name] = n = self._failures.get(account.name, 0) + 1
        delay = wait_backoff(n, base_s=self.backoff_base_s, cap_s=self.backoff_cap_s)
        self._report(account, exc, retry_s=delay)
        return delay

    def _serve(self, conn: ImapConnection, account: MailAccount, idle: bool) -> None:
        """Sync, then wait for news (IDLE) or the next poll, until stopped or the connection fails."""
        next_full = 0.0
        woke = False
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_full:
                self._sync_account(conn, account)
                self._failures[account.name] = 0  # a full sync worked: the next failure starts the backoff over
                next_full = time.monotonic() + account.poll_interval_s
            elif woke:
                self._sync_account(conn, account, folders=account.folders[:1])
            if self._stop.is_set():
                return
            if idle:
                until = min(next_full, time.monotonic() + self.idle_renew_s)
                woke = self._idle(conn, account, until)
            else:
                self._stop.wait(max(0.0, next_full - time.monotonic()))

    def _idle(self, conn: ImapConnection, account: MailAccount, until: float) -> bool:
        """IDLE on the first folder until `until`, news of a new message (True), or stop."""
        try:
            conn.select(account.folders[0])
        except MailFolderError:  # reported by the sync; wait as a poller would
            self._stop.wait(max(0.0, until - time.monotonic()))
            return False
        conn.idle_start()
        news = False
        while not self._stop.is_set() and not news:
            left = until - time.monotonic()
            if left <= 0:
                break
            for r in conn.idle_wait(min(1.0, left)):
                if len(r) >= 2 and r[1] in (b"EXISTS", b"RECENT"):
                    news = True
        conn.idle_done()
        return news

    # -- syncing ----------------------------------------------------------------------------------
    def _sync_account(
        self, conn: ImapConnection, account: MailAccount, folders: Sequence[str] | None = None
    ) -> SyncReport:
        report = SyncReport(account.name)
        with self._locks[account.name]:
            for folder in folders or account.folders:
                if self._stop.is_set():
                    break
                try:
                    self._sync_folder(conn, account, folder, report)
                except MailFolderError as exc:
                    report.errors.append(str(exc))
                    self._record_folder(account.name, folder, error=str(exc))
        if folders is not None:  # the IDLE folder only: news (last_event, set per batch), not a full check
            return report
        if report.errors:
            self.health.update(KIND, account.name, error="; ".join(report.errors), last_sync=time.time())
        else:
            self.health.update(KIND, account.name, state=OK, detail={}, last_sync=time.time())
        return report

    def _sync_folder(self, conn: ImapConnection, account: MailAccount, folder: str, report: SyncReport) -> None:
        info = conn.select(folder)
        state = self.folder_state(account.name, folder)
        if state is None or state.uidvalidity != info.uidvalidity:
            self._reset_folder(account.name, folder, info, state)
            state = FolderState(info.uidvalidity, 0)
        sizes: dict[int, int] = {}
        # UIDNEXT tells, without another round trip, that nothing arrived since last time
        if info.messages and (info.uidnext is None or info.uidnext > state.last_uid + 1):
            sizes = conn.sizes_after(state.last_uid)
        for batch in chunked(sorted(sizes), sizes, count=self.batch_count, total_bytes=self.batch_bytes):
            # a batch that lost the connection before is read one message at a time, to find the culprit
            suspect = any((account.name, folder, u) in self._drops for u in batch)
            for part in ([u] for u in batch) if suspect else [batch]:
                if self._stop.is_set():
                    return
                self._store_batch(conn, account, folder, info.uidvalidity, part, sizes, report)
        key = (account.name, folder)
        with self._stale_lock:
            stale = key in self._stale_check
        if stale:
            report.forgotten += self._forget_stale(account.name, folder, info.uidvalidity)
            with self._stale_lock:
                self._stale_check.discard(key)
        done = self.folder_state(account.name, folder)
        report.folders[folder] = {
            "uidvalidity": info.uidvalidity, "messages": info.messages, "last_uid": done.last_uid if done else 0,
        }
        self._record_folder(account.name, folder, error=None, synced=True)

    def _reset_folder(self, account: str, folder: str, info: FolderInfo, old: FolderState | None) -> None:
        """First sight of a folder, or a new UIDVALIDITY: every message there is new to us."""
        if old is not None and old.uidvalidity is not None:
            log.warning(
                "mail %s/%s: UIDVALIDITY changed (%s -> %s): the folder is read again", account, folder,
                old.uidvalidity, info.uidvalidity,
            )
            with self._stale_lock:
                self._stale_check.add((account, folder))
        with self.jobs.transaction() as db:
            db.execute(
                "INSERT INTO mail_folders(account, folder, uidvalidity, last_uid) VALUES (?,?,?,0)"
                " ON CONFLICT(account, folder) DO UPDATE SET uidvalidity=excluded.uidvalidity, last_uid=0",
                (account, folder, info.uidvalidity),
            )

    def _store_batch(
        self, conn: ImapConnection, account: MailAccount, folder: str, uidvalidity: int, batch: list[int],
        sizes: dict[int, int], report: SyncReport,
    ) -> None:
        """Fetch, keep the bytes, then queue the jobs and advance last_uid in one transaction."""
        limit = self.max_message_bytes
        wanted = [u for u in batch if sizes[u] <= limit]
        errors: dict[int, str] = {}
        for uid in wanted:
            if self._drops.get((account.name, folder, uid), 0) >= MAX_DROPS:
                errors[uid] = (
                    f"the server closed the connection each time it sent this message ({MAX_DROPS} tries); "
                    "it is skipped (a damaged message on the server?)"
                )
        wanted = [u for u in wanted if u not in errors]
        try:
            bodies, more = conn.fetch_bodies(wanted)
        except MailConnectError as exc:
            if exc.server_closed:  # the server hung up on these: one of them may be what it cannot send
                for uid in wanted:
                    key = (account.name, folder, uid)
                    self._drops[key] = self._drops.get(key, 0) + 1
            raise
        errors.update(more)
        entries: list[tuple[int, dict[str, Any]]] = []
        for uid in batch:
            size = sizes[uid]
            body = bodies.get(uid)
            if body is not None:
                size = len(body)
            payload: dict[str, Any] = {
                "source_type": "mail", "blob": None, "size": size, "tag": account.tag, "account": account.name,
                "folder": folder, "uid": uid,
            }
            if size > limit:
                payload["error"] = (
                    f"message is {_mb(size)} MB, over the {_mb(limit)} MB limit (setting mail_max_message_mb)"
                )
                report.too_big += 1
            elif body is not None:
                payload["blob"] = self.blobs.put(body)  # durable before the job that points at it
                report.bytes += size
            elif uid in errors:
                payload["error"] = errors[uid]
                report.failed += 1
                log.warning("mail %s/%s UID %d: %s", account.name, folder, uid, errors[uid])
            else:
                continue  # expunged between the two fetches: nothing left to read
            entries.append((uid, payload))
        queued = 0
        with self.jobs.transaction() as db:
            row = db.execute(
                "SELECT uidvalidity, last_uid FROM mail_folders WHERE account=? AND folder=?", (account.name, folder)
            ).fetchone()
            if row is None or row["uidvalidity"] != uidvalidity:
                raise MailFolderError(f"folder {folder!r} of {account.name} was reset during the sync; read again")
            last_uid = int(row["last_uid"])
            for uid, payload in entries:
                if uid <= last_uid:  # queued already (by another sync of this account): never twice
                    continue
                lane = LANE_SLOW if payload["size"] > self.slow_lane_bytes else LANE_FAST
                self.jobs.enqueue(
                    db, "ingest", mail_uri(account.name, folder, uidvalidity, uid), lane=lane, payload=payload
                )
                queued += 1
            db.execute(
                "UPDATE mail_folders SET last_uid=max(last_uid, ?) WHERE account=? AND folder=?",
                (max(batch), account.name, folder),
            )
        for uid in batch:
            self._drops.pop((account.name, folder, uid), None)
        report.queued += queued
        if queued:
            self.health.event(KIND, account.name)

    def _forget_stale(self, account: str, folder: str, uidvalidity: int) -> int:
        """Queue forget jobs for what the library still holds under another UIDVALIDITY of this folder."""
        prefix = folder_prefix(account, folder)
        current = folder_prefix(account, folder, uidvalidity)
        upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        with self.jobs.transaction() as db:
            uris = {r["uri"] for r in db.execute("SELECT uri FROM sources WHERE uri >= ? AND uri < ?", (prefix, upper))}
            uris |= {
                r["uri"] for r in db.execute(
                    "SELECT uri FROM jobs WHERE action='ingest' AND state IN (?,?,?) AND uri >= ? AND uri < ?",
                    (QUEUED, RUNNING, FAILED, prefix, upper),
                )
            }
            stale = sorted(u for u in uris if not u.startswith(current))
            for uri in stale:
                self.jobs.enqueue(
                    db, "forget", uri, lane=LANE_FAST, priority=FORGET_PRIORITY, delay_s=FORGET_DELAY_S
                )
        if stale:
            log.info("mail %s/%s: forgetting %d messages of an old UIDVALIDITY", account, folder, len(stale))
        return len(stale)

    # -- state ------------------------------------------------------------------------------------
    def folder_state(self, account: str, folder: str) -> FolderState | None:
        rows = self.catalog._query(
            "SELECT uidvalidity, last_uid FROM mail_folders WHERE account=? AND folder=?", (account, folder)
        )
        if not rows:
            return None
        return FolderState(rows[0]["uidvalidity"], int(rows[0]["last_uid"]))

    def _record_folder(self, account: str, folder: str, *, error: str | None, synced: bool = False) -> None:
        """Persist the folder's last sync / last error, so `kb status` can tell even with no service."""
        try:
            with self.catalog.transaction() as db:
                db.execute(
                    "INSERT INTO mail_folders(account, folder, last_error, last_sync) VALUES (?,?,?,?)"
                    " ON CONFLICT(account, folder) DO UPDATE SET last_error=excluded.last_error,"
                    " last_sync=coalesce(excluded.last_sync, last_sync)",
                    (account, folder, error, time.time() if synced else None),
                )
        except sqlite3.Error:
            log.warning("cannot record the state of mail folder %s/%s", account, folder, exc_info=True)

    def _report(self, account: MailAccount, exc: MailError, *, retry_s: float) -> None:
        message = str(exc)
        log.warning("mail account %s: %s (next try in %.0f s)", account.name, message, retry_s)
        self.health.update(KIND, account.name, error=message, detail={"retry_at": time.time() + retry_s})
        for folder in account.folders:
            self._record_folder(account.name, folder, error=message)


# -- `kb mail test` -----------------------------------------------------------------------------------
@dataclass
class FolderCheck:
    folder: str
    messages: int = 0
    new: int = 0
    error: str | None = None


@dataclass
class AccountCheck:
    """What `kb mail test` found for one account: a connection error, or each folder's counts."""

    account: str
    where: str
    error: str | None = None
    idle: bool = False
    folders: list[FolderCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and all(f.error is None for f in self.folders)


def check_account(
    account: MailAccount, known: dict[tuple[str, str], FolderState], *, timeout_s: float = 15.0
) -> AccountCheck:
    """Connect, log in and open each folder read-only, counting messages and those new to the library
    (`known`: the catalog's folder states). Changes nothing anywhere."""
    conn = ImapConnection(account, timeout_s=timeout_s)
    result = AccountCheck(account.name, conn.where)
    try:
        with conn:
            result.idle = conn.has_idle()
            for folder in account.folders:
                check = FolderCheck(folder)
                result.folders.append(check)
                try:
                    info = conn.select(folder)
                except MailFolderError as exc:
                    check.error = str(exc)
                    continue
                check.messages = info.messages
                state = known.get((account.name, folder))
                if state is None or state.uidvalidity != info.uidvalidity:
                    check.new = info.messages
                elif info.messages and (info.uidnext is None or info.uidnext > state.last_uid + 1):
                    check.new = len(conn.sizes_after(state.last_uid))
    except MailError as exc:
        result.error = str(exc)
    return result


def folder_status(catalog: Catalog) -> list[dict[str, Any]]:
    """Every mail folder's sync state as the catalog keeps it: what `kb status` can show with no service."""
    rows = catalog._query(
        "SELECT account, folder, uidvalidity, last_uid, last_sync, last_error FROM mail_folders"
        " ORDER BY account, folder"
    )
    return [dict(r) for r in rows]


def read_folder_states(catalog_path: Path) -> dict[tuple[str, str], FolderState]:
    """The catalog's mail sync state, read-only (works beside a running service; no catalog: nothing known)."""
    if not catalog_path.is_file():
        return {}
    try:
        db = sqlite3.connect(f"file:{catalog_path}?mode=ro", uri=True, timeout=10)
        try:
            rows = db.execute("SELECT account, folder, uidvalidity, last_uid FROM mail_folders").fetchall()
        finally:
            db.close()
    except sqlite3.Error:
        return {}
    return {(a, f): FolderState(v, int(u or 0)) for a, f, v, u in rows}
