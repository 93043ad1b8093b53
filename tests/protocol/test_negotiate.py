"""Choosing the protocol of a connection (ALPN) and switching from HTTP/1.1 to h2c.

h2c comes two ways: prior knowledge (a cleartext connection opening with the HTTP/2 preface)
and `Upgrade: h2c` on the first request (RFC 7540 3.2). The client side of every switch is a
real h2 client, so what the upgraded server writes is checked by an independent parser.
"""

from __future__ import annotations

import base64

import h2.errors
import h2.events
import pytest

from multicorn.protocol.errors import LocalProtocolError
from multicorn.protocol.events import (
    DataReceived,
    Event,
    H2CPriorKnowledge,
    H2CUpgrade,
    PushPromise,
    RequestReceived,
    RequestRejected,
    SendData,
    SendResponse,
    StreamEnded,
    StreamKind,
    UpgradeRequested,
)
from multicorn.protocol.http2 import PREFACE, HTTP2Limits, HTTP2Protocol
from multicorn.protocol.http11 import HTTP11Limits, HTTP11Protocol
from multicorn.protocol.negotiate import ProtocolLimits, for_connection, upgrade

from .h2helpers import client_body, make_client, merge_data, of_type, request_headers
from .helpers import parse_one, request_bytes, respond

H2C = HTTP11Limits(h2c_prior_knowledge=True, h2c_upgrade=True)


def limits(http11: HTTP11Limits | None = None, **http2: object) -> ProtocolLimits:
    return ProtocolLimits(
        http11=http11 or HTTP11Limits(),
        http2=HTTP2Limits(**http2),  # type: ignore[arg-type]
    )


def upgrade_request(
    settings: bytes | None,
    body: bytes = b"",
    *,
    method: bytes = b"POST",
    target: bytes = b"/submit",
    connection: bytes = b"Upgrade, HTTP2-Settings",
) -> bytes:
    headers = [(b"connection", connection), (b"upgrade", b"h2c")]
    if settings is not None:
        headers.append((b"http2-settings", settings))
    return request_bytes(method, target, headers, body)


def only_upgrade(events: list[Event]) -> UpgradeRequested:
    assert len(events) == 1, events
    event = events[0]
    assert isinstance(event, UpgradeRequested)
    return event


def assert_plain_http11(events: list[Event], stream_id: int, body: bytes = b"") -> None:
    assert not of_type(events, UpgradeRequested)
    merged = merge_data(events)
    request = merged[0]
    assert isinstance(request, RequestReceived)
    assert request.stream_id == stream_id
    assert request.http_version == "1.1"
    if body:
        assert merged[1] == DataReceived(stream_id=stream_id, data=body)
    assert merged[-1] == StreamEnded(stream_id=stream_id)


# ---- choosing by ALPN ---------------------------------------------------------------------


def test_alpn_h2_gives_http2() -> None:
    protocol = for_connection(limits(max_concurrent_streams=9), alpn="h2", tls=True, now=0.0)
    assert isinstance(protocol, HTTP2Protocol)
    client = make_client()
    client.initiate_connection()
    client.send_headers(1, request_headers(b"/tls"), end_stream=True)
    events = protocol.receive_data(client.data_to_send(), 0.0)
    assert isinstance(events[0], RequestReceived)
    assert events[0].http_version == "2"
    client.receive_data(protocol.data_to_send())
    assert client.remote_settings.max_concurrent_streams == 9  # the limits were applied


@pytest.mark.parametrize("alpn", [None, "http/1.1"])
@pytest.mark.parametrize("tls", [True, False])
def test_no_h2_alpn_gives_http11(alpn: str | None, tls: bool) -> None:
    protocol = for_connection(limits(), alpn=alpn, tls=tls, now=0.0)
    assert isinstance(protocol, HTTP11Protocol)
    events = protocol.receive_data(request_bytes(), 0.0)
    assert_plain_http11(events, 1)


@pytest.mark.parametrize("alpn", [None, "http/1.1"])
def test_h2c_is_off_over_tls(alpn: str | None) -> None:
    protocol = for_connection(limits(H2C), alpn=alpn, tls=True, now=0.0)
    assert isinstance(protocol, HTTP11Protocol)
    events = protocol.receive_data(PREFACE, 0.0)
    assert not of_type(events, UpgradeRequested)
    assert events  # refused as HTTP/1.1 (there is no "HTTP/2.0" request line)
    # ...and so is `Upgrade: h2c`.
    protocol = for_connection(limits(H2C), alpn=alpn, tls=True, now=0.0)
    settings = make_client().initiate_upgrade_connection()
    events = protocol.receive_data(upgrade_request(settings, b"body"), 0.0)
    assert_plain_http11(events, 1, b"body")
    assert b"101" not in protocol.data_to_send()


@pytest.mark.parametrize(
    "wire",
    [
        b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",  # the right start, the wrong rest
        b"PRI * HTTP/2.0\r\nHost: a\r\n\r\n",  # an HTTP/1.1-looking head after it
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\r",
    ],
)
@pytest.mark.parametrize("whole", [True, False])
def test_a_near_preface_gets_an_http2_goaway(wire: bytes, whole: bool) -> None:
    """RFC 9113 3.4: an invalid connection preface is a connection error of type
    PROTOCOL_ERROR, answered with GOAWAY (not with an HTTP/1.1 400)."""
    protocol = for_connection(limits(H2C), alpn=None, tls=False, now=0.0)
    pieces = [wire] if whole else [wire[i : i + 1] for i in range(len(wire))]
    events: list[Event] = []
    for piece in pieces:
        events += protocol.receive_data(piece, 0.0)
    event = only_upgrade(events)
    assert isinstance(event, H2CPriorKnowledge)
    http2, owed, leftover = upgrade(event, limits(H2C), now=0.0)
    assert owed == []
    events = http2.receive_data(leftover, 0.0)
    assert http2.closed
    out = http2.data_to_send()
    assert not out.startswith(b"HTTP/1.1")
    client = make_client()
    received = client.receive_data(out)
    goaways = [e for e in received if isinstance(e, h2.events.ConnectionTerminated)]
    assert goaways and goaways[0].error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR


def test_h2c_is_on_in_cleartext_when_configured() -> None:
    protocol = for_connection(limits(H2C), alpn=None, tls=False, now=0.0)
    assert isinstance(protocol, HTTP11Protocol)
    event = only_upgrade(protocol.receive_data(PREFACE, 0.0))
    assert isinstance(event, H2CPriorKnowledge)


def test_prior_knowledge_is_off_by_default() -> None:
    protocol = for_connection(limits(), alpn=None, tls=False, now=0.0)
    events = protocol.receive_data(PREFACE, 0.0)
    assert not of_type(events, UpgradeRequested)


# ---- h2c with prior knowledge ---------------------------------------------------------------


def _client_opening(path: bytes = b"/pk") -> tuple[h2.connection.H2Connection, bytes]:
    client = make_client()
    client.initiate_connection()
    client.send_headers(1, request_headers(path, scheme=b"http"), end_stream=True)
    return client, client.data_to_send()


@pytest.mark.parametrize("cut", range(1, len(PREFACE)))
def test_prior_knowledge_preface_split_anywhere(cut: int) -> None:
    _, data = _client_opening()
    protocol = HTTP11Protocol(limits=HTTP11Limits(h2c_prior_knowledge=True), now=0.0)
    assert protocol.receive_data(data[:cut], 0.0) == []
    event = only_upgrade(protocol.receive_data(data[cut:], 0.0))
    assert event == H2CPriorKnowledge(leftover=data)
    assert protocol.data_to_send() == b""
    # Whatever comes after the switch belongs to the new protocol, not to this one.
    assert protocol.receive_data(b"more", 0.0) == []


def test_prior_knowledge_preface_one_byte_at_a_time() -> None:
    protocol = HTTP11Protocol(limits=HTTP11Limits(h2c_prior_knowledge=True), now=0.0)
    for i in range(len(PREFACE) - 1):
        assert protocol.receive_data(PREFACE[i : i + 1], 0.0) == []
    event = only_upgrade(protocol.receive_data(PREFACE[-1:], 0.0))
    assert event.leftover == PREFACE


def test_prior_knowledge_upgrade_serves_the_request() -> None:
    client, data = _client_opening(b"/after-switch")
    protocol = HTTP11Protocol(limits=HTTP11Limits(h2c_prior_knowledge=True), now=0.0)
    assert protocol.receive_data(data[:10], 0.0) == []
    event = only_upgrade(protocol.receive_data(data[10:], 0.0))

    server, events, leftover = upgrade(event, limits(), now=0.0)
    assert isinstance(server, HTTP2Protocol)
    assert events == []
    assert leftover == data
    events = server.receive_data(leftover, 0.0)
    request = events[0]
    assert isinstance(request, RequestReceived)
    assert (request.stream_id, request.target, request.http_version) == (1, b"/after-switch", "2")

    server.send(SendResponse(stream_id=1, status=200, headers=[]), 0.0)
    server.send(SendData(stream_id=1, data=b"switched", end_stream=True), 0.0)
    client_events = client.receive_data(server.data_to_send())
    assert client_body(client_events, 1) == b"switched"
    assert of_type(client_events, h2.events.StreamEnded)


def test_http11_request_sharing_the_prefaces_first_letter_is_not_mistaken() -> None:
    protocol = HTTP11Protocol(limits=HTTP11Limits(h2c_prior_knowledge=True), now=0.0)
    data = request_bytes(b"PUT", b"/p", body=b"hi")
    events: list[Event] = []
    for i in range(len(data)):
        events += protocol.receive_data(data[i : i + 1], 0.0)
    assert_plain_http11(events, 1, b"hi")
    assert isinstance(events[0], RequestReceived) and events[0].method == b"PUT"


# ---- Upgrade: h2c ---------------------------------------------------------------------------


def test_upgrade_h2c_with_a_body() -> None:
    client = make_client()
    settings = client.initiate_upgrade_connection()
    http11 = HTTP11Protocol(limits=HTTP11Limits(h2c_upgrade=True), now=0.0)
    body = b"the body of the upgrade request"
    event = only_upgrade(http11.receive_data(upgrade_request(settings, body), 0.0))
    assert isinstance(event, H2CUpgrade)
    assert event.body == body
    assert event.settings == settings
    assert event.leftover == b""
    assert event.request is not None
    assert event.request.http_version == "1.1"
    switching = http11.data_to_send()
    assert switching.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"upgrade: h2c" in switching.lower()
    assert switching.endswith(b"\r\n\r\n")

    server, events, leftover = upgrade(event, limits(), now=0.0)
    assert isinstance(server, HTTP2Protocol)
    assert leftover == b""
    assert [type(e) for e in events] == [RequestReceived, DataReceived, StreamEnded]
    request = events[0]
    assert isinstance(request, RequestReceived)
    assert request.stream_id == 1
    assert (request.method, request.target, request.http_version) == (b"POST", b"/submit", "2")
    assert request.headers[0] == (b"host", b"example.com")
    assert events[1:] == [DataReceived(stream_id=1, data=body), StreamEnded(stream_id=1)]

    # The client sends its preface after the 101; the answer on stream 1 reaches it.
    assert server.receive_data(client.data_to_send(), 0.0) == []
    server.send(SendResponse(stream_id=1, status=201, headers=[(b"x-h2c", b"yes")]), 0.0)
    server.send(SendData(stream_id=1, data=b"created", end_stream=True), 0.0)
    client_events = client.receive_data(server.data_to_send())
    responses = of_type(client_events, h2.events.ResponseReceived)
    assert [(r.stream_id, r.headers) for r in responses] == [
        (1, [(b":status", b"201"), (b"x-h2c", b"yes")])
    ]
    assert client_body(client_events, 1) == b"created"
    assert [e.stream_id for e in of_type(client_events, h2.events.StreamEnded)] == [1]
    # The connection goes on as HTTP/2.
    client.send_headers(3, request_headers(b"/next", scheme=b"http"), end_stream=True)
    events = server.receive_data(client.data_to_send(), 0.0)
    assert isinstance(events[0], RequestReceived) and events[0].stream_id == 3


def test_upgrade_h2c_settings_are_applied() -> None:
    # HTTP2-Settings: INITIAL_WINDOW_SIZE = 10 (base64url of one 6-byte setting, no padding).
    settings = base64.urlsafe_b64encode(b"\x00\x04\x00\x00\x00\x0a").rstrip(b"=")
    http11 = HTTP11Protocol(limits=HTTP11Limits(h2c_upgrade=True), now=0.0)
    event = only_upgrade(http11.receive_data(upgrade_request(settings, method=b"GET"), 0.0))
    server, _, _ = upgrade(event, limits(), now=0.0)
    server.send(SendResponse(stream_id=1, status=200, headers=[]), 0.0)
    server.send(SendData(stream_id=1, data=b"0123456789abcdef", end_stream=True), 0.0)
    # The client's window from HTTP2-Settings holds before any SETTINGS frame arrives.
    assert server.pending_send(1) == 6


def test_upgrade_h2c_leftover_is_the_clients_preface() -> None:
    client = make_client()
    settings = client.initiate_upgrade_connection()
    preface = client.data_to_send()  # a client may send it right behind the request
    assert preface.startswith(PREFACE)
    http11 = HTTP11Protocol(limits=HTTP11Limits(h2c_upgrade=True), now=0.0)
    data = upgrade_request(settings, b"xy") + preface
    event = only_upgrade(http11.receive_data(data, 0.0))
    assert event.body == b"xy"
    assert event.leftover == preface
    server, _, leftover = upgrade(event, limits(), now=0.0)
    assert server.receive_data(leftover, 0.0) == []
    assert not server.closed


def test_upgrade_h2c_body_arriving_in_pieces() -> None:
    settings = make_client().initiate_upgrade_connection()
    http11 = HTTP11Protocol(limits=HTTP11Limits(h2c_upgrade=True), now=0.0)
    data = upgrade_request(settings, b"0123456789" * 10)
    events: list[Event] = []
    for i in range(0, len(data), 7):
        events += http11.receive_data(data[i : i + 7], 0.0)
    event = only_upgrade(events)
    assert event.body == b"0123456789" * 10


def test_pushes_from_the_upgraded_request_carry_its_authority() -> None:
    client = make_client()
    settings = client.initiate_upgrade_connection()
    http11 = HTTP11Protocol(limits=HTTP11Limits(h2c_upgrade=True), now=0.0)
    event = only_upgrade(http11.receive_data(upgrade_request(settings, method=b"GET"), 0.0))
    server, _, _ = upgrade(event, limits(), now=0.0)
    server.receive_data(client.data_to_send(), 0.0)
    client.receive_data(server.data_to_send())
    events = server.send(PushPromise(stream_id=1, path=b"/style.css", headers=[]), 0.0)
    pushed_request = events[0]
    assert isinstance(pushed_request, RequestReceived)
    assert pushed_request.headers[0] == (b"host", b"example.com")
    pushed = of_type(client.receive_data(server.data_to_send()), h2.events.PushedStreamReceived)
    assert (b":authority", b"example.com") in pushed[0].headers
    assert (b":scheme", b"http") in pushed[0].headers


@pytest.mark.parametrize(
    "settings",
    [
        b"abc",  # not base64 (bad padding)
        b"AAIAAAAC",  # ENABLE_PUSH = 2, an invalid value
        b"AASAAAAA",  # INITIAL_WINDOW_SIZE = 2^31, above the maximum
        b"AAEA",  # a truncated setting (3 bytes, not 6)
    ],
)
def test_malformed_http2_settings_never_raise(settings: bytes) -> None:
    """negotiate promises to return values, never raise: bad client input must not escape."""
    protocol_limits = limits(H2C)
    http11 = for_connection(protocol_limits, alpn=None, tls=False, now=0.0)
    events = http11.receive_data(upgrade_request(settings, b"body"), 0.0)
    for event in events:
        if isinstance(event, UpgradeRequested):
            server, _, leftover = upgrade(event, protocol_limits, now=0.0)
            server.receive_data(leftover + PREFACE, 0.0)


@pytest.mark.parametrize("settings", [b"abc", b"AAIAAAAC", b"AASAAAAA", b"AAEA"])
def test_malformed_http2_settings_are_refused_400(settings: bytes) -> None:
    http11 = for_connection(limits(H2C), alpn=None, tls=False, now=0.0)
    events = http11.receive_data(upgrade_request(settings, b"body"), 0.0)
    assert [type(event) for event in events] == [RequestRejected]
    assert isinstance(events[0], RequestRejected)
    assert events[0].error.error_status_hint == 400
    assert b"101" not in http11.data_to_send()


# ---- Upgrade: h2c refused, served as HTTP/1.1 --------------------------------------------------


def test_upgrade_without_http2_settings_is_plain_http11() -> None:
    http11 = HTTP11Protocol(limits=HTTP11Limits(h2c_upgrade=True), now=0.0)
    events = http11.receive_data(upgrade_request(None, b"payload"), 0.0)
    assert_plain_http11(events, 1, b"payload")
    assert http11.data_to_send() == b""
    respond(http11, 1, b"plain")
    response = parse_one(http11.data_to_send())
    assert (response.status, response.body) == (200, b"plain")


def test_upgrade_without_the_connection_token_is_plain_http11() -> None:
    settings = make_client().initiate_upgrade_connection()
    http11 = HTTP11Protocol(limits=HTTP11Limits(h2c_upgrade=True), now=0.0)
    request = upgrade_request(settings, b"x", connection=b"Upgrade")
    assert_plain_http11(http11.receive_data(request, 0.0), 1, b"x")


def test_upgrade_on_a_later_request_is_plain_http11() -> None:
    settings = make_client().initiate_upgrade_connection()
    http11 = HTTP11Protocol(limits=HTTP11Limits(h2c_upgrade=True), now=0.0)
    assert_plain_http11(http11.receive_data(request_bytes(), 0.0), 1)
    events = respond(http11, 1)
    events += http11.receive_data(upgrade_request(settings, b"second"), 0.0)
    assert_plain_http11(events, 2, b"second")
    assert b"101" not in http11.data_to_send()


def test_upgrade_when_disabled_is_plain_http11() -> None:
    settings = make_client().initiate_upgrade_connection()
    http11 = HTTP11Protocol(limits=HTTP11Limits(h2c_upgrade=False), now=0.0)
    events = http11.receive_data(upgrade_request(settings, b"body"), 0.0)
    assert_plain_http11(events, 1, b"body")
    assert http11.data_to_send() == b""


def test_upgrade_with_a_body_over_the_buffer_is_plain_http11_with_the_body_intact() -> None:
    settings = make_client().initiate_upgrade_connection()
    http11 = HTTP11Protocol(limits=HTTP11Limits(h2c_upgrade=True, body_buffer_size=1000), now=0)
    body = bytes(range(256)) * 12  # 3072 bytes
    data = upgrade_request(settings, body)
    events: list[Event] = []
    for i in range(0, len(data), 500):
        events += http11.receive_data(data[i : i + 500], 0.0)
    assert_plain_http11(events, 1, body)
    assert http11.data_to_send() == b""
    respond(http11, 1, b"served over 1.1")
    response = parse_one(http11.data_to_send())
    assert (response.status, response.body) == (200, b"served over 1.1")


def test_an_unknown_kind_of_switch_is_our_bug_not_a_silent_http2() -> None:
    with pytest.raises(LocalProtocolError):
        upgrade(UpgradeRequested(leftover=b"x"), limits(), now=0.0)


@pytest.mark.parametrize("tls", [True, False])
def test_websocket_setting_survives_the_choice_of_protocol(tls: bool) -> None:
    """Unlike h2c, WebSocket over HTTP/1.1 works the same with or without TLS."""
    protocol = for_connection(
        limits(HTTP11Limits(websocket=True, h2c_upgrade=True)), alpn=None, tls=tls, now=0.0
    )
    headers = [
        (b"upgrade", b"websocket"),
        (b"connection", b"Upgrade"),
        (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
        (b"sec-websocket-version", b"13"),
    ]
    events = protocol.receive_data(request_bytes(b"GET", b"/ws", headers), 0.0)
    assert len(events) == 1
    assert isinstance(events[0], RequestReceived)
    assert events[0].kind is StreamKind.WEBSOCKET
