"""One client connection, runtime-neutral: the loop between protocol core, backend and app tasks.

The backend calls in when bytes arrive, the peer closes, a deadline passes or the transport's
buffer fills or drains. Each call runs the protocol synchronously, routes its events to
streams (spawning one application task per request), then does the single piece of upkeep every
wake-up needs: write what the protocol produced, honour `wants_read`, close if the protocol is
done, re-arm the one deadline. Application tasks come back in through `send()`.

Which bridge serves a stream comes from the kind its core reports (app/dispatch.py). Faults stay
where they happen: whatever raises while one stream's event is handled is logged once and costs
that stream (a 500 if its response has not started, else a reset), not the connection; a fault
below the streams (in the protocol core) costs this connection, never the worker. Dropping the
socket (`abort`) and ending the application tasks (`cancel_tasks`) are separate decisions.

```mermaid
sequenceDiagram
    backend->>handler: data_received(bytes)
    handler->>protocol: receive_data(bytes, now)
    protocol-->>handler: [RequestReceived, DataReceived, ...]
    handler->>stream: spawn run() / data_received / ended
    stream->>handler: send(SendResponse, SendData)
    handler->>protocol: send(command, now)
    handler->>backend: write(protocol.data_to_send())
```
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING
from urllib.parse import unquote_to_bytes

from multicorn.app.http import error_response
from multicorn.app.logs import AccessRecord, log_access
from multicorn.app.scope import split_target
from multicorn.protocol.errors import LocalProtocolError, PeerAbuse
from multicorn.protocol.events import (
    AcknowledgeData,
    CloseConnection,
    Command,
    ConnectionClosed,
    DataReceived,
    Event,
    RequestReceived,
    RequestRejected,
    ResetStream,
    SendData,
    SendResponse,
    StreamEnded,
    StreamKind,
    StreamReset,
    UpgradeRequested,
)
from multicorn.protocol.negotiate import upgrade

# Looking an enum member up through its class costs ~150 ns on CPython 3.11; this runs per request.
_REQUEST = StreamKind.REQUEST

# A stream's body may run this far ahead of the peer's flow-control window before send() waits.
_STREAM_BACKLOG = 64 * 1024

# Sent with the 503 of a request refused by `limit_concurrency` (RFC 9110 10.2.3): streams on a
# busy server usually end within a second, and a client that honours it retries soon but not
# at once.
_BUSY_HEADERS = [(b"retry-after", b"1")]

if TYPE_CHECKING:
    from collections.abc import Callable

    from multicorn.app.context import ConnectionInfo, ServerContext
    from multicorn.app.dispatch import StreamBridge
    from multicorn.app.registry import ConnectionRegistry
    from multicorn.protocol.base import ServerProtocol
    from multicorn.protocol.events import Headers
    from multicorn.runtime.base import Runtime, TaskHandle, TimerHandle, Transport, Waiter


class ConnectionHandler:
    """See the module docstring."""

    def __init__(
        self,
        *,
        protocol: ServerProtocol,
        transport: Transport,
        runtime: Runtime,
        context: ServerContext,
        info: ConnectionInfo,
        registry: ConnectionRegistry,
        flush: Callable[[], None] | None = None,
    ) -> None:
        self.protocol = protocol
        self.transport = transport
        self.runtime = runtime
        self.context = context
        self.info = info
        self._registry = registry
        self._streams: dict[int, StreamBridge] = {}
        self._backlogged: dict[int, Waiter] = {}  # streams waiting for flow control
        self._held: list[Event] = []  # events held while the output drains (see _dispatch)
        self._stall_timer: TimerHandle | None = None
        self._tasks: dict[int, TaskHandle] = {}
        self._writable = runtime.waiter()
        self._writable.set()
        self._reading = True
        self._deadline: float | None = None
        self._transport_closed = False
        self._lost = False
        self._flush_scheduled = False
        self._unflushed = 0  # body bytes sent to a multiplexed protocol since the last write
        # The bridge of ordinary requests, looked up once: StreamKind is a plain Enum, whose hash
        # is a Python-level call, and nearly every stream is a request.
        self._request_bridge = context.bridges.get(StreamKind.REQUEST)
        # Streams served at once, server-wide (0: no cap). Read once: it never changes, and a
        # disabled limit then costs one test per stream.
        self._limit = context.settings.limit_concurrency
        # Called after each upkeep when the protocol's output is not bytes for this transport
        # (HTTP/3: queued into a QUIC connection that the endpoint sends datagrams for).
        self._flush = flush
        registry.add(self)
        self._upkeep()
        if registry.draining:
            # Accepted just before the listener closed, or a QUIC handshake completing on a
            # socket kept open for the drain: the server is going away, so this connection
            # takes no more than what is already on its way.
            self.shutdown(registry.restarting)

    # ---- from the backend -----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        try:
            self._dispatch(self.protocol.receive_data(data, self.runtime.now()))
            self._upkeep()
        except Exception as exc:
            self._broken(exc)

    def eof_received(self) -> None:
        self.data_received(b"")

    def events_received(self, events: list[Event]) -> None:
        """The twin of `data_received` for a core fed from elsewhere (HTTP/3: the QUIC
        endpoint turns datagrams into this connection's stream events)."""
        try:
            self._dispatch(events)
            self._upkeep()
        except Exception as exc:
            self._broken(exc)

    def deadline_reached(self) -> None:
        self._deadline = None
        try:
            self._dispatch(self.protocol.handle_deadline(self.runtime.now()))
            self._upkeep()
        except Exception as exc:
            self._broken(exc)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        if self._held:
            # Pipelined requests held back while the output could not drain (see _dispatch).
            held, self._held = self._held, []
            try:
                self._dispatch(held)
                self._upkeep()
            except Exception as exc:
                self._broken(exc)

    def connection_lost(self) -> None:
        if self._lost:
            return
        self._lost = True
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        self._held.clear()
        self._transport_closed = True
        self._writable.set()  # nobody may stay blocked on a dead socket
        for waiter in self._backlogged.values():
            waiter.set()
        self._backlogged.clear()
        self._streams_gone()
        self._check_finished()

    # ---- from the server ------------------------------------------------------------------

    def shutdown(self, restart: bool = False) -> None:
        """Graceful: finish in-flight requests, accept no new ones, close when idle. `restart`:
        another process takes over the listener (see `CloseConnection.idle_grace`)."""
        if not self._transport_closed:
            try:
                self.send(CloseConnection(idle_grace=restart))
            except Exception as exc:
                self._broken(exc)  # one broken connection must not stop the server's drain
                return
            for stream in list(self._streams.values()):
                try:
                    stream.going_away(restart)  # a WebSocket starts its closing handshake
                except Exception as exc:
                    self._stream_failed(stream.stream_id, exc)

    def abort(self) -> None:
        """Drop the socket now, unsent data and all. The streams learn at once that their peer
        is gone (their next send() raises), so nothing goes on waiting on this connection; their
        tasks run on until they return or `cancel_tasks()` ends them."""
        if not self._transport_closed:
            self._transport_closed = True
            self.transport.abort()
        # Some loops report the loss a turn or more later: the streams learn of it now.
        self._writable.set()
        for waiter in self._backlogged.values():
            waiter.set()
        self._backlogged.clear()
        self._streams_gone()

    def cancel_tasks(self) -> None:
        """Cancel this connection's application tasks (the graceful period is over, or the peer
        is abusive). The socket is left as it is: that is `abort()`."""
        for task in list(self._tasks.values()):
            task.cancel()

    @property
    def finished(self) -> bool:
        """No task is left and the socket is gone, or closing without needing us (a TLS
        close_notify the peer never answers must not hold up a graceful shutdown)."""
        if self._streams:
            return False
        return self._lost or (self._transport_closed and self.transport.closes_by_itself)

    # ---- from streams ---------------------------------------------------------------------

    def send(self, *commands: Command) -> None:
        if self._transport_closed:
            return
        now = self.runtime.now()
        protocol = self.protocol
        try:
            for command in commands:
                events = protocol.send(command, now)
                if events:  # most commands release nothing
                    self._dispatch(events)
        except LocalProtocolError:
            raise  # the application asked for something the protocol forbids: its error
        except Exception as exc:
            # A fault below the streams: it costs this connection, and the app's send() sees
            # a peer that is gone rather than a bug of ours.
            self._broken(exc)
            return
        if protocol.multiplexed:
            for command in commands:
                if type(command) is SendData:
                    self._unflushed += len(command.data)
            if self._unflushed > _STREAM_BACKLOG:
                # Past the transport's high-water mark: write now, so that the transport can
                # push back (pause_writing) before an app that never yields queues it all here.
                self._guarded_upkeep()
            elif not self._flush_scheduled:
                # Many streams answer in the same loop turn: write once for all of them.
                self._flush_scheduled = True
                self.runtime.call_soon(self._deferred_upkeep)
        else:
            try:  # _guarded_upkeep(), inlined: once or twice per request
                self._upkeep()
            except Exception as exc:
                self._broken(exc)

    def _stalled(self) -> None:
        self._stall_timer = None
        if self._held and not self._writable.is_set():
            self.context.loggers.error.debug(
                "closing connection from %s: nothing read for %s s",
                _peer(self.info),
                self.context.settings.send_timeout,
            )
            self._held.clear()
            self.abort()

    def _deferred_upkeep(self) -> None:
        self._flush_scheduled = False
        self._guarded_upkeep()

    def _guarded_upkeep(self) -> None:
        try:
            self._upkeep()
        except Exception as exc:
            self._broken(exc)

    async def drain(self, stream_id: int) -> None:
        """Backpressure for `send()`: wait while the transport's buffer is above its mark, and
        while this stream has more queued than flow control lets out (HTTP/2)."""
        if not self._writable.is_set():
            timeout = self.context.settings.send_timeout
            if not await self.runtime.wait_for(self._writable, timeout):
                # The peer stopped reading altogether: a slow-read attack or a dead client.
                self.context.loggers.error.debug(
                    "closing connection from %s: nothing read for %s s", _peer(self.info), timeout
                )
                self.abort()  # the app's next send() raises; its task runs on to clean up
                return
        while self.protocol.pending_send(stream_id) > _STREAM_BACKLOG and not self._lost:
            waiter = self._backlogged.get(stream_id)
            if waiter is None:
                waiter = self._backlogged[stream_id] = self.runtime.waiter()
            waiter.clear()
            await waiter.wait()

    # ---- internals ------------------------------------------------------------------------

    def _dispatch(self, events: list[Event]) -> None:
        if self._held or (
            not self._writable.is_set()
            and not self.protocol.multiplexed
            and any(type(event) is RequestReceived for event in events)
        ):
            # HTTP/1.1: a client that pipelines requests without reading the answers would
            # have every answer pile up in the transport's buffer (each request a few dozen
            # bytes, each answer any size). The next request waits until the output drains
            # (resume_writing), in order with everything after it; the core reads no more
            # meanwhile, as it holds no more than one request ahead.
            if not self._held and self._stall_timer is None:
                # A client that never reads must not hold the connection forever either.
                timeout = self.context.settings.send_timeout
                self._stall_timer = self.runtime.call_at(
                    self.runtime.now() + timeout, self._stalled
                )
            self._held.extend(events)
            return
        for event in events:
            try:
                # The two events of every request first, by exact type (cheaper than
                # isinstance; neither has subclasses); the rest by isinstance.
                if type(event) is RequestReceived:
                    self._open_stream(event)
                elif type(event) is StreamEnded:
                    stream = self._streams.get(event.stream_id)
                    if stream is not None:
                        stream.ended()
                elif isinstance(event, DataReceived):
                    stream = self._streams.get(event.stream_id)
                    if stream is not None:
                        stream.data_received(event.data)
                    else:
                        # Body of a stream nobody serves (answered already): the flow-control
                        # window it used must still come back, or the connection stalls.
                        self._dispatch(
                            self.protocol.send(
                                AcknowledgeData(stream_id=event.stream_id, amount=len(event.data)),
                                self.runtime.now(),
                            )
                        )
                elif isinstance(event, StreamReset):
                    waiter = self._backlogged.pop(event.stream_id, None)
                    if waiter is not None:
                        waiter.set()
                    stream = self._streams.get(event.stream_id)
                    if stream is not None:
                        stream.client_gone()
                elif isinstance(event, RequestRejected):
                    self._reject(event)
                elif isinstance(event, ConnectionClosed):
                    self._closed(event)
                elif isinstance(event, UpgradeRequested):
                    self._upgrade(event)
            except Exception as exc:
                if isinstance(event, (ConnectionClosed, UpgradeRequested)):
                    raise  # not one stream's: the connection's guard takes it
                self._stream_failed(event.stream_id, exc)

    def _open_stream(self, event: RequestReceived) -> None:
        limit = self._limit
        if limit:
            registry = self._registry
            if registry.streams >= limit:
                # Refused before any application code runs, as Uvicorn's --limit-concurrency
                # does; a WebSocket handshake gets the same 503 as its denial.
                self.context.loggers.error.debug(
                    "%d streams in progress: answered %s with 503", limit, _peer(self.info)
                )
                self._answer(event.stream_id, 503, _BUSY_HEADERS, request=event)
                return
        if event.upgrade_ignored and not self.context.upgrade_warned:
            self._warn_upgrade(event)
        kind = event.kind
        factory = self._request_bridge if kind is _REQUEST else self.context.bridges.get(kind)
        if factory is None:
            # A kind this server has no bridge for yet (the cores report one only when their
            # limits enable it): decline it as an ordinary response.
            self.context.loggers.error.debug(
                "no bridge for %s streams; answered %s with 501", kind.value, _peer(self.info)
            )
            self._answer(event.stream_id, 501, request=event)
            return
        stream = factory(self, event)
        self._streams[event.stream_id] = stream
        self._tasks[event.stream_id] = self.runtime.spawn(self._run_stream, stream)
        self._registry.served += 1
        if limit:
            # Counted once its task exists (a bridge that failed to build holds no slot);
            # _run_stream gives the slot back when the task ends.
            self._registry.streams += 1

    def _warn_upgrade(self, event: RequestReceived) -> None:
        """Once per server, as Uvicorn does: a client asked for a protocol we cannot switch to.
        Once only, as every request of such a client would say the same."""
        self.context.upgrade_warned = True
        offered = b", ".join(value for name, value in event.headers if name == b"upgrade")
        self.context.loggers.error.warning(
            "Unsupported upgrade request (Upgrade: %s from %s): served as plain HTTP; "
            "further ones are not logged",
            offered.decode("latin-1"),
            _peer(self.info),
        )

    async def _run_stream(self, stream: StreamBridge) -> None:
        try:
            await stream.run()
        except Exception as exc:
            # The bridge handles the app's own exceptions; this is one of ours.
            self._stream_failed(stream.stream_id, exc)
        finally:
            if self._limit:
                self._registry.streams -= 1
            self._streams.pop(stream.stream_id, None)
            self._tasks.pop(stream.stream_id, None)
            self._check_finished()

    def _stream_failed(self, stream_id: int, exc: Exception) -> None:
        """`exc` was raised while stream `stream_id` was handled: log it, and let it cost that
        stream only (a 500 if its response has not started, else a reset)."""
        logger = self.context.loggers.error
        logger.error(
            "Exception while serving stream %s from %s", stream_id, _peer(self.info), exc_info=exc
        )
        stream = self._streams.get(stream_id)
        try:
            if stream is None:
                self._answer(stream_id, 500)  # it failed before any bridge had it
            else:
                stream.abandon()
                stream.client_gone()  # the stream is answered: its app must not go on with it
        except Exception as again:
            # Not even an answer fits the stream's state: cut it.
            logger.debug("could not answer stream %s, resetting it: %r", stream_id, again)
            try:
                self._dispatch(
                    self.protocol.send(ResetStream(stream_id=stream_id), self.runtime.now())
                )
            except Exception as last:
                self._broken(last)

    def _broken(self, exc: Exception) -> None:
        """A fault below the streams (the protocol core, or this handler): the connection's
        state is unknown, so it goes; the worker and every other connection carry on."""
        self.context.loggers.error.error(
            "Exception in connection from %s; dropped it", _peer(self.info), exc_info=exc
        )
        self.abort()

    def _streams_gone(self) -> None:
        for stream in list(self._streams.values()):
            try:
                stream.client_gone()
            except Exception as exc:
                # Nobody is left to answer: log it, and let the stream's task end on its own.
                self.context.loggers.error.error(
                    "Exception while closing stream %s from %s",
                    stream.stream_id,
                    _peer(self.info),
                    exc_info=exc,
                )

    def _upgrade(self, event: UpgradeRequested) -> None:
        # The old protocol's last words (a 101) go out before the new protocol's first.
        data = self.protocol.data_to_send()
        if data:
            self.transport.write(data)
        now = self.runtime.now()
        self.protocol, events, leftover = upgrade(event, self.context.protocol_limits, now=now)
        self._dispatch(events)
        if leftover:
            self._dispatch(self.protocol.receive_data(leftover, now))

    def close_after_response(self) -> None:
        """The stream being answered leaves the rest of its request body unread (a 413).
        HTTP/1.1 cannot skip a body without reading it: its connection closes after this
        response (`connection: close`). A multiplexed protocol needs nothing: ending the stream
        ends that exchange alone (HTTP/3 asks the client to stop sending it), and the body
        still arriving is acknowledged and dropped."""
        if not self.protocol.multiplexed:
            self.send(CloseConnection())

    def _reject(self, event: RequestRejected) -> None:
        """Answer a request the protocol core refused before any application saw it."""
        self.context.loggers.error.debug(
            "refused a request from %s: %s", _peer(self.info), event.error
        )
        self._answer(event.stream_id, event.error.error_status_hint)

    def _answer(
        self,
        stream_id: int,
        status: int,
        extra: Headers | None = None,
        *,
        request: RequestReceived | None = None,
    ) -> None:
        """A response the server gives itself, on a stream no application serves. With the
        `request` it answers (a well-formed head), it gets an access log line like any other;
        a head that did not parse has no request line to log."""
        defaults = self.context.default_headers.get()
        headers, body = error_response(status, [*defaults, *extra] if extra else defaults)
        if request is not None:
            self._log_answer(request, status, headers, len(body))
        now = self.runtime.now()
        self._dispatch(
            self.protocol.send(
                SendResponse(stream_id=stream_id, status=status, headers=headers), now
            )
        )
        self._dispatch(
            self.protocol.send(SendData(stream_id=stream_id, data=body, end_stream=True), now)
        )

    def _log_answer(
        self, request: RequestReceived, status: int, headers: Headers, size: int
    ) -> None:
        raw_path, query = split_target(request.target)
        record = AccessRecord(
            client=self.info.client,
            method=request.method.decode("ascii", "replace"),
            path=unquote_to_bytes(raw_path).decode("utf-8", "replace"),
            query_string=query,
            http_version=request.http_version,
            status=status,
            response_bytes=size,
            request_headers=request.headers,
            response_headers=headers,
            start_time=time.time(),
        )
        log_access(self.context.loggers, record)

    def _closed(self, event: ConnectionClosed) -> None:
        if event.error is not None:
            # Peers sending garbage is routine on the internet: debug, not error.
            self.context.loggers.error.debug(
                "closing connection from %s: %s", _peer(self.info), event.error
            )
        self._streams_gone()
        if isinstance(event.error, PeerAbuse):
            # Whatever an abusive peer started (rapid reset) must not outlive its connection.
            self.context.loggers.error.info("cut off %s: %s", _peer(self.info), event.error)
            self.cancel_tasks()

    def _upkeep(self) -> None:
        if self._transport_closed:
            return
        protocol = self.protocol
        self._unflushed = 0
        data = protocol.data_to_send()
        if data:
            self.transport.write(data)
        if protocol.closed:
            self._transport_closed = True
            self.transport.close()
            self._streams_gone()
            self._check_finished()
            return
        if self._backlogged:
            self._wake_backlogged()
        reading = protocol.wants_read
        if reading is not self._reading:
            self._reading = reading
            self.transport.set_reading(reading)
        # Timers are lazy: one armed earlier than needed just fires, finds nothing due and is
        # re-armed. Keep-alive deadlines move later with every request, so this saves a timer
        # cancel-and-create per request.
        deadline = protocol.next_deadline()
        if deadline is not None and (self._deadline is None or deadline < self._deadline):
            self._deadline = deadline
            self.transport.set_deadline(deadline)
        if self._flush is not None:
            self._flush()

    def _wake_backlogged(self) -> None:
        pending = self.protocol.pending_send
        for stream_id, waiter in list(self._backlogged.items()):
            if pending(stream_id) <= _STREAM_BACKLOG:
                del self._backlogged[stream_id]
                waiter.set()

    def _check_finished(self) -> None:
        if self.finished:
            self._registry.discard(self)


def _peer(info: ConnectionInfo) -> str:
    if info.client is None:
        return "unix socket"
    return f"{info.client[0]}:{info.client[1]}"
