"""HTTP/3 server core over one QUIC connection (aioquic's H3Connection), behind the stream-event
interface.

Theory of operation. `protocol/quic.py`'s `QuicEndpoint` owns the UDP side: it routes datagrams
to the `QuicConnection` they belong to, collects what every connection has to send, and keeps
the QUIC timers. For each QUIC connection it holds one `HTTP3Protocol`, and hands it the QUIC
events of that connection (`quic_event_received`); this module turns them into our stream events
(`RequestReceived(http_version="3")`, `DataReceived`, `StreamEnded`, `StreamReset`,
`RequestRejected`, `ConnectionClosed`) and our commands into HTTP/3 frames, which it queues into
the QuicConnection. So input never arrives here as bytes, and output never leaves as bytes:
`data_to_send()` is always empty and the endpoint's `datagrams_to_send()` carries everything.
Apart from input, the object has the `ServerProtocol` shape (protocol/base.py): `send`,
`pending_send`, the deadline pair, `wants_read`, `closed`, `multiplexed`. Whenever it queues
output it sets `wants_transmit` and calls the endpoint's `on_transmit`, so that the endpoint
collects datagrams from the connections that have some and no others.

What this module adds to aioquic's H3Connection:
- request heads checked by the same rules as HTTP/2 (request_head.py: `split_pseudo_head`,
  `check_pseudo_head`); a malformed head costs its stream (RESET_STREAM and STOP_SENDING with
  H3_MESSAGE_ERROR, RFC 9114 4.1.2), a well-formed one the server will not serve becomes
  RequestRejected. aioquic validates request heads itself and makes each violation a connection
  error (`MessageError` closes the QUIC connection); `_ServerH3` catches that on request streams
  and turns it into the same stream error, so one bad request never costs the connection;
- extended CONNECT (RFC 9220): `:protocol websocket` opens a WEBSOCKET stream when
  `HTTP3Limits.extended_connect` is on. aioquic always advertises
  SETTINGS_ENABLE_CONNECT_PROTOCOL = 1; `_ServerH3` leaves it out when the option is off;
- graceful close (RFC 9114 5.2): GOAWAY naming the first stream not served, requests at or
  above it refused with H3_REQUEST_REJECTED (safe for the client to retry), and CONNECTION_CLOSE
  (H3_NO_ERROR) once every accepted stream is done and its last bytes were acknowledged;
- fault containment: whatever raises while one stream's event or command is handled resets
  that stream (H3_INTERNAL_ERROR) and leaves the others alone;
- early data (RFC 8470): when the endpoint accepted 0-RTT, requests can arrive before the
  handshake completes, and could be replayed by an attacker. A request that arrives then with a
  safe method (`EARLY_DATA_METHODS`) is passed on at once; any other is held, with whatever its
  stream brings after it, until the handshake completes (RFC 8470 5.1: "a server can choose to
  delay processing of early data until after the TLS handshake completes"), then passed on in
  order. If the handshake never completes, the application never hears of it;
- connection errors reported at once: when aioquic finds one (a frame out of place, a second
  control stream, a closed critical stream, a QPACK failure, ...) it closes the QUIC connection
  with the RFC's code and keeps nothing of it; `_ServerH3.error` records it, and the layer
  above gets StreamReset for every stream and ConnectionClosed(RemoteProtocolError naming the
  code) right away, not when the closing period ends (RFC 9000 10.2);
- limits (`HTTP3Limits`), each overspent one a connection error H3_EXCESSIVE_LOAD reported as
  ConnectionClosed(PeerAbuse), as HTTP/2 answers the same with GOAWAY(ENHANCE_YOUR_CALM):
  the field section size (advertised as SETTINGS_MAX_FIELD_SECTION_SIZE; a HEADERS frame
  announcing more is refused from its frame header, before aioquic buffers it; a section
  whose references to QPACK's dynamic table could decode to far more is refused without
  decoding it; the rest are measured once decoded), QPACK's dynamic table capacity and blocked
  streams (aioquic hardcodes 4096 and 16; pylsqpack enforces them), and a token bucket for
  streams the client resets before their response is done and for malformed requests
  (CVE-2023-44487, rapid reset). Other floods need no budget: aioquic discards unknown and
  reserved-for-extension frames and streams as their bytes arrive, empty DATA frames produce
  nothing, and every other frame costs a bounded amount of work per byte received; SETTINGS
  can come only once (H3_FRAME_UNEXPECTED).

- receive credit as the application reads (protocol/read_credit.py): aioquic would double a
  stream's and the connection's window whenever the client has used half, whatever the
  application has read. `read_credit` counts the body handed up and not yet read
  (`AcknowledgeData`) and what aioquic's HTTP/3 layer still holds (an incomplete frame, input
  behind a QPACK-blocked head), and the QUIC connection (protocol/quic.py) grants MAX_DATA and
  MAX_STREAM_DATA from it, as HTTP/2 does here. A stream whose response is complete asks the
  client to stop sending the rest (STOP_SENDING, H3_NO_ERROR) and gives its unread bytes back.

Limitations, by aioquic's design:
- Outbound, aioquic buffers whatever it is given; `pending_send()` reads how much of a stream's
  data has not been sent yet from aioquic's stream state (no public accessor), so the
  connection driver's `drain()` still holds a fast application back.
- aioquic's own head check runs first and is stricter than ours in one place: it requires
  `:authority`, so a request carrying only a Host field is reset (H3_MESSAGE_ERROR) where
  HTTP/2 would serve it. RFC 9114 4.3.1 allows either.
- Server push is off: `PushPromise` is ignored. Request trailers are read and dropped, as on
  HTTP/2.
"""

from __future__ import annotations

import contextlib
import enum
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import pylsqpack
from aioquic.buffer import encode_uint_var
from aioquic.h3 import events as h3_events
from aioquic.h3.connection import (
    ErrorCode,
    FrameType,
    H3Connection,
    H3Stream,
    HeadersState,
    MessageError,
    Setting,
    encode_frame,
)
from aioquic.h3.connection import ProtocolError as H3Error
from aioquic.quic import events as quic_events
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicErrorCode

from multicorn.protocol.budget import TokenBucket
from multicorn.protocol.errors import (
    LocalProtocolError,
    PeerAbuse,
    ProtocolError,
    RemoteProtocolError,
)
from multicorn.protocol.events import (
    AcknowledgeData,
    CloseConnection,
    Command,
    ConnectionClosed,
    DataReceived,
    Event,
    Headers,
    PushPromise,
    RequestReceived,
    RequestRejected,
    ResetStream,
    SendData,
    SendInformational,
    SendResponse,
    SendTrailers,
    StreamEnded,
    StreamKind,
    StreamReset,
)
from multicorn.protocol.headers import validate_response_headers
from multicorn.protocol.read_credit import ReadCredit
from multicorn.protocol.request_head import (
    CONNECTION_HEADERS,
    MalformedHead,
    check_pseudo_head,
    split_pseudo_head,
)

# RFC 9114 5.2: a server's GOAWAY carries a client-initiated bidirectional stream ID; with no
# request seen yet, 0 refuses them all.
_FIRST_REQUEST_STREAM = 0
# After the GOAWAY, how long a draining connection with nothing left to serve waits for the
# client to acknowledge what it was sent before closing anyway (many round trips on any path).
_ACK_PATIENCE = 1.0
# What a QUIC connection that ended without trouble reports (ours or the peer's close, idle).
_CLEAN_CLOSE = frozenset({QuicErrorCode.NO_ERROR, ErrorCode.H3_NO_ERROR})
# Methods served from 0-RTT data before the handshake completes. RFC 9110 9.2.1: "the GET,
# HEAD, OPTIONS, and TRACE methods are defined to be safe"; TRACE is left to wait, as nothing
# needs it early. RFC 8470 2: requests that are not safe carry a replay risk.
EARLY_DATA_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS"})


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTP3Limits:
    # RFC 9220: advertise SETTINGS_ENABLE_CONNECT_PROTOCOL and accept extended CONNECT (the
    # WebSocket bootstrap over HTTP/3); serve.py turns it on with WebSocket.
    extended_connect: bool = False
    # Request streams a client may have open at once (QUIC's initial_max_streams_bidi; one
    # more is granted as each ends, RFC 9000 4.6).
    max_concurrent_streams: int = 100
    # The largest request head (or trailer section) accepted, in RFC 9114 4.2.2's measure: the
    # sum of len(name) + len(value) + 32 over its fields; advertised as
    # SETTINGS_MAX_FIELD_SECTION_SIZE. HTTP/2's max_header_list_size counts the same way.
    max_field_section_size: int = 64 * 1024
    # QPACK (RFC 9204 3.2.3, 2.1.2): the dynamic table the client's encoder may fill, and how
    # many request streams may wait for its updates at once; 0 and 0 turn both off.
    qpack_max_table_capacity: int = 4096
    qpack_blocked_streams: int = 16
    # Token bucket (burst, refill per second) for streams the client resets while their
    # response is unfinished, and for malformed requests (CVE-2023-44487, "rapid reset"),
    # as HTTP2Limits.reset_budget.
    reset_budget: tuple[float, float] = (200.0, 100.0)


@dataclass
class _MalformedMessage(h3_events.H3Event):
    """aioquic found a request stream's message malformed (RFC 9114 4.1.2): a stream error."""

    stream_id: int
    reason: str


class _ExcessiveLoad(H3Error):
    """RFC 9114 8.1: "H3_EXCESSIVE_LOAD (0x0107): The endpoint detected that its peer is
    exhibiting a behavior that might be generating excessive load." A connection error, as
    GOAWAY(ENHANCE_YOUR_CALM) is for HTTP/2; aioquic's handle_event closes the connection with
    it like with its own errors."""

    error_code = ErrorCode.H3_EXCESSIVE_LOAD


# RFC 9114 4.2.2: "The size of a field list is calculated based on the uncompressed size of
# fields, including the length of the name and value in bytes plus an overhead of 32 bytes for
# each field."
_FIELD_OVERHEAD = 32
# Every entry of QPACK's static table (RFC 9204 Appendix A) has a name and value shorter than
# this together.
_STATIC_ENTRY = 128
# A field section may cost at most this many times the size limit to decode, plus this many
# dynamic table entries of the largest size (see _decode_work).
_DECODE_SLACK = 8
_DECODE_ENTRIES = 64
# Frames aioquic buffers whole before it reads them; it appends each piece to what it holds,
# so a frame that arrives in n pieces costs n times its size in copying.
_ASSEMBLED = frozenset({FrameType.HEADERS, FrameType.SETTINGS, FrameType.MAX_PUSH_ID})
# How many pieces one may arrive in: a few, plus one per 256 bytes (a real client's pieces are
# packets of a thousand bytes or more).
_PIECES = 16
_PIECE_SIZE = 256
# The largest SETTINGS (or MAX_PUSH_ID) frame accepted. Each setting takes at most 16 bytes and
# a client has a handful to send, plus a few reserved ones (RFC 9114 7.2.4.1).
_MAX_CONTROL_FRAME = 16 * 1024


def _prefixed_int(data: bytes, pos: int, bits: int) -> tuple[int, int]:
    """RFC 7541 5.1 (QPACK 4.1.1): an integer with an N-bit prefix at data[pos]."""
    mask = (1 << bits) - 1
    value = data[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    while shift < 63:
        byte = data[pos]  # IndexError when truncated
        pos += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise IndexError("QPACK integer too large")


def _string_size(data: bytes, pos: int, bits: int) -> tuple[int, int]:
    """The most a QPACK string literal (RFC 9204 4.1.2; the H bit just above the `bits`-bit
    length prefix) decodes to, and where it ends."""
    huffman = data[pos] & (1 << bits)
    length, pos = _prefixed_int(data, pos, bits)
    end = pos + length
    if end > len(data):
        raise IndexError("QPACK string truncated")
    # RFC 7541 Appendix B: the shortest Huffman code is 5 bits long.
    return (length * 8 // 5 if huffman else length), end


def _decode_work(block: bytes, entry: int, ceiling: int) -> int:
    """An upper bound on what the encoded field section `block` decodes to (RFC 9204 4.5),
    without decoding it: a reference to a dynamic table entry may stand for up to `entry`
    bytes, one to the static table for a short one, and a literal for its own length. Counting
    stops once the bound passes `ceiling`. A block that is malformed or truncated counts up to
    where it breaks: the decoder fails there."""
    total = 0
    try:
        _, pos = _prefixed_int(block, 0, 8)  # Required Insert Count
        _, pos = _prefixed_int(block, pos, 7)  # Sign bit and Delta Base
        end = len(block)
        while pos < end and total <= ceiling:
            first = block[pos]
            if first & 0x80:  # 1Txxxxxx: indexed field line
                total += _STATIC_ENTRY if first & 0x40 else entry
                _, pos = _prefixed_int(block, pos, 6)
                continue
            if first & 0x40:  # 01NTxxxx: literal with name reference
                name = _STATIC_ENTRY if first & 0x10 else entry
                _, pos = _prefixed_int(block, pos, 4)
            elif first & 0x20:  # 001NHxxx: literal with literal name
                name, pos = _string_size(block, pos, 3)
            elif first & 0x10:  # 0001xxxx: indexed field line with post-base index
                total += entry
                _, pos = _prefixed_int(block, pos, 4)
                continue
            else:  # 0000Nxxx: literal with post-base name reference
                name = entry
                _, pos = _prefixed_int(block, pos, 3)
            value, pos = _string_size(block, pos, 7)
            total += name + value + _FIELD_OVERHEAD
    except IndexError:
        pass
    return total


def field_section_size(headers: Headers) -> int:
    """RFC 9114 4.2.2's size of a field section (what SETTINGS_MAX_FIELD_SECTION_SIZE limits)."""
    return sum(len(name) + len(value) + _FIELD_OVERHEAD for name, value in headers)


def _coalesce(events: list[Event]) -> list[Event]:
    """One DataReceived for each run of body pieces of one stream: a body sent as many tiny
    DATA frames (three bytes on the wire for one byte of body) reaches the application in the
    pieces QUIC delivered, not one event per frame."""
    out: list[Event] = []
    head: DataReceived | None = None  # the first event of the run being gathered
    run: list[bytes] = []
    for event in events:
        if isinstance(event, DataReceived):
            if head is not None and event.stream_id == head.stream_id:
                run.append(event.data)
                continue
            if head is not None:
                out.append(_joined(head, run))
            head, run = event, [event.data]
            continue
        if head is not None:
            out.append(_joined(head, run))
            head = None
        out.append(event)
    if head is not None:
        out.append(_joined(head, run))
    return out


def _joined(head: DataReceived, run: list[bytes]) -> DataReceived:
    return head if len(run) == 1 else DataReceived(stream_id=head.stream_id, data=b"".join(run))


class _ServerH3(H3Connection):
    """aioquic's H3Connection with stream errors for malformed requests, the extended CONNECT
    setting made optional, QPACK settings and a field section limit of our choosing, GOAWAY, a
    way to forget a stream that was reset, and a record of the connection error it closed the
    connection with (`error`)."""

    def __init__(self, quic: QuicConnection, *, limits: HTTP3Limits) -> None:
        # Read by _init_connection and _get_local_settings, which the base constructor calls.
        self._limits = limits
        self._extended_connect = limits.extended_connect
        self._field_limit = limits.max_field_section_size
        # The most one dynamic table reference can decode to: an entry's size counts its
        # name, its value and 32 bytes (RFC 9204 3.2.1), and never exceeds the capacity.
        entry = limits.qpack_max_table_capacity
        self._entry_max = entry
        self._decode_ceiling = _DECODE_SLACK * self._field_limit + _DECODE_ENTRIES * entry
        self.error: H3Error | None = None
        # Pieces received so far of the frame each stream is assembling (see _ASSEMBLED).
        self._pieces: weakref.WeakKeyDictionary[H3Stream, int] = weakref.WeakKeyDictionary()
        super().__init__(quic, enable_webtransport=False)

    def _init_connection(self) -> None:
        # aioquic's constructor fixes QPACK's settings (4096 bytes of table, 16 blocked
        # streams) in private attributes and builds its decoder from them just before it calls
        # this, which writes them into our SETTINGS frame: there is no public way to choose
        # them, so they are replaced here, before anything was decoded or sent. RFC 9204 3.2.3:
        # the encoder "MUST NOT use a dynamic table capacity that exceeds this maximum" and 2.1.2:
        # "The decoder specifies an upper bound on the number of streams that can be blocked".
        limits = self._limits
        self._max_table_capacity = limits.qpack_max_table_capacity
        self._blocked_streams = limits.qpack_blocked_streams
        self._decoder = pylsqpack.Decoder(
            limits.qpack_max_table_capacity, limits.qpack_blocked_streams
        )
        super()._init_connection()

    def _get_local_settings(self) -> dict[int, int]:
        settings = super()._get_local_settings()
        if not self._extended_connect:
            # RFC 9220 3: a client may use :protocol only once the server has sent
            # SETTINGS_ENABLE_CONNECT_PROTOCOL = 1.
            settings.pop(Setting.ENABLE_CONNECT_PROTOCOL, None)
        # RFC 9114 4.2.2: "If an implementation wishes to advise its peer of this limit, it
        # can be conveyed as a number of bytes in the SETTINGS_MAX_FIELD_SECTION_SIZE
        # parameter."
        settings[Setting.MAX_FIELD_SECTION_SIZE] = self._field_limit
        return settings

    # ---- the connection error aioquic closes with ------------------------------------------
    # handle_event catches aioquic's ProtocolError (a connection error) and closes the QUIC
    # connection with its code, but keeps nothing of it; these three are the ways in.

    def _receive_stream_data(
        self, event: quic_events.StreamDataReceived
    ) -> list[h3_events.H3Event]:
        try:
            self._count_piece(event.stream_id)
            return super()._receive_stream_data(event)
        except H3Error as exc:
            self.error = exc
            raise

    def _count_piece(self, stream_id: int) -> None:
        stream = self._stream.get(stream_id)
        if stream is None:
            return
        size = stream.frame_size
        if size is None or stream.frame_type not in _ASSEMBLED or stream.blocked:
            self._pieces.pop(stream, None)
            return
        # A frame header was read and its payload is still arriving. RFC 9114 10.5: "An
        # endpoint can use [...] CPU and memory [...] Implementations SHOULD track the use of
        # these features and set limits on their use." Tiny pieces cost us far more than the
        # peer; a HEADERS frame in one-byte STREAM frames would cost its size squared.
        pieces = self._pieces.get(stream, 0) + 1
        self._pieces[stream] = pieces
        if pieces > _PIECES + size // _PIECE_SIZE:
            raise _ExcessiveLoad(f"a {size}-byte frame sent in {pieces} pieces or more")

    def _receive_stream_reset(self, stream_id: int) -> None:
        try:
            super()._receive_stream_reset(stream_id)
        except H3Error as exc:
            self.error = exc
            raise

    def _receive_stop_sending(self, stream_id: int) -> None:
        try:
            super()._receive_stop_sending(stream_id)
        except H3Error as exc:
            self.error = exc
            raise

    # ---- the field section limit -----------------------------------------------------------

    def _check_request_or_push_frame_type(self, frame_type: int, stream: H3Stream) -> None:
        # aioquic calls this as soon as a frame header is parsed, with the frame's announced
        # length in `stream.frame_size`, and buffers a HEADERS frame until it is complete:
        # refusing here keeps an oversized one from being buffered at all (aioquic grants
        # flow-control credit as data arrives, so nothing else bounds that buffer).
        super()._check_request_or_push_frame_type(frame_type, stream)
        size = stream.frame_size
        if frame_type == FrameType.HEADERS and size is not None and size > self._field_limit:
            # An encoded field section longer than the limit decodes to more than it: each
            # field gains 32 bytes and QPACK's Huffman code seldom spends more than 8 bits on
            # a byte of a real field (HTTP/2's FrameGuard reasons the same way). RFC 9114
            # 4.2.2: "An implementation that has received this parameter SHOULD NOT send an
            # HTTP message header that exceeds the indicated size".
            raise _ExcessiveLoad(f"HEADERS frame of {size} bytes, over the advertised limit")

    def _check_control_frame_type(self, frame_type: int) -> None:
        super()._check_control_frame_type(frame_type)
        # aioquic waits for a SETTINGS or MAX_PUSH_ID frame to be complete before it reads
        # it, buffering whatever length the frame header announced (the frame header was just
        # read into the control stream's state).
        control_id = self._peer_control_stream_id
        control = None if control_id is None else self._stream.get(control_id)
        size = None if control is None else control.frame_size
        if frame_type in _ASSEMBLED and size is not None and size > _MAX_CONTROL_FRAME:
            raise _ExcessiveLoad(f"control frame of {size} bytes")

    def _decode_headers(self, stream_id: int, frame_data: bytes | None) -> Headers:
        if frame_data is not None:
            # A few bytes can stand for many copies of a large dynamic table entry (a "QPACK
            # bomb": 60 KB of references to a 4 KB entry decode to 240 MB). pylsqpack has no
            # limit of its own, so the representations are read first and a section that
            # could decode to far more than the limit is refused without decoding it
            # (RFC 9204 7.3: "An implementation has to set a limit for the values it accepts
            # for integers, as well as for the encoded length").
            bound = _decode_work(frame_data, self._entry_max, self._decode_ceiling)
            if bound > self._decode_ceiling:
                raise _ExcessiveLoad("field section referencing too much of the dynamic table")
        headers = super()._decode_headers(stream_id, frame_data)
        size = field_section_size(headers)
        if size > self._field_limit:
            raise _ExcessiveLoad(f"field section of {size} bytes, over the advertised limit")
        return headers

    def _handle_request_or_push_frame(
        self,
        frame_type: int,
        frame_data: bytes | None,
        stream: H3Stream,
        stream_ended: bool,
    ) -> list[h3_events.H3Event]:
        try:
            return super()._handle_request_or_push_frame(
                frame_type, frame_data, stream, stream_ended
            )
        except MessageError as exc:
            return self._malformed(stream, exc)

    def _handle_request_or_push_end(self, stream: H3Stream) -> list[h3_events.H3Event]:
        try:
            return super()._handle_request_or_push_end(stream)
        except MessageError as exc:
            return self._malformed(stream, exc)

    def _malformed(self, stream: H3Stream, exc: MessageError) -> list[h3_events.H3Event]:
        if self._is_client or stream.push_id is not None:
            raise exc
        # RFC 9114 4.1.2: "Malformed requests or responses that are detected MUST be treated
        # as a stream error of type H3_MESSAGE_ERROR." aioquic raises it as a connection
        # error; here it stays with its stream. Frames still arriving on the stream are parsed
        # as body (which HTTP3Protocol drops) rather than failing the connection as DATA before
        # HEADERS, and a Content-Length read before the fault no longer applies.
        stream.headers_recv_state = HeadersState.AFTER_HEADERS
        stream.expected_content_length = None
        return [_MalformedMessage(stream_id=stream.stream_id, reason=exc.reason_phrase)]

    def send_goaway(self, stream_id: int) -> None:
        """RFC 9114 7.2.6: a GOAWAY frame on our control stream."""
        control = self._local_control_stream_id
        if control is not None:
            self._quic.send_stream_data(
                control, encode_frame(FrameType.GOAWAY, encode_uint_var(stream_id))
            )

    def forget(self, stream_id: int) -> None:
        """Drop aioquic's state for a stream reset in both directions; its H3Stream is only
        dropped once both halves ended cleanly, which a reset stream never reports."""
        stream = self._stream.pop(stream_id, None)
        if stream is not None and stream.blocked:
            # Its field section waits in the QPACK decoder for encoder instructions; when they
            # came, aioquic would look for the stream it has forgotten. RFC 9204 4.4.2: "when
            # it abandons reading of a stream, it generates a Stream Cancellation instruction".
            # aioquic does the same when the peer resets a stream (_receive_stream_reset).
            cancel = self._decoder.cancel_stream(stream_id)
            decoder_stream = self._local_decoder_stream_id
            if decoder_stream is not None:
                self._quic.send_stream_data(decoder_stream, cancel)


class _Phase(enum.Enum):
    OPEN = enum.auto()
    DRAINING = enum.auto()  # GOAWAY sent, finishing the streams that were accepted
    CLOSED = enum.auto()  # CONNECTION_CLOSE queued or received


@dataclass(slots=True)
class _Stream:
    request_done: bool = False
    rejected: bool = False  # answered by the connection driver (RequestRejected), body dropped
    tunnel: bool = False  # a WebSocket (extended CONNECT)
    head_sent: bool = False  # the final response head is queued
    response_done: bool = False  # the response's end is queued


class HTTP3Protocol:
    """One HTTP/3 connection, server side, over the QUIC connection `quic`. See the module
    docstring; `QuicEndpoint` creates these."""

    multiplexed = True

    def __init__(
        self,
        *,
        quic: QuicConnection,
        limits: HTTP3Limits,
        now: float,
        on_transmit: Callable[[], None] | None = None,
    ) -> None:
        self.quic = quic
        self._on_transmit = on_transmit
        self._limits = limits
        # Receive credit as the application reads (protocol/read_credit.py); the endpoint hands
        # it to its QUIC connection, which grants MAX_DATA / MAX_STREAM_DATA from it.
        configuration = quic.configuration
        self.read_credit = ReadCredit(
            stream_window=configuration.max_stream_data,
            connection_window=configuration.max_data,
            held=self._held_bytes,
        )
        self._h3: _ServerH3 | None = None  # from ProtocolNegotiated on
        self._streams: dict[int, _Stream] = {}
        self._phase = _Phase.OPEN
        self._last_stream_id = -4  # the highest request stream seen
        # Request streams below it whose head has not arrived yet (packets are reordered).
        self._unseen: set[int] = set()
        self._goaway_id: int | None = None
        self._drain_deadline = 0.0  # from the GOAWAY on: how long acknowledgements are awaited
        self._terminated = False
        # Streams reset in both directions whose input may still be arriving; the client
        # answers STOP_SENDING with RESET_STREAM (RFC 9000 3.5), which ends the entry.
        self._abandoned: set[int] = set()
        self._resets = TokenBucket(limits.reset_budget, now)
        self._now = now  # of the input being handled, for the reset budget
        # Why the peer's behaviour made us close the connection (H3_EXCESSIVE_LOAD), once it has.
        self._abuse: str | None = None
        self.handshake_complete = False
        # The client's 0-RTT was accepted: requests may arrive before the handshake completes.
        self.early_data_accepted = False
        # Events of requests that came in early data with an unsafe method, and their streams:
        # passed on once the handshake completes.
        self._held: list[Event] = []
        self._held_streams: set[int] = set()
        self.alpn_protocol: str | None = None
        # Something was queued into `quic` since the endpoint last collected its datagrams
        # (the endpoint clears it); `on_transmit` is called each time it becomes true, so the
        # endpoint need not look at every connection to find the ones with output.
        self.wants_transmit = False

    def _transmit(self) -> None:
        if not self.wants_transmit:
            self.wants_transmit = True
            if self._on_transmit is not None:
                self._on_transmit()

    # ---- input, from the endpoint ---------------------------------------------------------

    def quic_event_received(self, event: quic_events.QuicEvent, now: float) -> list[Event]:
        """Handle one event of the QUIC connection (the endpoint keeps the connection-ID ones)."""
        if self._terminated:
            return []
        if isinstance(event, quic_events.ProtocolNegotiated):
            self.alpn_protocol = event.alpn_protocol
            # The TLS layer settled this while handling the ClientHello, before any 0-RTT
            # packet could be decrypted.
            self.early_data_accepted = bool(self.quic.tls.early_data_accepted)
            if self._h3 is None:
                # The control and QPACK streams go out with the first 1-RTT packets.
                self._h3 = _ServerH3(self.quic, limits=self._limits)
                self._transmit()
            return []
        if isinstance(event, quic_events.HandshakeCompleted):
            self.handshake_complete = True
            # RFC 8470 5.1: once the handshake is complete, requests that arrived in early
            # data can no longer be replayed and are processed as usual.
            held = self._held
            self._held = []
            self._held_streams.clear()
            return held
        if isinstance(event, quic_events.ConnectionTerminated):
            return self._terminate(event)
        h3 = self._h3
        if h3 is None:
            return []
        if isinstance(event, (quic_events.StreamDataReceived, quic_events.StreamReset)):
            abandoned = self._abandoned
            if event.stream_id in abandoned:
                # What was in flight before the client heard of the reset. aioquic's
                # H3Connection no longer knows the stream and would read a DATA frame on it as
                # a connection error (DATA before HEADERS).
                if isinstance(event, quic_events.StreamReset) or event.end_stream:
                    abandoned.discard(event.stream_id)
                return []
        self._now = now
        events: list[Event] = []
        if isinstance(event, quic_events.StreamDataReceived):
            self.read_credit.taken += len(event.data)
        if isinstance(event, (quic_events.StreamReset, quic_events.StopSendingReceived)):
            # RESET_STREAM: the client abandoned its request; STOP_SENDING: it wants no more
            # of the response (aioquic has already reset our side). Either way, the exchange
            # is over for the application.
            self._peer_reset(event.stream_id, events)
        for h3_event in h3.handle_event(event):
            stream_id: int = getattr(h3_event, "stream_id", -1)
            try:
                self._on_h3_event(h3_event, events)
            except Exception:
                if stream_id < 0:
                    raise  # not one stream's fault: the endpoint closes the connection
                self._fail(stream_id, events)  # a fault in one stream costs that stream only
        self._transmit()
        if h3.error is not None or self._abuse is not None:
            events.extend(self._connection_error(h3.error))
            return events
        if len(events) > 1:
            events = _coalesce(events)
        if self._held_streams:
            events = self._hold(events)
        return events

    def _hold(self, events: list[Event]) -> list[Event]:
        """Keep back the events of streams held until the handshake completes."""
        held = self._held_streams
        out: list[Event] = []
        for event in events:
            if getattr(event, "stream_id", None) in held:
                self._held.append(event)
            else:
                out.append(event)
        return out

    def upkeep(self, now: float) -> list[Event]:
        """Called by the endpoint after each batch of input: close once draining is over."""
        if (
            self._phase is _Phase.DRAINING
            and not self._streams
            and (self._all_sent() or now >= self._drain_deadline)
        ):
            # RFC 9114 5.2: "Once all accepted requests have been processed, the server can
            # permit the connection to become idle, or it MAY initiate an immediate closure of
            # the connection." Only once the responses' last bytes (and the GOAWAY) were
            # acknowledged, as a CONNECTION_CLOSE discards whatever QUIC still had to (re)send;
            # but a client that vanished never acknowledges, and must not hold up the
            # server's shutdown for the whole graceful timeout (QUIC's loss timers call back
            # here while the GOAWAY is outstanding).
            self.quic.close(error_code=ErrorCode.H3_NO_ERROR)
            self._phase = _Phase.CLOSED
            self._transmit()
        return []

    def _on_h3_event(self, event: h3_events.H3Event, events: list[Event]) -> None:
        if isinstance(event, h3_events.HeadersReceived):
            stream_id = event.stream_id
            stream = self._streams.get(stream_id)
            if stream is None:
                if self._first_sight(stream_id):
                    self._on_request(stream_id, event.headers, event.stream_ended, events)
                # else: a stream already finished with (its trailers, say): nothing to do.
                return
            # Request trailers: not passed on (ASGI has no place for them); aioquic has
            # checked that they hold no pseudo-header (RFC 9114 4.1.2 makes that malformed).
            if event.stream_ended:
                self._request_ended(stream_id, stream, events)
        elif isinstance(event, h3_events.DataReceived):
            stream = self._streams.get(event.stream_id)
            if stream is None:
                return  # a stream rejected, reset or finished with: its body goes nowhere
            if event.data and not stream.rejected:
                events.append(DataReceived(stream_id=event.stream_id, data=event.data))
                self.read_credit.delivered(event.stream_id, len(event.data))
            if event.stream_ended:
                self._request_ended(event.stream_id, stream, events)
        elif isinstance(event, _MalformedMessage):
            stream_id = event.stream_id
            self._first_sight(stream_id)
            if self._drop(stream_id) is not None:
                events.append(StreamReset(stream_id=stream_id))
            self._abandon(stream_id, ErrorCode.H3_MESSAGE_ERROR)
            self._spend_reset("too many malformed requests")

    def _first_sight(self, stream_id: int) -> bool:
        """Is this the first HEADERS of request stream `stream_id` (not its trailers, nor a
        stream finished with)? Heads arrive out of order when packets do."""
        last = self._last_stream_id
        if stream_id > last:
            # RFC 9000 3.2: "Before a stream is created, all streams of the same type with
            # lower-numbered stream IDs MUST be created", so the ones skipped are open and
            # their heads are still to come. QUIC's stream limit bounds how many.
            unseen = self._unseen
            unseen.update(range(last + 4, stream_id, 4))
            self._last_stream_id = stream_id
            if len(unseen) > 2 * self._limits.max_concurrent_streams:
                # Streams that ended without a head (a lone FIN) never leave by themselves;
                # once aioquic has discarded a stream nothing more arrives on it. (Its stream
                # table has no public accessor.)
                streams = self.quic._streams
                unseen.intersection_update(streams)
            return True
        if stream_id in self._unseen:
            self._unseen.discard(stream_id)
            return True
        return False

    def _on_request(self, stream_id: int, raw: Headers, ended: bool, events: list[Event]) -> None:
        if self._goaway_id is not None and stream_id >= self._goaway_id:
            # RFC 9114 5.2: "Requests on stream IDs less than the stream ID in a GOAWAY frame
            # from the server might have been processed; their status cannot be known until a
            # response is received" and requests at or above it were not: "the server MAY
            # reject individual requests ... with the H3_REQUEST_REJECTED error code".
            self._abandon(stream_id, ErrorCode.H3_REQUEST_REJECTED)
            return
        try:
            pseudo, headers, _priority, hosts = split_pseudo_head(raw)
            kind = check_pseudo_head(
                pseudo, headers, hosts, extended_connect=self._limits.extended_connect
            )
        except MalformedHead:
            # RFC 9114 4.1.2: "A malformed request or response is equivalent to a stream
            # error of type H3_MESSAGE_ERROR." The application never hears of it. Each one
            # costs a reset from the rapid-reset budget: a stream of malformed heads is as
            # cheap to send as a stream of RESET_STREAMs (as on HTTP/2).
            self._abandon(stream_id, ErrorCode.H3_MESSAGE_ERROR)
            self._spend_reset("too many malformed requests")
            return
        except RemoteProtocolError as exc:
            # Well-formed, but not a request this server serves: the connection driver
            # answers it on this stream; a body the client still sends is dropped.
            self._streams[stream_id] = _Stream(request_done=ended, rejected=True)
            events.append(RequestRejected(stream_id=stream_id, error=exc))
            return
        self._streams[stream_id] = _Stream(
            request_done=ended, tunnel=kind is not StreamKind.REQUEST
        )
        if not self.handshake_complete and pseudo[b":method"] not in EARLY_DATA_METHODS:
            # Before the handshake completes, request data can only have come in 0-RTT packets
            # (the client's 1-RTT keys are installed with its Finished), which an attacker can
            # replay. RFC 8470 5.1: the server can "delay processing of early data until after
            # the TLS handshake completes".
            self._held_streams.add(stream_id)
        # The head passed: `:method` is a token and `:path` is set (only a plain CONNECT
        # lacks one, and that is always rejected).
        events.append(
            RequestReceived(
                stream_id=stream_id,
                method=pseudo[b":method"],
                target=pseudo[b":path"],
                http_version="3",
                headers=headers,
                expects_continue=(
                    not ended
                    and any(n == b"expect" and v.lower() == b"100-continue" for n, v in headers)
                ),
                kind=kind,
            )
        )
        if ended:
            events.append(StreamEnded(stream_id=stream_id))

    def _request_ended(self, stream_id: int, stream: _Stream, events: list[Event]) -> None:
        if stream.request_done:
            return
        stream.request_done = True
        if not stream.rejected:
            events.append(StreamEnded(stream_id=stream_id))
        self._stream_output_done(stream_id)

    def _peer_reset(self, stream_id: int, events: list[Event]) -> None:
        self._unseen.discard(stream_id)  # reset before its head arrived: none will
        stream = self._drop(stream_id)
        if stream is None:
            return
        events.append(StreamReset(stream_id=stream_id))
        if not stream.response_done:
            # CVE-2023-44487 ("rapid reset"): a request the client cancels at once costs it
            # one frame and us the work of starting its response; QUIC's stream limit does
            # not help, as every reset stream makes room for the next (RFC 9000 4.6).
            self._spend_reset("too many streams reset (rapid reset)")
        # Whichever half the peer did not end yet is ended here.
        with contextlib.suppress(ValueError):
            self.quic.reset_stream(stream_id, ErrorCode.H3_REQUEST_CANCELLED)
        if not stream.request_done:
            with contextlib.suppress(ValueError):
                self.quic.stop_stream(stream_id, ErrorCode.H3_REQUEST_CANCELLED)
        # aioquic's H3Stream would wait forever for its sending half to end (it does not see
        # the reset above), one per cancelled request.
        self._forget(stream_id)

    # ---- commands -------------------------------------------------------------------------

    def send(self, command: Command, now: float) -> list[Event]:
        h3 = self._h3
        if self._phase is _Phase.CLOSED or h3 is None:
            return []
        events: list[Event] = []
        if isinstance(command, AcknowledgeData):
            # The QUIC connection raises its limits when it next writes a packet; once half a
            # window was read, that is worth a packet of its own.
            if self.read_credit.read(command.stream_id, command.amount):
                self._transmit()
            return events
        if isinstance(command, CloseConnection):
            self._start_drain(h3, now)
            events.extend(self.upkeep(now))
            return events
        if isinstance(command, PushPromise):
            return events  # server push is off
        stream_id = command.stream_id
        stream = self._streams.get(stream_id)
        if stream is None or (stream.response_done and not isinstance(command, ResetStream)):
            return events  # the peer reset it, or it is finished: nothing more to send
        self._transmit()
        try:
            if isinstance(command, SendData):
                if command.end_stream:
                    stream.response_done = True
                h3.send_data(stream_id, command.data, command.end_stream)
            elif isinstance(command, SendResponse):
                validate_response_headers(command.headers)
                headers = [(b":status", str(command.status).encode())]
                # RFC 9114 4.2: "An endpoint MUST NOT generate an HTTP/3 field section
                # containing connection-specific fields"; dropped rather than failing an
                # application written for HTTP/1.1.
                headers.extend(h for h in command.headers if h[0] not in CONNECTION_HEADERS)
                stream.head_sent = True
                if command.end_stream:
                    stream.response_done = True
                h3.send_headers(stream_id, headers, end_stream=command.end_stream)
            elif isinstance(command, SendInformational):
                validate_response_headers(command.headers)
                if stream.head_sent:
                    return events  # too late for a 1xx: it would go out as trailers
                h3.send_headers(
                    stream_id, [(b":status", str(command.status).encode()), *command.headers]
                )
            elif isinstance(command, SendTrailers):
                validate_response_headers(command.headers)
                stream.response_done = True
                trailers = [h for h in command.headers if h[0] not in CONNECTION_HEADERS]
                h3.send_headers(stream_id, trailers, end_stream=True)
            elif isinstance(command, ResetStream):
                self._drop(stream_id)
                self._abandon(stream_id, ErrorCode.H3_INTERNAL_ERROR)
                return events
        except LocalProtocolError:
            raise  # the application asked for something invalid: its layer answers 500
        except Exception:  # a fault in one stream costs that stream only (see _fail)
            self._fail(stream_id, events)
            return events
        if stream.response_done:
            self._stream_output_done(stream_id)
        events.extend(self.upkeep(now))
        return events

    def _stream_output_done(self, stream_id: int) -> None:
        """Forget a stream once its response is complete: at once when the request is complete
        too, and otherwise by asking the client to stop sending the rest, which nobody will
        read (ASGI answers `receive()` after a complete response with `http.disconnect`; a
        rejected request's body is dropped; a WebSocket the server has ended is over). Its
        unread body then stops holding the connection's receive credit."""
        stream = self._streams.get(stream_id)
        if stream is None or not stream.response_done:
            return
        self._drop(stream_id)
        if not stream.request_done:
            # RFC 9114 4.1.1: "When the server does not need to receive the remainder of the
            # request, it MAY abort reading the request stream, send a complete response, and
            # cleanly close the sending part of the stream. The error code H3_NO_ERROR SHOULD
            # be used when requesting that the client stop sending on the request stream."
            with contextlib.suppress(ValueError):
                self.quic.stop_stream(stream_id, ErrorCode.H3_NO_ERROR)

    def _drop(self, stream_id: int) -> _Stream | None:
        """The exchange on a stream is over: stop tracking it, and its unread body."""
        self.read_credit.forget(stream_id)
        return self._streams.pop(stream_id, None)

    def _held_bytes(self, stream_id: int) -> int:
        """Input of a stream that aioquic's HTTP/3 layer holds (a frame not complete yet, or
        what came after a head blocked on QPACK): not consumed, so it holds credit back."""
        h3 = self._h3
        stream = None if h3 is None else h3._stream.get(stream_id)  # no public accessor
        return 0 if stream is None else len(stream.buffer)

    def _abandon(self, stream_id: int, code: int) -> None:
        """Reset a stream in both directions (RFC 9114 8: a stream error is signalled with
        RESET_STREAM and STOP_SENDING) and forget it."""
        with contextlib.suppress(ValueError):
            self.quic.reset_stream(stream_id, code)
        with contextlib.suppress(ValueError):
            self.quic.stop_stream(stream_id, code)
        self._forget(stream_id)
        self._transmit()

    def _forget(self, stream_id: int) -> None:
        """Drop aioquic's HTTP/3 state for a stream reset in both directions."""
        if self._h3 is not None:
            self._h3.forget(stream_id)
            # Input may still arrive until the client answers STOP_SENDING with RESET_STREAM;
            # none will when the stream's input was complete already, and no RESET_STREAM
            # either (RFC 9000 3.5 asks for one only while the client is still sending).
            # aioquic has no public accessor for a stream's receiving state.
            quic_stream = self.quic._streams.get(stream_id)
            if quic_stream is not None and not quic_stream.receiver.is_finished:
                self._abandoned.add(stream_id)

    def _spend_reset(self, reason: str) -> None:
        if not self._resets.take(self._now) and self._abuse is None:
            self._abuse = reason

    def _fail(self, stream_id: int, events: list[Event]) -> None:
        """Something raised while one stream was handled: that stream is reset, nothing else."""
        if self._drop(stream_id) is not None:
            events.append(StreamReset(stream_id=stream_id))
        self._abandon(stream_id, ErrorCode.H3_INTERNAL_ERROR)

    # ---- connection lifetime --------------------------------------------------------------

    def _start_drain(self, h3: _ServerH3, now: float) -> None:
        if self._phase is not _Phase.OPEN:
            return
        self._drain_deadline = now + _ACK_PATIENCE
        # RFC 9114 5.2: the GOAWAY "contains a client-initiated bidirectional stream ID [...]
        # requests on streams with that ID or greater" will not be processed.
        self._goaway_id = max(_FIRST_REQUEST_STREAM, self._last_stream_id + 4)
        h3.send_goaway(self._goaway_id)
        self._phase = _Phase.DRAINING
        self._transmit()

    def _all_sent(self) -> bool:
        """Has the peer acknowledged everything sent on every stream (the GOAWAY on the
        control stream too)? aioquic has no public accessor, so this reads its stream table:
        acknowledged bytes leave a sender's buffer, and a finished sender had its end (or its
        reset) acknowledged."""
        for stream in self.quic._streams.values():
            sender = stream.sender
            if not sender.is_finished and sender._buffer_start != sender._buffer_stop:
                return False
        return True

    def _terminate(self, event: quic_events.ConnectionTerminated) -> list[Event]:
        self._terminated = True
        self._phase = _Phase.CLOSED
        events = self._reset_all()
        error: ProtocolError | None = None
        if event.error_code not in _CLEAN_CLOSE and event.reason_phrase != "Idle timeout":
            error = RemoteProtocolError(
                f"QUIC connection closed with error 0x{event.error_code:x}: "
                f"{event.reason_phrase or 'no reason given'}"
            )
        events.append(ConnectionClosed(error=error))
        return events

    def _connection_error(self, error: H3Error | None) -> list[Event]:
        """aioquic found a connection error (and closed the QUIC connection with its code), or
        the peer overspent a budget: the connection ends now for the layer above, without
        waiting for the closing period (RFC 9000 10.2) to end with ConnectionTerminated."""
        self._terminated = True
        self._phase = _Phase.CLOSED
        reported: ProtocolError
        if error is None:
            reason = self._abuse or "excessive load"
            self.quic.close(error_code=ErrorCode.H3_EXCESSIVE_LOAD, reason_phrase=reason)
            reported = PeerAbuse(f"HTTP/3 abuse: {reason}")
        elif isinstance(error, _ExcessiveLoad):
            reported = PeerAbuse(f"HTTP/3 abuse: {error.reason_phrase}")
        else:
            reported = RemoteProtocolError(
                f"HTTP/3 connection error 0x{error.error_code:x}: "
                f"{error.reason_phrase or type(error).__name__}"
            )
        self._transmit()
        events = self._reset_all()
        events.append(ConnectionClosed(error=reported))
        return events

    def fail(self, exc: Exception) -> list[Event]:
        """A fault outside any stream (the endpoint caught it): close the whole connection."""
        if self._terminated:
            return []
        self.quic.close(error_code=ErrorCode.H3_INTERNAL_ERROR, reason_phrase="internal error")
        self._transmit()
        self._terminated = True
        self._phase = _Phase.CLOSED
        events = self._reset_all()
        events.append(ConnectionClosed(error=LocalProtocolError(f"HTTP/3 internal error: {exc!r}")))
        return events

    def _reset_all(self) -> list[Event]:
        """StreamReset for every stream the application knows of; held ones it never saw."""
        held = self._held_streams
        events: list[Event] = [
            StreamReset(stream_id=sid) for sid in self._streams if sid not in held
        ]
        self._streams.clear()
        self._held.clear()
        held.clear()
        return events

    def abort(self) -> None:
        """Close the QUIC connection now (H3_INTERNAL_ERROR), whatever is in flight."""
        if self._phase is not _Phase.CLOSED:
            self.quic.close(error_code=ErrorCode.H3_INTERNAL_ERROR, reason_phrase="aborted")
            self._phase = _Phase.CLOSED
            self._streams.clear()
            self._held.clear()
            self._held_streams.clear()
            self._transmit()

    # ---- the rest of the ServerProtocol shape ---------------------------------------------

    def data_to_send(self) -> bytes:
        # Output is queued into the QuicConnection; the endpoint sends it as datagrams.
        return b""

    def pending_send(self, stream_id: int) -> int:
        stream = self.quic._streams.get(stream_id)
        if stream is None:
            return 0
        sender = stream.sender
        # Bytes written to the stream but never sent yet (flow control or congestion holds
        # them); aioquic keeps no public count.
        return max(0, sender._buffer_stop - sender.highest_offset)

    def next_deadline(self) -> float | None:
        return None  # QUIC's timers (idle, loss, ACK) are the endpoint's

    def handle_deadline(self, now: float) -> list[Event]:
        return []

    @property
    def wants_read(self) -> bool:
        return not self._terminated

    @property
    def closed(self) -> bool:
        return self._phase is _Phase.CLOSED

    @property
    def cipher_suite(self) -> int | None:
        """The TLS 1.3 cipher suite the handshake chose (its IANA number), once known."""
        # aioquic exposes it only on its TLS context's key schedule.
        schedule = getattr(self.quic.tls, "key_schedule", None)
        suite = getattr(schedule, "cipher_suite", None)
        return None if suite is None else int(suite)

    @property
    def peer_address(self) -> tuple[object, ...] | None:
        """Where the client is now (it may migrate, RFC 9000 9)."""
        addr = self.quic.get_peer_address()
        return None if addr is None else tuple(addr)
