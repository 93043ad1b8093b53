"""Watching source files for `--reload`: which files count, and noticing that one changed.

Owns the include/exclude rule and two watchers with one interface (`changes()` returns the
paths changed since the last call, without blocking; `close()`): `watchfiles` (OS
notifications, in a thread of its own) when it is importable, else polling modification times
once a second from the supervisor's loop. The supervisor decides what a change means.
"""

from __future__ import annotations

import fnmatch
import os
import queue
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final, Protocol

POLL_INTERVAL: Final = 1.0  # seconds between two scans by the polling watcher


class FileFilter:
    """A file is watched when its name matches an include pattern and neither it nor any
    directory between a watched directory and it matches an exclude pattern."""

    def __init__(
        self, dirs: Sequence[str], includes: Sequence[str], excludes: Sequence[str]
    ) -> None:
        self.dirs = [Path(d).resolve() for d in dirs]
        self._includes = list(includes)
        self._excludes = list(excludes)

    def excluded(self, name: str) -> bool:
        return any(fnmatch.fnmatch(name, pattern) for pattern in self._excludes)

    def __call__(self, path: str) -> bool:
        resolved = Path(path).resolve()
        if not any(fnmatch.fnmatch(resolved.name, pattern) for pattern in self._includes):
            return False
        for root in self.dirs:
            try:
                parts = resolved.relative_to(root).parts
            except ValueError:
                continue
            return not any(self.excluded(part) for part in parts)
        return False


class Watcher(Protocol):
    def changes(self) -> list[str]: ...
    def close(self) -> None: ...


class PollingWatcher:
    """Compares modification times (and the set of files) every POLL_INTERVAL seconds."""

    def __init__(self, files: FileFilter, *, interval: float = POLL_INTERVAL) -> None:
        self._filter = files
        self._interval = interval
        self._next = time.monotonic() + interval
        self._seen = self._scan()

    def _scan(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for root in self._filter.dirs:
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = [d for d in dirnames if not self._filter.excluded(d)]
                for name in filenames:
                    path = os.path.join(dirpath, name)
                    if not self._filter(path):
                        continue
                    try:
                        found[path] = os.stat(path).st_mtime_ns
                    except OSError:
                        continue  # removed between listing and stat
        return found

    def changes(self) -> list[str]:
        now = time.monotonic()
        if now < self._next:
            return []
        self._next = now + self._interval
        seen = self._scan()
        old = self._seen
        self._seen = seen
        changed = [path for path, mtime in seen.items() if old.get(path) != mtime]
        return sorted(changed + [path for path in old if path not in seen])

    def close(self) -> None:
        pass


class WatchfilesWatcher:
    """Operating-system notifications through `watchfiles`, gathered by a thread."""

    def __init__(self, files: FileFilter) -> None:
        self._filter = files
        self._stop = threading.Event()
        self._queue: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="multicorn-reload", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import watchfiles

        batches = watchfiles.watch(
            *self._filter.dirs,
            watch_filter=lambda change, path: self._filter(path),
            stop_event=self._stop,
            debounce=200,
            raise_interrupt=False,
        )
        for batch in batches:
            for _, path in batch:
                self._queue.put(path)

    def changes(self) -> list[str]:
        paths: set[str] = set()
        while True:
            try:
                paths.add(self._queue.get_nowait())
            except queue.Empty:
                return sorted(paths)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)


def watchfiles_available() -> bool:
    try:
        import watchfiles  # noqa: F401
    except ImportError:
        return False
    return True


def make_watcher(dirs: Sequence[str], includes: Sequence[str], excludes: Sequence[str]) -> Watcher:
    """A watcher over `dirs` (the current directory when empty): watchfiles when it can be
    imported, else polling."""
    files = FileFilter(dirs or [os.getcwd()], includes, excludes)
    if watchfiles_available():
        return WatchfilesWatcher(files)
    return PollingWatcher(files)
