"""What gets logged at which level: a hung-up peer is not a server error, a lifespan crash is."""

from __future__ import annotations

import logging
import sys
from typing import Any

import pytest

from multicorn.app.errors import ClientDisconnected
from multicorn.app.lifespan import Lifespan
from multicorn.protocol.events import RequestReceived, StreamEnded, StreamReset

from .fakes import TEST_LOGGER, FakeProtocol, FakeRuntime, make_handler

if sys.version_info >= (3, 11):
    from builtins import ExceptionGroup


def records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == TEST_LOGGER and r.levelno == level]


def serve_then_hang_up(app: Any) -> None:
    """The app reads the request, then the peer resets the stream while the app still sends."""
    protocol = FakeProtocol()
    handler, runtime, _ = make_handler(protocol, app)
    protocol.feed(
        RequestReceived(stream_id=1, method=b"GET", target=b"/", http_version="2", headers=[]),
        StreamEnded(stream_id=1),
    )
    handler.data_received(b"")
    runtime.run()
    protocol.feed(StreamReset(stream_id=1))
    handler.data_received(b"")
    runtime.run()
    assert all(task.done for task in runtime.tasks) and not runtime.crashed


async def _read_until_disconnect(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def lets_disconnect_through(scope: Any, receive: Any, send: Any) -> None:
    await _read_until_disconnect(receive)
    await send({"type": "http.response.start", "status": 200, "headers": []})


async def wraps_the_disconnect(scope: Any, receive: Any, send: Any) -> None:
    await _read_until_disconnect(receive)
    try:
        await send({"type": "http.response.start", "status": 200, "headers": []})
    except ClientDisconnected as exc:
        raise RuntimeError("framework wrapper") from exc


async def raises_while_handling_it(scope: Any, receive: Any, send: Any) -> None:
    await _read_until_disconnect(receive)
    try:
        await send({"type": "http.response.start", "status": 200, "headers": []})
    except ClientDisconnected:
        # Not raised `from` the disconnect: the app's cleanup broke, a bug worth a traceback.
        raise ValueError("cleanup failed")  # noqa: B904


async def group_of_disconnects(scope: Any, receive: Any, send: Any) -> None:
    await _read_until_disconnect(receive)
    try:
        await send({"type": "http.response.start", "status": 200, "headers": []})
    except ClientDisconnected as exc:
        raise ExceptionGroup("task group", [exc]) from None


@pytest.mark.parametrize(
    "app",
    [
        lets_disconnect_through,
        wraps_the_disconnect,
        pytest.param(
            group_of_disconnects,
            marks=pytest.mark.skipif(sys.version_info < (3, 11), reason="no exception groups"),
        ),
    ],
)
def test_a_peer_hanging_up_mid_send_is_logged_at_debug(
    app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=TEST_LOGGER)
    serve_then_hang_up(app)
    assert records(caplog, logging.ERROR) == []
    [record] = records(caplog, logging.DEBUG)
    assert record.exc_info is None and "went away" in record.getMessage()


def test_an_app_bug_after_a_hang_up_stays_an_error(caplog: pytest.LogCaptureFixture) -> None:
    serve_then_hang_up(raises_while_handling_it)
    [record] = records(caplog, logging.ERROR)
    assert record.exc_info is not None and isinstance(record.exc_info[1], ValueError)


def test_an_app_bug_stays_an_error_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise KeyError("bug")

    serve_then_hang_up(app)
    [record] = records(caplog, logging.ERROR)
    assert record.exc_info is not None and isinstance(record.exc_info[1], KeyError)


# ---- lifespan ---------------------------------------------------------------------------


def start(app: Any, mode: str = "auto") -> FakeRuntime:
    runtime = FakeRuntime()
    lifespan = Lifespan(app, mode=mode, runtime=runtime, logger=logging.getLogger(TEST_LOGGER))
    runtime.spawn(lifespan.startup, 5.0)
    runtime.run()
    return runtime


def test_lifespan_crash_after_receive_is_logged_with_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        raise ConnectionError("database is down")

    runtime = start(app)
    assert not runtime.crashed  # auto mode still serves
    [record] = records(caplog, logging.ERROR)
    assert record.exc_info is not None and isinstance(record.exc_info[1], ConnectionError)
    assert records(caplog, logging.INFO) == []


def test_lifespan_unsupported_stays_one_quiet_line(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"  # a framework-less app that knows only http

    caplog.set_level(logging.INFO, logger=TEST_LOGGER)
    runtime = start(app)
    assert not runtime.crashed
    assert records(caplog, logging.ERROR) == []
    [record] = records(caplog, logging.INFO)
    assert record.exc_info is None and "unsupported" in record.getMessage()
