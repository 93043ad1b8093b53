"""HTTP/3 receive credit follows what the application reads (protocol/read_credit.py): a request
body nobody reads stops at the stream's window, many streams together stop at the connection's,
reading lets more in, and a finished stream gives back what it left unread. Driven by aioquic's
client in memory (h3helpers.Pair): the client sends as fast as the server's limits allow."""

from __future__ import annotations

from pathlib import Path

import pytest

from multicorn.protocol.events import (
    AcknowledgeData,
    DataReceived,
    SendData,
    SendResponse,
    StreamEnded,
)
from tests.protocol.h3helpers import Pair, Pki, make_pki

WINDOW = 1024 * 1024  # quic_configuration's (aioquic's) max_data and max_stream_data
SLACK = 64 * 1024  # HTTP/3 framing and a frame in flight


@pytest.fixture
def h1_engine() -> str:
    """HTTP/1.1's parsing engines (tests/protocol/conftest.py) do not apply here."""
    return "none"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(Path(tmp_path_factory.mktemp("creditpki")))


def body_bytes(events: list, stream_id: int | None = None) -> int:
    return sum(
        len(e.data)
        for e in events
        if isinstance(e, DataReceived) and (stream_id is None or e.stream_id == stream_id)
    )


def test_a_body_nobody_reads_stops_at_the_stream_window(pki):
    pair = Pair(pki)
    stream_id = pair.request(b"/upload", method=b"POST", body=b"x" * (8 * WINDOW))
    pair.transfer()
    first = body_bytes(pair.events(), stream_id)
    # aioquic alone would have doubled the window as the bytes arrived, again and again.
    assert WINDOW - SLACK <= first <= WINDOW
    pair.advance(1.0)  # the client's blocked-stream signals and retransmissions change nothing
    assert body_bytes(pair.events(), stream_id) == 0


def test_reading_lets_the_rest_in_and_the_body_completes(pki):
    pair = Pair(pki)
    total = 8 * WINDOW
    stream_id = pair.request(b"/upload", method=b"POST", body=b"x" * total)
    received = 0
    ended = False
    for _ in range(100):
        pair.transfer()
        events = pair.events()
        got = body_bytes(events, stream_id)
        ended = ended or any(isinstance(e, StreamEnded) for e in events)
        # Never more than a window beyond what was read.
        assert got <= WINDOW + SLACK
        received += got
        if ended:
            break
        pair.send(AcknowledgeData(stream_id=stream_id, amount=got))
    assert ended
    assert received == total


def test_many_streams_together_stop_at_the_connection_window(pki):
    pair = Pair(pki)
    streams = [
        pair.request(b"/upload", method=b"POST", body=b"y" * (WINDOW // 2)) for _ in range(8)
    ]
    pair.transfer()
    events = pair.events()
    assert body_bytes(events) <= WINDOW + SLACK
    assert body_bytes(events) < len(streams) * WINDOW // 2


def test_a_finished_stream_gives_back_what_it_left_unread(pki):
    pair = Pair(pki)
    first = pair.request(b"/ignored", method=b"POST", body=b"z" * (2 * WINDOW))
    pair.transfer()
    assert body_bytes(pair.events(), first) > WINDOW // 2
    # The application answers without reading the body, and the client stops sending it
    # (the server asks with STOP_SENDING once its response is complete).
    pair.send(
        SendResponse(stream_id=first, status=200, headers=[]),
        SendData(stream_id=first, data=b"no thanks", end_stream=True),
    )
    pair.transfer()
    second = pair.request(b"/next", method=b"POST", body=b"w" * (WINDOW // 2))
    pair.transfer()
    events = pair.events()
    assert body_bytes(events, second) == WINDOW // 2
    assert any(isinstance(e, StreamEnded) and e.stream_id == second for e in events)
