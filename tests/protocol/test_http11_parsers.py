"""The two request-parsing engines produce the same typed operations, and errors are classified
by what failed (an exception class, our own checks), never by the wording of a message."""

from __future__ import annotations

import pytest

from multicorn.protocol.errors import LocalProtocolError, RemoteProtocolError
from multicorn.protocol.http11_parsers import (
    END,
    DataOp,
    EndOp,
    HeadOp,
    HttptoolsParser,
    Op,
    UpgradeOp,
    new_parser,
)

from .helpers import make_server, request_bytes

ENGINES = ["h11", "httptools"]


def describe(ops: list[Op]) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    for op in ops:
        if isinstance(op, HeadOp):
            out.append(("head", op.method, op.target, op.version, op.headers))
        elif isinstance(op, DataOp):
            out.append(("data", op.data))
        elif isinstance(op, EndOp):
            out.append(("end",))
        elif isinstance(op, UpgradeOp):
            out.append(("upgrade", op.leftover))
        else:
            out.append(("error", op.error.error_status_hint))
    return out


def merged(ops: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
    """Join consecutive data operations (where a body is cut is the engine's business)."""
    out: list[tuple[object, ...]] = []
    for op in ops:
        if op[0] == "data" and out and out[-1][0] == "data":
            out[-1] = ("data", out[-1][1] + op[1])  # type: ignore[operator]
        else:
            out.append(op)
    return out


@pytest.mark.parametrize("engine", ENGINES)
def test_pipelined_requests_give_the_same_typed_ops(engine: str) -> None:
    parser = new_parser(engine, 16 * 1024)
    wire = (
        request_bytes(b"GET", b"/a?x=1", [(b"X-Mixed-Case", b"v")])
        + request_bytes(b"POST", b"/b", body=b"hello")
        + request_bytes(b"PUT", b"/c", body=[b"ab", b"cd"], chunked=True)
    )
    parser.feed(wire)
    assert merged(describe(list(parser.ops))) == [
        ("head", b"GET", b"/a?x=1", "1.1", [(b"host", b"example.com"), (b"x-mixed-case", b"v")]),
        ("end",),
        (
            "head",
            b"POST",
            b"/b",
            "1.1",
            [(b"host", b"example.com"), (b"content-length", b"5")],
        ),
        ("data", b"hello"),
        ("end",),
        (
            "head",
            b"PUT",
            b"/c",
            "1.1",
            [(b"host", b"example.com"), (b"transfer-encoding", b"chunked")],
        ),
        ("data", b"abcd"),
        ("end",),
    ]
    assert parser.ops[1] is END  # one shared, stateless end marker
    assert not parser.partial


@pytest.mark.parametrize("engine", ENGINES)
def test_upgrade_request_stops_after_its_body(engine: str) -> None:
    parser = new_parser(engine, 16 * 1024)
    headers = [(b"connection", b"Upgrade"), (b"upgrade", b"something")]
    parser.feed(request_bytes(b"POST", b"/u", headers, body=b"12345") + b"\x00raw")
    ops = merged(describe(list(parser.ops)))
    assert ops[1:] == [("data", b"12345"), ("end",), ("upgrade", b"\x00raw")]
    # Declined: parsing carries on with what followed.
    parser.ops.clear()
    parser.resume(request_bytes(b"GET", b"/next"))
    assert [op[0] for op in describe(list(parser.ops))] == ["head", "end"]


@pytest.mark.parametrize("engine", ENGINES)
def test_version_is_reported_as_spelled(engine: str) -> None:
    parser = new_parser(engine, 16 * 1024)
    parser.feed(b"GET / HTTP/1.0\r\n\r\n")
    head = parser.ops[0]
    assert isinstance(head, HeadOp)
    assert head.version == "1.0"


@pytest.mark.parametrize(
    "wire",
    [
        b"G\xffT / HTTP/1.1\r\nHost: a\r\n\r\n",  # HttpParserInvalidMethodError
        b"GET x\x01 HTTP/1.1\r\nHost: a\r\n\r\n",  # HttpParserInvalidURLError
        b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",  # plain HttpParserError
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_llhttp_syntax_errors_are_400_whatever_their_text(wire: bytes) -> None:
    parser = HttptoolsParser(16 * 1024)
    with pytest.raises(RemoteProtocolError) as info:
        parser.feed(wire)
    assert info.value.error_status_hint == 400


def test_llhttp_unknown_transfer_coding_is_501_from_our_own_check() -> None:
    """llhttp refuses `Transfer-Encoding: gzip` only after on_headers_complete: the head is
    already queued, and the protocol's head check answers 501 before the parser error's turn."""
    parser = HttptoolsParser(16 * 1024)
    wire = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n"
    with pytest.raises(RemoteProtocolError):
        parser.feed(wire)
    assert isinstance(parser.ops[0], HeadOp)
    server = make_server(engine="httptools")
    events = server.receive_data(wire, 0.0)
    assert events[-1].error.error_status_hint == 501  # type: ignore[union-attr]


def test_llhttp_callback_failure_is_our_bug_not_the_peers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(self: HttptoolsParser, name: bytes, value: bytes) -> None:
        raise KeyError("oops")

    monkeypatch.setattr(HttptoolsParser, "on_header", broken)
    parser = HttptoolsParser(16 * 1024)
    with pytest.raises(LocalProtocolError):
        parser.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")


@pytest.mark.parametrize("engine", ENGINES)
def test_open_head_over_the_limit_is_431(engine: str) -> None:
    parser = new_parser(engine, 200)
    parser.feed(b"GET / HTTP/1.1\r\nHost: a\r\n")
    with pytest.raises(RemoteProtocolError) as info:
        for _ in range(10):
            parser.feed(b"X-Pad: " + b"p" * 40 + b"\r\n")
    assert info.value.error_status_hint == 431


@pytest.mark.parametrize("version", [b"1.1", b"1.0", b"2.0", None])
@pytest.mark.parametrize(
    "fields",
    [
        b"",
        b"Connection: keep-alive\r\n",
        b"Connection: close\r\n",
        b"Connection: Keep-Alive, Upgrade\r\n",
        b"Proxy-Connection: keep-alive\r\n",
        b"X-Connection: keep-alive\r\nKeep-Alive: 5\r\n",
    ],
)
def test_llhttp_version_shortcut_is_exact(version: bytes | None, fields: bytes) -> None:
    """The version is read from llhttp only when keep-alive alone cannot tell it."""
    line = b"GET /" + (b" HTTP/" + version if version else b"") + b"\r\n"
    parser = HttptoolsParser(16 * 1024)
    parser.feed(line + b"Host: a\r\n" + fields + b"\r\n")
    head = parser.ops[0]
    assert isinstance(head, HeadOp)
    assert head.version == (version.decode() if version else "0.9")
