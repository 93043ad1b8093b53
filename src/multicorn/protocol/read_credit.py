"""QUIC receive credit granted as the application reads, not as data arrives.

aioquic raises a stream's receive window (MAX_STREAM_DATA) and the connection's (MAX_DATA) by
doubling it whenever the peer has sent half of it, whatever the application has done with the
bytes, so a client can push a request body faster than the application reads it and the server
buffers all of it. `ReadCredit` is the bookkeeping that lets the QUIC connection (protocol/quic.py)
grant credit the way HTTP/2 does here instead: a stream may send `stream_window` bytes beyond
what has been consumed, and the connection `connection_window` beyond what all its streams have
consumed. "Consumed" is what the HTTP/3 layer took from QUIC (framing, control and QPACK streams
count at once) minus the body bytes handed to the application and not yet read
(`delivered`/`read`), minus what the HTTP/3 layer holds itself (a frame not complete yet, input
behind a QPACK-blocked head: `held`).

RFC 9000 4.1: "A receiver MUST NOT renege on an advertisement"; limits here only ever grow. And
4.2: a receiver "could avoid sending a MAX_STREAM_DATA frame each time" it consumes data: a
limit is raised only once half a window has been consumed, so a steady reader costs one frame per
half window.
"""

from __future__ import annotations

from collections.abc import Callable


class ReadCredit:
    """See the module docstring. `held(stream_id)` reports the bytes of a stream that the
    HTTP/3 layer has taken from QUIC but not passed on yet."""

    __slots__ = (
        "_held",
        "_since",
        "_since_total",
        "_unread",
        "connection_window",
        "stream_window",
        "taken",
        "unread_total",
    )

    def __init__(
        self, *, stream_window: int, connection_window: int, held: Callable[[int], int]
    ) -> None:
        self.stream_window = stream_window
        self.connection_window = connection_window
        self._held = held
        self._unread: dict[int, int] = {}
        self.unread_total = 0
        # Bytes read since `read` last said a new limit was due, per stream and in all.
        self._since: dict[int, int] = {}
        self._since_total = 0
        self.taken = 0  # bytes the HTTP/3 layer took from QUIC, all streams together

    def delivered(self, stream_id: int, amount: int) -> None:
        """`amount` body bytes of `stream_id` went to the application, unread so far."""
        self._unread[stream_id] = self._unread.get(stream_id, 0) + amount
        self.unread_total += amount

    def read(self, stream_id: int, amount: int) -> bool:
        """The application consumed `amount` body bytes of `stream_id`. True when, since the
        last True, half a window has been read (of the stream or of the connection): a larger
        limit is then worth sending without waiting for other output."""
        unread = self._unread.get(stream_id)
        if unread is None:
            return False  # the stream is over: its bytes stopped counting when it was forgotten
        amount = min(amount, unread)
        self._unread[stream_id] = unread - amount
        self.unread_total -= amount
        since = self._since.get(stream_id, 0) + amount
        self._since_total += amount
        due = False
        if since >= self.stream_window // 2:
            since = 0
            due = True
        if self._since_total >= self.connection_window // 2:
            self._since_total = 0
            due = True
        self._since[stream_id] = since
        return due

    def forget(self, stream_id: int) -> None:
        """The stream is over: what it left unread no longer holds credit back."""
        self.unread_total -= self._unread.pop(stream_id, 0)
        self._since.pop(stream_id, None)

    def stream_limit(self, stream_id: int, taken: int, current: int) -> int:
        """The MAX_STREAM_DATA to grant a stream of which the HTTP/3 layer has taken `taken`
        bytes, given the limit granted so far."""
        consumed = taken - self._unread.get(stream_id, 0) - self._held(stream_id)
        return _raised(consumed + self.stream_window, current, self.stream_window)

    def connection_limit(self, current: int) -> int:
        """The MAX_DATA to grant, given the limit granted so far."""
        consumed = self.taken - self.unread_total
        return _raised(consumed + self.connection_window, current, self.connection_window)


def _raised(wanted: int, current: int, window: int) -> int:
    return wanted if wanted - current >= window // 2 else current
