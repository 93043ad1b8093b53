"""trio's side of the runtime interface: clock, tasks in a nursery, callbacks, timers, waiters.

trio has no callback queue of its own that is safe to raise from, so `call_soon` and `call_at`
run their callbacks from small tasks in the runtime's nursery, and log what they raise (as
asyncio's loop does) instead of letting it tear the nursery down.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    import logging

    from multicorn.runtime.base import Waiter


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


class TrioTimer:
    """The handle `call_at` returns: cancelling its scope before it fires skips the callback."""

    __slots__ = ("_scope",)

    def __init__(self) -> None:
        self._scope = trio.CancelScope()

    def cancel(self) -> None:
        self._scope.cancel()


class TrioRuntime:
    """Spawns into the given nursery; each task gets its own cancel scope as its handle.

    The nursery decides how long tasks may live: the server's for server-wide work and datagram
    endpoints, a connection's own for that connection's application tasks (trio waits for them
    before the connection's task ends, and cancels them only when the session ends).
    """

    __slots__ = ("_logger", "_nursery", "_soon", "now")

    def __init__(self, nursery: trio.Nursery, logger: logging.Logger) -> None:
        self._nursery = nursery
        self._logger = logger
        self._soon: list[Callable[[], object]] = []
        self.now: Callable[[], float] = trio.current_time

    def spawn(self, fn: Callable[..., Awaitable[object]], *args: object) -> trio.CancelScope:
        scope = trio.CancelScope()

        async def run() -> None:
            with scope:
                await fn(*args)

        self._nursery.start_soon(run)
        return scope

    def waiter(self) -> TrioWaiter:
        return TrioWaiter()

    def call_soon(self, fn: Callable[[], object]) -> None:
        # One task runs every callback queued before it starts: a batch costs one task.
        self._soon.append(fn)
        if len(self._soon) == 1:
            self._nursery.start_soon(self._run_soon)

    async def _run_soon(self) -> None:
        callbacks, self._soon = self._soon, []
        for fn in callbacks:
            self._run_callback(fn)

    def call_at(self, when: float, fn: Callable[[], object]) -> TrioTimer:
        timer = TrioTimer()
        self._nursery.start_soon(self._fire_at, when, fn, timer)
        return timer

    async def _fire_at(self, when: float, fn: Callable[[], object], timer: TrioTimer) -> None:
        with timer._scope:
            await trio.sleep_until(when)
            # No checkpoint from here on: a cancel() after this point finds the callback run.
            self._run_callback(fn)

    def _run_callback(self, fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception:
            self._logger.exception("exception in callback %r", fn)

    async def wait_for(self, waiter: Waiter, timeout: float | None) -> bool:
        if waiter.is_set():
            return True  # a checkpoint under an expired deadline would say False
        with trio.move_on_after(math.inf if timeout is None else timeout):
            await waiter.wait()
            return True
        return False
