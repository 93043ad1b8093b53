"""asyncio's side of the runtime interface: clock, tasks, waiters."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any


class AsyncioRuntime:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.now = loop.time
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = self._loop.create_task(fn(*args))  # type: ignore[arg-type]
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
