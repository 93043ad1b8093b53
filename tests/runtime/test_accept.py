"""`accept_pending`, the accept loop both backends share: what each accept() outcome makes the
backend do next, with a fake listening socket (no loop, no I/O)."""

from __future__ import annotations

import errno
import logging
from typing import Any

import pytest

from multicorn.runtime.base import (
    ACCEPT_BACK_OFF,
    ACCEPT_BATCH,
    ACCEPT_CLOSED,
    ACCEPT_DRAINED,
    accept_pending,
)


class _Conn:
    def __init__(self) -> None:
        self.blocking = True

    def setblocking(self, flag: bool) -> None:
        self.blocking = flag


class _Listening:
    """accept() hands out `ready` connections, then raises `then` (None: accepts forever)."""

    def __init__(self, ready: int, then: BaseException | None) -> None:
        self.ready = ready
        self.then = then
        self.calls = 0

    def accept(self) -> tuple[_Conn, tuple[str, int]]:
        self.calls += 1
        if self.ready or self.then is None:
            self.ready -= 1
            return _Conn(), ("127.0.0.1", 40000 + self.calls)
        raise self.then


def _accept(sock: _Listening) -> tuple[list[tuple[Any, Any]], int]:
    return accept_pending(sock, logging.getLogger("test"))  # type: ignore[arg-type]


def test_every_waiting_connection_comes_out_non_blocking() -> None:
    accepted, then = _accept(_Listening(5, BlockingIOError()))
    assert then == ACCEPT_DRAINED
    assert len(accepted) == 5
    assert all(not conn.blocking for conn, _ in accepted)


def test_a_batch_is_bounded() -> None:
    sock = _Listening(0, None)
    accepted, then = _accept(sock)
    assert (len(accepted), then, sock.calls) == (ACCEPT_BATCH, ACCEPT_DRAINED, ACCEPT_BATCH)


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS])
def test_out_of_resources_backs_off_and_logs(code: int, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, "test"):
        accepted, then = _accept(_Listening(2, OSError(code, "no more")))
    assert (len(accepted), then) == (2, ACCEPT_BACK_OFF)
    assert "retrying in 100 ms" in caplog.text


@pytest.mark.parametrize("code", [errno.EBADF, errno.ENOTSOCK, errno.EINVAL])
def test_a_closed_listening_socket_stops_it(code: int) -> None:
    assert _accept(_Listening(1, OSError(code, "closed")))[1] == ACCEPT_CLOSED


@pytest.mark.parametrize("code", [errno.ECONNABORTED, errno.EPROTO, errno.ENETUNREACH])
def test_a_connection_that_failed_in_the_queue_costs_only_itself(code: int) -> None:
    # The listener carries on at its next wake-up; the connections before it are kept.
    accepted, then = _accept(_Listening(3, OSError(code, "gone")))
    assert (len(accepted), then) == (3, ACCEPT_DRAINED)
