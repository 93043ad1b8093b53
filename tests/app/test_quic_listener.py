"""app/quic.py's QuicListener on the fake runtime, with aioquic's client connection in memory:
datagrams and the clock are passed by hand, so every run is the same.

Checked: a request reaches the app and its answer goes out as datagrams; the listener keeps
one timer armed for QUIC's clocks and the idle timeout ends the connection through it; a
connection whose handshake completes while the server drains is told to go away before any
request; closing the UDP socket loses every connection (their apps hear http.disconnect).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aioquic.h3 import events as h3e
from aioquic.h3.connection import ErrorCode, H3Connection
from aioquic.quic import events as qe
from aioquic.quic.connection import QuicConnection

from multicorn.app.quic import QuicListener
from multicorn.app.registry import ConnectionRegistry
from multicorn.protocol.http3 import HTTP3Limits
from multicorn.protocol.quic import QuicEndpoint
from tests.protocol.h3helpers import Pki, client_configuration, make_pki

from .fakes import FakeRuntime, make_context, ok_app

CLIENT = ("192.0.2.7", 50000)
SERVER = ("127.0.0.1", 443)


class FakeDatagramTransport:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []
        self.closed = False

    def sendto(self, data: bytes, addr: Any) -> None:
        self.sent.append((data, addr))

    def close(self) -> None:
        self.closed = True


class World:
    """One listener on the fake runtime and one aioquic client talking to it."""

    def __init__(self, pki: Pki, app: Any, *, draining: bool = False) -> None:
        self.runtime = FakeRuntime()
        self.runtime.clock = 1000.0
        self.transport = FakeDatagramTransport()
        self.registry = ConnectionRegistry(self.runtime)
        self.registry.draining = draining
        self.listener = QuicListener(
            transport=self.transport,
            runtime=self.runtime,
            endpoint=QuicEndpoint(configuration=pki.server, now=1000.0, limits=HTTP3Limits()),
            context=make_context(app),
            registry=self.registry,
            server=SERVER,
            server_cert=None,
        )
        self.client = QuicConnection(configuration=client_configuration(pki))
        self.client.connect(SERVER, now=self.runtime.clock)
        self.h3: H3Connection | None = None
        self.quic_events: list[qe.QuicEvent] = []
        self.h3_events: list[h3e.H3Event] = []

    def pump(self, rounds: int = 400) -> None:
        """Carry datagrams both ways, running the app and short timers, until all is quiet."""
        for _ in range(rounds):
            moved = False
            for data, _ in self.client.datagrams_to_send(self.runtime.clock):
                moved = True
                self.listener.datagram_received(data, CLIENT)
            self.runtime.run()
            sent, self.transport.sent = self.transport.sent, []
            for data, addr in sent:
                assert addr == CLIENT
                moved = True
                self.client.receive_datagram(data, SERVER, self.runtime.clock)
            self._client_events()
            if not moved:
                # Only short timers (ACK delay, pacing): never loss detection or idle.
                timer = self.client.get_timer()
                if timer is not None and timer - self.runtime.clock < 0.05:
                    self.runtime.clock = max(self.runtime.clock, timer)
                    self.client.handle_timer(self.runtime.clock)
                    self._client_events()
                    continue
                server_timers = [t.when for t in self.runtime.timers if not t.cancelled]
                if server_timers and min(server_timers) - self.runtime.clock < 0.05:
                    self.runtime.advance(min(server_timers) - self.runtime.clock)
                    continue
                return
        raise AssertionError("the conversation did not settle")

    def advance(self, seconds: float) -> None:
        """Move the clock on, running both sides' timers."""
        self.runtime.advance(seconds)
        timer = self.client.get_timer()
        if timer is not None and timer <= self.runtime.clock:
            self.client.handle_timer(self.runtime.clock)
            self._client_events()
        self.pump()

    def _client_events(self) -> None:
        while (event := self.client.next_event()) is not None:
            self.quic_events.append(event)
            if isinstance(event, qe.ProtocolNegotiated):
                self.h3 = H3Connection(self.client)
            if self.h3 is not None:
                self.h3_events += self.h3.handle_event(event)

    def get(self, path: str, *, end_stream: bool = True) -> int:
        assert self.h3 is not None
        stream_id = self.client.get_next_available_stream_id()
        self.h3.send_headers(
            stream_id,
            [
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":authority", b"localhost"),
                (b":path", path.encode()),
            ],
            end_stream=end_stream,
        )
        return stream_id

    def response(self, stream_id: int) -> tuple[dict[bytes, bytes], bytes]:
        headers: dict[bytes, bytes] = {}
        body = b""
        for event in self.h3_events:
            if getattr(event, "stream_id", None) != stream_id:
                continue
            if isinstance(event, h3e.HeadersReceived):
                headers.update(event.headers)
            elif isinstance(event, h3e.DataReceived):
                body += event.data
        return headers, body

    @property
    def terminated(self) -> qe.ConnectionTerminated | None:
        ended = [e for e in self.quic_events if isinstance(e, qe.ConnectionTerminated)]
        return ended[0] if ended else None


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(Path(tmp_path_factory.mktemp("pki")))


def test_a_request_is_served_and_one_timer_stays_armed(pki):
    world = World(pki, ok_app)
    world.pump()
    assert len(world.registry) == 1
    stream_id = world.get("/hello")
    world.pump()
    headers, body = world.response(stream_id)
    assert headers[b":status"] == b"200"
    assert body == b"/hello"
    armed = [t for t in world.runtime.timers if not t.cancelled]
    assert armed, "QUIC's clocks (idle timeout at least) need a timer"


def test_the_idle_timeout_ends_the_connection_through_the_timer(pki):
    world = World(pki, ok_app)
    world.pump()
    assert len(world.registry) == 1
    # quic_configuration's default idle timeout is 30 s; the client's is 60 s: ours wins.
    world.advance(31)
    assert len(world.registry) == 0, "the connection was dropped from the registry"


def test_a_connection_opened_during_the_drain_goes_away_before_any_request(pki):
    called: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        called.append(scope["path"])
        await ok_app(scope, receive, send)

    world = World(pki, app, draining=True)
    world.pump()
    if world.h3 is not None and world.terminated is None:
        world.get("/late")  # if the client gets a request out at all, it is refused
        world.pump()
    # RFC 9114 5.2: with nothing accepted, the server may close at once, with H3_NO_ERROR.
    # The client reports the end once its draining period (3 PTO) is over.
    world.advance(2)
    assert world.terminated is not None
    assert world.terminated.error_code == ErrorCode.H3_NO_ERROR
    assert called == []
    assert len(world.registry) == 0


def test_closing_the_socket_loses_every_connection(pki):
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            seen.append(message["type"])
            if message["type"] == "http.disconnect":
                return

    world = World(pki, app)
    world.pump()
    world.get("/wait", end_stream=False)  # the app waits for a body that never comes
    world.pump()
    assert len(world.runtime.tasks) == 1 and not world.runtime.tasks[0].done
    world.listener.connection_lost()
    world.runtime.run()
    assert seen == ["http.disconnect"]
    assert len(world.registry) == 0
    assert not [t for t in world.runtime.timers if not t.cancelled]
    world.listener.datagram_received(b"\x40" + bytes(40), CLIENT)  # ignored once closed
    assert world.transport.sent == []
