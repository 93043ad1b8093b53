"""The HTTP/1.1 state machine driven by random clients and random applications.

Hypothesis draws a sequence of requests (plain, with bodies, chunked, HEAD, `Connection: close`,
`Expect: 100-continue`, WebSocket handshakes the application declines, upgrades to a protocol
the server does not take, garbage), cuts their bytes at random points, and draws how the
application behaves for each (answer early, before the body is complete, or after it;
acknowledge the body or not; frame the answer with a length, chunks, trailers, or no body).
The driver honours `wants_read` as a runtime does and drains `data_to_send()` after every call.
Then a real h11 client parses everything the server wrote:
- every byte is valid HTTP/1.1 (h11 raises otherwise),
- responses come in request order, each complete, each the one the application sent,
- the connection only stops answering after a request that closes it,
- and the server raises nothing (the application here never breaks the protocol).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import h11
from hypothesis import given, settings
from hypothesis import strategies as st

from multicorn.protocol.events import (
    AcknowledgeData,
    Command,
    ConnectionClosed,
    DataReceived,
    Event,
    Headers,
    RequestReceived,
    RequestRejected,
    SendData,
    SendInformational,
    SendResponse,
    SendTrailers,
    StreamEnded,
    StreamKind,
    StreamReset,
)
from multicorn.protocol.http11 import HTTP11Protocol

from .helpers import make_server, request_bytes

KINDS = ["get", "head", "post", "chunked", "close", "expect", "websocket", "upgrade", "garbage"]
# After these the server closes the connection once their answer is out.
CLOSING = {"close", "websocket", "garbage"}
WEBSOCKET_HEADERS: Headers = [
    (b"upgrade", b"websocket"),
    (b"connection", b"Upgrade"),
    (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
    (b"sec-websocket-version", b"13"),
]


def wire_of(kind: str, body: bytes) -> bytes:
    if kind == "get":
        return request_bytes(b"GET", b"/get")
    if kind == "head":
        return request_bytes(b"HEAD", b"/head")
    if kind == "post":
        return request_bytes(b"POST", b"/post", body=body)
    if kind == "chunked":
        return request_bytes(b"PUT", b"/chunked", body=[body[:3], body[3:]], chunked=True)
    if kind == "close":
        return request_bytes(b"GET", b"/close", [(b"connection", b"close")])
    if kind == "expect":
        return request_bytes(b"POST", b"/expect", [(b"expect", b"100-continue")], body=body)
    if kind == "websocket":
        return request_bytes(b"GET", b"/ws", WEBSOCKET_HEADERS)
    if kind == "upgrade":  # a protocol the server does not take: served as HTTP/1.1
        headers = [(b"connection", b"Upgrade"), (b"upgrade", b"foo/1")]
        return request_bytes(b"POST", b"/upgrade", headers, body=body)
    return b"GARBAGE\r\n\r\n"


@dataclass
class App:
    """How the application behaves for one request."""

    early: bool  # answer on RequestReceived, before the body is complete
    ack: bool  # acknowledge body bytes as they arrive
    framing: str  # "length", "chunked", "trailers", "empty"
    informational: bool  # send a 1xx first (a 100 if the client expects one, else a 103)


@dataclass
class Run:
    kinds: list[str]
    answered: list[int] = field(default_factory=list)  # stream ids, in the order answered
    expected: dict[int, tuple[int, bytes]] = field(default_factory=dict)  # id -> status, body
    refused_100: set[int] = field(default_factory=set)  # answered while the client waited


apps = st.builds(
    App,
    early=st.booleans(),
    ack=st.booleans(),
    framing=st.sampled_from(["length", "chunked", "trailers", "empty"]),
    informational=st.booleans(),
)


def answer(
    server: _Sending, stream_id: int, request: RequestReceived | None, app: App, run: Run
) -> None:
    """The application's whole response for one stream."""
    if request is not None and request.kind is StreamKind.WEBSOCKET:
        status, body = 403, b"no websockets here"  # declined: an ordinary response
    elif request is None:
        status, body = 400, b"rejected"
    else:
        status, body = 200, b"response to %d" % stream_id
    if app.informational and request is not None:
        status_1xx = 100 if request.expects_continue else 103
        server.send(SendInformational(stream_id=stream_id, status=status_1xx), 0.0)
    elif request is not None and request.expects_continue:
        run.refused_100.add(stream_id)
    # Recorded before sending: the last command may release (and answer) the next request.
    run.answered.append(stream_id)
    run.expected[stream_id] = (
        status,
        b"" if request is not None and request.method == b"HEAD" else body,
    )
    headers: Headers = [(b"x-stream", b"%d" % stream_id)]
    if app.framing == "empty" and request is not None and status == 200:
        run.expected[stream_id] = (204, b"")
        server.send(
            SendResponse(stream_id=stream_id, status=204, headers=headers, end_stream=True), 0
        )
    elif app.framing == "length":
        headers.append((b"content-length", b"%d" % len(body)))
        server.send(SendResponse(stream_id=stream_id, status=status, headers=headers), 0.0)
        server.send(SendData(stream_id=stream_id, data=body, end_stream=True), 0.0)
    else:
        server.send(SendResponse(stream_id=stream_id, status=status, headers=headers), 0.0)
        server.send(SendData(stream_id=stream_id, data=body[:5]), 0.0)
        if app.framing == "trailers":
            server.send(SendData(stream_id=stream_id, data=body[5:]), 0.0)
            server.send(SendTrailers(stream_id=stream_id, headers=[(b"x-done", b"1")]), 0.0)
        else:
            server.send(SendData(stream_id=stream_id, data=body[5:], end_stream=True), 0.0)


def drive(
    kinds: list[str], bodies: list[bytes], chunks: list[bytes], plan: list[App], eof: bool
) -> tuple[Run, bytes, bool]:
    server = make_server(websocket=True, body_buffer_size=16)
    run = Run(kinds)
    out = bytearray()
    requests: dict[int, RequestReceived] = {}
    unacked: dict[int, int] = {}
    done: set[int] = set()  # streams answered

    def app_for(stream_id: int) -> App:
        return plan[(stream_id - 1) % len(plan)]

    def handle(events: list[Event]) -> None:
        out.extend(server.data_to_send())
        for event in events:
            if isinstance(event, RequestReceived):
                requests[event.stream_id] = event
                if app_for(event.stream_id).early or event.kind is StreamKind.WEBSOCKET:
                    respond(event.stream_id)
            elif isinstance(event, DataReceived):
                if app_for(event.stream_id).ack:
                    step(AcknowledgeData(stream_id=event.stream_id, amount=len(event.data)))
                else:
                    unacked[event.stream_id] = unacked.get(event.stream_id, 0) + len(event.data)
            elif isinstance(event, StreamEnded):
                respond(event.stream_id)
            elif isinstance(event, RequestRejected):
                respond(event.stream_id, rejected=True)
            else:
                assert isinstance(event, (ConnectionClosed, StreamReset)), event

    def step(command: Command) -> None:
        handle(server.send(command, 0.0))

    def respond(stream_id: int, *, rejected: bool = False) -> None:
        if stream_id in done:
            return
        done.add(stream_id)
        proxy = _Sending(server, handle)
        answer(proxy, stream_id, None if rejected else requests[stream_id], app_for(stream_id), run)
        out.extend(server.data_to_send())

    pending = list(chunks)
    while pending and not server.closed:
        if not server.wants_read:
            # A runtime stops reading; the application catches up with the body it was given.
            for stream_id, amount in list(unacked.items()):
                del unacked[stream_id]
                step(AcknowledgeData(stream_id=stream_id, amount=amount))
            if not server.wants_read:
                break
        handle(server.receive_data(pending.pop(0), 0.0))
    if eof and not server.closed and server.wants_read:
        handle(server.receive_data(b"", 0.0))
    out.extend(server.data_to_send())
    return run, bytes(out), server.closed


class _Sending:
    """Passes the application's commands to the server and their events back to the driver."""

    def __init__(self, server: HTTP11Protocol, handle: Callable[[list[Event]], None]) -> None:
        self._server = server
        self._handle = handle

    def send(self, command: Command, now: float) -> list[Event]:
        self._handle(self._server.send(command, now))
        return []


def parse_all(data: bytes, run: Run, closed: bool) -> list[tuple[int, int, bytes]]:
    """(stream id, status, body) of every response, read by an h11 client; raises on any
    invalid byte."""
    client = h11.Connection(h11.CLIENT)
    client.receive_data(data)
    if closed:
        client.receive_data(b"")
    seen: list[tuple[int, int, bytes]] = []
    for index, kind in enumerate(run.kinds, start=1):
        if index not in run.expected:
            break
        method = "HEAD" if kind == "head" else "GET"
        client.send(h11.Request(method=method, target="/", headers=[("Host", "a")]))
        client.send(h11.EndOfMessage())
        status = 0
        stream = -1
        body = b""
        while True:
            event = client.next_event()
            assert event is not h11.NEED_DATA, f"response {index} is incomplete"
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                stream = int(dict(event.headers)[b"x-stream"])
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
        seen.append((stream, status, body))
        if client.our_state is h11.DONE and client.their_state is h11.DONE:
            client.start_next_cycle()
        else:
            break
    # Nothing may follow the last response but the end of the connection.
    assert client.trailing_data[0] == b"", client.trailing_data
    return seen


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[str], list[bytes], list[bytes], list[App], bool]:
    kinds = draw(st.lists(st.sampled_from(KINDS), min_size=1, max_size=6))
    bodies = [draw(st.binary(min_size=0, max_size=40)) for _ in kinds]
    wire = b"".join(wire_of(kind, body) for kind, body in zip(kinds, bodies, strict=True))
    points = draw(st.lists(st.integers(min_value=1, max_value=len(wire) - 1), max_size=8))
    edges = [0, *sorted(set(points)), len(wire)]
    chunks = [wire[a:b] for a, b in itertools.pairwise(edges) if b > a]
    plan = draw(st.lists(apps, min_size=len(kinds), max_size=len(kinds)))
    return kinds, bodies, chunks, plan, draw(st.booleans())


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_random_clients_and_applications(
    scenario: tuple[list[str], list[bytes], list[bytes], list[App], bool],
) -> None:
    kinds, bodies, chunks, plan, eof = scenario
    run, out, closed = drive(kinds, bodies, chunks, plan, eof)
    seen = parse_all(out, run, closed)
    # In request order, each the response the application sent for that stream.
    assert [stream for stream, _, _ in seen] == run.answered
    assert run.answered == list(range(1, len(run.answered) + 1))
    for stream, status, body in seen:
        assert (status, body) == run.expected[stream]
    # The connection stops answering only after a request that closes it: one that says so,
    # a declined WebSocket, a refused request, or an early answer to a client still waiting
    # for its 100 (it will not send the body, so the connection cannot be reused).
    if len(run.answered) < len(kinds):
        assert closed, (kinds, run.answered)
        last = run.answered[-1] if run.answered else 0
        assert last, (kinds, run.answered)
        assert kinds[last - 1] in CLOSING or last in run.refused_100, (kinds, run.answered)


def test_a_transition_not_in_the_table_raises_local_protocol_error() -> None:
    from multicorn.protocol import http11
    from multicorn.protocol.errors import LocalProtocolError

    assert http11._TRANSITIONS[http11.S_IDLE, http11.E_REQUEST] is http11.S_RECEIVING
    for state, event in [
        (http11.S_CLOSED, http11.E_REQUEST),
        (http11.S_CLOSED, http11.E_CLOSE),
        (http11.S_SWITCHED, http11.E_CLOSE),
        (http11.S_TUNNEL, http11.E_RESPONSE_END),
        (http11.S_RESPONDING, http11.E_BODY_END),
    ]:
        try:
            http11._TRANSITIONS[state, event]
        except LocalProtocolError as exc:
            assert event.name in str(exc) and state.name in str(exc)
        else:
            raise AssertionError(f"{event.name} from {state.name} was allowed")
