"""trio's side of the runtime interface: clock, tasks in a nursery, resettable waiters."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import trio


class TrioWaiter:
    """trio.Event cannot be cleared; a cleared waiter swaps in a fresh one."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        self._event.set()

    def clear(self) -> None:
        if self._event.is_set():
            self._event = trio.Event()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        await self._event.wait()


class TrioRuntime:
    """Spawns into the given nursery; each task gets its own cancel scope as its handle."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.now = trio.current_time

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> trio.CancelScope:
        scope = trio.CancelScope()

        async def run() -> None:
            with scope:
                await fn(*args)

        self._nursery.start_soon(run)
        return scope

    def waiter(self) -> TrioWaiter:
        return TrioWaiter()

    def call_soon(self, fn: Callable[[], object]) -> None:
        # The connection's writer task already gathers everything written before it runs.
        fn()

    async def wait_for(self, waiter: Any, timeout: float | None) -> bool:
        with trio.move_on_after(math.inf if timeout is None else timeout):
            await waiter.wait()
            return True
        return False
