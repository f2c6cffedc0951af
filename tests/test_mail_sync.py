"""IMAP mail sync against a real Dovecot (started per test on 127.0.0.1): nothing mocked.

What is checked is what happened: the jobs in the catalog (one per message, ever), the bytes in the blob
store, the sync state, the mailbox's own flags and counts, the account's health, the CLI's words.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from dovecot import Dovecot, available, sample_messages
from pydantic import SecretStr

from kb.blobs import BlobStore
from kb.catalog import Catalog
from kb.jobs import LANE_FAST, LANE_SLOW, JobQueue
from kb.paths import mail_uri
from kb.settings import MailAccount
from watchers.health import OK, UNHEALTHY, HealthBoard
from watchers.imap import ImapConnection, MailConnectError, MailFolderError
from watchers.mail import FORGET_PRIORITY, MailWatcher, folder_status

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
LIMIT = 200_000  # bytes: the "big" sample (~300 kB) is over it
SLOW_LANE = 2_000  # bytes: the attachment message goes to the slow lane


def account(server: Dovecot, *, password: str | None = None, folders: list[str] | None = None,
            **kw: Any) -> MailAccount:
    kw.setdefault("security", "none")
    kw.setdefault("name", "work")
    return MailAccount(
        host="127.0.0.1", port=server.port, username=server.user,
        password=SecretStr(password or server.password), folders=folders or ["INBOX"], tag="job", **kw,
    )


class Env:
    """A catalog, queue, blob store and health board in a temp dir, and watchers built on them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.catalog = Catalog(root / "catalog.sqlite3")
        self.jobs = JobQueue(self.catalog)
        self.blobs = BlobStore(root / "blobs" / "mail", ".eml")
        self.health = HealthBoard()
        self.watchers: list[MailWatcher] = []
        log_enqueues(self.catalog)

    def watcher(self, *accounts: MailAccount, **kw: Any) -> MailWatcher:
        kw.setdefault("max_message_bytes", LIMIT)
        kw.setdefault("slow_lane_bytes", SLOW_LANE)
        kw.setdefault("backoff_base_s", 0.1)
        kw.setdefault("backoff_cap_s", 0.5)
        kw.setdefault("timeout_s", 5.0)
        w = MailWatcher(list(accounts), self.catalog, self.jobs, self.blobs, self.health, **kw)
        self.watchers.append(w)
        return w

    def mail_jobs(self, action: str = "ingest") -> dict[str, Any]:
        return {j.uri: j for j in self.jobs.jobs(limit=100000) if j.action == action}

    def health_of(self, name: str = "work") -> dict[str, Any]:
        return next(h for h in self.health.snapshot() if h["name"] == name)

    def close(self) -> None:
        for w in self.watchers:
            w.stop(timeout_s=5)
        self.catalog.close()


def log_enqueues(catalog: Catalog) -> None:
    """Every insert and re-queue of a job, recorded by SQLite itself: a message queued twice shows here even
    though the jobs table keeps one row per key."""
    catalog.execute("CREATE TABLE IF NOT EXISTS enqueue_log(key TEXT, what TEXT)")
    catalog.execute(
        "CREATE TRIGGER IF NOT EXISTS log_insert AFTER INSERT ON jobs"
        " BEGIN INSERT INTO enqueue_log VALUES (new.key, 'insert'); END"
    )
    catalog.execute(
        "CREATE TRIGGER IF NOT EXISTS log_update AFTER UPDATE OF payload ON jobs"
        " BEGIN INSERT INTO enqueue_log VALUES (new.key, 'update'); END"
    )


def enqueue_counts(catalog: Catalog) -> dict[str, int]:
    rows = catalog._query("SELECT key, count(*) n FROM enqueue_log GROUP BY key")
    return {r["key"]: int(r["n"]) for r in rows}


def wait_for(cond: Callable[[], Any], timeout_s: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    yield e
    e.close()


def test_initial_sync_queues_each_message_once_and_leaves_the_mailbox_alone(imap_server: Dovecot, env: Env) -> None:
    samples = sample_messages(big_bytes=300_000)
    uids = dict(zip(samples, imap_server.append_many("INBOX", list(samples.values())), strict=True))
    validity = imap_server.folder_status("INBOX")[b"UIDVALIDITY"]
    before = imap_server.flags("INBOX")
    acct = account(imap_server)
    w = env.watcher(acct)

    report = w.sync_once(acct)

    assert report["queued"] == len(samples) and report["too_big"] == 1 and report["errors"] == []
    jobs = env.mail_jobs()
    assert len(jobs) == len(samples)
    for name, raw in samples.items():
        uri = mail_uri("work", "INBOX", validity, uids[name])
        job = jobs[uri]
        p = job.payload
        assert (p["source_type"], p["account"], p["folder"], p["uid"], p["tag"]) == (
            "mail", "work", "INBOX", uids[name], "job"
        )
        if name == "big":
            assert p["blob"] is None and p["size"] > LIMIT
            assert "over the 0.191 MB limit (setting mail_max_message_mb)" in p["error"]
            assert job.lane == LANE_SLOW
            continue
        assert "error" not in p
        assert env.blobs.read(p["blob"]) == raw, name  # the bytes as the server holds them, fsynced
        assert p["size"] == len(raw)
        assert job.lane == (LANE_SLOW if len(raw) > SLOW_LANE else LANE_FAST)
    # one Message-ID, two messages: two jobs, two blobs
    assert jobs[mail_uri("work", "INBOX", validity, uids["dup_a"])].payload["blob"] != \
        jobs[mail_uri("work", "INBOX", validity, uids["dup_b"])].payload["blob"]
    state = w.folder_state("work", "INBOX")
    assert state is not None and (state.uidvalidity, state.last_uid) == (validity, max(uids.values()))
    row = env.catalog._query("SELECT last_sync, last_error FROM mail_folders WHERE account='work'")[0]
    assert row["last_sync"] is not None and row["last_error"] is None
    h = env.health_of()
    assert h["state"] == OK and h["last_sync"] and h["last_event"]

    # nothing new: nothing queued, nothing re-queued
    again = w.sync_once(acct)
    assert again["queued"] == 0
    assert set(enqueue_counts(env.catalog).values()) == {1}
    # read-only: no \Seen (or any flag) set, nothing added or removed
    assert imap_server.flags("INBOX") == before
    assert all(b"\\Seen" not in f for f in before.values())
    assert imap_server.folder_status("INBOX")[b"MESSAGES"] == len(samples)

    # new mail later: only it is queued
    uid = imap_server.append("INBOX", samples["plain"].replace(b"Plain hello", b"Plain again"))
    assert w.sync_once(acct)["queued"] == 1
    assert mail_uri("work", "INBOX", validity, uid) in env.mail_jobs()


def test_uidvalidity_change_refetches_and_forgets_the_old_uris(imap_server: Dovecot, env: Env) -> None:
    imap_server.create_folder("Projects")
    msgs = [sample_messages(big_bytes=10)[k] for k in ("plain", "html", "attachments")]
    imap_server.append_many("Projects", msgs)
    acct = account(imap_server, folders=["INBOX", "Projects"])
    w = env.watcher(acct)
    w.sync_once(acct)
    old = imap_server.folder_status("Projects")[b"UIDVALIDITY"]
    old_uris = [mail_uri("work", "Projects", old, uid) for uid in (1, 2, 3)]
    # as if the first two had been ingested (their sources exist); the third is still queued
    for uri in old_uris[:2]:
        env.catalog.record_failure(uri, "mail", "stand-in", size=1, mtime_ns=None)
        job = env.jobs.by_key(f"src:{uri}")
        assert job is not None
        env.jobs.complete(job.id, "added")

    imap_server.delete_folder("Projects")
    imap_server.create_folder("Projects")
    imap_server.append_many("Projects", msgs)
    new = imap_server.folder_status("Projects")[b"UIDVALIDITY"]
    assert new != old

    report = w.sync_once(acct)

    assert report["queued"] == 3 and report["forgotten"] == 3
    ingest = env.mail_jobs()
    for uid, raw in zip((1, 2, 3), msgs, strict=True):
        job = ingest[mail_uri("work", "Projects", new, uid)]
        assert env.blobs.read(job.payload["blob"]) == raw  # the same bytes: the same blob, no new document
    forget = env.mail_jobs("forget")
    assert sorted(forget) == sorted(old_uris)  # the queued ingest of the third became its forget
    for job in forget.values():
        assert job.priority == FORGET_PRIORITY and job.run_after > time.time() + 30  # after the refetch
    assert w.folder_state("work", "Projects").last_uid == 3  # type: ignore[union-attr]
    assert w.sync_once(acct)["forgotten"] == 0


def test_missing_folder_is_reported_and_the_others_still_sync(imap_server: Dovecot, env: Env) -> None:
    imap_server.append("INBOX", sample_messages(big_bytes=10)["plain"])
    acct = account(imap_server, folders=["Nope", "INBOX"])
    w = env.watcher(acct)
    report = w.sync_once(acct)
    assert report["queued"] == 1
    assert report["errors"] == ["cannot open folder 'Nope' of work: Mailbox doesn't exist: Nope (folders there: INBOX)"]
    h = env.health_of()
    assert h["state"] == UNHEALTHY and "Nope" in h["last_error"]
    states = {r["folder"]: r for r in folder_status(env.catalog)}
    assert "Nope" in states["Nope"]["last_error"] and states["Nope"]["last_sync"] is None
    assert states["INBOX"]["last_error"] is None and states["INBOX"]["last_uid"] == 1


def test_idle_queues_new_mail_within_seconds_and_stops_promptly(imap_server: Dovecot, env: Env) -> None:
    acct = account(imap_server, poll_interval_s=300)
    w = env.watcher(acct)
    w.start()
    wait_for(lambda: env.health_of()["last_sync"], what="the first sync")
    assert env.health_of()["mode"] == "idle"
    time.sleep(0.3)  # in IDLE now
    started = time.monotonic()
    imap_server.append("INBOX", sample_messages(big_bytes=10)["plain"])
    wait_for(lambda: env.mail_jobs(), timeout_s=3, what="the new message's job")
    assert time.monotonic() - started < 3
    assert env.health_of()["last_event"]
    started = time.monotonic()
    w.stop()
    assert time.monotonic() - started < 3
    assert env.health_of()["state"] == "stopped"


def test_server_restart_during_idle_is_noticed_and_mail_still_arrives(imap_server: Dovecot, env: Env) -> None:
    acct = account(imap_server)
    w = env.watcher(acct)
    w.start()
    wait_for(lambda: env.health_of()["last_sync"], what="the first sync")
    time.sleep(0.3)  # in IDLE now
    imap_server.restart()
    h = wait_for(lambda: env.health_of()["last_error"] and env.health_of(), what="the dropped connection noticed")
    assert h["last_error"] == f"127.0.0.1:{imap_server.port} closed the connection"
    wait_for(lambda: env.health_of()["state"] == OK, what="reconnected")
    imap_server.append("INBOX", sample_messages(big_bytes=10)["plain"])
    wait_for(lambda: env.mail_jobs(), timeout_s=5, what="mail after the restart")
    assert w.stopping is False


def test_polling_without_idle(imap_server: Dovecot, env: Env) -> None:
    # the settings allow 5 s at least; a copy skips that check to keep the test short
    acct = account(imap_server, idle=False).model_copy(update={"poll_interval_s": 1.0})
    w = env.watcher(acct)
    w.start()
    wait_for(lambda: env.health_of()["last_sync"], what="the first sync")
    assert env.health_of()["mode"] == "poll"
    imap_server.append("INBOX", sample_messages(big_bytes=10)["html"])
    wait_for(lambda: env.mail_jobs(), timeout_s=4, what="the next poll")


class StopsServerAfter(BlobStore):
    """The real blob store, which also stops Dovecot after its n-th message: a server dying mid-sync."""

    def __init__(self, root: Path, server: Dovecot, n: int) -> None:
        super().__init__(root, ".eml")
        self.server, self.n, self.count = server, n, 0

    def put(self, data: bytes) -> str:
        digest = super().put(data)
        self.count += 1
        if self.count == self.n:
            self.server.stop()
        return digest


def test_server_restart_mid_sync_reconnects_and_finishes_without_duplicates(
    imap_server: Dovecot, env: Env
) -> None:
    n = 60
    imap_server.append_many("INBOX", [f"Subject: m{i}\r\nMessage-ID: <{i}@x>\r\n\r\nbody {i}\r\n".encode()
                                      for i in range(n)])
    env.blobs = StopsServerAfter(env.root / "blobs" / "mail", imap_server, n=12)
    acct = account(imap_server)
    w = env.watcher(acct, batch_count=5)
    w.start()
    h = wait_for(lambda: env.health_of()["state"] == UNHEALTHY and env.health_of(), what="the error on health")
    assert "127.0.0.1" in h["last_error"]
    assert 0 < len(env.mail_jobs()) < n
    imap_server.start()
    wait_for(lambda: len(env.mail_jobs()) == n, timeout_s=15, what="the sync to finish")
    wait_for(lambda: env.health_of()["state"] == OK, what="healthy again")
    counts = enqueue_counts(env.catalog)
    assert len(counts) == n and set(counts.values()) == {1}
    assert w.folder_state("work", "INBOX").last_uid == n  # type: ignore[union-attr]


def test_a_message_the_server_cannot_send_is_recorded_and_skipped(imap_server: Dovecot, env: Env) -> None:
    """Dovecot drops the connection when a stored message is damaged (its file shorter than recorded): the
    account must not reconnect and fail on it forever."""
    messages = [f"Subject: m{i}\r\nMessage-ID: <{i}@x>\r\n\r\nbody number {i}\r\n".encode() for i in range(6)]
    uids = imap_server.append_many("INBOX", messages)
    damaged = imap_server.message_file("INBOX", uids[2])
    damaged.write_bytes(b"Subject: m2\r\n\r\nX\r\n")
    acct = account(imap_server)
    w = env.watcher(acct)
    w.start()
    wait_for(lambda: len(env.mail_jobs()) == len(messages), timeout_s=20, what="every message queued")
    validity = imap_server.folder_status("INBOX")[b"UIDVALIDITY"]
    jobs = env.mail_jobs()
    for uid, raw in zip(uids, messages, strict=True):
        p = jobs[mail_uri("work", "INBOX", validity, uid)].payload
        if uid == uids[2]:
            assert p["blob"] is None
            assert p["error"].startswith("the server closed the connection each time it sent this message")
        else:
            assert env.blobs.read(p["blob"]) == raw
    wait_for(lambda: env.health_of()["state"] == OK, what="healthy again")
    assert set(enqueue_counts(env.catalog).values()) == {1}


def test_wrong_password_is_reported_not_retried_in_a_tight_loop(
    imap_server: Dovecot, env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "WrongHorse-Battery-9"
    acct = account(imap_server, password=secret)
    good = account(imap_server, name="other")
    imap_server.append("INBOX", sample_messages(big_bytes=10)["plain"])
    caplog.set_level(logging.DEBUG)
    # Dovecot answers repeated failures slowly (an auth penalty of seconds): a timeout that allows for it
    w = env.watcher(acct, good, auth_retry_s=600, timeout_s=20)
    w.start()
    h = wait_for(lambda: env.health_of()["state"] == UNHEALTHY and env.health_of(), what="the login failure")
    assert h["last_error"] == (
        f"login failed for user '{imap_server.user}' at 127.0.0.1:{imap_server.port}: "
        "[AUTHENTICATIONFAILED] Authentication failed."
    )
    assert h["detail"]["retry_at"] > time.time() + 500
    # the other account is not held up by this one
    wait_for(lambda: env.health_of("other")["state"] == OK, what="the other account synced")
    assert [j.payload["account"] for j in env.mail_jobs().values()] == ["other"]
    time.sleep(1.5)
    assert imap_server.log.count("auth failed") == 1, imap_server.log  # one try, then a long wait: no tight loop
    w.stop()
    assert secret not in caplog.text and secret not in str(env.health.snapshot())
    assert secret not in str(env.catalog._query("SELECT * FROM mail_folders")[0]["last_error"])


def test_a_non_ascii_password_logs_in() -> None:
    if not available():
        pytest.skip("Dovecot is not installed (/usr/sbin/dovecot; Debian package dovecot-imapd)")
    with Dovecot(password="Grüße-aus-Köln") as server:
        acct = MailAccount(name="utf8", host="127.0.0.1", port=server.port, security="none", username=server.user,
                           password=SecretStr(server.password))
        with ImapConnection(acct) as conn:
            assert conn.select("INBOX").messages == 0


def test_connection_errors_are_one_clear_line(imap_server: Dovecot) -> None:
    acct = account(imap_server)
    imap_server.stop()
    with pytest.raises(MailConnectError, match=r"connecting to 127\.0\.0\.1:\d+ failed: connection refused"):
        ImapConnection(acct, timeout_s=2).open()
    imap_server.start()
    with ImapConnection(acct) as conn, pytest.raises(MailFolderError, match="cannot open folder 'Missing'"):
        conn.select("Missing")
    tls = account(imap_server, security="starttls")
    with pytest.raises(MailConnectError, match="does not offer STARTTLS"):
        ImapConnection(tls).open()


def test_tls_and_starttls_with_certificate_checks(tmp_path: Path) -> None:
    from kbapp.cli import main

    if not available():
        pytest.skip("Dovecot is not installed (/usr/sbin/dovecot; Debian package dovecot-imapd)")
    with Dovecot(tls=True) as server:
        def acct(security: str, port: int, verify: bool) -> MailAccount:
            return MailAccount(name="secure", host="127.0.0.1", port=port, security=security, username=server.user,
                               password=SecretStr(server.password), verify_tls=verify)

        server.append("INBOX", sample_messages(big_bytes=10)["plain"])
        for security, port in (("tls", server.tls_port), ("starttls", server.port)):
            with ImapConnection(acct(security, port, verify=False)) as conn:
                assert conn.select("INBOX").messages == 1
            with pytest.raises(MailConnectError, match=r"TLS certificate not trusted \(self-signed certificate\)"):
                ImapConnection(acct(security, port, verify=True)).open()
        with pytest.raises(MailConnectError, match=r"TLS error: WRONG_VERSION_NUMBER .*try security 'starttls'"):
            ImapConnection(acct("tls", server.port, verify=False)).open()

        config = tmp_path / "kb.toml"
        config.write_text(textwrap.dedent(f"""
            [[mail]]
            name = "secure"
            host = "127.0.0.1"
            port = {server.tls_port}
            username = "{server.user}"
            password_env = "KB_TEST_TLS_PASSWORD"
        """))
        out = CliRunner().invoke(main, ["mail", "test"], env={
            "KB_CONFIG": str(config), "KB_DATA_DIR": str(tmp_path / "data"), "KB_TEST_TLS_PASSWORD": server.password,
        })
        assert out.exit_code == 1
        assert out.output.strip() == (
            f"secure: connecting to 127.0.0.1:{server.tls_port} failed: TLS certificate not trusted "
            "(self-signed certificate); set verify_tls = false only if you trust it"
        )


KILL_SCRIPT = textwrap.dedent("""
    import os
    import signal
    import sys
    from pathlib import Path
    from pydantic import SecretStr
    from kb.blobs import BlobStore
    from kb.catalog import Catalog
    from kb.jobs import JobQueue
    from kb.settings import MailAccount
    from watchers.health import HealthBoard
    from watchers.mail import MailWatcher

    root, port, user, password = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    kill_at = int(sys.argv[5])


    class KilledMidBatch(BlobStore):
        # the real store; after its kill_at-th message is written, kill -9 (its batch is not committed yet)
        count = 0

        def put(self, data):
            digest = super().put(data)
            KilledMidBatch.count += 1
            if KilledMidBatch.count == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return digest

    acct = MailAccount(name="work", host="127.0.0.1", port=port, security="none", username=user,
                       password=SecretStr(password))
    catalog = Catalog(root / "catalog.sqlite3")
    blobs = KilledMidBatch(root / "blobs" / "mail", ".eml")
    w = MailWatcher([acct], catalog, JobQueue(catalog), blobs, HealthBoard(), max_message_bytes=10**7,
                    slow_lane_bytes=10**6, batch_count=4)
    w.sync_once(acct)
    print("finished")
""")


def test_kill_9_mid_sync_then_a_second_sync_queues_each_message_exactly_once(
    imap_server: Dovecot, env: Env
) -> None:
    n = 300
    filler = b"x" * 2000
    messages = [f"Subject: m{i}\r\nMessage-ID: <{i}@x>\r\n\r\n".encode() + filler + f"\r\n{i}\r\n".encode()
                for i in range(n)]
    uids = imap_server.append_many("INBOX", messages)
    proc = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(env.root), str(imap_server.port), imap_server.user,
         imap_server.password, "122"],
        env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    killed_at = env.catalog._query("SELECT last_uid FROM mail_folders WHERE account='work'")[0]["last_uid"]
    assert killed_at == 120  # 30 batches of 4 committed; the 31st had two blobs written, then the kill
    assert len(env.mail_jobs()) == 120

    acct = account(imap_server, folders=["INBOX"])
    report = env.watcher(acct).sync_once(acct)

    assert report["queued"] == n - killed_at
    validity = imap_server.folder_status("INBOX")[b"UIDVALIDITY"]
    jobs = env.mail_jobs()
    assert len(jobs) == n
    counts = enqueue_counts(env.catalog)
    assert len(counts) == n and set(counts.values()) == {1}
    for uid, raw in zip(uids, messages, strict=True):
        assert env.blobs.read(jobs[mail_uri("work", "INBOX", validity, uid)].payload["blob"]) == raw
    assert not [p for p in (env.root / "blobs").rglob("*") if p.is_file() and p.name.endswith(".tmp")]


def test_kb_mail_test_says_what_works_and_what_does_not(imap_server: Dovecot, tmp_path: Path) -> None:
    from kbapp.cli import main

    imap_server.append_many("INBOX", [sample_messages(big_bytes=10)[k] for k in ("plain", "html")])
    config = tmp_path / "kb.toml"
    config.write_text(textwrap.dedent(f"""
        [[mail]]
        name = "work"
        host = "127.0.0.1"
        port = {imap_server.port}
        security = "none"
        username = "{imap_server.user}"
        password_env = "KB_TEST_MAIL_PASSWORD"
        folders = ["INBOX", "Archive"]

        [[mail]]
        name = "typo"
        host = "127.0.0.1"
        port = {imap_server.port}
        security = "none"
        username = "{imap_server.user}"
        password_env = "KB_TEST_WRONG_PASSWORD"
    """))
    imap_server.create_folder("Archive")
    env_vars = {
        "KB_CONFIG": str(config), "KB_DATA_DIR": str(tmp_path / "data"),
        "KB_TEST_MAIL_PASSWORD": imap_server.password, "KB_TEST_WRONG_PASSWORD": "not-the-password",
    }
    runner = CliRunner()

    good = runner.invoke(main, ["mail", "test", "work"], env=env_vars)
    assert good.exit_code == 0, good.output
    assert f"work: logged in to 127.0.0.1:{imap_server.port} as {imap_server.user} (none); new mail by IDLE" \
        in good.output
    assert "  INBOX: 2 messages, 2 new to kb" in good.output
    assert "  Archive: 0 messages, 0 new to kb" in good.output

    unknown = runner.invoke(main, ["mail", "test", "nope"], env=env_vars)
    assert unknown.exit_code == 1 and "no mail account named 'nope' (configured: work, typo)" in unknown.output

    imap_server.delete_folder("Archive")
    both = runner.invoke(main, ["mail", "test"], env=env_vars)
    assert both.exit_code == 1
    assert "  Archive: cannot open folder 'Archive' of work" in both.output
    assert (
        f"typo: login failed for user '{imap_server.user}' at 127.0.0.1:{imap_server.port}: "
        "[AUTHENTICATIONFAILED] Authentication failed.\n"
    ) in both.output
    assert "not-the-password" not in both.output

    imap_server.stop()
    down = runner.invoke(main, ["mail", "test", "work"], env=env_vars)
    assert down.exit_code == 1
    assert down.output.strip() == (
        f"work: connecting to 127.0.0.1:{imap_server.port} failed: connection refused "
        "(is the server running, is the port right?)"
    )


def test_kb_mail_test_counts_only_what_the_library_lacks(imap_server: Dovecot, tmp_path: Path) -> None:
    """After a sync (recorded in the data dir's catalog), only later mail counts as new."""
    from kb.embedding import HashEmbedder
    from kb.settings import load_settings
    from kbapp.app import App
    from kbapp.cli import main

    imap_server.append_many("INBOX", [sample_messages(big_bytes=10)[k] for k in ("plain", "html")])
    os.environ["KB_TEST_MAIL_PASSWORD2"] = imap_server.password
    try:
        mail = [{"name": "work", "host": "127.0.0.1", "port": imap_server.port, "security": "none",
                 "username": imap_server.user, "password_env": "KB_TEST_MAIL_PASSWORD2"}]
        settings = load_settings(data_dir=tmp_path / "data", workers=0, mail=mail)
        app = App(settings, embedder=HashEmbedder())
        try:
            board = HealthBoard()
            report = app.mail_watcher(board).sync_once("work")
            assert report["queued"] == 2
            assert app.mail_blobs.root == settings.blobs_dir / "mail"
        finally:
            app.close()
        imap_server.append("INBOX", sample_messages(big_bytes=10)["attachments"])
        out = CliRunner().invoke(
            main, ["mail", "test"],
            env={"KB_DATA_DIR": str(tmp_path / "data"), "KB_MAIL": json.dumps(mail), "KB_CONFIG": "/nonexistent"},
        )
        assert out.exit_code == 0, out.output
        assert "  INBOX: 3 messages, 1 new to kb" in out.output
    finally:
        os.environ.pop("KB_TEST_MAIL_PASSWORD2", None)
