"""Streams the client gives up on (RESET_STREAM mid-body, STOP_SENDING mid-response): the
application hears StreamReset once, nothing more goes out on the stream, and nothing is kept
for it afterwards, however many times it happens."""

from __future__ import annotations

from pathlib import Path

import pytest
from aioquic.h3.connection import ErrorCode, FrameType

from multicorn.protocol.events import (
    DataReceived,
    RequestReceived,
    ResetStream,
    SendData,
    SendResponse,
    StreamReset,
)
from multicorn.protocol.http3 import HTTP3Limits, HTTP3Protocol
from tests.protocol import h3raw
from tests.protocol.h3helpers import Pair, Pki, make_pki


@pytest.fixture
def h1_engine() -> str:
    """HTTP/1.1's parsing engines (tests/protocol/conftest.py) do not apply here."""
    return "none"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(Path(tmp_path_factory.mktemp("h3pki")))


def of_type(events: list, kind: type) -> list:
    return [e for e in events if isinstance(e, kind)]


def kept(server: HTTP3Protocol) -> dict[str, int]:
    """How much per-stream state the server holds (ours, aioquic's HTTP/3 and QUIC layers)."""
    assert server._h3 is not None
    return {
        "streams": len(server._streams),
        "abandoned": len(server._abandoned),
        "unseen": len(server._unseen),
        # The client's three unidirectional streams (and, in QUIC, the server's three too) live
        # as long as the connection.
        "h3": len(server._h3._stream) - 3,
        "quic": len(server.quic._streams) - 6,
    }


def test_reset_mid_body(pki: Pki) -> None:
    p = Pair(pki)
    sid = p.request(method=b"POST", body=b"first part", end=False)
    p.transfer()
    assert of_type(p.events(), DataReceived)
    p.client.reset_stream(sid, ErrorCode.H3_REQUEST_CANCELLED)
    p.transfer()
    assert p.events() == [StreamReset(stream_id=sid)]
    # The server stops the stream's other half too; commands for it are dropped.
    assert p.resets()[sid] == ErrorCode.H3_REQUEST_CANCELLED
    assert p.send(SendResponse(stream_id=sid, status=200, headers=[])) == []
    assert p.send(SendData(stream_id=sid, data=b"late", end_stream=True)) == []
    p.transfer()
    assert p.server_stream_bytes(sid) == b""
    assert p.terminated() is None


def test_stop_sending_mid_response(pki: Pki) -> None:
    p = Pair(pki)
    sid = p.request()
    p.transfer()
    p.events()
    p.send(SendResponse(stream_id=sid, status=200, headers=[]), SendData(stream_id=sid, data=b"a"))
    p.transfer()
    sent = len(p.server_stream_bytes(sid))
    p.client.stop_stream(sid, ErrorCode.H3_REQUEST_CANCELLED)
    p.transfer()
    assert p.events() == [StreamReset(stream_id=sid)]
    # RFC 9000 3.5: STOP_SENDING is answered with RESET_STREAM (aioquic uses its code).
    assert p.resets()[sid] == ErrorCode.H3_REQUEST_CANCELLED
    assert p.send(SendData(stream_id=sid, data=b"b" * 5000, end_stream=True)) == []
    p.transfer()
    assert len(p.server_stream_bytes(sid)) == sent
    assert p.server.pending_send(sid) == 0
    assert p.terminated() is None


@pytest.mark.parametrize("how", ["reset mid-body", "stop mid-response", "both", "malformed"])
def test_nothing_is_kept_after_many_cycles(pki: Pki, how: str) -> None:
    p = Pair(pki, limits=HTTP3Limits(reset_budget=(1000.0, 0.0)))
    for _ in range(150):  # more than the 100 streams QUIC lets the client have open
        if how == "malformed":
            # With its FIN: no RESET_STREAM ever answers the server's STOP_SENDING.
            p.request(extra=[(b"X-Upper", b"1")])
            p.transfer()
            continue
        sid = p.request(method=b"POST", body=b"part", end=False)
        p.transfer()
        if how != "reset mid-body":
            p.send(SendResponse(stream_id=sid, status=200, headers=[]))
            p.send(SendData(stream_id=sid, data=b"partial"))
            p.transfer()
        if how != "stop mid-response":
            p.client.reset_stream(sid, ErrorCode.H3_REQUEST_CANCELLED)
        if how != "reset mid-body":
            p.client.stop_stream(sid, ErrorCode.H3_REQUEST_CANCELLED)
        p.transfer()
    p.advance(1.0)  # acknowledgements settle
    events = p.events()
    if how != "malformed":
        assert len(of_type(events, RequestReceived)) == 150
        assert len(of_type(events, StreamReset)) == 150
    assert not p.server.closed
    assert kept(p.server) == {"streams": 0, "abandoned": 0, "unseen": 0, "h3": 0, "quic": 0}
    # And the connection still serves.
    sid = p.request(b"/after")
    p.transfer()
    assert [e.target for e in of_type(p.events(), RequestReceived)] == [b"/after"]


def test_lone_fins_leave_nothing_behind(pki: Pki) -> None:
    # A stream that ends without a head, skipped by a later stream's head: its head is
    # awaited (`_unseen`) until aioquic has forgotten the stream.
    p = Pair(pki)
    for _ in range(300):
        p.raw(b"", end=True)
        p.request()
        p.transfer()
    assert len(p.server._unseen) <= 2 * 100
    assert not p.server.closed


def test_stream_reset_while_its_trailers_wait_for_the_encoder_stream(pki: Pki) -> None:
    p = Pair(pki)
    head = h3raw.headers_frame(h3raw.section_prefix(0, 0) + h3raw.request_lines())
    trailers = h3raw.headers_frame(h3raw.section_prefix(1, 4096) + h3raw.dynamic_ref(0))
    sid = p.raw(head + h3raw.frame(FrameType.DATA, b"body") + trailers, end=True)
    p.transfer()
    assert [type(e) for e in p.events()] == [RequestReceived, DataReceived]  # trailers wait
    p.send(ResetStream(stream_id=sid))
    p.transfer()
    # The instructions the trailers waited for arrive after the server gave up the stream.
    p.raw(h3raw.set_capacity(4096) + h3raw.insert(b"x-t", b"1"), stream_id=p.client_encoder)
    p.transfer()
    assert p.events() == []
    assert p.resets()[sid] == ErrorCode.H3_INTERNAL_ERROR
    assert not p.server.closed
    after = p.request(b"/after")
    p.transfer()
    assert [e.target for e in of_type(p.events(), RequestReceived)] == [b"/after"]
    assert after not in p.resets()
