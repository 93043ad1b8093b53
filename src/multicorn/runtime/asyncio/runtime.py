"""asyncio's side of the runtime interface: clock, tasks, waiters."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

_EAGER = sys.version_info >= (3, 12)


class AsyncioRuntime:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.now = loop.time
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> asyncio.Task[Any]:
        coro: Any = fn(*args)
        if _EAGER:
            # Python 3.12+: run the task at once, up to its first real wait. A handler that
            # answers without waiting finishes inside this call, so its response goes out with
            # this read's other work instead of one loop turn later.
            task: asyncio.Task[Any] = asyncio.Task(
                coro,
                loop=self._loop,
                eager_start=True,  # type: ignore[call-arg]  # 3.12+ only
            )
            if task.done():
                return task
        else:
            task = self._loop.create_task(coro)
        # The loop keeps only weak references to tasks.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def waiter(self) -> asyncio.Event:
        return asyncio.Event()

    def call_soon(self, fn: Callable[[], object]) -> None:
        self._loop.call_soon(fn)

    async def wait_for(self, waiter: Any, timeout: float | None) -> bool:
        if waiter.is_set():
            return True
        try:
            await asyncio.wait_for(waiter.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)
