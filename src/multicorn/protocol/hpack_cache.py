"""HPACK coders that remember the header blocks they have already produced, per connection.

Theory of operation. An HPACK coder's output is a function of its input and of its dynamic
table (RFC 7541 2.3.2), and the table changes only when an entry is added or its size limit
changes. Clients and servers repeat the same header sets: once a set's fields are all in the
table, encoding or decoding it leaves the table as it was, so the next time the result is the
same bytes (or the same list). These subclasses keep such results while the table stays as it
was, and forget them all as soon as it changes:

- the table counts its additions (`_CountingTable.generation`); a cached result is used only
  while the generation, the number of entries and every size limit the coder checks are what
  they were when the result was made, and only results whose own coding left the table alone
  are kept;
- nothing else changes: a block that adds to the table, carries a table size update, or fails
  (any HPACK error, an oversized header list) is coded by hpack itself each time, so every
  check hpack makes still runs wherever it could give a different answer;
- the caches are small (a few entries of short blocks) and allocated on first use, so an idle
  connection pays nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hpack import Decoder, Encoder, HeaderTuple
from hpack.table import HeaderTable

# All-indexed blocks take a byte or two per field; anything longer is not a repeat worth keeping.
_MAX_BLOCK = 256
# A full cache is emptied and starts again. At most 8 lists of at most 256 fields each (one per
# byte of its block): what a peer can make the decoder keep is bounded well below what its
# header blocks may already make the server hold.
_MAX_ENTRIES = 8


class _CountingTable(HeaderTable):
    """hpack's dynamic table, counting additions so a coder can tell when it has changed."""

    def __init__(self) -> None:
        super().__init__()
        self.generation = 0

    def add(self, name: bytes, value: bytes) -> None:
        self.generation += 1
        super().add(name, value)


class CachingEncoder(Encoder):
    """An hpack Encoder that returns the same block for a repeated header list while the
    table is unchanged (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.header_table = self._table = _CountingTable()
        self._cache: dict[tuple[Any, ...], bytes] | None = None
        self._state: tuple[int, int, int] = (-1, 0, 0)

    def _now(self) -> tuple[int, int, int]:
        table = self._table
        return (table.generation, len(table.dynamic_entries), table.maxsize)

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        # Only plain tuples: a HeaderTuple subclass carries its never-index flag outside the
        # values it compares equal by, and a dict is unordered input hpack reorders.
        if self._table.resized or type(headers) is not list:
            return super().encode(headers, huffman)
        for header in headers:
            if type(header) is not tuple:
                return super().encode(headers, huffman)
        key = (huffman, *headers)
        before = self._now()
        cache = self._cache
        if cache is not None and before == self._state:
            block = cache.get(key)
            if block is not None:
                return block
        block = super().encode(headers, huffman)
        after = self._now()
        if after == before and len(block) <= _MAX_BLOCK:
            if cache is None or after != self._state or len(cache) >= _MAX_ENTRIES:
                cache = self._cache = {}
                self._state = after
            cache[key] = block
        return block


class CachingDecoder(Decoder):
    """An hpack Decoder that returns the same header list for a repeated block while the
    table is unchanged (see the module docstring)."""

    def __init__(self, max_header_list_size: int) -> None:
        super().__init__(max_header_list_size=max_header_list_size)
        self.header_table = self._table = _CountingTable()
        self._cache: dict[tuple[bytes, bool], list[HeaderTuple]] | None = None
        self._state: tuple[int, int, int, int, int] = (-1, 0, 0, 0, 0)

    def _now(self) -> tuple[int, int, int, int, int]:
        table = self._table
        return (
            table.generation,
            len(table.dynamic_entries),
            table.maxsize,
            self.max_allowed_table_size,
            self.max_header_list_size,
        )

    def decode(self, data: bytes, raw: bool = False) -> Iterable[HeaderTuple]:
        if type(data) is not bytes or len(data) > _MAX_BLOCK:
            return super().decode(data, raw)
        key = (data, raw)
        before = self._now()
        cache = self._cache
        if cache is not None and before == self._state:
            headers = cache.get(key)
            if headers is not None:
                return list(headers)  # the caller's own list: it may change it
        decoded = list(super().decode(data, raw))
        after = self._now()
        # A table size update (001xxxxx) leaves the table as it was but is checked against
        # the limits of the moment: such blocks are always decoded.
        if after == before and not (data and data[0] & 0xE0 == 0x20):
            if cache is None or after != self._state or len(cache) >= _MAX_ENTRIES:
                cache = self._cache = {}
                self._state = after
            cache[key] = decoded
            return list(decoded)
        return decoded
