"""The XOR masking of RFC 6455 5.3: every frame a client sends is masked, so a server unmasks
every byte it receives over a WebSocket.

It is the one loop over payload bytes a WebSocket server cannot avoid, and in pure Python it is
the cost of large messages (about 1 ms per MiB, with `bytes.translate` on the four byte lanes).
When the `websockets` package is installed (the `speed` extra installs it) its C `apply_mask`
does the same in about 30 us per MiB and `unmask` is that function; the bytes are the same.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

# Below this, one big-integer XOR beats four translate passes.
_SMALL: Final = 64
# For bytes.translate: the table of `value ^ key` for each key byte.
_TABLES: Final = tuple(bytes(value ^ key for value in range(256)) for key in range(256))


def unmask_python(payload: bytes | bytearray | memoryview, mask: bytes) -> bytes:
    """`payload` XORed with the 4-byte `mask` repeated (unmasking and masking are the same)."""
    length = len(payload)
    if length < _SMALL:
        if not length:
            return b""
        key = int.from_bytes((mask * ((length >> 2) + 1))[:length], "little")
        return (int.from_bytes(payload, "little") ^ key).to_bytes(length, "little")
    data = bytearray(payload)
    # Byte i is XORed with mask[i % 4]: four strided passes, each one C-level translate.
    for lane in range(4):
        data[lane::4] = data[lane::4].translate(_TABLES[mask[lane]])
    return bytes(data)


def _accelerated() -> Callable[[bytes | bytearray | memoryview, bytes], bytes]:
    try:
        from websockets.speedups import apply_mask
    except ImportError:
        return unmask_python
    return apply_mask


unmask: Final = _accelerated()
