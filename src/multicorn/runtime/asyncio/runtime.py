"""asyncio's side of the runtime interface: clock, tasks, callbacks, timers, waiters.

uvloop runs this same code; every primitive here is the loop's own.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from multicorn.runtime.callbacks import run_callback

if TYPE_CHECKING:
    import logging

    from multicorn.runtime.base import Waiter


class AsyncioRuntime:
    """The `Runtime` for one event loop, shared by every connection the loop serves."""

    def __init__(self, loop: asyncio.AbstractEventLoop, logger: logging.Logger) -> None:
        self._loop = loop
        self._logger = logger
        self.now = loop.time
        self._tasks: set[asyncio.Task[object]] = set()
        self._forget = self._tasks.discard  # bound once: a done callback per task

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
        if sys.version_info >= (3, 11):
            # Not asyncio.wait_for: before 3.12 it returns normally when the task is cancelled
            # in the same loop turn as the waiter is set, and the cancellation is lost. That
            # turned asyncio.run's SIGINT (a cancel of the main task) during lifespan startup
            # into nothing, and could let an app task survive the shutdown's cancel.
            try:
                async with asyncio.timeout(timeout):
                    await waiter.wait()
            except TimeoutError:
                return False
            return True
        try:  # 3.10 has no asyncio.timeout
            await asyncio.wait_for(waiter.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

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
