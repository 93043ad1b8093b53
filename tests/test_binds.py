"""Bind addresses: parsing, URL formatting, and opening real listening sockets."""

from __future__ import annotations

import contextlib
import errno
import os
import socket

import pytest

from multicorn.net.binds import Bind, BindError, format_url, parse_bind
from multicorn.net.sockets import BindFailed, bound_url, create_datagram_socket, create_socket

from .runtime.harness import ipv6_loopback_works

HAS_UNIX = hasattr(socket, "AF_UNIX")


needs_ipv6 = pytest.mark.skipif(not ipv6_loopback_works(), reason="no IPv6 loopback")
needs_unix = pytest.mark.skipif(not HAS_UNIX, reason="no unix sockets")


# --- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8000", Bind("tcp", host="127.0.0.1", port=8000)),
        ("0.0.0.0:0", Bind("tcp", host="0.0.0.0", port=0)),
        ("localhost:65535", Bind("tcp", host="localhost", port=65535)),
        ("example.com", Bind("tcp", host="example.com", port=8000)),
        ("127.0.0.1", Bind("tcp", host="127.0.0.1", port=8000)),
        ("[::1]:8000", Bind("tcp", host="::1", port=8000)),
        ("[::]:0", Bind("tcp", host="::", port=0)),
        ("[::1]", Bind("tcp", host="::1", port=8000)),
        ("[fe80::1%eth0]:80", Bind("tcp", host="fe80::1%eth0", port=80)),
        (" 127.0.0.1:80 ", Bind("tcp", host="127.0.0.1", port=80)),
        ("unix:/run/app.sock", Bind("unix", path="/run/app.sock")),
        ("unix:relative.sock", Bind("unix", path="relative.sock")),
        ("fd://3", Bind("fd", fd=3)),
        ("fd://0", Bind("fd", fd=0)),
    ],
)
def test_parse_bind(text, expected):
    assert parse_bind(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("127.0.0.1:", "port ''"),
        ("127.0.0.1:http", "not a number"),
        ("127.0.0.1:-1", "not a number"),
        ("127.0.0.1:65536", "out of range"),
        (":8000", "host is missing"),
        ("::1:8000", "need brackets"),
        ("::1", "need brackets"),
        ("[::1", "closing ']'"),
        ("[::1]8000", "':PORT'"),
        ("[127.0.0.1]:80", "not an IPv6 address"),
        ("[nope]:80", "not an IPv6 address"),
        ("bad host:80", "not a valid hostname"),
        ("-bad:80", "not a valid hostname"),
        ("unix:", "path is missing"),
        ("fd://", "not a non-negative number"),
        ("fd://x", "not a non-negative number"),
        ("fd://-1", "not a non-negative number"),
        ("http://127.0.0.1:80", "prefixes"),
        ("127.0.0.1:٣", "not a number"),
    ],
)
def test_parse_bind_rejects(text, problem):
    with pytest.raises(BindError) as info:
        parse_bind(text)
    message = str(info.value)
    assert problem in message
    assert repr(text) in message
    # The message teaches every accepted form.
    for form in ("HOST:PORT", "[IPV6]:PORT", "unix:PATH", "fd://N"):
        assert form in message


def test_bind_error_is_value_error():
    assert issubclass(BindError, ValueError)


def test_bind_str_round_trips():
    for text in ("127.0.0.1:80", "[::1]:8000", "unix:/tmp/x.sock", "fd://4"):
        assert str(parse_bind(text)) == text
        assert parse_bind(str(parse_bind(text))) == parse_bind(text)


def test_bind_is_frozen():
    bind = parse_bind("127.0.0.1:80")
    with pytest.raises((AttributeError, TypeError)):
        bind.port = 1  # type: ignore[misc]


# --- URLs ------------------------------------------------------------------------------------


def test_format_url():
    assert format_url(("127.0.0.1", 8000), kind="tcp") == "http://127.0.0.1:8000"
    assert format_url(("::1", 8000, 0, 0), kind="tcp") == "http://[::1]:8000"
    assert format_url(("127.0.0.1", 443), kind="tcp", scheme="https") == "https://127.0.0.1:443"
    assert format_url("/run/app.sock", kind="unix") == "unix:/run/app.sock"
    assert format_url(b"/run/app.sock", kind="unix") == "unix:/run/app.sock"
    assert format_url("\0abstract", kind="unix") == "unix:@abstract"
    assert format_url(("10.0.0.1", 5), kind="fd") == "http://10.0.0.1:5"
    assert format_url("/x.sock", kind="fd") == "unix:/x.sock"
    with pytest.raises(ValueError, match="tuple"):
        format_url("/x.sock", kind="tcp")


# --- sockets ---------------------------------------------------------------------------------


def _assert_listening(sock: socket.socket) -> None:
    assert sock.getblocking() is False
    assert sock.type == socket.SOCK_STREAM
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1


def test_tcp_ipv4_port_zero():
    bind = parse_bind("127.0.0.1:0")
    with contextlib.closing(create_socket(bind, backlog=16)) as sock:
        _assert_listening(sock)
        assert sock.family == socket.AF_INET
        port = sock.getsockname()[1]
        assert port != 0
        if os.name != "nt":
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) != 0
        assert bound_url(sock, bind) == f"http://127.0.0.1:{port}"
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass


@needs_ipv6
def test_tcp_ipv6_port_zero():
    bind = parse_bind("[::1]:0")
    with contextlib.closing(create_socket(bind, backlog=16)) as sock:
        _assert_listening(sock)
        assert sock.family == socket.AF_INET6
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        port = sock.getsockname()[1]
        assert port != 0
        assert bound_url(sock, bind, scheme="https") == f"https://[::1]:{port}"


def test_address_in_use():
    with contextlib.closing(create_socket(parse_bind("127.0.0.1:0"), backlog=4)) as first:
        port = first.getsockname()[1]
        with pytest.raises(BindFailed) as info:
            create_socket(parse_bind(f"127.0.0.1:{port}"), backlog=4)
    assert str(info.value).startswith(f"could not bind 127.0.0.1:{port}: address already in use")
    assert info.value.errno == errno.EADDRINUSE
    assert isinstance(info.value, OSError)


def test_address_not_available():
    # 192.0.2.0/24 is TEST-NET-1: never assigned to a local interface.
    with pytest.raises(BindFailed, match=r"could not bind 192\.0\.2\.1:0: address not available"):
        create_socket(parse_bind("192.0.2.1:0"), backlog=4)


@needs_unix
def test_unix_socket(tmp_path):
    path = tmp_path / "app.sock"
    bind = parse_bind(f"unix:{path}")
    with contextlib.closing(create_socket(bind, backlog=8)) as sock:
        _assert_listening(sock)
        assert sock.family == socket.AF_UNIX
        assert bound_url(sock, bind) == f"unix:{path}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(2)
            client.connect(str(path))


@needs_unix
def test_unix_socket_replaces_stale_socket_file(tmp_path):
    path = tmp_path / "stale.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays behind, nobody listens
    assert path.exists()
    with contextlib.closing(create_socket(parse_bind(f"unix:{path}"), backlog=8)) as sock:
        _assert_listening(sock)


@needs_unix
def test_unix_socket_refuses_live_socket(tmp_path):
    path = tmp_path / "live.sock"
    with contextlib.closing(create_socket(parse_bind(f"unix:{path}"), backlog=8)):
        with pytest.raises(BindFailed, match="address already in use"):
            create_socket(parse_bind(f"unix:{path}"), backlog=8)
        assert path.exists()  # the live server's socket was left alone


@needs_unix
def test_unix_socket_never_removes_regular_file(tmp_path):
    path = tmp_path / "important.txt"
    path.write_text("keep me")
    with pytest.raises(BindFailed, match="not a socket"):
        create_socket(parse_bind(f"unix:{path}"), backlog=8)
    assert path.read_text() == "keep me"


@needs_unix
def test_unix_socket_missing_directory(tmp_path):
    with pytest.raises(BindFailed, match="no such file or directory"):
        create_socket(parse_bind(f"unix:{tmp_path}/missing/app.sock"), backlog=8)


def test_inherited_fd():
    parent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    parent.bind(("127.0.0.1", 0))
    fd = os.dup(parent.fileno())
    parent.close()
    bind = parse_bind(f"fd://{fd}")
    with contextlib.closing(create_socket(bind, backlog=8)) as sock:
        _assert_listening(sock)
        assert sock.fileno() == fd
        port = sock.getsockname()[1]
        assert bound_url(sock, bind) == f"http://127.0.0.1:{port}"


def test_inherited_fd_that_is_not_open():
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)  # now certainly not open
    with pytest.raises(BindFailed, match=rf"could not use fd://{fd}: bad file descriptor"):
        create_socket(Bind("fd", fd=fd), backlog=8)


def test_inherited_fd_that_is_not_stream():
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with pytest.raises(BindFailed, match="not a stream"):
            create_socket(Bind("fd", fd=udp.fileno()), backlog=8)
        # The descriptor still belongs to its owner.
        assert udp.fileno() != -1
        udp.bind(("127.0.0.1", 0))
    finally:
        udp.close()


# --- datagram (UDP) sockets ------------------------------------------------------------------


def _assert_bound_datagram(sock: socket.socket) -> None:
    assert sock.getblocking() is False
    assert sock.type == socket.SOCK_DGRAM
    assert sock.getsockname()[1] != 0
    # SO_REUSEADDR on UDP would let a second server share the port instead of failing.
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 0


def _round_trip(sock: socket.socket, family: socket.AddressFamily, host: str) -> None:
    with socket.socket(family, socket.SOCK_DGRAM) as client:
        client.settimeout(2)
        client.sendto(b"ping", (host, sock.getsockname()[1]))
        sock.settimeout(2)  # blocking for the test only
        data, addr = sock.recvfrom(100)
        assert data == b"ping"
        sock.sendto(b"pong", addr)
        assert client.recvfrom(100)[0] == b"pong"


def test_udp_ipv4_port_zero():
    with contextlib.closing(create_datagram_socket(parse_bind("127.0.0.1:0"))) as sock:
        _assert_bound_datagram(sock)
        assert sock.family == socket.AF_INET
        _round_trip(sock, socket.AF_INET, "127.0.0.1")


@needs_ipv6
def test_udp_ipv6_port_zero():
    with contextlib.closing(create_datagram_socket(parse_bind("[::1]:0"))) as sock:
        _assert_bound_datagram(sock)
        assert sock.family == socket.AF_INET6
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        _round_trip(sock, socket.AF_INET6, "::1")


def test_udp_address_in_use():
    with contextlib.closing(create_datagram_socket(parse_bind("127.0.0.1:0"))) as first:
        port = first.getsockname()[1]
        with pytest.raises(BindFailed, match="address already in use") as info:
            create_datagram_socket(parse_bind(f"127.0.0.1:{port}"))
    assert info.value.errno == errno.EADDRINUSE


def test_udp_and_tcp_may_share_a_port_number():
    # QUIC listens on the same port number as TLS over TCP.
    with contextlib.closing(create_socket(parse_bind("127.0.0.1:0"), backlog=4)) as tcp:
        port = tcp.getsockname()[1]
        with contextlib.closing(create_datagram_socket(parse_bind(f"127.0.0.1:{port}"))) as udp:
            assert udp.getsockname()[1] == port


def test_udp_refuses_unix_paths(tmp_path):
    with pytest.raises(BindFailed, match=r"need HOST:PORT"):
        create_datagram_socket(parse_bind(f"unix:{tmp_path}/q.sock"))
    assert not (tmp_path / "q.sock").exists()


def test_udp_unresolvable_host():
    with pytest.raises(BindFailed, match="cannot resolve host"):
        create_datagram_socket(Bind("tcp", host="no-such-host.invalid", port=0))


def test_inherited_udp_fd():
    parent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    parent.bind(("127.0.0.1", 0))
    fd = os.dup(parent.fileno())
    parent.close()
    with contextlib.closing(create_datagram_socket(parse_bind(f"fd://{fd}"))) as sock:
        assert sock.fileno() == fd
        assert sock.getblocking() is False
        _round_trip(sock, socket.AF_INET, "127.0.0.1")


def test_inherited_fd_that_is_not_datagram():
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with pytest.raises(BindFailed, match="not a datagram"):
            create_datagram_socket(Bind("fd", fd=tcp.fileno()))
        assert tcp.fileno() != -1  # the descriptor still belongs to its owner
    finally:
        tcp.close()
