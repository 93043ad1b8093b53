"""The HTTP/3 side of one UDP socket: the QUIC endpoint, one `ConnectionHandler` per QUIC
connection, and the one timer that drives every connection's QUIC clocks.

The backend sees a `DatagramHandler` (`QuicListener`); it only moves datagrams. Everything
else is runtime-neutral and lives here once for asyncio and trio:
- each datagram goes into `protocol.quic.QuicEndpoint`; a connection whose handshake
  completed (`ConnectionOpened`) gets a `ConnectionHandler` around its `HTTP3Protocol`, the same
  driver as HTTP/1.1 and HTTP/2, so streams reach the same ASGI bridges;
- its stream events (`StreamEvents`) go to that handler's `events_received`;
- after every wake-up (a batch of datagrams, the timer, a handler's upkeep when an app task
  sent something) the endpoint's due datagrams are sent and the single timer is re-armed at
  the endpoint's `next_deadline()`. While a batch of datagrams is handled, handlers' upkeep
  only marks output due, and one flush at `batch_done()` sends it all.

A handler's `Transport` is `_QuicConnectionTransport`: nothing is ever written to it (an HTTP/3
core queues its output into the QUIC connection), reading needs no pausing (receive credit
follows what the application reads: protocol/read_credit.py), `close()` only sends what the
core queued (the QUIC connection closes itself once drained) and `abort()` closes the QUIC
connection at once.

Shutdown: the backend keeps the UDP socket open through the graceful drain (a QUIC connection
cannot outlive it); each connection is drained by its handler like any other (GOAWAY, streams
finish, CONNECTION_CLOSE). A connection whose handshake completes during the drain is told to
go away at once. When the socket closes, every connection still open is lost.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, cast

from multicorn.app.connection import ConnectionHandler
from multicorn.app.context import ConnectionInfo
from multicorn.protocol.events import ConnectionClosed
from multicorn.protocol.quic import (
    ConnectionOpened,
    DatagramIgnored,
    HandshakeFailed,
    StreamEvents,
)

if TYPE_CHECKING:
    from multicorn.app.context import ServerContext
    from multicorn.app.registry import ConnectionRegistry
    from multicorn.protocol.base import ServerProtocol
    from multicorn.protocol.http3 import HTTP3Protocol
    from multicorn.protocol.quic import EndpointEvent, QuicEndpoint
    from multicorn.runtime.base import (
        DatagramAddress,
        DatagramTransport,
        Runtime,
        TimerHandle,
    )

# TLS 1.3, as the ASGI `tls` extension numbers versions (QUIC always runs TLS 1.3, RFC 9001 4.2).
_TLS_1_3 = 0x0304


class QuicListener:
    """The `DatagramHandler` of one UDP socket serving HTTP/3; see the module docstring."""

    def __init__(
        self,
        *,
        transport: DatagramTransport,
        runtime: Runtime,
        endpoint: QuicEndpoint,
        context: ServerContext,
        registry: ConnectionRegistry,
        server: tuple[str, int | None] | None,
        server_cert: str | None,
    ) -> None:
        self._transport = transport
        self._runtime = runtime
        self._endpoint = endpoint
        self._context = context
        self._registry = registry
        self._server = server
        self._server_cert = server_cert
        self._handlers: dict[HTTP3Protocol, ConnectionHandler] = {}
        self._timer: TimerHandle | None = None
        self._timer_at: float | None = None
        self._busy = False  # handling input: output is flushed once at the end
        self._flush_scheduled = False
        self._closed = False

    def replace_server_cert(self, server_cert: str | None) -> None:
        """The certificate the `tls` extension names from now on (after a TLS reload)."""
        self._server_cert = server_cert

    # ---- from the backend -----------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: DatagramAddress) -> None:
        if self._closed:
            return
        # Output waits for batch_done(): building packets costs about the same for one
        # datagram's answer as for a whole batch's.
        self._busy = True
        self._handle(self._endpoint.receive_datagram(data, addr, self._runtime.now()))

    def batch_done(self) -> None:
        self._busy = False
        self.flush()

    def connection_lost(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for handler in list(self._handlers.values()):
            handler.connection_lost()
        self._handlers.clear()

    # ---- output and time ------------------------------------------------------------------

    def flush_soon(self) -> None:
        """A handler queued output: send it once the tasks ready now have run, together with
        whatever the others queue in the same loop turn (packets come out fuller, and every
        collection costs aioquic a pass over its streams)."""
        if not self._flush_scheduled and not self._closed:
            self._flush_scheduled = True
            self._runtime.call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        self.flush()

    def flush(self) -> None:
        """Send every datagram due and re-arm the timer (a no-op while input is handled)."""
        if self._busy or self._closed:
            return
        endpoint = self._endpoint
        now = self._runtime.now()
        sendto = self._transport.sendto
        for data, addr in endpoint.datagrams_to_send(now):
            sendto(data, addr)
        deadline = endpoint.next_deadline()
        if deadline is None:
            return
        # Lazy, as for TCP connections: a timer armed earlier than needed fires, finds nothing
        # due and is re-armed; only an earlier deadline replaces it.
        if self._timer_at is None or deadline < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = self._runtime.call_at(deadline, self._deadline_reached)

    def _deadline_reached(self) -> None:
        self._timer = None
        self._timer_at = None
        if self._closed:
            return
        self._busy = True
        try:
            self._handle(self._endpoint.handle_deadline(self._runtime.now()))
        finally:
            self._busy = False
        self.flush()

    # ---- endpoint events ------------------------------------------------------------------

    def _handle(self, events: list[EndpointEvent]) -> None:
        for event in events:
            if type(event) is StreamEvents:
                handler = self._handlers.get(event.connection)
                if handler is None:
                    continue
                client = _client(event.connection.peer_address)
                if client != handler.info.client:
                    # RFC 9000 9: the client migrated (or a NAT rebound it) and the new path
                    # was validated; scopes from now on name where it is.
                    handler.info = dataclasses.replace(handler.info, client=client)
                handler.events_received(event.events)
                if type(event.events[-1]) is ConnectionClosed:
                    # The endpoint's last word on this connection: it is gone.
                    del self._handlers[event.connection]
                    handler.connection_lost()
            elif type(event) is ConnectionOpened:
                self._open(event)
            elif type(event) is DatagramIgnored:
                self._context.loggers.error.debug(
                    "QUIC: dropped a datagram from %s: %s", _host(event.addr), event.reason
                )
            elif type(event) is HandshakeFailed:
                self._context.loggers.error.debug(
                    "QUIC: handshake with %s failed: %s", _host(event.addr), event.reason
                )

    def _open(self, event: ConnectionOpened) -> None:
        protocol = event.connection
        addr = event.addr
        client = _client(addr)
        trust = self._context.settings.proxy_trust
        info = ConnectionInfo(
            client=client,
            server=self._server,
            scheme="https",
            tls=_tls_extension(protocol, self._server_cert),
            forwarder=None if trust is None else trust.for_peer(client),
        )
        handler = ConnectionHandler(
            # The ServerProtocol shape but for input: this handler is fed by events_received,
            # never data_received, so receive_data is never asked of it.
            protocol=cast("ServerProtocol", protocol),
            transport=_QuicConnectionTransport(self, protocol),
            runtime=self._runtime,
            context=self._context,
            info=info,
            registry=self._registry,
            flush=self.flush_soon,
        )
        self._handlers[protocol] = handler  # shut down at once if the server is draining


class _QuicConnectionTransport:
    """The `Transport` of one QUIC connection's handler; see the module docstring."""

    __slots__ = ("_listener", "_protocol")

    def __init__(self, listener: QuicListener, protocol: HTTP3Protocol) -> None:
        self._listener = listener
        self._protocol = protocol

    @property
    def closes_by_itself(self) -> bool:
        return True  # the endpoint runs the closing period; no task of the handler's is needed

    def write(self, data: bytes) -> None:
        pass  # never called: an HTTP/3 core's data_to_send() is empty, its output is QUIC's

    def close(self) -> None:
        self._listener.flush()  # the CONNECTION_CLOSE the core queued goes out now

    def abort(self) -> None:
        self._protocol.abort()
        self._listener.flush()

    def set_reading(self, enabled: bool) -> None:
        pass  # never needed: a client may only send as far as its receive credit goes

    def set_deadline(self, deadline: float | None) -> None:
        pass  # an HTTP/3 core has no deadline of its own: QUIC's are the endpoint's


def _tls_extension(protocol: HTTP3Protocol, server_cert: str | None) -> dict[str, object]:
    """The ASGI `tls` extension for a QUIC connection. Client certificates are never asked for
    (see net/quic.py), so the client fields are empty."""
    return {
        "server_cert": server_cert,
        "client_cert_chain": [],
        "client_cert_name": None,
        "client_cert_error": None,
        "tls_version": _TLS_1_3,
        "cipher_suite": protocol.cipher_suite,
    }


def _client(addr: tuple[object, ...] | None) -> tuple[str, int] | None:
    if addr is None or len(addr) < 2:
        return None
    return (str(addr[0]), int(str(addr[1])))


def _host(addr: DatagramAddress) -> str:
    return f"{addr[0]}:{addr[1]}" if len(addr) >= 2 else repr(addr)
