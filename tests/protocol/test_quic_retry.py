"""QuicEndpoint address validation with Retry (RFC 9000 8.1.2, 17.2.5)."""

from __future__ import annotations

from pathlib import Path

import pytest
from aioquic._buffer import Buffer
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicPacketType, pull_quic_header

from multicorn.protocol.quic import DatagramIgnored, QuicEndpoint
from tests.protocol.h3helpers import SERVER_ADDR, Pair, Pki, client_configuration, make_pki
from tests.protocol.test_quic import serve_one

SECRET = b"k" * 32
CLIENT = ("198.51.100.7", 50000)


@pytest.fixture
def h1_engine() -> str:
    """HTTP/1.1's parsing engines (tests/protocol/conftest.py) do not apply here."""
    return "none"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(Path(tmp_path_factory.mktemp("quicpki")))


def reasons(events: list) -> list[str]:
    assert all(isinstance(e, DatagramIgnored) for e in events), events
    return [e.reason for e in events]


class Handshake:
    """A client's first flight, a Retry for it, and the client's second Initial (with the
    token), none of it delivered on its own."""

    def __init__(self, pki: Pki, endpoint: QuicEndpoint, now: float = 0.0) -> None:
        self.endpoint = endpoint
        self.client = QuicConnection(configuration=client_configuration(pki))
        self.client.connect(SERVER_ADDR, now=now)
        ((first, _),) = self.client.datagrams_to_send(now)
        self.first = first
        self.first_header = pull_quic_header(Buffer(data=first), host_cid_length=8)
        assert reasons(endpoint.receive_datagram(first, CLIENT, now)) == [
            "Initial without a token: answered with Retry"
        ]
        assert endpoint.connections == []  # no state kept for a Retry
        ((retry, addr),) = endpoint.datagrams_to_send(now)
        assert addr == CLIENT
        self.retry = retry
        self.retry_header = pull_quic_header(Buffer(data=retry), host_cid_length=8)
        self.client.receive_datagram(retry, SERVER_ADDR, now)

    def second(self, now: float = 0.0, token: bytes | None = None) -> bytes:
        if token is not None:
            self.client._peer_token = token  # aioquic keeps the Retry token here (private)
        datagrams = self.client.datagrams_to_send(now)
        assert datagrams
        return datagrams[0][0]


def test_retry_then_the_connection_is_served(pki: Pki) -> None:
    p = Pair(pki, secret=SECRET, retry=True)
    ignored = [e.reason for e in p.ignored()]
    assert ignored == ["Initial without a token: answered with Retry"]
    # The client checks the server's original_destination_connection_id and
    # retry_source_connection_id transport parameters (RFC 9000 7.3): a handshake that
    # completed had them right.
    assert p.terminated() is None
    serve_one(p, b"/validated")
    assert len(p.endpoint.connections) == 1


def test_retry_packet_fields(pki: Pki) -> None:
    endpoint = QuicEndpoint(configuration=pki.server, now=0.0, secret=SECRET, retry=True)
    hs = Handshake(pki, endpoint)
    header = hs.retry_header
    assert header.packet_type is QuicPacketType.RETRY
    # RFC 9000 17.2.5.1: the Retry goes to the client's source CID, from a new source CID.
    assert header.destination_cid == hs.first_header.source_cid
    assert header.source_cid != hs.first_header.destination_cid
    assert len(header.source_cid) == 8
    assert header.token
    # The client's next Initial goes to the Retry's source CID, carrying the token.
    second = pull_quic_header(Buffer(data=hs.second()), host_cid_length=8)
    assert second.destination_cid == header.source_cid
    assert second.token == header.token
    # The same Initial again gets the same Retry: nothing random, nothing remembered.
    endpoint.receive_datagram(hs.first, CLIENT, 0.0)
    assert endpoint.datagrams_to_send(0.0) == [(hs.retry, CLIENT)]


def test_valid_token_opens_the_connection(pki: Pki) -> None:
    endpoint = QuicEndpoint(configuration=pki.server, now=0.0, secret=SECRET, retry=True)
    hs = Handshake(pki, endpoint)
    assert endpoint.receive_datagram(hs.second(9.0), CLIENT, 9.0) == []
    (connection,) = endpoint.connections
    assert connection.quic.original_destination_connection_id == hs.first_header.destination_cid
    assert endpoint.datagrams_to_send(9.0)


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        ("mac", "invalid Retry token"),
        ("odcid", "invalid Retry token"),
        ("address", "invalid Retry token"),
        ("port", "invalid Retry token"),
        ("expired", "expired Retry token"),
        ("short", "malformed Retry token"),
        ("other-secret", "invalid Retry token"),
    ],
)
def test_bad_tokens_are_dropped(pki: Pki, tamper: str, reason: str) -> None:
    endpoint = QuicEndpoint(configuration=pki.server, now=0.0, secret=SECRET, retry=True)
    hs = Handshake(pki, endpoint)
    token = hs.retry_header.token
    addr, now = CLIENT, 0.0
    if tamper == "mac":
        token = token[:-1] + bytes([token[-1] ^ 1])
    elif tamper == "odcid":
        token = token[:-17] + bytes([token[-17] ^ 1]) + token[-16:]
    elif tamper == "address":
        addr = ("198.51.100.8", CLIENT[1])
    elif tamper == "port":
        addr = (CLIENT[0], CLIENT[1] + 1)
    elif tamper == "expired":
        now = 10.5  # tokens live 10 s
    elif tamper == "short":
        token = token[:12]
    elif tamper == "other-secret":
        endpoint = QuicEndpoint(configuration=pki.server, now=0.0, secret=b"x" * 32, retry=True)
    (event,) = reasons(endpoint.receive_datagram(hs.second(now, token), addr, now))
    assert reason in event
    assert endpoint.connections == []
    assert endpoint.datagrams_to_send(now) == []  # dropped, not answered


def test_a_token_that_is_not_ours_gets_a_retry(pki: Pki) -> None:
    # RFC 9000 8.1.3: a token the server cannot use (another server's NEW_TOKEN, say) is
    # treated as no token at all.
    endpoint = QuicEndpoint(configuration=pki.server, now=0.0, secret=SECRET, retry=True)
    config = client_configuration(pki)
    config.token = b"someone else's token"
    client = QuicConnection(configuration=config)
    client.connect(SERVER_ADDR, now=0.0)
    ((first, _),) = client.datagrams_to_send(0.0)
    assert pull_quic_header(Buffer(data=first), host_cid_length=8).token == config.token
    assert "answered with Retry" in reasons(endpoint.receive_datagram(first, CLIENT, 0.0))[0]
    ((retry, _),) = endpoint.datagrams_to_send(0.0)
    assert pull_quic_header(Buffer(data=retry), host_cid_length=8).packet_type is (
        QuicPacketType.RETRY
    )


def test_without_retry_tokens_are_ignored(pki: Pki) -> None:
    config = client_configuration(pki)
    config.token = b"whatever"
    endpoint = QuicEndpoint(configuration=pki.server, now=0.0, secret=SECRET)
    client = QuicConnection(configuration=config)
    client.connect(SERVER_ADDR, now=0.0)
    ((first, _),) = client.datagrams_to_send(0.0)
    assert endpoint.receive_datagram(first, CLIENT, 0.0) == []
    assert len(endpoint.connections) == 1


def test_retry_needs_a_secret(pki: Pki) -> None:
    with pytest.raises(ValueError, match="secret"):
        QuicEndpoint(configuration=pki.server, now=0.0, retry=True)
    with pytest.raises(ValueError, match="16 bytes"):
        QuicEndpoint(configuration=pki.server, now=0.0, secret=b"short")
