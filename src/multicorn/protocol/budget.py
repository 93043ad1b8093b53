"""The token bucket every budget of the protocol cores is made of (HTTP/2's control frames and
resets, HTTP/3's resets, the QUIC endpoint's stateless resets), on the injected clock."""

from __future__ import annotations


class TokenBucket:
    """`budget` is (burst, refill per second); `take(now)` is False once the peer overspends.

    A clock that goes backwards (never the runtime's, but a caller's mistake) refills nothing."""

    __slots__ = ("_capacity", "_last", "_rate", "_tokens")

    def __init__(self, budget: tuple[float, float], now: float) -> None:
        self._capacity, self._rate = budget
        self._tokens = self._capacity
        self._last = now

    def take(self, now: float) -> bool:
        if now > self._last:
            self._tokens = min(self._capacity, self._tokens + (now - self._last) * self._rate)
            self._last = now
        if self._tokens < 1.0:
            return False  # refused takes cost nothing: the refill rate is the steady rate
        self._tokens -= 1.0
        return True
