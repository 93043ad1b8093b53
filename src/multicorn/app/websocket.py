"""One WebSocket as an ASGI `websocket` application call (ASGI www spec 2.5).

The stream does not know the HTTP version under it: an HTTP/1.1 Upgrade and an HTTP/2 or
HTTP/3 extended CONNECT all arrive as a WEBSOCKET stream whose core hands over the request
head, then raw WebSocket bytes once a 2xx response has accepted it. The frames themselves are
the `WebSocketSession`'s (protocol/websocket.py); this bridge turns its events into ASGI
messages and the application's messages into session calls and protocol commands.

Received messages wait in a queue of at most `max_queued_messages` messages and about
`max_message_size` bytes (checked before each acknowledgement, so one message may overshoot
it); past either, the bytes that brought them are not acknowledged, which is how the HTTP core
stops reading (HTTP/1.1) or stops granting flow-control window (HTTP/2). The stream lives until
the WebSocket is over (closing handshake done, failed, or timed out), even when the application
returns first.
"""

from __future__ import annotations

import enum
import time
from typing import TYPE_CHECKING, Any, cast

from multicorn.app.errors import ClientDisconnected, UnexpectedMessage
from multicorn.app.http import asgi_headers, error_response, response_headers
from multicorn.app.logs import AccessRecord, log_access
from multicorn.app.scope import build_websocket_scope
from multicorn.protocol.events import (
    AcknowledgeData,
    ResetStream,
    SendData,
    SendResponse,
)
from multicorn.protocol.websocket import (
    ABNORMAL_CLOSURE,
    GOING_AWAY,
    INTERNAL_ERROR,
    NORMAL_CLOSURE,
    SERVICE_RESTART,
    HandshakeTimedOut,
    MessageReceived,
    WebSocketEnded,
    WebSocketEvent,
    WebSocketSession,
)

if TYPE_CHECKING:
    from multicorn.app.connection import ConnectionHandler
    from multicorn.protocol.events import Headers, RequestReceived
    from multicorn.runtime.base import TimerHandle, Waiter
    from multicorn.typing import Message, Scope


# Frames waiting past this are written at once rather than at the end of the loop turn, so that
# an application that sends without ever yielding meets the transport's backpressure.
_WRITE_AT = 64 * 1024


class _Stage(enum.Enum):
    HANDSHAKE = enum.auto()  # the application has the request; nothing answered yet
    DENYING = enum.auto()  # a websocket.http.response is being sent
    ACCEPTED = enum.auto()  # frames flow (until the session says it is over)
    OVER = enum.auto()  # the stream is ended: a denial sent, or the WebSocket finished


class WebSocketStream:
    """See the module docstring. Created by the connection handler per WEBSOCKET stream."""

    # Slots: an idle WebSocket is mostly this object, its session and its task.
    __slots__ = (
        "_app_closed",
        "_bad_version",
        "_conn",
        "_connected",
        "_deny_start",
        "_early",
        "_end",
        "_ended_early",
        "_flush_scheduled",
        "_going_away",
        "_limits",
        "_messages",
        "_method",
        "_peer_gone",
        "_queued_bytes",
        "_response_headers",
        "_sent_bytes",
        "_session",
        "_stage",
        "_start_time",
        "_status",
        "_timer",
        "_timer_at",
        "_unacked",
        "_waiter",
        "scope",
        "stream_id",
    )

    def __init__(self, conn: ConnectionHandler, event: RequestReceived) -> None:
        self._conn = conn
        self.stream_id = event.stream_id
        ctx = conn.context
        self._limits = ctx.protocol_limits.websocket
        self._session = WebSocketSession(
            limits=self._limits, request_headers=event.headers, now=conn.runtime.now()
        )
        self.scope = cast(
            "Scope",
            build_websocket_scope(
                event,
                conn.info,
                root_path=ctx.settings.root_path,
                state=ctx.state,
                subprotocols=self._session.offered_subprotocols,
            ),
        )
        # RFC 6455 4.1 asks for version 13; HTTP/1.1's core refuses others before we are made,
        # the extended CONNECT of HTTP/2 and HTTP/3 (RFC 8441 5) leaves it to us.
        versions = [v.strip() for n, v in event.headers if n == b"sec-websocket-version"]
        self._bad_version = versions != [b"13"]
        self._stage = _Stage.HANDSHAKE
        self._connected = False  # websocket.connect was delivered
        self._early: list[bytes] = []  # bytes that came before the accept
        self._ended_early = False  # the peer stopped sending before the accept
        self._messages: list[Message] = []  # at most max_queued_messages: a list is enough
        self._queued_bytes = 0  # the size of what `_messages` carries (characters for text)
        self._unacked = 0  # received bytes not yet acknowledged to the HTTP core
        self._end: tuple[int, str] | None = None  # the disconnect the app is told
        self._peer_gone = False  # nothing can reach the peer any more
        self._app_closed = False  # the application sent websocket.close
        self._deny_start: tuple[int, Headers] | None = None
        self._waiter: Waiter | None = None
        self._flush_scheduled = False
        self._going_away: tuple[int, str] | None = None  # the server is shutting down: our Close
        self._timer: TimerHandle | None = None
        self._timer_at: float | None = None
        # For the access log: the handshake's answer, and the bytes of frames sent.
        self._method = event.method.decode("ascii")
        self._status = 0
        self._response_headers: Headers = []
        self._sent_bytes = 0
        self._start_time = time.time() if ctx.loggers.access is not None else 0.0
        self._arm()

    # ---- events from the connection -------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._unacked += len(data)
        if self._stage is _Stage.HANDSHAKE or self._stage is _Stage.DENYING:
            if self._stage is _Stage.HANDSHAKE:
                self._early.append(data)
            else:
                self._acknowledge()  # a declined WebSocket's bytes are nobody's
            return
        if self._stage is _Stage.ACCEPTED:
            self._apply(self._session.receive_data(data, self._conn.runtime.now()))
        self._maybe_acknowledge()

    def ended(self) -> None:
        if self._stage is _Stage.HANDSHAKE:
            self._ended_early = True  # after its earlier bytes, once accepted
            return
        self._apply(self._session.peer_ended())

    def client_gone(self) -> None:
        self._peer_gone = True
        self._apply(self._session.peer_ended())
        if self._end is None:
            self._end = (ABNORMAL_CLOSURE, "")
        self._stage = _Stage.OVER
        self._disarm()
        self._wake()

    def going_away(self, restart: bool = False) -> None:
        """The server shuts down: close with 1001 (RFC 6455 7.4.1), or 1012 when another
        process takes over (a restart: the client may reconnect at once); a handshake not yet
        answered is left to the application, and closed the same way if it accepts."""
        self._going_away = (
            (SERVICE_RESTART, "server restarting")
            if restart
            else (GOING_AWAY, "server shutting down")
        )
        if self._stage is _Stage.ACCEPTED and self._session.open:
            self._session.close(*self._going_away, self._conn.runtime.now())
            self._flush()

    def abandon(self) -> None:
        """Something failed while serving this stream: a 500 before the handshake was answered,
        a reset in the middle of a denial, a Close with 1011 once accepted."""
        stage = self._stage
        if self._peer_gone or stage is _Stage.OVER:
            return
        if stage is _Stage.HANDSHAKE:
            self._respond(500)
        elif stage is _Stage.DENYING:
            self._stage = _Stage.OVER
            self._disarm()
            self._conn.send(ResetStream(stream_id=self.stream_id))
        elif self._session.open:
            self._session.close(INTERNAL_ERROR, "", self._conn.runtime.now())
            self._flush()
        else:
            self._conclude()

    # ---- the application call -------------------------------------------------------------

    async def run(self) -> None:
        ctx = self._conn.context
        if self._bad_version:
            # RFC 6455 4.4: answer with the version we speak.
            self._respond(426, [(b"sec-websocket-version", b"13")])
            if ctx.loggers.access is not None:
                self._log_access()
            return
        try:
            await ctx.app(self.scope, self.receive, self.send)
        except ClientDisconnected as exc:
            ctx.loggers.error.debug("client went away while the application was sending: %r", exc)
        except Exception as exc:
            ctx.loggers.error.error("Exception in ASGI application", exc_info=exc)
            self.abandon()
        except BaseException:
            self.abandon()
            raise
        else:
            if self._stage is _Stage.HANDSHAKE and not self._peer_gone:
                ctx.loggers.error.error("ASGI callable returned without accepting the WebSocket")
                self._respond(500)
            elif self._stage is _Stage.DENYING:
                ctx.loggers.error.error("ASGI callable returned without completing the response")
                self.abandon()
            elif self._session.open:
                # The application is done without closing: close normally for it.
                self._session.close(NORMAL_CLOSURE, "", self._conn.runtime.now())
                self._flush()
            else:
                self._conclude()
        finally:
            if ctx.loggers.access is not None:
                self._log_access()
        # The closing handshake may still be under way: the stream lasts until it is over (the
        # session's deadline bounds the wait).
        while self._stage is _Stage.ACCEPTED:
            await self._wait()

    async def receive(self) -> Message:
        if not self._connected:
            self._connected = True
            return {"type": "websocket.connect"}
        while True:
            if self._messages:
                message = self._messages.pop(0)
                self._queued_bytes -= _size(message)
                self._maybe_acknowledge()
                return message
            if self._end is not None:
                # The app has read all that came before the end: our Close may go now.
                self._conclude()
                code, reason = self._end
                return {"type": "websocket.disconnect", "code": code, "reason": reason}
            # Inlined rather than self._wait(): an idle WebSocket waits here, and every
            # coroutine frame on its stack is memory it holds.
            waiter = self._waiter
            if waiter is None:
                waiter = self._waiter = self._conn.runtime.waiter()
            waiter.clear()
            await waiter.wait()

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "websocket.send":
            await self._send_message(message)
        elif kind == "websocket.accept":
            self._accept(message)
        elif kind == "websocket.close":
            self._close(message)
        elif kind == "websocket.http.response.start":
            if self._stage is not _Stage.HANDSHAKE:
                raise UnexpectedMessage(
                    "websocket.http.response.start is only valid before the WebSocket is "
                    "accepted or closed"
                )
            status = int(message["status"])
            if not 300 <= status <= 999:
                # A 2xx would accept the WebSocket (HTTP/1.1 writes it as 101, HTTP/2 opens the
                # tunnel): a denial needs a status that says no.
                raise UnexpectedMessage(f"a WebSocket denial response cannot have status {status}")
            self._stage = _Stage.DENYING
            self._session.decline()
            self._disarm()
            self._deny_start = (status, asgi_headers(message.get("headers", ())))
        elif kind == "websocket.http.response.body":
            self._deny_body(message)
        else:
            raise UnexpectedMessage(f"unexpected ASGI message type {kind!r} on a websocket")

    def _accept(self, message: Message) -> None:
        if self._stage is not _Stage.HANDSHAKE:
            if self._peer_gone:
                raise ClientDisconnected("the client has disconnected")
            raise UnexpectedMessage("websocket.accept sent after the handshake was answered")
        conn = self._conn
        now = conn.runtime.now()
        subprotocol = message.get("subprotocol")
        headers = self._session.accept(None if subprotocol is None else str(subprotocol), now)
        for name, value in asgi_headers(message.get("headers", ())):
            if name == b"sec-websocket-protocol" and subprotocol is not None:
                continue  # the one from `subprotocol` wins (ASGI spec)
            headers.append((name, value))
        self._stage = _Stage.ACCEPTED
        headers = [*conn.context.default_headers.get(), *headers]
        # HTTP/1.1 writes the accept as its 101 (RFC 6455 4.2.2), HTTP/2 and HTTP/3 as a 200.
        self._status = 101 if self.scope["http_version"] in ("1.0", "1.1") else 200
        self._response_headers = headers
        conn.send(SendResponse(stream_id=self.stream_id, status=200, headers=headers))
        early = b"".join(self._early)
        self._early.clear()
        events = self._session.receive_data(early, now) if early else []
        if self._ended_early:
            events.extend(self._session.peer_ended())
        if self._going_away is not None:
            self._session.close(*self._going_away, now)
        self._apply(events)
        self._maybe_acknowledge()

    async def _send_message(self, message: Message) -> None:
        if self._app_closed:
            raise UnexpectedMessage("websocket.send after websocket.close")
        if self._stage is not _Stage.ACCEPTED:
            if self._peer_gone or self._stage is _Stage.OVER:
                raise ClientDisconnected("the client has disconnected")
            raise UnexpectedMessage("websocket.send is only valid once the WebSocket is accepted")
        data = message.get("bytes")
        text = message.get("text")
        if (data is None) == (text is None):
            raise UnexpectedMessage("websocket.send needs exactly one of 'bytes' and 'text'")
        session = self._session
        if not session.can_send:
            raise ClientDisconnected("the WebSocket is closing")
        session.send_message(str(text) if data is None else bytes(data))
        self._flush()
        await self._conn.drain(self.stream_id)

    def _close(self, message: Message) -> None:
        code = int(message.get("code") or NORMAL_CLOSURE)
        reason = str(message.get("reason") or "")
        stage = self._stage
        if stage is _Stage.HANDSHAKE:
            # ASGI: a close before accept is a denial, answered 403.
            self._app_closed = True
            self._respond(403)
            return
        if stage is _Stage.DENYING:
            raise UnexpectedMessage("websocket.close in the middle of a denial response")
        if self._app_closed:
            raise UnexpectedMessage("websocket.close sent twice")
        if stage is _Stage.OVER:
            raise ClientDisconnected("the client has disconnected")
        self._app_closed = True
        if stage is _Stage.ACCEPTED:
            if self._session.open:
                self._session.close(code, reason, self._conn.runtime.now())
                self._flush()
            else:
                self._conclude()  # the peer closed first: our answer echoes its code

    def _deny_body(self, message: Message) -> None:
        if self._stage is not _Stage.DENYING:
            raise UnexpectedMessage(
                "websocket.http.response.body needs websocket.http.response.start first"
            )
        body = bytes(message.get("body", b""))
        more = bool(message.get("more_body", False))
        commands: list[SendResponse | SendData] = []
        start = self._deny_start
        if start is not None:
            status, headers = start
            headers = response_headers(
                status,
                headers,
                self._conn.context.default_headers.get(),
                length=None if more else len(body),
            )
            self._status = status
            self._response_headers = headers
            commands.append(SendResponse(stream_id=self.stream_id, status=status, headers=headers))
            self._deny_start = None  # the head is out
        commands.append(SendData(stream_id=self.stream_id, data=body, end_stream=not more))
        self._sent_bytes += len(body)
        if not more:
            self._stage = _Stage.OVER
            self._end = (ABNORMAL_CLOSURE, "")
        self._conn.send(*commands)
        self._wake()

    # ---- internals ------------------------------------------------------------------------

    def _respond(self, status: int, extra: Headers | None = None) -> None:
        """An HTTP answer to the handshake that the server gives itself (403, 426, 500, 503)."""
        self._stage = _Stage.OVER
        self._session.decline()
        self._disarm()
        if self._end is None:
            self._end = (ABNORMAL_CLOSURE, "")
        headers, body = error_response(status, self._conn.context.default_headers.get())
        if extra:
            headers = [*headers, *extra]
        self._status = status
        self._response_headers = headers
        self._sent_bytes = len(body)
        self._conn.send(
            SendResponse(stream_id=self.stream_id, status=status, headers=headers),
            SendData(stream_id=self.stream_id, data=body, end_stream=True),
        )
        self._wake()

    def _apply(self, events: list[WebSocketEvent]) -> None:
        for event in events:
            if isinstance(event, MessageReceived):
                data = event.data
                self._queued_bytes += len(data)
                if isinstance(data, str):
                    self._messages.append({"type": "websocket.receive", "text": data})
                else:
                    self._messages.append({"type": "websocket.receive", "bytes": data})
            elif isinstance(event, WebSocketEnded):
                if self._end is None:
                    self._end = (event.code, event.reason)
            elif isinstance(event, HandshakeTimedOut):
                self._conn.context.loggers.error.info(
                    "WebSocket handshake not answered by the application within %s s",
                    self._limits.handshake_timeout,
                )
                self._respond(503)
        if events:
            self._wake()
        self._flush()

    def _flush(self) -> None:
        """Have what the session produced written, and the acknowledgements sent: at once when
        the WebSocket is over or much is waiting, else once this loop turn is done, so that the
        replies to a batch of messages go out in one write."""
        if self._session.finished or self._session.pending_output > _WRITE_AT:
            self._flush_now()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._conn.runtime.call_soon(self._deferred_flush)

    def _deferred_flush(self) -> None:
        self._flush_scheduled = False
        try:
            self._flush_now()
        except Exception as exc:
            self._conn.context.loggers.error.error("Exception in a WebSocket write", exc_info=exc)
            self.abandon()

    def _flush_now(self) -> None:
        """Write what the session produced; end the stream once the WebSocket is over."""
        commands: list[AcknowledgeData | SendData] = []
        if self._unacked and self._has_room():
            commands.append(AcknowledgeData(stream_id=self.stream_id, amount=self._unacked))
            self._unacked = 0
        if self._stage is _Stage.ACCEPTED:
            session = self._session
            data = session.data_to_send()
            if session.finished:
                self._stage = _Stage.OVER
                self._disarm()
                self._wake()
                self._sent_bytes += len(data)
                commands.append(SendData(stream_id=self.stream_id, data=data, end_stream=True))
            else:
                if data:
                    self._sent_bytes += len(data)
                    commands.append(SendData(stream_id=self.stream_id, data=data))
                self._arm()
        if commands and not self._peer_gone:
            self._conn.send(*commands)

    def _conclude(self) -> None:
        if self._stage is _Stage.ACCEPTED and self._session.ending:
            self._session.conclude()
            self._flush()

    def _maybe_acknowledge(self) -> None:
        if self._unacked and self._has_room():
            self._flush()

    def _has_room(self) -> bool:
        """The queue may grow: more input may be acknowledged (and so read)."""
        limits = self._limits
        return (
            len(self._messages) < limits.max_queued_messages
            and self._queued_bytes < limits.max_message_size
        )

    def _acknowledge(self) -> None:
        amount, self._unacked = self._unacked, 0
        if not self._peer_gone:
            self._conn.send(AcknowledgeData(stream_id=self.stream_id, amount=amount))

    def _arm(self) -> None:
        deadline = self._session.next_deadline()
        if deadline is None:
            self._disarm()
            return
        if self._timer is not None and self._timer_at is not None and self._timer_at <= deadline:
            return  # fires early, finds nothing due, and re-arms: cheaper than re-arming now
        self._disarm()
        self._timer_at = deadline
        self._timer = self._conn.runtime.call_at(deadline, self._deadline_reached)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = None

    def _deadline_reached(self) -> None:
        self._timer = None
        self._timer_at = None
        try:
            self._apply(self._session.handle_deadline(self._conn.runtime.now()))
            self._arm()
        except Exception as exc:
            self._conn.context.loggers.error.error("Exception in a WebSocket timer", exc_info=exc)
            self.abandon()

    def _wake(self) -> None:
        if self._waiter is not None:
            self._waiter.set()

    async def _wait(self) -> None:
        if self._waiter is None:
            self._waiter = self._conn.runtime.waiter()
        self._waiter.clear()
        await self._waiter.wait()

    def _log_access(self) -> None:
        scope: Any = self.scope
        record = AccessRecord(
            client=scope["client"],
            method=self._method,
            path=scope["path"],
            query_string=scope["query_string"],
            http_version=scope["http_version"],
            status=self._status,
            response_bytes=self._sent_bytes,
            request_headers=scope["headers"],
            response_headers=self._response_headers,
            start_time=self._start_time,
            duration=time.time() - self._start_time,
        )
        log_access(self._conn.context.loggers, record)


def _size(message: Message) -> int:
    """What a queued `websocket.receive` message counts against the byte bound."""
    data = message.get("text")
    if data is None:
        data = message.get("bytes")
    return len(data) if data is not None else 0
