"""QuicEndpoint under load and after loss of state: connection and handshake limits, stateless
reset (RFC 9000 10.3)."""

from __future__ import annotations

from pathlib import Path

import pytest
from aioquic.quic.connection import QuicConnection

from multicorn.protocol.events import SendResponse
from multicorn.protocol.quic import DatagramIgnored, QuicEndpoint
from tests.protocol.h3helpers import SERVER_ADDR, Pair, Pki, client_configuration, make_pki
from tests.protocol.test_quic import serve_one

SECRET = b"s" * 32


@pytest.fixture
def h1_engine() -> str:
    """HTTP/1.1's parsing engines (tests/protocol/conftest.py) do not apply here."""
    return "none"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(Path(tmp_path_factory.mktemp("quicpki")))


def first_flight(pki: Pki, now: float = 0.0) -> bytes:
    """A real client Initial (a new client each time)."""
    client = QuicConnection(configuration=client_configuration(pki))
    client.connect(SERVER_ADDR, now=now)
    return client.datagrams_to_send(now)[0][0]


def reasons(events: list) -> list[str]:
    assert all(isinstance(e, DatagramIgnored) for e in events), events
    return [e.reason for e in events]


# ---- Initial floods ---------------------------------------------------------------------------


def test_handshakes_per_address_are_bounded(pki: Pki) -> None:
    endpoint = QuicEndpoint(configuration=pki.server, now=0.0, max_handshakes_per_address=3)
    dropped: list[str] = []
    for port in range(20):  # one host, spoofed or not, any ports
        dropped += reasons(endpoint.receive_datagram(first_flight(pki), ("203.0.113.9", port), 0.0))
    assert len(endpoint.connections) == 3
    assert endpoint.handshaking == 3
    assert len(dropped) == 17
    assert all("3 handshakes already from 203.0.113.9" in r for r in dropped)
    # Another address is not held back.
    assert endpoint.receive_datagram(first_flight(pki), ("203.0.113.10", 1), 0.0) == []
    assert len(endpoint.connections) == 4


def test_completed_handshakes_free_their_slot(pki: Pki) -> None:
    p = Pair(pki, max_handshakes_per_address=1)
    assert p.endpoint.handshaking == 0
    second = Pair(pki, endpoint=p.endpoint, client_addr=(p.client_addr[0], 50001))
    serve_one(second, b"/same-host")
    assert len(p.endpoint.connections) == 2


def test_connections_are_bounded(pki: Pki) -> None:
    endpoint = QuicEndpoint(configuration=pki.server, now=0.0, max_connections=2)
    events = []
    for n in range(5):
        events += endpoint.receive_datagram(first_flight(pki), (f"192.0.2.{n}", 443), 0.0)
    assert len(endpoint.connections) == 2
    assert reasons(events) == ["Initial dropped: 2 connections already"] * 3


def test_handshake_slots_are_released_when_connections_end(pki: Pki) -> None:
    endpoint = QuicEndpoint(configuration=pki.server, now=0.0, max_handshakes_per_address=2)
    for port in (1, 2):
        endpoint.receive_datagram(first_flight(pki), ("203.0.113.9", port), 0.0)
    assert endpoint.handshaking == 2
    endpoint.datagrams_to_send(0.0)
    # The clients never answer: the handshakes time out (the idle timeout, 30 s here).
    now = 0.0
    while endpoint.connections:
        deadline = endpoint.next_deadline()
        assert deadline is not None
        now = max(now, deadline)
        endpoint.handle_deadline(now)
        endpoint.datagrams_to_send(now)
        assert now < 100
    assert endpoint.handshaking == 0
    assert endpoint.receive_datagram(first_flight(pki, now), ("203.0.113.9", 3), now) == []


def test_limits_must_be_positive(pki: Pki) -> None:
    with pytest.raises(ValueError, match="max_connections"):
        QuicEndpoint(configuration=pki.server, now=0.0, max_connections=0)


# ---- stateless reset ------------------------------------------------------------------------


def short_header(cid: bytes, size: int) -> bytes:
    return bytes([0x40]) + cid + b"\x77" * (size - 1 - len(cid))


def test_reset_after_a_restart_carries_the_token_the_client_holds(pki: Pki) -> None:
    p = Pair(pki, secret=SECRET)
    serve_one(p, b"/before")
    # The server restarts with the same secret: the client's next packet finds no connection.
    restarted = QuicEndpoint(configuration=pki.server, now=p.now, secret=SECRET)
    p.endpoint = restarted
    p.request(b"/after")
    datagrams = p.client.datagrams_to_send(p.now)
    assert datagrams
    for data, _addr in datagrams:
        (reason,) = reasons(restarted.receive_datagram(data, p.client_addr, p.now))
        assert reason == "unknown connection ID (ONE_RTT): answered with a stateless reset"
        ((reset, addr),) = restarted.datagrams_to_send(p.now)
        assert addr == p.client_addr
        # RFC 9000 10.3: a short header, smaller than its trigger, ending in the token the
        # server issued for the CID the client used (aioquic keeps it in _peer_cid, private).
        assert reset[0] & 0xC0 == 0x40
        assert 21 <= len(reset) < len(data)
        assert data[1:9] == p.client._peer_cid.cid
        assert reset[-16:] == p.client._peer_cid.stateless_reset_token
        # aioquic's client does not look for stateless resets (it waits for its idle timeout
        # instead); the datagram must at least do it no harm.
        p.client.receive_datagram(reset, SERVER_ADDR, p.now)
    assert restarted.connections == []


def test_every_issued_cid_has_a_derived_token(pki: Pki) -> None:
    p = Pair(pki, secret=SECRET)
    serve_one(p, b"/cids")
    peer_cids = [p.client._peer_cid, *p.client._peer_cid_available]  # aioquic's (private)
    assert len(peer_cids) > 1  # NEW_CONNECTION_ID frames were sent
    restarted = QuicEndpoint(configuration=pki.server, now=p.now, secret=SECRET)
    for n, connection_id in enumerate(peer_cids):
        now = p.now + n  # past the rate limit
        reasons(restarted.receive_datagram(short_header(connection_id.cid, 60), ("x", 1), now))
        ((reset, _),) = restarted.datagrams_to_send(now)
        assert reset[-16:] == connection_id.stateless_reset_token


def test_reset_for_a_connection_that_ended(pki: Pki) -> None:
    p = Pair(pki, secret=SECRET)
    cid = p.client._peer_cid.cid
    p.server.abort()
    p.transfer()
    p.advance(10.0)  # the closing period (three PTOs) runs out
    assert p.endpoint.connections == []
    (reason,) = reasons(p.endpoint.receive_datagram(short_header(cid, 50), p.client_addr, p.now))
    assert "stateless reset" in reason
    ((reset, _),) = p.endpoint.datagrams_to_send(p.now)
    assert reset[-16:] == p.client._peer_cid.stateless_reset_token


@pytest.mark.parametrize(
    ("trigger", "size"), [(21, None), (22, 21), (43, 42), (44, 43), (1200, 43)]
)
def test_reset_sizes(pki: Pki, trigger: int, size: int | None) -> None:
    endpoint = QuicEndpoint(configuration=pki.server, now=0.0, secret=SECRET)
    (reason,) = reasons(endpoint.receive_datagram(short_header(b"C" * 8, trigger), ("x", 1), 0.0))
    out = endpoint.datagrams_to_send(0.0)
    if size is None:
        assert "too short for a stateless reset" in reason
        assert out == []
    else:
        ((reset, _),) = out
        assert len(reset) == size


def test_resets_are_rate_limited(pki: Pki) -> None:
    endpoint = QuicEndpoint(configuration=pki.server, now=0.0, secret=SECRET)
    events = []
    for n in range(50):
        events += endpoint.receive_datagram(short_header(bytes([n]) * 8, 100), ("x", n), 0.0)
    assert len(endpoint.datagrams_to_send(0.0)) == 20  # the burst
    assert sum("rate limit" in r for r in reasons(events)) == 30
    # The bucket refills at 10 a second.
    for n in range(50):
        endpoint.receive_datagram(short_header(bytes([n]) * 8, 100), ("x", n), 1.0)
    assert len(endpoint.datagrams_to_send(1.0)) == 10


def test_no_reset_without_a_secret(pki: Pki) -> None:
    endpoint = QuicEndpoint(configuration=pki.server, now=0.0)
    (reason,) = reasons(endpoint.receive_datagram(short_header(b"C" * 8, 100), ("x", 1), 0.0))
    assert reason == "unknown connection ID (ONE_RTT)"
    assert endpoint.datagrams_to_send(0.0) == []


def test_live_connections_get_no_reset(pki: Pki) -> None:
    p = Pair(pki, secret=SECRET)
    for _ in range(3):
        serve_one(p, b"/alive")
    assert p.ignored() == []


# ---- timers and output, per connection --------------------------------------------------------


def brute_force_deadline(endpoint: QuicEndpoint) -> float | None:
    timers = [t for c in endpoint.connections if (t := c.quic.get_timer()) is not None]
    return min(timers, default=None)


def test_the_timer_heap_agrees_with_every_connection(pki: Pki) -> None:
    first = Pair(pki)
    pairs = [first]
    for n in range(1, 5):
        pairs.append(Pair(pki, endpoint=first.endpoint, client_addr=("198.51.100.7", 50000 + n)))
    endpoint = first.endpoint
    for round_ in range(3):
        for n, p in enumerate(pairs):
            serve_one(p, f"/{round_}/{n}".encode())
            assert endpoint.next_deadline() == brute_force_deadline(endpoint)
    # Let the clock run: ACK delays, then the idle timeouts, one connection after another.
    now = max(p.now for p in pairs)
    while endpoint.connections:
        deadline = endpoint.next_deadline()
        assert deadline == brute_force_deadline(endpoint)
        assert deadline is not None
        now = max(now, deadline)
        endpoint.handle_deadline(now)
        endpoint.datagrams_to_send(now)
    assert endpoint.next_deadline() is None
    # Stale entries do not pile up.
    assert len(endpoint._timers) <= 64


def test_idle_connections_are_not_visited(pki: Pki) -> None:
    first = Pair(pki)
    second = Pair(pki, endpoint=first.endpoint, client_addr=("198.51.100.8", 1))
    endpoint = first.endpoint
    assert endpoint._dirty == {}  # everything collected
    serve_one(second, b"/busy")
    assert endpoint._dirty == {}
    # A command on one connection marks that one only.
    sid = first.request(b"/x")
    first.transfer()
    first.events()
    first.server.send(SendResponse(stream_id=sid, status=204, headers=[]), first.now)
    (marked,) = endpoint._dirty.values()
    assert marked.protocol is first.server


def test_cid_and_address_changes_with_derived_tokens(pki: Pki) -> None:
    p = Pair(pki, secret=SECRET)
    serve_one(p, b"/first")
    for n in range(3):
        p.client.change_connection_id()
        p.client_addr = ("198.51.100.99", 41000 + n)
        serve_one(p, f"/moved/{n}".encode())
    assert p.server.peer_address == p.client_addr
    assert p.ignored() == []  # no packet fell through to a stateless reset
    assert p.terminated() is None
