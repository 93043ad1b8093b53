"""The scenarios: what load each one puts on a server, and which servers it applies to.

This module owns the scenario table (`SCENARIOS`). A scenario names the protocol a server must
support to take part (`servers.H1`, `H2C`, `H2_TLS`, `WS`, `H3`), the load generator (`wrk`,
`h2load`, `gtlsclient`, `idle`, `ws` or `ws-idle`), the route of `bench/apps.py` it loads, the
concurrency, the WebSocket message (size, text or binary) where there is one, and its headline
figure: the one the ratios and the plot use, and whether higher or lower is better.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.servers import H1, H2_TLS, H2C, H3, WS


@dataclass(frozen=True)
class Scenario:
    """One kind of load."""

    name: str
    protocol: str
    tool: str  # "wrk", "h2load", "gtlsclient", "idle", "ws" or "ws-idle"
    path: str
    connections: int
    description: str
    # h2load -m: concurrent streams per connection; ws: messages in flight; gtlsclient: none
    # (it opens as many streams as the server allows, 128 with aioquic's default MAX_STREAMS)
    streams: int = 1
    message_size: int = 64  # ws, ws-idle: bytes per WebSocket message
    binary: bool = False  # ws: binary messages instead of text
    script: str | None = None  # wrk Lua script, relative to bench/
    # Runs of this scenario per round: its medians are over rounds x repeats. h1-long-io's p99
    # is at the mercy of the loopback (a dropped SYN or first segment among 512 connections
    # opening at once costs a 1 s retransmission in some runs, whatever the server): a median
    # over more runs is what tells the servers apart.
    repeats: int = 1
    headline: str = "requests_per_s"
    headline_label: str = "requests/s"
    higher_is_better: bool = True

    @property
    def tls(self) -> bool:
        return self.protocol in (H2_TLS, H3)

    @property
    def measures_idle_memory(self) -> bool:
        """Whether the load is idle connections whose memory is measured (no warm-up load)."""
        return self.tool in ("idle", "ws-idle")


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "h1-get",
        H1,
        "wrk",
        "/10k",
        64,
        "HTTP/1.1 GET /10k (10240-byte body), wrk, 64 connections",
    ),
    Scenario(
        "h1-small",
        H1,
        "wrk",
        "/small",
        64,
        "HTTP/1.1 GET /small (11-byte body), wrk, 64 connections",
    ),
    Scenario(
        "h1-echo",
        H1,
        "wrk",
        "/echo",
        64,
        "HTTP/1.1 POST /echo with a 10 KiB body echoed back, wrk + bench/echo.lua, 64 connections",
        script="echo.lua",
    ),
    Scenario(
        "h1-long-io",
        H1,
        "wrk",
        "/sleep",
        512,
        "HTTP/1.1 GET /sleep (the app awaits 10 ms), wrk, 512 connections: watch p99",
        repeats=3,
    ),
    Scenario(
        "h2c",
        H2C,
        "h2load",
        "/10k",
        8,
        "HTTP/2 cleartext by prior knowledge, GET /10k, h2load -c 8 -m 16",
        streams=16,
    ),
    Scenario(
        "h2-tls",
        H2_TLS,
        "h2load",
        "/10k",
        8,
        "HTTP/2 over TLS (ALPN h2), GET /10k, h2load -c 8 -m 16",
        streams=16,
    ),
    Scenario(
        "h3-get",
        H3,
        "gtlsclient",
        "/10k",
        4,
        "HTTP/3 over QUIC, GET /10k, 4 gtlsclient processes (one QUIC connection each, as many "
        "concurrent streams as the server allows: 128 with aioquic's default); requests/s from "
        "the app's count of /10k responses sent over HTTP/3 during the run",
        streams=128,
    ),
    Scenario(
        "idle-memory",
        H1,
        "idle",
        "/small",
        1000,
        "1000 keep-alive connections left idle after one GET /small each: RSS growth per "
        "connection",
        headline="kib_per_connection",
        headline_label="KiB/connection",
        higher_is_better=False,
    ),
    Scenario(
        "ws-echo",
        WS,
        "ws",
        "/ws",
        64,
        "WebSocket echo of 64-byte text messages, 64 connections x 16 messages in flight",
        streams=16,
        headline="messages_per_s",
        headline_label="messages/s",
    ),
    Scenario(
        "ws-echo-1m",
        WS,
        "ws",
        "/ws",
        4,
        "WebSocket echo of 1 MiB binary messages, 4 connections x 2 messages in flight; "
        "Daphne gets --websocket-max-message-size and --websocket-max-frame-size 16 MiB (its "
        "defaults are 1 MiB), every other server's default limit is 16 MiB or more",
        streams=2,
        message_size=1 << 20,
        binary=True,
        headline="mib_per_s",
        headline_label="MiB/s",
    ),
    Scenario(
        "ws-idle-memory",
        WS,
        "ws-idle",
        "/ws",
        1000,
        "1000 WebSockets left open and idle after one 64-byte text echo each: RSS growth per "
        "connection",
        headline="kib_per_connection",
        headline_label="KiB/connection",
        higher_is_better=False,
    ),
)

SCENARIOS_BY_NAME = {scenario.name: scenario for scenario in SCENARIOS}

# The external program each load generator needs (None: the suite's own Python client).
TOOL_PROGRAMS = {
    "wrk": "wrk",
    "h2load": "h2load",
    "gtlsclient": "gtlsclient",
    "idle": None,
    "ws": None,
    "ws-idle": None,
}
