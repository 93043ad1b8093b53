"""One WebSocket's frames, from the opening handshake's answer to the closing handshake, sans-IO.

The HTTP cores carry a WebSocket as a stream of kind WEBSOCKET (HTTP/1.1 Upgrade, HTTP/2 and
HTTP/3 extended CONNECT) and never look inside it; a `WebSocketSession` is what does. wsproto's
frame layer parses and builds the frames (RFC 6455 5); this module owns what sits around it:
- the extension negotiation (permessage-deflate, RFC 7692) from the client's offer;
- the message size limit, checked on each frame header before its payload is read, and on
  inflated bytes with inflation bounded by what the limit has left, so a deflate bomb cannot
  allocate more than the limit;
- whole messages out (fragments joined), pings answered, the closing handshake;
- liveness and handshake deadlines on the clock it is given: a ping every `ping_interval`, a
  peer that does not answer within `ping_timeout` is failed with 1011; an application that
  neither accepts nor declines within `handshake_timeout` is timed out; a peer that does not
  answer our Close within `handshake_timeout` is dropped.

Bytes in (`receive_data`), events out; messages and closes in, bytes out (`data_to_send`). A
peer that breaks the protocol gets a Close with the code RFC 6455 7.4.1 names and the session
ends at once (RFC 6455 7.1.7 "Fail the WebSocket Connection"); nothing here raises for bad
input.

The common frame takes a shorter road. The session finds frame boundaries itself, and a whole,
unfragmented, uncompressed text or binary frame that is plainly valid (masked, no reserved
bits, minimal length encoding, within the limit) is unmasked and decoded here; wsproto gets
every other frame, byte for byte, at a frame boundary, so its state (a fragmented message, the
closing handshake) is exactly what it would be had it read everything. Text frames still on
their way go to wsproto as they arrive, so invalid UTF-8 fails the connection as soon as it is
seen (RFC 6455 8.1), not when the frame completes. Messages out are framed here too (a server
frame is a header and the payload); control frames are wsproto's.
"""

from __future__ import annotations

import enum
import re
import struct
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    Pong,
    TextMessage,
)
from wsproto.extensions import Extension
from wsproto.frame_protocol import CloseReason, Opcode, RsvBits

from multicorn.protocol.errors import LocalProtocolError
from multicorn.protocol.masking import unmask

if TYPE_CHECKING:
    from wsproto.frame_protocol import FrameDecoder, FrameProtocol

    from multicorn.protocol.events import Headers

# RFC 6455 7.4.1 codes this module uses.
NORMAL_CLOSURE: Final = 1000
GOING_AWAY: Final = 1001
NO_STATUS: Final = 1005  # reported, never sent: the peer's Close carried no code
ABNORMAL_CLOSURE: Final = 1006  # reported, never sent: the connection ended without a Close
MESSAGE_TOO_BIG: Final = 1009
INTERNAL_ERROR: Final = 1011
# IANA WebSocket close code registry: the server restarts; a client may reconnect at once.
SERVICE_RESTART: Final = 1012

# RFC 7692 7: the empty uncompressed block every compressed message ends with, stripped by
# the sender and put back by the receiver.
_DEFLATE_TAIL: Final = b"\x00\x00\xff\xff"
_NO_RSV: Final = RsvBits(False, False, False)
_RSV1: Final = RsvBits(True, False, False)
_DATA_OPCODES: Final = frozenset({Opcode.TEXT, Opcode.BINARY, Opcode.CONTINUATION})
# First header byte of a whole, uncompressed frame (FIN, no RSV bits) and its opcode.
_FIN_TEXT: Final = 0x81
_FIN_BINARY: Final = 0x82
_FIN_DATA: Final = (_FIN_TEXT, _FIN_BINARY)
_MASKED: Final = 0x80
# Payloads from this size on are unmasked from a view of the input and gathered in pieces while
# they arrive, rather than copied into the input buffer.
_VIEW_AT: Final = 16 * 1024
_WINDOW_BITS: Final = re.compile(r"(?:[89]|1[0-5])")


@dataclass(frozen=True, slots=True, kw_only=True)
class WebSocketLimits:
    enabled: bool = True  # WebSocket handshakes become WEBSOCKET streams on every HTTP version
    max_message_size: int = 16 * 1024 * 1024  # after inflating; larger closes with 1009
    per_message_deflate: bool = True  # accept a client's permessage-deflate offer
    ping_interval: float | None = 20.0  # seconds between pings; None sends none
    ping_timeout: float | None = 20.0  # a ping's pong must come within this; None waits forever
    handshake_timeout: float = 10.0  # for the app to accept, and for the peer's closing Close
    max_queued_messages: int = 32  # received and not yet taken by the app: reading pauses


# ---- events -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageReceived:
    """A whole message: `str` for a text message, `bytes` for a binary one."""

    data: bytes | str


@dataclass(frozen=True, slots=True, kw_only=True)
class WebSocketEnded:
    """The WebSocket is over: closed by either side, failed, or timed out. `code` and `reason`
    are what the application is told (RFC 6455 7.1.5: 1005 for a Close without a code, 1006
    when the connection ended without one); after this, `finished` is True."""

    code: int
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class HandshakeTimedOut:
    """The application neither accepted nor declined within `handshake_timeout`: answer the
    request with an error; the session is over."""


WebSocketEvent = MessageReceived | WebSocketEnded | HandshakeTimedOut


class _Phase(enum.Enum):
    CONNECTING = enum.auto()  # the handshake request is with the application
    OPEN = enum.auto()
    CLOSING = enum.auto()  # we sent a Close and wait for the peer's
    # The peer's input is over (its Close came, or it broke the protocol) and our Close waits
    # for `conclude()`: the application first answers the messages that came before.
    ENDING = enum.auto()
    DONE = enum.auto()  # the WebSocket is over: end the stream once the output is written


# ---- extensions ------------------------------------------------------------------------------


class _MessageBudget:
    """Bytes of the message being received, against the limit; shared by the size guard and
    the inflater so that compressed and uncompressed messages are measured the same way."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0


class _SizeGuard(Extension):
    """The message size limit, as a wsproto extension because an extension is shown every frame
    header before the payload is read. Always last in the list: it sees inflated bytes."""

    name = "multicorn-size-guard"  # never negotiated: it only watches

    def __init__(self, budget: _MessageBudget) -> None:
        self._budget = budget
        self._control = False  # the frame being read is a control frame
        self._compressed = False  # the message being read is compressed (RSV1 on its first frame)

    def enabled(self) -> bool:
        return True

    def offer(self) -> bool:
        return False

    def frame_inbound_header(
        self,
        proto: FrameDecoder | FrameProtocol,
        opcode: Opcode,
        rsv: RsvBits,
        payload_length: int,
    ) -> CloseReason | RsvBits:
        # Control frames are at most 125 bytes (wsproto enforces it) and may arrive between
        # the fragments of a message: they do not count against it.
        self._control = opcode.iscontrol()
        if self._control:
            return _NO_RSV
        if opcode is not Opcode.CONTINUATION:
            self._compressed = rsv.rsv1
        if not self._compressed:
            # Uncompressed, the header announces exactly what the message grows by: refuse it
            # now rather than buffer a payload that will be refused anyway.
            budget = self._budget
            if budget.used + payload_length > budget.limit:
                return CloseReason.MESSAGE_TOO_BIG
            budget.used += payload_length
        return _NO_RSV

    def frame_inbound_complete(
        self, proto: FrameDecoder | FrameProtocol, fin: bool
    ) -> bytes | CloseReason | None:
        if fin and not self._control:
            self._budget.used = 0
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class DeflateParameters:
    """An accepted permessage-deflate offer (RFC 7692 7.1)."""

    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    server_max_window_bits: int | None = None

    def response(self) -> str:
        """The Sec-WebSocket-Extensions value that accepts the offer."""
        parts = ["permessage-deflate"]
        if self.server_no_context_takeover:
            parts.append("server_no_context_takeover")
        if self.client_no_context_takeover:
            parts.append("client_no_context_takeover")
        if self.server_max_window_bits is not None:
            parts.append(f"server_max_window_bits={self.server_max_window_bits}")
        return "; ".join(parts)


def negotiate_deflate(headers: Headers) -> DeflateParameters | None:
    """The first permessage-deflate offer in the request's Sec-WebSocket-Extensions that this
    server can accept, or None. RFC 7692 5.1: the server declines an offer with an unknown
    parameter, a repeated parameter or an invalid value, and tries the next one."""
    offers = b",".join(value for name, value in headers if name == b"sec-websocket-extensions")
    for offer in offers.decode("latin-1").split(","):
        params = [part.strip() for part in offer.split(";")]
        if params[0].lower() != "permessage-deflate":
            continue
        accepted = _deflate_offer(params[1:])
        if accepted is not None:
            return accepted
    return None


def _deflate_offer(params: list[str]) -> DeflateParameters | None:
    seen: set[str] = set()
    server_bits: int | None = None
    for param in params:
        name, eq, value = param.partition("=")
        name = name.strip().lower()
        value = value.strip().strip('"')
        if name in seen:
            return None
        seen.add(name)
        if name in ("server_no_context_takeover", "client_no_context_takeover"):
            if eq:
                return None
        elif name == "server_max_window_bits":
            if _WINDOW_BITS.fullmatch(value) is None:
                return None
            server_bits = int(value)
            if server_bits == 8:
                # zlib cannot compress with a 256-byte window (it silently uses 512, which the
                # client could not inflate): decline rather than break the stream.
                return None
        elif name == "client_max_window_bits":
            # Optional value (7.1.2.2). We inflate with the largest window, which reads any
            # smaller one, so the response need not mention it.
            if eq and _WINDOW_BITS.fullmatch(value) is None:
                return None
        else:
            return None
    return DeflateParameters(
        server_no_context_takeover="server_no_context_takeover" in seen,
        client_no_context_takeover="client_no_context_takeover" in seen,
        server_max_window_bits=server_bits,
    )


class _Deflate(Extension):
    """permessage-deflate (RFC 7692), server side, with inflation bounded by the budget."""

    name = "permessage-deflate"

    def __init__(self, params: DeflateParameters, budget: _MessageBudget) -> None:
        self._params = params
        self._budget = budget
        self._compressor: zlib._Compress | None = None
        self._inflater: zlib._Decompress | None = None
        self._inflating = False  # the message being read is compressed
        self._control = False

    def enabled(self) -> bool:
        return True

    def offer(self) -> bool:
        return False

    def frame_inbound_header(
        self,
        proto: FrameDecoder | FrameProtocol,
        opcode: Opcode,
        rsv: RsvBits,
        payload_length: int,
    ) -> CloseReason | RsvBits:
        self._control = opcode.iscontrol()
        if rsv.rsv1 and (self._control or opcode is Opcode.CONTINUATION):
            # 6.1: RSV1 marks the first frame of a compressed message, nothing else.
            return CloseReason.PROTOCOL_ERROR
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            self._inflating = rsv.rsv1
        return _RSV1

    def frame_inbound_payload_data(
        self, proto: FrameDecoder | FrameProtocol, data: bytes
    ) -> bytes | CloseReason:
        if self._control or not self._inflating:
            return data
        return self._inflate(data)

    def frame_inbound_complete(
        self, proto: FrameDecoder | FrameProtocol, fin: bool
    ) -> bytes | CloseReason | None:
        if not fin or self._control or not self._inflating:
            return None
        self._inflating = False
        result = self._inflate(_DEFLATE_TAIL)
        if self._params.client_no_context_takeover:
            self._inflater = None
        return result

    def _inflate(self, data: bytes) -> bytes | CloseReason:
        if self._inflater is None:
            self._inflater = zlib.decompressobj(-15)
        budget = self._budget
        room = budget.limit - budget.used
        try:
            # One byte past the room is enough to know the message is too big, and caps what
            # a small deflate bomb can make us allocate.
            out = self._inflater.decompress(data, room + 1)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        if len(out) > room:
            return CloseReason.MESSAGE_TOO_BIG
        budget.used += len(out)
        return out

    def frame_outbound(
        self,
        proto: FrameDecoder | FrameProtocol,
        opcode: Opcode,
        rsv: RsvBits,
        data: bytes,
        fin: bool,
    ) -> tuple[RsvBits, bytes]:
        if opcode not in _DATA_OPCODES:
            return rsv, data
        if opcode is not Opcode.CONTINUATION:
            rsv = RsvBits(True, rsv.rsv2, rsv.rsv3)
        return rsv, self._compress(data, fin)

    def deflate_message(self, data: bytes) -> bytes:
        """A whole message's payload, compressed (its frame gets RSV1)."""
        return self._compress(data, True)

    def _compress(self, data: bytes, fin: bool) -> bytes:
        if self._compressor is None:
            bits = self._params.server_max_window_bits or 15
            self._compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -bits)
        out = self._compressor.compress(data)
        if fin:
            out += self._compressor.flush(zlib.Z_SYNC_FLUSH)
            out = out[: -len(_DEFLATE_TAIL)]  # 7.2.1: the sync flush's empty block goes
            if self._params.server_no_context_takeover:
                self._compressor = None
        return out


# ---- the session -----------------------------------------------------------------------------


class WebSocketSession:
    """See the module docstring. One per WEBSOCKET stream, created when its request arrives."""

    __slots__ = (
        "_binary",
        "_budget",
        "_deadline",
        "_deflate",
        "_deflater",
        "_frames",
        "_have",
        "_in_message",
        "_inbound",
        "_limits",
        "_out",
        "_owed",
        "_parts",
        "_pending_out",
        "_phase",
        "_ping_payload",
        "_pings",
        "_reply",
        "_text",
        "_wanted",
        "offered_subprotocols",
    )

    def __init__(self, *, limits: WebSocketLimits, request_headers: Headers, now: float) -> None:
        self._limits = limits
        self._phase = _Phase.CONNECTING
        self._deflate = negotiate_deflate(request_headers) if limits.per_message_deflate else None
        # wsproto's frame layer, made when a frame first needs it: most WebSockets only ever
        # see whole simple frames, and an idle one should not carry its buffers.
        self._frames: Connection | None = None
        self._budget = _MessageBudget(limits.max_message_size)
        self._out: list[bytes] = []
        self._pending_out = 0  # bytes in _out
        self._inbound = bytearray()  # input not yet consumed: a partial frame header or payload
        self._parts: list[bytes] = []  # a large binary frame still arriving, piece by piece
        self._have = 0  # bytes in _parts
        self._wanted = 0  # bytes of the whole frame (header included)
        self._owed = 0  # bytes of a frame already started with wsproto, still to hand it
        self._in_message = False  # wsproto has a fragmented data message under way
        self._deflater: _Deflate | None = None
        self._text: list[str] = []  # fragments of the message being received
        self._binary: list[bytes] = []
        self._deadline: float | None = now + limits.handshake_timeout
        self._ping_payload: bytes | None = None  # of the ping awaiting its pong
        self._reply: CloseConnection | None = None  # ENDING: the Close still to send
        self._pings = 0
        self.offered_subprotocols = _subprotocols(request_headers)

    # ---- the opening handshake ----------------------------------------------------------------

    def accept(self, subprotocol: str | None, now: float) -> Headers:
        """The application accepted: the headers the handshake's answer needs (besides what the
        HTTP core adds itself), and from now on frames flow."""
        if self._phase is not _Phase.CONNECTING:
            raise LocalProtocolError("the WebSocket was already accepted or closed")
        headers: Headers = []
        if subprotocol is not None:
            # RFC 6455 4.2.2: the server picks one of the client's offers, or none.
            if subprotocol not in self.offered_subprotocols:
                raise LocalProtocolError(
                    f"subprotocol {subprotocol!r} was not offered by the client "
                    f"(it offered {self.offered_subprotocols})"
                )
            headers.append((b"sec-websocket-protocol", subprotocol.encode()))
        if self._deflate is not None:
            self._deflater = _Deflate(self._deflate, self._budget)
            headers.append((b"sec-websocket-extensions", self._deflate.response().encode()))
        self._phase = _Phase.OPEN
        self._deadline = None
        self._schedule_ping(now)
        return headers

    def decline(self) -> None:
        """The application answered the handshake with an HTTP response: no frames ever."""
        self._phase = _Phase.DONE
        self._deadline = None

    # ---- inbound --------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> list[WebSocketEvent]:
        if not self._reading or not data:
            return []
        parts = self._parts
        if parts:
            # The rest of a large binary frame: joined once, when all of it is here.
            parts.append(data)
            self._have += len(data)
            if self._have < self._wanted:
                return []
            data = b"".join(parts)
            parts.clear()
        events: list[WebSocketEvent] = []
        inbound = self._inbound
        buf: bytes | bytearray
        if inbound:
            inbound += data
            buf = inbound
        else:
            buf = data  # the common case: nothing left over, nothing to copy
        size = len(buf)
        pos = 0
        limit = self._limits.max_message_size
        while self._reading:
            if self._owed:
                take = min(self._owed, size - pos)
                if not take:
                    break
                self._owed -= take
                self._to_wsproto(bytes(buf[pos : pos + take]), now, events)
                pos += take
                continue
            avail = size - pos
            if avail < 2:
                break
            first = buf[pos]
            second = buf[pos + 1]
            length = second & 0x7F
            head = 2
            minimal = True
            if length == 126:
                if avail < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head = 4
                minimal = length > 125
            elif length == 127:
                if avail < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
                minimal = 0xFFFF < length < 1 << 63
            if second & _MASKED:
                head += 4
            if avail < head:
                break
            end = pos + head + length
            if (
                first in _FIN_DATA
                and second & _MASKED
                and minimal
                and length <= limit
                and not self._in_message
            ):
                if end <= size:
                    mask = bytes(buf[pos + head - 4 : pos + head])
                    if length < _VIEW_AT:
                        payload = unmask(buf[pos + head : end], mask)
                    else:  # no copy of a large payload before the one unmasking makes
                        payload = unmask(memoryview(buf)[pos + head : end], mask)
                    self._whole_frame(first, payload, now, events)
                    pos = end
                    continue
                if first == _FIN_BINARY:
                    # Nothing to check until it is whole: wait (bounded by the limit). A large
                    # frame's pieces are kept as they come and joined once.
                    if end - pos >= _VIEW_AT:
                        self._parts.append(bytes(buf[pos:]))
                        self._have = size - pos
                        self._wanted = end - pos
                        pos = size
                    break
            # Everything else is wsproto's, from its first byte on: a header it must see
            # (control frames, fragments, reserved bits, an oversize announcement) or a text
            # frame to be checked as it arrives.
            opcode = first & 0x0F
            if opcode == 1 or opcode == 2:
                self._in_message = not first & 0x80
            elif opcode == 0 and first & 0x80:
                self._in_message = False
            take = min(end, size) - pos
            self._owed = end - pos - take
            self._to_wsproto(bytes(buf[pos : pos + take]), now, events)
            pos += take
        if not self._reading:
            inbound.clear()  # the peer's input is over: the rest is never read
        elif buf is inbound:
            del inbound[:pos]
        elif pos < size:
            inbound += buf[pos:]
        return events

    def _whole_frame(
        self, first: int, payload: bytes, now: float, events: list[WebSocketEvent]
    ) -> None:
        if self._phase is not _Phase.OPEN:
            return  # after our Close, messages are dropped
        if first == _FIN_BINARY:
            events.append(MessageReceived(data=payload))
            return
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            # RFC 6455 8.1: text that is not UTF-8 fails the connection with 1007.
            self._fail(CloseReason.INVALID_FRAME_PAYLOAD_DATA, "invalid UTF-8", now, events)
            return
        events.append(MessageReceived(data=text))

    def _wsproto(self) -> Connection:
        frames = self._frames
        if frames is None:
            extensions: list[Extension] = []
            if self._deflater is not None:
                extensions.append(self._deflater)
            extensions.append(_SizeGuard(self._budget))  # last: it sees inflated bytes
            frames = self._frames = Connection(ConnectionType.SERVER, extensions)
        return frames

    def _fail(self, code: int, reason: str, now: float, events: list[WebSocketEvent]) -> None:
        """Fail the WebSocket Connection (RFC 6455 7.1.7): read nothing more; our Close with
        `code` follows once the application is through what came before the bad frame."""
        events.append(WebSocketEnded(code=code, reason=reason))
        if self._phase is _Phase.OPEN:
            self._end_with(CloseConnection(code=code), now)
        else:
            self._phase = _Phase.DONE  # our Close is already out: nothing left to say
            self._deadline = None

    def _end_with(self, reply: CloseConnection, now: float) -> None:
        self._reply = reply
        self._phase = _Phase.ENDING
        self._deadline = now + self._limits.handshake_timeout

    def conclude(self) -> None:
        """Send the Close the end of the peer's input calls for, and end the session. The
        bridge calls this once the application has read every message before that end (or
        returned); `handshake_timeout` after the end, the deadline calls it anyway."""
        if self._phase is not _Phase.ENDING:
            return
        if self._reply is not None:
            self._emit(self._wsproto().send(self._reply))
            self._reply = None
        self._phase = _Phase.DONE
        self._deadline = None

    def _to_wsproto(self, data: bytes, now: float, events: list[WebSocketEvent]) -> None:
        frames = self._wsproto()
        frames.receive_data(data)
        for event in frames.events():
            if isinstance(event, Message):
                if self._phase is _Phase.OPEN:  # after our Close, messages are dropped
                    self._on_message(event, events)
            elif isinstance(event, Ping):
                if frames.state is ConnectionState.OPEN:
                    self._emit(frames.send(event.response()))
            elif isinstance(event, Pong):
                if event.payload == self._ping_payload:
                    self._ping_payload = None
                    self._schedule_ping(now)
            elif isinstance(event, CloseConnection):
                self._on_close(frames, event, now, events)
                break

    def _on_message(self, event: Message[Any], events: list[WebSocketEvent]) -> None:
        if isinstance(event, TextMessage):
            if not event.message_finished:
                self._text.append(event.data)
                return
            if self._text:
                self._text.append(event.data)
                text = "".join(self._text)
                self._text.clear()
                events.append(MessageReceived(data=text))
            else:
                events.append(MessageReceived(data=event.data))
        elif isinstance(event, BytesMessage):
            if not event.message_finished:
                self._binary.append(bytes(event.data))
                return
            if self._binary:
                self._binary.append(bytes(event.data))
                data = b"".join(self._binary)
                self._binary.clear()
                events.append(MessageReceived(data=data))
            else:
                events.append(MessageReceived(data=bytes(event.data)))

    def _on_close(
        self,
        frames: Connection,
        event: CloseConnection,
        now: float,
        events: list[WebSocketEvent],
    ) -> None:
        state = frames.state
        if state is ConnectionState.REMOTE_CLOSING:
            # RFC 6455 5.5.1: "the endpoint MUST send a Close frame in response", echoing the
            # status code; it "MAY delay sending a Close frame until its current message is
            # sent": the replies to messages that came before the Close go first. Then the
            # server closes the connection (7.1.1).
            events.append(WebSocketEnded(code=event.code, reason=event.reason or ""))
            self._end_with(event.response(), now)
        elif state is ConnectionState.CLOSED:
            # The answer to our Close: the application already knows why it is closing.
            events.append(WebSocketEnded(code=event.code, reason=event.reason or ""))
            self._phase = _Phase.DONE
            self._deadline = None
        else:
            # wsproto reports a frame it could not accept as a CloseConnection with the code
            # to fail with (1002, 1007, 1009...) without changing state.
            self._fail(event.code, event.reason or "", now, events)

    def peer_ended(self) -> list[WebSocketEvent]:
        """The peer stopped sending (EOF, END_STREAM, a reset) with no Close first."""
        if self._phase is _Phase.DONE or self._phase is _Phase.ENDING:
            return []  # over already (after its Close, a peer may well stop sending)
        self._phase = _Phase.DONE
        self._deadline = None
        return [WebSocketEnded(code=ABNORMAL_CLOSURE)]

    # ---- outbound -------------------------------------------------------------------------

    def send_message(self, data: bytes | str) -> None:
        """Queue one message (the whole of it in one frame); dropped once a Close was sent."""
        if not self.can_send:
            return
        if isinstance(data, str):
            opcode = Opcode.TEXT
            payload = data.encode()
        else:
            opcode = Opcode.BINARY
            payload = data
        first = 0x80 | opcode  # FIN
        if self._deflater is not None:
            payload = self._deflater.deflate_message(payload)
            first |= 0x40  # RSV1: compressed (RFC 7692 6)
        length = len(payload)
        if length < 126:
            head = bytes((first, length))
        elif length < 0x10000:
            head = bytes((first, 126)) + length.to_bytes(2, "big")
        else:
            head = bytes((first, 127)) + length.to_bytes(8, "big")
        self._out.append(head)
        self._out.append(payload)
        self._pending_out += length + len(head)

    def _emit(self, data: bytes | bytearray) -> None:
        self._out.append(bytes(data))
        self._pending_out += len(data)

    @property
    def pending_output(self) -> int:
        """Bytes `data_to_send()` would return."""
        return self._pending_out

    def close(self, code: int, reason: str, now: float) -> None:
        """Start the closing handshake (RFC 6455 7.1.2). The peer's answering Close ends the
        session; one that never comes, `handshake_timeout` later."""
        if self._phase is not _Phase.OPEN:
            return
        self._emit(self._wsproto().send(CloseConnection(code=code, reason=reason or None)))
        self._phase = _Phase.CLOSING
        self._deadline = now + self._limits.handshake_timeout

    def data_to_send(self) -> bytes:
        if not self._out:
            return b""
        data = b"".join(self._out)
        self._out.clear()
        self._pending_out = 0
        return data

    @property
    def open(self) -> bool:
        """Accepted, and no Close sent or received yet."""
        return self._phase is _Phase.OPEN

    @property
    def can_send(self) -> bool:
        """Messages can still go out: open, or the peer's input is over and our Close waits."""
        return self._phase is _Phase.OPEN or self._phase is _Phase.ENDING

    @property
    def ending(self) -> bool:
        """The peer's input is over and our Close waits for `conclude()`."""
        return self._phase is _Phase.ENDING

    @property
    def _reading(self) -> bool:
        return self._phase is _Phase.OPEN or self._phase is _Phase.CLOSING

    @property
    def finished(self) -> bool:
        """The WebSocket is over: after writing `data_to_send()`, end the stream."""
        return self._phase is _Phase.DONE

    # ---- time -----------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        return self._deadline

    def handle_deadline(self, now: float) -> list[WebSocketEvent]:
        deadline = self._deadline
        if deadline is None or now < deadline:
            return []
        phase = self._phase
        if phase is _Phase.CONNECTING:
            self._phase = _Phase.DONE
            self._deadline = None
            return [HandshakeTimedOut()]
        if phase is _Phase.ENDING:
            self.conclude()  # the application is slow to read what came before the end
            return []
        if phase is _Phase.CLOSING:
            # Our Close went unanswered: give up on the handshake (7.1.1 lets the server close).
            self._phase = _Phase.DONE
            self._deadline = None
            return [WebSocketEnded(code=ABNORMAL_CLOSURE)]
        if phase is _Phase.OPEN:
            if self._ping_payload is not None:
                # The pong is overdue: the peer (or the path to it) is gone.
                self._emit(
                    self._wsproto().send(
                        CloseConnection(code=INTERNAL_ERROR, reason="ping timeout")
                    )
                )
                self._phase = _Phase.DONE
                self._deadline = None
                return [WebSocketEnded(code=INTERNAL_ERROR, reason="ping timeout")]
            self._pings += 1
            self._ping_payload = struct.pack("!I", self._pings)
            self._emit(self._wsproto().send(Ping(payload=self._ping_payload)))
            timeout = self._limits.ping_timeout
            if timeout is None:
                self._ping_payload = None  # nothing to wait for: just keep pinging
                self._schedule_ping(now)
            else:
                self._deadline = now + timeout
        return []

    def _schedule_ping(self, now: float) -> None:
        interval = self._limits.ping_interval
        self._deadline = None if interval is None else now + interval


def _subprotocols(headers: Headers) -> list[str]:
    """The client's Sec-WebSocket-Protocol offers, in its order of preference (RFC 6455 4.1)."""
    offered: list[str] = []
    for name, value in headers:
        if name == b"sec-websocket-protocol":
            offered.extend(
                token.strip() for token in value.decode("latin-1").split(",") if token.strip()
            )
    return offered
