"""Worker threads for `Runtime.run_sync` on backends without a thread cache of their own
(asyncio; trio has `trio.to_thread`).

The threads are daemon threads, reused while idle and gone after `_IDLE_EXIT` seconds without
work. Daemon, unlike `concurrent.futures.ThreadPoolExecutor`'s (which the interpreter joins at
exit): a thread stuck in an application call after the graceful timeout must not keep the
process alive. The cache itself sets no bound on how many run at once; the caller does (the
WSGI bridge holds `wsgi_max_workers` slots).
"""

from __future__ import annotations

import queue
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

# An idle thread waits this long for new work before it ends.
_IDLE_EXIT = 10.0

# A job: the function, and what to call (in the worker thread) with its result or exception.
_Job = tuple["Callable[[], object]", "Callable[[object, BaseException | None], None]"]


class ThreadCache:
    """Daemon worker threads, started as needed and reused while idle."""

    def __init__(self, name: str = "multicorn-worker") -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        # Idle threads not yet promised to a queued job.
        self._idle = 0
        self._started = 0

    def submit(
        self,
        fn: Callable[[], object],
        done: Callable[[object, BaseException | None], None],
    ) -> None:
        """Run `fn()` in a worker thread, then `done(result, None)` or `done(None, exc)` there."""
        with self._lock:
            if self._idle:
                self._idle -= 1  # that thread's next get() is this job
                spawn = False
            else:
                spawn = True
                self._started += 1
                number = self._started
        self._jobs.put((fn, done))
        if spawn:
            threading.Thread(target=self._work, name=f"{self._name}-{number}", daemon=True).start()

    def _work(self) -> None:
        while True:
            try:
                fn, done = self._jobs.get(timeout=_IDLE_EXIT)
            except queue.Empty:
                with self._lock:
                    if self._idle:
                        self._idle -= 1
                        return
                # Every idle slot was promised to a job on its way: wait for it.
                continue
            try:
                result = fn()
            except BaseException as exc:
                done(None, exc)
            else:
                done(result, None)
            del fn, done
            with self._lock:
                self._idle += 1
