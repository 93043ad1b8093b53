"""An aioquic client (QuicConnection + H3Connection) against a QuicEndpoint, in memory.

Datagrams are carried by hand between the two and the clock is a number the test moves, so
every run is the same: no sockets, no event loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import trustme
from aioquic.h3 import events as h3e
from aioquic.h3.connection import H3Connection
from aioquic.quic import events as qe
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.tls import SessionTicket

from multicorn.net.quic import quic_configuration
from multicorn.protocol.events import (
    Command,
    Event,
    Headers,
    RequestReceived,
    SendData,
    SendResponse,
)
from multicorn.protocol.http3 import HTTP3Limits, HTTP3Protocol
from multicorn.protocol.quic import (
    Address,
    ConnectionOpened,
    DatagramIgnored,
    EndpointEvent,
    QuicEndpoint,
    StreamEvents,
)

SERVER_ADDR: Address = ("192.0.2.1", 443)
CLIENT_ADDR: Address = ("198.51.100.7", 50000)
# Timers the conversation may run through on its own: pacing and the ACK delay (25 ms).
_SHORT = 0.03


@dataclasses.dataclass(frozen=True)
class TLSFiles:
    """What `quic_configuration` reads (the TLSSettings shape)."""

    certfile: str | None
    keyfile: str | None = None
    keyfile_password: str | None = None
    ca_certs: str | None = None
    verify_mode: str = "none"
    ciphers: str = "ECDHE+AESGCM"
    alpn_protocols: Sequence[str] = ("h2", "http/1.1")


@dataclasses.dataclass
class Pki:
    ca_pem: bytes
    server: QuicConfiguration


def make_pki(tmp: Path) -> Pki:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    certfile = tmp / "cert.pem"
    keyfile = tmp / "key.pem"
    certfile.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    keyfile.write_bytes(cert.private_key_pem.bytes())
    server = quic_configuration(TLSFiles(certfile=str(certfile), keyfile=str(keyfile)))
    return Pki(ca_pem=ca.cert_pem.bytes(), server=server)


def client_configuration(pki: Pki) -> QuicConfiguration:
    config = QuicConfiguration(is_client=True, alpn_protocols=["h3"], server_name="localhost")
    config.load_verify_locations(cadata=pki.ca_pem)
    return config


class Pair:
    """One client connection and the server endpoint.

    `options` go to a new QuicEndpoint. `session_ticket` resumes a session (the client's
    tickets are collected in `tickets`); with `early`, the client's HTTP/3 layer exists from
    the start, so requests made before the handshake completes go out as 0-RTT.
    """

    def __init__(
        self,
        pki: Pki,
        *,
        limits: HTTP3Limits | None = None,
        handshake: bool = True,
        endpoint: QuicEndpoint | None = None,
        now: float = 1000.0,
        client_addr: Address = CLIENT_ADDR,
        session_ticket: SessionTicket | None = None,
        early: bool = False,
        client_h3: bool = True,
        **options: Any,
    ) -> None:
        self.now = now
        self.pki = pki
        self.endpoint = endpoint or QuicEndpoint(
            configuration=pki.server, now=self.now, limits=limits, **options
        )
        config = client_configuration(pki)
        config.session_ticket = session_ticket
        self.tickets: list[SessionTicket] = []
        self.client = QuicConnection(
            configuration=config, session_ticket_handler=self.tickets.append
        )
        self.client.connect(SERVER_ADDR, now=self.now)
        self.client_addr = client_addr
        # Without `client_h3` the client has no HTTP/3 layer: its streams carry raw bytes only.
        self.client_h3 = client_h3
        self.h3: H3Connection | None = H3Connection(self.client) if early else None
        self.endpoint_events: list[EndpointEvent] = []
        self.quic_events: list[qe.QuicEvent] = []  # what the client's QUIC connection reported
        self.h3_events: list[h3e.H3Event] = []  # what the client's HTTP/3 layer reported
        self.server_to: list[Address] = []  # where the server sent its datagrams
        if handshake:
            self.transfer()
            assert self.connection is not None, "the handshake did not complete"

    # ---- moving datagrams -------------------------------------------------------------------

    def transfer(self, *, max_rounds: int = 5000) -> None:
        """Carry datagrams both ways until neither side has anything more to send.

        The clock moves only to run short timers (pacing, ACK delay: up to `_SHORT` ahead),
        never loss detection or idle timeouts.
        """
        for _ in range(max_rounds):
            moved = self._short_timers()
            for data, _addr in self.client.datagrams_to_send(self.now):
                moved = True
                self.endpoint_events += self.endpoint.receive_datagram(
                    data, self.client_addr, self.now
                )
            for data, addr in self.endpoint.datagrams_to_send(self.now):
                moved = True
                self.server_to.append(addr)
                if addr == self.client_addr:
                    self.client.receive_datagram(data, SERVER_ADDR, self.now)
            self._client_events()
            if not moved:
                return
        raise AssertionError("the conversation did not settle")

    def client_to_server(self) -> None:
        """Deliver what the client has to send now, and nothing the other way."""
        for _ in range(10):
            datagrams = self.client.datagrams_to_send(self.now)
            for data, _addr in datagrams:
                self.endpoint_events += self.endpoint.receive_datagram(
                    data, self.client_addr, self.now
                )
            if datagrams:
                return
            self.now += 0.001  # past the client's pacer
        raise AssertionError("the client had nothing to send")

    def client_flush(self) -> None:
        """Deliver whatever the client has to send now (perhaps nothing), nothing back."""
        self.now += 0.001  # past the client's pacer
        for data, _addr in self.client.datagrams_to_send(self.now):
            self.endpoint_events += self.endpoint.receive_datagram(data, self.client_addr, self.now)

    def _short_timers(self) -> bool:
        timers = [t for t in (self.client.get_timer(), self.endpoint.next_deadline()) if t]
        due = min(timers, default=None)
        if due is None or due > self.now + _SHORT:
            return False
        self.now = max(self.now, due)
        timer = self.client.get_timer()
        if timer is not None and timer <= self.now:
            self.client.handle_timer(self.now)
        deadline = self.endpoint.next_deadline()
        if deadline is not None and deadline <= self.now:
            self.endpoint_events += self.endpoint.handle_deadline(self.now)
        self._client_events()
        return True

    def advance(self, seconds: float) -> None:
        """Move the clock and run both sides' timers."""
        self.now += seconds
        timer = self.client.get_timer()
        if timer is not None and timer <= self.now:
            self.client.handle_timer(self.now)
        deadline = self.endpoint.next_deadline()
        if deadline is not None and deadline <= self.now:
            self.endpoint_events += self.endpoint.handle_deadline(self.now)
        self._client_events()
        self.transfer()

    def _client_events(self) -> None:
        while (event := self.client.next_event()) is not None:
            self.quic_events.append(event)
            if isinstance(event, qe.ProtocolNegotiated) and self.h3 is None and self.client_h3:
                self.h3 = H3Connection(self.client)
            if self.h3 is not None:
                self.h3_events += self.h3.handle_event(event)

    # ---- the server side ----------------------------------------------------------------------

    @property
    def connection(self) -> HTTP3Protocol | None:
        opened = [e for e in self.endpoint_events if isinstance(e, ConnectionOpened)]
        return opened[0].connection if opened else None

    @property
    def server(self) -> HTTP3Protocol:
        connection = self.connection
        assert connection is not None
        return connection

    def events(self) -> list[Event]:
        """The server's stream events so far, in order (and forget them)."""
        out: list[Event] = []
        rest: list[EndpointEvent] = []
        for event in self.endpoint_events:
            if isinstance(event, StreamEvents):
                assert event.connection is self.server
                out.extend(event.events)
            else:
                rest.append(event)
        self.endpoint_events = rest
        return out

    def ignored(self) -> list[DatagramIgnored]:
        return [e for e in self.endpoint_events if isinstance(e, DatagramIgnored)]

    def handshake_completed(self) -> qe.HandshakeCompleted:
        """What the client's QUIC connection reported at the end of its handshake."""
        (done,) = [e for e in self.quic_events if isinstance(e, qe.HandshakeCompleted)]
        return done

    def send(self, *commands: Command) -> list[Event]:
        out: list[Event] = []
        for command in commands:
            out += self.server.send(command, self.now)
        return out

    # ---- the client side ----------------------------------------------------------------------

    def request(
        self,
        path: bytes = b"/",
        *,
        method: bytes = b"GET",
        extra: Headers | None = None,
        pseudo: Headers | None = None,
        body: bytes | None = None,
        end: bool = True,
    ) -> int:
        """Open a request stream from the client; returns its id."""
        assert self.h3 is not None
        stream_id = self.client.get_next_available_stream_id()
        head = pseudo or [
            (b":method", method),
            (b":scheme", b"https"),
            (b":authority", b"localhost"),
            (b":path", path),
        ]
        self.h3.send_headers(stream_id, [*head, *(extra or [])], end_stream=end and body is None)
        if body is not None:
            self.h3.send_data(stream_id, body, end_stream=end)
        return stream_id

    def response(self, stream_id: int) -> tuple[Headers, bytes, Headers | None, bool]:
        """Head, body, trailers and whether the stream ended, as the client saw them."""
        heads = [
            e.headers
            for e in self.h3_events
            if isinstance(e, h3e.HeadersReceived) and e.stream_id == stream_id
        ]
        body = b"".join(
            e.data
            for e in self.h3_events
            if isinstance(e, h3e.DataReceived) and e.stream_id == stream_id
        )
        ended = any(
            e.stream_ended
            for e in self.h3_events
            if isinstance(e, (h3e.HeadersReceived, h3e.DataReceived)) and e.stream_id == stream_id
        )
        assert heads, f"no response head on stream {stream_id}"
        return heads[0], body, heads[1] if len(heads) > 1 else None, ended

    def resets(self) -> dict[int, int]:
        """Stream id -> error code of the RESET_STREAM frames the client received."""
        return {
            e.stream_id: e.error_code for e in self.quic_events if isinstance(e, qe.StreamReset)
        }

    def stops(self) -> dict[int, int]:
        """Stream id -> error code of the STOP_SENDING frames the client received."""
        return {
            e.stream_id: e.error_code
            for e in self.quic_events
            if isinstance(e, qe.StopSendingReceived)
        }

    def terminated(self) -> qe.ConnectionTerminated | None:
        ends = [e for e in self.quic_events if isinstance(e, qe.ConnectionTerminated)]
        return ends[0] if ends else None

    def server_stream_bytes(self, stream_id: int) -> bytes:
        return b"".join(
            e.data
            for e in self.quic_events
            if isinstance(e, qe.StreamDataReceived) and e.stream_id == stream_id
        )

    # ---- misbehaving on purpose ---------------------------------------------------------------

    def raw(self, data: bytes, *, stream_id: int | None = None, end: bool = False) -> int:
        """Write raw bytes on a client stream (a new request stream by default), bypassing
        the client's HTTP/3 layer; returns the stream id."""
        if stream_id is None:
            stream_id = self.client.get_next_available_stream_id()
        self.client.send_stream_data(stream_id, data, end_stream=end)
        return stream_id

    def raw_uni(self, data: bytes, *, end: bool = False) -> int:
        """Open a new unidirectional client stream carrying raw bytes; returns its id."""
        stream_id = self.client.get_next_available_stream_id(is_unidirectional=True)
        self.client.send_stream_data(stream_id, data, end_stream=end)
        return stream_id

    @property
    def client_control(self) -> int:
        """The client's HTTP/3 control stream (aioquic keeps its id private)."""
        assert self.h3 is not None and self.h3._local_control_stream_id is not None
        return self.h3._local_control_stream_id

    @property
    def client_encoder(self) -> int:
        """The client's QPACK encoder stream."""
        assert self.h3 is not None and self.h3._local_encoder_stream_id is not None
        return self.h3._local_encoder_stream_id

    @property
    def client_decoder(self) -> int:
        """The client's QPACK decoder stream."""
        assert self.h3 is not None and self.h3._local_decoder_stream_id is not None
        return self.h3._local_decoder_stream_id

    def trickle(self, stream_id: int, data: bytes, *, stop: Callable[[], bool]) -> int:
        """Send `data` one byte per packet until `stop()`; returns how many bytes went."""
        for sent, byte in enumerate(data):
            if stop():
                return sent
            self.client.send_stream_data(stream_id, bytes([byte]))
            self.client_to_server()
        return len(data)

    def close_code(self) -> int | None:
        """The error code of the CONNECTION_CLOSE the client received, once the closing
        period is over (None: still open)."""
        self.transfer()
        self.advance(5.0)
        end = self.terminated()
        return None if end is None else end.error_code


def served_alongside(pki: Pki, endpoint: QuicEndpoint, now: float) -> None:
    """Another client of `endpoint` connects and gets a response: one connection's troubles
    cost nobody else."""
    other = Pair(pki, endpoint=endpoint, now=now, client_addr=("203.0.113.9", 40000))
    sid = other.request(b"/other")
    other.transfer()
    received = [
        e
        for batch in other.endpoint_events
        if isinstance(batch, StreamEvents) and batch.connection is other.server
        for e in batch.events
        if isinstance(e, RequestReceived)
    ]
    assert [e.target for e in received] == [b"/other"]
    other.send(
        SendResponse(stream_id=sid, status=200, headers=[]),
        SendData(stream_id=sid, data=b"still here", end_stream=True),
    )
    other.transfer()
    assert other.response(sid)[1] == b"still here"
