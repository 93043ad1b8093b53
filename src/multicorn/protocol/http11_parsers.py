"""Request parsing engines for the HTTP/1.1 core: h11 (pure Python) and httptools (llhttp).

Both turn bytes into the same small operations, appended to `ops` in wire order:
- `HeadOp`: a request line and header section (names lower-cased),
- `DataOp`: a piece of its body,
- `END` (the one `EndOp`): the body is complete,
- `UpgradeOp`: the parser stopped after a request that asked to switch protocols; `leftover` is
  every byte after it, including what is fed while the operation waits its turn (the parser
  parses nothing more until then). `resume(leftover)` carries on parsing HTTP/1.1 if the switch
  is declined; otherwise those bytes belong to whatever the connection becomes.
- `ErrorOp`: appended by the protocol when `feed()` raised, so that it is handled in its turn,
  after the requests that parsed fine before it.

Each engine parses everything it is given, pipelined requests included; holding those back until
their turn is the protocol's job (http11.py), as are all strictness rules both engines share.

Strictness of the wire syntax. llhttp (in its default, strict mode) refuses bare LF and bare CR,
obs-fold, whitespace before a colon and malformed chunk lines; h11 accepts all of them. So the
h11 engine runs on `_StrictConnection`, which swaps two of h11's readers: the request head is
checked against `STRICT_HEAD` (the RFC 9112 grammar, one regex per head) before h11 parses it,
and chunked bodies are read by `_StrictChunkedReader`, which knows RFC 9112 7.1 exactly. Both
engines then agree on every case of tests/corpus/. llhttp skips extra spaces between the parts of
the request line, and httptools reports no offsets; `HttptoolsParser` finds each request line in
the bytes it was fed itself (see its notes) and checks it.

The ops are small slotted classes rather than NamedTuples or dataclasses: they are created for
every request on the hot path, and a plain `__init__` with `__slots__` is the cheapest object
Python builds. The protocol tells them apart with `type(op) is ...`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Final, NoReturn

import h11
from h11._readers import ChunkedReader, maybe_read_from_IDLE_client

if TYPE_CHECKING:
    from collections.abc import Callable

    from h11._receivebuffer import ReceiveBuffer

from multicorn.protocol.errors import LocalProtocolError, RemoteProtocolError
from multicorn.protocol.headers import TOKEN
from multicorn.protocol.request_head import KNOWN_METHODS

if TYPE_CHECKING:
    from multicorn.protocol.events import Headers

_TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
# RFC 9112 2.2, 3 and 5: the whole request head.
#   request-line = method SP request-target SP HTTP-version CRLF   (one SP each: 3 "SP")
#   field-line   = field-name ":" OWS field-value OWS                (no whitespace before ":")
# and "CRLF" everywhere: "a recipient MAY recognize a single LF as a line terminator" (2.2) is
# not taken, since llhttp does not and a front proxy that disagrees is a smuggling vector; bare
# CR "MUST" be rejected or replaced (2.2) and obs-fold is refused (5.2: a server "MUST either
# reject the message by sending a 400 (Bad Request)" or replace it). Field values: no CTL but
# HTAB (RFC 9110 5.5); obs-text passes (see request_head.py). The target only has to be visible
# characters here: request_head.py checks its form. Version: the ones llhttp parses.
STRICT_HEAD: Final = re.compile(
    _TCHAR + rb"+ [\x21-\x7e\x80-\xff]+ HTTP/(?:1\.[01]|2\.0)\r\n"
    rb"(?:" + _TCHAR + rb"+:[^\x00-\x08\x0a-\x1f\x7f]*\r\n)*\r\n"
).fullmatch
# The end of a head as h11 finds it (h11._receivebuffer.blank_line_regex), so that what is
# checked is exactly what h11 goes on to parse.
_H11_HEAD_END = re.compile(rb"\n\r?\n").search
# RFC 9112 7.1: chunk = chunk-size [ chunk-ext ] CRLF; chunk-ext = *( BWS ";" BWS ext-name
# [ BWS "=" BWS ext-val ] ), ext-val = token / quoted-string. BWS is refused, as llhttp does
# ("a sender MUST NOT generate" it; being stricter than a proxy in front never smuggles).
_QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
_CHUNK_LINE: Final = re.compile(
    rb"([0-9A-Fa-f]+)(?:;" + _TCHAR + rb"+(?:=(?:" + _TCHAR + rb"+|" + _QUOTED + rb"))?)*\r\n"
).fullmatch
# Trailer section (RFC 9112 7.1.2): field lines as in a head, then CRLF.
_TRAILERS: Final = re.compile(
    rb"(?:" + _TCHAR + rb"+:[^\x00-\x08\x0a-\x1f\x7f]*\r\n)*\r\n"
).fullmatch
# What an unfinished line may hold: no LF (it would end the line), CR only last.
_OPEN_LINE = re.compile(rb"[^\r\n]*\r?").fullmatch
_MAX_CHUNK_LINE = 4096  # longer chunk lines (extensions) are refused rather than buffered
_MAX_CHUNK_SIZE = 2**63 - 1  # llhttp refuses sizes that overflow 64 bits; this is below both


# The framing fields of a raw head, which h11 would normalise before anyone sees them (it
# merges "1, 1" and repeated equal Content-Lengths into one, refuses codings with its own 501).
_FRAMING_LINE = re.compile(
    rb"\r\n(content-length|transfer-encoding):[ \t]*([^\r]*)(?=\r\n)", re.IGNORECASE
).finditer


def refuse_transfer_coding(value: bytes, had_chunked: bool) -> NoReturn:
    """Raise the verdict for a Transfer-Encoding other than one final `chunked`."""
    codings = [coding.strip().lower() for coding in value.split(b",")]
    # RFC 9112 6.3: "If a Transfer-Encoding header field is present in a request and the
    # chunked transfer coding is not the final encoding, the message body length cannot be
    # determined reliably; the server MUST respond with the 400 (Bad Request) status code and
    # then close the connection." 6.1: chunked is never applied twice. An empty element or one
    # that is not a token is a syntax error (RFC 9110 5.6.1, 10.1.4).
    if had_chunked or b"chunked" in codings[:-1] or not all(map(TOKEN.fullmatch, codings)):
        raise RemoteProtocolError("Transfer-Encoding with chunked not final, or malformed")
    # RFC 9112 6.1: "A server that receives a request message with a transfer coding it does
    # not understand SHOULD respond with 501 (Not Implemented)."
    raise RemoteProtocolError("only Transfer-Encoding: chunked is supported", error_status_hint=501)


def _check_raw_framing(head: bytearray) -> None:
    """Content-Length and Transfer-Encoding as they came, with the verdicts http11.py gives
    the heads llhttp parses (where the same rules are written out with their RFC text)."""
    has_length = has_chunked = False
    for line in _FRAMING_LINE(head):
        value = bytes(line[2])
        if value[-1:] in (b" ", b"\t"):
            # llhttp refuses trailing whitespace after these two values (RFC 9112 5 allows OWS
            # there): refusing it on both engines keeps one verdict, and no client sends it.
            raise RemoteProtocolError("whitespace after a Content-Length or Transfer-Encoding")
        if len(line[1]) == 14:  # content-length
            if has_length or not value.isdigit() or len(value) > 18:
                raise RemoteProtocolError("invalid or repeated Content-Length")
            has_length = True
        elif has_chunked or value.lower() != b"chunked":
            refuse_transfer_coding(value, has_chunked)
        else:
            has_chunked = True


# How much of an unfinished head is looked at for its method: more than any method is long.
_METHOD_WINDOW = 64
_METHOD_CHARS = re.compile(_TCHAR + rb"*").match


def _token_length(start: bytes) -> int:
    """How many bytes at the start of `start` are token characters."""
    match = _METHOD_CHARS(start)
    return 0 if match is None else match.end()


def method_verdict(start: bytes) -> RemoteProtocolError | None:
    """The verdict on a request line from its first bytes alone, so both engines refuse a bad
    method as soon as its end is in (llhttp fails on its first unknown byte). None while only
    token characters have come, and for a method this server passes on."""
    end = _token_length(start)
    if end == len(start):
        if end >= _METHOD_WINDOW:
            return RemoteProtocolError("malformed request line: no method is that long")
        return None
    method = start[:end]
    if start[end] != 0x20 or not method:
        return RemoteProtocolError("malformed request line: the method is not a token")
    if method in KNOWN_METHODS:
        return None
    # RFC 9110 9.1 (see request_head.KNOWN_METHODS).
    return RemoteProtocolError(f"method {method[:32]!r} is not implemented", error_status_hint=501)


def _strict_head_reader(buf: ReceiveBuffer) -> h11.Request | None:
    """h11's request-head reader, behind the RFC 9112 grammar check."""
    data = buf._data
    # RFC 9112 2.2: "a server that is expecting to receive and parse a request-line SHOULD
    # ignore at least one empty line (CRLF) received prior to the request-line". llhttp skips
    # any run of CR and LF there: so do we (those bytes are part of no head).
    if data and data[0] in (0x0D, 0x0A):
        buf._extract(len(data) - len(data.lstrip(b"\r\n")))  # (resets h11's search marks)
    error = method_verdict(bytes(data[:_METHOD_WINDOW]))
    if error is not None:
        raise h11.RemoteProtocolError(str(error), error.error_status_hint)
    end = _H11_HEAD_END(data)
    if end is not None:
        if STRICT_HEAD(data, 0, end.end()) is None:
            raise h11.RemoteProtocolError("malformed request head (RFC 9112 2-5)")
        _check_raw_framing(data[: end.end()])
    request: h11.Request | None = maybe_read_from_IDLE_client(buf)
    return request


class _StrictChunkedReader:
    """A chunked body (RFC 9112 7.1), read strictly; it replaces h11's ChunkedReader, which
    takes anything after ";" as an extension (bare CR included) and OWS after the size. It
    deletes from h11's buffer directly: h11's line-search marks only serve the head reader,
    which runs on a fresh buffer once the body is over (H11Parser._fresh)."""

    __slots__ = ("_crlf", "_left", "_trailer")

    def __init__(self) -> None:
        self._left = 0  # bytes of the current chunk still to come
        self._crlf = False  # the CRLF after a chunk's data is due
        self._trailer = False  # the last chunk was read: the trailer section is due

    def __call__(self, buf: ReceiveBuffer) -> h11.Data | h11.EndOfMessage | None:
        data = buf._data
        if self._trailer:
            return self._read_trailer(buf)
        if self._crlf:
            if data[:2] != b"\r\n":
                if len(data) < 2 and data[:1] != b"\n":
                    return None
                raise h11.RemoteProtocolError("chunk data not followed by CRLF")
            del data[:2]
            self._crlf = False
        if not self._left:
            end = data.find(b"\r\n")
            if end < 0:
                if len(data) > _MAX_CHUNK_LINE or _OPEN_LINE(data) is None:
                    raise h11.RemoteProtocolError("malformed chunk line")
                return None
            match = _CHUNK_LINE(data, 0, end + 2)
            if match is None or len(match[1]) > 16:
                raise h11.RemoteProtocolError("malformed chunk line")
            size = int(match[1], 16)
            if size > _MAX_CHUNK_SIZE:
                raise h11.RemoteProtocolError("chunk size out of range")
            del data[: end + 2]
            if not size:
                self._trailer = True
                return self._read_trailer(buf)
            self._left = size
        if not data:
            return None
        chunk = bytes(data[: self._left])
        del data[: len(chunk)]
        self._left -= len(chunk)
        self._crlf = not self._left
        return h11.Data(data=chunk)

    def _read_trailer(self, buf: ReceiveBuffer) -> h11.EndOfMessage | None:
        data = buf._data
        # The section ends at its empty line: right away, or after field lines.
        end = 2 if data[:2] == b"\r\n" else data.find(b"\r\n\r\n") + 4
        if end < 4 and data[:2] != b"\r\n":  # not complete yet
            if len(data) > _MAX_CHUNK_LINE or b"\n\n" in data or b"\r\r" in data:
                raise h11.RemoteProtocolError("malformed trailer section")
            if data[:1] == b"\n" or b"\n" in data.replace(b"\r\n", b""):
                raise h11.RemoteProtocolError("malformed trailer section")
            return None
        if _TRAILERS(data, 0, end) is None:
            raise h11.RemoteProtocolError("malformed trailer section")
        del data[:end]
        # Trailers are not passed on (the ops have no place for them), as before.
        return h11.EndOfMessage()

    def read_eof(self) -> None:
        raise h11.RemoteProtocolError("the connection closed in the middle of a chunked body")


class _StrictConnection(h11.Connection):
    """h11, with the strict readers above in place of two of its own."""

    def _get_io_object(self, role: Any, event: Any, io_dict: Any) -> Callable[..., Any] | None:
        io = super()._get_io_object(role, event, io_dict)
        if io is maybe_read_from_IDLE_client:
            return _strict_head_reader
        if type(io) is ChunkedReader:
            return _StrictChunkedReader()
        return io


class HeadOp:
    """A parsed request line and header section; header names lower-cased, `version` as the
    request line spells it ("1.1", "1.0", "0.9" for a line without a version, "2.0"...).

    `small` is True when the head is known to fit in the parser's `max_size`: the bytes it
    arrived in were fewer. Only when False does the protocol count the head exactly (a head
    that arrived whole in one big read is not bounded by the parser)."""

    __slots__ = ("headers", "method", "small", "target", "version")

    def __init__(
        self, method: bytes, target: bytes, version: str, headers: Headers, small: bool
    ) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.small = small


class DataOp:
    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class EndOp:
    """The request body is complete. Stateless: the one instance `END` is shared."""

    __slots__ = ()


END: Final = EndOp()


class UpgradeOp:
    """Mutable: `feed()` appends to `leftover` until the protocol takes it."""

    __slots__ = ("leftover",)

    def __init__(self, leftover: bytes) -> None:
        self.leftover = leftover


class ErrorOp:
    __slots__ = ("error",)

    def __init__(self, error: RemoteProtocolError) -> None:
        self.error = error


Op = HeadOp | DataOp | EndOp | UpgradeOp | ErrorOp


class H11Parser:
    """h11 as a parser only: our responses never pass through it, so every request cycle runs
    on a fresh h11 connection seeded with whatever the client had already pipelined."""

    __slots__ = ("_bound", "_conn", "_max_size", "_stop", "ops")

    def __init__(self, max_size: int) -> None:
        self._max_size = max_size
        self._conn = _StrictConnection(h11.SERVER, max_incomplete_event_size=max_size)
        self.ops: list[Op] = []  # a list: a deque costs ~770 bytes per idle connection
        self._bound = 0  # bytes the heads completed by this feed can at most span
        self._stop: UpgradeOp | None = None  # the stop at an upgrade request, until resumed

    @property
    def partial(self) -> bool:
        """Bytes of a request that is not complete yet are buffered."""
        return bool(self._conn.trailing_data[0]) or self._conn.their_state is h11.SEND_BODY

    def feed(self, data: bytes) -> None:
        if self._stop is not None:
            self._stop.leftover += data
            return
        self._bound = len(self._conn.trailing_data[0]) + len(data)
        self._conn.receive_data(data)
        self._drain()

    def resume(self, leftover: bytes) -> None:
        self._stop = None
        self._bound = len(leftover)
        self._fresh(leftover)
        self._drain()

    def _fresh(self, leftover: bytes) -> None:
        self._conn = _StrictConnection(h11.SERVER, max_incomplete_event_size=self._max_size)
        if leftover:
            self._conn.receive_data(leftover)

    def _drain(self) -> None:
        conn = self._conn
        ops = self.ops
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise RemoteProtocolError(
                    str(exc), error_status_hint=exc.error_status_hint
                ) from None
            if event is h11.NEED_DATA:
                return
            if isinstance(event, h11.Data):
                ops.append(DataOp(bytes(event.data)))
            elif isinstance(event, h11.Request):
                headers = [(bytes(name), bytes(value)) for name, value in event.headers]
                version = bytes(event.http_version).decode("ascii")
                small = self._bound <= self._max_size
                ops.append(
                    HeadOp(bytes(event.method), bytes(event.target), version, headers, small)
                )
            elif isinstance(event, h11.EndOfMessage):
                ops.append(END)
                leftover = bytes(conn.trailing_data[0])
                # After a complete request the client is DONE, unless the request proposed a
                # protocol switch (an Upgrade header): then h11 waits for our verdict.
                if conn.their_state is not h11.DONE:
                    self._stop = UpgradeOp(leftover)
                    ops.append(self._stop)
                    return
                self._fresh(leftover)
                conn = self._conn
            else:  # PAUSED cannot happen (fresh cycles), ConnectionClosed needs no action
                return


class HttptoolsParser:
    """llhttp through httptools. One parser per connection; llhttp keeps going across
    pipelined requests by itself. It stops at an upgrade request before reading its body, so
    that body (Content-Length only) is counted out here.

    The callbacks do as little as they can: the head goes straight into the list and bytes the
    operation carries, the only per-header bookkeeping is noting a Connection header (it lets
    most requests skip get_http_version(), see on_headers_complete) or a Transfer-Encoding, and
    the size of a head is worked out only when a read ends inside it or brought more bytes than
    the limit.

    Request lines. llhttp skips runs of spaces between the parts of a request line (RFC 9112 3
    allows one SP) and reports the parts, not the line or its offset, so this class keeps track
    of where each request begins in what it is fed: a request begins where the previous one
    ended, after its head (the first blank line: llhttp takes CRLF only) and its body, counted
    from on_body for a Content-Length body and walked line by line for a chunked one (`_walk`:
    chunk sizes and trailers, which on_body does not report), exactly as llhttp accepted it.
    Offsets are into the window: the current read, after the bytes of a head still open from
    earlier reads (`_carry`). A line is then well-formed when it is exactly as long as its
    parts with one space between them. Should a start be unknown (after a chunk line too long
    to keep), the line is looked for in the window after the previous head instead.

    Errors. httptools exposes no llhttp error code (`llhttp_errno`) to Python: it maps the code
    to an exception class (`parser_error_from_errno`: HPE_CB_* and HPE_USER become
    HttpParserCallbackError, HPE_INVALID_METHOD HttpParserInvalidMethodError, HPE_INVALID_URL
    HttpParserInvalidURLError, every other code the base HttpParserError) and passes only
    llhttp's reason text, which is not an interface. So the status never comes from that text:
    - every llhttp verdict is a syntax error in the message: 400, except a failure on a method
      that is a token llhttp does not know: 501 (`method_verdict`, shared with the h11 engine);
      llhttp fails on the method's first unknown byte, so the rest may have to come first;
    - statuses other than 400 come from checks of our own with their own status: the head size
      (431, below and in the protocol), the transfer coding (501) and the version (505) in the
      protocol's head check, which sees the head before the error llhttp raises after it (llhttp
      runs on_headers_complete before refusing an unknown Transfer-Encoding);
    - HttpParserCallbackError means one of our callbacks raised (the original is its
      `__context__`): a malformed request line we refused, or else a bug of ours, reported as
      LocalProtocolError, never blamed on the peer.
    """

    __slots__ = (
        "_at",
        "_body_left",
        "_carry",
        "_carry_from_line",
        "_chunked",
        "_connection",
        "_fed",
        "_floor",
        "_head_open",
        "_head_size",
        "_headers",
        "_in_message",
        "_llhttp",
        "_mark",
        "_max_size",
        "_next_at",
        "_parser",
        "_partial_line",
        "_skip",
        "_stop",
        "_trailers",
        "_undecided",
        "_url",
        "_window",
        "ops",
        "partial",
    )

    def __init__(self, max_size: int) -> None:
        import httptools  # optional: imported only when this engine is chosen

        self._llhttp = httptools  # kept here: an import statement per feed() costs ~70 ns
        self._max_size = max_size
        self._parser = httptools.HttpRequestParser(self)
        self.ops: list[Op] = []  # a list: a deque costs ~770 bytes per idle connection
        self._url = b""
        self._headers: Headers = []
        self._head_open = False
        self._head_size = 0  # bytes of the head in progress fed in earlier reads (over-estimated)
        self._body_left = -1  # body bytes of an upgrade request still to count out, or -1
        self._fed = 0  # bytes of the current feed() call
        self._connection = False  # the head in progress has a (Proxy-)Connection header
        self._chunked = False  # ... or a Transfer-Encoding (only `chunked` gets past the checks)
        self._stop: UpgradeOp | None = None  # the stop at an upgrade request, until resumed
        self._undecided: bytes | None = None  # a failed request's start, until its method is in
        # Where requests begin (see the class notes); offsets into `_window`, -1 for unknown.
        self._window = b""
        self._carry = b""  # an open head's bytes from earlier reads...
        self._carry_from_line = False  # ... starting exactly at its request line
        self._in_message = False  # llhttp has begun a request and not ended it
        self._at = -1  # where the current request's line begins
        self._next_at = 0  # where the next request's line will begin
        self._mark = -1  # how far the current request is accounted for
        self._floor = 0  # where the search for a line of unknown start begins
        # The chunked-body walk: chunk bytes (with their CRLF) still to skip, a size or trailer
        # line begun in an earlier read, and whether the trailers have begun.
        self._skip = 0
        self._partial_line = b""
        self._trailers = False
        # Bytes of a request that is not complete yet are buffered: an open head, or an upgrade
        # request's body still being counted. A plain attribute, unlike H11Parser's property:
        # the protocol reads it on every `wants_read`, several times per request.
        self.partial = False

    def feed(self, data: bytes) -> None:
        if self._stop is not None:
            self._stop.leftover += data
            return
        if self._body_left >= 0:
            self._count_body(data)
            return
        if self._undecided is not None:
            self._undecided += data
            self._decide("malformed request")
            return
        began_open = self._head_open
        self._fed = len(data)
        self._floor = 0
        if self._carry:
            self._resume_head(data)
        else:
            self._window = data
            if not self._in_message:
                self._next_at = 0  # between requests: the next one begins this read
            elif self._mark >= 0:
                self._mark = 0  # inside a body: it goes on from the start of this read
        try:
            self._parser.feed_data(data)
        except self._llhttp.HttpParserUpgrade as exc:
            self._start_upgrade_body(data[exc.args[0] :])
            return
        except self._llhttp.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, RemoteProtocolError):  # a request line we refused
                raise exc.__context__ from None
            # HPE_CB_* / HPE_USER: one of the callbacks below raised, which they never should.
            raise LocalProtocolError(f"request parser callback failed: {exc.__context__!r}") from (
                exc.__context__
            )
        except self._llhttp.HttpParserError as exc:
            # RFC 9112 2.2: a message that does not parse is answered 400 (see the class notes).
            start = self._failed_request()
            if start is None:
                raise RemoteProtocolError(str(exc) or "malformed request") from None
            self._undecided = start
            self._decide(str(exc))
            return
        if self._head_open:
            self._keep_open_head()
            # llhttp holds an unfinished header line itself: bound the head by what was fed.
            self._head_size += len(data) if began_open else self._open_head_size()
            if self._head_size > self._max_size:
                raise RemoteProtocolError("request header section too large", error_status_hint=431)
        elif self._chunked and self._in_message and self._mark >= 0:
            self._walk()  # to the end of this read

    def _decide(self, reason: str) -> None:
        """Refuse the request llhttp failed on, once its method is in: 501 for an unknown
        token, else 400 (the h11 engine's verdicts, from the same `method_verdict`)."""
        start = self._undecided
        assert start is not None
        error = method_verdict(start[:_METHOD_WINDOW])
        if error is None and _token_length(start) == len(start):
            self.partial = True  # only token characters so far: wait for the method's end
            return
        raise error or RemoteProtocolError(reason)

    def _open_head_size(self) -> int:
        """The part of a head begun in this read that callbacks have already reported."""
        return len(self._url) + sum(len(name) + len(value) + 4 for name, value in self._headers)

    def resume(self, leftover: bytes) -> None:
        self._parser = self._llhttp.HttpRequestParser(self)
        self._stop = None
        self._in_message = False
        self._carry = b""
        self._mark = -1
        if leftover:
            self.feed(leftover)

    def _start_upgrade_body(self, leftover: bytes) -> None:
        # llhttp reported the upgrade request complete (on_message_complete) before its body:
        # take that END back and put it after the body.
        ops = self.ops
        if ops and ops[-1] is END:
            ops.pop()
        length = 0
        for name, value in self._headers:
            if name == b"transfer-encoding":
                raise RemoteProtocolError("chunked body on an Upgrade request is not supported")
            if name == b"content-length":
                length = int(value)
        self._body_left = length
        self.partial = length > 0
        self._count_body(leftover)

    def _count_body(self, data: bytes) -> None:
        take = min(self._body_left, len(data))
        if take:
            self.ops.append(DataOp(data[:take]))
            self._body_left -= take
        if self._body_left == 0:
            self._body_left = -1
            self.partial = False
            self.ops.append(END)
            self._stop = UpgradeOp(data[take:])
            self.ops.append(self._stop)

    # ---- where request lines begin (see the class notes) ----------------------------------

    def _resume_head(self, data: bytes) -> None:
        """A read that goes on with a head begun in an earlier one."""
        self._window = self._carry + data
        self._at = 0 if self._carry_from_line else -1
        self._carry = b""

    def _keep_open_head(self) -> None:
        """Keep what a head still open after this read needs checked with the next."""
        window = self._window
        at = self._at
        self._carry_from_line = at >= 0
        # With the line's start unknown: what came after the last head found, at most a head's
        # worth (the head in progress is bounded by the 431 check).
        self._carry = window[at if at >= 0 else max(self._floor, len(window) - self._max_size) :]

    def _check_line(self, method: bytes, target: bytes, version: str) -> int:
        """Find and check the current request's line the long way; return where it ends."""
        window = self._window
        if version == "0.9":  # llhttp's name for a line without a version (HTTP/0.9)
            line = b"%s %s\r\n" % (method, target)
        else:
            line = b"%s %s HTTP/%s\r\n" % (method, target, version.encode("ascii"))
        at = self._at
        if at >= 0:
            at = _after_empty_lines(window, at)
            found = window.startswith(line, at)
        else:
            at = window.find(line, self._floor)
            found = at >= 0 and (at == 0 or window[at - 1 : at] == b"\n")
        if not found:
            raise RemoteProtocolError("malformed request line (RFC 9112 3: one SP between parts)")
        return at + len(line) - 2

    def _walk(self) -> int:
        """Follow a chunked body from `_mark` (RFC 9112 7.1) to where its request ends, or to
        the end of the window; the end's offset, else -1."""
        window = self._window
        pos = self._mark
        while True:
            if self._skip:
                take = min(self._skip, len(window) - pos)
                pos += take
                self._skip -= take
                if self._skip:
                    break
            newline = window.find(b"\n", pos)
            if newline < 0:
                self._partial_line += window[pos:]
                pos = len(window)
                if len(self._partial_line) > self._max_size:
                    self._mark = -1  # a chunk line this long is not kept: the end is unknown
                    return -1
                break
            line = window[pos:newline]
            if self._partial_line:
                line = self._partial_line + line
                self._partial_line = b""
            pos = newline + 1
            if self._trailers:
                if line == b"\r":  # the blank line after the trailer section
                    self._mark = pos
                    return pos
            else:
                size = int(line.partition(b";")[0].rstrip(b"\r"), 16)  # llhttp took it
                self._trailers = size == 0
                self._skip = size + 2 if size else 0
        self._mark = pos
        return -1

    def _failed_request(self) -> bytes | None:
        """The bytes of the request llhttp failed on, from its first, when that is known."""
        at = self._at if self._in_message else self._next_at
        if at < 0:
            return None
        window = self._window
        return window[_after_empty_lines(window, at) :]

    # ---- llhttp callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._connection = self._chunked = False
        self._head_open = self.partial = self._in_message = True
        self._head_size = 0
        self._at = self._next_at
        self._mark = -1

    def on_url(self, url: bytes) -> None:
        self._url += url  # nearly always one piece, and b"" + url is url itself

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"connection" or name == b"proxy-connection":
            self._connection = True  # see on_headers_complete
        elif name == b"transfer-encoding":
            self._chunked = True
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._head_open = self.partial = False
        parser = self._parser
        # Heads begun in an earlier read: _head_size counts them; begun in this one: 0.
        small = self._head_size + self._fed <= self._max_size
        # get_http_version() formats a new string (~400 ns); most requests can skip it.
        # llhttp_should_keep_alive() is true for HTTP/1.1 unless Connection says "close", and
        # for any other version only when Connection (or Proxy-Connection) says "keep-alive";
        # llhttp accepts no request version but 0.9, 1.0, 1.1 and 2.0. So without either
        # header, true means exactly 1.1.
        if self._connection or not parser.should_keep_alive():
            version = parser.get_http_version()
        else:
            version = "1.1"
        method = parser.get_method()
        url = self._url
        # The request line, at `_at`, is well-formed when it is as long as its parts with one
        # SP each ("GET" SP url SP "HTTP/1.1": 10 bytes besides the method and url).
        window = self._window
        at = self._at
        end = window.find(b"\r\n", at)
        if at < 0 or end - at != len(method) + len(url) + 10:
            end = self._check_line(method, url, version)  # raises if it is not
        head_end = window.find(b"\r\n\r\n", end)
        self._mark = head_end + 4 if head_end >= 0 else -1
        self._floor = head_end + 4 if head_end >= 0 else end
        if self._chunked:
            self._skip = 0
            self._partial_line = b""
            self._trailers = False
        self.ops.append(HeadOp(method, url, version, self._headers, small))

    def on_body(self, body: bytes) -> None:
        if self._mark >= 0 and not self._chunked:
            self._mark += len(body)
        self.ops.append(DataOp(body))

    def on_message_complete(self) -> None:
        self._in_message = False
        if self._chunked and self._mark >= 0:
            self._next_at = self._walk()
        else:
            self._next_at = self._mark
        self.ops.append(END)


def _after_empty_lines(window: bytes, at: int) -> int:
    """Where a request begins at or after `at`: past the CR and LF bytes llhttp skips before
    one (RFC 9112 2.2: empty lines before a request-line may be ignored)."""
    while window[at : at + 1] in (b"\r", b"\n"):
        at += 1
    return at


class SpentParser:
    """Stands in for the parser once the connection is a tunnel (an accepted WebSocket): no
    more HTTP is parsed on it, and an idle WebSocket should not keep a parser's state (h11's
    connection, llhttp's buffers) alive for its whole life."""

    __slots__ = ()

    partial = False

    @property
    def ops(self) -> list[Op]:
        return []  # always empty, and nothing added to it is kept

    def feed(self, data: bytes) -> None:
        raise LocalProtocolError("no HTTP is parsed on a tunnelled connection")

    def resume(self, leftover: bytes) -> None:
        raise LocalProtocolError("no HTTP is parsed on a tunnelled connection")


def new_parser(engine: str, max_size: int) -> H11Parser | HttptoolsParser:
    if engine == "httptools":
        return HttptoolsParser(max_size)
    return H11Parser(max_size)


def httptools_available() -> bool:
    try:
        import httptools  # noqa: F401
    except ImportError:
        return False
    return True
