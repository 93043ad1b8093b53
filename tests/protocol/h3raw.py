"""Raw HTTP/3 and QPACK bytes for tests that misbehave on purpose (frames, field sections,
encoder instructions), written by hand so that nothing in aioquic tidies them up."""

from __future__ import annotations

from aioquic.buffer import encode_uint_var
from aioquic.h3.connection import FrameType

# QPACK static table indices (RFC 9204 Appendix A).
STATIC_PATH_SLASH = 1
STATIC_METHOD_GET = 17
STATIC_SCHEME_HTTPS = 23
STATIC_AUTHORITY = 0


def frame(kind: int, payload: bytes) -> bytes:
    """An HTTP/3 frame (RFC 9114 7.1), of any type, announcing its real length."""
    return encode_uint_var(kind) + encode_uint_var(len(payload)) + payload


def frame_header(kind: int, length: int) -> bytes:
    """Only the header of a frame announcing `length` bytes."""
    return encode_uint_var(kind) + encode_uint_var(length)


def prefixed(value: int, bits: int, first: int = 0) -> bytes:
    """RFC 7541 5.1: an integer with a `bits`-bit prefix, the high bits of the first byte set
    to `first`."""
    mask = (1 << bits) - 1
    if value < mask:
        return bytes([first | value])
    out = bytearray([first | mask])
    value -= mask
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def string(data: bytes, bits: int = 7, first: int = 0) -> bytes:
    """A QPACK string literal without Huffman coding."""
    return prefixed(len(data), bits, first) + data


def set_capacity(capacity: int) -> bytes:
    """Encoder instruction: Set Dynamic Table Capacity (RFC 9204 4.3.1)."""
    return prefixed(capacity, 5, 0x20)


def insert(name: bytes, value: bytes) -> bytes:
    """Encoder instruction: Insert with Literal Name (RFC 9204 4.3.3)."""
    return string(name, 5, 0x40) + string(value)


def section_prefix(inserts: int, capacity: int) -> bytes:
    """Field section prefix (RFC 9204 4.5.1) with Base = Required Insert Count = `inserts`."""
    if inserts == 0:
        return b"\x00\x00"
    max_entries = capacity // 32
    return prefixed(inserts % (2 * max_entries) + 1, 8) + b"\x00"


def request_lines(authority: bytes = b"localhost") -> bytes:
    """GET https://<authority>/ as field lines using only the static table."""
    return (
        prefixed(STATIC_METHOD_GET, 6, 0xC0)
        + prefixed(STATIC_SCHEME_HTTPS, 6, 0xC0)
        + prefixed(STATIC_PATH_SLASH, 6, 0xC0)
        # literal with a static name reference: 01 N=0 T=1
        + prefixed(STATIC_AUTHORITY, 4, 0x50)
        + string(authority)
    )


def dynamic_ref(relative: int = 0) -> bytes:
    """Indexed field line referencing the dynamic table (RFC 9204 4.5.2), relative to Base."""
    return prefixed(relative, 6, 0x80)


def literal(name: bytes, value: bytes) -> bytes:
    """Literal field line with literal name (RFC 9204 4.5.6)."""
    return string(name, 3, 0x20) + string(value)


def headers_frame(section: bytes) -> bytes:
    return frame(FrameType.HEADERS, section)
