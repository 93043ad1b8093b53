"""The PROXY protocol (HAProxy's, versions 1 and 2): who connected to the load balancer.

Theory of operation. A load balancer that relays TCP cannot add headers to the HTTP inside, so
it writes one header of its own before the first byte of the client's: the client's and the
server's addresses as the balancer saw them. Version 1 is one text line of at most 107 bytes;
version 2 is binary, a 12-byte signature then a 4-byte fixed part and a length-prefixed
address block (plus TLVs, which are skipped here).

`parse_proxy_header(buffer, mode)` is the whole parser: it returns the header and how many
bytes it took, None while the buffer is still a proper prefix of a header, and raises
RemoteProtocolError once the buffer cannot become one. The header comes before everything, TLS
included, so it is read by the listener, not by a connection's protocol: `preamble_length` is
what the listener asks (app/proxy.py `proxy_preamble` makes it the listener's `Preamble`). A
peer that is not trusted to send the header gets the "reject" mode: input that starts like a
PROXY header ends the connection, anything else is the connection's own.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final, Literal

from multicorn.protocol.errors import RemoteProtocolError

ProxyMode = Literal["v1", "v2", "auto", "reject"]

V1_PREFIX: Final = b"PROXY "
# Version 1: "the maximum line length [...] is 107 bytes including the CRLF" (2.1).
V1_MAX_LENGTH: Final = 107
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_FIXED: Final = 16  # signature, version and command, family and transport, length
# The v2 length field allows 64 KiB; real headers (addresses and a few TLVs) are far smaller,
# and the header is buffered whole before anything is served.
V2_MAX_LENGTH: Final = 4096

# Version 2 address families (high nibble of byte 13) and their address block sizes.
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0, 1, 2, 3
_ADDRESS_SIZES: Final = {_AF_INET: 12, _AF_INET6: 36, _AF_UNIX: 216}


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyHeader:
    """What the balancer said. `source` and `destination` are None when it gave no usable
    addresses (v1 UNKNOWN, v2 LOCAL, UNSPEC or UNIX): the connection's own then stand."""

    version: int  # 1 or 2
    local: bool = False  # v2 LOCAL: the balancer's own connection (a health check)
    source: tuple[str, int] | None = None
    destination: tuple[str, int] | None = None


def parse_proxy_header(buffer: bytes, mode: ProxyMode) -> tuple[ProxyHeader, int] | None:
    """(header, bytes it took) from the start of `buffer`, or None while more is needed.
    Raises RemoteProtocolError when `buffer` does not start with a header `mode` accepts."""
    if mode in ("v1", "auto") and _is_prefix(buffer, V1_PREFIX):
        return _parse_v1(buffer)
    if mode in ("v2", "auto") and _is_prefix(buffer, V2_SIGNATURE):
        return _parse_v2(buffer)
    expected = {"v1": "a v1", "v2": "a v2", "auto": "a", "reject": "no"}[mode]
    raise RemoteProtocolError(f"expected {expected} PROXY protocol header")


def looks_like_proxy_header(buffer: bytes) -> bool | None:
    """Does `buffer` start like a PROXY header (either version)? None: too short to tell."""
    for prefix in (V1_PREFIX, V2_SIGNATURE):
        if buffer[: len(prefix)] == prefix:
            return True
        if len(buffer) < len(prefix) and prefix.startswith(buffer):
            return None
    return False


def _is_prefix(buffer: bytes, prefix: bytes) -> bool:
    """True when `buffer` and `prefix` agree on their common length."""
    n = min(len(buffer), len(prefix))
    return buffer[:n] == prefix[:n]


def _parse_v1(buffer: bytes) -> tuple[ProxyHeader, int] | None:
    end = buffer.find(b"\r\n", 0, V1_MAX_LENGTH)
    if end == -1:
        if len(buffer) >= V1_MAX_LENGTH:
            raise RemoteProtocolError("PROXY v1 header longer than 107 bytes")
        if b"\n" in buffer or b"\r" in buffer[:-1]:
            raise RemoteProtocolError("PROXY v1 header with a bare CR or LF")
        return None
    line = buffer[:end]
    if b"\r" in line or b"\n" in line:
        raise RemoteProtocolError("PROXY v1 header with a bare CR or LF")
    # 2.1: fields are separated by exactly one space.
    parts = line.split(b" ")
    if len(parts) >= 2 and parts[1] == b"UNKNOWN":
        # "the receiver must ignore anything presented before the CRLF" after UNKNOWN.
        return ProxyHeader(version=1), end + 2
    if len(parts) != 6:
        raise RemoteProtocolError("malformed PROXY v1 header")
    _, family, src, dst, sport, dport = parts
    if family == b"TCP4":
        kind: type[ipaddress.IPv4Address | ipaddress.IPv6Address] = ipaddress.IPv4Address
    elif family == b"TCP6":
        kind = ipaddress.IPv6Address
    else:
        raise RemoteProtocolError("PROXY v1 header with an unknown protocol family")
    source = (_v1_address(src, kind), _v1_port(sport))
    destination = (_v1_address(dst, kind), _v1_port(dport))
    return ProxyHeader(version=1, source=source, destination=destination), end + 2


def _v1_address(text: bytes, kind: type[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> str:
    try:
        return str(kind(text.decode("ascii")))
    except (UnicodeDecodeError, ValueError):
        raise RemoteProtocolError("PROXY v1 header with a malformed address") from None


def _v1_port(text: bytes) -> int:
    # 2.1: a port is "a number between 0 and 65535 inclusive", in decimal, no leading zeroes.
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text[:1] == b"0"):
        raise RemoteProtocolError("PROXY v1 header with a malformed port")
    port = int(text)
    if port > 65535:
        raise RemoteProtocolError("PROXY v1 header with a malformed port")
    return port


def _parse_v2(buffer: bytes) -> tuple[ProxyHeader, int] | None:
    if len(buffer) < _V2_FIXED:
        return None
    version, command = buffer[12] >> 4, buffer[12] & 0x0F
    if version != 2:
        raise RemoteProtocolError("PROXY v2 header with an unknown version")
    if command not in (0, 1):
        # 2.2: "The receiver must drop connections presenting unexpected values here."
        raise RemoteProtocolError("PROXY v2 header with an unknown command")
    family, transport = buffer[13] >> 4, buffer[13] & 0x0F
    if family > _AF_UNIX or transport > 2:
        raise RemoteProtocolError("PROXY v2 header with an unknown address family")
    length = int.from_bytes(buffer[14:16], "big")
    if length > V2_MAX_LENGTH:
        raise RemoteProtocolError("PROXY v2 header longer than the limit")
    total = _V2_FIXED + length
    if len(buffer) < total:
        return None
    if command == 0:
        # 2.2 LOCAL: "the receiver must accept this connection as valid and must use the
        # real connection endpoints and discard the protocol block including the family".
        return ProxyHeader(version=2, local=True), total
    size = _ADDRESS_SIZES.get(family, 0)
    if length < size:
        raise RemoteProtocolError("PROXY v2 address block shorter than its family needs")
    block = buffer[_V2_FIXED : _V2_FIXED + size]
    if family == _AF_INET:
        source = (str(ipaddress.IPv4Address(block[0:4])), int.from_bytes(block[8:10], "big"))
        dest = (str(ipaddress.IPv4Address(block[4:8])), int.from_bytes(block[10:12], "big"))
        return ProxyHeader(version=2, source=source, destination=dest), total
    if family == _AF_INET6:
        source = (str(ipaddress.IPv6Address(block[0:16])), int.from_bytes(block[32:34], "big"))
        dest = (str(ipaddress.IPv6Address(block[16:32])), int.from_bytes(block[34:36], "big"))
        return ProxyHeader(version=2, source=source, destination=dest), total
    # UNSPEC ("the receiver should ignore address information"), or UNIX paths, which name
    # no client an ASGI scope can hold.
    return ProxyHeader(version=2), total


def preamble_length(buffer: bytes, mode: ProxyMode) -> int | None:
    """How many of a connection's first bytes are its PROXY header: 0 for none (the "reject"
    mode, when the peer sent something else), None while `buffer` cannot tell yet. Raises
    RemoteProtocolError when the connection must be closed: no header `mode` accepts, or, in
    the "reject" mode, a header from a peer not allowed to send one."""
    if mode == "reject":
        looks = looks_like_proxy_header(buffer)
        if looks:
            raise RemoteProtocolError("PROXY protocol header from a peer not allowed to send one")
        return None if looks is None else 0
    parsed = parse_proxy_header(buffer, mode)
    return None if parsed is None else parsed[1]
