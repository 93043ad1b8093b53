"""The WSGI adapter (app/wsgi.py) on the fake backend: the environ, the request body pulled only
as the app reads it, the response pushed chunk by chunk behind the transport's backpressure,
start_response and exc_info, errors, close(), and the bound on threads. The app runs in real
threads (FakeRuntime.run_sync); the tests step the loop side by hand."""

from __future__ import annotations

import io
import logging
import sys
import threading
from typing import Any

import pytest

from multicorn.app.wsgi import FileWrapper, WSGIAdapter, build_environ
from multicorn.protocol.events import (
    AcknowledgeData,
    DataReceived,
    RequestReceived,
    ResetStream,
    SendData,
    SendResponse,
    StreamEnded,
)

from .fakes import TEST_LOGGER, FakeProtocol, FakeRuntime, make_handler

WAIT = 5.0  # seconds a test waits for a worker thread to get somewhere


def request(stream_id: int = 1, *, method: bytes = b"GET", target: bytes = b"/", headers: Any = ()):
    return RequestReceived(
        stream_id=stream_id,
        method=method,
        target=target,
        http_version="1.1",
        headers=[(b"host", b"example.com"), *headers],
    )


class Served:
    """A WSGI app behind the adapter, a fake protocol and the fake runtime."""

    def __init__(self, app: Any, *, max_workers: int = 4) -> None:
        self.protocol = FakeProtocol()
        self.handler, self.runtime, self.transport = make_handler(self.protocol, None)
        self.adapter = WSGIAdapter(
            app,
            runtime=self.runtime,
            max_workers=max_workers,
            logger=logging.getLogger(TEST_LOGGER),
        )
        self.handler.context.app = self.adapter

    def feed(self, *events: Any) -> None:
        self.protocol.feed(*events)
        self.handler.data_received(b"")

    def run_until(self, done: Any) -> None:
        self.runtime.run_until(done, WAIT)

    def responses(self, stream_id: int = 1) -> list[SendResponse]:
        return [
            c
            for c in self.protocol.commands
            if isinstance(c, SendResponse) and c.stream_id == stream_id
        ]

    def body(self, stream_id: int = 1) -> bytes:
        return b"".join(
            c.data
            for c in self.protocol.commands
            if isinstance(c, SendData) and c.stream_id == stream_id
        )

    def ended(self, stream_id: int = 1) -> bool:
        return any(
            (isinstance(c, SendData) and c.end_stream) or isinstance(c, ResetStream)
            for c in self.protocol.commands
            if getattr(c, "stream_id", None) == stream_id
        )

    def acknowledged(self) -> int:
        return sum(c.amount for c in self.protocol.commands if isinstance(c, AcknowledgeData))


def hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


# ---- the environ --------------------------------------------------------------------------


def test_environ_follows_pep_3333() -> None:
    scope = {
        "type": "http",
        "http_version": "2",
        "method": "POST",
        "scheme": "https",
        "path": "/mount/caf\u00e9 x",
        "raw_path": b"/mount/caf%C3%A9%20x",
        "query_string": b"a=1&b=%C3%A9",
        "root_path": "/mount",
        "headers": [
            (b"host", b"example.com"),
            (b"content-type", b"text/plain"),
            (b"content-length", b"3"),
            (b"x-multi", b"a"),
            (b"x-multi", b"b"),
            (b"cookie", b"a=1"),
            (b"cookie", b"b=2"),
            (b"x_forwarded_for", b"6.6.6.6"),
        ],
        "client": ("192.0.2.7", 4321),
        "server": ("127.0.0.1", 8443),
    }
    body, errors = io.BytesIO(), io.StringIO()
    environ = build_environ(scope, body, errors)
    assert environ["REQUEST_METHOD"] == "POST"
    assert environ["SCRIPT_NAME"] == "/mount"
    # The percent-decoded bytes as latin-1 text: UTF-8 "é" is two characters here.
    assert environ["PATH_INFO"] == "/caf\u00c3\u00a9 x"
    assert environ["PATH_INFO"].encode("latin-1").decode("utf-8") == "/caf\u00e9 x"
    assert environ["QUERY_STRING"] == "a=1&b=%C3%A9"
    assert environ["SERVER_PROTOCOL"] == "HTTP/2"
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("127.0.0.1", "8443")
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("192.0.2.7", "4321")
    assert environ["CONTENT_TYPE"] == "text/plain"
    assert environ["CONTENT_LENGTH"] == "3"
    assert "HTTP_CONTENT_TYPE" not in environ and "HTTP_CONTENT_LENGTH" not in environ
    assert environ["HTTP_HOST"] == "example.com"
    assert environ["HTTP_X_MULTI"] == "a, b"
    assert environ["HTTP_COOKIE"] == "a=1; b=2"
    assert "HTTP_X_FORWARDED_FOR" not in environ  # the underscore spelling is dropped
    assert environ["wsgi.url_scheme"] == "https"
    assert environ["wsgi.version"] == (1, 0)
    assert environ["wsgi.input"] is body and environ["wsgi.errors"] is errors
    assert environ["wsgi.multithread"] is True and environ["wsgi.run_once"] is False
    assert environ["wsgi.input_terminated"] is True
    assert environ["wsgi.file_wrapper"] is FileWrapper


def test_environ_without_root_path_or_server() -> None:
    scope = {
        "method": "GET",
        "path": "/x",
        "raw_path": b"/x",
        "query_string": b"",
        "root_path": "",
        "headers": [],
        "client": None,
        "server": None,
        "scheme": "http",
    }
    environ = build_environ(scope, io.BytesIO(), io.StringIO())
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == ("", "/x")
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("localhost", "80")
    assert "REMOTE_ADDR" not in environ
    assert environ["wsgi.multiprocess"] is False
    # With --workers above 1 every worker process serves the app (PEP 3333 wsgi.multiprocess).
    assert build_environ(scope, io.BytesIO(), io.StringIO(), multiprocess=True)["wsgi.multiprocess"]


# ---- responses ----------------------------------------------------------------------------


def test_a_one_element_list_is_one_body_with_a_content_length() -> None:
    served = Served(hello)
    served.feed(request(), StreamEnded(stream_id=1))
    served.run_until(lambda: served.ended())
    (head,) = served.responses()
    assert head.status == 200
    assert (b"content-type", b"text/plain") in head.headers
    assert (b"content-length", b"5") in head.headers
    assert served.body() == b"hello"


def test_errors_go_to_the_error_log(caplog: pytest.LogCaptureFixture) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        environ["wsgi.errors"].write("first line\nsecond ")
        environ["wsgi.errors"].write("line\nunfinished")
        start_response("204 No Content", [])
        return []

    served = Served(app)
    with caplog.at_level(logging.ERROR, logger=TEST_LOGGER):
        served.feed(request(), StreamEnded(stream_id=1))
        # The last, unterminated line is flushed when the app's thread ends, which may be
        # after the response is out.
        served.run_until(lambda: served.ended() and len(caplog.records) >= 3)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["first line", "second line", "unfinished"]
    assert served.responses()[0].status == 204


def test_an_exception_before_the_response_is_a_500_with_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise ValueError("broken app")

    served = Served(app)
    with caplog.at_level(logging.ERROR, logger=TEST_LOGGER):
        served.feed(request(), StreamEnded(stream_id=1))
        served.run_until(lambda: served.ended())
    assert [r.status for r in served.responses()] == [500]
    errors = [r for r in caplog.records if r.exc_info]
    assert len(errors) == 1
    assert isinstance(errors[0].exc_info[1], ValueError)  # type: ignore[index]


def test_an_exception_after_the_head_resets_the_stream() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])
        yield b"first"
        raise ValueError("broken midway")

    served = Served(app)
    served.feed(request(), StreamEnded(stream_id=1))
    served.run_until(lambda: served.ended())
    assert [r.status for r in served.responses()] == [200]
    assert served.body() == b"first"
    assert any(isinstance(c, ResetStream) for c in served.protocol.commands)


def test_exc_info_replaces_a_head_not_sent_yet() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("X-First", "1")])
        try:
            raise KeyError("oops")
        except KeyError:
            start_response("503 Service Unavailable", [("X-Second", "2")], sys.exc_info())
        return [b"sorry"]

    served = Served(app)
    served.feed(request(), StreamEnded(stream_id=1))
    served.run_until(lambda: served.ended())
    (head,) = served.responses()
    assert head.status == 503
    assert (b"x-second", b"2") in head.headers and (b"x-first", b"1") not in head.headers


def test_exc_info_after_the_head_reraises_and_start_response_twice_is_an_error() -> None:
    seen: list[BaseException] = []

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])
        try:
            start_response("200 OK", [])
        except RuntimeError as exc:
            seen.append(exc)
        yield b"part"
        try:
            raise KeyError("late")
        except KeyError:
            try:
                start_response("500 Oops", [], sys.exc_info())
            except KeyError as exc:
                seen.append(exc)

    served = Served(app)
    served.feed(request(), StreamEnded(stream_id=1))
    served.run_until(lambda: served.ended())
    assert [type(e) for e in seen] == [RuntimeError, KeyError]
    assert served.body() == b"part"


def test_close_is_called_on_the_iterable_even_when_the_client_left() -> None:
    closed = threading.Event()
    produced: list[int] = []

    class Body:
        def __iter__(self) -> Any:
            for n in range(1000):
                produced.append(n)
                yield b"x" * 1000

        def close(self) -> None:
            closed.set()

    def app(environ: dict[str, Any], start_response: Any) -> Body:
        start_response("200 OK", [])
        return Body()

    served = Served(app)
    served.handler.pause_writing()  # the client reads nothing
    served.feed(request(), StreamEnded(stream_id=1))
    served.run_until(lambda: bool(served.responses()))
    served.handler.connection_lost()  # and then leaves
    served.run_until(closed.is_set)
    assert len(produced) < 5


def test_the_write_callable_sends_at_once() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        write = start_response("200 OK", [])
        write(b"written ")
        return [b"returned"]

    served = Served(app)
    served.feed(request(), StreamEnded(stream_id=1))
    served.run_until(lambda: served.ended())
    assert served.body() == b"written returned"


def test_file_wrapper_streams_the_file_in_blocks_and_closes_it() -> None:
    data = bytes(range(256)) * 1024  # 256 KiB
    files: list[io.BytesIO] = []

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])
        files.append(io.BytesIO(data))
        return environ["wsgi.file_wrapper"](files[0], 1024)

    served = Served(app)
    served.feed(request(), StreamEnded(stream_id=1))
    served.run_until(lambda: served.ended())
    assert served.body() == data
    assert files[0].closed
    pieces = [c for c in served.protocol.commands if isinstance(c, SendData) and c.data]
    assert len(pieces) == 4  # 64 KiB blocks, whatever smaller size the app suggested


# ---- backpressure -------------------------------------------------------------------------


def test_the_body_is_pulled_only_as_the_app_reads_it() -> None:
    reads: list[bytes] = []
    go_on = threading.Event()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = environ["wsgi.input"]
        reads.append(body.read(4))
        go_on.wait(WAIT)
        reads.append(body.read())
        start_response("200 OK", [])
        return [b"%d" % sum(len(r) for r in reads)]

    served = Served(app)
    served.feed(request(method=b"POST"), DataReceived(stream_id=1, data=b"aaaa"))
    served.run_until(lambda: len(reads) == 1)
    served.feed(
        DataReceived(stream_id=1, data=b"bbbb"),
        DataReceived(stream_id=1, data=b"cccc"),
        StreamEnded(stream_id=1),
    )
    served.runtime.run()
    # The app has not asked: the rest stays with the bridge, unacknowledged (flow control).
    assert served.acknowledged() == 4
    go_on.set()
    served.run_until(lambda: served.ended())
    assert reads == [b"aaaa", b"bbbbcccc"]
    assert served.acknowledged() == 12
    assert served.body() == b"12"


def test_readline_readlines_and_iteration() -> None:
    got: dict[str, Any] = {}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = environ["wsgi.input"]
        got["line"] = body.readline()
        got["limited"] = body.readline(3)
        got["lines"] = body.readlines(1)
        got["rest"] = list(body)
        got["eof"] = body.read(10)
        start_response("200 OK", [])
        return []

    served = Served(app)
    served.feed(request(method=b"POST"), DataReceived(stream_id=1, data=b"one\ntw"))
    served.feed(DataReceived(stream_id=1, data=b"o\nthree\nfour\nfi"))
    served.feed(DataReceived(stream_id=1, data=b"ve"), StreamEnded(stream_id=1))
    served.run_until(lambda: served.ended())
    assert got == {
        "line": b"one\n",
        "limited": b"two",
        "lines": [b"\n"],
        "rest": [b"three\n", b"four\n", b"five"],
        "eof": b"",
    }


def test_a_response_waits_for_the_transport_chunk_by_chunk() -> None:
    produced: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])
        for n in range(100):
            produced.append(n)
            yield b"%03d" % n

    served = Served(app)
    served.handler.pause_writing()
    served.feed(request(), StreamEnded(stream_id=1))
    served.run_until(lambda: bool(served.responses()))
    for _ in range(20):
        served.runtime.run()
    # One chunk is out and waits for the drain; the generator is not run ahead of it.
    assert len(produced) <= 2
    served.handler.resume_writing()
    served.run_until(lambda: served.ended())
    assert len(produced) == 100
    assert served.body() == b"".join(b"%03d" % n for n in range(100))


# ---- threads ------------------------------------------------------------------------------


def test_no_more_than_max_workers_calls_run_at_once() -> None:
    running: list[int] = []
    most = [0]
    release = threading.Event()
    lock = threading.Lock()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        with lock:
            running.append(1)
            most[0] = max(most[0], len(running))
        release.wait(WAIT)
        with lock:
            running.pop()
        start_response("200 OK", [])
        return [b"ok"]

    served = Served(app, max_workers=2)
    for stream_id in (1, 3, 5, 7):
        served.feed(request(stream_id), StreamEnded(stream_id=stream_id))
    served.run_until(lambda: len(served.runtime.threads) == 2 and len(running) == 2)
    for _ in range(20):
        served.runtime.run()
    assert len(served.runtime.threads) == 2  # the other two wait without a thread
    release.set()
    served.run_until(lambda: all(served.ended(s) for s in (1, 3, 5, 7)))
    assert most[0] == 2
    assert len(served.runtime.threads) == 4


def test_lifespan_is_answered_for_the_app() -> None:
    runtime = FakeRuntime()
    adapter = WSGIAdapter(hello, runtime=runtime, max_workers=1, logger=logging.getLogger())
    inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[Any] = []

    async def receive() -> Any:
        return inbox.pop(0)

    async def send(message: Any) -> None:
        sent.append(message["type"])

    task = runtime.spawn(adapter, {"type": "lifespan"}, receive, send)
    runtime.run()
    assert task.done and task.error is None
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
