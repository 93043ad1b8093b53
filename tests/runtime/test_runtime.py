"""The contract of `Runtime` (clock, tasks, callbacks, timers, waiters) and of a backend's
session, on every backend."""

from __future__ import annotations

import logging
import threading

import anyio
import pytest

from .harness import BackendUnderTest, eventually, read_until_eof, stream_server, turns

pytestmark = pytest.mark.anyio


async def test_now_is_monotonic_seconds(backend: BackendUnderTest):
    async with backend.running() as b:
        first = b.runtime.now()
        await anyio.sleep(0.1)
        second = b.runtime.now()
    assert isinstance(first, float)
    assert 0.09 <= second - first < 2.0


async def test_spawn_runs_the_task_with_its_arguments(backend: BackendUnderTest):
    seen: list[object] = []

    async def task(a: int, b: str) -> None:
        await anyio.sleep(0)
        seen.append((a, b))

    async with backend.running() as b:
        b.runtime.spawn(task, 1, "two")
        await eventually(lambda: seen == [(1, "two")], "the task to run")


async def test_cancel_ends_a_task_at_its_next_await(backend: BackendUnderTest):
    progress: list[str] = []

    async with backend.running() as b:
        never = b.runtime.waiter()

        async def task() -> None:
            progress.append("started")
            try:
                await never.wait()
            finally:
                progress.append("unwound")
            progress.append("returned")  # never: cancellation is not a return

        handle = b.runtime.spawn(task)
        await eventually(lambda: progress == ["started"], "the task to start")
        handle.cancel()
        await eventually(lambda: progress == ["started", "unwound"], "the task to unwind")
        handle.cancel()  # again, after it ended: harmless
        await turns()
    assert progress == ["started", "unwound"]


async def test_a_task_cancelled_before_it_starts_never_runs_its_body(backend: BackendUnderTest):
    progress: list[str] = []

    async def task() -> None:
        await anyio.sleep(0)
        progress.append("ran")

    async with backend.running() as b:
        b.runtime.spawn(task).cancel()
        await anyio.sleep(0.1)
    assert progress == []


async def test_the_session_end_cancels_tasks_still_running(backend: BackendUnderTest):
    progress: list[str] = []

    async with backend.running() as b:
        never = b.runtime.waiter()

        async def task() -> None:
            try:
                await never.wait()
            finally:
                progress.append("unwound")

        b.runtime.spawn(task)
        await turns()
    assert progress == ["unwound"]


async def test_call_soon_runs_later_in_the_same_loop_in_order(backend: BackendUnderTest):
    calls: list[tuple[int, int]] = []

    async with backend.running() as b:
        for index in range(5):
            b.runtime.call_soon(lambda index=index: calls.append((index, threading.get_ident())))
        # Nothing has run yet: call_soon never calls back before it returns.
        assert calls == []
        await eventually(lambda: len(calls) == 5, "the callbacks")
    # In order, and on the loop's own thread.
    assert calls == [(index, threading.get_ident()) for index in range(5)]


async def test_call_soon_from_a_callback_runs_in_a_later_round(backend: BackendUnderTest):
    calls: list[str] = []

    async with backend.running() as b:
        runtime = b.runtime

        def first() -> None:
            calls.append("first")
            runtime.call_soon(lambda: calls.append("third"))
            calls.append("second")

        runtime.call_soon(first)
        await eventually(lambda: len(calls) == 3, "the callbacks")
    assert calls == ["first", "second", "third"]


async def test_call_at_fires_once_at_about_its_time(backend: BackendUnderTest):
    fired: list[float] = []

    async with backend.running() as b:
        runtime = b.runtime
        when = runtime.now() + 0.15
        runtime.call_at(when, lambda: fired.append(runtime.now()))
        await eventually(lambda: bool(fired), "the timer")
        await anyio.sleep(0.2)
    assert len(fired) == 1
    assert when - 0.01 <= fired[0] < when + 2.0


async def test_call_at_timers_fire_in_deadline_order(backend: BackendUnderTest):
    fired: list[str] = []

    async with backend.running() as b:
        now = b.runtime.now()
        b.runtime.call_at(now + 0.2, lambda: fired.append("late"))
        b.runtime.call_at(now + 0.05, lambda: fired.append("early"))
        b.runtime.call_at(now - 1, lambda: fired.append("past"))  # due already: runs soon
        await eventually(lambda: len(fired) == 3, "three timers")
    assert fired == ["past", "early", "late"]


async def test_a_cancelled_timer_never_fires(backend: BackendUnderTest):
    fired: list[str] = []

    async with backend.running() as b:
        runtime = b.runtime
        timer = runtime.call_at(runtime.now() + 0.05, lambda: fired.append("cancelled"))
        timer.cancel()
        # One deadline per connection: cancel and re-arm, as a datagram protocol does.
        rearmed = runtime.call_at(runtime.now() + 0.1, lambda: fired.append("re-armed"))
        await eventually(lambda: fired == ["re-armed"], "the re-armed timer")
        rearmed.cancel()  # after it fired: harmless
        await anyio.sleep(0.1)
    assert fired == ["re-armed"]


async def test_a_timer_rearmed_many_times_fires_once_at_its_last_deadline(
    backend: BackendUnderTest,
):
    """The QUIC pattern: one deadline per connection, moved on almost every datagram."""
    fired: list[int] = []

    async with backend.running() as b:
        runtime = b.runtime
        timer = None
        for generation in range(500):
            if timer is not None:
                timer.cancel()
            when = runtime.now() + 0.05 + generation * 0.0005
            timer = runtime.call_at(when, lambda generation=generation: fired.append(generation))
            if generation % 50 == 0:
                await anyio.sleep(0)
        await eventually(lambda: bool(fired), "the last timer")
        await anyio.sleep(0.1)
    assert fired == [499]


async def test_many_timers_some_cancelled_fire_in_order(backend: BackendUnderTest):
    fired: list[int] = []

    async with backend.running() as b:
        runtime = b.runtime
        start = runtime.now()
        # Armed out of order; all due within 0.55 s, three at each instant, 5 ms apart (libuv
        # keeps timers in whole milliseconds of a cached clock: 2 ms apart swapped once under
        # load).
        order = [(index * 37) % 300 for index in range(300)]
        timers = {
            index: runtime.call_at(
                start + 0.05 + (index // 3) * 0.005, lambda index=index: fired.append(index)
            )
            for index in order
        }
        for index in range(300):
            if index % 4:
                timers[index].cancel()
        expected = [index for index in range(300) if index % 4 == 0]
        await eventually(lambda: len(fired) == len(expected), "the timers left")
        await anyio.sleep(0.05)
    # Deadline order (timers due at the same instant may run in any order).
    assert sorted(fired) == expected
    assert [index // 3 for index in fired] == sorted(index // 3 for index in fired)


async def test_a_timer_may_cancel_another_from_its_callback(backend: BackendUnderTest):
    fired: list[str] = []

    async with backend.running() as b:
        runtime = b.runtime
        now = runtime.now()
        second = runtime.call_at(now + 0.1, lambda: fired.append("second"))
        runtime.call_at(now + 0.05, lambda: (fired.append("first"), second.cancel()))
        await anyio.sleep(0.3)
    assert fired == ["first"]


async def test_a_failing_callback_is_logged_and_the_runtime_goes_on(
    backend: BackendUnderTest, caplog: pytest.LogCaptureFixture
):
    fired: list[str] = []

    def boom() -> None:
        raise ValueError("a bug in a callback")

    async with backend.running() as b:
        runtime = b.runtime
        with caplog.at_level(logging.ERROR):
            runtime.call_soon(boom)
            runtime.call_at(runtime.now(), boom)
            runtime.call_soon(lambda: fired.append("soon"))
            runtime.call_at(runtime.now() + 0.05, lambda: fired.append("timer"))
            await eventually(lambda: sorted(fired) == ["soon", "timer"], "later callbacks")
    assert "a bug in a callback" in caplog.text


async def test_waiter_set_clear_wait(backend: BackendUnderTest):
    async with backend.running() as b:
        waiter = b.runtime.waiter()
        assert not waiter.is_set()
        waiter.set()
        assert waiter.is_set()
        await waiter.wait()  # set: returns at once
        waiter.clear()
        assert not waiter.is_set()
        waiter.clear()  # idempotent

        woken: list[str] = []

        async def sleeper() -> None:
            await waiter.wait()
            woken.append("woken")

        b.runtime.spawn(sleeper)
        await anyio.sleep(0.05)
        assert woken == []
        waiter.set()
        waiter.set()  # idempotent
        await eventually(lambda: woken == ["woken"], "the waiting task")


async def test_waiter_wakes_every_waiter_and_survives_a_cancelled_one(
    backend: BackendUnderTest,
):
    """Several tasks wait on one waiter (HTTP/2 streams on a connection's write waiter): set()
    wakes them all, and one cut short by a timeout leaves nothing behind that breaks the next."""
    async with backend.running() as b:
        runtime = b.runtime
        waiter = runtime.waiter()
        woken: list[int] = []

        async def sleeper(n: int) -> None:
            await waiter.wait()
            woken.append(n)

        for n in range(3):
            runtime.spawn(sleeper, n)
        assert await runtime.wait_for(waiter, 0.05) is False  # a waiter that gives up
        waiter.set()
        await eventually(lambda: sorted(woken) == [0, 1, 2], "every waiting task")
        waiter.clear()
        runtime.spawn(sleeper, 3)
        await anyio.sleep(0.02)
        assert woken == [*woken[:3]]
        waiter.set()
        await eventually(lambda: 3 in woken, "a task waiting after the clear")


async def test_wait_for_returns_true_when_set_false_on_timeout(backend: BackendUnderTest):
    async with backend.running() as b:
        runtime = b.runtime
        waiter = runtime.waiter()
        start = runtime.now()
        assert await runtime.wait_for(waiter, 0.1) is False
        assert 0.09 <= runtime.now() - start < 2.0

        runtime.call_at(runtime.now() + 0.05, waiter.set)
        assert await runtime.wait_for(waiter, 5.0) is True
        assert await runtime.wait_for(waiter, 0) is True  # already set: no wait at all

        waiter.clear()
        runtime.call_at(runtime.now() + 0.05, waiter.set)
        assert await runtime.wait_for(waiter, None) is True


async def test_the_session_end_closes_open_connections(backend: BackendUnderTest):
    async with backend.running() as b:
        async with stream_server(b) as server:
            client = await server.connect()
            handler = await server.accepted()
        # The listener is gone; the connection is still open, and the session ends now.
        assert "lost" not in handler.names()
    async with client:
        _, how = await read_until_eof(client)
    assert how in ("eof", "reset")
    assert handler.count("lost") == 1


# ---- threads ----------------------------------------------------------------------------------


async def test_run_sync_runs_in_another_thread_and_returns_or_raises(backend: BackendUnderTest):
    loop_thread = threading.get_ident()

    def work(value: int) -> tuple[int, int]:
        return threading.get_ident(), value * 2

    def fail() -> None:
        raise KeyError("from the thread")

    async with backend.running() as b:
        thread, doubled = await b.runtime.run_sync(lambda: work(21))
        with pytest.raises(KeyError, match="from the thread"):
            await b.runtime.run_sync(fail)
    assert thread != loop_thread
    assert doubled == 42


async def test_run_sync_calls_run_at_once_and_their_threads_are_daemons(
    backend: BackendUnderTest,
):
    # No bound of the runtime's own: 12 calls that each wait for all the others all finish.
    count = 12
    barrier = threading.Barrier(count, timeout=5)

    def meet() -> bool:
        barrier.wait()
        return threading.current_thread().daemon

    results: list[bool] = []

    async def one() -> None:
        results.append(await b.runtime.run_sync(meet))

    async with backend.running() as b:
        for _ in range(count):
            b.runtime.spawn(one)
        await eventually(lambda: len(results) == count, "every call to return")
    assert all(results)


async def test_a_cancelled_run_sync_leaves_the_thread_behind(backend: BackendUnderTest):
    release = threading.Event()
    finished = threading.Event()
    started = threading.Event()

    def stuck() -> None:
        started.set()
        release.wait(5)
        finished.set()

    outcome: list[str] = []

    async def waiter() -> None:
        try:
            await b.runtime.run_sync(stuck)
        finally:
            outcome.append("ended")

    async with backend.running() as b:
        handle = b.runtime.spawn(waiter)
        await eventually(started.is_set, "the thread to start")
        handle.cancel()
        # The task ends at once; the thread is still inside `stuck`.
        await eventually(lambda: outcome == ["ended"], "the cancelled task to end")
        assert not finished.is_set()
    release.set()
    assert finished.wait(5)


async def test_call_from_thread_runs_callbacks_in_the_loop_in_order(backend: BackendUnderTest):
    seen: list[tuple[int, int]] = []
    loop_thread = threading.get_ident()

    async with backend.running() as b:
        runtime = b.runtime

        def from_thread() -> None:
            for n in range(50):
                runtime.call_from_thread(lambda n=n: seen.append((threading.get_ident(), n)))

        thread = threading.Thread(target=from_thread)
        thread.start()
        await eventually(lambda: len(seen) == 50, "every callback to run")
        thread.join()
    assert [n for _, n in seen] == list(range(50))
    assert {ident for ident, _ in seen} == {loop_thread}
