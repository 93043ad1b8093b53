"""The PROXY protocol parser and the listener's question (protocol/proxy_protocol.py): valid
headers of both versions, every truncation, garbage, and how many bytes are the header."""

from __future__ import annotations

import contextlib
import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from multicorn.protocol.errors import RemoteProtocolError
from multicorn.protocol.proxy_protocol import (
    V2_MAX_LENGTH,
    V2_SIGNATURE,
    ProxyHeader,
    looks_like_proxy_header,
    parse_proxy_header,
    preamble_length,
)

V1_TCP4 = b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 443\r\n"
V1_TCP6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 56324 443\r\n"
V1_UNKNOWN = b"PROXY UNKNOWN\r\n"
REQUEST = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"


def v2(
    *,
    command: int = 1,
    family: int = 1,
    transport: int = 1,
    block: bytes | None = None,
    tlvs: bytes = b"",
    version: int = 2,
) -> bytes:
    if block is None:
        if family == 1:
            block = (
                ipaddress.IPv4Address("203.0.113.7").packed
                + ipaddress.IPv4Address("192.0.2.1").packed
                + struct.pack("!HH", 56324, 443)
            )
        elif family == 2:
            block = (
                ipaddress.IPv6Address("2001:db8::7").packed
                + ipaddress.IPv6Address("2001:db8::1").packed
                + struct.pack("!HH", 56324, 443)
            )
        elif family == 3:
            block = b"/tmp/src".ljust(108, b"\0") + b"/tmp/dst".ljust(108, b"\0")
        else:
            block = b""
    payload = block + tlvs
    return (
        V2_SIGNATURE
        + bytes([(version << 4) | command, (family << 4) | transport])
        + struct.pack("!H", len(payload))
        + payload
    )


V2_TCP4 = v2()
V2_TCP6 = v2(family=2)
# A TLV as AWS NLB sends (type 0xEA, the VPC endpoint id) and a NOOP one: both skipped.
V2_TLVS = v2(tlvs=b"\xea\x00\x05\x01vpce" + b"\x04\x00\x02\x00\x00")


# ---- valid headers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "header"),
    [
        (
            V1_TCP4,
            ProxyHeader(version=1, source=("203.0.113.7", 56324), destination=("192.0.2.1", 443)),
        ),
        (
            V1_TCP6,
            ProxyHeader(version=1, source=("2001:db8::7", 56324), destination=("2001:db8::1", 443)),
        ),
        (V1_UNKNOWN, ProxyHeader(version=1)),
        # "the receiver must ignore anything presented before the CRLF" after UNKNOWN.
        (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", ProxyHeader(version=1)),
        (
            V2_TCP4,
            ProxyHeader(version=2, source=("203.0.113.7", 56324), destination=("192.0.2.1", 443)),
        ),
        (
            V2_TCP6,
            ProxyHeader(version=2, source=("2001:db8::7", 56324), destination=("2001:db8::1", 443)),
        ),
        (
            V2_TLVS,
            ProxyHeader(version=2, source=("203.0.113.7", 56324), destination=("192.0.2.1", 443)),
        ),
        (v2(command=0), ProxyHeader(version=2, local=True)),  # LOCAL: a health check
        (v2(command=0, family=0, transport=0), ProxyHeader(version=2, local=True)),
        (v2(family=0, transport=0), ProxyHeader(version=2)),  # UNSPEC
        (v2(family=3), ProxyHeader(version=2)),  # UNIX: no address a scope can hold
        (
            v2(transport=2),
            ProxyHeader(version=2, source=("203.0.113.7", 56324), destination=("192.0.2.1", 443)),
        ),
    ],
)
@pytest.mark.parametrize("mode", ["auto", "exact"])
def test_valid_headers(data: bytes, header: ProxyHeader, mode: str) -> None:
    wanted = mode if mode == "auto" else ("v1" if header.version == 1 else "v2")
    assert parse_proxy_header(data + REQUEST, wanted) == (header, len(data))  # type: ignore[arg-type]


def test_v1_longest_line_is_accepted() -> None:
    widest = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    line = f"PROXY TCP6 {widest} {widest} 65535 65535\r\n".encode()
    assert len(line) == 104
    padded = b"PROXY UNKNOWN " + b"x" * (107 - 16) + b"\r\n"
    assert len(padded) == 107
    assert parse_proxy_header(line, "v1") is not None
    assert parse_proxy_header(padded, "v1") == (ProxyHeader(version=1), 107)


# ---- truncated: every prefix needs more, never an error ---------------------------------------


@pytest.mark.parametrize("data", [V1_TCP4, V1_TCP6, V1_UNKNOWN, V2_TCP4, V2_TCP6, V2_TLVS])
def test_every_truncation_needs_more(data: bytes) -> None:
    for cut in range(len(data)):
        assert parse_proxy_header(data[:cut], "auto") is None, cut
        assert preamble_length(data[:cut], "auto") is None, cut


@pytest.mark.parametrize("data", [V1_TCP4, V2_TLVS])
def test_every_prefix_of_header_and_request_measures_the_same(data: bytes) -> None:
    # The listener peeks at whatever has arrived: once the header is whole, the length is the
    # header's, whatever follows it; before, it needs more.
    stream = data + REQUEST
    for cut in range(1, len(stream) + 1):
        got = preamble_length(stream[:cut], "auto")
        assert got == (len(data) if cut >= len(data) else None), cut


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_escape_as_other_errors(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        parse_proxy_header(data, "auto")


@given(st.binary(max_size=200), st.integers(min_value=0, max_value=200))
def test_v2_with_random_tail_parses_or_fails_cleanly(tail: bytes, cut: int) -> None:
    data = (V2_SIGNATURE + tail)[: 12 + cut]
    with contextlib.suppress(RemoteProtocolError):
        parse_proxy_header(data, "v2")


# ---- garbage: a clear error ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (REQUEST, "expected a PROXY protocol header"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "expected a PROXY protocol header"),
        (b"PROXY TCP4 203.0.113.7 192.0.2.1 56324\r\n", "malformed PROXY v1 header"),
        (b"PROXY TCP4  203.0.113.7 192.0.2.1 1 2\r\n", "malformed PROXY v1 header"),
        (b"PROXY TCP5 203.0.113.7 192.0.2.1 1 2\r\n", "unknown protocol family"),
        (b"PROXY TCP4 2001:db8::7 192.0.2.1 1 2\r\n", "malformed address"),
        (b"PROXY TCP6 203.0.113.7 2001:db8::1 1 2\r\n", "malformed address"),
        (b"PROXY TCP4 203.0.113.999 192.0.2.1 1 2\r\n", "malformed address"),
        (b"PROXY TCP4 203.0.113.7 192.0.2.1 65536 2\r\n", "malformed port"),
        (b"PROXY TCP4 203.0.113.7 192.0.2.1 080 2\r\n", "malformed port"),
        (b"PROXY TCP4 203.0.113.7 192.0.2.1 -1 2\r\n", "malformed port"),
        (b"PROXY TCP4 203.0.113.7 192.0.2.1 1 2\n", "bare CR or LF"),
        (b"PROXY TCP4 203.0.113.7\r192.0.2.1 1 2\r\n", "bare CR or LF"),
        (b"PROXY UNKNOWN " + b"x" * 100 + b"\r\n", "longer than 107 bytes"),
        (b"PROXY " + b"x" * 200, "longer than 107 bytes"),
        (v2(version=1), "unknown version"),
        (v2(version=3), "unknown version"),
        (v2(command=2), "unknown command"),
        (v2(family=4), "unknown address family"),
        (v2(transport=3), "unknown address family"),
        (v2(block=b"\x7f\x00\x00\x01"), "shorter than its family needs"),
        (v2(family=2, block=b"\x00" * 12), "shorter than its family needs"),
        (
            V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", V2_MAX_LENGTH + 1),
            "longer than the limit",
        ),
    ],
)
def test_garbage_is_a_clear_error(data: bytes, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        parse_proxy_header(data, "auto")


def test_a_version_not_allowed_is_refused() -> None:
    with pytest.raises(RemoteProtocolError, match="expected a v1"):
        parse_proxy_header(V2_TCP4, "v1")
    with pytest.raises(RemoteProtocolError, match="expected a v2"):
        parse_proxy_header(V1_TCP4, "v2")


@pytest.mark.parametrize(
    ("data", "looks"),
    [
        (b"", None),
        (b"PRO", None),
        (b"\r\n\r\n", None),
        (b"PROXY ", True),
        (V2_SIGNATURE, True),
        (b"GET / HTTP/1.1\r\n", False),
        (b"PRI * HTTP/2.0", False),
        (b"\r\n\r\nGET", False),
    ],
)
def test_looks_like_proxy_header(data: bytes, looks: bool | None) -> None:
    assert looks_like_proxy_header(data) is looks


# ---- what the listener asks: how long the preamble is -----------------------------------------


def test_garbage_from_a_trusted_peer_is_refused() -> None:
    with pytest.raises(RemoteProtocolError, match="expected a PROXY"):
        preamble_length(REQUEST, "auto")


def test_reject_mode_refuses_a_header() -> None:
    assert preamble_length(b"PRO", "reject") is None
    with pytest.raises(RemoteProtocolError, match="not allowed"):
        preamble_length(b"PROXY TCP4 ", "reject")
    with pytest.raises(RemoteProtocolError, match="not allowed"):
        preamble_length(V2_TCP4, "reject")


@pytest.mark.parametrize(
    "data", [REQUEST, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"\x16\x03\x01\x02\x00\x01"]
)
def test_reject_mode_passes_anything_else_on(data: bytes) -> None:
    # Plain HTTP/1.1, the h2c preface and a TLS ClientHello: no preamble, decided as soon as the
    # bytes stop looking like a header, and nothing is taken from the connection.
    verdicts = [preamble_length(data[:cut], "reject") for cut in range(1, len(data) + 1)]
    decided = verdicts.index(0)
    assert all(v is None for v in verdicts[:decided])
    assert all(v == 0 for v in verdicts[decided:])
