"""The QUIC endpoint, server side: every QUIC connection of one UDP socket, sans-IO.

Theory of operation. A UDP socket has no connections, so this object is what a TCP listener
and its accepted sockets are together: it takes each datagram with the address it came from
(`receive_datagram(data, addr, now)`), finds the QUIC connection it belongs to by its
destination connection ID, hands it to aioquic's `QuicConnection`, and turns what that
connection reports into events for the driver above. Outbound, `datagrams_to_send(now)`
collects the datagrams of every connection that has something to send (plus the endpoint's own
answers: Version Negotiation, Retry, stateless resets), each with the address to send it to.
QUIC's timers (loss detection, ACK delay, pacing, idle timeout, the closing period) are folded
into one deadline for the whole socket: `next_deadline()` / `handle_deadline(now)`. The clock is
always an argument; nothing here reads one, opens a file or touches a socket, and the only
randomness is aioquic's own (connection IDs, TLS).

Work per wake-up follows the connections involved, not all of them. A connection's timer only
moves when the endpoint drives it (a datagram in, datagrams out, its timer), so each time the
endpoint re-reads it and pushes it on a heap; stale heap entries are skipped when they surface,
and the heap is rebuilt when they pile up. Connections with output are found the same way: input
and timers mark them, and HTTP3Protocol reports commands that queued output (`on_transmit`).

Routing is by connection ID, never by address (RFC 9000 5.2, 9): a client that migrates or is
rebound by a NAT keeps its connection, and aioquic validates the new path itself. The map from
connection ID to connection holds the client's first destination CID (until the connection
ends: the client may repeat its Initial with it), the server's first CID, and every CID aioquic
issues (`ConnectionIdIssued`) until the client retires it (`ConnectionIdRetired`). Server CIDs
are `configuration.connection_id_length` bytes long (8 by default), which is how a short-header
packet's destination CID is found.

A datagram that starts nothing and belongs to nothing is dropped after a bounded amount of
work (one header parse, one dict lookup, at most one HMAC); `receive_datagram` reports it as
`DatagramIgnored` so that the driver can log it at debug level. A new connection is only
created for a client Initial of a supported version in a datagram of at least 1200 bytes whose
first packet decrypts; an unsupported version gets a Version Negotiation packet, if the
datagram is large enough to have started a connection.

What keeps state bounded (each is a constructor option, see `QuicEndpoint`):
- `max_connections` connections in all, and `max_handshakes_per_address` connections still
  handshaking per client IP address; an Initial beyond either is dropped.
- Retry (`retry=True`, RFC 9000 8.1.2): a client Initial without a token is answered with a
  Retry packet and forgotten; only an Initial carrying a valid token opens a connection, so a
  spoofed source address never gets state. Tokens are self-contained: the original destination
  CID and an expiry, authenticated together with the client's address and port and the Retry's
  source CID by an HMAC under a key derived from `secret`. The Retry's source CID is itself an
  HMAC of the client's Initial, so nothing random is needed either.
- Stateless reset (RFC 9000 10.3): the reset token of every CID the server issues is
  HMAC(key, CID) truncated to 16 bytes, the static-key design of RFC 9000 10.3.2, so a
  short-header packet for a CID the endpoint does not know (a connection that is gone, or was
  held by an endpoint with the same `secret` before a restart) is answered with a reset the
  client will believe, without any table. aioquic draws reset tokens at random and has no hook
  for them, so `_ServerConnection` overrides the private places where it makes them. Resets are
  smaller than the datagram that triggered them (which ends any reset loop) and limited by a
  token bucket on the injected clock.
- Session tickets (RFC 8446 4.6.1): kept in memory, at most `_TICKETS` of them for
  `_TICKET_LIFETIME` seconds, each usable once (RFC 8446 8.1), so a resumed connection gets a
  fresh ticket and replayed 0-RTT finds none.

0-RTT (`early_data=True`, RFC 9001 4.6, RFC 8470): a client resuming with a ticket may send
requests before the handshake completes. aioquic's server accepts 0-RTT whenever a ticket is
found; with the option off, `_ServerConnection` refuses the 0-RTT keys (the client learns it
from EncryptedExtensions and sends its requests again in 1-RTT) and issues tickets without the
early_data extension. With it on, HTTP3Protocol passes on safe requests that came in early data
at once and holds the others until the handshake completes (RFC 8470 5.1).

Each connection carries one `HTTP3Protocol` (protocol/http3.py). The endpoint reports a
connection once its handshake is complete, or as soon as its 0-RTT was accepted
(`ConnectionOpened(connection)`), then its stream events as they come
(`StreamEvents(connection, events)`), the last of which is `ConnectionClosed`; after that the
connection is gone from the endpoint. Handshakes that never complete (and sent no 0-RTT) never
reach the driver. Stream events are only produced once a connection is reported, so none is
lost.

How the ASGI layer drives this (app/quic.py's `QuicListener`, the UDP socket's datagram
handler, owns the endpoint): for each `ConnectionOpened` it builds one `ConnectionHandler`
around the `HTTP3Protocol`, which has the `ServerProtocol` shape except for input, and passes
each `StreamEvents` batch to that handler's `events_received`. The handler's commands go into
`HTTP3Protocol.send()`, which queues HTTP/3 frames into the QuicConnection; its
`data_to_send()` is always empty. After every wake-up (a batch of datagrams, the timer, the
handlers' output in a loop turn) the listener calls `datagrams_to_send(now)`, `sendto`s the
results and re-arms one `Runtime.call_at` at `next_deadline()`.

Sending is aioquic's, made cheaper where it walked every open stream for every packet:
`_ServerConnection._write_application` hands it only the streams with something to send, a few
at a time, and a stream table holding only the streams whose receive limit may need writing
(receive credit follows what the application reads: protocol/read_credit.py).

Several processes sharing one UDP port: the kernel spreads datagrams by address, so a migrated
client can reach a process that does not hold its connection. That process answers with a
stateless reset, which only ends the connection if both processes derive reset tokens from the
same `secret`: give each process its own unless packets are routed by connection ID. Session
tickets and 0-RTT anti-replay are per process too.

Not done yet: NEW_TOKEN (address validation for a later connection), and CONNECTION_CLOSE with
INVALID_TOKEN for a bad Retry token (RFC 9000 8.1.3 allows dropping it, which is what happens).
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import itertools
import struct
from collections import OrderedDict
from collections.abc import Container, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from aioquic import tls
from aioquic._buffer import Buffer  # aioquic.buffer re-exports it without `as`, which mypy refuses
from aioquic.quic import events as quic_events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection, QuicNetworkPath
from aioquic.quic.packet import (
    QuicHeader,
    QuicPacketType,
    encode_quic_retry,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from aioquic.quic.packet_builder import QuicDeliveryState, QuicPacketBuilder
from aioquic.quic.recovery import QuicPacketSpace
from aioquic.quic.stream import QuicStream

from multicorn.protocol.budget import TokenBucket
from multicorn.protocol.events import ConnectionClosed, Event
from multicorn.protocol.http3 import HTTP3Limits, HTTP3Protocol
from multicorn.protocol.read_credit import ReadCredit

# How many streams with data pending aioquic's packet writer is handed at once (see
# _ServerConnection._write_application).
_SEND_CHUNK = 8

# The socket module's address tuple, handed back to `sendto` as it came.
Address: TypeAlias = tuple[Any, ...]

# RFC 9000 14.1: "A server MUST discard an Initial packet that is carried in a UDP datagram
# with a payload that is smaller than the smallest allowed maximum datagram size of 1200 bytes."
_MIN_INITIAL_DATAGRAM = 1200
# RFC 9000 7.2: the client's first Destination Connection ID "MUST be at least 8 bytes in
# length".
_MIN_ORIGINAL_DCID = 8
_SHORT_DCID = "Initial with a destination connection ID shorter than 8 bytes"
# Tokens carry an expiry (RFC 9000 8.1.3 asks for one); a client returns a Retry token in its
# very next Initial, so a few seconds are plenty and a token captured later is worthless.
_RETRY_TOKEN_LIFETIME = 10.0
# First byte of our Retry tokens: a token without it is not ours (another server's NEW_TOKEN,
# say) and is answered as if there were none (RFC 9000 8.1.3).
_RETRY_TOKEN_MARK = 0x52
_TOKEN_MAC = 16
_TOKEN_FIXED = struct.Struct(">Bd")  # mark, expiry
# RFC 9000 10.3: "Fixed Bits (2) = 1, Unpredictable Bits (38..), Stateless Reset Token (128)":
# at least 5 + 16 bytes.
_MIN_RESET = 21
# RFC 9000 10.3: "An endpoint that sends a Stateless Reset in response to a packet that is 43
# bytes or shorter SHOULD send a Stateless Reset that is one byte shorter than the packet it
# responds to." Larger packets get a reset of this size: big enough not to look like one (10.3.3:
# "A Stateless Reset that is smaller than 41 bytes might be identifiable").
_MAX_RESET = 43
_RESET_RATE = 10.0  # stateless resets per second, on average
_RESET_BURST = 20
_TICKETS = 4096  # session tickets kept (a few hundred bytes each)
_TICKET_LIFETIME = 3600.0  # seconds a session ticket may be used for resumption
# The timer heap is rebuilt once it holds this many entries per connection (most stale).
_HEAP_SLACK = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionOpened:
    """A QUIC connection completed its handshake (or had its 0-RTT accepted): build its
    driver around `connection`."""

    connection: HTTP3Protocol
    addr: Address


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamEvents:
    """Stream events of one connection, in order; `ConnectionClosed` is the last it reports."""

    connection: HTTP3Protocol
    events: list[Event]


@dataclass(frozen=True, slots=True, kw_only=True)
class DatagramIgnored:
    """A datagram that opened nothing and belonged to nothing (worth a debug line at most).
    The endpoint may have answered it (Version Negotiation, Retry, stateless reset): `reason`
    says so."""

    addr: Address
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class HandshakeFailed:
    """A connection ended with an error before its handshake completed (never reported as
    opened); worth a debug line."""

    addr: Address
    reason: str


EndpointEvent = ConnectionOpened | StreamEvents | DatagramIgnored | HandshakeFailed


def _mac(key: bytes, *parts: bytes) -> bytes:
    return hmac.new(key, b"".join(parts), hashlib.sha256).digest()


def _address_bytes(addr: Address) -> bytes:
    # Host and port only: IPv6 tuples also carry flow info and scope, which may vary.
    return repr(tuple(addr[:2])).encode()


class _EveryStream:
    def __contains__(self, stream_id: object) -> bool:
        return True


_EVERY_STREAM = _EveryStream()


class _ServerConnection(QuicConnection):
    """aioquic's QuicConnection with stateless reset tokens derived from a key, 0-RTT refused
    unless it is wanted, and receive credit granted as the application reads (`read_credit`,
    set by HTTP3Protocol: protocol/read_credit.py). aioquic has no public hook for any of these,
    so this overrides seven private methods (`_replenish_connection_ids`, `_initialize`,
    `_update_traffic_key`, `_write_application`, `_write_connection_limits`,
    `_write_stream_limits`, `_on_max_stream_data_delivery`) and writes private attributes
    (`_host_cids`, `tls._max_early_data`, `_local_max_data`, `_streams_queue`, `_streams`). The
    last four methods also make sending cheaper: see `_write_application`."""

    read_credit: ReadCredit | None = None
    # The streams whose limit may grow: read_credit.due once use_read_credit() was called,
    # and every stream before (aioquic's own rule then applies to each).
    _due: Container[int] = _EVERY_STREAM

    def use_read_credit(self, credit: ReadCredit) -> None:
        self.read_credit = credit
        self._due = credit.due

    def __init__(
        self,
        *,
        reset_key: bytes | None,
        early_data: bool,
        configuration: QuicConfiguration,
        original_destination_connection_id: bytes,
        retry_source_connection_id: bytes | None,
        session_ticket_fetcher: tls.SessionTicketFetcher | None,
        session_ticket_handler: tls.SessionTicketHandler | None,
    ) -> None:
        self._reset_key = reset_key
        self._early_data = early_data
        super().__init__(
            configuration=configuration,
            original_destination_connection_id=original_destination_connection_id,
            retry_source_connection_id=retry_source_connection_id,
            session_ticket_fetcher=session_ticket_fetcher,
            session_ticket_handler=session_ticket_handler,
        )
        # The first CID's token goes out in the transport parameters, written when the first
        # Initial is handled: after this.
        self._derive_reset_tokens(everything=True)

    def _derive_reset_tokens(self, *, everything: bool = False) -> None:
        key = self._reset_key
        if key is None:
            return
        for connection_id in self._host_cids:
            # A token already sent is never changed.
            if everything or not connection_id.was_sent:
                connection_id.stateless_reset_token = _mac(key, connection_id.cid)[:16]

    def _replenish_connection_ids(self) -> None:
        # The only place aioquic makes new CIDs; NEW_CONNECTION_ID frames carry them later.
        super()._replenish_connection_ids()
        self._derive_reset_tokens()

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        if not self._early_data:
            # aioquic's server always offers 0-RTT in its tickets (max_early_data_size); a
            # ticket without the early_data extension tells the client not to try.
            self.tls._max_early_data = None

    def _write_application(
        self, builder: QuicPacketBuilder, network_path: QuicNetworkPath, now: float
    ) -> None:
        # aioquic visits every stream of its send queue for every packet it builds (to discard
        # finished streams and write STOP_SENDING, RESET_STREAM or data), and goes on visiting
        # once the packet is full; with many streams open those visits were most of the cost of
        # serving HTTP/3. So it is handed only the streams with something pending, a few at a
        # time: each call fills packets from those few until they have sent what they can,
        # then the next few get their turn. Streams with nothing pending keep their place,
        # ahead of those just served (aioquic's round-robin order).
        #
        # It also asks every open stream, for every packet, whether its receive limit must be
        # written. With read_credit only a few can say yes: the client's unidirectional
        # streams (aioquic's own rule) and those in `due`. For the call its stream table holds
        # only those and the streams handed over; the only other use it makes of the table
        # is removing the streams it discards, which are taken out of the real one after.
        credit = self.read_credit
        idle: list[QuicStream] = []
        busy: list[QuicStream] = []
        limited: dict[int, QuicStream] = {}
        for stream in self._streams_queue:
            sender = stream.sender
            receiver = stream.receiver
            if (
                sender.buffer_is_empty
                and not sender.reset_pending
                and not receiver.stop_pending
                and not (sender.is_finished and receiver.is_finished)
            ):
                idle.append(stream)
            else:
                busy.append(stream)
            stream_id = stream.stream_id
            if stream_id is not None and stream_id & 2 and not stream_id & 1:
                limited[stream_id] = stream  # the client's control and QPACK streams
        if credit is None or (len(busy) <= _SEND_CHUNK and not idle):
            super()._write_application(builder, network_path, now)
            return
        streams = self._streams
        for stream_id in credit.due:
            due = streams.get(stream_id)
            if due is not None:
                limited[stream_id] = due
        done: list[QuicStream] = []  # aioquic's new order for those handed over (discarded gone)
        handed = 0
        try:
            while True:
                chunk = busy[handed : handed + _SEND_CHUNK]
                handed += _SEND_CHUNK
                self._streams_queue = chunk
                table = dict(limited)
                ids = [stream.stream_id for stream in chunk if stream.stream_id is not None]
                table.update(zip(ids, chunk, strict=True))
                self._streams = table
                try:
                    # Raises QuicPacketBuilderStop when the congestion window is full.
                    super()._write_application(builder, network_path, now)
                finally:
                    self._streams = streams
                    for stream_id in ids:
                        if stream_id not in table:
                            streams.pop(stream_id, None)  # aioquic discarded it
                    done.extend(self._streams_queue)
                if handed >= len(busy) or self._pacing_at is not None:
                    break  # all had their turn, or the pacer wants a pause
        finally:
            # Streams not handed over (pacing or a full window stopped the loop) go before
            # those served, as in aioquic's own order.
            self._streams_queue = idle + busy[handed:] + done

    def _on_max_stream_data_delivery(self, delivery: QuicDeliveryState, stream: QuicStream) -> None:
        super()._on_max_stream_data_delivery(delivery, stream)
        credit = self.read_credit
        stream_id = stream.stream_id
        if delivery != QuicDeliveryState.ACKED and credit is not None and stream_id is not None:
            # Lost: the limit must be written again, and only streams in `due` are asked.
            credit.due.add(stream_id)

    def _write_connection_limits(self, builder: QuicPacketBuilder, space: QuicPacketSpace) -> None:
        credit = self.read_credit
        if credit is None:
            super()._write_connection_limits(builder, space)
            return
        max_data = self._local_max_data
        max_data.value = credit.connection_limit(max_data.value)
        # aioquic doubles MAX_DATA once the peer has sent half of it, read or not. With what
        # it has received hidden for this call, it writes only the limit set above (a frame
        # when it changed) and its stream-count limits as usual.
        received = max_data.used
        max_data.used = 0
        try:
            super()._write_connection_limits(builder, space)
        finally:
            max_data.used = received

    def _write_stream_limits(
        self, builder: QuicPacketBuilder, space: QuicPacketSpace, stream: QuicStream
    ) -> None:
        # aioquic calls this for every open stream and every packet it builds, so the usual
        # case comes first and must be cheap: a request stream (bidirectional) nothing was
        # read from, whose last MAX_STREAM_DATA was not lost (aioquic zeroes what it counts
        # as sent then).
        stream_id = stream.stream_id
        if (
            stream.max_stream_data_local_sent == stream.max_stream_data_local
            and stream_id is not None
            and not stream_id & 2
            and stream_id not in self._due
        ):
            return
        credit = self.read_credit
        if credit is None or stream_id is None or stream_id & 2:
            # Unidirectional: the client's control and QPACK streams, which the HTTP/3 layer
            # consumes as they arrive; aioquic's own rule suits them.
            super()._write_stream_limits(builder, space, stream)
            return
        credit.due.discard(stream_id)
        receiver = stream.receiver
        stream.max_stream_data_local = credit.stream_limit(
            stream_id, receiver.starting_offset(), stream.max_stream_data_local
        )
        # As above: aioquic would double the limit once half of it has arrived.
        highest = receiver.highest_offset
        receiver.highest_offset = 0
        try:
            super()._write_stream_limits(builder, space, stream)
        finally:
            receiver.highest_offset = highest

    def _update_traffic_key(
        self,
        direction: tls.Direction,
        epoch: tls.Epoch,
        cipher_suite: tls.CipherSuite,
        secret: bytes,
    ) -> None:
        if (
            not self._early_data
            and direction is tls.Direction.DECRYPT
            and epoch is tls.Epoch.ZERO_RTT
        ):
            # aioquic's TLS accepts early data whenever the client offers it with a valid
            # ticket and installs the 0-RTT keys through this callback, just before it writes
            # EncryptedExtensions. Refusing here leaves the early_data extension out of
            # EncryptedExtensions, which is how a server rejects 0-RTT (RFC 8446 4.2.10); the
            # client's 0-RTT packets then fail to decrypt and it sends their data again.
            self.tls.early_data_accepted = False
            return
        super()._update_traffic_key(direction, epoch, cipher_suite, secret)


class _TicketStore:
    """Session tickets the server issued, by ticket label: bounded, expiring, single-use."""

    def __init__(self) -> None:
        self._tickets: OrderedDict[bytes, tuple[float, tls.SessionTicket]] = OrderedDict()
        self.now = 0.0  # the endpoint's clock, set before aioquic may call in

    def add(self, ticket: tls.SessionTicket) -> None:
        tickets = self._tickets
        tickets[ticket.ticket] = (self.now + _TICKET_LIFETIME, ticket)
        while len(tickets) > _TICKETS:
            tickets.popitem(last=False)

    def take(self, label: bytes) -> tls.SessionTicket | None:
        # RFC 8446 8.1: "Single-Use Tickets [...] the server only allows each session ticket to
        # be used once", which also keeps a replayed 0-RTT flight from being accepted here.
        entry = self._tickets.pop(label, None)
        if entry is None or entry[0] < self.now:
            return None
        return entry[1]

    def __len__(self) -> int:
        return len(self._tickets)


@dataclass(slots=True, eq=False)
class _Peer:
    """One QUIC connection and what the endpoint keeps about it."""

    protocol: HTTP3Protocol
    host: Any  # the client's IP address, for the per-address handshake limit
    cids: set[bytes] = field(default_factory=set)
    announced: bool = False  # ConnectionOpened reported
    handshaking: bool = True  # counted in QuicEndpoint._handshakes
    # The timer its live heap entry carries (None: no entry; heap entries with another value
    # are stale).
    deadline: float | None = None
    # QUIC events that came out of datagrams_to_send (other than connection IDs), handled at
    # the next handle_deadline.
    backlog: list[quic_events.QuicEvent] = field(default_factory=list)

    @property
    def quic(self) -> QuicConnection:
        return self.protocol.quic


class QuicEndpoint:
    """Every QUIC connection of one UDP socket; see the module docstring.

    Options (all keyword-only):
    - `secret`: at least 16 random bytes from the caller (os.urandom(32)), the key for Retry
      tokens and stateless reset tokens. None: no Retry, no stateless resets.
    - `retry`: validate client addresses with Retry before keeping any state (needs `secret`).
    - `max_connections`: connections held at once, handshaking or not.
    - `max_handshakes_per_address`: connections still handshaking per client IP address.
    - `session_tickets`: issue TLS session tickets and resume sessions with them.
    - `early_data`: accept 0-RTT from resumed sessions (needs `session_tickets`).
    """

    def __init__(
        self,
        *,
        configuration: QuicConfiguration,
        now: float,
        limits: HTTP3Limits | None = None,
        secret: bytes | None = None,
        retry: bool = False,
        max_connections: int = 10_000,
        max_handshakes_per_address: int = 32,
        session_tickets: bool = True,
        early_data: bool = False,
    ) -> None:
        if configuration.is_client:
            raise ValueError("QuicEndpoint is the server side: is_client must be False")
        if secret is not None and len(secret) < 16:
            raise ValueError("secret must be at least 16 bytes (os.urandom(32), say)")
        if retry and secret is None:
            raise ValueError("retry needs a secret to authenticate its tokens")
        if max_connections < 1 or max_handshakes_per_address < 1:
            raise ValueError("max_connections and max_handshakes_per_address must be >= 1")
        if early_data and not session_tickets:
            raise ValueError("early_data needs session_tickets: 0-RTT resumes a session")
        self._configuration = configuration
        self._limits = limits if limits is not None else HTTP3Limits()
        self._cid_length = configuration.connection_id_length
        self._versions = frozenset(configuration.supported_versions)
        self._retry_key = None if secret is None else _mac(secret, b"multicorn quic retry")
        self._reset_key = None if secret is None else _mac(secret, b"multicorn quic reset")
        self._retry = retry
        self._max_connections = max_connections
        self._max_handshakes = max_handshakes_per_address
        self._early_data = early_data
        self._tickets = _TicketStore() if session_tickets else None
        self._resets = TokenBucket((_RESET_BURST, _RESET_RATE), now)
        self._by_cid: dict[bytes, _Peer] = {}
        self._peers: dict[int, _Peer] = {}  # by id(), in creation order
        # (timer, tie-breaker, connection): at least one live entry per connection with a timer.
        self._timers: list[tuple[float, int, _Peer]] = []
        self._tie = itertools.count()
        self._dirty: dict[int, _Peer] = {}  # may have output: collect at datagrams_to_send
        self._backlogged: dict[int, _Peer] = {}  # events waiting for handle_deadline
        self._handshakes: dict[Any, int] = {}  # client IP -> connections still handshaking
        # Datagrams due but not collected yet: the endpoint's own answers, new connections'
        # first flights.
        self._queued: list[tuple[bytes, Address]] = []

    # ---- input ----------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> list[EndpointEvent]:
        if self._tickets is not None:
            self._tickets.now = now
        peer_or_reason = self._route(data, addr, now)
        if isinstance(peer_or_reason, str):
            return [DatagramIgnored(addr=addr, reason=peer_or_reason)]
        peer = peer_or_reason
        fresh = id(peer) not in self._peers
        peer.quic.receive_datagram(data, addr, now)
        if fresh:
            # A connection is only kept once its first datagram held a packet that decrypted:
            # that always calls for an answer (an ACK and the server's Initial), garbage never
            # does. Without this check each spoofed 1200-byte "Initial" would hold state until
            # the idle timeout.
            first = self._collect(peer, now)
            if not first:
                return [DatagramIgnored(addr=addr, reason="Initial that does not decrypt")]
            self._peers[id(peer)] = peer
            self._handshakes[peer.host] = self._handshakes.get(peer.host, 0) + 1
            for cid in peer.cids:
                self._by_cid[cid] = peer
            self._queued.extend(first)
        else:
            self._dirty[id(peer)] = peer
        out = self._service(peer, now)
        self._schedule(peer)
        return out

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
        if header.packet_type is QuicPacketType.ONE_RTT:
            return self._stateless_reset(data, addr, now)
        if header.packet_type is not QuicPacketType.INITIAL:
            # 0-RTT that overtook its Initial is lost; the client sends it again.
            return f"unknown connection ID ({header.packet_type.name})"
        if len(data) < _MIN_INITIAL_DATAGRAM:
            # RFC 9000 14.1: "A server MUST discard an Initial packet that is carried in a UDP
            # datagram with a payload that is smaller than the smallest allowed maximum
            # datagram size of 1200 bytes."
            return f"Initial in a {len(data)}-byte datagram"
        if len(self._peers) >= self._max_connections:
            return f"Initial dropped: {self._max_connections} connections already"
        original_dcid = header.destination_cid
        retry_scid: bytes | None = None
        if self._retry:
            # After a Retry the client's destination CID is the Retry's source CID; the
            # original one (checked below before the Retry was sent) is in the token.
            checked = self._check_retry_token(header, addr, now)
            if isinstance(checked, str):
                return checked
            original_dcid, retry_scid = checked, header.destination_cid
        elif len(original_dcid) < _MIN_ORIGINAL_DCID:
            return _SHORT_DCID
        host = addr[0] if addr else None
        if self._handshakes.get(host, 0) >= self._max_handshakes:
            return f"Initial dropped: {self._max_handshakes} handshakes already from {host}"
        return self._open(header.destination_cid, original_dcid, retry_scid, host, now)

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

    # ---- Retry (RFC 9000 8.1.2, 17.2.5) -------------------------------------------------------

    def _check_retry_token(self, header: QuicHeader, addr: Address, now: float) -> bytes | str:
        """The original destination CID a valid Retry token carries, or why the Initial is
        dropped (having sent a Retry when it had no token of ours)."""
        key = self._retry_key
        assert key is not None
        token = header.token
        if not token or token[0] != _RETRY_TOKEN_MARK:
            # RFC 9000 8.1.2: "A server can also use a Retry packet to defer the state and
            # processing costs of connection establishment." A token that is not ours counts
            # as none (8.1.3: the server "SHOULD proceed as if the client did not have a
            # validated address, including potentially sending a Retry packet").
            return self._send_retry(header, addr, now, key)
        fixed = _TOKEN_FIXED.size
        if len(token) < fixed + 1 + _TOKEN_MAC:
            return "Initial with a malformed Retry token"
        body, mac = token[:-_TOKEN_MAC], token[-_TOKEN_MAC:]
        # The address, port and Retry source CID are bound by the MAC, not carried: RFC 9000
        # 17.2.5.2 has the client send its next Initial to the Retry's source CID, which is
        # this packet's destination CID.
        expected = _mac(key, body, _address_bytes(addr), header.destination_cid)[:_TOKEN_MAC]
        if not hmac.compare_digest(mac, expected):
            # RFC 9000 8.1.2: "The server can discard such a packet and allow the client to
            # time out to detect handshake failure" (rather than close with INVALID_TOKEN).
            return "Initial with an invalid Retry token"
        _mark, expiry = _TOKEN_FIXED.unpack_from(body)
        if now > expiry:
            return "Initial with an expired Retry token"
        odcid_length = body[fixed]
        original_dcid = body[fixed + 1 :]
        if len(original_dcid) != odcid_length:
            return "Initial with a malformed Retry token"
        return original_dcid

    def _send_retry(self, header: QuicHeader, addr: Address, now: float, key: bytes) -> str:
        if len(header.destination_cid) < _MIN_ORIGINAL_DCID:
            return _SHORT_DCID
        # The Retry's source CID, which the client uses from now on: unpredictable without the
        # key and the same for a repeated Initial, with no randomness needed here.
        scid = _mac(key, b"scid", header.destination_cid, header.source_cid, _address_bytes(addr))
        scid = scid[: self._cid_length]
        body = _TOKEN_FIXED.pack(_RETRY_TOKEN_MARK, now + _RETRY_TOKEN_LIFETIME)
        body += bytes([len(header.destination_cid)]) + header.destination_cid
        token = body + _mac(key, body, _address_bytes(addr), scid)[:_TOKEN_MAC]
        assert header.version is not None  # an Initial has a long header
        # RFC 9000 17.2.5.1: "A server MUST NOT send more than one Retry packet in response to
        # a single UDP datagram." One Initial, one Retry; nothing is kept.
        retry = encode_quic_retry(
            version=header.version,
            source_cid=scid,
            destination_cid=header.source_cid,
            original_destination_cid=header.destination_cid,
            retry_token=token,
        )
        self._queued.append((retry, addr))
        return "Initial without a token: answered with Retry"

    # ---- stateless reset (RFC 9000 10.3) ------------------------------------------------------

    def _stateless_reset(self, data: bytes, addr: Address, now: float) -> str:
        reason = "unknown connection ID (ONE_RTT)"
        key = self._reset_key
        if key is None:
            return reason
        # RFC 9000 10.3.3: "An endpoint MUST ensure that every Stateless Reset that it sends is
        # smaller than the packet that triggered it"; RFC 9000 10.3: "An endpoint MUST NOT send
        # a Stateless Reset that is three times or more larger than the packet it receives".
        size = min(len(data) - 1, _MAX_RESET)
        if size < _MIN_RESET:
            return f"{reason}, too short for a stateless reset"
        # RFC 9000 10.3.3: "An endpoint can remember the number of Stateless Resets that it has
        # sent and stop generating new Stateless Resets once a limit is reached."
        if not self._resets.take(now):
            return f"{reason}, stateless reset rate limit reached"
        cid = data[1 : 1 + self._cid_length]
        # RFC 9000 10.3: the unpredictable bits "SHOULD be indistinguishable from random"; a
        # MAC of the trigger is, and needs no source of randomness.
        filler = _mac(key, b"fill", data)[: size - 16]
        first = 0x40 | (filler[0] & 0x3F)  # a short header: form 0, fixed bit 1
        token = _mac(key, cid)[:16]
        self._queued.append((bytes([first]) + filler[1:] + token, addr))
        return f"{reason}: answered with a stateless reset"

    # ---- connections ----------------------------------------------------------------------

    def _open(
        self,
        client_dcid: bytes,
        original_dcid: bytes,
        retry_scid: bytes | None,
        host: Any,
        now: float,
    ) -> _Peer:
        tickets = self._tickets
        quic = _ServerConnection(
            reset_key=self._reset_key,
            early_data=self._early_data,
            configuration=self._configuration,
            original_destination_connection_id=original_dcid,
            retry_source_connection_id=retry_scid,
            session_ticket_fetcher=None if tickets is None else tickets.take,
            session_ticket_handler=None if tickets is None else tickets.add,
        )
        # aioquic has no setting for it (it always offers 128); the transport parameters are
        # written from this value when the first Initial is handled, after this.
        quic._local_max_streams_bidi.value = self._limits.max_concurrent_streams

        def on_transmit() -> None:
            # Commands queued output: collect it at the next datagrams_to_send. (`peer` is
            # bound below, before anything can be queued.)
            self._dirty[id(peer)] = peer

        protocol = HTTP3Protocol(quic=quic, limits=self._limits, now=now, on_transmit=on_transmit)
        quic.use_read_credit(protocol.read_credit)
        peer = _Peer(protocol=protocol, host=host)
        # Registered in the routing map once its first datagram proves it real (see
        # receive_datagram).
        peer.cids.update((client_dcid, quic.host_cid))
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
            self._backlogged.pop(id(peer), None)
            for event in self._quic_events(peer, pending):
                events.extend(protocol.quic_event_received(event, now))
            events.extend(protocol.upkeep(now))
        except Exception as exc:
            # A fault outside any stream (the protocol contains its streams' own): this
            # connection goes, the endpoint and every other connection carry on. Its
            # CONNECTION_CLOSE goes out with the next datagrams.
            events.extend(protocol.fail(exc))
            self._queued.extend(peer.quic.datagrams_to_send(now))
            self._forget(peer)
        if peer.handshaking and protocol.handshake_complete:
            self._handshake_done(peer)
        out: list[EndpointEvent] = []
        if not peer.announced and (protocol.handshake_complete or protocol.early_data_accepted):
            # With 0-RTT accepted, requests arrive before the handshake completes.
            peer.announced = True
            addr = protocol.peer_address or ()
            out.append(ConnectionOpened(connection=protocol, addr=addr))
        if events and peer.announced:
            out.append(StreamEvents(connection=protocol, events=events))
        elif events and type(events[-1]) is ConnectionClosed and events[-1].error is not None:
            # A handshake that failed (the client refused our certificate, say) never reached
            # the layer above; it still deserves a debug line there.
            out.append(
                HandshakeFailed(addr=protocol.peer_address or (), reason=str(events[-1].error))
            )
        return out

    def _handshake_done(self, peer: _Peer) -> None:
        peer.handshaking = False
        count = self._handshakes.get(peer.host, 0) - 1
        if count > 0:
            self._handshakes[peer.host] = count
        else:
            self._handshakes.pop(peer.host, None)

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
        self._dirty.pop(id(peer), None)
        self._backlogged.pop(id(peer), None)
        peer.deadline = None  # its heap entries are stale now
        if self._peers.pop(id(peer), None) is not None and peer.handshaking:
            self._handshake_done(peer)

    # ---- output and time ------------------------------------------------------------------

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """Every datagram due now, with its destination; each is returned once."""
        out = self._queued
        self._queued = []
        dirty = self._dirty
        self._dirty = {}
        peers = self._peers
        for key, peer in dirty.items():
            if peers.get(key) is peer:
                out.extend(self._collect(peer, now))
                self._schedule(peer)
        return out

    def _collect(self, peer: _Peer, now: float) -> list[tuple[bytes, Address]]:
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
                self._backlogged[id(peer)] = peer
        return datagrams

    def _schedule(self, peer: _Peer) -> None:
        """Put the connection's timer on the heap, after anything that may have moved it."""
        if self._peers.get(id(peer)) is not peer:
            return
        timer = peer.quic.get_timer()
        if timer == peer.deadline:
            return
        peer.deadline = timer
        if timer is None:
            return
        timers = self._timers
        heapq.heappush(timers, (timer, next(self._tie), peer))
        if len(timers) > _HEAP_SLACK * len(self._peers) + 64:
            # Mostly stale entries (each move of a timer leaves one): keep the live ones.
            self._timers = timers = [entry for entry in timers if entry[2].deadline == entry[0]]
            heapq.heapify(timers)

    def _live(self, entry: tuple[float, int, _Peer]) -> bool:
        peer = entry[2]
        return peer.deadline == entry[0] and self._peers.get(id(peer)) is peer

    def next_deadline(self) -> float | None:
        """When `handle_deadline` must run next (0.0: at once), or None."""
        if self._backlogged:
            return 0.0
        timers = self._timers
        while timers:
            if self._live(timers[0]):
                return timers[0][0]
            heapq.heappop(timers)
        return None

    def handle_deadline(self, now: float) -> list[EndpointEvent]:
        if self._tickets is not None:
            self._tickets.now = now
        due: dict[int, _Peer] = {}
        timers = self._timers
        while timers and timers[0][0] <= now:
            entry = heapq.heappop(timers)
            if self._live(entry):
                peer = entry[2]
                peer.deadline = None  # its entry is used up: _schedule pushes a new one
                due[id(peer)] = peer
        due.update(self._backlogged)
        out: list[EndpointEvent] = []
        peers = self._peers
        for key, peer in due.items():
            if peers.get(key) is not peer:
                continue  # ended while an earlier one was handled
            # aioquic's handle_timer relies on what get_timer computed (its loss timer).
            timer = peer.quic.get_timer()
            fired = timer is not None and timer <= now
            if fired:
                peer.quic.handle_timer(now)
                self._dirty[key] = peer
            if fired or peer.backlog:
                out.extend(self._service(peer, now))
            self._schedule(peer)
        return out

    # ---- introspection --------------------------------------------------------------------

    @property
    def connections(self) -> list[HTTP3Protocol]:
        """Every QUIC connection the endpoint holds, handshaking or not."""
        return [peer.protocol for peer in self._peers.values()]

    @property
    def handshaking(self) -> int:
        """How many of those connections have not completed their handshake."""
        return sum(self._handshakes.values())

    @property
    def session_tickets(self) -> int:
        """How many session tickets the endpoint holds."""
        return 0 if self._tickets is None else len(self._tickets)

    def connection_ids(self, connection: HTTP3Protocol) -> frozenset[bytes]:
        """The connection IDs that route to `connection` now."""
        return frozenset(cid for cid, peer in self._by_cid.items() if peer.protocol is connection)
