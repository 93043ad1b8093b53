"""The WebSocket session (protocol/websocket.py), sans-IO: frames in, events and frames out.

The peer is wsproto's client-side frame layer, an independent implementation: it builds what
the session reads and parses what the session writes. Hand-built bytes cover what no
well-behaved client sends (unmasked frames, reserved bits, oversize headers, deflate bombs).
Time is a number passed in, never read.
"""

from __future__ import annotations

import itertools
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    Pong,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate

from multicorn.protocol.errors import LocalProtocolError
from multicorn.protocol.websocket import (
    HandshakeTimedOut,
    MessageReceived,
    WebSocketEnded,
    WebSocketEvent,
    WebSocketLimits,
    WebSocketSession,
    negotiate_deflate,
)

MASK = b"\x01\x02\x03\x04"


@pytest.fixture(autouse=True)
def h1_engine() -> None:
    """No HTTP/1.1 parser is involved here: run once, not once per engine (conftest.py)."""


def masked_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = False) -> bytes:
    """A client frame built by hand (RFC 6455 5.2), masked with MASK."""
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    length = len(payload)
    if length < 126:
        head = bytes([first, 0x80 | length])
    elif length < 65536:
        head = bytes([first, 0x80 | 126]) + struct.pack("!H", length)
    else:
        head = bytes([first, 0x80 | 127]) + struct.pack("!Q", length)
    masked = bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))
    return head + MASK + masked


def session(
    headers: list[tuple[bytes, bytes]] | None = None, now: float = 0.0, **limits: object
) -> WebSocketSession:
    defaults: dict[str, object] = {"ping_interval": None, "ping_timeout": None}
    defaults.update(limits)
    return WebSocketSession(
        limits=WebSocketLimits(**defaults),  # type: ignore[arg-type]
        request_headers=headers or [],
        now=now,
    )


def opened(
    headers: list[tuple[bytes, bytes]] | None = None, **limits: object
) -> tuple[WebSocketSession, Connection]:
    ws = session(headers, **limits)
    response = dict(ws.accept(None, 0.0))
    extensions = []
    if b"sec-websocket-extensions" in response:
        deflate = PerMessageDeflate()
        deflate.finalize(response[b"sec-websocket-extensions"].decode())
        extensions.append(deflate)
    return ws, Connection(ConnectionType.CLIENT, extensions)


def client_events(client: Connection, data: bytes) -> list[Event]:
    client.receive_data(data)
    return list(client.events())


def test_text_and_binary_messages_round_trip() -> None:
    ws, client = opened()
    events = ws.receive_data(
        client.send(TextMessage(data="héllo")) + client.send(BytesMessage(data=b"\x00\xff")), 1.0
    )
    assert events == [MessageReceived(data="héllo"), MessageReceived(data=b"\x00\xff")]
    ws.send_message("back")
    ws.send_message(b"\x01")
    [text, binary] = client_events(client, ws.data_to_send())
    assert isinstance(text, TextMessage) and text.data == "back" and text.message_finished
    assert isinstance(binary, BytesMessage) and binary.data == b"\x01"


def test_fragments_are_joined_and_control_frames_may_come_between() -> None:
    ws, client = opened()
    data = (
        client.send(TextMessage(data="ab", message_finished=False))
        + client.send(Ping(payload=b"p"))
        + client.send(TextMessage(data="cd", message_finished=True))
    )
    assert ws.receive_data(data, 1.0) == [MessageReceived(data="abcd")]
    # RFC 6455 5.5.2: the Ping is answered with a Pong carrying its payload.
    assert client_events(client, ws.data_to_send()) == [Pong(payload=b"p")]


def test_a_message_split_at_every_byte_is_the_same_message() -> None:
    ws, client = opened()
    wire = client.send(TextMessage(data="x€" * 50)) + client.send(BytesMessage(data=b"y" * 300))
    events: list[WebSocketEvent] = []
    for i in range(len(wire)):
        events += ws.receive_data(wire[i : i + 1], 1.0)
    assert events == [MessageReceived(data="x€" * 50), MessageReceived(data=b"y" * 300)]


@settings(max_examples=60, deadline=None)
@given(
    messages=st.lists(st.one_of(st.text(max_size=200), st.binary(max_size=400)), max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=12),
    deflate=st.booleans(),
)
def test_any_split_of_the_input_gives_the_reference_messages(
    messages: list[str | bytes], cuts: list[int], deflate: bool
) -> None:
    """Whatever the chunking, the session reports exactly the messages the peer sent, in order,
    compressed or not; a run fed in one piece is the reference."""
    headers = [(b"sec-websocket-extensions", b"permessage-deflate")] if deflate else []
    ws, client = opened(headers)
    wire = b"".join(
        client.send(TextMessage(data=m) if isinstance(m, str) else BytesMessage(data=m))
        for m in messages
    )
    reference, _ = opened(headers)
    expected = reference.receive_data(wire, 0.0)
    assert expected == [MessageReceived(data=m) for m in messages]
    points = sorted({0, len(wire), *(c for c in cuts if c < len(wire))})
    events: list[WebSocketEvent] = []
    for start, end in itertools.pairwise(points):
        events += ws.receive_data(wire[start:end], 0.0)
    assert events == expected


@settings(max_examples=80, deadline=None)
@given(
    script=st.lists(
        st.one_of(
            st.tuples(st.just("text"), st.text(max_size=300)),
            st.tuples(st.just("binary"), st.binary(max_size=300)),
            st.tuples(st.just("fragments"), st.lists(st.text(max_size=40), min_size=1, max_size=4)),
            st.tuples(st.just("ping"), st.binary(max_size=20)),
        ),
        max_size=8,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=10),
)
def test_whole_frames_fragments_and_pings_in_any_chunking(
    script: list[tuple[str, object]], cuts: list[int]
) -> None:
    """The session's own reading of whole frames and wsproto's reading of the rest interleave
    without losing their place: every message and every pong comes out, in order."""
    ws, client = opened()
    wire = b""
    expected: list[WebSocketEvent] = []
    pongs: list[bytes] = []
    for kind, value in script:
        if kind == "text":
            assert isinstance(value, str)
            wire += client.send(TextMessage(data=value))
            expected.append(MessageReceived(data=value))
        elif kind == "binary":
            assert isinstance(value, bytes)
            wire += client.send(BytesMessage(data=value))
            expected.append(MessageReceived(data=value))
        elif kind == "fragments":
            assert isinstance(value, list)
            for i, part in enumerate(value):
                wire += client.send(TextMessage(data=part, message_finished=i == len(value) - 1))
                if i == 0:
                    wire += client.send(Ping(payload=b"mid"))
                    pongs.append(b"mid")
            expected.append(MessageReceived(data="".join(value)))
        else:
            assert isinstance(value, bytes)
            wire += client.send(Ping(payload=value))
            pongs.append(value)
    points = sorted({0, len(wire), *(c for c in cuts if c < len(wire))})
    events: list[WebSocketEvent] = []
    for start, end in itertools.pairwise(points):
        events += ws.receive_data(wire[start:end], 0.0)
    assert events == expected
    answers = client_events(client, ws.data_to_send())
    assert answers == [Pong(payload=p) for p in pongs]


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=70_000), min_size=1, max_size=4),
    chunk=st.integers(min_value=1, max_value=40_000),
)
def test_large_binary_frames_gathered_in_pieces(sizes: list[int], chunk: int) -> None:
    """Large frames are kept in pieces until whole and unmasked from a view: whatever the read
    size, and whatever follows them in the same read, the messages come out whole."""
    ws, client = opened()
    messages = [bytes([i % 251]) * size for i, size in enumerate(sizes)]
    wire = b"".join(client.send(BytesMessage(data=m)) for m in messages)
    wire += client.send(TextMessage(data="after"))
    events: list[WebSocketEvent] = []
    for start in range(0, len(wire), chunk):
        events += ws.receive_data(wire[start : start + chunk], 0.0)
    assert events == [*(MessageReceived(data=m) for m in messages), MessageReceived(data="after")]


def test_peer_close_is_echoed_and_ends_the_session() -> None:
    ws, client = opened()
    events = ws.receive_data(client.send(CloseConnection(code=4000, reason="bye")), 1.0)
    assert events == [WebSocketEnded(code=4000, reason="bye")]
    # RFC 6455 5.5.1: the answering Close may wait for what we are still sending.
    assert ws.ending and not ws.finished and ws.can_send
    ws.conclude()
    assert ws.finished
    [echo] = client_events(client, ws.data_to_send())
    assert isinstance(echo, CloseConnection) and echo.code == 4000


def test_replies_to_messages_before_a_bad_frame_go_out_before_the_close() -> None:
    """Autobahn's strict reading (cases 3.2, 4.1.3): the message before a bad frame is echoed,
    then the connection is failed, and a Ping after the bad frame gets no Pong."""
    ws, client = opened()
    wire = client.send(TextMessage(data="first")) + masked_frame(0x5, b"") + masked_frame(0x9, b"")
    events = ws.receive_data(wire, 1.0)
    assert events == [
        MessageReceived(data="first"),
        WebSocketEnded(code=1002, reason=events[1].reason),
    ]  # type: ignore[union-attr]
    ws.send_message("first")
    ws.conclude()
    ws.send_message("too late")
    [echo, close] = client_events(client, ws.data_to_send())
    assert isinstance(echo, TextMessage) and echo.data == "first"
    assert isinstance(close, CloseConnection) and close.code == 1002


def test_an_end_the_app_is_slow_to_reach_concludes_on_the_deadline() -> None:
    ws, client = opened(handshake_timeout=4.0)
    ws.receive_data(client.send(CloseConnection(code=1000)), 10.0)
    assert ws.next_deadline() == 14.0
    assert ws.handle_deadline(14.0) == []
    assert ws.finished
    [echo] = client_events(client, ws.data_to_send())
    assert isinstance(echo, CloseConnection) and echo.code == 1000


def test_close_without_a_code_is_reported_as_1005() -> None:
    ws, _client = opened()
    assert ws.receive_data(masked_frame(0x8, b""), 1.0) == [WebSocketEnded(code=1005)]


def test_our_close_waits_for_the_peer_then_ends() -> None:
    ws, client = opened(handshake_timeout=5.0)
    ws.close(4001, "done", now=1.0)
    assert not ws.open and not ws.finished
    [close] = client_events(client, ws.data_to_send())
    assert isinstance(close, CloseConnection) and (close.code, close.reason) == (4001, "done")
    # Messages the peer sent before seeing our Close are dropped; its Close ends the session.
    reply = masked_frame(0x1, b"late") + client.send(close.response())
    assert ws.receive_data(reply, 2.0) == [WebSocketEnded(code=4001, reason="done")]
    assert ws.finished and ws.data_to_send() == b""


def test_an_unanswered_close_times_out() -> None:
    ws, _ = opened(handshake_timeout=5.0)
    ws.close(1000, "", now=1.0)
    assert ws.next_deadline() == 6.0
    assert ws.handle_deadline(5.9) == []
    assert ws.handle_deadline(6.0) == [WebSocketEnded(code=1006)]
    assert ws.finished


def fails_with(ws: WebSocketSession, data: bytes, code: int) -> None:
    """The session fails the connection (RFC 6455 7.1.7): reads nothing more, then a Close
    with `code` once concluded, then the end."""
    [event] = ws.receive_data(data, 1.0)
    assert isinstance(event, WebSocketEnded) and event.code == code
    assert ws.ending
    assert ws.receive_data(masked_frame(0x9, b"ignored"), 1.5) == []
    ws.conclude()
    assert ws.finished
    out = ws.data_to_send()
    assert out[0] == 0x88  # FIN + Close, unmasked
    assert struct.unpack("!H", out[2:4])[0] == code
    # Nothing more is read or written.
    assert ws.receive_data(masked_frame(0x1, b"more"), 2.0) == []


@pytest.mark.parametrize(
    ("data", "code"),
    [
        # 5.1: "a server MUST close the connection upon receiving a frame that is not masked"
        (b"\x81\x02hi", 1002),
        # 5.2: reserved bits set without an extension that defines them
        (masked_frame(0x1, b"hi", rsv1=True), 1002),
        # 5.2: reserved opcodes
        (masked_frame(0x3, b"hi"), 1002),
        (masked_frame(0xB, b""), 1002),
        # 5.5: control frames are never fragmented, and carry at most 125 bytes
        (masked_frame(0x9, b"x", fin=False), 1002),
        (masked_frame(0x9, b"x" * 126), 1002),
        # 5.4: a continuation with no message to continue
        (masked_frame(0x0, b"x"), 1002),
        # 8.1: text must be UTF-8 (a whole frame, and one that comes in pieces)
        (masked_frame(0x1, b"\xff\xfe"), 1007),
        (masked_frame(0x1, b"ok\xff" + b"x" * 200)[:20], 1007),
        # 5.2: "the minimal number of bytes MUST be used to encode the length"
        (bytes([0x81, 0x80 | 126, 0, 5]) + MASK + b"hello", 1002),
        (bytes([0x82, 0x80 | 127]) + struct.pack("!Q", 200) + MASK + b"x" * 200, 1002),
        # 7.4.1: 1005 and 1006 are never sent; 999 is out of range; 1016 unassigned
        (masked_frame(0x8, struct.pack("!H", 1005)), 1002),
        (masked_frame(0x8, struct.pack("!H", 999)), 1002),
        (masked_frame(0x8, struct.pack("!H", 1016)), 1002),
        # 5.5.1: a close payload of one byte
        (masked_frame(0x8, b"\x03"), 1002),
        # a close reason that is not UTF-8
        (masked_frame(0x8, struct.pack("!H", 1000) + b"\xff"), 1007),
    ],
)
def test_frames_that_break_the_protocol_fail_the_connection(data: bytes, code: int) -> None:
    ws, _ = opened()
    fails_with(ws, data, code)


def test_invalid_utf8_fails_fast_in_the_first_fragment() -> None:
    ws, _ = opened()
    # The message is not complete, but its first fragment can never become valid UTF-8.
    fails_with(ws, masked_frame(0x1, b"ok\xc0\xaf", fin=False), 1007)


def test_an_announced_oversize_frame_fails_before_its_payload_arrives() -> None:
    ws, _ = opened(max_message_size=1000)
    header = bytes([0x82, 0x80 | 127]) + struct.pack("!Q", 1 << 30) + MASK
    fails_with(ws, header, 1009)


def test_the_limit_counts_the_whole_fragmented_message() -> None:
    ws, _ = opened(max_message_size=1000)
    assert ws.receive_data(masked_frame(0x2, b"a" * 600, fin=False), 1.0) == []
    fails_with(ws, masked_frame(0x0, b"b" * 401), 1009)


def test_a_message_at_the_limit_passes() -> None:
    ws, _ = opened(max_message_size=1000)
    data = masked_frame(0x2, b"a" * 600, fin=False) + masked_frame(0x0, b"b" * 400)
    assert ws.receive_data(data, 1.0) == [MessageReceived(data=b"a" * 600 + b"b" * 400)]
    # The next message starts from nothing.
    assert ws.receive_data(masked_frame(0x2, b"c" * 1000), 1.0) == [
        MessageReceived(data=b"c" * 1000)
    ]


DEFLATE = [(b"sec-websocket-extensions", b"permessage-deflate")]


def compressed(payload: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return (compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


def test_a_deflate_bomb_is_stopped_at_the_limit() -> None:
    ws, _ = opened(DEFLATE, max_message_size=1 << 20)
    bomb = compressed(b"\x00" * (64 << 20))  # 64 MiB of zeros in ~64 KiB
    assert len(bomb) < 100_000
    fails_with(ws, masked_frame(0x2, bomb, rsv1=True), 1009)


def test_compressed_messages_are_measured_after_inflating() -> None:
    ws, _ = opened(DEFLATE, max_message_size=1000)
    assert ws.receive_data(masked_frame(0x1, compressed(b"z" * 1000), rsv1=True), 1.0) == [
        MessageReceived(data="z" * 1000)
    ]
    fails_with(ws, masked_frame(0x1, compressed(b"z" * 1001), rsv1=True), 1009)


def test_compressed_output_and_input_with_a_real_peer() -> None:
    ws, client = opened(DEFLATE)
    assert client._proto.extensions  # the client agreed to compression
    wire = client.send(TextMessage(data="a" * 5000))
    assert len(wire) < 200  # it really was compressed
    assert ws.receive_data(wire, 1.0) == [MessageReceived(data="a" * 5000)]
    ws.send_message(b"b" * 5000)
    out = ws.data_to_send()
    assert len(out) < 200 and out[0] & 0x40  # RSV1: compressed (RFC 7692 6)
    [message] = client_events(client, out)
    assert isinstance(message, Message) and message.data == b"b" * 5000


@pytest.mark.parametrize(
    ("offer", "response"),
    [
        (b"permessage-deflate", "permessage-deflate"),
        (b"permessage-deflate; client_max_window_bits", "permessage-deflate"),
        (
            b"permessage-deflate; server_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        ),
        (
            b"permessage-deflate; server_max_window_bits=10",
            "permessage-deflate; server_max_window_bits=10",
        ),
        # RFC 7692 5.1: an offer the server cannot take is declined and the next one tried.
        (b"permessage-deflate; unknown=1, permessage-deflate", "permessage-deflate"),
        (b"permessage-deflate; server_max_window_bits=16", None),
        (b"permessage-deflate; server_max_window_bits=8", None),  # zlib cannot honour 8
        (b"permessage-deflate; client_max_window_bits=x", None),
        (b"permessage-deflate; server_no_context_takeover; server_no_context_takeover", None),
        (b"permessage-deflate; server_no_context_takeover=1", None),
        (b"x-webkit-deflate-frame", None),
    ],
)
def test_deflate_negotiation(offer: bytes, response: str | None) -> None:
    params = negotiate_deflate([(b"sec-websocket-extensions", offer)])
    assert (None if params is None else params.response()) == response


@pytest.mark.parametrize("bits", [9, 10, 12, 15])
@pytest.mark.parametrize("no_context", [False, True])
def test_negotiated_windows_and_context_takeover_interoperate(bits: int, no_context: bool) -> None:
    offer = f"permessage-deflate; server_max_window_bits={bits}"
    if no_context:
        offer += "; server_no_context_takeover; client_no_context_takeover"
    ws, client = opened([(b"sec-websocket-extensions", offer.encode())])
    for i in range(3):
        text = f"message {i} " * 200
        assert ws.receive_data(client.send(TextMessage(data=text)), 1.0) == [
            MessageReceived(data=text)
        ]
        ws.send_message(text)
        [echo] = client_events(client, ws.data_to_send())
        assert isinstance(echo, TextMessage) and echo.data == text


def test_deflate_off_declines_every_offer() -> None:
    ws = session(DEFLATE, per_message_deflate=False)
    assert ws.accept(None, 0.0) == []


def test_subprotocol_must_be_one_the_client_offered() -> None:
    ws = session([(b"sec-websocket-protocol", b"chat, superchat")])
    assert ws.offered_subprotocols == ["chat", "superchat"]
    with pytest.raises(LocalProtocolError, match="not offered"):
        ws.accept("other", 0.0)
    assert ws.accept("superchat", 0.0) == [(b"sec-websocket-protocol", b"superchat")]
    with pytest.raises(LocalProtocolError):
        ws.accept("chat", 0.0)


def test_pings_on_the_clock_and_a_silent_peer_is_failed_with_1011() -> None:
    ws = session(ping_interval=10.0, ping_timeout=5.0)
    ws.accept(None, 100.0)
    client = Connection(ConnectionType.CLIENT)
    assert ws.next_deadline() == 110.0
    assert ws.handle_deadline(109.0) == [] and ws.data_to_send() == b""
    assert ws.handle_deadline(110.0) == []
    [ping] = client_events(client, ws.data_to_send())
    assert isinstance(ping, Ping)
    assert ws.next_deadline() == 115.0
    # The pong comes: the next ping is due an interval later.
    assert ws.receive_data(client.send(ping.response()), 112.0) == []
    assert ws.next_deadline() == 122.0
    ws.handle_deadline(122.0)
    [ping] = client_events(client, ws.data_to_send())
    assert isinstance(ping, Ping)
    # A pong for some other payload does not count.
    ws.receive_data(client.send(Pong(payload=b"other")), 123.0)
    assert ws.handle_deadline(127.0) == [WebSocketEnded(code=1011, reason="ping timeout")]
    assert ws.finished
    [close] = client_events(client, ws.data_to_send())
    assert isinstance(close, CloseConnection) and close.code == 1011


def test_without_a_ping_timeout_pings_go_on() -> None:
    ws = session(ping_interval=10.0, ping_timeout=None)
    ws.accept(None, 0.0)
    for deadline in (10.0, 20.0, 30.0):
        assert ws.next_deadline() == deadline
        assert ws.handle_deadline(deadline) == []
    assert ws.data_to_send().count(b"\x89") == 3


def test_an_application_that_never_answers_the_handshake_times_out() -> None:
    ws = session(handshake_timeout=10.0, now=50.0)
    assert ws.next_deadline() == 60.0
    assert ws.handle_deadline(60.0) == [HandshakeTimedOut()]
    assert ws.finished
    declined = session(handshake_timeout=10.0, now=50.0)
    declined.decline()
    assert declined.next_deadline() is None


def test_eof_without_a_close_is_1006() -> None:
    ws, _ = opened()
    assert ws.peer_ended() == [WebSocketEnded(code=1006)]
    assert ws.peer_ended() == []
    assert ws.finished


def test_eof_after_a_close_is_not_a_second_end() -> None:
    ws, client = opened()
    ws.receive_data(client.send(CloseConnection(code=1000)), 1.0)
    assert ws.peer_ended() == []
    assert ws.ending


def test_messages_after_the_end_are_not_sent() -> None:
    ws, client = opened()
    ws.receive_data(client.send(CloseConnection(code=1000)), 1.0)
    ws.conclude()
    ws.data_to_send()
    ws.send_message("too late")
    assert ws.data_to_send() == b""
