"""Mail out against a real SMTP server (aiosmtpd on 127.0.0.1): meeting summary e-mails, the scheduled digest
(with the clock injected), the durable outbox (server down, 4xx, 5xx, restarts, a crash mid-send), escaping
and header injection, and the SMTP settings' validation. Messages are asserted as the bytes the server got,
parsed with the email package."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from croniter import croniter
from smtp_server import SmtpServer
from summary_fixtures import MEETING

from ingest.chunking import Chunk
from ingest.parsing import Parsed
from kb.catalog import DocumentRecord, Link
from kb.embedding import HashEmbedder
from kb.errors import ConfigError
from kb.outbox import FAILED, QUEUED, SENDING, SENT, Outbox, OutgoingMail
from kb.settings import load_settings
from kb.smtp import SendError, SmtpTransport
from kbapp.app import App
from kbapp.mailout import MailOut, meeting_key

BASE = "https://kb.example.org"
CRON = "0 8 * * *"
TZ = ZoneInfo("Europe/Berlin")


class Clock:
    """An injected clock: time stands still until the test moves it."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer().start()
    yield server
    server.stop()


def build(tmp_path: Path, server: SmtpServer, **overrides: Any) -> App:
    settings: dict[str, Any] = {
        "data_dir": tmp_path / "data", "workers": 0, "summary_llm": False, "smtp": server.settings(),
        "base_url": BASE + "/", "meeting_mail_tags": ["*"], "digest_cron": CRON, "mail_timezone": "Europe/Berlin",
        "inbox": [{"path": str(tmp_path / "inbox"), "tag": "work"}],
    }
    settings.update(overrides)
    return App(load_settings(**settings), embedder=HashEmbedder())


def mailout(app: App, clock: Clock) -> MailOut:
    """The App's mail out with the test's clock (the summarize job's hook uses it too)."""
    m = MailOut(app.settings, app.catalog, clock=clock)
    m.outbox.jitter = lambda a, b: 1.0  # backoff exactly as configured: the test moves the clock by it
    app.__dict__["mailout"] = m
    return m


def store_meeting(app: App, path: Path, title: str, tag: str | None = "work") -> DocumentRecord:
    """A transcribed recording in the library, as the audio parser and the store leave it (no Whisper)."""
    chunks, pos = [], 0
    for i in range(0, len(MEETING), 2):
        text = "\n\n".join(MEETING[i : i + 2])
        chunks.append(Chunk(text=text, section=None, char_start=pos, char_end=pos + len(text), t_start=i * 10.0,
                            t_end=(i + 2) * 10.0, n_tokens=len(text.split())))
        pos += len(text) + 2
    text = "\n\n".join(MEETING)
    parsed = Parsed(kind="meeting", file_type="wav", title=title, author=None, created_at="2026-03-03T10:00:00+00:00",
                    modified_at=None, meta={"duration_s": 754.0}, text=text, chunks=chunks,
                    parser_version="audio/1+chunker/2")
    h = hashlib.sha256((title + text).encode()).hexdigest()
    doc_id, _ = app.store.write(job_id=None, content_hash=h, parsed=parsed, links=[Link(str(path), tag=tag)])
    doc = app.catalog.document(doc_id)
    assert doc is not None
    return doc


def next_fire(t: float) -> float:
    return float(croniter(CRON, datetime.fromtimestamp(t, TZ)).get_next(float))


def test_meeting_summary_mail_arrives_once_with_text_html_and_link(tmp_path: Path, smtp: SmtpServer) -> None:
    app = build(tmp_path, smtp)
    clock = Clock(__import__("time").time())
    try:
        m = mailout(app, clock)
        rec = tmp_path / "inbox" / "garden.wav"
        meeting = store_meeting(app, rec, "Garden committee")
        assert app.summarize([rec])["outcomes"] == {"extractive": 1}
        m.tick()
        [got] = smtp.received
        assert sorted(got.rcpt_tos) == ["alice@example.org", "bob@example.org"]
        assert got.mail_from == "kb@example.org"
        msg = got.message
        assert msg.get_content_type() == "multipart/alternative"
        assert msg["Subject"] == "Meeting summary: Garden committee"
        assert msg["From"] == "kb <kb@example.org>" and msg["Auto-Submitted"] == "auto-generated"
        text, html = got.part("plain"), got.part("html")
        link = f"{BASE}/meetings/{meeting.id}"
        for part in (text, html):
            assert "Garden committee" in part and link in part and "12:34" in part  # the 754 s duration
            for section in ("Key points", "Decisions", "Action items", "Open questions"):
                assert section in part
            assert "Maria will book the conference room by Friday" in part
            assert "Tue 03 Mar 2026 11:00 CET" in part  # the recording's date, in the configured zone
        # bullets carry their times in the recording, action items their owner and date
        assert "[0:31-0:40] Maria will book the conference room by Friday. (owner: Maria; due: by Friday)" in text
        assert '<span class="time">0:31-0:40</span> Maria will book' in html
        assert f'href="{link}"' in html
        entry = m.outbox.entry(meeting_key(meeting))
        assert entry is not None and entry.state == SENT and entry.reply == "250 2.0.0 Ok: queued as KB1"
        assert msg["Message-ID"] == entry.message_id

        # the summary remade (a model configured since, `kb summarize --all`): not mailed again
        assert app.summarize([rec])["outcomes"] == {"extractive": 1}
        m.tick()
        assert len(smtp.received) == 1
    finally:
        app.close()
    # a restart: a new App on the same data directory resends nothing
    app = build(tmp_path, smtp)
    try:
        m = mailout(app, clock)
        assert app.summarize([rec])["outcomes"] == {"extractive": 1}
        m.tick()
        assert len(smtp.received) == 1
        assert m.status()["counts"] == {SENT: 1}
    finally:
        app.close()


def test_meetings_are_mailed_only_from_opted_in_tags_and_only_while_recent(tmp_path: Path, smtp: SmtpServer) -> None:
    app = build(tmp_path, smtp, meeting_mail_tags=["board"])
    clock = Clock(__import__("time").time())
    try:
        m = mailout(app, clock)
        other = store_meeting(app, tmp_path / "inbox" / "a.wav", "Team standup", tag="work")
        board = store_meeting(app, tmp_path / "board" / "b.wav", "Board meeting", tag="board")
        app.summarize(all_meetings=True)
        m.tick()
        assert [r.message["Subject"] for r in smtp.received] == ["Meeting summary: Board meeting"]
        assert not m.outbox.has(meeting_key(other)) and m.outbox.has(meeting_key(board))
        # a recording added long ago whose summary is remade now is not news
        old = store_meeting(app, tmp_path / "board" / "c.wav", "Old board meeting", tag="board")
        clock.t += 3 * 86400
        assert m.queue_meeting(old.id) is None
    finally:
        app.close()


def test_html_escapes_markup_and_a_title_cannot_inject_headers(tmp_path: Path, smtp: SmtpServer) -> None:
    app = build(tmp_path, smtp)
    clock = Clock(__import__("time").time())
    try:
        m = mailout(app, clock)
        title = 'Q3 <script>alert("x")</script> <b>plans</b> & co\r\nBcc: evil@example.org\r\n\r\n<img src=x>'
        meeting = store_meeting(app, tmp_path / "inbox" / "q3.wav", title)
        app.summarize(all_meetings=True)
        m.tick()
        [got] = smtp.received
        # the envelope and the headers name only the configured recipients
        assert sorted(got.rcpt_tos) == ["alice@example.org", "bob@example.org"]
        assert got.message["Bcc"] is None and "evil" not in str(got.message["To"])
        assert not any(line.lower().startswith(b"bcc:") for line in got.raw.split(b"\r\n"))
        subject = str(got.message["Subject"])
        assert "\n" not in subject and "\r" not in subject and subject.startswith("Meeting summary: Q3")
        html = got.part("html")
        assert "<script>" not in html and "<b>plans</b>" not in html and "<img src=x>" not in html
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &lt;b&gt;plans&lt;/b&gt; &amp; co" in html
        assert f'href="{BASE}/meetings/{meeting.id}"' in html
        # the text part is text: the title as written, on one line
        assert '<script>alert("x")</script> <b>plans</b> & co Bcc: evil@example.org <img src=x>' in got.part("plain")
    finally:
        app.close()


def ingest_notes(app: App, tmp_path: Path, names: list[str]) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    for n in names:
        (inbox / f"{n}.txt").write_text(f"{n}: notes about the garden project and its budget.\n")
    (inbox / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    app.ingest([inbox])


def test_digest_arrives_on_schedule_once_and_is_skipped_when_empty(tmp_path: Path, smtp: SmtpServer) -> None:
    app = build(tmp_path, smtp)
    now = __import__("time").time()
    clock = Clock(now - 3 * 86400)
    try:
        m = mailout(app, clock)
        assert m.tick() > 0 and not smtp.received  # the first start records the schedule: nothing due
        # the next 8:00 comes with nothing new: skipped, and recorded as such
        clock.t = next_fire(clock.t) + 30
        assert m.run_schedule() is not None and m.status()["digest"]["last_outcome"] == "skipped"
        m.tick()
        assert not smtp.received and m.outbox.entries() == []

        ingest_notes(app, tmp_path, ["alpha <i>1", "beta"])
        fire = next_fire(__import__("time").time())
        clock.t = fire - 5
        m.tick()
        assert not smtp.received  # not yet 8:00
        clock.t = fire + 2
        m.tick()
        [got] = smtp.received
        subject = str(got.message["Subject"])
        assert subject.startswith("kb digest ") and "2 new items" in subject and "1 failed" in subject
        text, html = got.part("plain"), got.part("html")
        docs = {d.title: d for d in app.catalog.documents(
            int(r["id"]) for r in app.catalog.read("SELECT id FROM documents")).values()}
        assert "Files · work (2)" in text
        for name in ("alpha <i>1", "beta"):
            assert f"{BASE}/documents/{docs[name].id}" in text and f'href="{BASE}/documents/{docs[name].id}"' in html
        assert "alpha <i>1" in text and "alpha &lt;i&gt;1" in html and "<i>1" not in html
        assert "broken.pdf" in text and f"{BASE}/library?status=failed" in text  # needs attention
        assert got.message["Message-ID"] == m.outbox.entries()[0].message_id
        key = m.outbox.entries()[0].key
        assert key == "digest:" + datetime.fromtimestamp(fire, TZ).isoformat(timespec="seconds")

        m.tick()
        clock.t += 60
        m.tick()
        assert len(smtp.received) == 1  # once
        # the next day: nothing new since, skipped
        clock.t = next_fire(clock.t) + 1
        m.tick()
        assert len(smtp.received) == 1 and m.status()["digest"]["last_outcome"] == "skipped"
        # unless the setting says to send it anyway
    finally:
        app.close()
    app = build(tmp_path, smtp, digest_skip_empty=False)
    try:
        m = mailout(app, clock)
        clock.t = next_fire(clock.t) + 1
        m.tick()
        assert len(smtp.received) == 2 and "nothing new" in str(smtp.received[1].message["Subject"])
        assert "Nothing new arrived in this period." in smtp.received[1].part("plain")
    finally:
        app.close()


def test_a_missed_digest_is_sent_once_when_the_service_comes_back(tmp_path: Path, smtp: SmtpServer) -> None:
    now = __import__("time").time()
    app = build(tmp_path, smtp)
    clock = Clock(now - 86400)
    try:
        mailout(app, clock).tick()  # the service ran a day ago
        ingest_notes(app, tmp_path, ["gamma"])
    finally:
        app.close()  # ... and went down; three 8:00s pass
    later = next_fire(next_fire(next_fire(now))) + 3600
    for _ in range(2):  # back up, then restarted once more
        app = build(tmp_path, smtp)
        try:
            m = mailout(app, Clock(later))
            m.tick()
            m.tick()
        finally:
            app.close()
    [got] = smtp.received
    assert "gamma" in got.part("plain")
    # keyed by the latest missed run; the next digest starts where this one ended
    rows = app.catalog.__class__(app.settings.catalog_path).read("SELECT * FROM schedules")
    assert rows[0]["last_fire"] == rows[0]["covered_until"] == later - 3600


def test_messages_wait_while_the_server_is_down_and_go_when_it_returns(tmp_path: Path, smtp: SmtpServer) -> None:
    app = build(tmp_path, smtp, outbox_retry_base_s=60.0)
    clock = Clock(__import__("time").time())
    try:
        m = mailout(app, clock)
        ingest_notes(app, tmp_path, ["delta"])
        clock.t = __import__("time").time()
        smtp.stop()
        run = m.digest_now()
        m.tick()
        e = m.outbox.entry(run.key)
        assert e is not None and e.state == QUEUED and e.attempts == 1
        assert e.next_attempt == clock.t + 60 and "cannot connect to the SMTP server 127.0.0.1" in (e.last_error or "")
        problems = app.status()["mail_out"]["problems"]
        assert problems and problems[0]["retry_at"] == clock.t + 60
        m.tick()
        assert m.outbox.entry(run.key).attempts == 1  # type: ignore[union-attr]  # not due yet
        clock.t += 61
        m.tick()  # still down: the second wait doubles
        e = m.outbox.entry(run.key)
        assert e is not None and e.attempts == 2 and e.next_attempt == clock.t + 120
        # the sender thread sleeps until then (or less: it also looks for mail queued by other processes)
        assert 0 < m.tick() <= app.settings.outbox_poll_s

        smtp.start()
        clock.t += 121
        m.tick()
        [got] = smtp.received
        assert "delta" in got.part("plain")
        e = m.outbox.entry(run.key)
        assert e is not None and e.state == SENT and e.attempts == 3 and e.reply and e.reply.startswith("250")
        m.tick()
        assert len(smtp.received) == 1
    finally:
        app.close()


def test_a_temporary_error_is_retried_and_a_permanent_one_recorded_and_shown(tmp_path: Path, smtp: SmtpServer) -> None:
    app = build(tmp_path, smtp)
    clock = Clock(__import__("time").time())
    try:
        m = mailout(app, clock)
        smtp.data_reply = "451 4.3.0 Try again later"
        run = m.digest_now()
        m.tick()
        e = m.outbox.entry(run.key)
        assert e is not None and e.state == QUEUED and "451 4.3.0 Try again later" in (e.last_error or "")
        smtp.data_reply = None
        smtp.rcpt_reply = "550 5.1.1 No such user here"
        clock.t = e.next_attempt + 1
        m.tick()
        e = m.outbox.entry(run.key)
        assert e is not None and e.state == FAILED and e.attempts == 2
        assert "550 5.1.1 No such user here" in (e.last_error or "")
        clock.t += 10**6
        m.tick()
        assert m.outbox.entry(run.key).state == FAILED and not smtp.received  # type: ignore[union-attr]
        status = app.status()["mail_out"]
        assert status["counts"] == {FAILED: 1} and "550 5.1.1" in status["problems"][0]["error"]
        from litestar.testing import TestClient

        from server.api import create_api

        with TestClient(app=create_api(app)) as client:  # the service's API says the same
            problem = client.get("/api/v1/status").json()["mail_out"]["problems"][0]
            assert problem["state"] == FAILED and "550 5.1.1 No such user here" in problem["error"]
    finally:
        app.close()
    # visible to a person: `kb status` (its JSON is the API's status), and `kb mail outbox`
    env = env_vars(tmp_path, smtp)
    out = CliRunner().invoke(_main(), ["status"], env=env)
    assert out.exit_code == 0, out.output
    assert "mail out:  failed 1" in out.output and "550 5.1.1 No such user here" in out.output
    out = CliRunner().invoke(_main(), ["status", "--json"], env=env)
    assert json.loads(out.output)["mail_out"]["problems"][0]["state"] == FAILED
    out = CliRunner().invoke(_main(), ["mail", "outbox"], env=env)
    assert "failed" in out.output and "550 5.1.1" in out.output
    # once the address is fixed, a person sends it again
    smtp.rcpt_reply = None
    out = CliRunner().invoke(_main(), ["mail", "outbox", "--retry"], env=env)
    assert out.exit_code == 0 and "1 message to try again" in out.output and "sent: kb digest" in out.output
    [got] = smtp.received
    catalog = _catalog(tmp_path)
    try:
        [entry] = Outbox(catalog).entries()
        assert entry.state == SENT and got.message["Message-ID"] == entry.message_id
    finally:
        catalog.close()


def _catalog(tmp_path: Path) -> Any:
    from kb.catalog import Catalog

    return Catalog(tmp_path / "data" / "catalog.sqlite3")


def _main() -> Any:
    from kbapp.cli import main

    return main


def env_vars(tmp_path: Path, smtp: SmtpServer, **extra: str) -> dict[str, str]:
    return {"KB_DATA_DIR": str(tmp_path / "data"), "KB_WORKERS": "0", "KB_SMTP": json.dumps(smtp.settings()),
            "KB_BASE_URL": BASE, "KB_INBOX": json.dumps([str(tmp_path / "inbox")]), "KB_CONFIG": "/nonexistent",
            **extra}


def test_a_crash_between_the_servers_answer_and_the_bookkeeping_resends_with_the_same_message_id(
    tmp_path: Path, smtp: SmtpServer
) -> None:
    """The trade-off stated in kb/outbox.py: at least once, and a duplicate is recognisable."""
    app = build(tmp_path, smtp)
    clock = Clock(__import__("time").time())
    try:
        m = mailout(app, clock)
        run = m.digest_now()
        entry = m.outbox.claim(run.key)
        assert entry is not None
        SmtpTransport(app.settings.smtp).send(entry.recipients, entry.message)  # type: ignore[arg-type]
        # ... and the process dies before recording it: the message stays 'sending' under a lease
        assert m.outbox.entry(run.key).state == SENDING  # type: ignore[union-attr]
    finally:
        app.close()
    app = build(tmp_path, smtp)
    try:
        m = mailout(app, clock)
        m.tick()
        assert len(smtp.received) == 1  # the lease has not run out: no one sends it meanwhile
        clock.t += m.outbox.lease_s + 1
        m.tick()
        first, second = smtp.received
        assert first.message["Message-ID"] == second.message["Message-ID"] and first.raw == second.raw
        assert m.outbox.entry(run.key).state == SENT  # type: ignore[union-attr]
        # a month on, the message's bytes are dropped; its key stays, so it is never sent again
        clock.t += 31 * 86400
        m.tick()
        e = m.outbox.entry(run.key)
        assert e is not None and e.state == SENT and e.message == b""
        assert not m.outbox.put(OutgoingMail(run.key, "digest", "again", ["a@example.org"], b"x", "<x@y>"))
    finally:
        app.close()


def test_kb_digest_now_and_preview(tmp_path: Path, smtp: SmtpServer) -> None:
    app = build(tmp_path, smtp)
    try:
        ingest_notes(app, tmp_path, ["epsilon"])
    finally:
        app.close()
    env = env_vars(tmp_path, smtp)
    out = CliRunner().invoke(_main(), ["digest", "--preview"], env=env)
    assert out.exit_code == 0, out.output
    assert out.output.startswith("Subject: kb digest") and "epsilon" in out.output and not smtp.received
    out = CliRunner().invoke(_main(), ["digest", "--preview", "--html"], env=env)
    assert "<!DOCTYPE html>" in out.output and "epsilon" in out.output
    out = CliRunner().invoke(_main(), ["digest", "--now"], env=env)
    assert out.exit_code == 0, out.output
    assert "digest sent to alice@example.org, bob@example.org; the server answered: 250 2.0.0 Ok" in out.output
    [got] = smtp.received
    assert "epsilon" in got.part("plain")
    # the next digest starts after this one: nothing new now
    out = CliRunner().invoke(_main(), ["digest", "--preview"], env=env)
    assert "nothing new" in out.output and "epsilon" not in out.output
    out = CliRunner().invoke(_main(), ["digest"], env=env)
    assert "no digest scheduled" in out.output and "last: manual" in out.output
    # the server down: queued for the service, said so, exit 1 (a second later: `--now` twice within the same
    # second is one digest, by its key)
    __import__("time").sleep(1.1)
    smtp.stop()
    out = CliRunner().invoke(_main(), ["digest", "--now"], env=env)
    assert out.exit_code == 1 and "digest queued, not sent yet: cannot connect" in out.output


def test_kb_mail_test_checks_and_sends_through_smtp(tmp_path: Path, smtp: SmtpServer) -> None:
    env = env_vars(tmp_path, smtp)
    out = CliRunner().invoke(_main(), ["mail", "test"], env=env)
    assert out.exit_code == 0, out.output
    assert f"smtp: connected to 127.0.0.1:{smtp.port} (no encryption); the server answers 250" in out.output
    assert not smtp.received
    out = CliRunner().invoke(_main(), ["mail", "test", "--send"], env=env)
    assert out.exit_code == 0, out.output
    assert "the server answered: 250 2.0.0 Ok: queued as KB1" in out.output
    [got] = smtp.received
    assert got.message["Subject"] == "kb test message" and "test message from kb" in got.part("plain")
    smtp.rcpt_reply = "550 5.7.1 Relaying denied"
    out = CliRunner().invoke(_main(), ["mail", "test", "--send"], env=env)
    assert out.exit_code == 1 and "refused every recipient" in out.output and "550 5.7.1 Relaying denied" in out.output
    smtp.stop()
    out = CliRunner().invoke(_main(), ["mail", "test"], env=env)
    assert out.exit_code == 1 and "cannot connect to the SMTP server" in out.output
    out = CliRunner().invoke(_main(), ["mail", "test", "--send"], env={**env, "KB_SMTP": None})
    assert out.exit_code == 1 and "no SMTP server configured" in out.output


# -- settings and TLS ------------------------------------------------------------------------------------
def smtp_settings(**kw: Any) -> Any:
    base = {"host": "mail.example.org", "sender": "kb@example.org", "recipients": ["a@example.org"]}
    base.update(kw)
    return load_settings(smtp=base).smtp


def test_smtp_settings_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert smtp_settings().port == 587 and smtp_settings().security == "starttls"
    assert smtp_settings(security="tls").port == 465
    assert smtp_settings(host="localhost", security="none").port == 25
    assert smtp_settings(host="::1", security="none").port == 25
    with pytest.raises(ConfigError, match=r"only allowed to 127\.0\.0\.1"):
        smtp_settings(security="none")
    with pytest.raises(ConfigError, match="password_env"):
        smtp_settings(username="kb")
    with pytest.raises(ConfigError, match="which is not set"):
        smtp_settings(username="kb", password_env="KB_TEST_NO_SUCH_VAR")
    monkeypatch.setenv("KB_TEST_SMTP_PW", "s3cret-pw")
    s = smtp_settings(username="kb", password_env="KB_TEST_SMTP_PW")
    assert s.password.get_secret_value() == "s3cret-pw"
    assert "s3cret-pw" not in repr(s) and "s3cret-pw" not in s.model_dump_json()
    pw = tmp_path / "pw"
    pw.write_text("from-a-file\n")
    assert smtp_settings(username="kb", password_file=str(pw)).password.get_secret_value() == "from-a-file"
    for bad in ["a@example.org\r\nBcc: evil@example.org", "not an address", "a@b@c", "<a@example.org", ""]:
        with pytest.raises(ConfigError):
            smtp_settings(recipients=[bad])
        with pytest.raises(ConfigError):
            smtp_settings(sender=bad)
    with pytest.raises(ConfigError, match="at least one recipient"):
        smtp_settings(recipients=[])
    assert smtp_settings(recipients="a@example.org, B <b@example.org>").recipients == ["a@example.org",
                                                                                      "B <b@example.org>"]
    with pytest.raises(ConfigError, match="cron"):
        load_settings(digest_cron="every morning")
    with pytest.raises(ConfigError, match="cron"):
        load_settings(digest_cron="0 25 * * *")
    with pytest.raises(ConfigError, match="time zone"):
        load_settings(mail_timezone="Europe/Atlantis")
    with pytest.raises(ConfigError, match="tag"):
        load_settings(meeting_mail_tags=["no spaces"])
    assert load_settings().public_url() == "http://127.0.0.1:8750"
    assert load_settings(base_url="https://kb.example.org/x/").public_url() == "https://kb.example.org/x"


def test_tls_modes_against_real_servers(tmp_path: Path) -> None:
    """STARTTLS and implicit TLS work with a certificate the client trusts; verification is on by default;
    asking for STARTTLS from a server that does not offer it fails (it never falls back to clear text)."""
    import ssl

    from smtp_server import self_signed

    cert, key = self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    raw = b"From: kb@example.org\r\nTo: a@example.org\r\nSubject: tls\r\n\r\nhello\r\n"

    starttls = SmtpServer(starttls=server_ctx).start()
    implicit = SmtpServer(tls=server_ctx).start()
    plain = SmtpServer().start()
    try:
        for server, mode in ((starttls, "starttls"), (implicit, "tls")):
            cfg = smtp_settings(host="127.0.0.1", port=server.port, security=mode)
            with pytest.raises(SendError, match="certificate is not trusted: self-signed certificate") as err:
                SmtpTransport(cfg).send(["a@example.org"], raw)  # self-signed: refused by default
            assert not err.value.permanent
            cfg = smtp_settings(host="127.0.0.1", port=server.port, security=mode, verify_tls=False)
            assert SmtpTransport(cfg).send(["a@example.org"], raw).reply.startswith("250")
            assert len(server.received) == 1
        cfg = smtp_settings(host="127.0.0.1", port=plain.port, security="starttls")
        with pytest.raises(SendError, match="does not offer STARTTLS"):
            SmtpTransport(cfg).send(["a@example.org"], raw)
        assert not plain.received
    finally:
        for s in (starttls, implicit, plain):
            s.stop()


def test_backoff_grows_with_jitter_and_gives_up_after_max_attempts(tmp_path: Path) -> None:
    from kb.catalog import Catalog

    catalog = Catalog(tmp_path / "c.sqlite3")
    try:
        clock = Clock(1000.0)
        draws: list[tuple[float, float]] = []

        def jitter(a: float, b: float) -> float:
            draws.append((a, b))
            return b

        box = Outbox(catalog, clock=clock, retry_base_s=10, retry_max_s=50, max_attempts=5, jitter=jitter)
        mail = OutgoingMail("k", "test", "s", ["a@example.org"], b"x", "<m@example.org>")
        assert box.put(mail) and not box.put(mail)  # the key: queued once
        delays = []
        for _ in range(5):
            e = box.claim()
            assert e is not None
            retry_at = box.failed(e, "451 later", permanent=False)
            if retry_at is not None:
                delays.append(retry_at - clock.t)
                clock.t = retry_at
        assert delays == [12.0, 24.0, 48.0, 60.0]  # doubling, capped at 50, times the jitter (0.8-1.2)
        assert draws == [(0.8, 1.2)] * 4
        e = box.entry("k")
        assert e is not None and e.state == FAILED and e.last_error == "gave up after 5 tries: 451 later"
    finally:
        catalog.close()


@pytest.mark.slow
def test_the_service_sends_a_missed_digest_when_it_starts_and_not_again_after_a_restart(
    tmp_path: Path, smtp: SmtpServer
) -> None:
    """`kb watch` as a subprocess (the real service loop): the digest of a day the service was down at 8:00 is
    sent when it starts, once; a restarted service does not send it again."""
    import signal
    import subprocess
    import time

    from conftest import KB
    from test_service import env_for, wait_for

    from kb.catalog import Catalog

    data, inbox = tmp_path / "data", tmp_path / "inbox"
    inbox.mkdir()
    now = time.time()
    catalog = Catalog(data / "catalog.sqlite3")
    # the service last ran three days ago; a file failed the day after (inside the missed period, which ends
    # at the latest 8:00: a failure after that belongs to the next digest)
    with catalog.transaction() as db:
        db.execute("INSERT INTO schedules(name, last_fire, covered_until, last_outcome, updated_at)"
                   " VALUES ('digest', ?, ?, 'queued', ?)", (now - 3 * 86400, now - 3 * 86400, now - 3 * 86400))
        db.execute("INSERT INTO sources(uri, source_type, status, error, first_seen, updated_at)"
                   " VALUES (?, 'file', 'failed', ?, ?, ?)",
                   ((inbox / "report.pdf").as_uri(), "not a PDF <really>", now - 2 * 86400, now - 2 * 86400))
    catalog.close()
    env = env_for(data, inbox, KB_SMTP=json.dumps(smtp.settings()), KB_DIGEST_CRON=CRON, KB_BASE_URL=BASE,
                  KB_MAIL_TIMEZONE="Europe/Berlin")
    log = tmp_path / "service.log"

    def service() -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen([KB, "watch", "--quiet"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)

    def stop(proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0, log.read_text()

    proc = service()
    try:
        wait_for("the missed digest", lambda: smtp.received, 240, why=lambda: log.read_text(errors="replace"))
        assert "kb: sending mail through 127.0.0.1" in log.read_text() and "digest '0 8 * * *'" in log.read_text()
        # beside the running service (the catalog's one writer), `kb digest --now` goes through its API
        now_cmd = subprocess.run([KB, "digest", "--now"], env=env, capture_output=True, text=True, timeout=120,
                                 stdin=subprocess.DEVNULL)
        assert now_cmd.returncode == 0 and "digest sent to alice@example.org" in now_cmd.stdout, now_cmd
        assert len(smtp.received) == 2
    finally:
        stop(proc)
    got = smtp.received[0]
    text = got.part("plain")
    assert "report.pdf: not a PDF <really>" in text and f"{BASE}/library?status=failed" in text
    assert "not a PDF &lt;really&gt;" in got.part("html")

    log.write_text("")
    proc = service()
    try:
        wait_for("the restarted service", lambda: "kb: watching" in log.read_text(), 240, why=log.read_text)
        time.sleep(2)  # its mail-out thread has looked at the schedule and the outbox by now
    finally:
        stop(proc)
    assert len(smtp.received) == 2


def test_subjects_are_one_bounded_line_in_any_script_and_message_ids_follow_the_key(
    tmp_path: Path, smtp: SmtpServer
) -> None:
    from kbapp.mailout import message_id, one_line

    assert one_line("a\r\nBcc: x\x00\x85\u2028b\tc") == "a Bcc: x b c"
    assert len(one_line("word " * 100, 50)) == 50 and one_line("word " * 100, 50).endswith("…")
    assert message_id("digest:x", "i1", "kb <kb@example.org>") == message_id("digest:x", "i1", "kb@example.org")
    assert message_id("digest:x", "i1", "kb@example.org") != message_id("digest:y", "i1", "kb@example.org")
    assert message_id("digest:x", "i1", "kb@example.org").endswith("@example.org>")

    app = build(tmp_path, smtp, smtp=smtp.settings(sender="Büro Ünd Co <kb@example.org>"))
    try:
        m = mailout(app, Clock(__import__("time").time()))
        store_meeting(app, tmp_path / "inbox" / "r.wav", "Réunion 東京 " + "très longue " * 30)
        app.summarize(all_meetings=True)
        m.tick()
        [got] = smtp.received
        subject = str(got.message["Subject"])
        assert subject.startswith("Meeting summary: Réunion 東京 très longue") and subject.endswith("…")
        assert len(subject) <= 180 and str(got.message["From"]) == "Büro Ünd Co <kb@example.org>"
        assert all(b < 128 for b in got.raw)  # 7-bit on the wire: encoded words and quoted-printable
    finally:
        app.close()
