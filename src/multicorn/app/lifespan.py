"""The ASGI lifespan protocol (spec 2.0): startup and shutdown events, with `state`.

`auto` treats an application that raises before answering startup as one that does not speak
lifespan (common for plain frameworks-less apps) and serves anyway; `on` makes that a failure.
An app that called `receive()` does speak it: if it raises, that is its own failure and is logged
with its traceback even in `auto`.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from multicorn.app.errors import LifespanFailure, StartupInterrupted, UnexpectedMessage

if TYPE_CHECKING:
    import logging

    from multicorn.runtime.base import Runtime, Waiter
    from multicorn.typing import ASGIApp, Message


class Lifespan:
    def __init__(
        self, app: ASGIApp, *, mode: str, runtime: Runtime, logger: logging.Logger
    ) -> None:
        self._app = app
        self._mode = mode
        self._runtime = runtime
        self._logger = logger
        self.state: dict[str, Any] = {}
        self._inbox: deque[Message] = deque()
        self._inbox_waiter = runtime.waiter()
        self._answer: Message | None = None
        self._answered: Waiter = runtime.waiter()
        self._supported = False
        self._received = False  # the application asked for a lifespan event: it speaks lifespan
        self._finished = False  # the application's lifespan task has returned
        self._app_error: BaseException | None = None
        self._starting = False  # startup() is waiting for the app's answer
        self._interrupted = False  # interrupt() came while it was: stop waiting

    async def startup(self, timeout: float) -> None:
        if self._mode == "off":
            return
        self._runtime.spawn(self._run)
        self._starting = True
        try:
            answer = await self._ask({"type": "lifespan.startup"}, timeout, "startup")
        finally:
            self._starting = False
        if answer is None:
            return
        if answer["type"] == "lifespan.startup.failed":
            message = str(answer.get("message", "")).strip()
            if "\n" in message:
                # A traceback (Starlette sends one): logged whole, once; the error that stops
                # the server keeps to its last line, the exception itself.
                self._logger.error("application startup failed:\n%s", message)
                message = message.splitlines()[-1]
            raise LifespanFailure(f"application startup failed: {message}")

    def interrupt(self) -> None:
        """Abandon a startup in progress (a signal asked the server to stop): `startup()` raises
        StartupInterrupted instead of waiting on. The app's task is cancelled with the session,
        and shutdown is not sent (its startup never completed). Outside startup: nothing."""
        if not self._starting:
            return
        self._interrupted = True
        self._answered.set()

    async def shutdown(self, timeout: float) -> None:
        if not self._supported:
            return
        try:
            answer = await self._ask({"type": "lifespan.shutdown"}, timeout, "shutdown")
        except LifespanFailure as exc:
            self._logger.error("%s", exc)
            return
        if answer is not None and answer["type"] == "lifespan.shutdown.failed":
            self._logger.error("application shutdown failed: %s", answer.get("message", ""))

    async def _ask(self, message: Message, timeout: float, phase: str) -> Message | None:
        self._answered.clear()
        self._answer = None
        self._inbox.append(message)
        self._inbox_waiter.set()
        # The task may have ended already (an app that returns at once, under an eager loop).
        if not self._finished and not await self._runtime.wait_for(self._answered, timeout):
            raise LifespanFailure(f"application {phase} did not complete within {timeout} s")
        if self._interrupted:
            raise StartupInterrupted(f"a signal interrupted the application's {phase}")
        if self._answer is None:
            # The app returned or raised instead of answering.
            if self._supported or self._mode == "on":
                raise LifespanFailure(
                    f"application {phase} failed: the lifespan task ended without answering"
                    + (f" ({self._app_error!r})" if self._app_error else "")
                )
            return None
        return self._answer

    async def _run(self) -> None:
        scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": self.state,
        }
        try:
            await self._app(scope, self._receive, self._send)
        except Exception as exc:
            self._app_error = exc
            if self._answer is not None and self._answer["type"].endswith(".failed"):
                # The app reported this failure itself, often with this very traceback as the
                # message (Starlette does): startup()/shutdown() show it, once.
                pass
            elif self._supported or self._received or self._mode == "on":
                self._logger.error("Exception in 'lifespan' protocol", exc_info=exc)
            else:
                self._logger.info("ASGI 'lifespan' protocol appears unsupported.")
        finally:
            self._finished = True
            self._answered.set()

    async def _receive(self) -> Message:
        self._received = True
        while not self._inbox:
            self._inbox_waiter.clear()
            await self._inbox_waiter.wait()
        return self._inbox.popleft()

    async def _send(self, message: Message) -> None:
        kind = message["type"]
        if kind not in (
            "lifespan.startup.complete",
            "lifespan.startup.failed",
            "lifespan.shutdown.complete",
            "lifespan.shutdown.failed",
        ):
            raise UnexpectedMessage(f"unexpected ASGI message type {kind!r} in lifespan")
        self._supported = True
        self._answer = message
        self._answered.set()
