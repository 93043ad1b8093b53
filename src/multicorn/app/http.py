"""One HTTP request/response exchange as an ASGI `http` application call.

The stream does not know the HTTP version: it receives body events from its connection handler
and turns the application's messages into protocol commands. Request body bytes wait in a list
until the application asks for them (already-buffered data is returned without a trip through
the event loop); consumption is acknowledged to the protocol, which is how reading resumes.

With `max_request_body_size` set, a request body larger than it is refused here, once for every
HTTP version, and the application is never handed more than the cap:
- announced by Content-Length: answered 413 without calling the application (RFC 9110 15.5.14;
  what nginx's client_max_body_size does), so it never reads a byte of a body it would not get
  whole, and a client waiting on `Expect: 100-continue` never sends it;
- not announced (chunked, or HTTP/2 and HTTP/3 DATA without content-length): counted as it
  arrives. The piece that crosses the cap, and whatever the application has not read yet, are
  dropped; the request is answered 413 if the response head has not gone out, else the stream
  is reset; from then on the application's `receive()` gives `http.disconnect` and its
  `send()` raises `ClientDisconnected`, as after a client hang-up.
After a 413 an HTTP/1.1 connection closes (its unread body cannot be skipped without reading
it); on HTTP/2 and HTTP/3 only the stream ends, and body bytes still arriving are acknowledged
and dropped so the connection's flow-control window stays open.

With `min_request_body_rate` set, a body that arrives too slowly is refused the same way, with
408 (RFC 9110 15.5.9) in place of 413. Only the server's waiting counts: time accrues while the
application is blocked in `receive()` with nothing buffered and the body not complete. While
the application does not read, the body backs up against flow control and a low rate is its
doing, not the client's. Once `min_request_body_rate_grace` seconds of waiting have passed,
body bytes received / waiting time below the rate is a 408 (Kestrel's MinRequestBodyDataRate
measures the same way). A timer is armed only while the application waits, for the moment the
rate would fall below the minimum if nothing more came, and cancelled when data, the body's
end or a hang-up ends the wait.
"""

from __future__ import annotations

import sys
import time
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from multicorn.app.errors import ClientDisconnected, UnexpectedMessage
from multicorn.app.logs import AccessRecord, log_access
from multicorn.app.scope import build_http_scope
from multicorn.protocol.events import (
    AcknowledgeData,
    Command,
    PushPromise,
    ResetStream,
    SendData,
    SendInformational,
    SendResponse,
    SendTrailers,
)

if TYPE_CHECKING:
    from multicorn.app.connection import ConnectionHandler
    from multicorn.protocol.events import Headers, RequestReceived
    from multicorn.runtime.base import TimerHandle, Waiter
    from multicorn.typing import Message, Scope

# Statuses whose responses never carry a body, so no Content-Length is added (RFC 9110 8.6).
_NO_BODY_STATUS = frozenset({204, 304})

# RFC 9110 15.5.14: Content Too Large.
_TOO_LARGE = 413
# RFC 9110 15.5.9: Request Timeout, for a body slower than `min_request_body_rate`.
_TIMEOUT = 408


def _announced_length(headers: Headers) -> int:
    """The request's Content-Length, or -1 without one. The protocol cores have checked its
    syntax (a list, a sign, a mismatch with the body are refused before the app layer)."""
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return -1
    return -1


def asgi_headers(raw: Any) -> Headers:
    """ASGI headers as lower-cased bytes pairs. The protocol refuses any that could split the
    response (CR, LF, NUL) when it frames them. Nearly every app sends bytes already: those
    skip the two bytes() calls (half the cost of this, which runs for every response)."""
    return [
        (name.lower(), value)
        if type(name) is bytes and type(value) is bytes
        else (bytes(name).lower(), bytes(value))
        for name, value in raw
    ]


def error_response(status: int, default_headers: Headers) -> tuple[Headers, bytes]:
    """A small plain-text response for errors the server answers itself."""
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    body = f"{status} {phrase}\n".encode()
    headers = [
        *default_headers,
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
    ]
    return headers, body


def response_headers(
    status: int, headers: Headers, defaults: Headers, *, length: int | None
) -> Headers:
    """A response head as sent: the server's default fields (`date`, `server`, `alt-svc`)
    unless the app set its own, the app's fields, and `content-length: length` when the whole
    body is known (`length` not None) and the app framed it neither way. Runs for every
    response: one pass."""
    framed = False
    own: set[bytes] | None = None  # default field names the app set itself
    for name, _ in headers:
        if name == b"content-length" or name == b"transfer-encoding":
            framed = True
        elif name == b"date" or name == b"server" or name == b"alt-svc":
            if own is None:
                own = set()
            own.add(name)
    if own is not None:
        defaults = [item for item in defaults if item[0] not in own]
    if length is not None and not framed and status not in _NO_BODY_STATUS:
        return [*defaults, *headers, (b"content-length", b"%d" % length)]
    if defaults:
        return [*defaults, *headers]
    return headers


# Apps that use task groups get the disconnect back wrapped in an exception group.
if sys.version_info >= (3, 11):
    from builtins import BaseExceptionGroup as _Group
else:  # no groups on 3.10 unless a library brings the backport; such hang-ups then log as errors
    _Group = ()


def _caused_by(exc: BaseException, cause: BaseException) -> bool:
    """Whether `exc` is `cause`, was raised `from` it (directly or down a chain), or is a group
    of only such. An exception merely raised while handling it is not: that is a new failure
    (cleanup code that broke), and stays an error."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if current is cause:
            return True
        if isinstance(current, _Group):
            return all(_caused_by(inner, cause) for inner in current.exceptions)
        seen.add(id(current))
        current = current.__cause__
    return False


class HTTPStream:
    """See the module docstring. Created by the connection handler per request."""

    __slots__ = (
        "_body",
        "_body_complete",
        "_body_left",
        "_body_read",
        "_body_sent",
        "_conn",
        "_continue_pending",
        "_disconnect",
        "_disconnected",
        "_final_sent",
        "_min_rate",
        "_pending_start",
        "_rate_timer",
        "_refused",
        "_response_bytes",
        "_response_complete",
        "_response_started",
        "_sent_headers",
        "_start_time",
        "_status",
        "_trailer_fields",
        "_trailers",
        "_wait_start",
        "_waited",
        "_waiter",
        "scope",
        "stream_id",
    )

    def __init__(self, conn: ConnectionHandler, event: RequestReceived) -> None:
        self._conn = conn
        self.stream_id = event.stream_id
        ctx = conn.context
        # Typed through Any rather than cast(): cast() is a function call at run time, and this
        # runs for every request.
        scope: Any = build_http_scope(
            event, conn.info, root_path=ctx.settings.root_path, state=ctx.state
        )
        self.scope: Scope = scope
        self._body: list[bytes] = []
        self._body_complete = False
        # Body bytes the request may still send before it is refused; None: no cap, and then
        # data_received costs one test more than it would without the feature.
        limit = ctx.settings.max_request_body_size
        self._body_left: int | None = limit if limit else None
        self._refused = False  # the body was refused (too large or too slow): 413/408 or reset
        # Slowest body accepted, bytes/second (0: off, and then receive() pays one test per
        # wait). The rest is kept only while it is on: body bytes handed to the app, seconds
        # the app waited for more, when the current wait began, and the timer armed for it.
        self._min_rate = ctx.settings.min_request_body_rate
        self._body_read = 0
        self._waited = 0.0
        self._wait_start = 0.0
        self._rate_timer: TimerHandle | None = None
        self._final_sent = False  # the `more_body: False` request message was delivered
        self._disconnected = False
        self._disconnect: ClientDisconnected | None = None  # the one send() raised, if any
        self._continue_pending = event.expects_continue
        self._waiter: Waiter | None = None
        self._pending_start: tuple[int, Headers] | None = None
        self._response_started = False
        self._response_complete = False
        self._body_sent = False  # the final http.response.body (more_body False) was sent
        self._trailers = False  # the response ends with trailers rather than its body
        self._trailer_fields: Headers = []
        self._sent_headers: Headers = []  # the response head as sent (for the access log)
        self._status = 0
        self._response_bytes = 0
        self._start_time = time.time() if ctx.loggers.access is not None else 0.0

    # ---- events from the connection -------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        left = self._body_left
        if left is not None:
            left -= len(data)
            self._body_left = left
            if left < 0:
                # Past the cap: never handed to the app, but the flow-control credit these
                # bytes used must come back, or an HTTP/2 or HTTP/3 connection stalls.
                self._conn.send(AcknowledgeData(stream_id=self.stream_id, amount=len(data)))
                if not self._refused:
                    self._refuse_body(_TOO_LARGE)
                return
        self._body.append(data)
        if self._rate_timer is not None:
            self._stop_waiting()  # the client's part is done; the app's turn is not counted
        self._wake()

    def ended(self) -> None:
        self._body_complete = True
        if self._rate_timer is not None:
            self._stop_waiting()
        self._wake()

    def client_gone(self) -> None:
        self._disconnected = True
        if self._rate_timer is not None:
            self._stop_waiting()
        self._wake()

    def going_away(self, restart: bool = False) -> None:
        """Nothing to start: the exchange finishes as it is; the core refuses new requests."""

    def _wake(self) -> None:
        if self._waiter is not None:
            self._waiter.set()

    # ---- the application call -------------------------------------------------------------

    async def run(self) -> None:
        ctx = self._conn.context
        try:
            if self._body_left is not None and self._refuse_announced():
                return  # answered 413; the application is not called
            await ctx.app(self.scope, self.receive, self.send)
        except Exception as exc:
            if self._disconnect is not None and _caused_by(exc, self._disconnect):
                # The app let our ClientDisconnected through, as most do: a peer that hung up is
                # not a server error, and a traceback per hang-up would bury the real ones.
                ctx.loggers.error.debug(
                    "client went away while the application was sending: %r", exc
                )
            else:
                ctx.loggers.error.error("Exception in ASGI application", exc_info=exc)
            self.abandon()
        except BaseException:
            self.abandon()
            raise
        else:
            if not self._response_complete:
                if not self._disconnected:
                    ctx.loggers.error.error(
                        "ASGI callable returned without completing the response"
                    )
                self.abandon()
        finally:
            if ctx.loggers.access is not None:
                self._log_access()

    def _refuse_announced(self) -> bool:
        """True when the body is refused before the application is called: it went over the
        cap already, or its Content-Length announces more than the cap."""
        if self._refused:
            return True
        limit = self._conn.context.settings.max_request_body_size
        if _announced_length(self.scope["headers"]) <= limit:
            return False
        self._refuse_body(_TOO_LARGE)
        return True

    # ---- min_request_body_rate --------------------------------------------------------------

    def _start_waiting(self) -> None:
        """The app waits for body bytes that have not come: the client's time starts. The timer
        is set for when, with nothing more arriving, the waiting time reaches the grace period
        and the rate so far drops below the minimum (bytes / waited < rate, i.e. waited >
        bytes / rate), whichever is later."""
        runtime = self._conn.runtime
        now = runtime.now()
        self._wait_start = now
        grace = self._conn.context.settings.min_request_body_rate_grace
        budget = max(grace, self._body_read / self._min_rate) - self._waited
        self._rate_timer = runtime.call_at(now + budget, self._too_slow)

    def _stop_waiting(self) -> None:
        timer = self._rate_timer
        if timer is not None:
            self._rate_timer = None
            timer.cancel()
            self._waited += self._conn.runtime.now() - self._wait_start

    def _too_slow(self) -> None:
        """The timer of the current wait fired: nothing came since it was armed, so the body is
        below the minimum rate."""
        if self._rate_timer is None:
            return  # the wait ended as the timer fell due
        self._rate_timer = None
        self._waited += self._conn.runtime.now() - self._wait_start
        ctx = self._conn.context
        ctx.loggers.error.debug(
            "request body from %s: %d bytes in %.1f s of waiting, below %d B/s; answered 408",
            self.scope["client"],
            self._body_read,
            self._waited,
            self._min_rate,
        )
        # The refusal writes to the connection from a timer, outside any of its guards.
        try:
            self._refuse_body(_TIMEOUT)
        except Exception as exc:
            ctx.loggers.error.error("Exception while refusing a slow request body", exc_info=exc)
            self._conn.abort()

    def _refuse_body(self, status: int) -> None:
        """The body is over `max_request_body_size` (413) or below `min_request_body_rate`
        (408; see the module docstring): drop what the app has not read, answer `status` if the
        response head has not gone out (else reset the stream), and treat the request as gone
        from the application's side."""
        self._refused = True
        if self._rate_timer is not None:
            self._stop_waiting()  # a 413 during a wait: that wait's timer must not add a 408
        # Body bytes still arriving take the over-the-cap path in data_received: acknowledged
        # (so HTTP/2 and HTTP/3 flow control stays open) and dropped.
        self._body_left = -1
        conn = self._conn
        if self._body:
            unread = sum(len(piece) for piece in self._body)
            self._body.clear()
            conn.send(AcknowledgeData(stream_id=self.stream_id, amount=unread))
        # receive() goes straight to http.disconnect, whether or not the body ends later.
        self._final_sent = True
        self._continue_pending = False  # a client waiting for 100 is answered 413 instead
        if not self._response_complete and not self._disconnected:
            self._response_complete = True
            if self._response_started and self._pending_start is None:
                conn.send(ResetStream(stream_id=self.stream_id))  # the app's head is out
            else:
                # A head the app passed to send() but that waits for its first body chunk is
                # replaced: nothing of it reached the client.
                self._pending_start = None
                self._status = status
                headers, body = error_response(status, conn.context.default_headers.get())
                self._sent_headers = headers
                self._response_bytes = len(body)
                conn.close_after_response()
                conn.send(
                    SendResponse(stream_id=self.stream_id, status=status, headers=headers),
                    SendData(stream_id=self.stream_id, data=body, end_stream=True),
                )
        self._disconnected = True
        self._wake()

    def abandon(self) -> None:
        """The application failed: a 500 if nothing was sent yet, else cut the stream."""
        if self._response_complete or self._disconnected:
            return
        self._response_complete = True
        if self._response_started and self._pending_start is None:
            self._conn.send(ResetStream(stream_id=self.stream_id))
            return
        self._status = 500
        headers, body = error_response(500, self._conn.context.default_headers.get())
        self._response_bytes = len(body)
        self._conn.send(
            SendResponse(stream_id=self.stream_id, status=500, headers=headers),
            SendData(stream_id=self.stream_id, data=body, end_stream=True),
        )

    async def receive(self) -> Message:
        while True:
            if self._body:
                data = b"".join(self._body) if len(self._body) > 1 else self._body[0]
                self._body.clear()
                self._conn.send(AcknowledgeData(stream_id=self.stream_id, amount=len(data)))
                self._body_read += len(data)
                more = not self._body_complete
                self._final_sent = not more
                return {"type": "http.request", "body": data, "more_body": more}
            if self._body_complete and not self._final_sent:
                self._final_sent = True
                return {"type": "http.request", "body": b"", "more_body": False}
            if self._disconnected or (self._response_complete and self._final_sent):
                return {"type": "http.disconnect"}
            if self._continue_pending:
                # RFC 9110 10.1.1: the 100 goes out only once the app wants the body.
                self._continue_pending = False
                self._conn.send(SendInformational(stream_id=self.stream_id, status=100))
            if self._waiter is None:
                self._waiter = self._conn.runtime.waiter()
            self._waiter.clear()
            if self._min_rate and not self._body_complete:
                # Waiting on the client: its time counts towards min_request_body_rate.
                self._start_waiting()
                try:
                    await self._waiter.wait()
                finally:
                    self._stop_waiting()  # also when the app cancels its receive()
            else:
                await self._waiter.wait()

    async def send(self, message: Message) -> None:
        if self._disconnected:
            # Kept, to tell this (the peer hung up) from an app's own failure in run().
            self._disconnect = ClientDisconnected("the client has disconnected")
            raise self._disconnect
        kind = message["type"]
        if kind == "http.response.body":
            # The body path is synchronous up to the drain: no coroutine of its own per message.
            if self._send_body(message):
                await self._conn.drain(self.stream_id)
        elif kind == "http.response.start":
            if self._response_started:
                raise UnexpectedMessage("http.response.start sent twice")
            status = int(message["status"])
            headers = asgi_headers(message.get("headers", ()))
            self._response_started = True
            self._status = status
            self._pending_start = (status, headers)
            # Trailers only where the extension was offered (the client sent TE: trailers).
            if message.get("trailers", False):
                self._trailers = "http.response.trailers" in self.scope["extensions"]
        elif kind == "http.response.trailers":
            self._send_trailers(message)
        elif kind == "http.response.early_hint":
            # Only useful, and only possible, before the final response head goes out.
            if self._pending_start is not None or not self._response_started:
                links = [(b"link", bytes(link)) for link in message.get("links", ())]
                if links:
                    self._conn.send(
                        SendInformational(stream_id=self.stream_id, status=103, headers=links)
                    )
        elif kind == "http.response.push":
            if "http.response.push" in self.scope["extensions"]:
                path = str(message["path"]).encode()
                self._conn.send(
                    PushPromise(
                        stream_id=self.stream_id,
                        path=path,
                        headers=asgi_headers(message.get("headers", ())),
                    )
                )
        else:
            raise UnexpectedMessage(f"unexpected ASGI message type {kind!r} on an http stream")

    def _send_trailers(self, message: Message) -> None:
        if not self._body_sent:
            raise UnexpectedMessage("http.response.trailers sent before the final body")
        if self._response_complete:
            raise UnexpectedMessage("http.response.trailers sent after the response completed")
        self._trailer_fields.extend(asgi_headers(message.get("headers", ())))
        if not message.get("more_trailers", False):
            self._response_complete = True
            self._conn.send(SendTrailers(stream_id=self.stream_id, headers=self._trailer_fields))
            self._wake()

    def _send_body(self, message: Message) -> bool:
        """Hand one body message to the connection; True when the app may send more, so that
        `send()` waits for the transport to drain."""
        if not self._response_started:
            raise UnexpectedMessage("http.response.body sent before http.response.start")
        if self._response_complete or self._body_sent:
            raise UnexpectedMessage("http.response.body sent after the response completed")
        body = bytes(message.get("body", b""))
        more = bool(message.get("more_body", False))
        ends = not more and not self._trailers
        data = SendData(stream_id=self.stream_id, data=body, end_stream=ends)
        start = self._pending_start
        if start is not None:
            # The head waits for the first body chunk so a one-shot body gets a Content-Length
            # rather than chunked framing, and both go out in one write. If the protocol refuses
            # the head, nothing was sent and the failure still becomes a 500.
            self._conn.send(self._response_command(start, body, more), data)
            self._pending_start = None
        else:
            self._conn.send(data)
        self._response_bytes += len(body)
        if more:
            return True
        self._body_sent = True
        if ends:
            self._response_complete = True
            self._wake()
        return False

    def _response_command(self, start: tuple[int, Headers], body: bytes, more: bool) -> Command:
        status, headers = start
        known = (
            not more
            and not self._trailers
            and status >= 200
            and (body or self.scope["method"] != "HEAD")
        )
        headers = response_headers(
            status,
            headers,
            self._conn.context.default_headers.get(),
            length=len(body) if known else None,
        )
        self._sent_headers = headers
        return SendResponse(stream_id=self.stream_id, status=status, headers=headers)

    def _log_access(self) -> None:
        scope: Any = self.scope
        record = AccessRecord(
            client=scope["client"],
            method=scope["method"],
            path=scope["path"],
            query_string=scope["query_string"],
            http_version=scope["http_version"],
            status=self._status,
            response_bytes=self._response_bytes,
            request_headers=scope["headers"],
            response_headers=self._pending_start[1] if self._pending_start else self._sent_headers,
            start_time=self._start_time,
            duration=time.time() - self._start_time,
        )
        log_access(self._conn.context.loggers, record)
