"""The caching HPACK coders give exactly what hpack's own give, call for call.

Each test runs a caching coder next to a plain hpack one on the same inputs (repeated header
sets, new fields, table size changes, limits lowered between blocks) and compares every block,
header list and error; the hypothesis test draws such sequences at random.
"""

from __future__ import annotations

from typing import Any

import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from multicorn.protocol.hpack_cache import CachingDecoder, CachingEncoder

RESPONSE = [(b":status", b"200"), (b"content-type", b"text/plain"), (b"content-length", b"10")]
OTHER = [(b":status", b"404"), (b"content-type", b"text/html"), (b"x-trace", b"abc")]


def _outcome(call: Any, *args: Any) -> object:
    try:
        return call(*args)
    except hpack.HPACKError as exc:
        return type(exc)


def test_repeated_sets_encode_as_hpack_does_and_hit_the_cache(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cached, plain = CachingEncoder(), hpack.Encoder()
    for headers in [RESPONSE, RESPONSE, OTHER, RESPONSE, OTHER, OTHER, RESPONSE]:
        assert cached.encode(list(headers)) == plain.encode(list(headers))
    # Both sets are fully indexed now: hpack itself is no longer asked.
    calls = []
    real = hpack.Encoder.encode

    def counting(self: hpack.Encoder, headers: Any, huffman: bool = True) -> bytes:
        calls.append(headers)
        return real(self, headers, huffman)

    monkeypatch.setattr(hpack.Encoder, "encode", counting)
    assert cached.encode(list(RESPONSE)) == plain.encode(list(RESPONSE))
    assert cached.encode(list(OTHER)) == plain.encode(list(OTHER))
    assert calls == [RESPONSE, OTHER]  # only the plain encoder's two calls


def test_a_new_field_invalidates_what_was_cached() -> None:
    cached, plain = CachingEncoder(), hpack.Encoder()
    for value in [b"1", b"1", b"1", b"2", b"2", b"1"]:
        headers = [*RESPONSE, (b"date", value)]
        assert cached.encode(headers) == plain.encode(headers)


def test_table_size_changes_are_signalled_and_invalidate() -> None:
    cached, plain = CachingEncoder(), hpack.Encoder()
    for size in [4096, 4096, 0, 0, 100, 4096]:
        cached.header_table_size = plain.header_table_size = size
        for _ in range(3):
            assert cached.encode(list(RESPONSE)) == plain.encode(list(RESPONSE))


def test_entries_evicted_by_a_resize_are_not_referenced() -> None:
    # Shrinking the table evicts entries without adding any; growing it back restores the
    # size but not the entries, so a block cached before refers to what is gone.
    cached, plain = CachingEncoder(), hpack.Encoder()
    for _ in range(3):
        assert cached.encode(list(RESPONSE)) == plain.encode(list(RESPONSE))
    for size in (60, 4096):  # keeps only the newest entry, content-length
        cached.header_table_size = plain.header_table_size = size
    still_there = [(b"content-length", b"10")]
    assert cached.encode(list(still_there)) == plain.encode(list(still_there))
    assert cached.encode(list(RESPONSE)) == plain.encode(list(RESPONSE))


def test_never_indexed_fields_are_not_taken_for_plain_ones() -> None:
    # A never-indexed field leaves the table alone; the same field as a plain tuple (equal to
    # it) must still be added to the table, not sent as the never-indexed literal.
    cached, plain = CachingEncoder(), hpack.Encoder()
    never = [hpack.NeverIndexedHeaderTuple(b"a", b"b")]
    for _ in range(2):
        assert cached.encode(list(never)) == plain.encode(list(never))
    for _ in range(2):
        assert cached.encode([(b"a", b"b")]) == plain.encode([(b"a", b"b")])
    sensitive = [(b"c", b"d", True)]
    for _ in range(2):
        assert cached.encode(list(sensitive)) == plain.encode(list(sensitive))
    assert cached.encode([(b"c", b"d")]) == plain.encode([(b"c", b"d")])


def test_repeated_blocks_decode_as_hpack_does_into_fresh_lists() -> None:
    encoder = hpack.Encoder()
    blocks = [encoder.encode(list(RESPONSE)) for _ in range(4)]
    cached, plain = CachingDecoder(65536), hpack.Decoder(65536)
    results = []
    for block in blocks:
        got = cached.decode(block, raw=True)
        assert got == plain.decode(block, raw=True)
        results.append(got)
    assert isinstance(results[-1], list)
    results[-1].clear()  # a caller changing its list does not change the next one
    assert cached.decode(blocks[-1], raw=True) == RESPONSE
    assert cached.decode(blocks[-1], raw=False) == plain.decode(blocks[-1], raw=False)


def test_a_lowered_header_list_limit_still_refuses_a_cached_block() -> None:
    encoder = hpack.Encoder()
    first, block = (encoder.encode(list(RESPONSE)) for _ in range(2))
    decoder = CachingDecoder(65536)
    assert decoder.decode(first, raw=True) == RESPONSE
    assert decoder.decode(block, raw=True) == decoder.decode(block, raw=True) == RESPONSE
    decoder.max_header_list_size = 50
    with pytest.raises(hpack.OversizedHeaderListError):
        decoder.decode(block, raw=True)


def test_a_shrunk_table_limit_is_checked_for_a_cached_block() -> None:
    encoder = hpack.Encoder()
    blocks = [encoder.encode(list(RESPONSE)) for _ in range(3)]
    cached, plain = CachingDecoder(65536), hpack.Decoder(65536)
    for decoder in (cached, plain):
        for block in blocks:
            decoder.decode(block, raw=True)
        decoder.max_allowed_table_size = 10  # a smaller SETTINGS_HEADER_TABLE_SIZE, acked
    assert _outcome(cached.decode, blocks[-1], True) is hpack.InvalidTableSizeError
    assert _outcome(plain.decode, blocks[-1], True) is hpack.InvalidTableSizeError


_fields = st.sampled_from(
    [
        (b":status", b"200"),
        (b"content-type", b"text/plain"),
        (b"x-a", b"1"),
        (b"x-a", b"2"),
        (b"date", b"Mon, 30 Nov 2026 12:00:00 GMT"),
        (b"x-long", b"v" * 300),
    ]
)
_steps = st.one_of(
    st.tuples(st.just("headers"), st.lists(_fields, max_size=5)),
    st.tuples(st.just("size"), st.sampled_from([0, 64, 256, 4096])),
    st.tuples(st.just("limit"), st.sampled_from([40, 400, 65536])),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_steps, max_size=30))
def test_random_sequences_code_as_hpack_does(steps: list[tuple[str, Any]]) -> None:
    cached_enc, plain_enc = CachingEncoder(), hpack.Encoder()
    cached_dec, plain_dec = CachingDecoder(65536), hpack.Decoder(65536)
    for kind, value in steps:
        if kind == "size":
            cached_enc.header_table_size = plain_enc.header_table_size = value
            cached_dec.max_allowed_table_size = plain_dec.max_allowed_table_size = value
        elif kind == "limit":
            cached_dec.max_header_list_size = plain_dec.max_header_list_size = value
        else:
            block = cached_enc.encode(list(value))
            assert block == plain_enc.encode(list(value))
            got = _outcome(cached_dec.decode, block, True)
            assert got == _outcome(plain_dec.decode, block, True)
            if isinstance(got, type):
                return  # a decoding error ends an HPACK context; both agreed on it


def test_more_sets_than_the_cache_holds_still_code_as_hpack_does() -> None:
    cached_enc, plain_enc = CachingEncoder(), hpack.Encoder()
    cached_dec, plain_dec = CachingDecoder(65536), hpack.Decoder(65536)
    sets = [[(b":status", b"200"), (b"x-n", str(n).encode())] for n in range(20)]
    for _ in range(3):
        for headers in sets:
            block = cached_enc.encode(list(headers))
            assert block == plain_enc.encode(list(headers))
            assert cached_dec.decode(block, raw=True) == plain_dec.decode(block, raw=True)
