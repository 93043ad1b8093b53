"""Helpers for the sans-IO HTTP/1.1 tests: a real h11 client facing an HTTP11Protocol.

`Pair` follows h11's own ConnectionPair test helper: the client side is an `h11.Connection` in
the CLIENT role, so request bytes are produced and response bytes are parsed by an independent
HTTP/1.1 implementation instead of by hand-written expectations.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import h11

from multicorn.protocol.events import (
    DataReceived,
    Event,
    Headers,
    RequestReceived,
    RequestRejected,
    SendData,
    SendResponse,
)
from multicorn.protocol.http11 import HTTP11Limits, HTTP11Protocol


def make_server(now: float = 0.0, **limits: object) -> HTTP11Protocol:
    return HTTP11Protocol(limits=HTTP11Limits(**limits), now=now)  # type: ignore[arg-type]


def serve_each(engine: str, raw: bytes, points: list[int]) -> list[object]:
    """Feed `raw` cut at `points` to a server on `engine`, answering each request as an app
    would: every request's fate in order, its (method, target) or, last, the status it was
    refused with (pipelined requests come out only after the one before is answered)."""
    protocol = HTTP11Protocol(limits=HTTP11Limits(engine=engine), now=0.0)
    seen: list[object] = []
    start = 0
    for point in [*points, len(raw)]:
        pending = protocol.receive_data(raw[start:point], 0.0) if point > start else []
        start = point
        while pending:
            event = pending.pop(0)
            if isinstance(event, RequestRejected):
                return [*seen, event.error.error_status_hint]
            if isinstance(event, RequestReceived):
                seen.append((event.method, event.target))
                pending += protocol.send(
                    SendResponse(stream_id=event.stream_id, status=200, headers=[]), 0.0
                )
                pending += protocol.send(
                    SendData(stream_id=event.stream_id, data=b"", end_stream=True), 0.0
                )
    return seen


@dataclass
class Response:
    """One response as an h11 client understood it."""

    status: int
    reason: bytes
    http_version: bytes
    headers: Headers
    body: bytes = b""
    informational: list[int] = field(default_factory=list)
    complete: bool = False

    def header(self, name: bytes) -> bytes | None:
        values = [value for key, value in self.headers if key == name]
        return b", ".join(values) if values else None

    def header_tokens(self, name: bytes) -> set[bytes]:
        value = self.header(name) or b""
        return {token.strip().lower() for token in value.split(b",") if token.strip()}


def request_bytes(
    method: bytes = b"GET",
    target: bytes = b"/",
    headers: Headers | None = None,
    body: bytes | list[bytes] = b"",
    *,
    chunked: bool = False,
) -> bytes:
    """Serialize one HTTP/1.1 request with a throwaway h11 client."""
    client = h11.Connection(h11.CLIENT)
    all_headers: Headers = [(b"host", b"example.com")]
    all_headers += headers or []
    chunks = body if isinstance(body, list) else ([body] if body else [])
    total = sum(len(chunk) for chunk in chunks)
    if chunked:
        all_headers.append((b"transfer-encoding", b"chunked"))
    elif total or method in (b"POST", b"PUT"):
        all_headers.append((b"content-length", str(total).encode()))
    out = client.send(h11.Request(method=method, target=target, headers=all_headers)) or b""
    for chunk in chunks:
        out += client.send(h11.Data(data=chunk)) or b""
    out += client.send(h11.EndOfMessage()) or b""
    return out


def normalize(events: list[Event]) -> list[Event]:
    """Merge consecutive DataReceived of the same stream (their boundaries are arbitrary)."""
    merged: list[Event] = []
    for event in events:
        previous = merged[-1] if merged else None
        if (
            isinstance(event, DataReceived)
            and isinstance(previous, DataReceived)
            and previous.stream_id == event.stream_id
        ):
            merged[-1] = DataReceived(stream_id=event.stream_id, data=previous.data + event.data)
        else:
            merged.append(event)
    return merged


def parse_responses(
    data: bytes, methods: list[bytes] | None = None, *, eof: bool = False
) -> list[Response]:
    """Parse a server's output with an h11 client that sent one request per entry of `methods`.

    The placeholder requests are never transmitted: they only put the client in the state to read
    the responses (a HEAD response has no body, for example). `eof` feeds the end of the stream
    after `data`, which close-delimited bodies need.
    """
    methods = methods if methods is not None else [b"GET"]
    client = h11.Connection(h11.CLIENT)
    client.receive_data(data)
    if eof:
        client.receive_data(b"")
    responses: list[Response] = []
    for method in methods:
        client.send(h11.Request(method=method, target="/", headers=[("Host", "example.com")]))
        client.send(h11.EndOfMessage())
        informational: list[int] = []
        current: Response | None = None
        while True:
            try:
                event = client.next_event()
            except h11.RemoteProtocolError:
                break  # truncated or invalid: whatever was parsed stays incomplete
            if event is h11.NEED_DATA or event is h11.PAUSED:
                break
            if isinstance(event, h11.InformationalResponse):
                informational.append(event.status_code)
            elif isinstance(event, h11.Response):
                current = Response(
                    status=event.status_code,
                    reason=bytes(event.reason),
                    http_version=bytes(event.http_version),
                    headers=[(bytes(k), bytes(v)) for k, v in event.headers],
                    informational=informational,
                )
                responses.append(current)
            elif isinstance(event, h11.Data):
                assert current is not None
                current.body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                assert current is not None
                current.complete = True
                break
            elif isinstance(event, h11.ConnectionClosed):
                break
        if current is None or not current.complete:
            break
        if client.our_state is h11.DONE and client.their_state is h11.DONE:
            client.start_next_cycle()
        else:
            break
    return responses


def parse_one(data: bytes, method: bytes = b"GET", *, eof: bool = False) -> Response:
    responses = parse_responses(data, [method], eof=eof)
    assert len(responses) == 1, responses
    assert responses[0].complete, responses[0]
    return responses[0]


def respond(
    server: HTTP11Protocol,
    stream_id: int,
    body: bytes = b"ok",
    *,
    status: int = 200,
    headers: Headers | None = None,
    chunked: bool = False,
    now: float = 0.0,
) -> list[Event]:
    """A whole response in two commands; returns the events the final command released."""
    response_headers = list(headers or [])
    if not chunked:
        response_headers.append((b"content-length", str(len(body)).encode()))
    events = server.send(
        SendResponse(stream_id=stream_id, status=status, headers=response_headers), now
    )
    events += server.send(SendData(stream_id=stream_id, data=body, end_stream=True), now)
    return events


def answer_rejection(
    server: HTTP11Protocol, rejected: RequestRejected, now: float = 0.0
) -> list[Event]:
    """Answer a RequestRejected the way the ASGI layer does."""
    assert rejected.error is not None
    status = rejected.error.error_status_hint
    body = b"rejected"
    events = server.send(
        SendResponse(
            stream_id=rejected.stream_id,
            status=status,
            headers=[(b"content-type", b"text/plain"), (b"content-length", b"8")],
        ),
        now,
    )
    events += server.send(SendData(stream_id=rejected.stream_id, data=body, end_stream=True), now)
    return events


class Pair:
    """An h11 client wired to an HTTP11Protocol, in the style of h11's ConnectionPair."""

    def __init__(self, now: float = 0.0, **limits: object) -> None:
        self.server = make_server(now, **limits)
        self.client = h11.Connection(h11.CLIENT)

    def client_send(self, *events: h11.Event, now: float = 0.0) -> list[Event]:
        data = b"".join(self.client.send(event) or b"" for event in events)
        return self.server.receive_data(data, now)

    def client_events(self) -> list[object]:
        """Move the server's output to the client; what the client parsed from it."""
        data = self.server.data_to_send()
        if data:
            self.client.receive_data(data)
        if self.server.closed:
            self.client.receive_data(b"")
        events: list[object] = []
        while True:
            event = self.client.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                break
            events.append(event)
            if isinstance(event, h11.ConnectionClosed):
                break
        return events
