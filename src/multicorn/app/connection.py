"""One client connection, runtime-neutral: the loop between protocol core, backend and app tasks.

The backend calls in when bytes arrive, the peer closes, a deadline passes or the transport's
buffer fills or drains. Each call runs the protocol synchronously, routes its events to
streams (spawning one application task per request), then does the single piece of upkeep every
wake-up needs: write what the protocol produced, honour `wants_read`, close if the protocol is
done, re-arm the one deadline. Application tasks come back in through `send()`.

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

from typing import TYPE_CHECKING

from multicorn.app.http import HTTPStream, error_response
from multicorn.protocol.errors import PeerAbuse
from multicorn.protocol.events import (
    CloseConnection,
    Command,
    ConnectionClosed,
    DataReceived,
    Event,
    RequestReceived,
    RequestRejected,
    SendData,
    SendResponse,
    StreamEnded,
    StreamReset,
    UpgradeRequested,
)
from multicorn.protocol.negotiate import upgrade

# A stream's body may run this far ahead of the peer's flow-control window before send() waits.
_STREAM_BACKLOG = 64 * 1024

if TYPE_CHECKING:
    from multicorn.app.context import ConnectionInfo, ServerContext
    from multicorn.app.registry import ConnectionRegistry
    from multicorn.protocol.base import ServerProtocol
    from multicorn.runtime.base import Runtime, TaskHandle, Transport, Waiter


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
    ) -> None:
        self.protocol = protocol
        self.transport = transport
        self.runtime = runtime
        self.context = context
        self.info = info
        self._registry = registry
        self._streams: dict[int, HTTPStream] = {}
        self._backlogged: dict[int, Waiter] = {}  # streams waiting for flow control
        self._tasks: dict[int, TaskHandle] = {}
        self._writable = runtime.waiter()
        self._writable.set()
        self._reading = True
        self._deadline: float | None = None
        self._transport_closed = False
        self._lost = False
        self._flush_scheduled = False
        registry.add(self)
        self._upkeep()

    # ---- from the backend -----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._dispatch(self.protocol.receive_data(data, self.runtime.now()))
        self._upkeep()

    def eof_received(self) -> None:
        self.data_received(b"")

    def deadline_reached(self) -> None:
        self._deadline = None
        self._dispatch(self.protocol.handle_deadline(self.runtime.now()))
        self._upkeep()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def connection_lost(self) -> None:
        if self._lost:
            return
        self._lost = True
        self._transport_closed = True
        self._writable.set()  # nobody may stay blocked on a dead socket
        for waiter in self._backlogged.values():
            waiter.set()
        self._backlogged.clear()
        for stream in self._streams.values():
            stream.client_gone()
        self._check_finished()

    # ---- from the server ------------------------------------------------------------------

    def shutdown(self) -> None:
        """Graceful: finish in-flight requests, accept no new ones, close when idle."""
        if not self._transport_closed:
            self.send(CloseConnection())

    def abort(self, *, cancel_tasks: bool = True) -> None:
        """Drop the socket now; by default also cancel the application tasks (the graceful
        period is over). Nothing may go on waiting on this connection afterwards."""
        if cancel_tasks:
            for task in list(self._tasks.values()):
                task.cancel()
        if not self._transport_closed:
            self._transport_closed = True
            self.transport.abort()
        # Some loops report the loss a turn or more later: the streams learn of it now.
        self._writable.set()
        for waiter in self._backlogged.values():
            waiter.set()
        self._backlogged.clear()
        for stream in self._streams.values():
            stream.client_gone()

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
        for command in commands:
            self._dispatch(protocol.send(command, now))
        if protocol.multiplexed:
            # Many streams answer in the same loop turn: write once for all of them.
            if not self._flush_scheduled:
                self._flush_scheduled = True
                self.runtime.call_soon(self._deferred_upkeep)
        else:
            self._upkeep()

    def _deferred_upkeep(self) -> None:
        self._flush_scheduled = False
        self._upkeep()

    async def drain(self, stream_id: int) -> None:
        """Backpressure for `send()`: wait while the transport's buffer is above its mark, and
        while this stream has more queued than flow control lets out (HTTP/2)."""
        if not self._writable.is_set():
            timeout = self.context.config.send_timeout
            if not await self.runtime.wait_for(self._writable, timeout):
                # The peer stopped reading altogether: a slow-read attack or a dead client.
                self.context.loggers.error.debug(
                    "closing connection from %s: nothing read for %s s", _peer(self.info), timeout
                )
                self.abort(cancel_tasks=False)  # the app's next send() raises instead
                return
        while self.protocol.pending_send(stream_id) > _STREAM_BACKLOG and not self._lost:
            waiter = self._backlogged.get(stream_id)
            if waiter is None:
                waiter = self._backlogged[stream_id] = self.runtime.waiter()
            waiter.clear()
            await waiter.wait()

    def stream_finished(self, stream: HTTPStream) -> None:
        self._streams.pop(stream.stream_id, None)
        self._tasks.pop(stream.stream_id, None)
        self._check_finished()

    # ---- internals ------------------------------------------------------------------------

    def _dispatch(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, DataReceived):
                stream = self._streams.get(event.stream_id)
                if stream is not None:
                    stream.data_received(event.data)
            elif isinstance(event, RequestReceived):
                stream = HTTPStream(self, event)
                self._streams[event.stream_id] = stream
                self._tasks[event.stream_id] = self.runtime.spawn(stream.run)
            elif isinstance(event, StreamEnded):
                stream = self._streams.get(event.stream_id)
                if stream is not None:
                    stream.ended()
            elif isinstance(event, StreamReset):
                stream = self._streams.get(event.stream_id)
                if stream is not None:
                    stream.client_gone()
                waiter = self._backlogged.pop(event.stream_id, None)
                if waiter is not None:
                    waiter.set()
            elif isinstance(event, RequestRejected):
                self._reject(event)
            elif isinstance(event, ConnectionClosed):
                self._closed(event)
            elif isinstance(event, UpgradeRequested):
                self._upgrade(event)

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

    def _reject(self, event: RequestRejected) -> None:
        """Answer a request the protocol core refused before any application saw it."""
        self.context.loggers.error.debug(
            "refused a request from %s: %s", _peer(self.info), event.error
        )
        status = event.error.error_status_hint
        headers, body = error_response(status, self.context.default_headers.get())
        now = self.runtime.now()
        self._dispatch(
            self.protocol.send(
                SendResponse(stream_id=event.stream_id, status=status, headers=headers), now
            )
        )
        self._dispatch(
            self.protocol.send(SendData(stream_id=event.stream_id, data=body, end_stream=True), now)
        )

    def _closed(self, event: ConnectionClosed) -> None:
        if event.error is not None:
            # Peers sending garbage is routine on the internet: debug, not error.
            self.context.loggers.error.debug(
                "closing connection from %s: %s", _peer(self.info), event.error
            )
        for stream in self._streams.values():
            stream.client_gone()
        if isinstance(event.error, PeerAbuse):
            # Whatever an abusive peer started (rapid reset) must not outlive its connection.
            self.context.loggers.error.info("cut off %s: %s", _peer(self.info), event.error)
            for task in list(self._tasks.values()):
                task.cancel()

    def _upkeep(self) -> None:
        if self._transport_closed:
            return
        protocol = self.protocol
        data = protocol.data_to_send()
        if data:
            self.transport.write(data)
        if protocol.closed:
            self._transport_closed = True
            self.transport.close()
            for stream in self._streams.values():
                stream.client_gone()
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
