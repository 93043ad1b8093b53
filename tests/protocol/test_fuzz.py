"""Fuzzing the byte-level cores: random and mutated byte streams fed to HTTP/1.1 (each parsing
engine, through tests/protocol/conftest.py) and to HTTP/2, cut at random points, with every
request answered as an application would. Whatever comes in, nothing but events may come out of
protocol/ (no exception), and once the peer has hung up the connection ends cleanly: the core
says `closed`.

Each test runs `MULTICORN_FUZZ_EXAMPLES` examples (200 by default, so
CI stays quick); a longer hunt:
`MULTICORN_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest tests/protocol/test_fuzz.py`.
"""

from __future__ import annotations

import os

import h2.config
import h2.connection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from multicorn.protocol.base import ServerProtocol
from multicorn.protocol.errors import LocalProtocolError
from multicorn.protocol.events import (
    Event,
    RequestReceived,
    RequestRejected,
    SendData,
    SendResponse,
    UpgradeRequested,
)
from multicorn.protocol.http2 import HTTP2Limits, HTTP2Protocol
from multicorn.protocol.http11 import HTTP11Limits, HTTP11Protocol

from .helpers import serve_each

EXAMPLES = int(os.environ.get("MULTICORN_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

HTTP11_SEEDS = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /x?y=1 HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n"
    b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;e=v\r\nhello\r\n0\r\nT: 1\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET http://a:80/p HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nz",
    b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n"
    b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
]

# Bytes that matter to HTTP/1.1 parsers: separators, line ends, controls, obs-text.
SPECIAL = [b"\r", b"\n", b"\r\n", b" ", b"\t", b":", b";", b",", b"\x00", b"\x7f", b"\xff", b"0"]


def _h2_seeds() -> list[bytes]:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    head = [(":method", "POST"), (":scheme", "https"), (":authority", "a"), (":path", "/")]
    client.send_headers(1, head)
    client.send_data(1, b"body", end_stream=True)
    client.send_headers(3, head, end_stream=True)
    client.ping(b"12345678")
    client.reset_stream(3)
    return [client.data_to_send()]


H2_SEEDS = _h2_seeds()


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 6))):
        where = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "insert", "delete", "duplicate", "special"]))
        if action == "flip" and where < len(data):
            data[where] = draw(st.integers(0, 255))
        elif action == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del data[where : where + draw(st.integers(1, 8))]
        elif action == "duplicate":
            data[where:where] = data[where : where + draw(st.integers(1, 32))]
        else:
            data[where:where] = draw(st.sampled_from(SPECIAL))
    return bytes(data)


def http11_input() -> st.SearchStrategy[bytes]:
    return st.one_of(mutated(HTTP11_SEEDS), st.binary(max_size=256))


def cuts(data: bytes) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, len(data)), max_size=6).map(sorted)


def answer(protocol: ServerProtocol, events: list[Event], now: float) -> None:
    """Answer every request the way the connection driver and an application would."""
    pending = list(events)
    while pending:
        event = pending.pop(0)
        if isinstance(event, UpgradeRequested):
            return  # the driver would switch protocols here: this core's part is over
        if isinstance(event, (RequestReceived, RequestRejected)):
            status = 200 if isinstance(event, RequestReceived) else event.error.error_status_hint
            if 100 <= status < 200:
                status = 400
            for command in (
                SendResponse(stream_id=event.stream_id, status=status, headers=[]),
                SendData(stream_id=event.stream_id, data=b"", end_stream=True),
            ):
                try:
                    pending += protocol.send(command, now)
                except LocalProtocolError:
                    # The stream may have ended meanwhile (a reset, a closed connection): the
                    # core refuses the command, which the driver handles. Nothing else may
                    # escape.
                    break


def drive(protocol: ServerProtocol, data: bytes, points: list[int]) -> None:
    now = 0.0
    start = 0
    for point in [*points, len(data)]:
        piece = data[start:point]
        start = point
        if piece:
            now += 0.001
            answer(protocol, protocol.receive_data(piece, now), now)
            protocol.data_to_send()
            if protocol.closed:
                return
    answer(protocol, protocol.receive_data(b"", now), now)
    protocol.data_to_send()


@FUZZ
@given(data=st.data())
def test_http11_any_input_ends_in_events_and_a_closed_connection(data: st.DataObject) -> None:
    raw = data.draw(http11_input())
    protocol = HTTP11Protocol(limits=HTTP11Limits(websocket=True), now=0.0)
    drive(protocol, raw, data.draw(cuts(raw)))
    # The peer hung up (EOF) and every request was answered: nothing may keep it open, unless
    # the connection was handed to another protocol (an upgrade), which is the driver's.
    if not protocol.closed:
        assert any(marker in raw for marker in (b"h2c", b"websocket", b"PRI")), raw


@FUZZ
@given(data=st.data())
def test_http2_any_input_ends_in_events_and_a_closed_connection(data: st.DataObject) -> None:
    raw = data.draw(st.one_of(mutated(H2_SEEDS), st.binary(max_size=256)))
    protocol = HTTP2Protocol(limits=HTTP2Limits(), now=0.0, scheme=b"https")
    drive(protocol, raw, data.draw(cuts(raw)))
    assert protocol.closed


def _first_verdict(engine: str, raw: bytes) -> tuple[object, ...]:
    """What the core made of the first request in `raw`: its head, or the refusal's status."""
    protocol = HTTP11Protocol(limits=HTTP11Limits(engine=engine), now=0.0)
    for event in protocol.receive_data(raw, 0.0):
        if isinstance(event, RequestRejected):
            return ("rejected", event.error.error_status_hint)
        if isinstance(event, RequestReceived):
            return ("request", event.method, event.target, tuple(event.headers))
    return ("incomplete",)


@FUZZ
@given(raw=mutated(HTTP11_SEEDS[:7]))
def test_the_two_http11_engines_agree(raw: bytes) -> None:
    # One verdict whatever the engine (issue 10): the same head, or the same refusal.
    assert _first_verdict("h11", raw) == _first_verdict("httptools", raw), raw


_METHODS = st.sampled_from([b"GET", b"POST", b"PROPFIND", b"FOO", b"get", b"M-SEARCH", b"G(T"])


@st.composite
def _pipelined(draw: st.DrawFn) -> bytes:
    """Requests back to back whose request lines may have runs of spaces, unknown methods,
    and bodies of every framing in between (where the llhttp engine must find the next line)."""
    out = b""
    for _ in range(draw(st.integers(1, 4))):
        method = draw(_METHODS)
        gaps = [b" " * draw(st.sampled_from([1, 1, 1, 2, 3])) for _ in range(2)]
        out += b"\r\n" * draw(st.integers(0, 1))
        out += method + gaps[0] + b"/p" + gaps[1] + b"HTTP/1.1\r\nHost: a\r\n"
        body = draw(st.sampled_from([b"", b"GET  / HTTP/1.1\r\n", b"  x  "]))
        framing = draw(st.sampled_from(["none", "length", "chunked"]))
        if framing == "length" or (framing == "none" and body):
            out += b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        elif framing == "chunked":
            out += b"Transfer-Encoding: chunked\r\n\r\n"
            for _ in range(draw(st.integers(0, 3)) if body else 0):
                size = draw(st.sampled_from([b"%x", b"00%x", b"%X;ext=v", b'%x;a="b c";d']))
                out += size % len(body) + b"\r\n" + body + b"\r\n"
            out += b"0\r\n" + draw(st.sampled_from([b"", b"T: GET / HTTP/1.1\r\n"])) + b"\r\n"
        else:
            out += b"\r\n"
    return out


@FUZZ
@given(data=st.data())
def test_request_lines_get_one_verdict_on_both_engines_at_every_split(
    data: st.DataObject,
) -> None:
    raw = data.draw(_pipelined())
    points = data.draw(cuts(raw))
    reference = serve_each("h11", raw, [])
    assert serve_each("h11", raw, points) == reference, raw
    assert serve_each("httptools", raw, points) == reference, raw
    assert serve_each("httptools", raw, []) == reference, raw
