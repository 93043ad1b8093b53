"""RFC 6455 5.3 masking: the pure-Python XOR and the C one (when `websockets` is installed)
give the bytes a byte-by-byte reference gives, at every length around the lane and size edges."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from multicorn.protocol.masking import unmask, unmask_python


@pytest.fixture(autouse=True)
def h1_engine() -> None:
    """No HTTP/1.1 parser is involved here: run once, not once per engine (conftest.py)."""


def reference(payload: bytes, mask: bytes) -> bytes:
    return bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))


@given(payload=st.binary(max_size=300), mask=st.binary(min_size=4, max_size=4))
def test_both_ways_match_the_reference(payload: bytes, mask: bytes) -> None:
    expected = reference(payload, mask)
    assert unmask_python(payload, mask) == expected
    assert unmask_python(bytearray(payload), mask) == expected
    assert unmask(bytearray(payload), mask) == expected


@pytest.mark.parametrize("length", [0, 1, 3, 4, 5, 63, 64, 65, 1000, 65536 + 3])
def test_lengths_at_the_edges(length: int) -> None:
    payload = bytes(range(256)) * (length // 256 + 1)
    payload = payload[:length]
    mask = b"\x9a\x01\xff\x10"
    assert unmask_python(payload, mask) == reference(payload, mask)
    assert unmask(payload, mask) == reference(payload, mask)
    # Masking twice gives the payload back.
    assert unmask_python(unmask_python(payload, mask), mask) == payload
