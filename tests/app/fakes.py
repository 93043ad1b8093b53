"""A fake backend for driving ConnectionHandler without sockets or an event loop.

`FakeRuntime` steps application coroutines by hand (`run()`), so a test decides when tasks get to
run; `FakeTransport` records what the handler writes and asks of the socket; `FakeProtocol` is a
protocol core that reports whatever events a test hands it and records the commands it is sent,
for tests that must not depend on what the real cores currently report.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any, TypeVar

from multicorn.app.connection import ConnectionHandler
from multicorn.app.context import AppSettings, ConnectionInfo, DefaultHeaders, ServerContext
from multicorn.app.logs import Loggers
from multicorn.app.registry import ConnectionRegistry
from multicorn.protocol.events import Command, Event
from multicorn.protocol.http2 import HTTP2Limits
from multicorn.protocol.http11 import HTTP11Limits
from multicorn.protocol.negotiate import ProtocolLimits

if TYPE_CHECKING:
    from multicorn.runtime.base import Waiter

# Not "multicorn.error": configure_logging() (run by e2e tests in the same process) stops that
# logger from propagating, and caplog listens on the root logger.
TEST_LOGGER = "tests.app.error"

_T = TypeVar("_T")


class Cancelled(BaseException):
    """What a cancelled fake task sees, like asyncio.CancelledError or trio.Cancelled."""


class _Pause:
    def __await__(self) -> Generator[None, None, None]:
        yield


class FakeWaiter:
    def __init__(self) -> None:
        self._flag = False

    def set(self) -> None:
        self._flag = True

    def clear(self) -> None:
        self._flag = False

    def is_set(self) -> bool:
        return self._flag

    async def wait(self) -> bool:
        while not self._flag:
            await _Pause()
        return True


class FakeTask:
    def __init__(self, coro: Any) -> None:
        self.coro = coro
        self.done = False
        self.cancel_requested = False
        self.cancelled = False
        self.error: BaseException | None = None

    def cancel(self) -> None:
        self.cancel_requested = True

    def step(self) -> None:
        try:
            if self.cancel_requested:
                self.coro.throw(Cancelled())
            else:
                self.coro.send(None)
        except StopIteration:
            self.done = True
        except Cancelled:
            self.done = self.cancelled = True
        except BaseException as exc:  # what a real runtime would report as a task crash
            self.done = True
            self.error = exc


class FakeTimer:
    def __init__(self, when: float, fn: Callable[[], object]) -> None:
        self.when = when
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeRuntime:
    def __init__(self) -> None:
        self.clock = 0.0
        self.tasks: list[FakeTask] = []
        self.soon: list[Callable[[], object]] = []
        self.timers: list[FakeTimer] = []
        self.timeouts_expire = False  # wait_for() returns False at once instead of waiting
        # Callbacks from other threads (call_from_thread); run() takes them in, in order.
        self.from_threads: list[Callable[[], object]] = []
        self.threads: list[threading.Thread] = []  # started by run_sync

    def now(self) -> float:
        return self.clock

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> FakeTask:
        task = FakeTask(fn(*args))
        self.tasks.append(task)
        return task

    def waiter(self) -> FakeWaiter:
        return FakeWaiter()

    def call_soon(self, fn: Callable[[], object]) -> None:
        self.soon.append(fn)

    def call_at(self, when: float, fn: Callable[[], object]) -> FakeTimer:
        timer = FakeTimer(when, fn)
        self.timers.append(timer)
        return timer

    async def run_sync(self, fn: Callable[[], _T]) -> _T:
        """A real (daemon) thread; the task polls it each time the test runs the tasks."""
        outcome: list[Any] = []

        def target() -> None:
            try:
                outcome.append((fn(), None))
            except BaseException as exc:
                outcome.append((None, exc))

        thread = threading.Thread(target=target, daemon=True)
        self.threads.append(thread)
        thread.start()
        while not outcome:
            await _Pause()
        result, error = outcome[0]
        if error is not None:
            raise error
        return result  # type: ignore[no-any-return]

    def call_from_thread(self, fn: Callable[[], object]) -> None:
        self.from_threads.append(fn)  # list.append is atomic under the GIL

    def run_until(self, done: Callable[[], bool], timeout: float = 5.0) -> None:
        """Run tasks and callbacks (other threads' too) until `done()` or `timeout` seconds."""
        end = time.monotonic() + timeout
        while not done():
            if time.monotonic() > end:
                raise AssertionError(f"not done within {timeout} s")
            self.run()
            time.sleep(0.001)

    def advance(self, seconds: float) -> None:
        """Move the clock on, firing the timers that fall due in order, then run the tasks."""
        end = self.clock + seconds
        while True:
            due = [t for t in self.timers if not t.cancelled and t.when <= end]
            if not due:
                break
            timer = min(due, key=lambda t: t.when)
            self.timers.remove(timer)
            self.clock = max(self.clock, timer.when)
            timer.fn()
            self.run()
        self.clock = end
        self.run()

    async def wait_for(self, waiter: Waiter, timeout: float | None) -> bool:
        if waiter.is_set():
            return True
        if self.timeouts_expire:
            return False
        await waiter.wait()
        return True

    def run(self, rounds: int = 20) -> None:
        """Let every task and call_soon callback run until nothing is left or `rounds` pass."""
        for _ in range(rounds):
            while self.from_threads:
                self.soon.append(self.from_threads.pop(0))
            while self.soon:
                self.soon.pop(0)()
            pending = [task for task in self.tasks if not task.done]
            if not pending:
                return
            for task in pending:
                task.step()
        while self.soon:
            self.soon.pop(0)()

    @property
    def crashed(self) -> list[BaseException]:
        return [task.error for task in self.tasks if task.error is not None]


class FakeTransport:
    closes_by_itself = True

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False
        self.aborted = False
        self.reading = True
        self.deadline: float | None = None

    def write(self, data: bytes) -> None:
        self.written += data

    def take(self) -> bytes:
        data = bytes(self.written)
        self.written.clear()
        return data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def set_reading(self, enabled: bool) -> None:
        self.reading = enabled

    def set_deadline(self, deadline: float | None) -> None:
        self.deadline = deadline


class FakeProtocol:
    """Reports the events a test queues with `feed`; records every command."""

    multiplexed = True

    def __init__(self) -> None:
        self.inbound: list[Event] = []
        self.commands: list[Command] = []
        self.closed = False
        self.wants_read = True

    def feed(self, *events: Event) -> None:
        self.inbound.extend(events)

    def receive_data(self, data: bytes, now: float) -> list[Event]:
        events, self.inbound = self.inbound, []
        return events

    def send(self, command: Command, now: float) -> list[Event]:
        self.commands.append(command)
        return []

    def data_to_send(self) -> bytes:
        return b""

    def next_deadline(self) -> float | None:
        return None

    def handle_deadline(self, now: float) -> list[Event]:
        return []

    def pending_send(self, stream_id: int) -> int:
        return 0


def make_context(app: Any, **changes: Any) -> ServerContext:
    fields: dict[str, Any] = {
        "app": app,
        "settings": AppSettings(),
        "loggers": Loggers(error=logging.getLogger(TEST_LOGGER), access=None, access_format=""),
        "protocol_limits": ProtocolLimits(http11=HTTP11Limits(), http2=HTTP2Limits()),
        "default_headers": DefaultHeaders(date=False, server=False),
    }
    fields.update(changes)
    return ServerContext(**fields)


def make_handler(
    protocol: Any, app: Any, **context_changes: Any
) -> tuple[ConnectionHandler, FakeRuntime, FakeTransport]:
    runtime = FakeRuntime()
    transport = FakeTransport()
    handler = ConnectionHandler(
        protocol=protocol,
        transport=transport,
        runtime=runtime,
        context=make_context(app, **context_changes),
        info=ConnectionInfo(client=("192.0.2.1", 40000), server=("127.0.0.1", 8000)),
        registry=ConnectionRegistry(runtime),
    )
    return handler, runtime, transport


async def ok_app(scope: Any, receive: Any, send: Any) -> None:
    """Reads the whole request body, then answers 200 with the path."""
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": scope["path"].encode()})
