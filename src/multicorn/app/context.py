"""What every connection of one server shares: the app, settings, loggers, lifespan state."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from multicorn.config import Config
    from multicorn.logging import Loggers
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


class DefaultHeaders:
    """`date` and `server` response headers; the date is formatted once a second."""

    def __init__(self, *, date: bool, server: bool) -> None:
        self._date = date
        self._server = server
        self._second = -1
        self._headers: list[tuple[bytes, bytes]] = []

    def get(self) -> list[tuple[bytes, bytes]]:
        if not self._date:
            return [_SERVER_HEADER] if self._server else []
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            date = (b"date", formatdate(now, usegmt=True).encode("ascii"))
            self._headers = [date, _SERVER_HEADER] if self._server else [date]
        return self._headers


@dataclass(kw_only=True)
class ServerContext:
    app: ASGIApp
    config: Config
    loggers: Loggers
    protocol_limits: ProtocolLimits
    default_headers: DefaultHeaders
    state: dict[str, Any] = field(default_factory=dict)
