"""The `kb` command line: translates arguments into calls on the App and results into text or JSON."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from kb.errors import KbError
from kb.lock import write_lock
from kb.settings import Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])


class Context:
    """Lazily built settings and App, shared by the subcommands of one invocation."""

    def __init__(self, overrides: dict[str, Any]) -> None:
        self.overrides = overrides
        self._settings: Settings | None = None
        self._app: Any = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(**self.overrides)
        return self._settings

    @property
    def app(self) -> Any:
        if self._app is None:
            from kb.app import App

            self._app = App(self.settings)
        return self._app

    def close(self) -> None:
        if self._app is not None:
            self._app.close()


def _errors(fn: F) -> F:
    """Known errors become one clear line on stderr and exit code 2, not a traceback."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KbError as exc:
            click.echo(f"kb: error: {exc}", err=True)
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
    for noisy in ("chromadb", "unstructured", "httpx", "sentence_transformers", "pdfminer"):
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


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--force", is_flag=True, help="Re-check every file's content, not just its size and time.")
@click.option("--no-mirror", is_flag=True, help="Keep files that have disappeared from the folders.")
@click.pass_obj
@_errors
def ingest(obj: Context, paths: tuple[Path, ...], as_json: bool, force: bool, no_mirror: bool) -> None:
    """Ingest files and folders (recursively); with no PATHS, the configured inbox folders."""
    settings = _settings_or_exit(obj)
    targets = list(paths) or list(settings.inbox)
    for p in targets:
        if not paths:
            p.mkdir(parents=True, exist_ok=True)
    report = _run_ingest(obj, targets, force=force, mirror=not no_mirror, quiet=as_json)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _print_report(report)
    sys.exit(1 if report.failed and not (report.added or report.updated or report.unchanged) else 0)


def _run_ingest(obj: Context, targets: list[Path], *, force: bool, mirror: bool, quiet: bool) -> Any:
    from tqdm import tqdm

    bar = None
    if sys.stderr.isatty() and not quiet:
        bar = tqdm(total=None, unit="file", desc="ingest", leave=False, dynamic_ncols=True)

    def total(n: int) -> None:
        if bar is not None:
            bar.reset(total=n)

    def progress(path: str, outcome: str) -> None:
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"{outcome}: {Path(path).name[:40]}", refresh=False)

    try:
        with write_lock(obj.settings.data_dir):
            return obj.app.ingestor.ingest(targets, progress=progress, force=force, mirror=mirror, on_total=total)
    finally:
        if bar is not None:
            bar.close()


def _print_report(report: Any) -> None:
    click.echo(
        f"{report.files} files in {report.seconds:.1f} s: {report.added} added, {report.updated} updated, "
        f"{report.unchanged} unchanged, {len(report.failed)} failed"
        + (f", {report.removed} removed" if report.removed else "")
        + (f"; {report.chunks} chunks indexed" if report.chunks else "")
    )
    if report.empty:
        click.echo(f"{len(report.empty)} with no text to index:")
        for p in report.empty[:20]:
            click.echo(f"  {p}")
    if report.failed:
        click.echo("failed:")
        for p, err in report.failed:
            click.echo(f"  {p}\n    {err}")


@main.command()
@click.argument("query", nargs=-1, required=True)
@click.option("-k", "k", default=5, show_default=True, type=click.IntRange(1, 200), help="Results to show.")
@click.option("--type", "file_type", help="Only this file type, e.g. pdf.")
@click.option("--kind", type=click.Choice(["document", "scan", "meeting", "mail"]), help="Only this kind.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@_errors
def search(obj: Context, query: tuple[str, ...], k: int, file_type: str | None, kind: str | None,
           as_json: bool) -> None:
    """Search the library (meaning and keywords combined)."""
    filters: list[dict[str, Any]] = []
    if file_type:
        filters.append({"file_type": file_type.lower().lstrip(".")})
    if kind:
        filters.append({"kind": kind})
    where = None if not filters else filters[0] if len(filters) == 1 else {"$and": filters}
    hits = obj.app.searcher.search(" ".join(query), k=k, where=where)
    if as_json:
        click.echo(json.dumps([h.to_dict() for h in hits], indent=2, ensure_ascii=False))
        return
    if not hits:
        click.echo("no results")
        return
    for i, h in enumerate(hits, 1):
        d, c = h.document, h.chunk
        place = []
        if c.page is not None:
            place.append(f"p. {c.page}" + (f"-{c.page_end}" if c.page_end and c.page_end != c.page else ""))
        if c.t_start is not None:
            place.append(f"{_clock(c.t_start)}-{_clock(c.t_end or c.t_start)}")
        sim = f" sim {h.similarity:.2f}" if h.similarity is not None else ""
        click.echo(click.style(f"{i}. {d.title or '(untitled)'}", bold=True)
                   + f"  [{', '.join(place) or d.file_type}] score {h.score:.4f}{sim}")
        click.echo(f"   {d.paths[0] if d.paths else ''}")
        if c.section:
            click.echo(f"   § {c.section}")
        click.echo(f"   {h.snippet}\n")


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@_errors
def status(obj: Context, as_json: bool) -> None:
    """What is in the library: counts by type and status, recent failures."""
    stats = _stats(obj)
    if as_json:
        click.echo(json.dumps(stats, indent=2))
        return
    _print_status(stats)


def _stats(obj: Context) -> dict[str, Any]:
    from kb.progress import ProgressBoard

    stats: dict[str, Any] = obj.app.catalog.stats()
    stats["data_dir"] = str(obj.settings.data_dir.resolve())
    stats["embed_model"] = obj.app.catalog.get_meta("embed_model")
    board = ProgressBoard(obj.settings.catalog_path)
    stats["in_progress"] = board.active()
    board.close()
    return stats


def _print_status(stats: dict[str, Any]) -> None:
    click.echo(f"library: {stats['data_dir']}")
    click.echo(f"  {stats['documents']} documents, {stats['chunks']} chunks, from {stats['sources']} files")
    if stats["documents_by_kind"]:
        click.echo("  by kind:   " + ", ".join(f"{k} {n}" for k, n in stats["documents_by_kind"].items()))
    if stats["documents_by_type"]:
        click.echo("  by type:   " + ", ".join(f"{k} {n}" for k, n in stats["documents_by_type"].items()))
    if stats["sources_by_status"]:
        click.echo("  by status: " + ", ".join(f"{k} {n}" for k, n in stats["sources_by_status"].items()))
    for p in stats.get("in_progress", []):
        total = f" of {p['total']:.0f}" if p["total"] else ""
        pct = f" ({100 * p['done'] / p['total']:.0f}%)" if p["total"] else ""
        click.echo(f"  in progress: {p['stage']} {p['path']}: {p['done']:.0f}{total}{pct}")
    if stats["failures"]:
        click.echo("recent failures:")
        for f in stats["failures"]:
            at = time.strftime("%Y-%m-%d %H:%M", time.localtime(f["at"]))
            click.echo(f"  {at}  {f['path']}\n      {f['error']}")


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.pass_obj
@_errors
def forget(obj: Context, paths: tuple[Path, ...]) -> None:
    """Remove files or folders from the library (the files themselves are not touched)."""
    with write_lock(obj.settings.data_dir):
        n = obj.app.ingestor.forget(list(paths))
    click.echo(f"forgot {n} file{'s' if n != 1 else ''}")


@main.command()
@click.pass_obj
@_errors
def reindex(obj: Context) -> None:
    """Rebuild all vectors from the catalog with the configured embedding model."""
    started = time.monotonic()
    with write_lock(obj.settings.data_dir):
        n = obj.app.reindexer().reindex()
    click.echo(f"re-embedded {n} chunks in {time.monotonic() - started:.1f} s")


@main.command()
@click.pass_obj
@_errors
def run(obj: Context) -> None:
    """The main job until the server exists: ingest the inbox folders, then show the library."""
    settings = _settings_or_exit(obj)
    for p in settings.inbox:
        p.mkdir(parents=True, exist_ok=True)
    click.echo(f"ingesting {', '.join(str(p) for p in settings.inbox)}")
    report = _run_ingest(obj, list(settings.inbox), force=False, mirror=True, quiet=False)
    _print_report(report)
    click.echo()
    _print_status(_stats(obj))


@main.command("config")
@click.pass_obj
@_errors
def show_config(obj: Context) -> None:
    """Print the effective settings (defaults, kb.toml, KB_* variables) as JSON."""
    click.echo(obj.settings.model_dump_json(indent=2))


if __name__ == "__main__":
    main()
