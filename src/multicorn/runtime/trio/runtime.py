"""trio's side of the runtime interface: clock, tasks in a nursery, callbacks, timers, waiters.

trio has no callback queue of its own that is safe to raise from, so `call_soon` and `call_at`
run their callbacks from tasks in the runtime's nursery, and log what they raise (as asyncio's
loop does) instead of letting it tear the nursery down.

Timers work like asyncio's: one heap per runtime and one task that sleeps until its earliest
entry, so arming a timer costs a heap push rather than a task (a QUIC endpoint re-arms one per
connection on almost every datagram), timers due together run in deadline order, and a cancelled
timer is only marked, with the heap compacted once most of it is dead. The task exits when no
live timer is left, so it never holds a connection's nursery open for nothing.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import trio

from multicorn.runtime.callbacks import run_callback

if TYPE_CHECKING:
    import logging

    from multicorn.runtime.base import Waiter

_T = TypeVar("_T")


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


# Compact the heap once this many cancelled timers sit in it and they are the majority.
_MIN_DEAD_TIMERS = 64


class TrioTimer:
    """The handle `call_at` returns; `cancel()` before it fires and the callback never runs."""

    __slots__ = ("callback", "done", "in_heap", "runtime")

    def __init__(self, runtime: TrioRuntime, callback: Callable[[], object]) -> None:
        self.runtime = runtime
        self.callback = callback
        self.done = False  # fired or cancelled
        self.in_heap = True

    def cancel(self) -> None:
        if not self.done:
            self.done = True
            self.runtime._timer_cancelled(self)


class TrioRuntime:
    """Spawns into the given nursery; each task gets its own cancel scope as its handle.

    The nursery decides how long tasks may live: the server's for server-wide work and datagram
    endpoints, a connection's own for that connection's application tasks (trio waits for them
    before the connection's task ends, and cancels them only when the session ends).
    """

    __slots__ = (
        "_dead_timers",
        "_logger",
        "_nursery",
        "_soon",
        "_threads",
        "_timer_sequence",
        "_timer_task",
        "_timer_wake",
        "_timers",
        "_token",
        "now",
    )

    def __init__(self, nursery: trio.Nursery, logger: logging.Logger) -> None:
        self._nursery = nursery
        self._logger = logger
        self._soon: list[Callable[[], object]] = []
        # (when, sequence, timer): the sequence keeps timers due at the same time in order.
        self._timers: list[tuple[float, int, TrioTimer]] = []
        self._timer_sequence = itertools.count()
        self._dead_timers = 0  # cancelled timers still in the heap
        self._timer_task = False
        self._timer_wake: trio.CancelScope | None = None  # the timer task's sleep, while it sleeps
        self.now: Callable[[], float] = trio.current_time
        # For call_from_thread, which runs outside trio and cannot look the token up there.
        self._token = trio.lowlevel.current_trio_token()
        # trio.to_thread's default limiter caps every thread in the process at 40; the bound on
        # how many run at once is the caller's (see Runtime.run_sync).
        self._threads: trio.CapacityLimiter | None = None

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
        timer = TrioTimer(self, fn)
        heapq.heappush(self._timers, (when, next(self._timer_sequence), timer))
        if not self._timer_task:
            self._timer_task = True
            self._nursery.start_soon(self._run_timers)
        elif self._timer_wake is not None and when < self._timer_wake.deadline:
            self._timer_wake.deadline = when
        return timer

    def _timer_cancelled(self, timer: TrioTimer) -> None:
        if not timer.in_heap:
            return  # popped as due in this very pass: the timer task skips it
        self._dead_timers += 1
        timers = self._timers
        if self._dead_timers >= _MIN_DEAD_TIMERS and self._dead_timers * 2 > len(timers):
            live = []
            for entry in timers:
                if entry[2].done:
                    entry[2].in_heap = False
                else:
                    live.append(entry)
            heapq.heapify(live)
            self._timers = live
            self._dead_timers = 0
            self._wake_timer_task()
        elif timers[0][2] is timer:
            self._wake_timer_task()  # the earliest went: aim at the next one, or end

    def _wake_timer_task(self) -> None:
        if self._timer_wake is not None:
            self._timer_wake.deadline = -math.inf

    async def _run_timers(self) -> None:
        try:
            while True:
                while self._timers and self._timers[0][2].done:
                    heapq.heappop(self._timers)[2].in_heap = False
                    self._dead_timers -= 1
                if not self._timers:
                    return
                with trio.CancelScope(deadline=self._timers[0][0]) as wake:
                    self._timer_wake = wake
                    await trio.sleep_forever()
                self._timer_wake = None
                # Only what is due now: a callback arming a timer already due runs next pass.
                now = trio.current_time()
                due: list[TrioTimer] = []
                while self._timers and self._timers[0][0] <= now:
                    timer = heapq.heappop(self._timers)[2]
                    timer.in_heap = False
                    if timer.done:
                        self._dead_timers -= 1
                    else:
                        due.append(timer)
                for timer in due:
                    if not timer.done:  # an earlier callback may have cancelled it
                        timer.done = True
                        self._run_callback(timer.callback)
                await trio.lowlevel.checkpoint()
        finally:
            self._timer_task = False
            self._timer_wake = None

    def _run_callback(self, fn: Callable[[], object]) -> None:
        run_callback(fn, self._logger)

    async def run_sync(self, fn: Callable[[], _T]) -> _T:
        if self._threads is None:
            self._threads = trio.CapacityLimiter(math.inf)
        # abandon_on_cancel: a thread stuck in the application must not hold up a cancellation
        # (the graceful timeout's end); trio's worker threads are daemon threads.
        return await trio.to_thread.run_sync(fn, abandon_on_cancel=True, limiter=self._threads)

    def call_from_thread(self, fn: Callable[[], object]) -> None:
        # Once the run has ended this raises trio.RunFinishedError, a RuntimeError.
        self._token.run_sync_soon(self._run_callback, fn)

    async def wait_for(self, waiter: Waiter, timeout: float | None) -> bool:
        if waiter.is_set():
            return True  # a checkpoint under an expired deadline would say False
        with trio.move_on_after(math.inf if timeout is None else timeout):
            await waiter.wait()
            return True
        return False
