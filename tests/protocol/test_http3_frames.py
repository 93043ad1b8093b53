"""Malformed HTTP/3 frames and misused streams, written as raw bytes by an aioquic client in
memory: each ends the connection (or the stream) with the code RFC 9114 or RFC 9204 names, the
server reports it as events (never an exception), and another client of the same endpoint is
served as if nothing happened."""

from __future__ import annotations

from pathlib import Path

import pytest
from aioquic.buffer import encode_uint_var
from aioquic.h3.connection import ErrorCode, FrameType, StreamType, encode_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from multicorn.protocol.errors import PeerAbuse, RemoteProtocolError
from multicorn.protocol.events import ConnectionClosed, RequestReceived, StreamEnded
from tests.protocol import h3raw
from tests.protocol.h3helpers import Pair, Pki, make_pki, served_alongside


@pytest.fixture
def h1_engine() -> str:
    """HTTP/1.1's parsing engines (tests/protocol/conftest.py) do not apply here."""
    return "none"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(Path(tmp_path_factory.mktemp("h3pki")))


def get_request() -> bytes:
    return h3raw.headers_frame(h3raw.section_prefix(0, 0) + h3raw.request_lines())


def assert_connection_error(p: Pair, code: int) -> None:
    """The server closed the connection with `code`, told the layer above at once (not after
    the closing period), and the endpoint still serves others."""
    p.transfer()
    events = p.events()
    assert events, "the server reported nothing"
    closed = events[-1]
    assert isinstance(closed, ConnectionClosed)
    assert isinstance(closed.error, RemoteProtocolError)
    assert f"0x{code:x}" in str(closed.error) or isinstance(closed.error, PeerAbuse)
    assert p.server.closed
    assert not p.server.wants_read
    served_alongside(p.pki, p.endpoint, p.now)
    assert p.close_code() == code
    assert p.events() == []  # ConnectionClosed was the last word
    assert p.server not in p.endpoint.connections


@pytest.fixture
def pair(pki: Pki) -> Pair:
    return Pair(pki)


# ---- request streams ---------------------------------------------------------------------


def test_data_before_headers(pair: Pair) -> None:
    # RFC 9114 4.1: "Receipt of an invalid sequence of frames MUST be treated as a connection
    # error of type H3_FRAME_UNEXPECTED."
    pair.raw(h3raw.frame(FrameType.DATA, b"body first"), end=True)
    assert_connection_error(pair, ErrorCode.H3_FRAME_UNEXPECTED)


def test_settings_on_a_request_stream(pair: Pair) -> None:
    # RFC 9114 7.2.4: "If an endpoint receives a SETTINGS frame on a different stream, the
    # endpoint MUST respond with a connection error of type H3_FRAME_UNEXPECTED."
    pair.raw(h3raw.frame(FrameType.SETTINGS, encode_settings({})) + get_request(), end=True)
    assert_connection_error(pair, ErrorCode.H3_FRAME_UNEXPECTED)


@pytest.mark.parametrize("kind", [0x2, 0x6, 0x8, 0x9])
def test_reserved_http2_frame_type_on_a_request_stream(pair: Pair, kind: int) -> None:
    # RFC 9114 7.2.8: "Frame types that were used in HTTP/2 where there is no corresponding
    # HTTP/3 frame have also been reserved [...] Their receipt MUST be treated as a connection
    # error of type H3_FRAME_UNEXPECTED."
    pair.raw(get_request() + h3raw.frame(kind, b"\x00" * 8), end=True)
    assert_connection_error(pair, ErrorCode.H3_FRAME_UNEXPECTED)


@pytest.mark.parametrize("kind", [0x2, 0x6, 0x8, 0x9])
def test_reserved_http2_frame_type_on_the_control_stream(pair: Pair, kind: int) -> None:
    pair.raw(h3raw.frame(kind, b"\x00" * 8), stream_id=pair.client_control)
    assert_connection_error(pair, ErrorCode.H3_FRAME_UNEXPECTED)


def test_frame_longer_than_its_stream(pair: Pair) -> None:
    # RFC 9114 7.1: "When a stream terminates cleanly, if the last frame on the stream was
    # truncated, this MUST be treated as a connection error of type H3_FRAME_ERROR."
    pair.raw(h3raw.frame_header(FrameType.HEADERS, 100) + b"\x00" * 10, end=True)
    assert_connection_error(pair, ErrorCode.H3_FRAME_ERROR)


def test_data_frame_longer_than_its_stream(pair: Pair) -> None:
    # The stream's frames are parsed in one go, so the application never hears of this one.
    pair.raw(get_request() + h3raw.frame_header(FrameType.DATA, 100) + b"x" * 10, end=True)
    assert_connection_error(pair, ErrorCode.H3_FRAME_ERROR)


def test_undecodable_field_section(pair: Pair) -> None:
    # RFC 9204 2.2.3: "If the decoder encounters a reference in a field line representation
    # to a dynamic table entry that has already been evicted or that has an absolute index
    # greater than or equal to the declared Required Insert Count, it MUST treat this as a
    # connection error of type QPACK_DECOMPRESSION_FAILED."
    section = h3raw.section_prefix(0, 0) + h3raw.request_lines() + h3raw.dynamic_ref(5)
    pair.raw(h3raw.headers_frame(section), end=True)
    assert_connection_error(pair, ErrorCode.QPACK_DECOMPRESSION_FAILED)


def test_unknown_frames_and_streams_are_ignored(pair: Pair) -> None:
    # RFC 9114 9: "Implementations MUST discard frames and unidirectional streams that have
    # unknown or unsupported types."
    grease = h3raw.frame(0x21, b"grease") + h3raw.frame(0x1F * 7 + 0x21, b"")
    pair.raw(grease, stream_id=pair.client_control)
    pair.raw_uni(encode_uint_var(0x54321) + b"whatever comes")
    sid = pair.raw(grease + get_request() + grease, end=True)
    pair.transfer()
    events = pair.events()
    assert [type(e) for e in events] == [RequestReceived, StreamEnded]
    assert events[0].stream_id == sid
    assert pair.terminated() is None
    assert not pair.server.closed


# ---- control and QPACK streams -----------------------------------------------------------


def test_second_control_stream(pair: Pair) -> None:
    # RFC 9114 6.2.1: "Only one control stream per peer is permitted; receipt of a second
    # stream claiming to be a control stream MUST be treated as a connection error of type
    # H3_STREAM_CREATION_ERROR."
    pair.raw_uni(encode_uint_var(StreamType.CONTROL) + h3raw.frame(FrameType.SETTINGS, b""))
    assert_connection_error(pair, ErrorCode.H3_STREAM_CREATION_ERROR)


def test_push_stream_from_a_client(pair: Pair) -> None:
    # RFC 9114 6.2.2: "A client MUST treat receipt of a push stream as a connection error";
    # a server receiving one from a client: "Only servers can push", H3_STREAM_CREATION_ERROR.
    pair.raw_uni(encode_uint_var(StreamType.PUSH) + encode_uint_var(0))
    assert_connection_error(pair, ErrorCode.H3_STREAM_CREATION_ERROR)


def test_closing_the_control_stream(pair: Pair) -> None:
    # RFC 9114 6.2.1: "If either control stream is closed at any point, this MUST be treated
    # as a connection error of type H3_CLOSED_CRITICAL_STREAM."
    pair.raw(b"", stream_id=pair.client_control, end=True)
    assert_connection_error(pair, ErrorCode.H3_CLOSED_CRITICAL_STREAM)


def test_resetting_the_control_stream(pair: Pair) -> None:
    pair.client.reset_stream(pair.client_control, ErrorCode.H3_NO_ERROR)
    assert_connection_error(pair, ErrorCode.H3_CLOSED_CRITICAL_STREAM)


def test_resetting_the_encoder_stream(pair: Pair) -> None:
    # RFC 9204 4.2: "Closure of either unidirectional stream type MUST be treated as a
    # connection error of type H3_CLOSED_CRITICAL_STREAM."
    pair.client.reset_stream(pair.client_encoder, ErrorCode.H3_NO_ERROR)
    assert_connection_error(pair, ErrorCode.H3_CLOSED_CRITICAL_STREAM)


def test_stop_sending_on_the_servers_control_stream(pair: Pair) -> None:
    pair.client.stop_stream(3, ErrorCode.H3_NO_ERROR)  # the server's first uni stream
    assert_connection_error(pair, ErrorCode.H3_CLOSED_CRITICAL_STREAM)


def test_second_settings_frame(pair: Pair) -> None:
    # RFC 9114 7.2.4: "If an endpoint receives a second SETTINGS frame on the control stream,
    # the endpoint MUST respond with a connection error of type H3_FRAME_UNEXPECTED."
    pair.raw(h3raw.frame(FrameType.SETTINGS, encode_settings({})), stream_id=pair.client_control)
    assert_connection_error(pair, ErrorCode.H3_FRAME_UNEXPECTED)


@pytest.mark.parametrize("kind", [FrameType.DATA, FrameType.HEADERS])
def test_request_frames_on_the_control_stream(pair: Pair, kind: int) -> None:
    # RFC 9114 7.2.1 and 7.2.2: "If a DATA/HEADERS frame is received on a control stream, the
    # recipient MUST respond with a connection error of type H3_FRAME_UNEXPECTED."
    pair.raw(h3raw.frame(kind, b"\x00\x00"), stream_id=pair.client_control)
    assert_connection_error(pair, ErrorCode.H3_FRAME_UNEXPECTED)


def test_garbage_on_the_encoder_stream(pair: Pair) -> None:
    # RFC 9204 4.2: "the decoder [...] MUST treat [an encoder instruction it cannot process] as
    # a connection error of type QPACK_ENCODER_STREAM_ERROR." Here: an insert far beyond
    # the advertised capacity.
    pair.raw(h3raw.set_capacity(1 << 20), stream_id=pair.client_encoder)
    assert_connection_error(pair, ErrorCode.QPACK_ENCODER_STREAM_ERROR)


def test_encoder_stream_referencing_an_entry_that_does_not_exist(pair: Pair) -> None:
    pair.raw(b"\x80" + b"\x3f" + b"\xff" * 3 + b"\x01", stream_id=pair.client_encoder)
    assert_connection_error(pair, ErrorCode.QPACK_ENCODER_STREAM_ERROR)


def test_garbage_on_the_decoder_stream(pair: Pair) -> None:
    # RFC 9204 4.4: a Section Acknowledgment for a stream with no unacknowledged section is
    # a QPACK_DECODER_STREAM_ERROR ("If an encoder receives a Section Acknowledgment
    # instruction referring to a stream on which every encoded field section with a non-zero
    # Required Insert Count has already been acknowledged, this MUST be treated as a
    # connection error of type QPACK_DECODER_STREAM_ERROR").
    pair.raw(h3raw.prefixed(0, 7, 0x80), stream_id=pair.client_decoder)
    assert_connection_error(pair, ErrorCode.QPACK_DECODER_STREAM_ERROR)


def test_blocked_streams_beyond_the_limit(pki: Pki) -> None:
    # RFC 9204 2.1.2: "If a decoder encounters more blocked streams than it promised to
    # support, it MUST treat this as a connection error of type QPACK_DECOMPRESSION_FAILED."
    # Each request references an insert that never arrives; the limit is 16.
    p = Pair(pki)
    section = h3raw.section_prefix(1, 4096) + h3raw.request_lines() + h3raw.dynamic_ref(0)
    for _ in range(16):
        p.raw(h3raw.headers_frame(section), end=True)
    p.transfer()
    assert p.events() == []
    assert not p.server.closed  # sixteen may wait
    p.raw(h3raw.headers_frame(section), end=True)
    assert_connection_error(p, ErrorCode.QPACK_DECOMPRESSION_FAILED)


# ---- whatever the bytes -------------------------------------------------------------------

_FRAME = st.one_of(
    st.builds(
        h3raw.frame,
        st.sampled_from([0x0, 0x1, 0x2, 0x3, 0x4, 0x5, 0x7, 0x9, 0xD, 0x21, 0x40]),
        st.binary(max_size=40),
    ),
    st.binary(max_size=20),
    # Well-formed pieces in any order: heads, bodies, QPACK instructions and references.
    st.sampled_from(
        [
            h3raw.headers_frame(h3raw.section_prefix(0, 0) + h3raw.request_lines()),
            h3raw.headers_frame(h3raw.section_prefix(1, 4096) + h3raw.dynamic_ref(0)),
            h3raw.frame(FrameType.DATA, b"body"),
            h3raw.set_capacity(4096) + h3raw.insert(b"x", b"y"),
            h3raw.prefixed(0, 7, 0x80),
        ]
    ),
)
_STREAMS = ["request 1", "request 2", "control", "encoder", "decoder", "new uni"]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(_STREAMS), _FRAME, st.booleans()), min_size=1, max_size=8
    )
)
def test_any_bytes_on_any_streams_end_in_events(
    pki: Pki, steps: list[tuple[str, bytes, bool]]
) -> None:
    p = Pair(pki)
    streams = {
        "request 1": p.client.get_next_available_stream_id(),
        "request 2": p.client.get_next_available_stream_id() + 4,
        "control": p.client_control,
        "encoder": p.client_encoder,
        "decoder": p.client_decoder,
    }
    for where in ("request 1", "request 2"):
        # aioquic's client takes a stream it skipped for one already finished.
        p.raw(b"", stream_id=streams[where])
    ended: set[str] = set()
    for where, data, fin in steps:
        if where in ended:
            continue
        if where == "new uni":
            p.raw_uni(data, end=fin)
        else:
            # The client's own HTTP/3 layer still writes on its critical streams (closing them
            # is tested above), so only request streams end here.
            fin = fin and where.startswith("request")
            p.raw(data, stream_id=streams[where], end=fin)
            if fin:
                ended.add(where)
        p.client_flush()  # nothing raises
    p.transfer()
    events = p.events()
    closed = [e for e in events if isinstance(e, ConnectionClosed)]
    if closed:
        assert closed == events[-1:]  # the last word, said once
        assert p.server.closed
        # The peer's fault, never ours (a LocalProtocolError: something raised).
        assert isinstance(closed[0].error, RemoteProtocolError)
    else:
        assert not p.server.closed
    served_alongside(pki, p.endpoint, p.now)
