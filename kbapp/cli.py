"""The `kb` command line: translates arguments into calls on the library and results into text or JSON.

Every command reaches the library one of two ways. If a service (`kb watch`) owns the data directory, the
command is its client: work is queued there and followed until done. Otherwise the command becomes the
owner for its duration (taking the write lock and serving the same API, so a second terminal can ask
it). A person who simply used two terminals never sees "busy": at worst a short wait, said as such.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from kb.errors import KbError
from kb.settings import Settings, load_settings
from kbapp.report import summarize

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger(__name__)


class Context:
    """Settings, and how this invocation reaches the library (built on first use, closed at exit)."""

    def __init__(self, overrides: dict[str, Any]) -> None:
        self.overrides = overrides
        self._settings: Settings | None = None
        self.owner: Any = None  # kbapp.service.Owner when this process owns the data directory
        self.client: Any = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(**self.overrides)
        return self._settings

    def library(self, *, writes: bool) -> Any:
        """The service's client if one runs, else this process as the owner (waiting for a one-off peer)."""
        from kb.lock import holder, try_lock
        from kbapp.client import Client

        if self.owner is not None:
            return self.owner.app
        if self.client is not None:
            return self.client
        s = self.settings
        said = False
        started = time.monotonic()
        while True:
            lock = try_lock(s.data_dir)
            if lock is not None:
                from kbapp.app import App
                from kbapp.service import Owner

                try:
                    # Read-only commands skip recovery and the API: they are over in a moment.
                    self.owner = Owner(App(s), lock, serve=writes, recover=writes)
                except BaseException:
                    lock.release()
                    raise
                return self.owner.app
            client = Client.connect(s.socket_path)
            if client is not None:
                self.client = client
                return client
            if not said and time.monotonic() - started > 1.0:
                click.echo(f"kb: waiting for another kb command (pid {holder(s.data_dir) or '?'}) to finish…", err=True)
                said = True
            time.sleep(0.1)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.owner is not None:
            self.owner.close()
            self.owner.app.close()


def _errors(fn: F) -> F:
    """Any error becomes one clear line on stderr and exit code 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except click.exceptions.Exit:
            raise
        except (click.ClickException, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("kb: interrupted", err=True)
            sys.exit(130)
        except Exception as exc:
            from kbapp.app import describe_error

            log.debug("error", exc_info=True)
            click.echo(f"kb: error: {describe_error(exc)}", err=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


@click.group()
@click.option("--data-dir", type=click.Path(path_type=Path), help="Instance folder (KB_DATA_DIR).")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.pass_context
def main(ctx: click.Context, data_dir: Path | None, verbose: int) -> None:
    """kb: a personal knowledge base that reads your files and answers from them."""
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)],
        format="%(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("chromadb", "unstructured", "httpx", "httpcore", "sentence_transformers", "pdfminer"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    overrides: dict[str, Any] = {}
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    obj = Context(overrides)
    ctx.obj = obj
    ctx.call_on_close(obj.close)


def _settings_or_exit(obj: Context) -> Settings:
    try:
        return obj.settings
    except KbError as exc:
        click.echo(f"kb: error: {exc}", err=True)
        sys.exit(2)


# -- following a batch of queued work ---------------------------------------------------------------
def _follow(obj: Context, lib: Any, batch: str, *, quiet: bool) -> dict[str, Any]:
    """Wait for a batch to settle, with a progress bar on a terminal; returns its final state."""
    bar = None
    if sys.stderr.isatty() and not quiet:
        from tqdm import tqdm

        bar = tqdm(total=None, unit="job", desc="kb", leave=False, dynamic_ncols=True)

    def show(state: dict[str, Any]) -> None:
        if bar is None:
            return
        if bar.total != state["jobs"]:
            bar.reset(total=state["jobs"])
        bar.n = state["settled"]
        running = state["running"][:1]
        if running:
            r = running[0]
            pct = f" {100 * r['done'] / r['total']:.0f}%" if r.get("total") and r.get("done") is not None else ""
            bar.set_postfix_str(f"{r['stage'] or r['action']}{pct}: {Path(r['uri'] or '').name[:40]}", refresh=False)
        bar.refresh()

    from kbapp.client import ServiceGone

    try:
        while True:
            if obj.owner is not None:
                return dict(obj.owner.app.run_batch(batch, on_progress=show))
            try:
                state = lib.batch(batch)
            except ServiceGone:
                # The owner went away (a one-off command finished, a service stopped). The batch is in the
                # catalog: whoever owns the directory now (perhaps this command) finishes it.
                obj.client.close()
                obj.client = None
                lib = obj.library(writes=True)
                continue
            show(state)
            if state["complete"]:
                return dict(state)
            time.sleep(0.1)
    finally:
        if bar is not None:
            bar.close()


def _display(uri: str | None) -> str:
    from kb.paths import display

    return display(uri or "")


def _printsummarize(r: dict[str, Any], seconds: float) -> None:
    click.echo(
        f"{r['files']} files in {seconds:.1f} s: {r['added']} added, {r['updated']} updated, "
        f"{r['unchanged']} unchanged, {r['failed']} failed"
        + (f", {r['removed']} removed" if r["removed"] else "")
        + (f", {r['moved']} moved" if r.get("moved") else "")
        + (f", {r['empty']} with no text" if r["empty"] else "")
        + (f", {r['forgotten']} forgotten (kept out until they change; name one, or --force, to read it)"
           if r.get("forgotten") else "")
    )
    if r["held"]:
        click.echo(
            f"{r['held']} files seem to have disappeared from {', '.join(r['held_roots'])}: their removal is held "
            "(an unmounted disk looks like this). `kb held --confirm` removes them, `kb held --discard` keeps them."
        )
    if r["failures"]:
        click.echo("failed:")
        for f in r["failures"]:
            retry = ""
            if f.get("retry_at"):
                retry = f" (retrying at {time.strftime('%H:%M:%S', time.localtime(f['retry_at']))})"
            click.echo(f"  {f['path']}\n    {f['error']}{retry}")


def _submit_and_follow(obj: Context, submit: Callable[[Any], str], *, wait: bool, as_json: bool) -> dict[str, Any]:
    started = time.monotonic()
    lib = obj.library(writes=True)
    batch = submit(lib)
    if not wait and obj.owner is None:
        out = {"batch": batch, "queued": True}
        click.echo(json.dumps(out) if as_json else f"queued (batch {batch}); `kb status` shows progress")
        return out
    report = summarize(_follow(obj, lib, batch, quiet=as_json))
    if as_json:
        click.echo(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        _printsummarize(report, time.monotonic() - started)
    return report


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--force", is_flag=True, help="Re-read every file, even unchanged ones.")
@click.option("--no-mirror", is_flag=True, help="Keep files that have disappeared from the folders.")
@click.option("--no-wait", is_flag=True, help="Queue the work with the running service and return at once.")
@click.pass_obj
@_errors
def ingest(obj: Context, paths: tuple[Path, ...], as_json: bool, force: bool, no_mirror: bool, no_wait: bool) -> None:
    """Ingest files and folders (recursively); with no PATHS, the configured inbox folders."""
    settings = _settings_or_exit(obj)
    targets = list(paths) or list(settings.inbox_paths)
    if not paths:
        for p in targets:
            p.mkdir(parents=True, exist_ok=True)
    r = _submit_and_follow(
        obj, lambda lib: lib.submit_ingest([str(p) for p in targets], force=force, mirror=not no_mirror),
        wait=not no_wait, as_json=as_json,
    )
    if r.get("complete") and r["failed"] and not (r["added"] or r["updated"] or r["unchanged"] or r["empty"]):
        sys.exit(1)


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
@click.option("--no-wait", is_flag=True, help="Queue the work with the running service and return at once.")
@click.pass_obj
@_errors
def forget(obj: Context, paths: tuple[Path, ...], as_json: bool, no_wait: bool) -> None:
    """Remove files or folders from the library (the files themselves are not touched).

    A forgotten file still in a watched folder stays out of the library until it changes (or `kb ingest`
    names it)."""
    started = time.monotonic()
    lib = obj.library(writes=True)
    batch = lib.submit_forget([str(p) for p in paths])
    if no_wait and obj.owner is None:
        click.echo(json.dumps({"batch": batch}) if as_json else f"queued (batch {batch})")
        return
    state = _follow(obj, lib, batch, quiet=as_json)
    n = state["outcomes"].get("removed", 0)
    if as_json:
        click.echo(json.dumps({"forgotten": n, "seconds": round(time.monotonic() - started, 3)}))
    else:
        click.echo(f"forgot {n} file{'s' if n != 1 else ''} (or folder{'s' if n != 1 else ''})")


@main.command()
@click.option("--reparse", is_flag=True, help="Re-read documents parsed by an older parser or chunker version.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--no-wait", is_flag=True, help="Queue the work with the running service and return at once.")
@click.pass_obj
@_errors
def reindex(obj: Context, reparse: bool, as_json: bool, no_wait: bool) -> None:
    """Rebuild every vector (into a new collection, swapped in when complete), e.g. after a model change."""
    started = time.monotonic()
    lib = obj.library(writes=True)
    batch = lib.submit_reindex(reparse=reparse)
    if no_wait and obj.owner is None:
        click.echo(json.dumps({"batch": batch}) if as_json else f"queued (batch {batch})")
        return
    state = _follow(obj, lib, batch, quiet=as_json)
    if as_json:
        click.echo(json.dumps(summarize(state), indent=2))
        return
    failed = state["failures"]
    what = "re-parsed" if reparse else "rebuilt the index"
    n = state["jobs"]
    click.echo(f"{what}{f' ({n} documents)' if reparse else ''} in {time.monotonic() - started:.1f} s"
               + (f"; {len(failed)} failed" if failed else ""))
    for f in failed:
        click.echo(f"  {_display(f['uri'])}: {f['error']}")


@main.command("summarize")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--all", "all_meetings", is_flag=True, help="Every recording in the library.")
@click.option("--json", "as_json", is_flag=True)
@click.option("--no-wait", is_flag=True, help="Queue the work with the running service and return at once.")
@click.pass_obj
@_errors
def summarize_cmd(obj: Context, paths: tuple[Path, ...], all_meetings: bool, as_json: bool, no_wait: bool) -> None:
    """(Re)make the summaries of recordings: the files or folders PATHS, or --all.

    A summary (key points, decisions, action items, open questions, each with its time in the recording) is
    a document of kind `summary`: `kb search --kind summary` finds it.
    """
    if not paths and not all_meetings:
        raise click.UsageError("name recordings (files or folders) or pass --all")
    started = time.monotonic()
    lib = obj.library(writes=True)
    batch = lib.submit_summarize([str(p) for p in paths], all_meetings=all_meetings)
    if no_wait and obj.owner is None:
        click.echo(json.dumps({"batch": batch}) if as_json else f"queued (batch {batch})")
        return
    state = _follow(obj, lib, batch, quiet=as_json)
    o = state["outcomes"]
    out = {
        "summarized": o.get("summarized", 0), "extractive": o.get("extractive", 0),
        "failed": [{"path": _display(f["uri"]), "error": f["error"]} for f in state["failures"]],
        "not_meetings": state["info"].get("not_meetings", []), "seconds": round(time.monotonic() - started, 3),
    }
    if as_json:
        click.echo(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        n = out["summarized"] + out["extractive"]
        how = f" ({out['extractive']} extractive only: no usable language model)" if out["extractive"] else ""
        click.echo(f"summarized {n} recording{'s' if n != 1 else ''} in {out['seconds']:.1f} s{how}")
        for p in out["not_meetings"]:
            click.echo(f"  {p}: no recording in the library there")
        for f in out["failed"]:
            click.echo(f"  {f['path']}: {f['error']}")
    if out["failed"] or (out["not_meetings"] and not (out["summarized"] or out["extractive"])):
        sys.exit(1)


@main.command()
@click.argument("query", nargs=-1, required=True)
@click.option("-k", "k", default=5, show_default=True, type=click.IntRange(1, 200), help="Results to show.")
@click.option("--type", "file_type", help="Only this file type, e.g. pdf.")
@click.option("--kind", type=click.Choice(["document", "scan", "meeting", "mail", "summary"]), help="Only this kind.")
@click.option("--tag", help="Only documents from the watched folder (or mail account) with this tag.")
@click.option("--source", type=click.Choice(["file", "mail"]), help="Only documents that came from files or mail.")
@click.option("--after", metavar="YYYY-MM-DD", help="Only documents dated on or after this day.")
@click.option("--before", metavar="YYYY-MM-DD", help="Only documents dated on or before this day.")
@click.option("--json", "as_json", is_flag=True, help="The hits as JSON (a list).")
@click.option("--facets", is_flag=True, help="With --json: {hits, facets} (counts by kind, type, tag).")
@click.pass_obj
@_errors
def search(obj: Context, query: tuple[str, ...], k: int, file_type: str | None, kind: str | None,
           tag: str | None, source: str | None, after: str | None, before: str | None, as_json: bool,
           facets: bool) -> None:
    """Search the library (meaning and keywords combined).

    \b
    Words: either may match, documents with more rank first; a AND b: both.
    "exact phrase", boil* (prefix), -word or -"a phrase" (leave out), C++ and CJK text work as typed.
    """
    for day in (after, before):
        if day is not None and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", day):
            raise click.BadParameter(f"{day!r} is not a date like 2024-03-31", param_hint="--after/--before")
    page = obj.library(writes=False).search_page(
        " ".join(query), k=k, kind=kind, file_type=file_type, tag=tag, source=source, after=after, before=before
    )
    hits = page["hits"]
    if as_json:
        click.echo(json.dumps(page if facets else hits, indent=2, ensure_ascii=False))
        return
    if not hits:
        click.echo("no results")
        return
    for i, h in enumerate(hits, 1):
        place = []
        if h["page"] is not None:
            end = f"-{h['page_end']}" if h["page_end"] and h["page_end"] != h["page"] else ""
            place.append(f"p. {h['page']}{end}")
        if h["t_start"] is not None:
            place.append(f"{_clock(h['t_start'])}-{_clock(h['t_end'] or h['t_start'])}")
        sim = f" sim {h['similarity']:.2f}" if h["similarity"] is not None else ""
        click.echo(click.style(f"{i}. {_display(h['title']) or '(untitled)'}", bold=True)
                   + f"  [{', '.join(place) or h['file_type']}] score {h['score']:.4f}{sim}")
        click.echo(f"   {h['path'] or ''}" + (f"  [{h['tag']}]" if h.get("tag") else ""))
        if h.get("message"):
            m = h["message"]
            sender = f" from {_display(m.get('from'))}" if m.get("from") else ""
            what = "summary of" if h["kind"] == "summary" else "attached to"
            click.echo(f"   {what}: {_display(m.get('subject')) or '(no subject)'}{sender}")
        if h["section"]:
            click.echo(f"   § {_display(h['section'])}")
        click.echo(f"   {_display(h['snippet'])}\n")


@main.command()
@click.argument("question", nargs=-1, required=True)
@click.option("-k", "k", default=None, type=click.IntRange(1, 50), help="Passages to retrieve (answer_passages).")
@click.option("--type", "file_type", help="Only this file type, e.g. pdf.")
@click.option("--kind", type=click.Choice(["document", "scan", "meeting", "mail"]), help="Only this kind.")
@click.option("--tag", help="Only documents from the watched folder (or mail account) with this tag.")
@click.option("--json", "as_json", is_flag=True, help="Print the checked answer and its passages as JSON.")
@click.pass_obj
@_errors
def ask(obj: Context, question: tuple[str, ...], k: int | None, file_type: str | None, kind: str | None,
        tag: str | None, as_json: bool) -> None:
    """Answer a question from the library, with citations [n] to the passages it rests on."""
    events = obj.library(writes=False).ask_stream(" ".join(question), k=k, kind=kind, file_type=file_type, tag=tag)
    final: dict[str, Any] = {}
    streamed = False
    for event in events:
        if event["event"] == "token" and not as_json:
            click.echo(event["text"], nl=False)
            streamed = True
        elif event["event"] == "answer":
            final = event["answer"]
    if as_json:
        click.echo(json.dumps(final, indent=2, ensure_ascii=False))
        return
    if streamed:
        click.echo()
    _print_answer(final, streamed=streamed)


def _print_answer(a: dict[str, Any], *, streamed: bool) -> None:
    """After the streamed words: the checked answer if checking changed it, the citations dropped or added, the
    sources."""
    if not streamed or a["answer"] != a["raw"]:
        click.echo(("\nchecked: " if streamed else "") + a["answer"])
    for d in a.get("dropped", []):
        click.echo(click.style(f"  citation [{d['n']}] dropped: {d['reason']}", dim=True))
    for d in a.get("added", []):
        click.echo(click.style(f"  citation [{d['n']}] added: that passage holds the sentence", dim=True))
    passages = a.get("passages", [])
    cited = set(a.get("cited", []))
    shown = [p for p in passages if p["n"] in cited] or ([] if a["status"] == "answered" else passages[:3])
    if shown:
        click.echo("\nsources:" if cited else "\nclosest passages:")
    for p in shown:
        place = f", p. {p['page']}" if p.get("page") is not None else ""
        place += f", {_clock(p['t_start'])}" if p.get("t_start") is not None else ""
        click.echo(click.style(f"  [{p['n']}] {_display(p['title']) or '(untitled)'}", bold=True) + place)
        click.echo(f"      {p['path'] or ''}")
        click.echo(f"      {_display(p['snippet'])}")


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "never"


def _print_watch(stats: dict[str, Any]) -> None:
    """Each watched folder's and mail account's health (from the service), or the mail sync state on record."""
    watch = stats.get("watch")
    if watch:
        click.echo("watching:")
        for h in watch:
            tag = f" [{h['tag']}]" if h.get("tag") else ""
            mode = f" ({h['mode']})" if h.get("mode") else ""
            click.echo(f"  {h['kind']:<6} {_display(h['name'])}{tag}{mode}: {h['state']}")
            click.echo(f"         last event {_when(h.get('last_event'))}, last sync {_when(h.get('last_sync'))}")
            if h.get("last_error"):
                click.echo(f"         error since {_when(h.get('last_error_at'))}: {h['last_error']}")
    elif stats.get("service") == "not running":
        click.echo("watching:  nothing (the service is not running: start it with `kb watch`)")
    for m in stats.get("mail_folders", []) if not watch else []:
        err = f"; last error: {m['last_error']}" if m.get("last_error") else ""
        click.echo(f"  mail {m['account']}/{m['folder']}: last sync {_when(m.get('last_sync'))}{err}")


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@_errors
def status(obj: Context, as_json: bool) -> None:
    """What is in the library: counts by type and status, work in progress, failures."""
    stats = obj.library(writes=False).status()
    stats["service"] = "running" if obj.client is not None else "not running"
    if as_json:
        click.echo(json.dumps(stats, indent=2))
        return
    _print_status(stats)


def _print_status(stats: dict[str, Any]) -> None:
    click.echo(f"library: {stats['data_dir']} (service {stats['service']})")
    click.echo(f"  {stats['documents']} documents, {stats['chunks']} chunks, from {stats['sources']} sources")
    if stats["documents_by_kind"]:
        click.echo("  by kind:   " + ", ".join(f"{k} {n}" for k, n in stats["documents_by_kind"].items()))
    if stats["documents_by_type"]:
        click.echo("  by type:   " + ", ".join(f"{k} {n}" for k, n in stats["documents_by_type"].items()))
    if stats["sources_by_status"]:
        click.echo("  by status: " + ", ".join(f"{k} {n}" for k, n in stats["sources_by_status"].items()))
    jobs = stats.get("jobs", {})
    if jobs:
        click.echo("  jobs:      " + ", ".join(f"{k} {n}" for k, n in sorted(jobs.items())))
    for p in stats.get("in_progress", []):
        total = f" of {p['total']:.0f}" if p["total"] else ""
        pct = f" ({100 * p['done'] / p['total']:.0f}%)" if p["total"] and p["done"] is not None else ""
        done = f": {p['done']:.0f}{total}{pct}" if p["done"] is not None else ""
        click.echo(f"  in progress: {p['stage'] or p['action']} {p['path']}{done}")
    if stats.get("held"):
        click.echo(f"  {stats['held']} removals held for confirmation: `kb held`")
    _print_watch(stats)
    if stats["failures"]:
        click.echo("recent failures:")
        for f in stats["failures"]:
            at = time.strftime("%Y-%m-%d %H:%M", time.localtime(f["at"]))
            kept = " (the previous version stays searchable)" if f.get("kept_previous") else ""
            click.echo(f"  {at}  {f['path']}\n      {f['error']}{kept}")
    if stats.get("warnings"):
        click.echo("warnings:")
        for w in stats["warnings"]:
            click.echo(f"  {w['path']}\n      {w['warning']}")
    _print_mail_out(stats.get("mail_out"))


def _print_mail_out(m: dict[str, Any] | None) -> None:
    """The outbox and the digest (issue 10): counts, what failed or waits, the next digest."""
    if not m:
        return
    counts = m["counts"]
    click.echo("mail out:  " + (", ".join(f"{k} {n}" for k, n in sorted(counts.items())) or "nothing sent yet"))
    if m["last_sent"]:
        click.echo(f"  last sent {_when(m['last_sent']['sent_at'])}: {m['last_sent']['subject']}")
    d = m["digest"]
    if d["cron"]:
        click.echo(f"  digest '{d['cron']}' ({d['timezone']}): next {_when(d['next_run'])}"
                   + (f", last {d['last_outcome']} {_when(d['last_run'])}" if d["last_run"] else ""))
    for p in m["problems"]:
        retry = f" (next try {_when(p['retry_at'])})" if p["retry_at"] else " (failed: `kb mail outbox --retry`)"
        click.echo(f"  {p['subject']}\n      {p['error']}{retry}")


@main.command()
@click.argument("job_ids", nargs=-1, type=int)
@click.option("--json", "as_json", is_flag=True)
@click.option("--no-wait", is_flag=True, help="Queue the work with the running service and return at once.")
@click.pass_obj
@_errors
def retry(obj: Context, job_ids: tuple[int, ...], as_json: bool, no_wait: bool) -> None:
    """Try failed work again now (all failed jobs, or the given job ids from `kb status --json`)."""
    _submit_and_follow(obj, lambda lib: lib.retry(list(job_ids) or None)["batch"], wait=not no_wait, as_json=as_json)


@main.command()
@click.option("--confirm", is_flag=True, help="Remove the held files from the library.")
@click.option("--discard", is_flag=True, help="Keep them: drop the held removals.")
@click.pass_obj
@_errors
def held(obj: Context, confirm: bool, discard: bool) -> None:
    """Removals held because a folder suddenly looked (mostly) empty, e.g. an unmounted disk."""
    if confirm and discard:
        raise click.UsageError("--confirm or --discard, not both")
    lib = obj.library(writes=True)
    if not (confirm or discard):
        info = lib.held()
        click.echo(f"{info['held']} removals held" + (":" if info["paths"] else ""))
        for p in info["paths"]:
            click.echo(f"  {p}")
        if info["held"] > len(info["paths"]):
            click.echo(f"  … and {info['held'] - len(info['paths'])} more")
        return
    if discard:
        n = lib.held(confirm=False)["discarded"]
        click.echo(f"kept {n} file{'s' if n != 1 else ''} in the library (the held removals are dropped)")
        return
    state = _follow(obj, lib, lib.held(confirm=True)["batch"], quiet=False)
    n = state["outcomes"].get("removed", 0)
    click.echo(f"removed {n} file{'s' if n != 1 else ''} from the library")


@main.command()
@click.option(
    "--scan-interval", type=float, default=None,
    help="Seconds between full rescans of the watched folders (default: setting reconcile_interval_s; 0: never).",
)
@click.option("--quiet", "-q", is_flag=True, help="No live status line (queue, last event, errors).")
@click.pass_obj
@_errors
def watch(obj: Context, scan_interval: float | None, quiet: bool) -> None:
    """Run the service: own the library, ingest the inbox folders as they change, answer other kb commands."""
    _service(obj, scan_interval, quiet, web=False)


def _service(obj: Context, scan_interval: float | None, quiet: bool, *, web: bool) -> None:
    from kb.lock import holder, try_lock
    from kbapp.app import App
    from kbapp.client import Client
    from kbapp.service import run_service
    from kbapp.statusline import LiveLine

    s = _settings_or_exit(obj)
    if web:  # before waiting for the lock: a refused bind is said at once
        from server.security import check_bind

        check_bind(s)
    said = False
    while True:
        lock = try_lock(s.data_dir)
        if lock is not None:
            break
        client = Client.connect(s.socket_path)
        if client is not None:
            role = client.role
            client.close()
            if role == "service":
                click.echo(f"kb: a service already runs for {s.data_dir} (pid {holder(s.data_dir) or '?'})", err=True)
                sys.exit(1)
        if not said:
            click.echo(f"kb: waiting for another kb command (pid {holder(s.data_dir) or '?'}) to finish…", err=True)
            said = True
        time.sleep(0.2)
    app = App(s)
    try:
        run_service(app, lock, scan_interval_s=scan_interval, echo=click.echo,
                    live=None if quiet else LiveLine(sys.stderr), web=web)
    finally:
        app.close()


# web service
@main.command()
@click.option("--host", help="Address to listen on (setting host; default 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port to listen on (setting port; default 8750).")
@click.option(
    "--scan-interval", type=float, default=None,
    help="Seconds between full rescans of the watched folders (default: setting reconcile_interval_s; 0: never).",
)
@click.option("--quiet", "-q", is_flag=True, help="No live status line (queue, last event, errors).")
@click.pass_obj
@_errors
def serve(obj: Context, host: str | None, port: int | None, scan_interval: float | None, quiet: bool) -> None:
    """Run the service with its web UI and JSON API: everything `kb watch` does, plus http://HOST:PORT/."""
    if host is not None:
        obj.overrides["host"] = host
    if port is not None:
        obj.overrides["port"] = port
    _service(obj, scan_interval, quiet, web=True)


@main.command("hash-password")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input (no prompt).")
@_errors
def hash_password_cmd(password_stdin: bool) -> None:
    """Print an argon2 hash of a password, for the admin_password_hash setting (the password is not stored)."""
    from server.security import hash_password

    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = click.prompt("password", hide_input=True, confirmation_prompt=True)
    if len(password) < 8:
        click.echo("kb: a password needs at least 8 characters", err=True)
        sys.exit(2)
    click.echo(hash_password(password))


@main.group()
def mail() -> None:
    """IMAP mail accounts (settings 'mail')."""


@mail.command("test")
@click.argument("account", required=False)
@click.option("--send", is_flag=True, help="Also send a test message through the SMTP server (setting 'smtp').")
@click.pass_obj
@_errors
def mail_test(obj: Context, account: str | None, send: bool) -> None:
    """Check mail accounts (all, or ACCOUNT): connect, log in, open each folder read-only, count new mail;
    and the SMTP server (setting 'smtp'): connect and log in, with --send send a test message.

    Changes nothing in the library; works whether or not the service runs.
    """
    s = _settings_or_exit(obj)
    if send and s.smtp is None:
        click.echo("kb: --send: no SMTP server configured (add an [smtp] table to kb.toml)", err=True)
        sys.exit(1)
    if not s.mail and s.smtp is None:
        click.echo("kb: no mail accounts configured (add a [[mail]] table, or [smtp], to kb.toml)", err=True)
        sys.exit(1)
    if send and account is not None:
        raise click.UsageError("--send checks the SMTP server: leave out ACCOUNT (an IMAP account)")
    bad = False
    if s.mail:
        bad = _imap_test(s, account) or bad
    if s.smtp is not None and account is None:
        bad = _smtp_test(s, send=send) or bad
    sys.exit(1 if bad else 0)


def _imap_test(s: Settings, account: str | None) -> bool:
    """`kb mail test` for the IMAP accounts; True when something is wrong."""
    from watchers.mail import check_account, read_folder_states

    accounts = [a for a in s.mail if account is None or a.name == account]
    if not accounts:
        names = ", ".join(a.name for a in s.mail)
        click.echo(f"kb: no mail account named {account!r} (configured: {names})", err=True)
        sys.exit(1)
    known = read_folder_states(s.catalog_path)
    bad = False
    for a in accounts:
        r = check_account(a, known)
        if r.error is not None:
            click.echo(f"{a.name}: {r.error}")
            bad = True
            continue
        wait = "IDLE" if r.idle and a.idle else f"polling every {a.poll_interval_s:g} s"
        if a.idle and not r.idle:
            wait += " (the server does not offer IDLE)"
        click.echo(f"{a.name}: logged in to {r.where} as {a.username} ({a.security}); new mail by {wait}")
        for f in r.folders:
            if f.error is not None:
                click.echo(f"  {f.folder}: {f.error}")
                bad = True
            else:
                click.echo(f"  {f.folder}: {f.messages} messages, {f.new} new to kb")
    return bad


def _smtp_test(s: Settings, *, send: bool) -> bool:
    """`kb mail test` for the SMTP server: log in (and with `send`, send a test message straight away, not
    through the outbox, to show the server's answer now); True when something is wrong."""
    from kb.catalog import Catalog
    from kb.smtp import SendError, SmtpTransport
    from kbapp.mailout import Composer

    assert s.smtp is not None
    catalog = Catalog(s.catalog_path)
    try:
        transport = SmtpTransport(s.smtp)
        try:
            if not send:
                click.echo(f"smtp: {transport.check()}")
                click.echo("  (`kb mail test --send` sends a test message to " + ", ".join(s.smtp.recipients) + ")")
                return False
            mail = Composer(s, catalog).test_message()
            delivery = transport.send(mail.recipients, mail.message)
        except SendError as exc:
            click.echo(f"smtp: {exc}")
            return True
        click.echo(f"smtp: sent a test message to {', '.join(mail.recipients)}; the server answered: {delivery.reply}")
        for r, why in delivery.refused.items():
            click.echo(f"  refused {r}: {why}")
        return bool(delivery.refused)
    finally:
        catalog.close()


@main.command("digest")
@click.option("--now", "now", is_flag=True, help="Send a digest now: what arrived since the last one.")
@click.option("--preview", is_flag=True, help="Print the digest --now would send; send nothing, change nothing.")
@click.option("--html", is_flag=True, help="With --preview: print the HTML part instead of the text.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@_errors
def digest_cmd(obj: Context, now: bool, preview: bool, html: bool, as_json: bool) -> None:
    """The digest e-mail (settings digest_cron, mail_timezone, smtp): its schedule, --now, or --preview.

    Works whether or not the service runs: a digest sent by hand is queued in the outbox and sent by the
    running service (or by this command when none runs), retried later if the server does not take it now.
    """
    from kb.catalog import Catalog
    from kbapp.mailout import MailOut

    if now and preview:
        raise click.UsageError("--now or --preview, not both")
    s = _settings_or_exit(obj)
    catalog = Catalog(s.catalog_path)
    try:
        mailout = MailOut(s, catalog)
        if preview:
            digest, rendered = mailout.preview()
            if as_json:
                click.echo(json.dumps({"subject": rendered.subject, "text": rendered.text, "html": rendered.html,
                                       "empty": digest.empty}, indent=2, ensure_ascii=False))
            else:
                click.echo(f"Subject: {rendered.subject}\n")
                click.echo(rendered.html if html else rendered.text)
            return
        if now:
            if s.smtp is None:
                click.echo("kb: no SMTP server configured (add an [smtp] table to kb.toml, or set KB_SMTP)", err=True)
                sys.exit(1)
            # sending writes the catalog (outbox, schedule): through the service when one runs
            out = obj.library(writes=True).send_digest()
            if as_json:
                click.echo(json.dumps(out, indent=2))
            elif out["state"] == "sent":
                click.echo(f"digest sent to {', '.join(out['recipients'])}; the server answered: {out['reply']}")
            elif out["state"] == "queued":
                click.echo(f"digest queued, not sent yet: {out['error']}; next try at {_when(out['retry_at'])} "
                           "(by the service, `kb serve`)")
            else:
                click.echo(f"digest not sent: {out['error'] or out['state']}")
            if out["state"] != "sent":
                sys.exit(1)
            return
        st = mailout.status()["digest"]
        if as_json:
            click.echo(json.dumps(st, indent=2))
            return
        if not s.digest_cron:
            click.echo("no digest scheduled (setting digest_cron, e.g. '0 8 * * *'); `kb digest --now` sends one")
        else:
            click.echo(f"digest: '{s.digest_cron}' ({s.mail_timezone}); next {_when(st['next_run'])}")
        if st["last_outcome"] not in (None, "started"):
            click.echo(f"  last: {st['last_outcome']} at {_when(st['last_run'])}; "
                       f"covered up to {_when(st['covered_until'])}")
    finally:
        catalog.close()


@mail.command("outbox")
@click.option("--retry", is_flag=True, help="Try failed and waiting messages again now.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@_errors
def mail_outbox(obj: Context, retry: bool, as_json: bool) -> None:
    """The e-mails kb sent or will send (summaries, digests): state, attempts, the server's answer."""
    from kb.catalog import Catalog
    from kb.outbox import SENT, Outbox

    s = _settings_or_exit(obj)
    catalog = Catalog(s.catalog_path)
    try:
        outbox = Outbox(catalog)
        if retry:
            if s.smtp is None:
                click.echo("kb: no SMTP server configured (add an [smtp] table to kb.toml, or set KB_SMTP)", err=True)
                sys.exit(1)
            # through the service when one runs (the one writer); else from here, now
            got = obj.library(writes=True).retry_outbox()
            n = got["retried"]
            click.echo(f"{n} message{'s' if n != 1 else ''} to try again")
            for e in got["results"]:
                click.echo(f"  {e['state']}: {e['subject']}: {e['reply'] if e['state'] == SENT else e['error']}")
            if any(e["state"] != SENT for e in got["results"]):
                sys.exit(1)
            return
        entries = outbox.entries(50)
        if as_json:
            click.echo(json.dumps([e.to_dict() for e in entries], indent=2, ensure_ascii=False))
            return
        if not entries:
            click.echo("the outbox is empty")
        for e in entries:
            when = _when(e.sent_at if e.sent_at else e.updated_at)
            click.echo(f"{e.state:<8} {when}  {e.subject}")
            if e.state == "sent":
                click.echo(f"         {e.reply or ''}" + (f"; {e.last_error}" if e.last_error else ""))
            elif e.last_error:
                retry_at = f" (next try {_when(e.next_attempt)})" if e.state == "queued" else ""
                click.echo(f"         {e.attempts} tries: {e.last_error}{retry_at}")
    finally:
        catalog.close()


@main.command()
@click.pass_context
def run(ctx: click.Context) -> None:
    """Same as `kb watch`: the service on the configured folders."""
    ctx.invoke(watch, scan_interval=None, quiet=False)


@main.command("config")
@click.pass_obj
@_errors
def show_config(obj: Context) -> None:
    """Print the effective settings (defaults, kb.toml, KB_* variables) as JSON."""
    click.echo(obj.settings.model_dump_json(indent=2))


if __name__ == "__main__":
    main()
