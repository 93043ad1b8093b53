"""HTTP/1.1 pipelining against a client that does not read: the next request waits until the
transport's buffer drains (each answer could be far larger than its request), and a client that
never reads is cut off after `send_timeout`. On the fake backend with the real HTTP/1.1 core."""

from __future__ import annotations

from multicorn.app.context import AppSettings
from multicorn.protocol.http11 import HTTP11Limits, HTTP11Protocol

from .fakes import make_handler, ok_app

PIPELINE = b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"


def test_the_next_pipelined_request_waits_for_the_output_to_drain():
    protocol = HTTP11Protocol(limits=HTTP11Limits(), now=0.0)
    handler, runtime, transport = make_handler(protocol, ok_app)
    handler.data_received(PIPELINE)
    handler.pause_writing()  # the client stopped reading: the buffer is over its mark
    runtime.run()
    first = transport.take()
    assert b"/1" in first and b"/2" not in first, "only the first answer went out"
    handler.resume_writing()
    runtime.run()
    assert b"/2" in transport.take()
    assert not transport.aborted


def test_a_client_that_never_reads_is_cut_off_after_the_send_timeout():
    protocol = HTTP11Protocol(limits=HTTP11Limits(), now=0.0)
    handler, runtime, transport = make_handler(
        protocol, ok_app, settings=AppSettings(send_timeout=5.0)
    )
    handler.data_received(PIPELINE)
    handler.pause_writing()
    runtime.run()
    runtime.advance(4.9)
    assert not transport.aborted
    runtime.advance(0.2)
    assert transport.aborted
