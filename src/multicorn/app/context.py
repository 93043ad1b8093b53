"""What every connection of one server shares: the app, settings, loggers, lifespan state, and
the ASGI bridge for each kind of stream."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

from multicorn.app.dispatch import default_bridges

if TYPE_CHECKING:
    from collections.abc import Mapping

    from multicorn.app.dispatch import BridgeFactory
    from multicorn.app.logs import Loggers
    from multicorn.app.proxy import Forwarder, ProxyTrust
    from multicorn.protocol.events import StreamKind
    from multicorn.protocol.negotiate import ProtocolLimits
    from multicorn.typing import ASGIApp

# The product name only: a version number helps attackers more than it helps anyone else.
_SERVER_HEADER = (b"server", b"multicorn")


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionInfo:
    """Who is on each end of one connection."""

    client: tuple[str, int] | None
    server: tuple[str, int | None] | None
    scheme: str = "http"
    tls: dict[str, object] | None = None  # the ASGI `tls` extension, on TLS connections
    # Set when the peer is a trusted proxy (decided once, when the connection is made): reads
    # the client, scheme and host it forwards. None: forwarding headers are not believed.
    forwarder: Forwarder | None = None


class DefaultHeaders:
    """`date`, `server` and `alt-svc` response headers; the date is formatted once a second."""

    def __init__(self, *, date: bool, server: bool, alt_svc: bytes | None = None) -> None:
        self._date = date
        self._second = -1
        # Everything but the date is fixed: `server`, and `alt-svc` while HTTP/3 is served.
        self._fixed: list[tuple[bytes, bytes]] = [_SERVER_HEADER] if server else []
        if alt_svc is not None:
            self._fixed.append((b"alt-svc", alt_svc))
        self._headers: list[tuple[bytes, bytes]] = self._fixed

    def get(self) -> list[tuple[bytes, bytes]]:
        if not self._date:
            return self._fixed
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            date = (b"date", formatdate(now, usegmt=True).encode("ascii"))
            self._headers = [date, *self._fixed]
        return self._headers


@dataclass(frozen=True, slots=True, kw_only=True)
class AppSettings:
    """The settings the ASGI layer reads. serve.py fills them from Config; app/ never sees the
    configuration itself, so it does not depend on the layer that parses it."""

    root_path: str = ""  # the ASGI `root_path`: where a proxy mounts this application
    send_timeout: float = 60.0  # how long send() waits for a peer that reads nothing
    # Request body bytes one request may send; past it the request is answered 413 (0: no cap).
    max_request_body_size: int = 0
    # Slowest request body accepted, bytes/second, measured over the time the server waited for
    # it once `min_request_body_rate_grace` seconds of such waiting have passed; slower is
    # answered 408 (0: off). Config's defaults and their reasons live in config.py.
    min_request_body_rate: int = 100
    min_request_body_rate_grace: float = 10.0
    # Streams served at once, server-wide; past it a new one is answered 503 (0: no cap).
    limit_concurrency: int = 0
    # Proxies: whose X-Forwarded-* and Forwarded headers are believed; None when off.
    proxy_trust: ProxyTrust | None = None


@dataclass(kw_only=True)
class ServerContext:
    app: ASGIApp
    settings: AppSettings
    loggers: Loggers
    protocol_limits: ProtocolLimits
    default_headers: DefaultHeaders
    # Which bridge serves each kind of stream; a kind missing here is answered 501.
    bridges: Mapping[StreamKind, BridgeFactory] = field(default_factory=default_bridges)
    state: dict[str, Any] = field(default_factory=dict)
    # An Upgrade the server does not take was logged: the warning comes once per server.
    upgrade_warned: bool = False
