"""QuicEndpoint session resumption (TLS session tickets) and 0-RTT (RFC 9001 4.6, RFC 8470)."""

from __future__ import annotations

from pathlib import Path

import pytest
from aioquic.quic.connection import MAX_EARLY_DATA

from multicorn.protocol.events import (
    DataReceived,
    RequestReceived,
    SendData,
    SendResponse,
    StreamEnded,
)
from multicorn.protocol.quic import ConnectionOpened, StreamEvents
from tests.protocol.h3helpers import Pair, Pki, make_pki
from tests.protocol.test_quic import serve_one


@pytest.fixture
def h1_engine() -> str:
    """HTTP/1.1's parsing engines (tests/protocol/conftest.py) do not apply here."""
    return "none"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(Path(tmp_path_factory.mktemp("quicpki")))


def answer(p: Pair, stream_id: int, body: bytes) -> None:
    p.send(
        SendResponse(stream_id=stream_id, status=200, headers=[]),
        SendData(stream_id=stream_id, data=body, end_stream=True),
    )


def methods(events: list) -> list[bytes]:
    return [e.method for e in events if isinstance(e, RequestReceived)]


# ---- session tickets -------------------------------------------------------------------------


def test_a_ticket_resumes_the_session(pki: Pki) -> None:
    first = Pair(pki)
    assert not first.handshake_completed().session_resumed
    (ticket,) = first.tickets
    assert first.endpoint.session_tickets == 1
    # Without early data, the ticket does not invite 0-RTT.
    assert ticket.max_early_data_size is None
    second = Pair(pki, endpoint=first.endpoint, session_ticket=ticket)
    assert second.handshake_completed().session_resumed
    assert not second.handshake_completed().early_data_accepted
    serve_one(second, b"/resumed")
    # A resumed session gets a ticket of its own.
    assert len(second.tickets) == 1


def test_tickets_are_single_use(pki: Pki) -> None:
    first = Pair(pki)
    (ticket,) = first.tickets
    assert Pair(pki, endpoint=first.endpoint, session_ticket=ticket).handshake_completed()
    again = Pair(pki, endpoint=first.endpoint, session_ticket=ticket)
    assert not again.handshake_completed().session_resumed  # a full handshake instead
    serve_one(again, b"/full-handshake")


def test_tickets_expire(pki: Pki) -> None:
    first = Pair(pki)
    (ticket,) = first.tickets
    later = Pair(pki, endpoint=first.endpoint, session_ticket=ticket, now=first.now + 3601)
    assert not later.handshake_completed().session_resumed


def test_the_ticket_store_is_bounded(pki: Pki) -> None:
    from multicorn.protocol import quic

    first = Pair(pki)
    store = first.endpoint._tickets
    assert store is not None
    (ticket,) = first.tickets
    for n in range(quic._TICKETS + 5):
        ticket.ticket = n.to_bytes(8, "big")
        store.add(ticket)
    assert first.endpoint.session_tickets == quic._TICKETS
    assert store.take((0).to_bytes(8, "big")) is None  # the oldest went first
    assert store.take((quic._TICKETS + 4).to_bytes(8, "big")) is ticket


def test_session_tickets_off(pki: Pki) -> None:
    p = Pair(pki, session_tickets=False)
    serve_one(p, b"/no-ticket")
    assert p.tickets == []
    assert p.endpoint.session_tickets == 0


# ---- 0-RTT ---------------------------------------------------------------------------------------


def test_early_data_safe_requests_at_once_others_after_the_handshake(pki: Pki) -> None:
    first = Pair(pki, early_data=True)
    (ticket,) = first.tickets
    assert ticket.max_early_data_size == MAX_EARLY_DATA
    p = Pair(pki, endpoint=first.endpoint, session_ticket=ticket, early=True, handshake=False)
    get = p.request(b"/early")
    post = p.request(b"/submit", method=b"POST", body=b"payload")
    p.client_to_server()  # the Initial and the 0-RTT packets, nothing back yet
    # The connection is reported at once, with the safe request only.
    assert any(isinstance(e, ConnectionOpened) for e in p.endpoint_events)
    server = p.server
    assert server.early_data_accepted
    assert not server.handshake_complete
    early = p.events()
    assert methods(early) == [b"GET"]
    assert [type(e) for e in early] == [RequestReceived, StreamEnded]
    # Answered before the handshake completes (0.5-RTT data).
    answer(p, get, b"early answer")
    p.transfer()
    assert server.handshake_complete
    assert p.handshake_completed().early_data_accepted
    late = p.events()
    assert methods(late) == [b"POST"]
    assert [type(e) for e in late] == [RequestReceived, DataReceived, StreamEnded]
    assert all(e.stream_id == post for e in late)  # type: ignore[attr-defined]
    answer(p, post, b"late answer")
    p.transfer()
    assert p.response(get)[1] == b"early answer"
    assert p.response(post)[1] == b"late answer"


def test_held_request_is_forgotten_if_the_handshake_never_completes(pki: Pki) -> None:
    first = Pair(pki, early_data=True)
    (ticket,) = first.tickets
    p = Pair(pki, endpoint=first.endpoint, session_ticket=ticket, early=True, handshake=False)
    p.request(b"/delete-me", method=b"DELETE")
    p.client_to_server()
    assert p.events() == []  # held
    server = p.server
    p.endpoint_events.clear()
    # The client vanishes: the connection times out, and the application hears of no stream.
    for _ in range(100):
        deadline = p.endpoint.next_deadline()
        if deadline is None:
            break
        p.now = max(p.now, deadline)
        p.endpoint_events += p.endpoint.handle_deadline(p.now)
        p.endpoint.datagrams_to_send(p.now)
    assert server not in p.endpoint.connections
    batches = [
        e.events
        for e in p.endpoint_events
        if isinstance(e, StreamEvents) and e.connection is server
    ]
    closing = [event for batch in batches for event in batch]
    assert [type(e).__name__ for e in closing] == ["ConnectionClosed"]


def test_early_data_off_rejects_0rtt_and_still_serves(pki: Pki) -> None:
    first = Pair(pki)
    (ticket,) = first.tickets
    # A client that believes 0-RTT is allowed (its ticket came from a server that allowed it).
    ticket.max_early_data_size = MAX_EARLY_DATA
    p = Pair(pki, endpoint=first.endpoint, session_ticket=ticket, early=True, handshake=False)
    get = p.request(b"/early")
    post = p.request(b"/submit", method=b"POST", body=b"payload")
    p.client_to_server()
    assert not any(isinstance(e, ConnectionOpened) for e in p.endpoint_events)
    assert not any(isinstance(e, StreamEvents) for e in p.endpoint_events)
    p.transfer()
    done = p.handshake_completed()
    assert done.session_resumed
    assert not done.early_data_accepted
    # The client sends what the server could not read again, as 1-RTT, once its loss detection
    # declares the 0-RTT packets lost.
    seen: list = []
    for _ in range(20):
        seen += p.events()
        if len(methods(seen)) == 2:
            break
        p.advance(0.2)
    assert sorted(methods(seen)) == [b"GET", b"POST"]
    answer(p, get, b"get")
    answer(p, post, b"post")
    p.transfer()
    assert p.response(get)[1] == b"get"
    assert p.response(post)[1] == b"post"


def test_early_data_needs_session_tickets(pki: Pki) -> None:
    from multicorn.protocol.quic import QuicEndpoint

    with pytest.raises(ValueError, match="session_tickets"):
        QuicEndpoint(configuration=pki.server, now=0.0, early_data=True, session_tickets=False)
