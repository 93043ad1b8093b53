"""What every TCP-side protocol core (HTTP/1.1, HTTP/2) offers the layer above.

The ASGI layer and the runtime backends hold one object of this shape per connection and never
learn which HTTP version it speaks.
"""

from __future__ import annotations

from typing import Protocol

from multicorn.protocol.events import Command, Event


class ServerProtocol(Protocol):
    # Several streams share the connection (HTTP/2): their writes are worth batching.
    multiplexed: bool

    def receive_data(self, data: bytes, now: float) -> list[Event]:
        """Feed bytes from the peer; b"" means the peer closed its sending side."""

    def send(self, command: Command, now: float) -> list[Event]:
        """Apply a command; may release input that was held back (pipelined requests)."""

    def data_to_send(self) -> bytes:
        """Bytes to write now (and forget)."""

    def next_deadline(self) -> float | None:
        """When `handle_deadline` must be called next, or None."""

    def handle_deadline(self, now: float) -> list[Event]: ...

    def pending_send(self, stream_id: int) -> int:
        """Bytes of the stream's body queued but not yet framed (waiting for flow control)."""

    @property
    def wants_read(self) -> bool:
        """False while the application has not caught up with input already buffered."""

    @property
    def closed(self) -> bool:
        """True once the connection should be closed (after flushing `data_to_send()`)."""
