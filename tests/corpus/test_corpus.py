"""Every corpus case through both HTTP/1.1 engines: the expected verdict, the same on both,
whether the input arrives whole or one byte at a time (protocol level: bytes in, events out)."""

from __future__ import annotations

import pytest

from multicorn.protocol.events import (
    ConnectionClosed,
    Event,
    RequestReceived,
    RequestRejected,
    StreamEnded,
)
from multicorn.protocol.http11 import HTTP11Limits, HTTP11Protocol
from tests.protocol.helpers import serve_each

from .cases import INVALID, REQUEST_LINE_CASES, VALID, Case

ENGINES = ["h11", "httptools"]


def verdict(events: list[Event]) -> str | int:
    """ "ok" for a request delivered whole, the status of a refusal, else what happened."""
    for event in events:
        if isinstance(event, RequestRejected):
            return event.error.error_status_hint
        if isinstance(event, ConnectionClosed):
            return "closed"
    received = any(isinstance(event, RequestReceived) for event in events)
    ended = any(isinstance(event, StreamEnded) for event in events)
    return "ok" if received and ended else "incomplete"


def run(engine: str, wire: bytes, *, bytewise: bool) -> str | int:
    server = HTTP11Protocol(limits=HTTP11Limits(engine=engine), now=0.0)
    if not bytewise:
        return verdict(server.receive_data(wire, 0.0))
    events: list[Event] = []
    for i in range(len(wire)):
        events += server.receive_data(wire[i : i + 1], 0.0)
    return verdict(events)


def test_corpus_size() -> None:
    assert len(INVALID) >= 150
    names = [case.name for case in VALID + INVALID + REQUEST_LINE_CASES]
    assert len(names) == len(set(names)), "case names are ids: keep them unique"


@pytest.mark.parametrize("case", VALID + INVALID, ids=lambda case: case.name)
def test_both_engines_give_the_expected_verdict(case: Case) -> None:
    got = {
        (engine, bytewise): run(engine, case.wire, bytewise=bytewise)
        for engine in ENGINES
        for bytewise in (False, True)
    }
    assert set(got.values()) == {case.verdict}, got


def run_answered(engine: str, wire: bytes, *, bytewise: bool) -> object:
    """Like `run`, with every request answered, so pipelined requests come out in turn: "ok"
    when all of them were served, else the status of the first refusal."""
    points = list(range(1, len(wire))) if bytewise else []
    fates = serve_each(engine, wire, points)
    return fates[-1] if fates and isinstance(fates[-1], int) else "ok"


@pytest.mark.parametrize("case", REQUEST_LINE_CASES, ids=lambda case: case.name)
def test_request_lines_and_methods(case: Case) -> None:
    got = {
        (engine, bytewise): run_answered(engine, case.wire, bytewise=bytewise)
        for engine in ENGINES
        for bytewise in (False, True)
    }
    assert set(got.values()) == {case.verdict}, got
