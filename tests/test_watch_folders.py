"""The folder mirror: real filesystem events in temporary folders, against a real App (fast fake embedder,
embedded Chroma, runner threads), plus unit tests of the settle and move-pairing logic with a fake clock.

After each change the library must match the folders: one indexed source per (non-ignored) file, with its
folder's tag; moves and renames keep their document and embed nothing again.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import AppFactory
from test_service import wait_for

from kb.embedding import HashEmbedder
from kb.paths import ignored
from kb.settings import DEFAULT_IGNORE, WatchedFolder
from kbapp.app import App
from watchers.folders import FolderWatcher
from watchers.health import HealthBoard
from watchers.mounts import filesystem_type
from watchers.settle import Settler


class Mirror:
    """An App with its workers and folder watcher running (what `kb watch` runs), for one test."""

    def __init__(self, app: App, emb: HashEmbedder, roots: list[Path]) -> None:
        self.app = app
        self.emb = emb
        self.roots = roots
        self.watcher: FolderWatcher | None = None

    def start(self, catch_up: bool = False) -> None:
        self.app.start_workers()
        self.watcher = self.app.folder_watcher()
        self.watcher.health_every_s = 0.3
        self.watcher.start()
        if catch_up:  # as the service does at start
            self.app.submit_scan([str(r) for r in self.roots], key="scan:inbox")

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
        self.app.stop_workers(grace_s=5)

    # -- what the library holds -------------------------------------------------------------------
    def library(self) -> dict[str, tuple[int | None, str | None]]:
        """Indexed file sources: path -> (document id, tag)."""
        return {
            s.uri: (s.doc_id, s.tag) for s in self.app.catalog.all_sources("file") if s.status == "indexed"
        }

    def on_disk(self) -> set[str]:
        out = set()
        for root in self.roots:
            for top, dirs, files in os.walk(root):
                dirs[:] = [d for d in dirs if not ignored(d, DEFAULT_IGNORE)]
                out.update(str(Path(top) / f) for f in files if not ignored(f, DEFAULT_IGNORE))
        return out

    def quiet(self) -> bool:
        counts = self.app.jobs.counts()
        return bool(self.watcher is None or self.watcher.idle()) and not counts.get("queued") and not counts.get(
            "running"
        )

    def matches(self, timeout: float = 20.0) -> dict[str, tuple[int | None, str | None]]:
        """Wait until the library holds exactly the files on disk and nothing is left to do."""

        def check() -> bool:
            return self.quiet() and set(self.library()) == self.on_disk() and self.quiet()

        wait_for("the library to match the folders", check, timeout,
                 why=lambda: (sorted(set(self.library()) ^ self.on_disk())[:10], self.app.jobs.counts()))
        # no document half-written, every chunk has its vector
        assert self.app.index().all_ids() == self.app.catalog.all_chunk_ids()
        return self.library()

    def doc(self, path: Path) -> int:
        src = self.app.catalog.source(str(path))
        assert src is not None and src.doc_id is not None, path
        return src.doc_id

    def vector_meta(self, path: Path) -> dict[str, Any]:
        chunks = self.app.catalog.chunks_of(self.doc(path))
        return self.app.index().metadata([chunks[0].id])[chunks[0].id]


@pytest.fixture
def mirror(make_app: AppFactory, tmp_path: Path) -> Iterator[Callable[..., Mirror]]:
    made: list[Mirror] = []

    def build(folders: Sequence[dict[str, Any]] = ({"path": "inbox"},), settle: float = 0.3, **kw: Any) -> Mirror:
        inbox = [dict(f, path=str(tmp_path / f["path"])) for f in folders]
        for f in inbox:
            Path(f["path"]).mkdir(parents=True, exist_ok=True)
        emb = HashEmbedder()
        app = make_app(embedder=emb, inbox=inbox, watch_settle_s=settle, **kw)
        m = Mirror(app, emb, [Path(f["path"]) for f in inbox])
        made.append(m)
        m.start()
        return m

    yield build
    for m in made:
        m.stop()


def note(path: Path, words: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{words}\n\nThis note is about {words} and only that.\n")
    return path


# -- with real events ------------------------------------------------------------------------------
def test_create_modify_delete(mirror: Callable[..., Mirror], tmp_path: Path) -> None:
    m = mirror([{"path": "inbox", "tag": "work"}])
    a = note(tmp_path / "inbox" / "a.txt", "zeppelins")
    note(tmp_path / "inbox" / "sub" / "b.txt", "harbour")
    lib = m.matches()
    assert lib[str(a)][1] == "work"
    assert m.app.search("zeppelins", k=1, tag="work")[0]["path"] == str(a)
    assert m.app.search("zeppelins", k=1, tag="home") == []
    assert m.vector_meta(a)["tag"] == "work"

    note(a, "submarines")
    wait_for("the new text", lambda: "submarines" in (m.app.catalog.document_text(m.doc(a)) or ""))
    m.matches()
    assert all("zeppelins" not in h["text"] for h in m.app.search("zeppelins", k=5))

    a.unlink()
    shutil.rmtree(tmp_path / "inbox" / "sub")
    assert m.matches() == {}
    assert m.app.catalog.chunk_count() == 0 and m.app.index().count() == 0
    health = {h["name"]: h for h in m.app.status()["watch"]}
    assert health[str(tmp_path / "inbox")]["state"] == "ok" and health[str(tmp_path / "inbox")]["mode"] == "events"
    assert health[str(tmp_path / "inbox")]["last_event"] and not health[str(tmp_path / "inbox")]["last_sync"]
    m.app.submit_scan([str(tmp_path / "inbox")], key="scan:inbox")  # the service's reconciliation scan
    wait_for("the scan to count as the folder's last sync",
             lambda: {h["name"]: h for h in m.app.status()["watch"]}[str(tmp_path / "inbox")]["last_sync"])


def test_tag_filter_through_the_api(mirror: Callable[..., Mirror], tmp_path: Path) -> None:
    from litestar.testing import TestClient

    from server.api import create_api

    m = mirror([{"path": "work", "tag": "work"}, {"path": "home", "tag": "home"}])
    note(tmp_path / "work" / "w.txt", "budget meeting")
    note(tmp_path / "home" / "h.txt", "budget holiday")
    m.matches()
    with TestClient(app=create_api(m.app)) as client:
        r = client.post("/api/v1/search", json={"query": "budget", "k": 5, "tag": "home"})
        assert r.status_code == 200, r.text
        assert [(h["path"], h["tag"]) for h in r.json()] == [(str(tmp_path / "home" / "h.txt"), "home")]


def test_slow_write_in_pieces_is_ingested_once_complete(mirror: Callable[..., Mirror], tmp_path: Path) -> None:
    m = mirror(settle=1.0)
    p = tmp_path / "inbox" / "scan.txt"
    pieces = [f"Part {i} of the scanned letter about invoice number {1000 + i}.\n" for i in range(5)]
    with p.open("w") as f:
        for piece in pieces:
            f.write(piece)
            f.flush()
            time.sleep(0.4)
    m.matches()
    text = m.app.catalog.document_text(m.doc(p)) or ""
    assert all(f"invoice number {1000 + i}" in text for i in range(5)), text
    versions = m.app.catalog._query("SELECT count(*) n FROM versions")[0]["n"]
    assert versions == 1  # exactly one ingest, of the whole file


def test_rename_and_folder_move_keep_documents(mirror: Callable[..., Mirror], tmp_path: Path) -> None:
    m = mirror()
    inbox = tmp_path / "inbox"
    a = note(inbox / "a.txt", "lighthouse")
    for i in range(3):
        note(inbox / "dir" / f"n{i}.txt", f"topic{i}")
    m.matches()
    doc_a = m.doc(a)
    docs = {i: m.doc(inbox / "dir" / f"n{i}.txt") for i in range(3)}
    chunks, embedded = m.app.catalog.all_chunk_ids(), m.emb.embedded

    b = inbox / "renamed.txt"
    a.rename(b)
    (inbox / "dir").rename(inbox / "moved")
    lib = m.matches()
    assert lib[str(b)][0] == doc_a
    assert {i: m.doc(inbox / "moved" / f"n{i}.txt") for i in range(3)} == docs
    assert m.emb.embedded == embedded and m.app.catalog.all_chunk_ids() == chunks  # nothing embedded again
    assert m.vector_meta(b)["path"] == str(b)
    assert m.app.search("lighthouse", k=1)[0]["path"] == str(b)


def test_move_between_folders_tag_follows(mirror: Callable[..., Mirror], tmp_path: Path) -> None:
    m = mirror([{"path": "work", "tag": "work"}, {"path": "home", "tag": "home"}])
    a = note(tmp_path / "work" / "plan.txt", "greenhouse")
    project = [note(tmp_path / "work" / "project" / f"p{i}.txt", f"chapter{i}") for i in range(2)]
    m.matches()
    assert m.app.search("greenhouse", k=1, tag="work")
    doc, embedded = m.doc(a), m.emb.embedded  # (a search embeds its query)
    project_docs = [m.doc(p) for p in project]

    dest = tmp_path / "home" / "plan.txt"
    shutil.move(a, dest)
    shutil.move(tmp_path / "work" / "project", tmp_path / "home" / "project")
    lib = m.matches()
    assert lib == {
        str(dest): (doc, "home"),
        **{str(tmp_path / "home" / "project" / p.name): (d, "home")
           for p, d in zip(project, project_docs, strict=True)},
    }
    assert m.emb.embedded == embedded
    assert m.vector_meta(dest)["tag"] == "home"
    assert m.app.search("greenhouse", k=1, tag="home")[0]["path"] == str(dest)
    assert m.app.search("greenhouse", k=1, tag="work") == []


def test_burst_of_500_files(mirror: Callable[..., Mirror], tmp_path: Path) -> None:
    m = mirror()
    started = time.monotonic()
    for i in range(500):
        (tmp_path / "inbox" / f"f{i:03d}.txt").write_text(f"File {i} holds the word marker{i}.\n")
    lib = m.matches(timeout=90)
    assert len(lib) == 500 and len({d for d, _ in lib.values()}) == 500
    assert str(tmp_path / "inbox" / "f250.txt") in [h["path"] for h in m.app.search("marker250", k=3)]
    print(f"500 files searchable in {time.monotonic() - started:.1f} s")


def test_changes_while_stopped_are_caught_up(mirror: Callable[..., Mirror], tmp_path: Path) -> None:
    m = mirror([{"path": "one", "tag": "one"}, {"path": "two", "tag": "two"}])
    keep = note(tmp_path / "one" / "keep.txt", "unchanged")
    edit = note(tmp_path / "one" / "edit.txt", "before")
    gone = note(tmp_path / "one" / "gone.txt", "deleted")
    travel = note(tmp_path / "one" / "travel.txt", "voyage")
    m.matches()
    travel_doc, keep_doc = m.doc(travel), m.doc(keep)
    m.stop()

    note(edit, "after the edit")
    gone.unlink()
    moved = tmp_path / "two" / "travel.txt"
    shutil.move(travel, moved)
    new = note(tmp_path / "two" / "new.txt", "fresh")
    embedded = m.emb.embedded

    m.start(catch_up=True)
    lib = m.matches()
    assert set(lib) == {str(keep), str(edit), str(moved), str(new)}
    assert lib[str(moved)] == (travel_doc, "two") and lib[str(keep)][0] == keep_doc
    assert "after the edit" in (m.app.catalog.document_text(m.doc(edit)) or "")
    # only the edited and the new file were embedded: the moved one kept its vectors
    fresh = len(m.app.catalog.chunks_of(m.doc(edit))) + len(m.app.catalog.chunks_of(m.doc(new)))
    assert m.emb.embedded - embedded == fresh


def test_polling_mode(mirror: Callable[..., Mirror], tmp_path: Path) -> None:
    m = mirror([{"path": "net", "mode": "poll", "tag": "nas"}], watch_poll_s=0.3)
    assert m.watcher is not None and m.watcher.modes() == {str(tmp_path / "net"): "poll"}
    a = note(tmp_path / "net" / "a.txt", "polling")
    assert m.matches()[str(a)][1] == "nas"
    doc, embedded = m.doc(a), m.emb.embedded
    b = tmp_path / "net" / "b.txt"
    a.rename(b)
    assert m.matches()[str(b)][0] == doc and m.emb.embedded == embedded
    b.unlink()
    assert m.matches() == {}


def test_ignored_names(mirror: Callable[..., Mirror], tmp_path: Path) -> None:
    m = mirror()
    inbox = tmp_path / "inbox"
    for name in [".hidden.txt", "report.pdf.part", "film.crdownload", "~$letter.docx", ".notes.txt.swp",
                 ".git/config.txt", "draft.tmp"]:
        note(inbox / name, "secret")
    real = note(inbox / "real.txt", "visible")
    m.matches()
    assert set(m.library()) == {str(real)}
    # a finished download is renamed to its real name: now it counts
    (inbox / "report.pdf.part").rename(inbox / "report.txt")
    assert set(m.matches()) == {str(real), str(inbox / "report.txt")}


def test_folder_removed_then_restored(mirror: Callable[..., Mirror], tmp_path: Path) -> None:
    m = mirror()
    inbox = tmp_path / "inbox"
    files = [note(inbox / f"n{i}.txt", f"subject{i}") for i in range(3)]
    before = m.matches()
    backup = tmp_path / "backup"
    shutil.copytree(inbox, backup)  # copy2: same sizes and times

    def health() -> dict[str, Any]:
        return next(h for h in m.app.watch_health() if h["name"] == str(inbox))

    shutil.rmtree(inbox)
    wait_for("the folder to be reported unhealthy", lambda: health()["state"] == "unhealthy", 10)
    assert "missing" in (health()["last_error"] or "")
    time.sleep(1.5)  # longer than deletions are held: the removal events must not have removed anything
    assert m.quiet() and m.library() == before

    shutil.copytree(backup, inbox)
    wait_for("the folder to be healthy again", lambda: health()["state"] == "ok", 10)
    assert m.matches() == before
    note(inbox / "later.txt", "watched again")  # and it is watched again
    assert str(inbox / "later.txt") in m.matches()
    assert all(m.doc(f) == before[str(f)][0] for f in files)


def test_default_layout_and_a_data_dir_inside_a_watched_folder(make_app: AppFactory, tmp_path: Path) -> None:
    # the default: <data_dir>/inbox, inside the data directory, is watched
    emb = HashEmbedder()
    app = make_app(embedder=emb, data_dir=tmp_path / "data")
    inbox = tmp_path / "data" / "inbox"
    inbox.mkdir()
    m = Mirror(app, emb, [inbox])
    m.start()
    try:
        note(inbox / "a.txt", "default")
        assert set(m.matches()) == {str(inbox / "a.txt")}
    finally:
        m.stop()
    # kb's own files, in a data directory inside a watched folder, are never reported
    sink = FakeSink()
    lib = tmp_path / "lib"
    (lib / "kbdata").mkdir(parents=True)
    w = FolderWatcher([WatchedFolder(path=lib, tag=None, mode="events")], sink, HealthBoard(), ignore=[],
                      settle_s=0.1, poll_s=1, exclude=[lib / "kbdata"])
    w.start()
    try:
        (lib / "kbdata" / "catalog.sqlite3").write_bytes(b"x" * 100)
        (lib / "doc.txt").write_text("a document")
        wait_for("the document", lambda: sink.calls, 10)
        time.sleep(0.5)
        assert sink.calls == [("changed", [lib / "doc.txt"])]
    finally:
        w.stop()


# -- the settle and move-pairing logic, with a fake clock ----------------------------------------------
class FakeSink:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[Any]]] = []
        self.fail = 0

    def _record(self, method: str, items: Sequence[Any]) -> None:
        if self.fail:
            self.fail -= 1
            raise RuntimeError("database is locked")
        self.calls.append((method, list(items)))

    def changed(self, paths: Sequence[Path]) -> None:
        self._record("changed", paths)

    def removed(self, paths: Sequence[Path]) -> None:
        self._record("removed", paths)

    def moved(self, pairs: Sequence[tuple[Path, Path]]) -> None:
        self._record("moved", pairs)

    def rescan(self, roots: Sequence[Path]) -> None:
        self._record("rescan", roots)


class World:
    """A fake clock and fake file stats for the Settler."""

    def __init__(self, **settler: Any) -> None:
        self.now = 0.0
        self.files: dict[Path, tuple[int, int]] = {}
        self.dead_roots: set[Path] = set()
        self.sink = FakeSink()
        self.settler = Settler(
            self.sink, settle_s=1.0, clock=lambda: self.now, stat=self.files.get,
            alive=lambda p: not any(r in p.parents for r in self.dead_roots), **settler,
        )

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now += 0.2
            self.settler.tick()


def test_settler_waits_for_a_stable_size() -> None:
    w = World()
    p = Path("/in/scan.pdf")
    for size in range(1, 6):  # a scanner writing a page every 0.6 s
        w.files[p] = (size * 1000, size)
        w.settler.changed(p)
        w.run(0.6)
        assert w.sink.calls == []
    w.run(1.4)
    assert w.sink.calls == [("changed", [p])]


def test_settler_hands_a_burst_over_in_one_call() -> None:
    w = World()
    for i in range(500):
        p = Path(f"/in/f{i}.txt")
        w.files[p] = (10, i)
        w.settler.changed(p)
    w.run(2.0)
    assert [(m, len(items)) for m, items in w.sink.calls] == [("changed", 500)]


def test_settler_pairs_delete_and_create_across_folders_as_a_move() -> None:
    w = World()
    old, new = Path("/work/plan.txt"), Path("/home/plan.txt")
    w.settler.deleted(old, is_dir=False)
    w.files[new] = (10, 1)
    w.settler.changed(new)
    w.run(2.0)
    assert w.sink.calls == [("moved", [(old, new)])]
    # the other order (a copy to another disk, then the delete) pairs too
    w.sink.calls.clear()
    w.files[Path("/home/b.txt")] = (5, 5)
    w.settler.changed(Path("/home/b.txt"))
    w.run(0.4)
    w.settler.deleted(Path("/work/b.txt"), is_dir=False)
    w.run(2.0)
    assert w.sink.calls == [("moved", [(Path("/work/b.txt"), Path("/home/b.txt"))])]


def test_settler_pairs_a_folder_moved_between_watched_folders() -> None:
    files = [Path("/home/proj/a.txt"), Path("/home/proj/sub/b.txt")]
    w = World(expand=lambda d: iter(files))
    for f in files:
        w.files[f] = (1, 1)
    w.settler.dir_created(Path("/home/proj"))
    w.run(0.2)
    w.settler.deleted(Path("/work/proj"), is_dir=True)
    w.run(3.0)
    assert w.sink.calls == [("moved", [(Path("/work/proj"), Path("/home/proj"))])]
    # a new folder with no deleted twin: its files are ingested once they settled
    w.sink.calls.clear()
    w.settler.dir_created(Path("/home/proj"))
    w.run(3.0)
    assert w.sink.calls == [("changed", sorted(files))]


def test_settler_removals_are_held_collapsed_and_kept_when_the_root_is_gone() -> None:
    w = World()
    for name in ["a.txt", "b.txt"]:
        w.settler.deleted(Path("/in/sub") / name, is_dir=False)
    w.settler.deleted(Path("/in/sub"), is_dir=True)
    w.settler.deleted(Path("/in/top.txt"), is_dir=False)
    w.run(0.2)
    assert w.sink.calls == []  # held a moment, in case it is a move
    w.run(1.0)
    assert w.sink.calls == [("removed", [Path("/in/sub"), Path("/in/top.txt")])]
    w.sink.calls.clear()
    w.dead_roots.add(Path("/gone"))  # an unmounted or deleted watched folder: its documents stay
    w.settler.deleted(Path("/gone/x.txt"), is_dir=False)
    w.run(2.0)
    assert w.sink.calls == []


def test_settler_recreated_file_is_a_change_and_renames_are_immediate() -> None:
    w = World()
    p = Path("/in/a.txt")
    w.settler.deleted(p, is_dir=False)  # an editor saving by delete + create
    w.files[p] = (3, 3)
    w.settler.changed(p)
    w.run(1.6)
    assert w.sink.calls == [("changed", [p])]
    w.sink.calls.clear()
    w.settler.moved(p, Path("/in/b.txt"), is_dir=False)
    w.run(0.2)
    assert w.sink.calls == [("moved", [(p, Path("/in/b.txt"))])]


def test_settler_file_renamed_while_settling_settles_under_its_new_name() -> None:
    w = World()
    a, b = Path("/in/new.txt"), Path("/in/renamed.txt")
    w.files[a] = (1, 1)
    w.settler.changed(a)
    w.run(0.4)
    del w.files[a]
    w.files[b] = (1, 1)
    w.settler.moved(a, b, is_dir=False)
    w.run(2.0)
    # the old name never reached the library; forgetting it is a no-op, and nothing is ingested half-written
    assert sorted(w.sink.calls) == [("changed", [b]), ("removed", [a])]


def test_settler_retries_when_the_sink_fails() -> None:
    w = World()
    p = Path("/in/a.txt")
    w.files[p] = (1, 1)
    w.settler.changed(p)
    w.sink.fail = 1
    w.run(1.6)
    w.run(0.4)
    assert w.sink.calls == [("changed", [p])]


def test_filesystem_type_from_mountinfo(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(
        "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n"
        "40 22 0:50 / /mnt/nas rw,relatime - nfs4 nas:/export rw\n"
        "41 22 0:51 / /mnt/my\\040share rw - cifs //srv/share rw\n"
    )
    assert filesystem_type(Path("/mnt/nas/docs"), info) == "nfs4"
    assert filesystem_type(Path("/mnt/my share/x"), info) == "cifs"
    assert filesystem_type(Path("/home/me"), info) == "ext4"
    assert filesystem_type(Path("/mnt/nasty"), info) == "ext4"


def test_auto_mode_polls_a_network_folder(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(f"22 1 8:1 / / rw - ext4 /dev/sda1 rw\n40 22 0:50 / {tmp_path} rw - nfs nas:/x rw\n")
    folder = tmp_path / "nas"
    folder.mkdir()
    board = HealthBoard()
    w = FolderWatcher([WatchedFolder(path=folder, tag=None, mode="auto")], FakeSink(), board, ignore=[],
                      settle_s=0.1, poll_s=5, mountinfo=info)
    w.start()
    try:
        assert w.modes() == {str(folder): "poll"}
        (h,) = board.snapshot()
        assert h["state"] == "ok" and "nfs" in h["detail"]["reason"]
    finally:
        w.stop()


class NoInotify:
    """An observer whose watches fail as they do when the inotify watch limit is reached."""

    def __init__(self) -> None:
        from watchdog.observers import Observer

        self._real = Observer()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def schedule(self, *args: Any, **kwargs: Any) -> Any:
        raise OSError(28, "No space left on device")  # ENOSPC: what inotify_add_watch says at the limit


def test_inotify_limit_falls_back_to_polling(tmp_path: Path) -> None:
    folder = tmp_path / "big"
    folder.mkdir()
    board, sink = HealthBoard(), FakeSink()
    w = FolderWatcher([WatchedFolder(path=folder, tag=None, mode="auto")], sink, board, ignore=[], settle_s=0.1,
                      poll_s=0.2, inotify=NoInotify)  # type: ignore[arg-type]
    w.start()
    try:
        assert w.modes() == {str(folder): "poll"}
        (h,) = board.snapshot()
        assert h["state"] == "ok" and "watch limit" in h["detail"]["reason"]
        (folder / "a.txt").write_text("polled")
        wait_for("the polling observer to see the file", lambda: sink.calls, 10)
        assert sink.calls == [("changed", [folder / "a.txt"])]
    finally:
        w.stop()


def test_a_rescan_pairs_a_renamed_folder_as_moves(make_app: AppFactory, tmp_path: Path) -> None:
    emb = HashEmbedder()
    app = make_app(embedder=emb)
    for i in range(3):
        note(tmp_path / "in" / "old" / f"n{i}.txt", f"topic{i}")
    app.ingest([tmp_path / "in"])
    docs = {s.uri.rsplit("/", 1)[1]: s.doc_id for s in app.catalog.all_sources()}
    embedded = emb.embedded
    (tmp_path / "in" / "old").rename(tmp_path / "in" / "new")
    r = app.ingest([tmp_path / "in"])
    assert (r["moved"], r["added"], r["removed"], r["failed"]) == (3, 0, 0, 0), r
    assert {s.uri: s.doc_id for s in app.catalog.all_sources()} == {
        str(tmp_path / "in" / "new" / name): doc for name, doc in docs.items()
    }
    assert emb.embedded == embedded


def test_a_scan_of_a_missing_folder_forgets_nothing(make_app: AppFactory, tmp_path: Path) -> None:
    app = make_app()
    for i in range(3):
        note(tmp_path / "disk" / f"n{i}.txt", f"topic{i}")
    app.ingest([tmp_path / "disk"])
    (tmp_path / "disk").rename(tmp_path / "unmounted")
    r = app.ingest([tmp_path / "disk"])
    assert r["removed"] == 0 and len(app.catalog.all_sources()) == 3


def test_move_job_falls_back_when_the_file_changed_on_the_way(make_app: AppFactory, tmp_path: Path) -> None:
    """A move whose target no longer matches what was indexed: forget the old, ingest the new."""
    emb = HashEmbedder()
    app = make_app(embedder=emb)
    a = note(tmp_path / "in" / "a.txt", "original")
    app.ingest([tmp_path / "in"])
    b = tmp_path / "in" / "b.txt"
    a.rename(b)
    note(b, "rewritten")
    app.jobs.submit("move", str(a), key=f"move:{a}>{b}", payload={"to": str(b), "tag": None})
    app.start_workers()
    try:
        def done() -> bool:
            src = app.catalog.source(str(b))
            return app.catalog.source(str(a)) is None and src is not None and src.status == "indexed" and not (
                app.jobs.counts().get("queued") or app.jobs.counts().get("running"))

        wait_for("the fallback to finish", done, 15)
        assert "rewritten" in (app.catalog.document_text(app.catalog.source(str(b)).doc_id or 0) or "")
        assert app.catalog.stats()["documents"] == 1
    finally:
        app.stop_workers(grace_s=5)


def test_a_folder_tag_changed_in_the_settings_retags_at_the_next_scan(
    mirror: Callable[..., Mirror], tmp_path: Path
) -> None:
    m = mirror([{"path": "inbox", "tag": "old"}])
    a = note(tmp_path / "inbox" / "a.txt", "lighthouse")
    assert m.matches()[str(a)][1] == "old"
    doc, embedded = m.doc(a), m.emb.embedded
    m.stop()
    m2 = mirror([{"path": "inbox", "tag": "new"}], data_dir=m.app.settings.data_dir)
    m2.app.submit_scan([str(tmp_path / "inbox")], key="scan:inbox")  # the service's catch-up scan
    wait_for("the new tag", lambda: m2.library().get(str(a)) == (doc, "new"), why=m2.library)
    assert m2.emb.embedded == 0 and m.emb.embedded == embedded  # nothing embedded again
    assert m2.vector_meta(a)["tag"] == "new"
    assert m2.app.search("lighthouse", k=1, tag="new")[0]["path"] == str(a)
