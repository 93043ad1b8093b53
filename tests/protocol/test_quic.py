"""QuicEndpoint: routing by connection ID, what it drops, version negotiation, migration."""

from __future__ import annotations

from pathlib import Path

import pytest
from aioquic._buffer import Buffer
from aioquic.quic.packet import QuicPacketType, pull_quic_header
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from multicorn.protocol.events import RequestReceived, SendData, SendResponse, StreamEnded
from multicorn.protocol.quic import DatagramIgnored, QuicEndpoint
from tests.protocol.h3helpers import Pair, Pki, make_pki

ATTACKER = ("203.0.113.9", 6666)
# The module-scoped PKI fixture is the same for every example.
_FIXTURES = [HealthCheck.function_scoped_fixture]


@pytest.fixture
def h1_engine() -> str:
    """HTTP/1.1's parsing engines (tests/protocol/conftest.py) do not apply here."""
    return "none"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(Path(tmp_path_factory.mktemp("quicpki")))


def long_header(
    *,
    version: int = 1,
    dcid: bytes = b"\x11" * 8,
    scid: bytes = b"\x22" * 8,
    size: int = 1200,
    packet_type: int = 0,  # Initial, in QUIC v1's numbering
) -> bytes:
    """A long-header packet with a consistent length field and `size` bytes in all."""
    head = bytes([0xC0 | packet_type << 4]) + version.to_bytes(4, "big")
    head += bytes([len(dcid)]) + dcid + bytes([len(scid)]) + scid
    if packet_type == 0:
        head += b"\x00"  # token length
    rest = size - len(head) - 2
    assert 0 < rest < 2**14
    return head + (0x4000 | rest).to_bytes(2, "big") + b"\x5a" * rest


def serve_one(p: Pair, path: bytes) -> None:
    """A GET from the client, answered by the server, checked on both sides."""
    sid = p.request(path)
    p.transfer()
    events = p.events()
    assert [type(e) for e in events] == [RequestReceived, StreamEnded]
    assert events[0].target == path  # type: ignore[union-attr]
    p.server.send(SendResponse(stream_id=sid, status=200, headers=[]), p.now)
    p.server.send(SendData(stream_id=sid, data=path, end_stream=True), p.now)
    p.transfer()
    assert p.response(sid)[1] == path


def reasons(events: list) -> list[str]:
    assert all(isinstance(e, DatagramIgnored) for e in events), events
    return [e.reason for e in events]


def test_connection_ids_follow_what_aioquic_issues_and_retires(pki: Pki) -> None:
    p = Pair(pki)
    serve_one(p, b"/before")
    before = p.endpoint.connection_ids(p.server)
    # The client's original destination CID, the server's first CID and the ones it issued.
    assert len(before) >= 3
    p.client.change_connection_id()
    serve_one(p, b"/after")
    after = p.endpoint.connection_ids(p.server)
    assert before - after, "the CID the client retired still routes"
    assert after - before, "no replacement CID was issued"
    assert p.terminated() is None


def test_address_change_keeps_the_connection(pki: Pki) -> None:
    p = Pair(pki)
    serve_one(p, b"/home")
    p.client_addr = ("198.51.100.99", 41000)  # a NAT rebinding, say
    p.server_to.clear()
    serve_one(p, b"/roaming")
    assert p.server_to and set(p.server_to) == {p.client_addr}
    assert p.server.peer_address == p.client_addr
    assert len(p.endpoint.connections) == 1


def test_two_clients_two_connections(pki: Pki) -> None:
    first = Pair(pki)
    second = Pair(pki, endpoint=first.endpoint, handshake=False)
    second.client_addr = ("198.51.100.8", 50001)
    second.transfer()
    assert second.connection is not None
    assert second.server is not first.server
    assert len(first.endpoint.connections) == 2
    assert not first.endpoint.connection_ids(first.server) & first.endpoint.connection_ids(
        second.server
    )
    serve_one(second, b"/second")


@pytest.mark.parametrize(
    ("datagram", "reason"),
    [
        (b"", "empty datagram"),
        (b"\xc0\x00\x00", "truncated long header"),
        (b"\x40\x01\x02", "truncated short header"),
        (b"\x40" + b"\x99" * 40, "unknown connection ID (ONE_RTT)"),
        (long_header(packet_type=2, size=1300), "unknown connection ID (HANDSHAKE)"),
        (long_header(size=1199), "Initial in a 1199-byte datagram"),
        (long_header(dcid=b"\x01" * 4), "shorter than 8 bytes"),
        (long_header(), "Initial that does not decrypt"),
        (long_header(version=0), "version negotiation packet"),
        (long_header(version=0x1A2A3A4A, size=600), "in a 600-byte datagram"),
        (b"\xc0\x00\x00\x00\x01\x15" + b"\x00" * 30, "unparsable header"),
    ],
    ids=[
        "empty",
        "short-long-header",
        "short-short-header",
        "unknown-cid",
        "unknown-cid-handshake",
        "small-initial",
        "short-dcid",
        "garbage-initial",
        "version-negotiation",
        "small-unsupported-version",
        "cid-too-long",
    ],
)
def test_dropped_datagrams(pki: Pki, datagram: bytes, reason: str) -> None:
    endpoint = QuicEndpoint(configuration=pki.server, now=0.0)
    (event,) = reasons(endpoint.receive_datagram(datagram, ATTACKER, 0.0))
    assert reason in event
    assert endpoint.connections == []
    assert endpoint.datagrams_to_send(0.0) == []
    assert endpoint.next_deadline() is None


def test_unsupported_version_gets_version_negotiation(pki: Pki) -> None:
    endpoint = QuicEndpoint(configuration=pki.server, now=0.0)
    datagram = long_header(version=0x1A2A3A4A, dcid=b"D" * 12, scid=b"S" * 5)
    (event,) = reasons(endpoint.receive_datagram(datagram, ATTACKER, 0.0))
    assert "version negotiation" in event
    ((answer, addr),) = endpoint.datagrams_to_send(0.0)
    assert addr == ATTACKER
    header = pull_quic_header(Buffer(data=answer), host_cid_length=8)
    assert header.packet_type is QuicPacketType.VERSION_NEGOTIATION
    # RFC 9000 17.2.1: the connection IDs come back swapped.
    assert header.destination_cid == b"S" * 5
    assert header.source_cid == b"D" * 12
    assert set(header.supported_versions) == set(pki.server.supported_versions)
    assert endpoint.connections == []


def test_garbage_for_a_live_connection_is_harmless(pki: Pki) -> None:
    p = Pair(pki)
    cid = next(iter(p.endpoint.connection_ids(p.server)))
    for junk in (b"\x40" + cid + b"\x00" * 30, b"\x5f" + cid + bytes(range(256)) * 4):
        p.endpoint_events += p.endpoint.receive_datagram(junk, ATTACKER, p.now)
    p.transfer()
    serve_one(p, b"/still-here")
    assert p.terminated() is None


def test_deadlines_run_through_the_endpoint(pki: Pki) -> None:
    p = Pair(pki)
    deadline = p.endpoint.next_deadline()
    assert deadline is not None
    assert deadline > p.now
    assert p.endpoint.handle_deadline(p.now) == []  # nothing due yet


def test_endpoint_refuses_a_client_configuration(pki: Pki) -> None:
    from tests.protocol.h3helpers import client_configuration

    with pytest.raises(ValueError, match="server side"):
        QuicEndpoint(configuration=client_configuration(pki), now=0.0)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=1500))
def test_random_datagrams_never_raise_nor_open_connections(pki: Pki, data: bytes) -> None:
    endpoint = QuicEndpoint(configuration=pki.server, now=0.0)
    events = endpoint.receive_datagram(data, ATTACKER, 0.0)
    assert all(isinstance(e, DatagramIgnored) for e in events)
    assert endpoint.connections == []


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    payload=st.binary(min_size=1200, max_size=1400),
    version=st.sampled_from([1, 0x6B3343CF]),
)
def test_initials_that_do_not_decrypt_open_nothing(pki: Pki, payload: bytes, version: int) -> None:
    endpoint = QuicEndpoint(configuration=pki.server, now=0.0)
    first_byte = 0xC0 if version == 1 else 0xD0  # Initial in v1 and v2 numbering
    head = bytes([first_byte]) + version.to_bytes(4, "big") + b"\x08" + payload[:8] + b"\x00"
    rest = len(payload) - 8
    datagram = head + b"\x00" + (0x4000 | rest).to_bytes(2, "big") + payload[8:]
    events = endpoint.receive_datagram(datagram, ATTACKER, 0.0)
    assert all(isinstance(e, DatagramIgnored) for e in events)
    assert endpoint.connections == []
    assert endpoint.datagrams_to_send(0.0) == []


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(junk=st.lists(st.binary(min_size=1, max_size=1300), max_size=5))
def test_junk_between_real_datagrams_changes_nothing(pki: Pki, junk: list[bytes]) -> None:
    p = Pair(pki, handshake=False)
    for datagram in junk:
        for event in p.endpoint.receive_datagram(datagram, ATTACKER, p.now):
            assert isinstance(event, DatagramIgnored)
    p.transfer()
    assert p.connection is not None
    assert len(p.endpoint.connections) == 1


def test_a_fault_outside_any_stream_closes_only_that_connection(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aioquic.h3.connection import ErrorCode

    from multicorn.protocol.events import ConnectionClosed

    broken = Pair(pki)
    other = Pair(pki, endpoint=broken.endpoint, client_addr=("198.51.100.8", 50001))

    def explode(now: float) -> list:
        raise RuntimeError("bug")

    monkeypatch.setattr(broken.server, "upkeep", explode)
    broken.request(b"/boom")
    broken.transfer()
    (closed,) = [e for e in broken.events() if isinstance(e, ConnectionClosed)]
    assert closed.error is not None
    # The client hears why (its CONNECTION_CLOSE went out although the endpoint let go), at
    # the end of its draining period.
    broken.advance(5.0)
    terminated = broken.terminated()
    assert terminated is not None
    assert terminated.error_code == ErrorCode.H3_INTERNAL_ERROR
    assert broken.server not in broken.endpoint.connections
    serve_one(other, b"/unaffected")


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=1500), retry=st.booleans())
def test_random_datagrams_with_retry_and_resets_on(pki: Pki, data: bytes, retry: bool) -> None:
    endpoint = QuicEndpoint(configuration=pki.server, now=0.0, secret=b"r" * 32, retry=retry)
    events = endpoint.receive_datagram(data, ATTACKER, 0.0)
    assert all(isinstance(e, DatagramIgnored) for e in events)
    assert endpoint.connections == []
    for answer, addr in endpoint.datagrams_to_send(0.0):
        assert addr == ATTACKER
        assert len(answer) < max(len(data), 1200)  # never an amplifier


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    dcid=st.binary(min_size=8, max_size=20),
    scid=st.binary(max_size=20),
    token=st.binary(max_size=600),
)
def test_initials_with_any_token_open_nothing_under_retry(
    pki: Pki, dcid: bytes, scid: bytes, token: bytes
) -> None:
    endpoint = QuicEndpoint(configuration=pki.server, now=0.0, secret=b"r" * 32, retry=True)
    head = b"\xc0" + (1).to_bytes(4, "big") + bytes([len(dcid)]) + dcid + bytes([len(scid)]) + scid
    if len(token) < 64:
        head += bytes([len(token)]) + token
    else:
        head += (0x4000 | len(token)).to_bytes(2, "big") + token
    rest = 1250 - len(head) - 2
    datagram = head + (0x4000 | rest).to_bytes(2, "big") + b"\x00" * rest
    events = endpoint.receive_datagram(datagram, ATTACKER, 0.0)
    assert all(isinstance(e, DatagramIgnored) for e in events)
    assert endpoint.connections == []
