"""`min_request_body_rate`, decided in the app layer once for every protocol: driven by a fake
protocol core (which records the commands it is sent) and the fake backend's clock and timers.

Only the server's waiting counts: the application blocked in receive() with nothing buffered
and the body not complete. These tests move the fake clock with `runtime.advance()`, which
fires the timers that fall due.
"""

from __future__ import annotations

from typing import Any

from multicorn.app.context import AppSettings
from multicorn.protocol.events import (
    AcknowledgeData,
    CloseConnection,
    DataReceived,
    ResetStream,
    StreamEnded,
)

from .fakes import FakeProtocol, FakeRuntime, FakeWaiter, make_handler
from .test_limits import Recorder, feed, post, statuses

RATE = 1000  # bytes/second
GRACE = 5.0


def rated(app: Any, *, multiplexed: bool = True, **settings: Any) -> tuple[Any, ...]:
    protocol = FakeProtocol()
    protocol.multiplexed = multiplexed
    settings.setdefault("min_request_body_rate", RATE)
    settings.setdefault("min_request_body_rate_grace", GRACE)
    handler, runtime, _ = make_handler(protocol, app, settings=AppSettings(**settings))
    return protocol, handler, runtime


def armed(runtime: FakeRuntime) -> int:
    return sum(1 for timer in runtime.timers if not timer.cancelled)


def test_a_slow_body_gets_408_after_the_grace() -> None:
    app = Recorder()
    protocol, handler, runtime = rated(app)
    feed(protocol, handler, post())
    runtime.run()  # the app waits for the body
    assert armed(runtime) == 1
    for _ in range(4):  # 10 B/s, far below RATE, but inside the grace
        runtime.advance(1.0)
        feed(protocol, handler, DataReceived(stream_id=1, data=b"x" * 10))
        runtime.run()
    assert statuses(protocol) == []
    runtime.advance(1.0)  # 5 s of waiting: the grace is over, 40 bytes is 8 B/s
    assert statuses(protocol) == [408]
    assert app.messages[-1] == {"type": "http.disconnect"}
    assert app.body == 40
    assert app.send_error is not None  # its own answer comes too late, as after a hang-up
    # Multiplexed: only the stream ends.
    assert not any(isinstance(c, CloseConnection) for c in protocol.commands)
    assert armed(runtime) == 0


def test_the_deadline_moves_with_the_bytes_received() -> None:
    app = Recorder()
    protocol, handler, runtime = rated(app)
    feed(protocol, handler, post())
    runtime.run()
    runtime.advance(1.0)
    # 8000 bytes after 1 s of waiting: at RATE, they pay for 8 s of waiting in all.
    feed(protocol, handler, DataReceived(stream_id=1, data=b"x" * 8000))
    runtime.run()
    runtime.advance(6.9)
    assert statuses(protocol) == []
    runtime.advance(0.2)
    assert statuses(protocol) == [408]


def test_on_http11_the_408_closes_the_connection() -> None:
    protocol, handler, runtime = rated(Recorder(), multiplexed=False)
    feed(protocol, handler, post(length=100))
    runtime.run()
    runtime.advance(GRACE)
    kinds = [type(c).__name__ for c in protocol.commands]
    # CloseConnection first, so that the 408's head says `connection: close`.
    assert kinds[-3:] == ["CloseConnection", "SendResponse", "SendData"]
    assert statuses(protocol) == [408]


def test_a_fast_body_is_served() -> None:
    app = Recorder()
    protocol, handler, runtime = rated(app)
    feed(protocol, handler, post())
    runtime.run()
    for _ in range(20):  # 2000 B/s for 10 s: twice the minimum, well past the grace
        runtime.advance(0.5)
        feed(protocol, handler, DataReceived(stream_id=1, data=b"x" * 1000))
        runtime.run()
    feed(protocol, handler, StreamEnded(stream_id=1))
    runtime.run()
    assert statuses(protocol) == [200]
    assert app.body == 20_000
    assert armed(runtime) == 0  # the last wait's timer went with the body's end


def test_an_app_that_does_not_read_is_never_punished() -> None:
    app = Recorder(hold=True)
    protocol, handler, runtime = rated(app)
    feed(protocol, handler, post(), DataReceived(stream_id=1, data=b"x" * 10))
    runtime.run()  # the app holds; the body waits in the buffer
    runtime.advance(600.0)
    assert statuses(protocol) == []
    assert runtime.timers == []  # nobody waited on the client: no timer at all
    # It reads at last, and the client sends the rest at once: served.
    app.release.set()
    runtime.run()
    feed(protocol, handler, DataReceived(stream_id=1, data=b"y" * 10), StreamEnded(stream_id=1))
    runtime.run()
    assert statuses(protocol) == [200]
    assert app.body == 20


def test_only_waiting_time_counts() -> None:
    """Time the app spends between reads is its own: a client that delivers every piece the
    moment the app asks for it is never slow, however long the upload takes."""

    class Busy:
        """Does 'work' (waits for the test's `done`) after each piece it reads."""

        def __init__(self) -> None:
            self.done = FakeWaiter()

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect" or not message.get("more_body"):
                    break
                await self.done.wait()
                self.done.clear()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

    app = Busy()
    protocol, handler, runtime = rated(app)
    feed(protocol, handler, post())
    runtime.run()  # the app waits for the body
    for _ in range(30):
        runtime.advance(0.01)  # the client answers each wait within 10 ms...
        feed(protocol, handler, DataReceived(stream_id=1, data=b"x"))
        runtime.run()
        runtime.advance(10.0)  # ...and the app works on each byte for 10 s, not reading
        assert armed(runtime) == 0
        app.done.set()
        runtime.run()
    feed(protocol, handler, StreamEnded(stream_id=1))
    runtime.run()
    # 30 bytes in 300 s of wall time, but only 0.3 s of waiting: inside the grace.
    assert statuses(protocol) == [200]


def test_a_wait_for_the_disconnect_after_the_body_is_not_timed() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["more_body"] is False
        await receive()  # a long poll: waits for the client to go away

    protocol, handler, runtime = rated(app)
    feed(protocol, handler, post(), DataReceived(stream_id=1, data=b"x"), StreamEnded(stream_id=1))
    runtime.run()
    runtime.advance(600.0)
    assert runtime.timers == []
    assert statuses(protocol) == []


def test_off_means_no_timers() -> None:
    app = Recorder()
    protocol, handler, runtime = rated(app, min_request_body_rate=0)
    feed(protocol, handler, post())
    runtime.run()
    for _ in range(10):
        runtime.advance(60.0)
        feed(protocol, handler, DataReceived(stream_id=1, data=b"x"))
        runtime.run()
    feed(protocol, handler, StreamEnded(stream_id=1))
    runtime.run()
    assert runtime.timers == []
    assert statuses(protocol) == [200]


def test_a_cancelled_receive_cancels_its_timer() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()

    protocol, handler, runtime = rated(app)
    feed(protocol, handler, post())
    runtime.run()
    assert armed(runtime) == 1
    handler.cancel_tasks()
    runtime.run()
    assert all(task.cancelled for task in runtime.tasks)
    assert armed(runtime) == 0


def test_body_after_the_408_is_acknowledged_and_dropped() -> None:
    app = Recorder()
    protocol, handler, runtime = rated(app)
    feed(protocol, handler, post())
    runtime.run()
    runtime.advance(GRACE)
    assert statuses(protocol) == [408]
    commands = len(protocol.commands)
    feed(protocol, handler, DataReceived(stream_id=1, data=b"late"), StreamEnded(stream_id=1))
    runtime.run()
    assert protocol.commands[commands:] == [AcknowledgeData(stream_id=1, amount=4)]


def test_once_the_response_head_is_out_the_stream_is_reset() -> None:
    app = Recorder(head_first=True, partial=True)
    protocol, handler, runtime = rated(app)
    feed(protocol, handler, post())
    runtime.run()
    assert statuses(protocol) == [200]
    runtime.advance(GRACE)
    assert ResetStream(stream_id=1) in protocol.commands
    assert statuses(protocol) == [200]
    assert app.messages == [{"type": "http.disconnect"}]


def test_a_413_during_a_wait_leaves_no_timer() -> None:
    app = Recorder()
    protocol, handler, runtime = rated(app, max_request_body_size=100)
    feed(protocol, handler, post())
    runtime.run()
    assert armed(runtime) == 1
    feed(protocol, handler, DataReceived(stream_id=1, data=b"x" * 101))
    assert armed(runtime) == 0  # at once, before the app's task runs again
    runtime.advance(60.0)
    assert statuses(protocol) == [413]
