"""The folder mirror: watch folders (inotify, or polling for network mounts) and queue what changed.

Events only mark paths pending (watchers/settle.py decides when they are ready, and which are moves); a
settle thread ticks it and hands many files per call to the sink, so a burst of files costs a few
transactions. Nothing here opens a file: stat and directory listings only; the sink queues the jobs.

A folder that disappears or cannot be read is reported unhealthy on the HealthBoard and its documents stay;
when it comes back it is watched again and rescanned.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

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
from watchers.mounts import NETWORK_FS, filesystem_type, probe
from watchers.settle import FolderSink, Settler

log = logging.getLogger(__name__)

KIND = "folder"

# inotify out of watches or instances, or not there at all: fall back to polling.
_INOTIFY_LIMITS = {errno.ENOSPC, errno.EMFILE, errno.ENFILE, errno.ENOSYS, errno.EINVAL}
# Only these events matter; opening and reading a file (our own ingest does) must not come back as a change.
_EVENTS = [
    FileCreatedEvent, FileModifiedEvent, FileMovedEvent, FileDeletedEvent, DirCreatedEvent, DirMovedEvent,
    DirDeletedEvent,
]


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
