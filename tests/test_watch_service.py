"""The watchers inside the real service: `kb watch` reading a real Dovecot mailbox and a watched folder, and
killed with SIGKILL in the middle of a mail sync and a folder burst.

Everything is real: the service subprocess, its parser processes, the embedding model, Chroma, Dovecot on
loopback, filesystem events. The catalog is read read-only beside the running service; Chroma is checked
after the service stopped.
"""

from __future__ import annotations

import json
import signal
import subprocess
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

import pytest
from conftest import KB
from fixtures import write_pdf
from test_service import env_for, query, wait_for

pytestmark = pytest.mark.slow


def message(i: int, body: str, *, subject: str | None = None, pdf: bytes | None = None) -> bytes:
    m = EmailMessage(policy=SMTP)
    m["From"] = "Grace <grace@example.org>"
    m["To"] = "kb@example.org"
    m["Subject"] = subject or f"Field report {i}"
    m["Date"] = "Tue, 03 Mar 2026 09:00:00 +0000"
    m["Message-ID"] = f"<report-{i}@example.org>"
    m.set_content(body + "\n")
    if pdf is not None:
        m.add_attachment(pdf, maintype="application", subtype="pdf", filename="minutes.pdf")
    return m.as_bytes()


class WatchService:
    """`kb watch` with a mail account and a watched folder, output in a log file."""

    def __init__(self, tmp: Path, imap: Any, **settings: str) -> None:
        self.data = tmp / "data"
        self.inbox = tmp / "inbox"
        self.inbox.mkdir(exist_ok=True)
        self.log = tmp / "service.log"
        account = {"name": "work", "host": "127.0.0.1", "port": imap.port, "security": "none",
                   "username": imap.user, "password_env": "KB_TEST_IMAP_PW", "tag": "mail"}
        self.env = env_for(self.data, self.inbox, KB_MAIL=json.dumps([account]), KB_TEST_IMAP_PW=imap.password,
                           KB_WATCH_SETTLE_S="0.5", **settings)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WatchService:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([KB, "watch", "--quiet"], env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        wait_for("the service to start", lambda: "kb: reading mail" in self.output() or not self.running(), 240,
                 why=self.tail)
        assert self.running(), self.tail()
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self) -> str:
        return "service log (tail):\n" + self.output()[-3000:]

    def kb(self, *args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([KB, *args], env=self.env, capture_output=True, text=True, timeout=300,
                              stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, f"kb {' '.join(args)}: {proc.stdout}\n{proc.stderr}"
        return proc

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=60)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def idle(self) -> bool:
        """No job waiting or running (a job waiting for a retry counts as waiting)."""
        return not query(self.data, "SELECT 1 FROM jobs WHERE state IN ('queued', 'running') LIMIT 1")


@pytest.fixture
def imap(imap_server: Any) -> Any:
    return imap_server


def test_mail_and_files_reach_the_library_through_the_service(tmp_path: Path, imap: Any) -> None:
    pdf = write_pdf(tmp_path / "minutes.pdf", ["Minutes: the committee chose the copper roof for the chapel."])
    imap.append("INBOX", message(1, "The lease renewal for the harbour office is due in March."))
    imap.append("INBOX", message(2, "Minutes attached.", subject="Committee minutes", pdf=pdf.read_bytes()))
    imap.append("INBOX", message(3, "x" * 400_000, subject="Far too big"))
    svc = WatchService(tmp_path, imap, KB_MAIL_MAX_MESSAGE_MB="0.2")
    try:
        svc.start()
        (svc.inbox / "memo.txt").write_text("Memo: the boiler service is booked for Friday morning.\n")
        wait_for("three messages, an attachment and a file in the library",
                 lambda: svc.idle() and query(svc.data, "SELECT count(*) FROM sources")[0][0] >= 5, 240,
                 why=svc.tail)
        hits = json.loads(svc.kb("search", "lease renewal harbour office", "-k", "3", "--json").stdout)
        assert hits[0]["kind"] == "mail" and hits[0]["title"] == "Field report 1" and hits[0]["tag"] == "mail"
        assert hits[0]["path"].startswith("imap://work/INBOX;UIDVALIDITY=")
        hits = json.loads(svc.kb("search", "copper roof chapel committee", "-k", "3", "--json").stdout)
        top = hits[0]
        assert top["file_type"] == "pdf" and top["message"]["subject"] == "Committee minutes", top
        hits = json.loads(svc.kb("search", "boiler service Friday", "-k", "1", "--json").stdout)
        assert hits[0]["path"] == str(svc.inbox / "memo.txt")
        status = json.loads(svc.kb("status", "--json").stdout)
        mail = next(h for h in status["watch"] if h["kind"] == "mail")
        folder = next(h for h in status["watch"] if h["kind"] == "folder")
        assert mail["state"] == "ok" and mail["last_sync"] and folder["state"] == "ok", status["watch"]
        too_big = query(svc.data, "SELECT status, error FROM sources WHERE source_type='mail' AND status='failed'")
        assert len(too_big) == 1 and "over the" in too_big[0][1], too_big
        text = svc.kb("status").stdout
        assert "mail   work" in text and "folder" in text, text
    finally:
        svc.stop()
    assert imap.folder_status("INBOX")[b"MESSAGES"] == 3  # the mailbox is never changed
    assert all(b"\\Seen" not in f for f in imap.flags("INBOX").values())


def test_kill_9_during_a_mail_sync_and_a_folder_burst_loses_and_duplicates_nothing(
    tmp_path: Path, imap: Any
) -> None:
    n_mail, n_files = 60, 150
    imap.append_many("INBOX", [message(i, f"Observation {i}: the token mailword{i}x was recorded.")
                               for i in range(n_mail)])
    svc = WatchService(tmp_path, imap)
    try:
        svc.start()
        for i in range(n_files):
            (svc.inbox / f"note{i:03d}.txt").write_text(f"Note {i} carries the token fileword{i}x.\n")

        def halfway() -> bool:
            done = query(svc.data, "SELECT count(*) FROM sources WHERE status='indexed'")[0][0]
            return 10 <= done < n_mail + n_files - 20

        wait_for("the service to be part-way through", halfway, 240, interval=0.02, why=svc.tail)
        svc.kill()
        svc.start()
        wait_for("everything to be in the library", lambda: svc.idle() and query(
            svc.data, "SELECT count(*) FROM sources WHERE status='indexed'")[0][0] >= n_mail + n_files, 600,
            why=svc.tail)
        hits = json.loads(svc.kb("search", "mailword17x", "-k", "5", "--json").stdout)
        assert [h["title"] for h in hits].count("Field report 17") == 1
    finally:
        svc.stop()
    by_type = dict(query(svc.data, "SELECT source_type, count(*) FROM sources GROUP BY source_type"))
    assert by_type == {"mail": n_mail, "file": n_files}, by_type
    # one job per message and per file, each message's uid seen once, one document per distinct content
    jobs = query(svc.data, "SELECT count(*), count(DISTINCT uri) FROM jobs WHERE action='ingest'")[0]
    assert jobs[0] == jobs[1] == n_mail + n_files, jobs
    docs, chunks = query(svc.data, "SELECT count(*), sum(chunk_count) FROM documents")[0]
    assert docs == n_mail + n_files, docs
    assert query(svc.data, "SELECT count(*) FROM chunks")[0][0] == chunks
    last_uid = query(svc.data, "SELECT last_uid FROM mail_folders WHERE account='work'")[0][0]
    assert last_uid == n_mail
    # Chroma holds exactly the catalog's chunks: no vector lost, none twice
    from kb.settings import load_settings
    from kbapp.app import App

    app = App(load_settings(data_dir=svc.data, inbox=[svc.inbox]))
    try:
        assert app.index().count() == chunks
    finally:
        app.close()
