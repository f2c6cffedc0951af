"""Mail out: meeting summary e-mails, the scheduled digest, and the service thread that sends the outbox.

- A meeting's e-mail is queued when its summary job ends (`MeetingMail` wraps that job's handler), if the
  meeting comes from a folder or mail account whose tag is opted in (setting meeting_mail_tags).
- The digest follows a cron expression in a time zone (croniter, zoneinfo). The schedule's last run is kept
  in the catalog (table `schedules`), so a service that was down at 8:00 sends the missed digest once when it
  comes back: one digest for everything since the last one, however many runs were missed.
- Every message goes through the durable outbox (kb/outbox.py), which owns the retries and the idempotency.

Recipients and the sender come only from the settings. Document text (titles, summaries, file names) goes
into the body, escaped in the HTML part by Jinja's autoescape, and into the Subject header only as one line
with every control character removed, through the email package's SMTP policy: nothing a document says can
add a header or a recipient.

Why a thread and not jobs for the sending and the schedule: composing a message is a few milliseconds of
catalog reads and templates, done where the need arises (the summarize job, the schedule) in the same
transaction that records it; the outbox then needs what a job row does not have (a key kept for good after
the message went, its own backoff settings, the server's answer), and one thread owning SMTP keeps a slow
or hung server out of the worker lanes, where it would hold up ingestion.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from kb.catalog import DOC_EMPTY, DOC_INDEXED, SRC_FAILED, Catalog, DocumentRecord
from kb.jobs import Done, Job, JobResult
from kb.outbox import Outbox, OutboxEntry, OutgoingMail, Transport
from kb.paths import display
from kb.settings import Settings, SmtpServer
from kb.smtp import SmtpTransport, envelope
from kbapp.summaries import MEETING, SUMMARY, summary_docs
from retrieval.summary import Summary, bullet_line
from retrieval.summary import clock as hms

if TYPE_CHECKING:
    from jinja2 import Environment

log = logging.getLogger(__name__)

DIGEST = "digest"
GROUP_LIMIT = 50  # items listed per group in a digest; the rest is a count and a link to the library
MEETING_BULLETS = 5  # bullets per section for a meeting in a digest (its own e-mail has them all)
KEEP_SENT_S = 30 * 86400  # a sent message's bytes are kept this long (its row, and key, for good)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_SOURCE_LABELS = {"file": "Files", "mail": "Mail", "attachment": "Attachments"}


def one_line(text: str | None, limit: int = 200) -> str:
    """Document text made safe for a header or a list line: control characters (CR, LF, tabs) become
    spaces, runs of spaces one, and at most `limit` characters."""
    s = " ".join(_CONTROL.sub(" ", text or "").split())
    return s if len(s) <= limit else s[: limit - 1].rstrip() + "…"


def message_id(key: str, instance: str, sender: str) -> str:
    """A Message-ID derived from the idempotency key: a message sent twice (see kb/outbox.py) has the same one."""
    digest = hashlib.sha256(f"{instance}\n{key}".encode()).hexdigest()[:32]
    domain = envelope(sender).rpartition("@")[2] or "kb.invalid"
    return f"<kb.{digest}@{domain}>"


def meeting_key(meeting: DocumentRecord) -> str:
    """One e-mail per recording's content: a moved or re-indexed recording, or a summary remade later (a model
    configured since, `kb summarize --all`), is not mailed again; a different recording is a new meeting."""
    return f"{MEETING}:{meeting.content_hash}"


# -- rendering ---------------------------------------------------------------------------------------------
@dataclass
class Rendered:
    subject: str
    text: str
    html: str


@dataclass
class Digest:
    """What arrived in a period, ready for the templates."""

    start: float
    end: float
    groups: list[dict[str, Any]] = field(default_factory=list)
    meetings: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    failed_total: int = 0
    documents: int = 0

    @property
    def empty(self) -> bool:
        return not (self.groups or self.meetings or self.failures)


class Composer:
    """Renders the e-mails (text and HTML from Jinja templates, autoescaped) and builds the messages."""

    def __init__(self, settings: Settings, catalog: Catalog, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.catalog = catalog
        self.clock = clock
        self.tz = ZoneInfo(settings.mail_timezone)
        self.base = settings.public_url()

    @cached_property
    def env(self) -> Environment:
        from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

        return Environment(
            loader=PackageLoader("kbapp", "templates/mail"),
            # on for everything but the text parts: a title with markup arrives as text, never as HTML
            autoescape=select_autoescape(enabled_extensions=("html",), disabled_extensions=("txt",), default=True),
            trim_blocks=True, lstrip_blocks=True, undefined=StrictUndefined, keep_trailing_newline=True,
        )

    def render(self, name: str, subject: str, context: dict[str, Any]) -> Rendered:
        return Rendered(
            subject=one_line(subject, 180),
            text=self.env.get_template(f"{name}.txt").render(**context),
            html=self.env.get_template(f"{name}.html").render(**context),
        )

    def when(self, ts: float) -> str:
        return datetime.fromtimestamp(ts, self.tz).strftime("%a %d %b %Y %H:%M %Z")

    def meeting_date(self, meeting: DocumentRecord) -> str:
        """When the meeting was recorded (the file's own date) if known, else when it arrived."""
        if meeting.created_at:
            try:
                dt = datetime.fromisoformat(meeting.created_at.replace("Z", "+00:00"))
                return self.when(dt.timestamp()) if dt.tzinfo else dt.strftime("%a %d %b %Y %H:%M")
            except ValueError:
                return one_line(meeting.created_at, 40)
        return self.when(meeting.added_at)

    def link(self, kind: str, doc_id: int) -> str:
        return f"{self.base}/{'meetings' if kind == MEETING else 'documents'}/{doc_id}"

    @staticmethod
    def sections(summary: Summary, limit: int | None = None) -> list[dict[str, Any]]:
        out = []
        for s in summary.sections:
            bullets = [
                {"time": _time(b.t_start, b.t_end), "text": one_line(bullet_line(b, times=False), 1000)}
                for b in s.bullets[:limit]
            ]
            out.append({"title": s.title, "bullets": bullets})
        return out

    def meeting(self, meeting: DocumentRecord, summary: Summary) -> Rendered:
        title = one_line(meeting.title or display(meeting.paths[0] if meeting.paths else ""), 200) or "(untitled)"
        duration = meeting.meta.get("duration_s") or summary.duration_s
        how = ("Key sentences selected from the transcript" if summary.model is None
               else f"Condensed by {summary.model} from the transcript")
        context = {
            "title": title, "date": self.meeting_date(meeting), "duration": hms(duration) if duration else "",
            "method": f"{how}; times point into the recording.", "sections": self.sections(summary),
            "notes": [one_line(n, 500) for n in summary.notes], "link": self.link(MEETING, meeting.id),
        }
        return self.render(MEETING, f"Meeting summary: {title}", context)

    def collect(self, start: float, end: float) -> Digest:
        """What arrived after `start` up to `end`: documents and mail by source and tag, meetings with their
        summaries, and sources that failed."""
        digest = Digest(start=start, end=end)
        rows = self.catalog.read(
            "SELECT id FROM documents WHERE added_at > ? AND added_at <= ? AND status IN (?, ?) ORDER BY added_at, id",
            (start, end, DOC_INDEXED, DOC_EMPTY),
        )
        ids = [int(r["id"]) for r in rows]
        docs = self.catalog.documents(ids)
        groups: dict[tuple[str, str | None], list[dict[str, Any]]] = {}
        for doc_id in ids:
            doc = docs.get(doc_id)
            if doc is None or doc.kind == SUMMARY:  # summaries come with their meetings
                continue
            title = one_line(doc.title) or one_line(display(doc.paths[0]) if doc.paths else "") or "(untitled)"
            if doc.kind == MEETING:
                summary = current_summary(self.catalog, doc)
                digest.meetings.append({
                    "title": title, "date": self.meeting_date(doc), "link": self.link(MEETING, doc.id),
                    "duration": hms(doc.meta["duration_s"]) if doc.meta.get("duration_s") else "",
                    "sections": [s for s in self.sections(summary, MEETING_BULLETS) if s["bullets"]] if summary else [],
                })
                continue
            source = doc.source_types[0] if doc.source_types else "file"
            tag = next((t for t in doc.tags if t), None)
            if source == "mail":
                sender = doc.meta.get("from") or doc.author
                detail = f"from {one_line(sender, 100)}" if sender else ""
            else:
                detail = one_line(display(doc.paths[0]), 200) if doc.paths else ""
            groups.setdefault((source, tag), []).append(
                {"title": title, "detail": detail, "link": self.link(doc.kind, doc.id)}
            )
        digest.documents = sum(len(v) for v in groups.values())
        for (source, tag), items in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
            label = _SOURCE_LABELS.get(source, source.capitalize()) + (f" · {tag}" if tag else "")
            digest.groups.append({"label": label, "count": len(items), "docs": items[:GROUP_LIMIT],
                                  "more": max(0, len(items) - GROUP_LIMIT)})
        failed = self.catalog.read(
            "SELECT uri, error FROM sources WHERE status=? AND updated_at > ? AND updated_at <= ?"
            " ORDER BY updated_at LIMIT ?", (SRC_FAILED, start, end, GROUP_LIMIT),
        )
        digest.failures = [{"path": one_line(display(r["uri"]), 200), "error": one_line(r["error"], 300)}
                           for r in failed]
        digest.failed_total = int(self.catalog.read("SELECT count(*) n FROM sources WHERE status=?",
                                                    (SRC_FAILED,))[0]["n"])
        return digest

    def digest(self, d: Digest, *, manual: bool = False) -> Rendered:
        parts = []
        if d.documents:
            parts.append(f"{d.documents} new item{'s' if d.documents != 1 else ''}")
        if d.meetings:
            parts.append(f"{len(d.meetings)} meeting{'s' if len(d.meetings) != 1 else ''}")
        if d.failures:
            parts.append(f"{len(d.failures)} failed")
        headline = ", ".join(parts) or "nothing new"
        context = {
            "headline": headline, "period": f"From {self.when(d.start)} to {self.when(d.end)}",
            "empty": d.empty, "groups": d.groups, "meetings": d.meetings, "failures": d.failures,
            "failed_total": d.failed_total, "failed_link": f"{self.base}/library?status=failed",
            "library_link": f"{self.base}/library",
            "why": "because someone ran `kb digest --now`" if manual
            else f"on its schedule (setting digest_cron: {self.settings.digest_cron})",
        }
        day = datetime.fromtimestamp(d.end, self.tz).strftime("%a %d %b %Y")
        return self.render(DIGEST, f"kb digest {day}: {headline}", context)

    def message(self, key: str, kind: str, r: Rendered) -> OutgoingMail:
        """The message as sent: headers only from the settings and our own text; the body multipart."""
        smtp = self.smtp
        msg = EmailMessage(policy=SMTP)
        msg["Subject"] = r.subject  # one_line: no CR/LF can reach a header (the policy would refuse it too)
        msg["From"] = smtp.sender
        msg["To"] = ", ".join(smtp.recipients)
        msg["Date"] = format_datetime(datetime.fromtimestamp(self.clock(), self.tz))
        msg["Message-ID"] = message_id(key, self.catalog.get_meta("instance_id") or "", smtp.sender)
        msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to a robot
        msg.set_content(r.text, cte="quoted-printable")
        msg.add_alternative(r.html, subtype="html", cte="quoted-printable")
        return OutgoingMail(
            key=key, kind=kind, subject=r.subject, recipients=[envelope(a) for a in smtp.recipients],
            message=msg.as_bytes(), message_id=str(msg["Message-ID"]),
        )

    @property
    def smtp(self) -> SmtpServer:
        if self.settings.smtp is None:
            from kb.errors import ConfigError

            raise ConfigError("no SMTP server configured (add an [smtp] table to kb.toml)")
        return self.settings.smtp

    def test_message(self) -> OutgoingMail:
        now = self.clock()
        text = (f"This is a test message from kb, sent {self.when(now)}.\n\nIf you read this, summary e-mails and "
                f"digests will reach you.\nThe library: {self.base}\n")
        html = self.env.from_string(
            "<p>This is a test message from kb, sent {{ when }}.</p><p>If you read this, summary e-mails and "
            "digests will reach you.<br>The library: <a href=\"{{ base }}\">{{ base }}</a></p>"
        ).render(when=self.when(now), base=self.base)
        return self.message(f"test:{now}", "test", Rendered("kb test message", text, html))


def _time(start: float | None, end: float | None) -> str:
    if start is None:
        return ""
    return hms(start) if end is None or int(end) <= int(start) else f"{hms(start)}-{hms(end)}"


def current_summary(catalog: Catalog, meeting: DocumentRecord) -> Summary | None:
    """The summary made from the meeting's present transcript, if there is one."""
    for d in summary_docs(catalog, meeting):
        if d.meta.get("meeting_hash") == meeting.content_hash and d.meta.get("summary"):
            return Summary.from_dict(d.meta["summary"])
    return None


# -- the digest's schedule ---------------------------------------------------------------------------------
class DigestSchedule:
    """The cron schedule of the digest, with its last run in the catalog (table `schedules`, row 'digest').

    `last_fire` is the scheduled time of the last run done (or skipped); `covered_until` the end of the last
    period a digest covered (a digest sent by hand moves it too, so the next one does not repeat it).
    """

    def __init__(self, cron: str, tz: ZoneInfo) -> None:
        self.cron = cron
        self.tz = tz

    def next_after(self, t: float) -> float:
        from croniter import croniter

        return float(croniter(self.cron, datetime.fromtimestamp(t, self.tz)).get_next(float))

    def latest_at_or_before(self, t: float) -> float:
        from croniter import croniter

        return float(croniter(self.cron, datetime.fromtimestamp(t + 0.001, self.tz)).get_prev(float))


@dataclass
class DigestRun:
    outcome: str  # queued, skipped, exists (already queued under this key)
    key: str
    digest: Digest


class MailOut:
    """Sends what the outbox holds and queues the digest when its time comes: a thread in the service.

    `tick()` does whatever is due now and says how long to sleep; tests call it with an injected clock
    and transport instead of running the thread.
    """

    def __init__(
        self, settings: Settings, catalog: Catalog, *, clock: Callable[[], float] = time.time,
        transport: Transport | None = None,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.clock = clock
        self.outbox = Outbox(
            catalog, clock=clock, retry_base_s=settings.outbox_retry_base_s, retry_max_s=settings.outbox_retry_max_s,
            max_attempts=settings.outbox_max_attempts,
            lease_s=max(120.0, 4 * settings.smtp.timeout_s) if settings.smtp else 600.0,
        )
        self.composer = Composer(settings, catalog, clock)
        self._transport = transport
        tz = ZoneInfo(settings.mail_timezone)
        self.schedule = DigestSchedule(settings.digest_cron, tz) if settings.digest_cron else None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pruned = 0.0

    @property
    def transport(self) -> Transport:
        if self._transport is None:
            self._transport = SmtpTransport(self.composer.smtp)
        return self._transport

    # -- meetings -----------------------------------------------------------------------------------
    def opted_in(self, meeting: DocumentRecord) -> bool:
        tags = self.settings.meeting_mail_tags
        return "*" in tags or any(t in tags for t in meeting.tags if t)

    def queue_meeting(self, doc_id: int) -> str | None:
        """Queue the summary e-mail of this meeting if it is opted in, recent, summarized and not yet queued;
        returns the message's key when it queued one."""
        meeting = self.catalog.document(doc_id)
        if meeting is None or meeting.kind != MEETING or meeting.status != DOC_INDEXED or not self.opted_in(meeting):
            return None
        if meeting.added_at < self.clock() - self.settings.meeting_mail_max_age_days * 86400:
            return None  # an old recording whose summary was remade: not news
        key = meeting_key(meeting)
        if self.outbox.has(key):
            return None
        summary = current_summary(self.catalog, meeting)
        if summary is None:
            return None
        if not self.outbox.put(self.composer.message(key, MEETING, self.composer.meeting(meeting, summary))):
            return None
        self.notify()
        return key

    # -- the digest ---------------------------------------------------------------------------------
    def _schedule_row(self, db: Any) -> Any:
        return db.execute("SELECT * FROM schedules WHERE name=?", (DIGEST,)).fetchone()

    def run_schedule(self) -> DigestRun | None:
        """If a scheduled digest is due (or was missed while the service was down), queue it, or skip it when
        nothing is new, and record the run, all in one transaction; None when nothing is due."""
        if self.schedule is None:
            return None
        now = self.clock()
        seen = self.catalog.read("SELECT last_fire FROM schedules WHERE name=?", (DIGEST,))
        if seen and seen[0]["last_fire"] is not None and self.schedule.next_after(float(seen[0]["last_fire"])) > now:
            return None  # a read first: no write lock taken on every idle wake
        with self.catalog.transaction() as db:
            row = self._schedule_row(db)
            if row is None or row["last_fire"] is None:
                # first start with a schedule: digests cover what arrives from now on
                db.execute(
                    "INSERT INTO schedules(name, last_fire, covered_until, last_outcome, updated_at)"
                    " VALUES (?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET last_fire=excluded.last_fire,"
                    " covered_until=coalesce(covered_until, excluded.covered_until), updated_at=excluded.updated_at",
                    (DIGEST, now, now, "started", now),
                )
                return None
            if self.schedule.next_after(float(row["last_fire"])) > now:
                return None
            # however many runs were missed, one digest covers them all, keyed by the latest one
            fire = self.schedule.latest_at_or_before(now)
            start = float(row["covered_until"] if row["covered_until"] is not None else row["last_fire"])
            run = self._queue_digest(db, start, max(start, fire), f"{DIGEST}:{self._stamp(fire)}",
                                     skip_empty=self.settings.digest_skip_empty)
            db.execute(
                "UPDATE schedules SET last_fire=?, covered_until=max(coalesce(covered_until, 0), ?), last_outcome=?,"
                " updated_at=? WHERE name=?", (fire, fire, run.outcome, now, DIGEST),
            )
        if run.outcome == "queued":
            self.notify()
        return run

    def digest_now(self) -> DigestRun:
        """`kb digest --now`: a digest of what arrived since the last one (or the last day), queued at once,
        even when nothing is new (someone asked for it)."""
        now = self.clock()
        with self.catalog.transaction() as db:
            row = self._schedule_row(db)
            start = self._period_start(row, now)
            run = self._queue_digest(db, start, now, f"{DIGEST}:manual:{self._stamp(now)}", skip_empty=False,
                                     manual=True)
            db.execute(
                "INSERT INTO schedules(name, last_fire, covered_until, last_outcome, updated_at) VALUES (?,?,?,?,?)"
                " ON CONFLICT(name) DO UPDATE SET covered_until=excluded.covered_until,"
                " last_outcome=excluded.last_outcome, updated_at=excluded.updated_at",
                (DIGEST, None, now, "manual", now),
            )
        self.notify()
        return run

    def preview(self) -> tuple[Digest, Rendered]:
        """`kb digest --preview`: the digest `--now` would send, changing nothing."""
        now = self.clock()
        rows = self.catalog.read("SELECT * FROM schedules WHERE name=?", (DIGEST,))
        d = self.composer.collect(self._period_start(rows[0] if rows else None, now), now)
        return d, self.composer.digest(d, manual=True)

    @staticmethod
    def _period_start(row: Any, now: float) -> float:
        if row is not None and row["covered_until"] is not None:
            return float(row["covered_until"])
        return now - 86400.0

    def _queue_digest(
        self, db: Any, start: float, end: float, key: str, *, skip_empty: bool, manual: bool = False
    ) -> DigestRun:
        d = self.composer.collect(start, end)
        if d.empty and skip_empty:
            return DigestRun("skipped", key, d)
        mail = self.composer.message(key, DIGEST, self.composer.digest(d, manual=manual))
        return DigestRun("queued" if self.outbox.add(db, mail) else "exists", key, d)

    def _stamp(self, t: float) -> str:
        return datetime.fromtimestamp(t, self.composer.tz).isoformat(timespec="seconds")

    def next_digest(self) -> float | None:
        if self.schedule is None:
            return None
        rows = self.catalog.read("SELECT last_fire FROM schedules WHERE name=?", (DIGEST,))
        last = rows[0]["last_fire"] if rows and rows[0]["last_fire"] is not None else self.clock()
        return self.schedule.next_after(float(last))

    # -- running ------------------------------------------------------------------------------------
    def tick(self) -> float:
        """Queue a due digest, send due messages; returns the seconds until something may be due again."""
        self.run_schedule()
        self.outbox.deliver_due(self.transport)
        now = self.clock()
        if now - self._pruned > 3600:
            self._pruned = now
            self.outbox.prune(KEEP_SENT_S)
        wake = [self.settings.outbox_poll_s]  # messages queued by other processes (`kb digest --now`)
        for t in (self.outbox.next_due(), self.next_digest()):
            if t is not None:
                wake.append(t - now)
        return max(0.05, min(wake))

    def notify(self) -> None:
        """Something was queued: the thread looks now rather than at its next planned wake."""
        self._wake.set()

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="kb-mailout", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop after the message being sent; queued ones wait for the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            # a conversation still going after this is abandoned with the process: its message keeps its
            # 'sending' lease and is sent again once that runs out (at least once, see kb/outbox.py)
            self._thread.join(timeout=10.0)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                wait = self.tick()
            except Exception as exc:  # a broken catalog or a bug: logged, tried again; never the service's end
                log.error("mail out: %s", exc, exc_info=log.isEnabledFor(logging.DEBUG))
                wait = 30.0
            self._wake.wait(wait)

    def status(self) -> dict[str, Any]:
        """The outbox (counts, problems, last sent) and the digest's schedule, for `kb status` and the API."""
        out = self.outbox.status()
        rows = self.catalog.read("SELECT * FROM schedules WHERE name=?", (DIGEST,))
        row = rows[0] if rows else None
        out["digest"] = {
            "cron": self.settings.digest_cron, "timezone": self.settings.mail_timezone,
            "last_run": row["updated_at"] if row is not None and row["last_outcome"] != "started" else None,
            "last_outcome": row["last_outcome"] if row is not None else None,
            "covered_until": row["covered_until"] if row is not None else None,
            "next_run": self.next_digest(),
        }
        out["configured"] = self.settings.smtp is not None
        return out


class MeetingMail:
    """Wraps the summarize job's handler: once a meeting's summary is made (or found current, after a crash
    between writing it and queueing the mail), its e-mail is queued, once (the outbox key)."""

    def __init__(self, handler: Callable[[Job, Any], JobResult], mailout: MailOut) -> None:
        self.handler = handler
        self.mailout = mailout

    def __call__(self, job: Job, ctx: Any) -> JobResult:
        result = self.handler(job, ctx)
        if isinstance(result, Done) and result.outcome in ("summarized", "extractive", "unchanged"):
            try:
                self.mailout.queue_meeting(int(job.payload.get("doc_id", 0)))
            except Exception as exc:  # the summary is stored: a mail that cannot be queued must not fail it
                log.warning("could not queue the summary e-mail of %s: %s", display(job.uri or ""), exc)
        return result


def deliver_now(mailout: MailOut, key: str, wait_s: float = 30.0) -> OutboxEntry | None:
    """Send one queued message from this process (a `kb` command); if another process (the service) took it
    first, wait up to `wait_s` for its outcome. Returns the entry as recorded."""
    entry = mailout.outbox.claim(key)
    if entry is not None:
        return mailout.outbox.deliver(entry, mailout.transport)
    deadline = time.monotonic() + wait_s
    while True:
        got = mailout.outbox.entry(key)
        if got is None or got.state != "sending" or time.monotonic() >= deadline:
            return got
        time.sleep(0.2)
