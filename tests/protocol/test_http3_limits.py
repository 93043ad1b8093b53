"""HTTP/3 limits: the field section size (SETTINGS_MAX_FIELD_SECTION_SIZE), QPACK's dynamic
table and blocked streams, and the rapid-reset budget; each overspent limit ends the
connection with H3_EXCESSIVE_LOAD and PeerAbuse, as HTTP/2 does with ENHANCE_YOUR_CALM."""

from __future__ import annotations

import time
from pathlib import Path

import pylsqpack
import pytest
from aioquic.buffer import encode_uint_var
from aioquic.h3.connection import ErrorCode, FrameType, Setting, StreamType
from hypothesis import given, settings
from hypothesis import strategies as st

from multicorn.protocol.errors import PeerAbuse
from multicorn.protocol.events import (
    ConnectionClosed,
    DataReceived,
    RequestReceived,
    SendData,
    SendResponse,
    StreamEnded,
    StreamReset,
)
from multicorn.protocol.http3 import HTTP3Limits, _decode_work, field_section_size
from tests.protocol import h3raw
from tests.protocol.h3helpers import Pair, Pki, make_pki, served_alongside

KB = 1024


@pytest.fixture
def h1_engine() -> str:
    """HTTP/1.1's parsing engines (tests/protocol/conftest.py) do not apply here."""
    return "none"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(Path(tmp_path_factory.mktemp("h3pki")))


def of_type(events: list, kind: type) -> list:
    return [e for e in events if isinstance(e, kind)]


def assert_abuse(p: Pair) -> None:
    """The connection ended with H3_EXCESSIVE_LOAD, reported at once as PeerAbuse (so that the
    layer above cancels what the peer started), and the endpoint serves others."""
    p.transfer()
    events = p.events()
    closed = events[-1]
    assert isinstance(closed, ConnectionClosed)
    assert isinstance(closed.error, PeerAbuse)
    assert p.server.closed
    served_alongside(p.pki, p.endpoint, p.now)
    assert p.close_code() == ErrorCode.H3_EXCESSIVE_LOAD
    assert p.events() == []


def test_settings_advertise_the_limits(pki: Pki) -> None:
    p = Pair(pki)
    assert p.h3 is not None
    settings = p.h3.received_settings
    assert settings is not None
    assert settings[Setting.MAX_FIELD_SECTION_SIZE] == 64 * KB
    assert settings[Setting.QPACK_MAX_TABLE_CAPACITY] == 4096
    assert settings[Setting.QPACK_BLOCKED_STREAMS] == 16


def test_settings_follow_the_limits(pki: Pki) -> None:
    limits = HTTP3Limits(
        max_field_section_size=5000, qpack_max_table_capacity=1000, qpack_blocked_streams=3
    )
    p = Pair(pki, limits=limits)
    assert p.h3 is not None
    settings = p.h3.received_settings
    assert settings is not None
    assert settings[Setting.MAX_FIELD_SECTION_SIZE] == 5000
    assert settings[Setting.QPACK_MAX_TABLE_CAPACITY] == 1000
    assert settings[Setting.QPACK_BLOCKED_STREAMS] == 3


def test_field_section_size_counts_32_bytes_a_field() -> None:
    assert field_section_size([(b"a", b"bc"), (b"", b"")]) == 3 + 32 + 32


def test_head_within_the_limit_is_served(pki: Pki) -> None:
    p = Pair(pki)
    value = bytes(33 + (i * 7919) % 94 for i in range(60 * KB))  # poorly compressible
    sid = p.request(extra=[(b"x-large", value)])
    p.transfer()
    (request, _end) = p.events()
    assert isinstance(request, RequestReceived)
    assert request.stream_id == sid
    assert request.headers[-1] == (b"x-large", value)


def test_head_over_the_limit_ends_the_connection(pki: Pki) -> None:
    p = Pair(pki, limits=HTTP3Limits(max_field_section_size=4000))
    p.request(extra=[(b"x-big", b"a" * 5000)])
    assert_abuse(p)


def test_head_over_the_limit_by_its_field_count(pki: Pki) -> None:
    # Small encoded, but every field counts 32 bytes (RFC 9114 4.2.2).
    p = Pair(pki, limits=HTTP3Limits(max_field_section_size=2000))
    section = h3raw.section_prefix(0, 0) + h3raw.request_lines()
    section += h3raw.literal(b"a", b"") * 80  # 80 * 33 bytes decoded, 240 encoded
    p.raw(h3raw.headers_frame(section), end=True)
    assert_abuse(p)


def test_trailers_over_the_limit_end_the_connection(pki: Pki) -> None:
    p = Pair(pki, limits=HTTP3Limits(max_field_section_size=4000))
    sid = p.request(method=b"POST", body=b"body", end=False)
    p.transfer()
    assert of_type(p.events(), RequestReceived)
    assert p.h3 is not None
    p.h3.send_headers(sid, [(b"x-trailer", b"t" * 5000)], end_stream=True)
    assert_abuse(p)


def test_oversized_headers_frame_is_refused_before_it_is_buffered(pki: Pki) -> None:
    limit = 16 * KB
    p = Pair(pki, limits=HTTP3Limits(max_field_section_size=limit))
    # A HEADERS frame announcing four times the limit; only its first bytes are sent.
    sid = p.raw(h3raw.frame_header(FrameType.HEADERS, 4 * limit) + b"\x00" * 1000)
    p.transfer()
    events = p.events()
    assert isinstance(events[-1], ConnectionClosed)
    assert isinstance(events[-1].error, PeerAbuse)
    assert p.server.closed
    # The client's next bytes go nowhere: the connection is closing.
    p.raw(b"\x00" * 8000, stream_id=sid)
    assert p.close_code() == ErrorCode.H3_EXCESSIVE_LOAD


def qpack_bomb(references: int, value: bytes) -> tuple[bytes, bytes]:
    """Encoder instructions inserting one large entry, and a field section referencing it
    `references` times."""
    instructions = h3raw.set_capacity(4096) + h3raw.insert(b"x", value)
    section = h3raw.section_prefix(1, 4096) + h3raw.request_lines()
    section += h3raw.dynamic_ref(0) * references
    return instructions, section


def test_qpack_bomb_is_refused_without_decoding_it(pki: Pki) -> None:
    # 60 KB of one-byte references to a 4 KB entry would decode to 240 MB.
    p = Pair(pki)
    instructions, section = qpack_bomb(60_000, b"v" * 4000)
    p.raw(instructions, stream_id=p.client_encoder)
    p.raw(h3raw.headers_frame(section), end=True)
    started = time.perf_counter()
    p.client_to_server()
    p.transfer()
    assert time.perf_counter() - started < 0.5  # decoding it takes longer
    assert_abuse(p)


def test_qpack_bomb_within_the_decode_bound_is_refused_after_decoding(pki: Pki) -> None:
    # Three references to a 700-byte entry: a few bytes that decode past the limit.
    p = Pair(pki, limits=HTTP3Limits(max_field_section_size=2000))
    instructions, section = qpack_bomb(3, b"v" * 700)
    p.raw(instructions, stream_id=p.client_encoder)
    p.raw(h3raw.headers_frame(section), end=True)
    assert_abuse(p)


def test_dynamic_table_references_within_the_limit_are_served(pki: Pki) -> None:
    p = Pair(pki)
    instructions, section = qpack_bomb(3, b"v" * 700)
    p.raw(instructions, stream_id=p.client_encoder)
    sid = p.raw(h3raw.headers_frame(section), end=True)
    p.transfer()
    (request, end) = p.events()
    assert isinstance(request, RequestReceived)
    assert request.headers[-3:] == [(b"x", b"v" * 700)] * 3
    assert end == StreamEnded(stream_id=sid)


def test_request_waiting_for_the_encoder_stream_is_served_once_it_arrives(pki: Pki) -> None:
    p = Pair(pki)
    instructions, section = qpack_bomb(1, b"late")
    sid = p.raw(h3raw.headers_frame(section), end=True)
    p.transfer()
    assert p.events() == []  # blocked (RFC 9204 2.1.2)
    p.raw(instructions, stream_id=p.client_encoder)
    p.transfer()
    (request, _end) = p.events()
    assert isinstance(request, RequestReceived)
    assert request.stream_id == sid
    assert request.headers[-1] == (b"x", b"late")


def test_no_dynamic_table(pki: Pki) -> None:
    limits = HTTP3Limits(qpack_max_table_capacity=0, qpack_blocked_streams=0)
    p = Pair(pki, limits=limits)
    # aioquic's client encoder honours the setting: requests still work.
    sid = p.request(extra=[(b"x-a", b"1")])
    p.transfer()
    assert of_type(p.events(), RequestReceived)[0].stream_id == sid
    # RFC 9204 4.3.1: "The decoder MUST treat a new dynamic table capacity value that exceeds
    # this limit as a connection error of type QPACK_ENCODER_STREAM_ERROR."
    p.raw(h3raw.set_capacity(32), stream_id=p.client_encoder)
    p.transfer()
    assert isinstance(p.events()[-1], ConnectionClosed)
    assert p.close_code() == ErrorCode.QPACK_ENCODER_STREAM_ERROR


def test_no_blocked_streams(pki: Pki) -> None:
    # RFC 9204 2.1.2: with SETTINGS_QPACK_BLOCKED_STREAMS 0, a section that would block is a
    # connection error of type QPACK_DECOMPRESSION_FAILED.
    p = Pair(pki, limits=HTTP3Limits(qpack_blocked_streams=0))
    _instructions, section = qpack_bomb(1, b"never sent")
    p.raw(h3raw.headers_frame(section), end=True)
    p.transfer()
    assert isinstance(p.events()[-1], ConnectionClosed)
    assert p.close_code() == ErrorCode.QPACK_DECOMPRESSION_FAILED


# ---- rapid reset ---------------------------------------------------------------------------


def cancel(p: Pair, stream_id: int) -> None:
    p.client.reset_stream(stream_id, ErrorCode.H3_REQUEST_CANCELLED)
    p.client.stop_stream(stream_id, ErrorCode.H3_REQUEST_CANCELLED)


def open_and_cancel(p: Pair, count: int) -> None:
    """`count` requests, each cancelled as soon as its head has left (a reset before that
    would keep the head from being sent at all)."""
    sids = [p.request(method=b"POST", end=False) for _ in range(count)]
    p.client_to_server()
    for sid in sids:
        cancel(p, sid)
    p.transfer()


def test_rapid_reset_ends_the_connection(pki: Pki) -> None:
    # CVE-2023-44487: open a request and cancel it at once, over and over.
    p = Pair(pki, limits=HTTP3Limits(reset_budget=(50.0, 10.0)))
    seen: list = []
    for _ in range(20):
        open_and_cancel(p, 5)
        seen += p.events()
        if p.server.closed:
            break
    assert p.server.closed
    assert 45 <= len(of_type(seen, RequestReceived)) <= 60
    closed = seen[-1]
    assert isinstance(closed, ConnectionClosed)
    assert isinstance(closed.error, PeerAbuse)
    assert "rapid reset" in str(closed.error)
    served_alongside(pki, p.endpoint, p.now)
    assert p.close_code() == ErrorCode.H3_EXCESSIVE_LOAD


def test_resets_within_the_budget_are_fine(pki: Pki) -> None:
    p = Pair(pki, limits=HTTP3Limits(reset_budget=(50.0, 10.0)))
    for _ in range(30):
        open_and_cancel(p, 3)
        p.advance(0.5)  # five tokens back
    assert not p.server.closed
    events = p.events()
    assert len(of_type(events, StreamReset)) == 90
    assert not of_type(events, ConnectionClosed)


def test_resets_after_the_response_cost_nothing(pki: Pki) -> None:
    # A client may cancel the rest of a request body once it has its response.
    p = Pair(pki, limits=HTTP3Limits(reset_budget=(10.0, 0.0)))
    for _ in range(30):
        sid = p.request(method=b"POST", body=b"x", end=False)
        p.transfer()
        p.send(SendResponse(stream_id=sid, status=200, headers=[]))
        p.send(SendData(stream_id=sid, data=b"done", end_stream=True))
        p.transfer()
        # The server's STOP_SENDING (H3_NO_ERROR, RFC 9114 4.1.1) usually got there first, and
        # the client's stack has then reset and forgotten the stream itself.
        if sid in p.client._streams:
            cancel(p, sid)
        p.transfer()
        assert p.stops().get(sid) == ErrorCode.H3_NO_ERROR
    assert not p.server.closed


def test_malformed_requests_draw_from_the_reset_budget(pki: Pki) -> None:
    p = Pair(pki, limits=HTTP3Limits(reset_budget=(20.0, 0.0)))
    for _ in range(10):
        for _ in range(5):
            p.request(extra=[(b"X-Upper", b"1")])
        p.transfer()
        if p.server.closed:
            break
    assert p.server.closed
    events = p.events()
    assert not of_type(events, RequestReceived)
    assert isinstance(events[-1], ConnectionClosed)
    assert isinstance(events[-1].error, PeerAbuse)


def test_many_tiny_data_frames_are_passed_on(pki: Pki) -> None:
    # Bounded work per byte, so no budget; and the application gets the body in the pieces
    # QUIC delivered, not one event per frame.
    p = Pair(pki)
    sid = p.request(method=b"POST", end=False)
    assert p.h3 is not None
    for _ in range(500):
        p.h3.send_data(sid, b"x", end_stream=False)
    p.h3.send_data(sid, b"", end_stream=True)
    p.transfer()
    events = p.events()
    assert b"".join(e.data for e in of_type(events, DataReceived)) == b"x" * 500
    assert len(of_type(events, DataReceived)) < 10
    assert events[-1] == StreamEnded(stream_id=sid)


# ---- the decode bound -----------------------------------------------------------------------

_FIELD = st.tuples(
    st.sampled_from([b"x-a", b"cookie", b"user-agent", b"accept", b"x-" + b"n" * 40]),
    st.one_of(st.binary(max_size=300), st.sampled_from([b"", b"gzip", b"*/*", b"v" * 500])),
)


@settings(max_examples=300, deadline=None)
@given(sections=st.lists(st.lists(_FIELD, min_size=1, max_size=12), min_size=1, max_size=4))
def test_decode_bound_is_an_upper_bound(sections: list[list[tuple[bytes, bytes]]]) -> None:
    # pylsqpack's encoder uses the dynamic table, Huffman coding and post-base references.
    encoder = pylsqpack.Encoder()
    decoder = pylsqpack.Decoder(4096, 16)
    decoder.feed_encoder(encoder.apply_settings(max_table_capacity=4096, blocked_streams=16))
    for stream_id, fields in enumerate(sections):
        instructions, block = encoder.encode(stream_id * 4, fields)
        decoder.feed_encoder(instructions)
        acknowledgement, decoded = decoder.feed_header(stream_id * 4, block)
        encoder.feed_decoder(acknowledgement)
        assert decoded == fields
        assert field_section_size(fields) <= _decode_work(block, 4096, 1 << 30)


@given(block=st.binary(max_size=200), entry=st.integers(0, 5000))
def test_decode_bound_never_raises(block: bytes, entry: int) -> None:
    assert _decode_work(block, entry, 10_000) >= 0


# ---- frames buffered whole ------------------------------------------------------------------


def test_headers_frame_in_tiny_pieces_ends_the_connection(pki: Pki) -> None:
    # aioquic copies what it holds of the frame at each piece: a cost of size times pieces.
    p = Pair(pki)
    size = 4000
    sid = p.raw(h3raw.frame_header(FrameType.HEADERS, size))
    sent = p.trickle(sid, b"\x00" * size, stop=lambda: p.server.closed)
    assert sent <= 16 + size // 256 + 2  # the piece with the frame header, and the last
    assert_abuse(p)


def test_huge_settings_frame_is_refused_from_its_header(pki: Pki) -> None:
    p = Pair(pki, client_h3=False)
    p.raw_uni(
        h3raw.prefixed(StreamType.CONTROL, 6) + h3raw.frame_header(FrameType.SETTINGS, 1 << 20)
    )
    assert_abuse(p)


def test_settings_frame_of_a_fair_size_is_read(pki: Pki) -> None:
    # Reserved settings to be ignored (RFC 9114 7.2.4.1), a few hundred bytes of them.
    p = Pair(pki, client_h3=False)
    grease = b"".join(encode_uint_var(0x1F * n + 0x21) + encode_uint_var(n) for n in range(1, 60))
    p.raw_uni(h3raw.prefixed(StreamType.CONTROL, 6) + h3raw.frame(FrameType.SETTINGS, grease))
    p.raw_uni(h3raw.prefixed(StreamType.QPACK_ENCODER, 6))
    p.raw_uni(h3raw.prefixed(StreamType.QPACK_DECODER, 6))
    sid = p.raw(h3raw.headers_frame(h3raw.section_prefix(0, 0) + h3raw.request_lines()), end=True)
    p.transfer()
    events = p.events()
    assert isinstance(events[0], RequestReceived)
    assert events[0].stream_id == sid
    assert not p.server.closed


def test_qpack_bomb_with_a_broken_tail_is_refused_without_decoding_it(pki: Pki) -> None:
    # The references come first; the decoder would expand them all before it found the end
    # broken.
    p = Pair(pki)
    instructions, section = qpack_bomb(60_000, b"v" * 4000)
    p.raw(instructions, stream_id=p.client_encoder)
    p.raw(h3raw.headers_frame(section + b"\x3f\xff"), end=True)  # a literal cut short
    started = time.perf_counter()
    p.client_to_server()
    p.transfer()
    assert time.perf_counter() - started < 0.5
    assert_abuse(p)
