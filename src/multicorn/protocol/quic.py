"""The QUIC endpoint, server side: every QUIC connection of one UDP socket, sans-IO.

Theory of operation. A UDP socket has no connections, so this object is what a TCP listener
and its accepted sockets are together: it takes each datagram with the address it came from
(`receive_datagram(data, addr, now)`), finds the QUIC connection it belongs to by its
destination connection ID, hands it to aioquic's `QuicConnection`, and turns what that
connection reports into events for the driver above. Outbound, `datagrams_to_send(now)`
collects the datagrams of every connection that has something to send (plus the endpoint's own
version negotiation answers), each with the address to send it to. QUIC's timers (loss
detection, ACK delay, pacing, idle timeout, the closing period) are folded into one deadline
for the whole socket: `next_deadline()` / `handle_deadline(now)`. The clock is always an
argument; nothing here reads one, opens a file or touches a socket.

Routing is by connection ID, never by address (RFC 9000 5.2, 9): a client that migrates or is
rebound by a NAT keeps its connection, and aioquic validates the new path itself. The map from
connection ID to connection holds the client's original destination CID (until the connection
ends: the client may repeat its Initial with it), the server's first CID, and every CID aioquic
issues (`ConnectionIdIssued`) until the client retires it (`ConnectionIdRetired`). Server CIDs
are `configuration.connection_id_length` bytes long (8 by default), which is how a short-header
packet's destination CID is found.

A datagram that starts nothing and belongs to nothing is dropped after a bounded amount of
work (one header parse, one dict lookup); `receive_datagram` reports it as `DatagramIgnored`
so that the driver can log it at debug level. A new connection is only created for a client
Initial of a supported version in a datagram of at least 1200 bytes; an unsupported version
gets a Version Negotiation packet, if the datagram is large enough to have started a
connection.

Each connection carries one `HTTP3Protocol` (protocol/http3.py). The endpoint reports a
connection once its handshake is complete (`ConnectionOpened(connection)`), then its stream
events as they come (`StreamEvents(connection, events)`), the last of which is
`ConnectionClosed`; after that the connection is gone from the endpoint. Handshakes that never
complete never reach the driver.

How the ASGI layer drives this (the wiring comes with the UDP listener): a datagram handler in
app/ owns the endpoint; for each `ConnectionOpened` it builds one `ConnectionHandler` around the
`HTTP3Protocol`, which has the `ServerProtocol` shape except for input, and passes each
`StreamEvents` batch to that handler (a public twin of `data_received` that takes events
instead of bytes). The handler's commands go into `HTTP3Protocol.send()`, which queues HTTP/3
frames into the QuicConnection; its `data_to_send()` is always empty. After every wake-up (a
datagram, the timer, a handler's upkeep) the datagram handler calls `datagrams_to_send(now)`,
`sendto`s the results and re-arms one `Runtime.call_at` at `next_deadline()`. The handler's
transport is a small adapter: `write` is never called, `close` needs nothing (the QUIC
connection closes itself), `abort` is `HTTP3Protocol.abort()`, reading and deadlines are the
endpoint's.

Not done yet (hooks noted where they go): Retry (RFC 9000 8.1, address validation before any
state is kept), stateless reset (RFC 9000 10.3, for datagrams with an unknown CID), 0-RTT, a
limit on the number of connections, and a timer heap (next_deadline walks every connection).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from aioquic._buffer import Buffer  # aioquic.buffer re-exports it without `as`, which mypy refuses
from aioquic.quic import events as quic_events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import (
    QuicPacketType,
    encode_quic_version_negotiation,
    pull_quic_header,
)

from multicorn.protocol.events import Event
from multicorn.protocol.http3 import HTTP3Limits, HTTP3Protocol

# The socket module's address tuple, handed back to `sendto` as it came.
Address: TypeAlias = tuple[Any, ...]

# RFC 9000 14.1: "A server MUST discard an Initial packet that is carried in a UDP datagram
# with a payload that is smaller than the smallest allowed maximum datagram size of 1200 bytes."
_MIN_INITIAL_DATAGRAM = 1200
# RFC 9000 7.2: the client's first Destination Connection ID "MUST be at least 8 bytes in
# length".
_MIN_ORIGINAL_DCID = 8


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionOpened:
    """A QUIC connection completed its handshake: build its driver around `connection`."""

    connection: HTTP3Protocol
    addr: Address


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamEvents:
    """Stream events of one connection, in order; `ConnectionClosed` is the last it reports."""

    connection: HTTP3Protocol
    events: list[Event]


@dataclass(frozen=True, slots=True, kw_only=True)
class DatagramIgnored:
    """A datagram that opened nothing and belonged to nothing (worth a debug line at most)."""

    addr: Address
    reason: str


EndpointEvent = ConnectionOpened | StreamEvents | DatagramIgnored


@dataclass(slots=True, eq=False)
class _Peer:
    """One QUIC connection and what the endpoint keeps about it."""

    protocol: HTTP3Protocol
    cids: set[bytes] = field(default_factory=set)
    announced: bool = False  # ConnectionOpened reported
    touched: bool = True  # input or a timer since its datagrams were last collected
    # QUIC events that came out of datagrams_to_send (other than connection IDs), handled at
    # the next handle_deadline.
    backlog: list[quic_events.QuicEvent] = field(default_factory=list)

    @property
    def quic(self) -> QuicConnection:
        return self.protocol.quic


class QuicEndpoint:
    """Every QUIC connection of one UDP socket; see the module docstring."""

    def __init__(
        self,
        *,
        configuration: QuicConfiguration,
        now: float,
        limits: HTTP3Limits | None = None,
    ) -> None:
        if configuration.is_client:
            raise ValueError("QuicEndpoint is the server side: is_client must be False")
        self._configuration = configuration
        self._limits = limits if limits is not None else HTTP3Limits()
        self._cid_length = configuration.connection_id_length
        self._versions = frozenset(configuration.supported_versions)
        self._by_cid: dict[bytes, _Peer] = {}
        self._peers: dict[int, _Peer] = {}  # by id(), in creation order
        # Datagrams due but not collected yet: version negotiation answers, new connections'
        # first flights.
        self._queued: list[tuple[bytes, Address]] = []

    # ---- input ----------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> list[EndpointEvent]:
        peer_or_reason = self._route(data, addr, now)
        if isinstance(peer_or_reason, str):
            return [DatagramIgnored(addr=addr, reason=peer_or_reason)]
        peer = peer_or_reason
        fresh = id(peer) not in self._peers
        peer.quic.receive_datagram(data, addr, now)
        peer.touched = True
        if fresh:
            # A connection is only kept once its first datagram held a packet that decrypted:
            # that always calls for an answer (an ACK and the server's Initial), garbage never
            # does. Without this check each spoofed 1200-byte "Initial" would hold state until
            # the idle timeout.
            first = self._collect(peer, now)
            if not first:
                return [DatagramIgnored(addr=addr, reason="Initial that does not decrypt")]
            self._peers[id(peer)] = peer
            for cid in peer.cids:
                self._by_cid[cid] = peer
            self._queued.extend(first)
        return self._service(peer, now)

    def _route(self, data: bytes, addr: Address, now: float) -> _Peer | str:
        """The connection a datagram belongs to (a new one for a client Initial), or why it
        is dropped."""
        if not data:
            return "empty datagram"
        if data[0] & 0x80:
            # RFC 8999 5.1: the long header's version and connection IDs are in the same place
            # for every QUIC version, so they are read before the version is known.
            if len(data) < 7:
                return "truncated long header"
            version = int.from_bytes(data[1:5], "big")
            if version == 0:
                # RFC 9000 6.1: "An endpoint MUST NOT send a Version Negotiation packet in
                # response to receiving a Version Negotiation packet."
                return "version negotiation packet"
            if version not in self._versions:
                return self._negotiate_version(data, addr, version)
        elif len(data) < 1 + self._cid_length:
            return "truncated short header"
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=self._cid_length)
        except ValueError as exc:  # aioquic's BufferReadError is a ValueError too
            return f"unparsable header ({exc})"
        peer = self._by_cid.get(header.destination_cid)
        if peer is not None:
            return peer
        if header.packet_type is not QuicPacketType.INITIAL:
            # RFC 9000 10.3 would answer with a stateless reset here (not done yet); 0-RTT
            # that overtook its Initial is lost too, and the client retransmits it.
            return f"unknown connection ID ({header.packet_type.name})"
        if len(data) < _MIN_INITIAL_DATAGRAM:
            # RFC 9000 14.1: "A server MUST discard an Initial packet that is carried in a UDP
            # datagram with a payload that is smaller than the smallest allowed maximum
            # datagram size of 1200 bytes."
            return f"Initial in a {len(data)}-byte datagram"
        if len(header.destination_cid) < _MIN_ORIGINAL_DCID:
            # RFC 9000 7.2: "This Destination Connection ID MUST be at least 8 bytes in length."
            return "Initial with a destination connection ID shorter than 8 bytes"
        # TODO(Retry): RFC 9000 8.1.2, validate the address with a Retry before keeping state.
        return self._open(header.destination_cid, now)

    def _negotiate_version(self, data: bytes, addr: Address, version: int) -> str:
        # RFC 9000 5.2.2: "If a server receives a packet that indicates an unsupported version
        # and if the packet is large enough to initiate a new connection for any supported
        # version, the server SHOULD send a Version Negotiation packet as described in Section
        # 6.1. [...] Servers MUST drop smaller packets that specify unsupported versions."
        if len(data) < _MIN_INITIAL_DATAGRAM:
            return f"unsupported version 0x{version:08x} in a {len(data)}-byte datagram"
        dcid_length = data[5]
        dcid = data[6 : 6 + dcid_length]
        if len(data) < 7 + dcid_length:
            return "truncated long header"
        scid_length = data[6 + dcid_length]
        scid = data[7 + dcid_length : 7 + dcid_length + scid_length]
        if len(scid) != scid_length:
            return "truncated long header"
        # RFC 9000 17.2.1: "The server MUST include the value from the Source Connection ID
        # field of the packet it receives in the Destination Connection ID field. The value for
        # Source Connection ID MUST be copied from the Destination Connection ID of the
        # received packet".
        self._queued.append(
            (
                encode_quic_version_negotiation(
                    source_cid=dcid,
                    destination_cid=scid,
                    supported_versions=list(self._configuration.supported_versions),
                ),
                addr,
            )
        )
        return f"unsupported version 0x{version:08x}: answered with version negotiation"

    def _open(self, original_dcid: bytes, now: float) -> _Peer:
        quic = QuicConnection(
            configuration=self._configuration,
            original_destination_connection_id=original_dcid,
        )
        peer = _Peer(protocol=HTTP3Protocol(quic=quic, limits=self._limits, now=now))
        # Registered in the routing map once its first datagram proves it real (see
        # receive_datagram).
        peer.cids.update((original_dcid, quic.host_cid))
        return peer

    def _add_cid(self, peer: _Peer, cid: bytes) -> None:
        self._by_cid[cid] = peer
        peer.cids.add(cid)

    def _service(self, peer: _Peer, now: float) -> list[EndpointEvent]:
        """Handle what the connection reports after input or a timer."""
        protocol = peer.protocol
        events: list[Event] = []
        try:
            pending = peer.backlog
            peer.backlog = []
            for event in self._quic_events(peer, pending):
                events.extend(protocol.quic_event_received(event, now))
            events.extend(protocol.upkeep(now))
        except Exception as exc:
            # A fault outside any stream (the protocol contains its streams' own): this
            # connection goes, the endpoint and every other connection carry on.
            events.extend(protocol.fail(exc))
            self._forget(peer)
        out: list[EndpointEvent] = []
        if not peer.announced and protocol.handshake_complete:
            peer.announced = True
            addr = protocol.peer_address or ()
            out.append(ConnectionOpened(connection=protocol, addr=addr))
        if events and peer.announced:
            out.append(StreamEvents(connection=protocol, events=events))
        return out

    def _quic_events(
        self, peer: _Peer, pending: list[quic_events.QuicEvent]
    ) -> Iterator[quic_events.QuicEvent]:
        """The connection's events, keeping the connection-ID ones for the routing map."""
        yield from pending
        quic = peer.quic
        while (event := quic.next_event()) is not None:
            if isinstance(event, quic_events.ConnectionIdIssued):
                self._add_cid(peer, event.connection_id)
            elif isinstance(event, quic_events.ConnectionIdRetired):
                if self._by_cid.get(event.connection_id) is peer:
                    del self._by_cid[event.connection_id]
                peer.cids.discard(event.connection_id)
            else:
                if isinstance(event, quic_events.ConnectionTerminated):
                    # The closing or draining period (RFC 9000 10.2) is over: aioquic reports
                    # the end only then, so packets of a closing connection still found it.
                    self._forget(peer)
                yield event

    def _forget(self, peer: _Peer) -> None:
        for cid in peer.cids:
            if self._by_cid.get(cid) is peer:
                del self._by_cid[cid]
        peer.cids.clear()
        self._peers.pop(id(peer), None)

    # ---- output and time ------------------------------------------------------------------

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """Every datagram due now, with its destination; each is returned once."""
        out = self._queued
        self._queued = []
        for peer in list(self._peers.values()):
            if peer.touched or peer.protocol.wants_transmit:
                out.extend(self._collect(peer, now))
        return out

    def _collect(self, peer: _Peer, now: float) -> list[tuple[bytes, Address]]:
        peer.touched = False
        peer.protocol.wants_transmit = False
        quic = peer.quic
        datagrams = quic.datagrams_to_send(now)
        # Writing NEW_CONNECTION_ID frames is what issues new CIDs: map them now, so the
        # client's first packet using one finds its connection.
        while (event := quic.next_event()) is not None:
            if isinstance(event, quic_events.ConnectionIdIssued):
                self._add_cid(peer, event.connection_id)
            else:
                peer.backlog.append(event)
        return datagrams

    def next_deadline(self) -> float | None:
        """When `handle_deadline` must run next (0.0: at once), or None."""
        deadline: float | None = None
        for peer in self._peers.values():
            if peer.backlog:
                return 0.0
            timer = peer.quic.get_timer()
            if timer is not None and (deadline is None or timer < deadline):
                deadline = timer
        return deadline

    def handle_deadline(self, now: float) -> list[EndpointEvent]:
        out: list[EndpointEvent] = []
        for peer in list(self._peers.values()):
            timer = peer.quic.get_timer()
            due = timer is not None and timer <= now
            if due:
                peer.quic.handle_timer(now)
                peer.touched = True
            if due or peer.backlog:
                out.extend(self._service(peer, now))
        return out

    # ---- introspection --------------------------------------------------------------------

    @property
    def connections(self) -> list[HTTP3Protocol]:
        """Every QUIC connection the endpoint holds, handshaking or not."""
        return [peer.protocol for peer in self._peers.values()]

    def connection_ids(self, connection: HTTP3Protocol) -> frozenset[bytes]:
        """The connection IDs that route to `connection` now."""
        return frozenset(cid for cid, peer in self._by_cid.items() if peer.protocol is connection)
