"""The one vocabulary between a protocol core and the ASGI layer, whatever the HTTP version.

Inbound events are past tense and only ever flow out of a protocol object; outbound commands are
imperative and only ever flow into one. No type goes both ways. Every stream event names its
stream: HTTP/1.1 numbers its requests 1, 2, 3... on a connection, HTTP/2 uses its stream ids.

Every type is a frozen dataclass whose `__init__` is replaced by `_quick_init`: several are
built for every request, and a frozen dataclass's own `__init__` sets each field through
`object.__setattr__` (`RequestReceived` cost 1.3 us to build; the slots' own setters take
about half that). Instances stay as immutable as before.
"""

from __future__ import annotations

import enum
from dataclasses import MISSING, dataclass, field, fields
from typing import TypeVar

from multicorn.protocol.errors import ProtocolError

Headers = list[tuple[bytes, bytes]]

_T = TypeVar("_T", bound=type)


def _quick_init(cls: _T) -> _T:
    """Give a frozen, slotted, keyword-only dataclass an `__init__` that fills each slot through
    its own descriptor: the same signature, defaults and checks, half the cost. Like the
    `__init__` dataclasses writes, it is generated source, compiled once per class."""
    params: list[str] = []
    body: list[str] = []
    namespace: dict[str, object] = {}
    for item in fields(cls):
        name = item.name
        # The slot's member descriptor, from whichever class in the MRO declares it.
        owner = next(klass for klass in cls.__mro__ if name in vars(klass))
        namespace[f"_set_{name}"] = vars(owner)[name].__set__
        if item.default is not MISSING:
            namespace[f"_default_{name}"] = item.default
            params.append(f"{name}=_default_{name}")
        elif item.default_factory is not MISSING:
            namespace[f"_factory_{name}"] = item.default_factory
            params.append(f"{name}=_MISSING")
            body.append(f"    if {name} is _MISSING: {name} = _factory_{name}()")
        else:
            params.append(name)
        body.append(f"    _set_{name}(self, {name})")
    namespace["_MISSING"] = MISSING
    source = f"def __init__(self, *, {', '.join(params)}):\n" + "\n".join(body or ["    pass"])
    exec(source, namespace)  # our own field names only, as dataclasses itself does
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"  # type: ignore[attr-defined]
    cls.__init__ = init  # type: ignore[misc]
    return cls


class StreamKind(enum.Enum):
    """What a stream carries, as its protocol core reports it; the connection driver picks the
    ASGI bridge from this, so no bridge ever learns the HTTP version underneath."""

    REQUEST = "request"  # an ordinary request/response exchange (ASGI `http`)
    # HTTP/1.1 `Upgrade: websocket` (RFC 6455 4.1) or an extended CONNECT with
    # `:protocol websocket` (RFC 8441 over HTTP/2, RFC 9220 over HTTP/3). A 2xx SendResponse
    # accepts it (HTTP/1.1 writes that as its 101); from then on the stream is a byte tunnel in
    # both directions: DataReceived / SendData carry WebSocket frames. Any other final status
    # declines it as an ordinary response.
    WEBSOCKET = "websocket"


# ---- inbound events -------------------------------------------------------------------------


@_quick_init
@dataclass(frozen=True, slots=True, kw_only=True)
class RequestReceived:
    """A complete request head. `headers` have lower-cased names, in arrival order."""

    stream_id: int
    method: bytes
    target: bytes
    http_version: str  # "1.0", "1.1", "2", "3"
    headers: Headers
    expects_continue: bool = False  # the client waits for 100 before sending its body
    kind: StreamKind = StreamKind.REQUEST
    # HTTP/1.1: the request offers an Upgrade (RFC 9110 7.8) the server does not take (an
    # unknown protocol, or h2c or websocket while those are off); it is served as plain HTTP.
    upgrade_ignored: bool = False


@_quick_init
@dataclass(frozen=True, slots=True, kw_only=True)
class DataReceived:
    stream_id: int
    data: bytes


@_quick_init
@dataclass(frozen=True, slots=True, kw_only=True)
class StreamEnded:
    """The request body is complete."""

    stream_id: int


@_quick_init
@dataclass(frozen=True, slots=True, kw_only=True)
class StreamReset:
    """The peer abandoned the stream before it was complete (or the connection died under it)."""

    stream_id: int


@_quick_init
@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionClosed:
    """The connection is over: flush what `data_to_send()` still holds, then close the transport.

    `error` is set when the peer broke the protocol (the error answer, if any, is already queued).
    """

    error: ProtocolError | None = None


@_quick_init
@dataclass(frozen=True, slots=True, kw_only=True)
class RequestRejected:
    """A request the core refused before the application saw it: answer `stream_id` with
    `error.error_status_hint` (400, 408, 431, 501, 505...). The core decides what happens to the
    connection afterwards: HTTP/1.1 refuses this way whatever was wrong (it has no streams to
    reset) and closes once the answer is out; HTTP/2 and HTTP/3 refuse this way only heads that
    are well-formed but unservable, reset the stream of a malformed one instead (it never
    reaches here), and carry on with their other streams."""

    stream_id: int
    error: ProtocolError


@_quick_init
@dataclass(frozen=True, slots=True, kw_only=True)
class UpgradeRequested:
    """The connection switches protocols: `negotiate.upgrade()` builds the new protocol object.
    Any answer the old protocol owed (a 101) is already in its output, and `leftover` is input
    that belongs to the new protocol. Concrete kinds below; one per way of switching."""

    leftover: bytes = b""


@_quick_init
@dataclass(frozen=True, slots=True, kw_only=True)
class H2CPriorKnowledge(UpgradeRequested):
    """The cleartext connection opened with the HTTP/2 preface (RFC 9113 3.3)."""


@_quick_init
@dataclass(frozen=True, slots=True, kw_only=True)
class H2CUpgrade(UpgradeRequested):
    """`Upgrade: h2c` on an HTTP/1.1 request (RFC 7540 3.2): the request becomes stream 1."""

    request: RequestReceived
    body: bytes = b""  # its complete body
    settings: bytes = b""  # its HTTP2-Settings value


Event = (
    RequestReceived
    | DataReceived
    | StreamEnded
    | StreamReset
    | RequestRejected
    | ConnectionClosed
    | UpgradeRequested
)


# ---- outbound commands ----------------------------------------------------------------------


@_quick_init
@dataclass(frozen=True, slots=True, kw_only=True)
class SendResponse:
    stream_id: int
    status: int
    headers: Headers
    end_stream: bool = False


@_quick_init
@dataclass(frozen=True, slots=True, kw_only=True)
class SendInformational:
    """A 1xx response (100 Continue, 103 Early Hints)."""

    stream_id: int
    status: int
    headers: Headers = field(default_factory=list)


@_quick_init
@dataclass(frozen=True, slots=True, kw_only=True)
class SendData:
    stream_id: int
    data: bytes
    end_stream: bool = False


@_quick_init
@dataclass(frozen=True, slots=True, kw_only=True)
class SendTrailers:
    """Trailer fields after the body; ends the stream."""

    stream_id: int
    headers: Headers


@_quick_init
@dataclass(frozen=True, slots=True, kw_only=True)
class PushPromise:
    """Promise a response to a GET of `path` (HTTP/2 server push).

    The protocol answers with a RequestReceived for the promised stream, which the ASGI layer
    serves like any other request.
    """

    stream_id: int  # the stream the promise is associated with
    path: bytes
    headers: Headers


@_quick_init
@dataclass(frozen=True, slots=True, kw_only=True)
class AcknowledgeData:
    """The application consumed `amount` body bytes of the stream: the peer may send more."""

    stream_id: int
    amount: int


@_quick_init
@dataclass(frozen=True, slots=True, kw_only=True)
class ResetStream:
    """Abandon a stream mid-response. HTTP/1.1 can only do this by closing the connection."""

    stream_id: int


@_quick_init
@dataclass(frozen=True, slots=True, kw_only=True)
class CloseConnection:
    """Graceful close: finish what is in flight, accept nothing new.

    With `idle_grace` (another process is taking over the listener, so the client's retry will
    be served) an idle HTTP/1.1 connection is not closed at once: a keep-alive client may
    already be sending its next request, which a close would lose. It answers that request
    with `connection: close` instead, or closes at its keep-alive timeout. Multiplexed
    protocols need no grace: their GOAWAY says which requests were taken.
    """

    idle_grace: bool = False


Command = (
    SendResponse
    | SendInformational
    | SendData
    | SendTrailers
    | PushPromise
    | AcknowledgeData
    | ResetStream
    | CloseConnection
)
