"""HTTP/2 server core over h2, behind the stream-event interface.

Theory of operation. h2 parses frames, keeps stream states and HPACK tables. This module adds:
- a frame-header scanner in front of h2 (`FrameGuard`) that sees every frame before h2 buffers
  it, so header blocks larger than the advertised limit are refused before they are assembled,
  and control-frame floods (PING, SETTINGS, PRIORITY, empty DATA) are cut off with
  GOAWAY(ENHANCE_YOUR_CALM) from a token bucket;
- rapid-reset defence: streams the client resets while their response is unfinished draw from
  a second bucket (CVE-2023-44487);
- inbound flow control granted only as the application consumes the body (AcknowledgeData), so
  a slow reader cannot make the server buffer more than one window per stream;
- request heads checked by the rule every HTTP version shares (request_head.py) plus the
  pseudo-header structure only HTTP/2 has: a malformed head costs its stream (RST_STREAM
  PROTOCOL_ERROR), a well-formed one the server will not serve becomes RequestRejected and is
  answered on its stream; extended CONNECT (RFC 8441) opens WebSocket streams when enabled;
- outbound scheduling: each stream's body waits in its own queue and is framed as the peer's
  windows allow, lowest RFC 9218 urgency first; within an urgency, non-incremental streams go
  one at a time in stream-id order and incremental ones share round-robin (RFC 9218 10), and a
  stream held by flow control lets the others through; a stream whose data cannot move for
  `send_timeout` is reset;
- one ordered output queue: frames built here (GOAWAY, the drain PING) join h2's bytes in the
  order they were produced, never ahead of them (see `_emit`);
- fault containment: whatever raises while one stream's frame or command is handled resets
  that stream (RST_STREAM INTERNAL_ERROR) and leaves the others alone;
- graceful shutdown in two steps (RFC 9113 6.8): GOAWAY with the maximum stream id and a PING;
  when the PING comes back (or after a second), GOAWAY with the last stream really accepted.
  The GOAWAY frames are written here, not through h2, because h2 refuses to send anything after
  its own GOAWAY and open streams still have responses to finish.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import contextlib
import enum
from collections import deque
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import GoAwayFrame, PingFrame

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
from multicorn.protocol.hpack_cache import CachingDecoder, CachingEncoder
from multicorn.protocol.request_head import (
    CONNECTION_HEADERS,
    MalformedHead,
    check_pseudo_head,
    split_pseudo_head,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

_MAX_STREAM_ID = 2**31 - 1
_GOAWAY_PING = b"mc-drain"
_GOAWAY_PING_WAIT = 1.0  # seconds to wait for the drain PING before the final GOAWAY
_PRIORITY_UPDATE = 0x10  # RFC 9218 frame type
_UPGRADE_HEADERS = frozenset({b"connection", b"upgrade", b"http2-settings"})
# Real header blocks need one or two CONTINUATIONs; dozens of tiny ones are a flood.
_MAX_CONTINUATIONS = 32
# HTTP/1.1 connection-specific fields that HTTP/2 forbids (RFC 9113 8.2.2); dropped from
# responses rather than failing an application written for HTTP/1.1.
_CONNECTION_HEADERS = CONNECTION_HEADERS


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTP2Limits:
    max_concurrent_streams: int = 100
    max_header_list_size: int = 64 * 1024
    max_inbound_frame_size: int = 16 * 1024
    initial_window_size: int = 65535
    connection_window_size: int = 1024 * 1024
    keep_alive_timeout: float = 5.0
    send_timeout: float = 60.0
    # Token buckets: (burst, refill per second).
    control_frame_budget: tuple[float, float] = (200.0, 50.0)
    reset_budget: tuple[float, float] = (200.0, 100.0)
    # RFC 8441: advertise SETTINGS_ENABLE_CONNECT_PROTOCOL and accept extended CONNECT (the
    # WebSocket bootstrap over HTTP/2). Off until a WebSocket bridge sits above this core.
    extended_connect: bool = False


class _Calm(Exception):
    """The peer overspent a budget: GOAWAY(ENHANCE_YOUR_CALM)."""


class _BadPreface(Exception):
    """Not HTTP/2 at all: GOAWAY(PROTOCOL_ERROR) (RFC 9113 3.4)."""


class FrameGuard:
    """Reads frame headers as bytes go by, before h2 parses (and buffers) the frames."""

    __slots__ = (
        "_block",
        "_continuations",
        "_control",
        "_limit",
        "_partial",
        "_preface",
        "_skip",
    )

    def __init__(self, *, header_block_limit: int, control: TokenBucket, preface: bool) -> None:
        self._limit = header_block_limit
        self._control = control
        self._preface = 0 if preface else len(PREFACE)  # preface bytes checked so far
        self._skip = 0  # payload bytes of the current frame still to pass
        self._partial = b""  # an incomplete frame header
        self._block = -1  # bytes in the header block being assembled, -1 when none
        self._continuations = 0

    def feed(self, data: bytes, now: float) -> None:
        pos = 0
        if self._preface < len(PREFACE):
            taken = min(len(PREFACE) - self._preface, len(data))
            if data[:taken] != PREFACE[self._preface : self._preface + taken]:
                raise _BadPreface("the client did not send the HTTP/2 connection preface")
            self._preface += taken
            pos = taken
        end = len(data)
        while pos < end:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
            elif self._partial:
                need = 9 - len(self._partial)
                if end - pos < need:
                    self._partial += data[pos:end]
                    return
                header = self._partial + data[pos : pos + need]
                self._partial = b""
                pos += need
                self._frame(header, 0, now)
            elif end - pos < 9:
                self._partial = bytes(data[pos:end])
                return
            else:
                # The common case, a whole frame header in this read: read it in place.
                self._frame(data, pos, now)
                pos += 9

    def _frame(self, data: bytes, at: int, now: float) -> None:
        length = int.from_bytes(data[at : at + 3], "big")
        kind = data[at + 3]
        flags = data[at + 4]
        self._skip = length
        if kind == 0x1 or kind == 0x9:  # HEADERS, CONTINUATION
            starts = kind == 0x1 or self._block < 0
            self._block = (0 if starts else self._block) + length
            self._continuations = 0 if starts else self._continuations + 1
            if self._block > self._limit:
                raise _Calm("header block larger than the advertised limit")
            if self._continuations > _MAX_CONTINUATIONS:
                raise _Calm("too many CONTINUATION frames in one header block")
            if flags & 0x4:  # END_HEADERS
                self._block = -1
        elif kind in (0x2, 0x6) or (kind == 0x4 and not flags & 0x1):
            # PRIORITY, PING, SETTINGS (not ACK): cheap to send, not free to answer.
            if not self._control.take(now):
                raise _Calm("too many control frames")
        elif kind == 0x0 and length == 0 and not flags & 0x1 and not self._control.take(now):
            raise _Calm("too many empty DATA frames")


class _Phase(enum.Enum):
    OPEN = enum.auto()
    DRAINING = enum.auto()  # first GOAWAY sent, waiting for the PING to come back
    DRAINED = enum.auto()  # final GOAWAY sent, finishing the streams that were accepted
    CLOSED = enum.auto()


@dataclass(slots=True)
class _Stream:
    scheme: bytes
    authority: bytes
    urgency: int = 3  # RFC 9218 defaults
    incremental: bool = False
    request_done: bool = False
    rejected: bool = False  # answered by the connection driver (RequestRejected), body dropped
    tunnel: bool = False  # a WebSocket (extended CONNECT): nothing is read once it is answered
    response_done: bool = False  # END_STREAM queued or sent
    ready: bool = False  # queued in HTTP2Protocol._levels, with output to frame
    out: deque[bytes] = field(default_factory=deque)
    out_size: int = 0
    end_after_out: bool = False
    trailers: Headers | None = None
    blocked_since: float | None = None


# A checked request head: pseudo-header fields, regular fields, Priority field, stream kind.
_Head = tuple[dict[bytes, bytes], Headers, bytes | None, StreamKind]


@dataclass(slots=True)
class _Level:
    """The streams of one urgency with output waiting."""

    sequential: list[int] = field(default_factory=list)  # non-incremental, by stream id
    incremental: deque[int] = field(default_factory=deque)  # in round-robin order


class _ServerSettings(h2.settings.Settings):
    """Our SETTINGS as h2 keeps them, except that h2's own check of the concurrent stream limit
    sees no limit: it makes a HEADERS frame beyond it a connection error (losing every frame
    after it in the same read), where RFC 9113 5.1.2 asks for a stream error. The advertised
    value is unchanged (SETTINGS frames are written from the stored values), and
    HTTP2Protocol._on_request refuses the extra streams itself."""

    @property
    def max_concurrent_streams(self) -> int:
        return 2**31 - 1

    @max_concurrent_streams.setter
    def max_concurrent_streams(self, value: int) -> None:
        self[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = value


class HTTP2Protocol:
    """One HTTP/2 connection, server side. See the module docstring."""

    multiplexed = True

    def __init__(
        self,
        *,
        limits: HTTP2Limits,
        now: float,
        scheme: bytes = b"https",
        expect_preface: bool = True,
        upgrade_settings: bytes | None = None,
    ) -> None:
        self._limits = limits
        self._scheme = scheme
        config = h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            # Responses are checked once, by validate_response_headers, and arrive lower-cased;
            # h2 re-checking and re-normalising every field costs more than the encoding.
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            # Request heads are checked in _on_request, where a bad one costs its stream; h2
            # would make it a connection error, taking every other stream with it.
            validate_inbound_headers=False,
        )
        self._h2 = h2.connection.H2Connection(config=config)
        # Repeated header sets (every response of a route, every request of a client) are
        # coded once per table state instead of field by field; see hpack_cache.py.
        self._h2.encoder = CachingEncoder()
        self._h2.decoder = CachingDecoder(limits.max_header_list_size)
        codes = h2.settings.SettingCodes
        settings = {
            codes.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
            codes.MAX_HEADER_LIST_SIZE: limits.max_header_list_size,
            codes.MAX_FRAME_SIZE: limits.max_inbound_frame_size,
            codes.INITIAL_WINDOW_SIZE: limits.initial_window_size,
        }
        if limits.extended_connect:
            settings[codes.ENABLE_CONNECT_PROTOCOL] = 1  # RFC 8441 3
        self._h2.local_settings = _ServerSettings(client=False, initial_values=settings)
        self._max_streams = limits.max_concurrent_streams
        self._pushed = 0  # pushed (server-initiated) streams in self._streams
        self._h2.max_inbound_frame_size = limits.max_inbound_frame_size
        # Enforced from the first frame, not only once the peer acknowledges our SETTINGS.
        self._h2.decoder.max_header_list_size = limits.max_header_list_size
        if upgrade_settings is not None:
            self._h2.initiate_upgrade_connection(upgrade_settings)
        else:
            self._h2.initiate_connection()
        extra = limits.connection_window_size - 65535
        if extra > 0:
            self._h2.increment_flow_control_window(extra)
        self._control = TokenBucket(limits.control_frame_budget, now)
        self._resets = TokenBucket(limits.reset_budget, now)
        self._guard = FrameGuard(
            header_block_limit=limits.max_header_list_size,
            control=self._control,
            preface=expect_preface,
        )
        self._streams: dict[int, _Stream] = {}
        # Streams with output waiting, by RFC 9218 urgency (0 most urgent); see _flush.
        self._levels = tuple(_Level() for _ in range(8))
        self._waiting = 0  # streams in self._levels
        self._moved_at = now  # when DATA last went out (see handle_deadline)
        self._out: list[bytes] = []  # output in order; see _emit
        self._phase = _Phase.OPEN
        self._last_stream_id = 0
        self._drain_started = 0.0
        self._idle_since: float | None = now
        # The last request head that passed its checks (see _request_head); dropped when the
        # connection goes idle, so an idle connection holds none.
        self._last_head: tuple[tuple[tuple[bytes, bytes], ...], _Head] | None = None

    # ---- inbound --------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> list[Event]:
        if self._phase is _Phase.CLOSED:
            return []
        if not data:
            return self._terminate()
        try:
            self._guard.feed(data, now)
            h2_events = self._h2.receive_data(data)
        except _Calm as exc:
            return self._calm(str(exc))
        except _BadPreface as exc:
            return self._protocol_error(str(exc))
        except h2.exceptions.DenialOfServiceError as exc:
            # HPACK bombs and the like: h2 has queued GOAWAY(ENHANCE_YOUR_CALM).
            return self._terminate(PeerAbuse(f"HTTP/2 abuse: {exc}"))
        except h2.exceptions.ProtocolError as exc:
            if self._h2.state_machine.state is not h2.connection.ConnectionState.CLOSED:
                # h2 raised before it could queue its GOAWAY (a bad frame header, say).
                return self._protocol_error(str(exc))
            # h2 has queued the GOAWAY with the matching error code.
            return self._terminate(RemoteProtocolError(f"HTTP/2 protocol error: {exc}"))
        events: list[Event] = []
        for event in h2_events:
            try:
                final = self._on_event(event, events, now)
            except Exception as exc:  # see _fail: a fault in one stream costs that stream only
                stream_id: int | None = getattr(event, "stream_id", None)
                if not stream_id:
                    final = self._internal_error(exc)
                else:
                    self._fail(stream_id, events)
                    continue
            if final is not None:
                return [*events, *final]
        self._flush(now, events)
        self._check_done(now)
        return events

    def _on_event(
        self, event: h2.events.Event, events: list[Event], now: float
    ) -> list[Event] | None:
        """Handle one of h2's events; the connection's last events when it ends here."""
        if isinstance(event, h2.events.DataReceived):
            self._on_data(event, events)
        elif isinstance(event, h2.events.RequestReceived):
            if self._on_request(event, events, now):
                return self._calm("too many malformed requests")
        elif isinstance(event, h2.events.StreamEnded):
            stream = self._streams.get(event.stream_id)
            # A bodyless request already ended with its RequestReceived.
            if stream is not None and not stream.request_done:
                stream.request_done = True
                if not stream.rejected:
                    events.append(StreamEnded(stream_id=event.stream_id))
                self._stream_output_done(event.stream_id)
        elif isinstance(event, h2.events.TrailersReceived):
            # Request trailers are not passed on (ASGI has no place for them), but RFC 9113
            # 8.1: "Trailers MUST NOT include pseudo-header fields" (a malformed request).
            if any(name[:1] == b":" for name, _ in event.headers):
                self._fail(event.stream_id, events, h2.errors.ErrorCodes.PROTOCOL_ERROR)
        elif isinstance(event, h2.events.StreamReset):
            if self._on_reset(event.stream_id, events, now):
                return self._calm("too many streams reset (rapid reset)")
        elif isinstance(event, h2.events.PingAckReceived):
            if event.ping_data == _GOAWAY_PING and self._phase is _Phase.DRAINING:
                self._final_goaway()
        elif isinstance(event, h2.events.UnknownFrameReceived):
            self._on_unknown_frame(event.frame)
        elif isinstance(event, h2.events.ConnectionTerminated):
            return self._terminate()
        return None

    def _on_request(
        self, event: h2.events.RequestReceived, events: list[Event], now: float
    ) -> bool:
        """Admit, reject or reset a new stream; True when the peer overspent its reset budget."""
        stream_id = event.stream_id
        if self._phase is _Phase.DRAINED and stream_id > self._last_stream_id:
            self._h2.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return False
        self._last_stream_id = max(self._last_stream_id, stream_id)
        if len(self._streams) - self._pushed >= self._max_streams:
            # RFC 9113 5.1.2: "An endpoint that receives a HEADERS frame that causes its
            # advertised concurrent stream limit to be exceeded MUST treat this as a stream
            # error (Section 5.4.2) of type PROTOCOL_ERROR or REFUSED_STREAM." REFUSED_STREAM
            # tells the client it may retry. h2 would end the whole connection (see
            # _ServerSettings); each refusal draws on the reset budget, as a flood of them
            # costs the client no more than a flood of RST_STREAMs.
            self._h2.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return not self._resets.take(now)
        ended = event.stream_ended is not None
        try:
            pseudo, headers, priority, kind = self._request_head(event.headers)
            authority = pseudo.get(b":authority")
            scheme = pseudo.get(b":scheme")
        except MalformedHead:
            # RFC 9113 8.1.1: "Malformed requests or responses that are detected MUST be
            # treated as a stream error (Section 5.4.2) of type PROTOCOL_ERROR." The
            # application never hears of it. Each one costs a reset from the rapid-reset budget:
            # a stream of malformed heads is as cheap to send as a stream of RST_STREAMs.
            self._h2.reset_stream(stream_id, h2.errors.ErrorCodes.PROTOCOL_ERROR)
            return not self._resets.take(now)
        except RemoteProtocolError as exc:
            # Well-formed, but not a request this server serves: the connection driver answers
            # it (SendResponse, SendData) on this stream, so the stream stays; a body the
            # client still sends is dropped and its window handed straight back.
            self._streams[stream_id] = _Stream(
                scheme=self._scheme, authority=b"", request_done=ended, rejected=True
            )
            self._idle_since = None
            events.append(RequestRejected(stream_id=stream_id, error=exc))
            return False
        urgency, incremental = (3, False) if priority is None else parse_priority(priority)
        if kind is not StreamKind.REQUEST:
            # A tunnel (WebSocket) carries messages to be used as they arrive, the very meaning
            # of incremental (RFC 9218 4.2); served one at a time, it would wait for every
            # earlier response at its urgency to finish, or hold up every later one forever.
            incremental = True
        self._streams[stream_id] = _Stream(
            scheme=self._scheme if scheme is None else scheme,
            authority=authority or b"",
            urgency=urgency,
            incremental=incremental,
            request_done=ended,
            tunnel=kind is not StreamKind.REQUEST,
        )
        self._idle_since = None
        # The head passed: `:method` is a token, and `:path` is set (only a plain CONNECT
        # lacks one, and that is always rejected).
        events.append(
            RequestReceived(
                stream_id=stream_id,
                method=pseudo[b":method"],
                target=pseudo[b":path"],
                http_version="2",
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
        return False

    def _request_head(self, raw: Headers) -> _Head:
        """The pseudo-header fields, regular fields, Priority field and stream kind of a request
        head, checked by the pseudo-header structure HTTP/2 shares with HTTP/3, then by the
        rules every version shares (request_head.py); raises MalformedHead or
        RemoteProtocolError as they do.

        h2's own header validation is off: it would make each of these a connection error,
        where RFC 9113 8.1.1 asks for a stream error.

        The checks are a pure function of the fields, and clients repeat the same head (the
        HPACK decoder hands back the very same field objects then): the last head that passed
        is remembered, so a repeat costs one comparison, and the caller gets its own copy of
        the field list (the pseudo-header dict is shared: it is only read). Heads that fail are
        checked again each time.
        """
        key = tuple(raw)
        last = self._last_head
        if last is not None and last[0] == key:
            pseudo, headers, priority, kind = last[1]
            return pseudo, list(headers), priority, kind
        pseudo, headers, priority, hosts = split_pseudo_head(raw)
        kind = check_pseudo_head(
            pseudo, headers, hosts, extended_connect=self._limits.extended_connect
        )
        self._last_head = (key, (pseudo, headers, priority, kind))
        return pseudo, list(headers), priority, kind

    def _on_data(self, event: h2.events.DataReceived, events: list[Event]) -> None:
        stream_id = event.stream_id
        padding = event.flow_controlled_length - len(event.data)
        stream = self._streams.get(stream_id)
        if stream is None or stream.rejected:
            # No application reads this body (it has finished with the stream, or the request
            # was rejected before it reached one): give the window straight back.
            self._ack(stream_id, event.flow_controlled_length)
            return
        if padding:
            self._ack(stream_id, padding)
        if event.data:
            events.append(DataReceived(stream_id=stream_id, data=event.data))

    def _on_reset(self, stream_id: int, events: list[Event], now: float) -> bool:
        """Returns True when the peer has reset too many live streams."""
        stream = self._drop(stream_id)
        if stream is None:
            return False
        events.append(StreamReset(stream_id=stream_id))
        return not stream.response_done and not self._resets.take(now)

    def _on_unknown_frame(self, frame: object) -> None:
        # RFC 9218 7.1 PRIORITY_UPDATE: 4-byte prioritized stream id, then a Priority field.
        if getattr(frame, "type", None) != _PRIORITY_UPDATE:
            return
        body: bytes = getattr(frame, "body", b"")
        if len(body) < 4:
            return
        target = int.from_bytes(body[:4], "big") & _MAX_STREAM_ID
        stream = self._streams.get(target)
        if stream is not None:
            # A stream waiting to send moves to its new place in the queues.
            ready = stream.ready
            self._unready(target, stream)
            stream.urgency, stream.incremental = parse_priority(body[4:])
            if ready:
                self._mark_ready(target, stream)

    # ---- outbound -------------------------------------------------------------------------

    def send(self, command: Command, now: float) -> list[Event]:
        if self._phase is _Phase.CLOSED:
            return []
        events: list[Event] = []
        if isinstance(command, SendData):
            stream = self._streams.get(command.stream_id)
            if stream is None or stream.response_done:
                return events
            if not self._waiting and self._send_now(command, stream, now, events):
                self._check_done(now)
                return events
            if command.data:
                stream.out.append(command.data)
                stream.out_size += len(command.data)
            if command.end_stream:
                stream.response_done = True
                stream.end_after_out = True
            if command.data or command.end_stream:
                self._mark_ready(command.stream_id, stream)
                self._flush(now, events)
            self._check_done(now)
            return events
        if isinstance(command, AcknowledgeData):
            # Even for a finished stream: the connection window still needs the bytes back.
            self._ack(command.stream_id, command.amount)
            return events
        if isinstance(command, CloseConnection):
            self._start_drain(now)
            self._check_done(now)
            return events
        stream = self._streams.get(command.stream_id)
        if stream is None:
            return events
        try:
            if isinstance(command, SendResponse):
                validate_response_headers(command.headers)
                headers = [(b":status", str(command.status).encode())]
                headers.extend(h for h in command.headers if h[0] not in _CONNECTION_HEADERS)
                if command.end_stream:
                    stream.response_done = True
                self._h2.send_headers(command.stream_id, headers, end_stream=command.end_stream)
                if command.end_stream:
                    self._stream_output_done(command.stream_id)
            elif isinstance(command, SendInformational):
                validate_response_headers(command.headers)
                headers = [(b":status", str(command.status).encode()), *command.headers]
                self._h2.send_headers(command.stream_id, headers)
            elif isinstance(command, SendTrailers):
                validate_response_headers(command.headers)
                stream.response_done = True
                stream.trailers = [h for h in command.headers if h[0] not in _CONNECTION_HEADERS]
                stream.end_after_out = True
                self._mark_ready(command.stream_id, stream)
                self._flush(now, events)
            elif isinstance(command, PushPromise):
                validate_response_headers(command.headers)
                return self._push(command, stream)
            elif isinstance(command, ResetStream):
                self._drop(command.stream_id)
                self._h2.reset_stream(command.stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
        except LocalProtocolError:
            raise  # the application asked for something invalid: its layer answers 500
        except (h2.exceptions.StreamClosedError, h2.exceptions.StreamIDTooLowError):
            # The peer reset the stream in the meantime; its StreamReset is on the way.
            self._drop(command.stream_id)
        except h2.exceptions.ProtocolError as exc:
            if isinstance(command, (SendInformational, PushPromise)):
                return events  # optional extras that no longer fit the stream's state
            raise LocalProtocolError(f"HTTP/2 refused {type(command).__name__}: {exc}") from None
        except Exception:  # a fault in one stream costs that stream only (see _fail)
            self._fail(command.stream_id, events)
        self._check_done(now)
        return events

    def _send_now(
        self, command: SendData, stream: _Stream, now: float, events: list[Event]
    ) -> bool:
        """The common case of SendData, framed at once: no stream has output waiting (so the
        scheduler would serve this one alone, first) and the data fits one frame and the
        windows. Does what _flush would do with it, without queueing it; False, having done
        nothing, when the data must go through the queues."""
        stream_id = command.stream_id
        data = command.data
        h2conn = self._h2
        try:
            if data:
                size = len(data)
                if size > h2conn.max_outbound_frame_size:
                    return False
                if size > h2conn.local_flow_control_window(stream_id):
                    return False
                if command.end_stream:
                    stream.response_done = True
                h2conn.send_data(stream_id, data, end_stream=command.end_stream)
                stream.blocked_since = None
                self._moved_at = now
            elif command.end_stream:
                stream.response_done = True
                h2conn.end_stream(stream_id)
            else:
                return True  # nothing to send
        except Exception:  # a fault in one stream costs that stream only (see _fail)
            self._fail(stream_id, events)
            return True
        self._stream_output_done(stream_id)
        return True

    def _push(self, command: PushPromise, parent: _Stream) -> list[Event]:
        remote = self._h2.remote_settings
        if (
            not remote.enable_push
            or self._phase is not _Phase.OPEN
            or command.stream_id % 2 == 0  # no push from a pushed stream
            or self._h2.open_outbound_streams >= remote.max_concurrent_streams
        ):
            return []
        promised = self._h2.get_next_available_stream_id()
        request = [
            (b":method", b"GET"),
            (b":path", command.path),
            (b":scheme", parent.scheme),
            (b":authority", parent.authority),
            *command.headers,
        ]
        self._h2.push_stream(command.stream_id, promised, request)
        self._pushed += 1
        self._streams[promised] = _Stream(
            scheme=parent.scheme, authority=parent.authority, request_done=True
        )
        headers = [(b"host", parent.authority), *command.headers]
        return [
            RequestReceived(
                stream_id=promised,
                method=b"GET",
                target=command.path,
                http_version="2",
                headers=headers,
            ),
            StreamEnded(stream_id=promised),
        ]

    def upgraded_request(self, request: RequestReceived, body: bytes) -> list[Event]:
        """Stream 1 after an `Upgrade: h2c`: the HTTP/1.1 request that asked for the switch.

        Its body was read in full before the switch (RFC 7540 3.2), so the stream is already
        half-closed by the client.
        """
        authority = next((v for n, v in request.headers if n == b"host"), b"")
        self._streams[1] = _Stream(scheme=self._scheme, authority=authority, request_done=True)
        self._last_stream_id = 1
        self._idle_since = None
        # The hop-by-hop fields of the upgrade belong to the HTTP/1.1 exchange, not stream 1.
        headers = [h for h in request.headers if h[0] not in _UPGRADE_HEADERS]
        events: list[Event] = [
            RequestReceived(
                stream_id=1,
                method=request.method,
                target=request.target,
                http_version="2",
                headers=headers,
            )
        ]
        if body:
            # Already received and buffered: nothing of the HTTP/2 window was used for it.
            events.append(DataReceived(stream_id=1, data=body))
        events.append(StreamEnded(stream_id=1))
        return events

    def _mark_ready(self, stream_id: int, stream: _Stream) -> None:
        if stream.ready:
            return
        stream.ready = True
        self._waiting += 1
        level = self._levels[stream.urgency]
        if stream.incremental:
            level.incremental.append(stream_id)
        else:
            bisect.insort(level.sequential, stream_id)  # nearly always an append

    def _unready(self, stream_id: int, stream: _Stream) -> None:
        if not stream.ready:
            return
        stream.ready = False
        self._waiting -= 1
        level = self._levels[stream.urgency]
        if stream.incremental:
            level.incremental.remove(stream_id)
        else:
            level.sequential.remove(stream_id)

    def _drop(self, stream_id: int) -> _Stream | None:
        """Forget a stream and whatever output it still had queued."""
        stream = self._streams.pop(stream_id, None)
        if stream is not None:
            self._unready(stream_id, stream)
            if not stream_id & 1:
                self._pushed -= 1
        return stream

    def _fail(
        self,
        stream_id: int,
        events: list[Event],
        code: h2.errors.ErrorCodes = h2.errors.ErrorCodes.INTERNAL_ERROR,
    ) -> None:
        """Something raised while one stream was handled: that stream is reset, nothing else.

        The connection's other streams, and h2's connection state, are not touched: a fault
        tied to one stream costs that stream (RST_STREAM INTERNAL_ERROR), never the connection.
        """
        known = self._drop(stream_id) is not None
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self._h2.reset_stream(stream_id, code)
        if known:
            events.append(StreamReset(stream_id=stream_id))

    def _flush(self, now: float, events: list[Event]) -> None:
        """Frame queued bodies as windows allow.

        Each round serves the most urgent level that can make progress, then starts again from
        the top; a level blocked by flow control lets the next one through rather than stalling
        the connection. Within a level (RFC 9218 10): "Non-incremental responses of the same
        urgency SHOULD be served by prioritizing bandwidth allocation in ascending order of the
        stream ID" and "Incremental responses of the same urgency SHOULD be served by sharing
        bandwidth among them": each round gives one frame to the lowest-id non-incremental
        stream that can move, and one to each incremental stream (round-robin).
        """
        while self._waiting:
            for level in self._levels:
                if (level.sequential or level.incremental) and self._serve(level, now, events):
                    break
            else:
                return  # nothing could move: every stream waits for a window

    def _serve(self, level: _Level, now: float, events: list[Event]) -> bool:
        served = False
        sequential = level.sequential
        # Non-incremental streams one at a time, each to completion; while the first is held
        # by its own window, the next one may use the connection's.
        for index, stream_id in enumerate(sequential):
            stream = self._streams[stream_id]
            if self._send_one(stream_id, stream, now, events):
                if not stream.ready:
                    del sequential[index]
                served = True
                break
        incremental = level.incremental
        held: list[int] = []
        for _ in range(len(incremental)):
            stream_id = incremental.popleft()
            stream = self._streams[stream_id]
            if not self._send_one(stream_id, stream, now, events):
                held.append(stream_id)  # waits for a window, keeping its place in the line
            else:
                served = True
                if stream.ready:
                    incremental.append(stream_id)  # to the back of the line: round-robin
        if held:
            incremental.extendleft(reversed(held))
        return served

    def _send_one(self, stream_id: int, stream: _Stream, now: float, events: list[Event]) -> bool:
        """One frame of one stream's output; True if anything was framed or settled.

        The caller keeps the level's queues: a stream that has nothing left to frame comes out
        of here with `ready` cleared.
        """
        h2conn = self._h2
        try:
            if stream.out:
                window = h2conn.local_flow_control_window(stream_id)
                if window <= 0:
                    if stream.blocked_since is None:
                        stream.blocked_since = now
                    return False
                stream.blocked_since = None
                chunk = self._take(stream, min(window, h2conn.max_outbound_frame_size))
                last = not stream.out and stream.end_after_out and stream.trailers is None
                h2conn.send_data(stream_id, chunk, end_stream=last)
                self._moved_at = now
                if stream.out or (stream.end_after_out and not last):
                    return True  # more to frame: still ready
            elif stream.end_after_out:
                if stream.trailers is not None:
                    h2conn.send_headers(stream_id, stream.trailers, end_stream=True)
                else:
                    h2conn.end_stream(stream_id)
        except Exception:  # a fault in one stream costs that stream only (see _fail)
            stream.ready = False  # the caller takes it out of the level's queue
            self._waiting -= 1
            self._fail(stream_id, events)
            return True
        stream.ready = False
        self._waiting -= 1
        self._stream_output_done(stream_id)
        return True

    @staticmethod
    def _take(stream: _Stream, size: int) -> bytes:
        first = stream.out[0]
        if len(first) <= size:
            stream.out.popleft()
            stream.out_size -= len(first)
            return first
        stream.out[0] = first[size:]
        stream.out_size -= size
        return first[:size]

    def _stream_output_done(self, stream_id: int) -> None:
        """Forget a stream once both directions are finished and nothing is left to frame."""
        stream = self._streams.get(stream_id)
        if stream is None or not stream.response_done or stream.ready:
            return
        if stream.request_done:
            del self._streams[stream_id]
            if not stream_id & 1:
                self._pushed -= 1
        else:
            # Nobody reads the rest of the request once its response is complete: ASGI answers
            # receive() after it with http.disconnect, a rejected request's body is dropped, a
            # WebSocket the server has ended is over (RFC 8441 5 maps a TCP close to
            # END_STREAM; RFC 6455 7.1.1 has the server close first and not wait for the
            # client's). A client that never ends its side must not hold the stream, its
            # share of the concurrency limit, nor a draining connection open. RFC 9113 8.1:
            # "a server MAY request that the client abort transmission of a request without
            # error by sending a RST_STREAM with an error code of NO_ERROR after sending a
            # complete response". (HTTP/3 does the same with STOP_SENDING.)
            del self._streams[stream_id]
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self._h2.reset_stream(stream_id, h2.errors.ErrorCodes.NO_ERROR)

    def _ack(self, stream_id: int, amount: int) -> None:
        if amount <= 0:
            return
        # h2 returns the connection window even when the stream is already closed; a stream id
        # that never existed has nothing to give back.
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self._h2.acknowledge_received_data(amount, stream_id)

    def pending_send(self, stream_id: int) -> int:
        stream = self._streams.get(stream_id)
        return 0 if stream is None else stream.out_size

    def data_to_send(self) -> bytes:
        pending = self._h2.data_to_send()
        if not self._out:
            return pending  # the common case: everything came from h2, already in order
        if pending:
            self._out.append(pending)
        data = b"".join(self._out)
        self._out.clear()
        return data

    def _emit(self, frames: bytes) -> None:
        """Queue frames built here (GOAWAY, the drain PING) behind everything h2 produced so far.

        One FIFO for the connection: h2's bytes are moved into it before each frame of ours, so
        the output leaves in the order it was produced. Reordering would put DATA before its
        HEADERS, or a header block before one encoded earlier (HPACK state is shared, RFC 7541
        2.3.2).
        """
        pending = self._h2.data_to_send()
        if pending:
            self._out.append(pending)
        self._out.append(frames)

    # ---- connection lifetime --------------------------------------------------------------

    def _start_drain(self, now: float) -> None:
        if self._phase is not _Phase.OPEN:
            return
        self._emit(_goaway(_MAX_STREAM_ID, 0) + PingFrame(0, _GOAWAY_PING).serialize())
        self._phase = _Phase.DRAINING
        self._drain_started = now

    def _final_goaway(self) -> None:
        self._emit(_goaway(self._last_stream_id, 0))
        self._phase = _Phase.DRAINED

    def _check_done(self, now: float) -> None:
        """Close once draining is complete, or start the idle clock when no stream is left."""
        if self._phase is _Phase.CLOSED:
            return
        if self._streams:
            self._idle_since = None
            return
        if self._phase is _Phase.DRAINED:
            self._phase = _Phase.CLOSED
        elif self._idle_since is None:
            self._idle_since = now
            self._last_head = None

    def _protocol_error(self, reason: str) -> list[Event]:
        self._emit(_goaway(self._last_stream_id, h2.errors.ErrorCodes.PROTOCOL_ERROR))
        return self._terminate(RemoteProtocolError(f"HTTP/2 protocol error: {reason}"))

    def _calm(self, reason: str) -> list[Event]:
        self._emit(_goaway(self._last_stream_id, h2.errors.ErrorCodes.ENHANCE_YOUR_CALM))
        return self._terminate(PeerAbuse(reason))

    def _internal_error(self, exc: Exception) -> list[Event]:
        # A fault outside any stream: nothing narrower than the connection to give up.
        self._emit(_goaway(self._last_stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR))
        return self._terminate(LocalProtocolError(f"HTTP/2 internal error: {exc!r}"))

    def _terminate(self, error: ProtocolError | None = None) -> list[Event]:
        events: list[Event] = [StreamReset(stream_id=sid) for sid in self._streams]
        self._streams.clear()
        self._pushed = 0
        for level in self._levels:
            level.sequential.clear()
            level.incremental.clear()
        self._waiting = 0
        self._phase = _Phase.CLOSED
        events.append(ConnectionClosed(error=error))
        return events

    def next_deadline(self) -> float | None:
        if self._phase is _Phase.CLOSED:
            return None
        deadlines = []
        if self._phase is _Phase.DRAINING:
            deadlines.append(self._drain_started + _GOAWAY_PING_WAIT)
        if self._idle_since is not None:
            deadlines.append(self._idle_since + self._limits.keep_alive_timeout)
        blocked = [s.blocked_since for s in self._streams.values() if s.blocked_since is not None]
        if blocked:
            deadlines.append(min(blocked) + self._limits.send_timeout)
        return min(deadlines) if deadlines else None

    def handle_deadline(self, now: float) -> list[Event]:
        if self._phase is _Phase.CLOSED:
            return []
        events: list[Event] = []
        if self._phase is _Phase.DRAINING and now >= self._drain_started + _GOAWAY_PING_WAIT:
            self._final_goaway()
        timeout = self._limits.send_timeout
        for stream_id, stream in list(self._streams.items()):
            if stream.blocked_since is None or now < stream.blocked_since + timeout:
                continue
            if now < self._moved_at + timeout and self._stream_window(stream_id) > 0:
                # Its own window is open and other streams' data moves: it only waits its turn
                # (behind more urgent or earlier streams, or for its share of the connection
                # window). The peer is reading, so its clock restarts.
                stream.blocked_since = self._moved_at
                continue
            # The peer has not opened its window for too long: give up on this stream.
            self._drop(stream_id)
            self._h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
            events.append(StreamReset(stream_id=stream_id))
        if (
            self._idle_since is not None
            and not self._streams
            and now >= self._idle_since + self._limits.keep_alive_timeout
        ):
            self._emit(_goaway(self._last_stream_id, 0))
            self._phase = _Phase.CLOSED
            events.append(ConnectionClosed())
            return events
        self._check_done(now)
        return events

    def _stream_window(self, stream_id: int) -> int:
        """The peer's window for this stream alone, without the connection's."""
        stream = self._h2.streams.get(stream_id)
        return 0 if stream is None else stream.outbound_flow_control_window

    @property
    def wants_read(self) -> bool:
        # Inbound flow control already bounds what a peer may send.
        return self._phase is not _Phase.CLOSED

    @property
    def closed(self) -> bool:
        return self._phase is _Phase.CLOSED


def _goaway(last_stream_id: int, error_code: int) -> bytes:
    frame = GoAwayFrame(0)
    frame.last_stream_id = last_stream_id
    frame.error_code = error_code
    data: bytes = frame.serialize()
    return data


def valid_upgrade_settings(value: bytes) -> bool:
    """Is this HTTP2-Settings value (RFC 7540 3.2.1: base64url SETTINGS payload) acceptable?"""
    try:
        payload = base64.urlsafe_b64decode(value.strip() + b"=" * (-len(value.strip()) % 4))
    except (binascii.Error, ValueError):
        return False
    if len(payload) % 6:
        return False
    for offset in range(0, len(payload), 6):
        code = int.from_bytes(payload[offset : offset + 2], "big")
        number = int.from_bytes(payload[offset + 2 : offset + 6], "big")
        if (
            (code == 0x2 and number > 1)
            or (code == 0x4 and number > 2**31 - 1)
            or (code == 0x5 and not 2**14 <= number <= 2**24 - 1)
        ):
            return False
    return True


def parse_priority(value: bytes) -> tuple[int, bool]:
    """RFC 9218 Priority field: `u=N` (0..7, default 3) and `i` (incremental), leniently."""
    urgency, incremental = 3, False
    for item in value.split(b","):
        key, _, param = item.strip().partition(b"=")
        key = key.strip()
        if key == b"u" and param.strip().isdigit():
            number = int(param.strip())
            if 0 <= number <= 7:
                urgency = number
        elif key == b"i":
            incremental = param.strip() in (b"", b"?1")
    return urgency, incremental
