"""The folder mirror: watch folders (inotify, or polling for network mounts) and queue what changed.

Events only mark paths pending. A settle thread hands a file over once its size and modification time have
stayed the same for `settle_s` (scanners and network copies write in pieces), many files per call, so a
burst of files costs a few transactions. Deletions wait a moment too, so a file deleted in one watched
folder and created under the same name in another (two watches cannot pair the move) becomes a move, which
keeps its document. Nothing here opens a file: stat and directory listings only; the sink queues the jobs.

A folder that disappears or cannot be read is reported unhealthy on the HealthBoard and its documents stay;
when it comes back it is watched again and rescanned.
"""

from __future__ import annotations

import errno
import logging
import os
import stat as statmod
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from kb.paths import ignored
from kb.settings import WatchedFolder
from watchers.health import OK, STOPPED, HealthBoard

log = logging.getLogger(__name__)

KIND = "folder"

# Filesystems whose changes made on other machines inotify never sees: watched by polling in mode 'auto'.
NETWORK_FS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "fuse.glusterfs", "davfs", "fuse.davfs2",
    "fuse.sshfs", "sshfs", "fuse.rclone", "rclone", "afs", "ncpfs", "lustre", "fuse.s3fs", "fuse.gcsfuse",
    "fuse.cephfs", "fuse.smbnetfs", "fuse.curlftpfs", "gpfs", "beegfs", "orangefs",
})
# inotify out of watches or instances, or not there at all: fall back to polling.
_INOTIFY_LIMITS = {errno.ENOSPC, errno.EMFILE, errno.ENFILE, errno.ENOSYS, errno.EINVAL}
# Only these events matter; opening and reading a file (our own ingest does) must not come back as a change.
_EVENTS = [
    FileCreatedEvent, FileModifiedEvent, FileMovedEvent, FileDeletedEvent, DirCreatedEvent, DirMovedEvent,
    DirDeletedEvent,
]


class FolderSink(Protocol):
    """Where the watcher sends what changed (the composition root queues jobs; tests use a fake)."""

    def changed(self, paths: Sequence[Path]) -> None:
        """Files created or modified, now stable: queue their ingest."""

    def removed(self, paths: Sequence[Path]) -> None:
        """Files or whole folders deleted: queue forgetting them."""

    def moved(self, pairs: Sequence[tuple[Path, Path]]) -> None:
        """Files or folders moved or renamed (old, new): queue a move, which keeps their documents."""

    def rescan(self, roots: Sequence[Path]) -> None:
        """Folders to compare with the library as a whole (a watched folder came back)."""


Stat = tuple[int, int]  # (size, mtime_ns)


def file_stat(path: Path) -> Stat | None:
    """Size and modification time of a regular file; None when it is gone or not a file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not statmod.S_ISREG(st.st_mode):
        return None
    return st.st_size, st.st_mtime_ns


@dataclass
class _Pending:
    stat: Stat | None
    since: float  # when the stat was last seen to change (or an event came)


class Settler:
    """What to hand over, and when: the watcher's logic without threads or observers (unit-testable).

    Thread-safe: observer threads report events, the settle thread calls `tick` about every 0.2 s.
    """

    def __init__(
        self, sink: FolderSink, *, settle_s: float, clock: Callable[[], float] = time.monotonic,
        stat: Callable[[Path], Stat | None] = file_stat,
        expand: Callable[[Path], Iterator[Path]] = lambda d: iter(()),
        alive: Callable[[Path], bool] = lambda p: True, hold_s: float | None = None,
    ) -> None:
        self.sink = sink
        self.settle_s = settle_s
        self.clock = clock
        self.stat = stat
        self.expand = expand  # the files under a new folder (it may have been filled before it was watched)
        self.alive = alive  # whether the watched folder holding a path is there (if not, nothing is removed)
        # deletions wait this long for a matching creation elsewhere (a move between two watched folders)
        self.hold_s = max(settle_s, 0.5) if hold_s is None else hold_s
        self.pair_wait_s = max(10 * self.hold_s, 5.0)  # ...or longer while a same-named file is still written
        self._lock = threading.Lock()
        self._pending: dict[Path, _Pending] = {}
        self._gone: dict[Path, tuple[float, bool]] = {}  # path -> (when, is_dir)
        self._new_dirs: dict[Path, float] = {}  # created folders, held for pairing with a deleted one
        self._to_expand: list[Path] = []
        self._moves: list[tuple[Path, Path]] = []
        self._retry: list[tuple[str, list[Any]]] = []

    # -- events (observer threads) ----------------------------------------------------------------
    def changed(self, path: Path) -> None:
        with self._lock:
            self._gone.pop(path, None)  # deleted and created again: a change, not a removal
            self._pending[path] = _Pending(None, self.clock())

    def dir_created(self, path: Path) -> None:
        with self._lock:
            self._gone.pop(path, None)
            self._new_dirs[path] = self.clock()
            self._to_expand.append(path)

    def deleted(self, path: Path, is_dir: bool) -> None:
        with self._lock:
            self._pending.pop(path, None)
            if is_dir:
                self._new_dirs.pop(path, None)
                self._drop_under(path)
            self._gone[path] = (self.clock(), is_dir)

    def moved(self, src: Path, dst: Path, is_dir: bool) -> None:
        with self._lock:
            self._gone.pop(dst, None)
            now = self.clock()
            if not is_dir and src in self._pending:
                # Renamed while still settling (a download renamed when done, a new file renamed at once):
                # it settles under its new name; the old name is a deletion, which pairs with it if both
                # names are the same (a move to another folder) and is a no-op if the library never had it.
                del self._pending[src]
                self._pending[dst] = _Pending(None, now)
                self._gone[src] = (now, False)
                return
            self._moves.append((src, dst))
            if is_dir:
                for p in [p for p in self._pending if src in p.parents]:
                    del self._pending[p]
                    self._pending[dst / p.relative_to(src)] = _Pending(None, now)
                if src in self._new_dirs:
                    self._new_dirs[dst] = self._new_dirs.pop(src)

    def busy(self) -> bool:
        """Whether anything waits to be handed over."""
        with self._lock:
            return bool(self._pending or self._gone or self._new_dirs or self._moves or self._to_expand
                        or self._retry)

    # -- the settle thread ------------------------------------------------------------------------
    def tick(self) -> None:
        """Hand over what is ready: stable files, held deletions, moves, in one sink call each."""
        with self._lock:
            to_expand, self._to_expand = self._to_expand, []
        for d in to_expand:  # outside the lock: a big new folder must not hold up the observers
            try:
                found = list(self.expand(d))
            except OSError:
                found = []
            with self._lock:
                now = self.clock()
                for f in found:
                    self._pending.setdefault(f, _Pending(None, now))
        with self._lock:
            retry, self._retry = self._retry, []
            moves, self._moves = self._moves, []
            now = self.clock()
            settled = self._settled(now)
            removed = self._pair_and_release(now, settled, moves)
            for d in [d for d, t in self._new_dirs.items() if now - t >= self.hold_s]:
                del self._new_dirs[d]
            # (pairing may have taken some: the files of a folder that turned out to be moved)
            changed = [p for p in settled if p in self._pending and not self._under_new_dir(p)]
            for p in changed:
                del self._pending[p]
        calls: list[tuple[str, list[Any]]] = [
            *retry, ("moved", moves), ("changed", sorted(changed)), ("removed", _outermost(removed)),
        ]
        for method, items in calls:
            if not items:
                continue
            try:
                getattr(self.sink, method)(items)
            except Exception as exc:  # a busy catalog: try again at the next tick, keep watching
                log.warning("could not queue %d folder changes (%s): %s; retrying", len(items), method, exc)
                with self._lock:
                    self._retry.append((method, items))

    def _settled(self, now: float) -> list[Path]:
        out = []
        for path, p in list(self._pending.items()):
            st = self.stat(path)
            if st is None:  # gone again (a deletion event says whether to forget it) or not a file
                del self._pending[path]
            elif st != p.stat:
                p.stat, p.since = st, now
            elif now - p.since >= self.settle_s:
                out.append(path)
        return out

    def _pair_and_release(self, now: float, settled: list[Path], moves: list[tuple[Path, Path]]) -> list[Path]:
        """Pair held deletions with same-named new files or folders (moves); release the rest as removals."""
        removed: list[Path] = []
        if not self._gone:
            return removed
        settled_by_name: dict[str, list[Path]] = {}
        for p in settled:
            settled_by_name.setdefault(p.name, []).append(p)
        waiting = {p.name for p in self._pending}
        for g, (t, is_dir) in list(self._gone.items()):
            partner: Path | None = None
            if is_dir:
                partner = next((d for d in self._new_dirs if d.name == g.name and d != g), None)
                if partner is not None:
                    del self._new_dirs[partner]
                    self._drop_under(partner)
            else:
                candidates = [p for p in settled_by_name.get(g.name, []) if p != g]
                if candidates:
                    partner = candidates[0]
                    settled_by_name[g.name].remove(partner)
                    settled.remove(partner)
                    del self._pending[partner]
            if partner is not None:
                del self._gone[g]
                moves.append((g, partner))
                continue
            age = now - t
            if age < self.hold_s or (not is_dir and g.name in waiting and age < self.pair_wait_s):
                continue
            del self._gone[g]
            if self.alive(g):
                removed.append(g)
            # else: the watched folder itself is gone (unmounted, deleted): its documents stay
        return removed

    def _under_new_dir(self, path: Path) -> bool:
        return any(d in self._new_dirs for d in path.parents)

    def _drop_under(self, folder: Path) -> None:
        for p in [p for p in self._pending if folder in p.parents]:
            del self._pending[p]


def _outermost(paths: list[Path]) -> list[Path]:
    """Removals without those inside a removed folder (one forget of the folder covers them)."""
    chosen = set(paths)
    return sorted(p for p in chosen if not any(a in chosen for a in p.parents))


# -- where a folder lives -------------------------------------------------------------------------------
def filesystem_type(path: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> str | None:
    """The type of the filesystem holding `path` (from the kernel's mount table), None if unknown."""
    try:
        target = os.path.realpath(path)
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return None
    best, best_type = "", None
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) < 5 or not right:
            continue
        mount = _unescape(fields[4])
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, best_type = mount, right.split()[0]
    return best_type


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash in mount points as octal escapes (\040)
    import re

    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def probe(root: Path) -> str | None:
    """Why a watched folder cannot be watched now (missing, not a folder, unreadable), or None if it can."""
    try:
        st = os.stat(root)
        if not statmod.S_ISDIR(st.st_mode):
            return "not a folder"
        with os.scandir(root) as entries:
            next(entries, None)
    except FileNotFoundError:
        return "the folder is missing (deleted, renamed or not mounted); its documents are kept"
    except PermissionError:
        return "permission denied: the folder cannot be read; its documents are kept"
    except OSError as exc:
        return f"cannot read the folder: {exc.strerror or exc}; its documents are kept"
    return None


# -- the watcher ----------------------------------------------------------------------------------------
class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: FolderWatcher, watch: _Watch) -> None:
        self.watcher = watcher
        self.watch = watch

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            self.watcher._on_event(self.watch, event)
        except Exception:  # one odd event must never stop the observer
            log.exception("folder event %r could not be handled", event)


@dataclass
class _Watch:
    folder: WatchedFolder
    observer: BaseObserver | None = None
    mode: str | None = None
    problem: str | None = "starting"  # why it is not watched now; None while it is
    identity: tuple[int, int] | None = None  # (device, inode) of the folder when it was scheduled

    @property
    def root(self) -> Path:
        return self.folder.path


class FolderWatcher:
    """Watches several folders and reports changes to a FolderSink; health goes to the HealthBoard."""

    def __init__(
        self, folders: list[WatchedFolder], sink: FolderSink, health: HealthBoard, *, ignore: list[str],
        settle_s: float, poll_s: float, clock: Callable[[], float] = time.monotonic, tick_s: float = 0.2,
        health_every_s: float = 2.0, mountinfo: Path = Path("/proc/self/mountinfo"),
        exclude: Sequence[Path] = (), inotify: Callable[[], BaseObserver] = Observer,
    ) -> None:
        """`exclude`: folders never reported (kb's own data directory, should a watched folder hold it);
        `inotify`: the event observer's factory (a failing one in tests of the fallback to polling)."""
        self.sink = sink
        self.health = health
        self.ignore = list(ignore)
        self.poll_s = poll_s
        self.tick_s = tick_s
        self.health_every_s = health_every_s
        self.mountinfo = mountinfo
        self.clock = clock
        self.exclude = [Path(os.path.abspath(p)) for p in exclude]
        self._inotify = inotify
        self._watches = [_Watch(WatchedFolder(path=Path(os.path.abspath(f.path)), tag=f.tag, mode=f.mode))
                         for f in folders]
        self.settler = Settler(sink, settle_s=settle_s, clock=clock, expand=self._files_under, alive=self._alive)
        self._stop = threading.Event()
        self._check_now = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        for w in self._watches:
            self.health.register(KIND, str(w.root), tag=w.folder.tag)
        self._check_health(first=True)
        self._thread = threading.Thread(target=self._loop, name="kb-folders", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            for w in self._watches:
                self._unschedule(w)
                self.health.update(KIND, str(w.root), state=STOPPED)

    def modes(self) -> dict[str, str | None]:
        """How each folder is watched now ('events', 'poll', or None while it is not)."""
        with self._lock:
            return {str(w.root): w.mode for w in self._watches}

    def idle(self) -> bool:
        """Nothing waits to settle (tests wait for this before checking the library)."""
        return not self.settler.busy()

    def _loop(self) -> None:
        next_check = self.clock() + self.health_every_s
        while not self._stop.wait(self.tick_s):
            try:
                self.settler.tick()
                if self._check_now.is_set() or self.clock() >= next_check:
                    self._check_now.clear()
                    self._check_health()
                    next_check = self.clock() + self.health_every_s
            except Exception:  # keep watching whatever happened
                log.exception("the folder watcher's settle loop failed; continuing")

    # -- health -----------------------------------------------------------------------------------
    def _check_health(self, first: bool = False) -> None:
        back: list[Path] = []
        with self._lock:
            for w in self._watches:
                problem = probe(w.root)
                name = str(w.root)
                if problem is not None:
                    if w.problem != problem:
                        log.warning("watched folder %s: %s", name, problem)
                    self._unschedule(w)
                    w.problem = problem
                    self.health.update(KIND, name, error=problem, mode=None)
                    continue
                identity = _identity(w.root)
                dead = w.observer is not None and (
                    identity != w.identity or not all(e.is_alive() for e in w.observer.emitters)
                )
                if w.observer is None or dead:
                    was_down = w.problem is not None or dead
                    self._unschedule(w)
                    self._schedule(w)
                    if w.problem is None and was_down and not first:
                        log.info("watched folder %s is back: rescanning it", name)
                        back.append(w.root)
        if back:
            try:
                self.sink.rescan(back)
            except Exception as exc:
                log.warning("could not queue a rescan of %s: %s", ", ".join(map(str, back)), exc)

    def _schedule(self, w: _Watch) -> None:
        name = str(w.root)
        mode, reason = w.folder.mode, None
        if mode == "auto":
            fs = filesystem_type(w.root, self.mountinfo)
            if fs in NETWORK_FS:
                mode, reason = "poll", f"network filesystem ({fs})"
            else:
                mode = "events"
        observer: BaseObserver | None = None
        if mode == "events":
            try:
                observer = self._start(self._inotify(), w)
            except OSError as exc:
                why = f"inotify unavailable: {exc.strerror or exc}"
                if exc.errno in (errno.ENOSPC, errno.EMFILE, errno.ENFILE):
                    why = ("the inotify watch limit is reached (raise fs.inotify.max_user_watches or "
                           "max_user_instances)")
                if w.folder.mode == "events" and exc.errno not in _INOTIFY_LIMITS:
                    w.problem = why
                    self.health.update(KIND, name, error=why, mode=None)
                    return
                log.warning("watched folder %s: %s; watching it by polling every %.0f s", name, why, self.poll_s)
                mode, reason = "poll", why
        if observer is None:
            try:
                observer = self._start(PollingObserver(timeout=self.poll_s), w)
            except OSError as exc:
                w.problem = f"cannot watch the folder: {exc.strerror or exc}"
                self.health.update(KIND, name, error=w.problem, mode=None)
                return
        w.observer, w.mode, w.problem, w.identity = observer, mode, None, _identity(w.root)
        self.health.update(KIND, name, state=OK, mode=mode, detail={"reason": reason} if reason else {})

    def _start(self, observer: BaseObserver, w: _Watch) -> BaseObserver:
        # Started first, then scheduled: a failing inotify watch then raises here, in this thread.
        observer.daemon = True
        observer.start()
        try:
            observer.schedule(_Handler(self, w), str(w.root), recursive=True, event_filter=_EVENTS)
        except BaseException:
            observer.stop()
            observer.join(timeout=5)
            raise
        return observer

    def _unschedule(self, w: _Watch) -> None:
        observer, w.observer, w.mode, w.identity = w.observer, None, None, None
        if observer is not None:
            observer.stop()
            observer.join(timeout=5)

    # -- events -----------------------------------------------------------------------------------
    def _on_event(self, w: _Watch, event: FileSystemEvent) -> None:
        if event.is_synthetic:
            return  # watchdog's own listing of a new or moved folder: we list it ourselves
        src = Path(os.fsdecode(event.src_path))
        if src == w.root or w.root not in src.parents:
            self._check_now.set()  # the watched folder itself was deleted or moved away
            return
        if any((x == src or x in src.parents) and w.root in x.parents for x in self.exclude):
            return  # inside an excluded folder that is inside this watched one (not: the inbox in data/)
        self.health.event(KIND, str(w.root))
        kind = event.event_type
        if kind == "moved":
            dst = Path(os.fsdecode(event.dest_path))
            src_ok = not self._ignored(src, w.root)
            dst_root = self._root_of(dst)
            dst_ok = dst_root is not None and not self._ignored(dst, dst_root)
            if src_ok and dst_ok:
                self.settler.moved(src, dst, event.is_directory)
            elif src_ok:
                self.settler.deleted(src, event.is_directory)
            elif dst_ok:
                self._created(dst, event.is_directory)
            return
        if self._ignored(src, w.root):
            return
        if kind == "created":
            self._created(src, event.is_directory)
        elif kind == "modified" and not event.is_directory:
            self.settler.changed(src)
        elif kind == "deleted":
            self.settler.deleted(src, event.is_directory)

    def _created(self, path: Path, is_dir: bool) -> None:
        if is_dir:
            self.settler.dir_created(path)
        else:
            self.settler.changed(path)

    def _root_of(self, path: Path) -> Path | None:
        best: Path | None = None
        for w in self._watches:
            if w.root in path.parents and (best is None or len(w.root.parts) > len(best.parts)):
                best = w.root
        return best

    def _ignored(self, path: Path, root: Path) -> bool:
        return any(ignored(part, self.ignore) for part in path.relative_to(root).parts)

    def _alive(self, path: Path) -> bool:
        root = self._root_of(path)
        return root is not None and probe(root) is None

    def _files_under(self, folder: Path) -> Iterator[Path]:
        """The files of a new folder, except ignored names (listing only, nothing is opened)."""
        root = self._root_of(folder)
        if root is None or self._ignored(folder, root):
            return
        for top, dirs, files in os.walk(folder):
            dirs[:] = [d for d in dirs if not ignored(d, self.ignore)]
            for f in files:
                if not ignored(f, self.ignore):
                    yield Path(top) / f


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino
