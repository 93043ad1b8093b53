"""Choosing and switching the protocol object of a connection. Returns values; the only thing
it raises is LocalProtocolError for an upgrade kind it does not know (a bug of ours).

A connection starts as HTTP/2 when TLS's ALPN picked "h2", else as HTTP/1.1 (which itself
spots the cleartext HTTP/2 preface and `Upgrade: h2c` and asks for a switch with an
UpgradeRequested event). `upgrade()` turns that event into the new protocol object, the events
it already owes the application, and the input left over for it.

A PROXY protocol header is not a protocol of the connection: the listener reads it before
anything else, TLS included (runtime/base.py `Preamble`), and the connection starts here as
usual.

A WebSocket is not a switch of the connection's protocol object: it is a stream of kind
WEBSOCKET on whatever HTTP version carries it (HTTP/1.1 tunnels its connection once the
application accepts), so it never comes through here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from multicorn.protocol.base import ServerProtocol
from multicorn.protocol.errors import LocalProtocolError
from multicorn.protocol.events import Event, H2CPriorKnowledge, H2CUpgrade, UpgradeRequested
from multicorn.protocol.http2 import HTTP2Limits, HTTP2Protocol
from multicorn.protocol.http11 import HTTP11Limits, HTTP11Protocol
from multicorn.protocol.websocket import WebSocketLimits


@dataclass(frozen=True, slots=True, kw_only=True)
class ProtocolLimits:
    http11: HTTP11Limits
    http2: HTTP2Limits
    # What a WEBSOCKET stream's session obeys, on whichever version carries it.
    websocket: WebSocketLimits = field(default_factory=WebSocketLimits)


def for_connection(
    limits: ProtocolLimits,
    *,
    alpn: str | None,
    tls: bool,
    now: float,
) -> ServerProtocol:
    """The connection's first protocol."""
    if alpn == "h2":
        return HTTP2Protocol(limits=limits.http2, now=now, scheme=b"https")
    http11 = limits.http11
    if tls:
        # h2c is the cleartext form by definition; over TLS only ALPN may choose HTTP/2.
        http11 = _without_h2c(http11)
    return HTTP11Protocol(limits=http11, now=now)


def upgrade(
    event: UpgradeRequested, limits: ProtocolLimits, *, now: float
) -> tuple[ServerProtocol, list[Event], bytes]:
    """(new protocol, events it already produced, bytes still to feed it)."""
    if isinstance(event, H2CUpgrade):
        protocol = HTTP2Protocol(
            limits=limits.http2,
            now=now,
            scheme=b"http",
            upgrade_settings=event.settings,
        )
        return protocol, protocol.upgraded_request(event.request, event.body), event.leftover
    if isinstance(event, H2CPriorKnowledge):
        protocol = HTTP2Protocol(limits=limits.http2, now=now, scheme=b"http")
        return protocol, [], event.leftover
    # Only the cores emit these events, and only the kinds above: anything else is our bug.
    raise LocalProtocolError(f"no protocol to switch to for {type(event).__name__}")


def _without_h2c(limits: HTTP11Limits) -> HTTP11Limits:
    if not (limits.h2c_prior_knowledge or limits.h2c_upgrade):
        return limits
    return replace(limits, h2c_prior_knowledge=False, h2c_upgrade=False)
