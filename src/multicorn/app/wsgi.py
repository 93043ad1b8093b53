"""WSGI applications (PEP 3333) served as ASGI ones, in a bounded set of worker threads.

`WSGIAdapter` is an ASGI 3 application: the `http` bridge drives it like any other, so a WSGI
app is served over every HTTP version with the same limits, logs and errors. Each request takes
one of `max_workers` slots (a request beyond them waits in the loop, holding no thread), then
runs the WSGI callable through `Runtime.run_sync`.

Theory of operation. The worker thread and the request's ASGI task meet in a `_Call`. The thread
never touches the stream: it asks the loop (`Runtime.call_from_thread`) for one thing at a time,
"the next piece of the body" or "send these messages", and blocks on a `threading.Event` until
the ASGI task has done it with `receive()` or `send()`. Nothing is queued between them, so both
directions have backpressure without a buffer of their own:
- request body: the loop calls `receive()` only when `wsgi.input` has run dry and the app wants
  more; unread body stays behind flow control in the protocol, not here. `wsgi.input` holds at
  most one received piece beyond what the app asked for.
- response: each chunk the app's iterable yields is sent before the thread asks the iterable
  for the next one; `send()` returns only once the transport has room (the bridge's drain), so a
  slow reader holds the app's generator back.
The response head waits for the first non-empty chunk (PEP 3333: headers go out with the first
body bytes), and a one-element list or tuple is sent as the whole body, so it gets a
Content-Length. `close()` of the iterable is always called, in the worker thread.

Errors: what the app raises is re-raised in the ASGI task, so the bridge logs it and answers 500
if the head has not gone out, else resets the stream. When the ASGI task ends early (the client
went away, the graceful timeout cancelled it) the thread's next ask fails at once with
`ClientDisconnected`, which unwinds the app; a thread stuck elsewhere in the app is left to
finish on its own (worker threads never keep the process from exiting) and keeps its slot until
then, so no more than `max_workers` threads ever run the app.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote_to_bytes

from multicorn.app.errors import ClientDisconnected, UnexpectedMessage

if TYPE_CHECKING:
    import logging
    from collections.abc import Callable, Iterable, Iterator
    from types import TracebackType

    from multicorn.runtime.base import Runtime, Waiter
    from multicorn.typing import Message, Receive, Scope, Send

    _ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]

# Size of the blocks `wsgi.file_wrapper` reads: at least this, whatever block size the app
# suggests (frameworks pass 8 KiB), as each block costs a round trip between thread and loop.
_FILE_BLOCK = 64 * 1024


class StartResponse(Protocol):
    """PEP 3333's start_response callable."""

    def __call__(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: _ExcInfo | None = None,
        /,
    ) -> Callable[[bytes], object]: ...


class WSGIApp(Protocol):
    """A PEP 3333 application."""

    def __call__(
        self, environ: dict[str, Any], start_response: StartResponse, /
    ) -> Iterable[bytes]: ...


class FileWrapper:
    """`wsgi.file_wrapper`: iterates over a file-like object in blocks, closes it on close()."""

    def __init__(self, filelike: Any, blksize: int = 8192) -> None:
        self.filelike = filelike
        self.blksize = max(blksize, _FILE_BLOCK)

    def __iter__(self) -> Iterator[bytes]:
        read = self.filelike.read
        while True:
            block = read(self.blksize)
            if not block:
                return
            yield block

    def close(self) -> None:
        close = getattr(self.filelike, "close", None)
        if close is not None:
            close()


class _Errors:
    """`wsgi.errors`: text written here goes to the error log, one record per line."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._partial = ""

    def write(self, text: str) -> int:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._logger.error("%s", line)
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self._partial:
            self._logger.error("%s", self._partial)
            self._partial = ""


class _Input:
    """`wsgi.input`: the request body, fetched from the loop as the app reads it."""

    def __init__(self, call: _Call) -> None:
        self._call = call
        self._buffer = bytearray()
        self._eof = False

    def _fill(self) -> bool:
        """One more piece of the body into the buffer; False at the end of the body."""
        if self._eof:
            return False
        data, more = self._call.next_body()
        self._buffer += data
        if not more:
            self._eof = True
        return bool(data)

    def _take(self, size: int) -> bytes:
        buffer = self._buffer
        data = bytes(buffer[:size])
        del buffer[:size]
        return data

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            while self._fill():
                pass
            return self._take(len(self._buffer))
        while len(self._buffer) < size and self._fill():
            pass
        return self._take(size)

    def readline(self, size: int | None = -1) -> bytes:
        limit = -1 if size is None else size
        start = 0
        while True:
            buffer = self._buffer
            end = buffer.find(b"\n", start)
            if end != -1 and (limit < 0 or end < limit):
                return self._take(end + 1)
            if 0 <= limit <= len(buffer):
                return self._take(limit)
            start = len(buffer)
            if not self._fill():
                return self._take(len(self._buffer))

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                return lines

    def __iter__(self) -> Iterator[bytes]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line


def build_environ(
    scope: Scope, body: Any, errors: Any, *, multiprocess: bool = False
) -> dict[str, Any]:
    """The WSGI environ of an ASGI `http` scope (PEP 3333). Paths are the percent-decoded bytes
    as latin-1 text, as PEP 3333 has it; SCRIPT_NAME is the root path. Header names with an
    underscore are left out: `X_Forwarded_For` would otherwise arrive as `X-Forwarded-For`'s
    HTTP_X_FORWARDED_FOR, past a proxy that only filters the hyphenated name (nginx and Gunicorn
    drop such headers for the same reason)."""
    root = str(scope.get("root_path", "")).encode("utf-8")
    raw_path = scope.get("raw_path")
    path = unquote_to_bytes(raw_path) if raw_path else str(scope["path"]).encode("utf-8")
    if root and path.startswith(root):
        path = path[len(root) :]
    scheme = scope.get("scheme", "http")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": root.decode("latin-1"),
        "PATH_INFO": path.decode("latin-1"),
        "QUERY_STRING": bytes(scope.get("query_string", b"")).decode("latin-1"),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scheme,
        "wsgi.input": body,
        "wsgi.errors": errors,
        "wsgi.multithread": True,
        "wsgi.multiprocess": multiprocess,  # other worker processes serve the same app
        "wsgi.run_once": False,
        # The body ends where the client says: read to EOF even without a Content-Length
        # (a chunked body). Werkzeug reads such bodies only when this is set.
        "wsgi.input_terminated": True,
        "wsgi.file_wrapper": FileWrapper,
    }
    server = scope.get("server")
    if server is not None:
        host, port = server
        environ["SERVER_NAME"] = host
        environ["SERVER_PORT"] = str(port) if port is not None else "0"
    else:
        environ["SERVER_NAME"] = "localhost"
        environ["SERVER_PORT"] = "443" if scheme == "https" else "80"
    client = scope.get("client")
    if client is not None:
        environ["REMOTE_ADDR"] = client[0]
        environ["REMOTE_PORT"] = str(client[1])
    for raw_name, raw_value in scope["headers"]:
        name = bytes(raw_name).decode("latin-1")
        if "_" in name:
            continue
        value = bytes(raw_value).decode("latin-1")
        if name == "content-type":
            key = "CONTENT_TYPE"
        elif name == "content-length":
            key = "CONTENT_LENGTH"
        else:
            key = "HTTP_" + name.upper().replace("-", "_")
        if key in environ:
            # RFC 9110 5.3: repeated fields join with commas; RFC 9113 8.2.3: cookies with "; ".
            environ[key] += ("; " if key == "HTTP_COOKIE" else ", ") + value
        else:
            environ[key] = value
    return environ


def _encode_headers(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    try:
        return [
            (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers
        ]
    except (AttributeError, UnicodeEncodeError, ValueError) as exc:
        raise TypeError(
            "WSGI response headers must be a list of (str, str) pairs in latin-1 (PEP 3333)"
        ) from exc


def _status_code(status: str) -> int:
    code, _, _ = str(status).partition(" ")
    if len(code) != 3 or not code.isdigit():
        raise ValueError(f"WSGI status {status!r} does not start with a 3-digit code")
    return int(code)


class _RequestOver(ClientDisconnected):
    """What the app's body reads and writes raise once its request cannot go on: the client
    left, or the server ended the request."""


class _Call:
    """One WSGI call: where its worker thread and its ASGI task meet (see the module
    docstring). Methods run in the thread unless their docstring says "loop"."""

    def __init__(self, runtime: Runtime, on_done: Callable[[], object]) -> None:
        self._runtime = runtime
        self._on_done = on_done
        # Loop side.
        self._wake: Waiter = runtime.waiter()
        self._request: tuple[str, list[Message]] | None = None
        self._thread_waits = False  # an ask was delivered to the loop and not answered yet
        self.gone = False  # the ASGI task stopped serving: every ask fails at once
        self.finished = False  # the thread is done with the app
        # Thread side.
        self._answered = threading.Event()
        self._answer: Any = None
        self._status: int | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_sent = False
        self.error: BaseException | None = None  # what the app (or its close()) raised

    # ---- the worker thread -----------------------------------------------------------------

    def _ask(self, kind: str, messages: list[Message]) -> Any:
        if self.gone:
            raise _RequestOver("the request is over: the client left or it was cancelled")
        self._answered.clear()
        try:
            self._runtime.call_from_thread(partial(self._asked, kind, messages))
        except RuntimeError as exc:
            raise _RequestOver("the server has stopped") from exc
        self._answered.wait()
        answer, self._answer = self._answer, None
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def next_body(self) -> tuple[bytes, bool]:
        """The next piece of the request body and whether more follows; blocks until the loop
        has it."""
        answer: tuple[bytes, bool] = self._ask("body", [])
        return answer

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: _ExcInfo | None = None,
        /,
    ) -> Callable[[bytes], object]:
        if exc_info is not None:
            try:
                if self._head_sent:
                    # PEP 3333: too late to replace the head; the error goes on up.
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # no reference cycle through the traceback
        elif self._status is not None:
            raise RuntimeError("start_response() called a second time without exc_info")
        self._status = _status_code(status)
        self._headers = _encode_headers(headers)
        return self._write

    def _write(self, data: bytes) -> None:
        """The legacy `write()` callable start_response returns (PEP 3333)."""
        if data:
            self._send(bytes(data), more=True)

    def _send(self, body: bytes, *, more: bool) -> None:
        messages: list[Message] = []
        if not self._head_sent:
            if self._status is None:
                raise RuntimeError("the WSGI application did not call start_response()")
            messages.append(
                {"type": "http.response.start", "status": self._status, "headers": self._headers}
            )
            self._head_sent = True
        messages.append({"type": "http.response.body", "body": body, "more_body": more})
        self._ask("send", messages)

    def run(self, app: WSGIApp, environ: dict[str, Any]) -> None:
        """The thread's whole job: call the app, send what it returns, close it."""
        errors = environ["wsgi.errors"]  # before the app can replace it
        try:
            result = app(environ, self.start_response)
            try:
                if isinstance(result, (list, tuple)) and len(result) == 1:
                    self._send(bytes(result[0]), more=False)
                else:
                    for chunk in result:
                        if chunk:
                            self._send(bytes(chunk), more=True)
                    self._send(b"", more=False)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        except BaseException as exc:
            self.error = exc
        finally:
            errors.flush()
            # RuntimeError: the loop is gone, and nobody waits for this call any more.
            with contextlib.suppress(RuntimeError):
                self._runtime.call_from_thread(self._thread_done)

    # ---- the loop ----------------------------------------------------------------------------

    def _asked(self, kind: str, messages: list[Message]) -> None:
        """Loop: the thread asks for something."""
        if self.gone:
            self._reply(_RequestOver("the request is over"))
            return
        self._thread_waits = True
        self._request = (kind, messages)
        self._wake.set()

    def _reply(self, answer: object) -> None:
        """Loop: hand the thread its answer and let it run on."""
        self._thread_waits = False
        self._answer = answer
        self._answered.set()

    def _thread_done(self) -> None:
        """Loop: the thread has returned from the app."""
        self.finished = True
        self._wake.set()
        self._on_done()

    async def serve(self, receive: Receive, send: Send) -> None:
        """Loop: do what the thread asks until it is done with the app."""
        while True:
            request = self._request
            if request is not None:
                self._request = None
                kind, messages = request
                try:
                    if kind == "body":
                        self._reply(await self._receive_body(receive))
                    else:
                        for message in messages:
                            await send(message)
                        self._reply(None)
                except Exception as exc:
                    self._reply(exc)  # e.g. ClientDisconnected: the app unwinds with it
            elif self.finished:
                return
            else:
                self._wake.clear()
                await self._wake.wait()

    @staticmethod
    async def _receive_body(receive: Receive) -> tuple[bytes, bool] | BaseException:
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "http.request":
                data = bytes(message.get("body", b""))
                more = bool(message.get("more_body", False))
                if data or not more:
                    return data, more
            elif kind == "http.disconnect":
                return _RequestOver("the client went away before the end of the body")
            else:
                raise UnexpectedMessage(f"unexpected ASGI message {kind!r} for a request body")

    def stop(self) -> None:
        """Loop: the ASGI task is done, finished or not: whatever the thread waits for, and all
        it asks from now on, fails with ClientDisconnected."""
        self.gone = True
        if self._thread_waits:
            self._reply(_RequestOver("the request is over"))


class WSGIAdapter:
    """An ASGI 3 application that serves `app`, a WSGI application, from worker threads."""

    def __init__(
        self,
        app: WSGIApp,
        *,
        runtime: Runtime,
        max_workers: int,
        logger: logging.Logger,
        multiprocess: bool = False,
    ) -> None:
        self._app = app
        self._multiprocess = multiprocess
        self._runtime = runtime
        self._logger = logger
        self._free = max_workers  # slots not taken
        self._queue: deque[Waiter] = deque()  # requests waiting for a slot, in arrival order

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            # WSGI has no WebSockets: refuse the handshake (the bridge answers 403).
            await send({"type": "websocket.close", "code": 1000})
        else:
            raise UnexpectedMessage(f"a WSGI application cannot serve {kind!r} scopes")

    @staticmethod
    async def _lifespan(receive: Receive, send: Send) -> None:
        """WSGI has no lifespan: answer both events, so `--lifespan on` works too."""
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _acquire(self) -> None:
        if self._free and not self._queue:
            self._free -= 1
            return
        waiter = self._runtime.waiter()
        self._queue.append(waiter)
        try:
            await waiter.wait()
        except BaseException:
            if waiter.is_set():
                self._release()  # handed a slot as it was cancelled: pass it on
            else:
                self._queue.remove(waiter)
            raise

    def _release(self) -> None:
        if self._queue:
            self._queue.popleft().set()  # the slot goes straight to the next in line
        else:
            self._free += 1

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._acquire()
        runtime = self._runtime
        call = _Call(runtime, self._release)
        try:
            environ = build_environ(
                scope, _Input(call), _Errors(self._logger), multiprocess=self._multiprocess
            )
            runtime.spawn(self._in_thread, call, environ)
        except BaseException:
            self._release()
            raise
        try:
            await call.serve(receive, send)
        finally:
            call.stop()
            if not call.finished:
                self._logger.warning(
                    "WSGI application still running for %s %s after its request ended; "
                    "its thread is left to finish",
                    scope["method"],
                    scope["path"],
                )
        error = call.error
        if error is not None:
            call.error = None
            if isinstance(error, _RequestOver):
                # The app unwound because its request could not go on: not its failure.
                self._logger.debug("WSGI request ended early: %s", error)
                return
            if isinstance(error, Exception):
                raise error
            raise RuntimeError(f"the WSGI application raised {error!r}") from error

    async def _in_thread(self, call: _Call, environ: dict[str, Any]) -> None:
        # call.run catches everything the app raises; its slot is released by _thread_done,
        # when the thread is really done, even if this wait was cancelled before that.
        await self._runtime.run_sync(partial(call.run, self._app, environ))
