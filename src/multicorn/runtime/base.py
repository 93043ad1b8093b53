"""The small interface the ASGI layer (app/) and the shared server code use to reach a runtime.

Each backend (asyncio, trio) implements these shapes; app/ only ever sees them, so the same
ASGI and connection logic runs on both. Waiters have a synchronous `set()` so protocol callbacks
can wake an application task without being async themselves.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol


class TaskHandle(Protocol):
    def cancel(self) -> object: ...


class Waiter(Protocol):
    """A resettable event."""

    def set(self) -> None: ...
    def clear(self) -> None: ...
    def is_set(self) -> bool: ...
    async def wait(self) -> object: ...


class Runtime(Protocol):
    def now(self) -> float:
        """Monotonic seconds, the clock every deadline is measured on."""

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> TaskHandle: ...

    def waiter(self) -> Waiter: ...

    def call_soon(self, fn: Callable[[], object]) -> None:
        """Run `fn` once the tasks ready now have run (to batch their writes into one)."""

    async def wait_for(self, waiter: Waiter, timeout: float | None) -> bool:
        """Wait until `waiter` is set or `timeout` passes; True if it was set."""


class Transport(Protocol):
    """What a connection handler needs from the backend's socket for one connection."""

    # True when close() completes without any task of ours (asyncio's transports flush and
    # close inside the loop); False when the backend's own writer must still run (trio).
    closes_by_itself: bool

    def write(self, data: bytes) -> None:
        """Queue bytes; never blocks (the backend calls pause_writing on the handler)."""

    def close(self) -> None:
        """Close after everything written so far has been sent."""

    def abort(self) -> None:
        """Close now, dropping unsent data and cancelling the connection's tasks."""

    def set_reading(self, enabled: bool) -> None: ...

    def set_deadline(self, deadline: float | None) -> None:
        """Call the handler's `deadline_reached()` at `deadline` (runtime clock); None disarms."""


class Handler(Protocol):
    """The runtime-neutral connection handler, as a backend drives it (app.connection)."""

    def data_received(self, data: bytes) -> None: ...
    def eof_received(self) -> None: ...
    def deadline_reached(self) -> None: ...
    def pause_writing(self) -> None: ...
    def resume_writing(self) -> None: ...
    def connection_lost(self) -> None: ...


# Called by a backend for each accepted connection:
# (transport, runtime, peername, sockname, ssl object or None once the TLS handshake is done).
HandlerFactory = Callable[[Transport, Runtime, Any, Any, Any], Handler]
