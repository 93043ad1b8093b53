"""asyncio's side of the runtime interface: clock, tasks, callbacks, timers, waiters.

uvloop runs this same code; every primitive here is the loop's own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from multicorn.runtime.callbacks import run_callback
from multicorn.runtime.threads import ThreadCache

if TYPE_CHECKING:
    import logging

    from multicorn.runtime.base import Waiter

_T = TypeVar("_T")


class AsyncioRuntime:
    """The `Runtime` for one event loop, shared by every connection the loop serves."""

    def __init__(self, loop: asyncio.AbstractEventLoop, logger: logging.Logger) -> None:
        self._loop = loop
        self._logger = logger
        self.now = loop.time
        self._tasks: set[asyncio.Task[object]] = set()
        self._forget = self._tasks.discard  # bound once: a done callback per task
        self._threads: ThreadCache | None = None  # made by the first run_sync

    def spawn(self, fn: Callable[..., Awaitable[object]], *args: object) -> asyncio.Task[object]:
        # Our callers pass coroutine functions; create_task wants the coroutine type itself. (Typed
        # through Any rather than cast(), a function call at run time: this runs per request.)
        coro: Any = fn(*args)
        task: asyncio.Task[object] = self._loop.create_task(coro)
        # The loop keeps only weak references to tasks.
        self._tasks.add(task)
        task.add_done_callback(self._forget)
        return task

    def waiter(self) -> AsyncioWaiter:
        return AsyncioWaiter(self._loop)

    def call_soon(self, fn: Callable[[], object]) -> None:
        self._loop.call_soon(self._run_callback, fn)

    def call_at(self, when: float, fn: Callable[[], object]) -> asyncio.TimerHandle:
        return self._loop.call_at(when, self._run_callback, fn)

    def _run_callback(self, fn: Callable[[], object]) -> None:
        run_callback(fn, self._logger)

    async def wait_for(self, waiter: Waiter, timeout: float | None) -> bool:
        if waiter.is_set():
            return True
        try:
            await asyncio.wait_for(waiter.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def run_sync(self, fn: Callable[[], _T]) -> _T:
        if self._threads is None:
            self._threads = ThreadCache()
        loop = self._loop
        future: asyncio.Future[_T] = loop.create_future()

        def settle(result: Any, exc: BaseException | None) -> None:
            if future.done():
                return  # the waiting task was cancelled: the outcome is dropped
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(result)

        def done(result: object, exc: BaseException | None) -> None:
            # RuntimeError: the loop is closed, and nobody waits any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, result, exc)

        self._threads.submit(fn, done)
        return await future

    def call_from_thread(self, fn: Callable[[], object]) -> None:
        self._loop.call_soon_threadsafe(self._run_callback, fn)

    async def cancel_all(self) -> None:
        """Cancel every task still running (the session is over) and let them unwind briefly."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)


class AsyncioWaiter:
    """A resettable event, like asyncio.Event but lighter: an asyncio.Event carries a deque
    (about 600 bytes) from birth, and every idle connection holds one or two waiters. Here the
    waiting futures live in a list made when the first one waits."""

    __slots__ = ("_flag", "_futures", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._flag = False
        self._futures: list[asyncio.Future[bool]] | None = None

    def set(self) -> None:
        if self._flag:
            return
        self._flag = True
        futures = self._futures
        if futures:
            self._futures = None
            for future in futures:
                if not future.done():
                    future.set_result(True)

    def clear(self) -> None:
        self._flag = False

    def is_set(self) -> bool:
        return self._flag

    async def wait(self) -> bool:
        if self._flag:
            return True
        future: asyncio.Future[bool] = self._loop.create_future()
        if self._futures is None:
            self._futures = [future]
        else:
            self._futures.append(future)
        try:
            return await future
        finally:
            futures = self._futures
            if futures is not None and future in futures:
                futures.remove(future)  # cancelled: it must not stay behind
