"""Trusted proxies (app/proxy.py): the allow-list, header parsing and the walk along the chain."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from multicorn.app.context import ConnectionInfo
from multicorn.app.proxy import Forwarder, ProxyTrust, parse_forwarded
from multicorn.app.scope import build_http_scope, build_websocket_scope
from multicorn.protocol.events import RequestReceived

PEER = ("127.0.0.1", 50000)
SERVER: tuple[str, int | None] = ("127.0.0.1", 8000)

Resolved = tuple[tuple[str, int] | None, str, tuple[str, int | None] | None]


def forwarder(*entries: str) -> Forwarder:
    trust = ProxyTrust(entries or ("127.0.0.1",))
    found = trust.for_peer(PEER)
    assert found is not None
    return found


def resolve(headers: list[tuple[str, str]], *trusted: str, scheme: str = "http") -> Resolved:
    raw = [(name.encode(), value.encode()) for name, value in headers]
    return forwarder(*trusted).resolve(raw, PEER, scheme, SERVER)


def client(headers: list[tuple[str, str]], *trusted: str) -> tuple[str, int] | None:
    return resolve(headers, *trusted)[0]


# ---- the allow-list ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "peer", "trusted"),
    [
        (["127.0.0.1"], ("127.0.0.1", 1), True),
        (["127.0.0.1"], ("127.0.0.2", 1), False),
        (["127.0.0.1"], None, False),  # a Unix-socket peer needs "unix"
        (["unix"], None, True),
        (["UNIX"], None, True),
        (["unix"], ("127.0.0.1", 1), False),
        (["*"], ("203.0.113.9", 1), True),
        (["*"], None, True),
        (["10.0.0.0/8"], ("10.200.3.4", 1), True),
        (["10.0.0.0/8"], ("11.0.0.1", 1), False),
        (["10.1.2.3/8"], ("10.9.9.9", 1), True),  # host bits set: still the network
        (["::1"], ("::1", 1), True),
        (["[::1]"], ("::1", 1), True),
        (["2001:db8::/32"], ("2001:db8:1::5", 1), True),
        (["2001:db8::/32"], ("2001:db9::5", 1), False),
        (["127.0.0.1"], ("::ffff:127.0.0.1", 1), True),  # dual-stack socket, IPv4 peer
        (["127.0.0.1"], ("::1", 1), False),
        ([], ("127.0.0.1", 1), False),
        ([" 127.0.0.1 ", ""], ("127.0.0.1", 1), True),
        (["127.0.0.1"], ("not-an-ip", 1), False),
    ],
)
def test_trusts_peer(entries: list[str], peer: tuple[str, int] | None, trusted: bool) -> None:
    trust = ProxyTrust(entries)
    assert trust.trusts_peer(peer) is trusted
    assert (trust.for_peer(peer) is not None) is trusted


@pytest.mark.parametrize(
    "entry", ["*", "unix", "127.0.0.1", "10.0.0.0/8", "::1", "[::1]", "fe80::/10"]
)
def test_allow_list_entries_accepted(entry: str) -> None:
    assert ProxyTrust.problem(entry) is None


@pytest.mark.parametrize("entry", ["localhost", "10.0.0.0/33", "1.2.3", "unix:/tmp/s", "**"])
def test_allow_list_entries_refused(entry: str) -> None:
    assert ProxyTrust.problem(entry) is not None


def test_one_forwarder_per_trust_list() -> None:
    # Trust is decided once per connection and shares one reader: no allocation per request.
    trust = ProxyTrust(["127.0.0.1"])
    assert trust.for_peer(PEER) is trust.for_peer(("127.0.0.1", 2))


# ---- X-Forwarded-For: the walk from the right ---------------------------------------------


def test_no_headers_keeps_the_connection() -> None:
    assert resolve([("host", "example.com")]) == (PEER, "http", SERVER)


def test_single_client() -> None:
    assert client([("x-forwarded-for", "203.0.113.7")]) == ("203.0.113.7", 0)


def test_spoofed_leftmost_entries_are_ignored() -> None:
    # The client wrote "1.1.1.1, 2.2.2.2" itself; our proxy appended what it saw.
    headers = [("x-forwarded-for", "1.1.1.1, 2.2.2.2, 203.0.113.7")]
    assert client(headers) == ("203.0.113.7", 0)


def test_walks_through_trusted_proxies() -> None:
    headers = [("x-forwarded-for", "198.51.100.1, 203.0.113.7, 10.0.0.2, 10.0.0.1")]
    assert client(headers, "127.0.0.1", "10.0.0.0/8") == ("203.0.113.7", 0)


def test_all_trusted_gives_the_leftmost() -> None:
    headers = [("x-forwarded-for", "10.0.0.3, 10.0.0.2, 10.0.0.1")]
    assert client(headers, "127.0.0.1", "10.0.0.0/8") == ("10.0.0.3", 0)


def test_star_trusts_everyone_so_the_leftmost_is_the_client() -> None:
    headers = [("x-forwarded-for", "198.51.100.1, 203.0.113.7")]
    assert client(headers, "*") == ("198.51.100.1", 0)


def test_header_lines_are_joined_in_order() -> None:
    headers = [("x-forwarded-for", "198.51.100.1"), ("x-forwarded-for", "10.0.0.1")]
    assert client(headers, "127.0.0.1", "10.0.0.0/8") == ("198.51.100.1", 0)


def test_mixed_ipv4_and_ipv6() -> None:
    headers = [("x-forwarded-for", "2001:db8::7, 10.0.0.1, fd00::1")]
    assert client(headers, "127.0.0.1", "10.0.0.0/8", "fd00::/8") == ("2001:db8::7", 0)


def test_ipv6_client_is_reported_compressed() -> None:
    assert client([("x-forwarded-for", "2001:0db8:0:0::7")]) == ("2001:db8::7", 0)


def test_entries_with_ports() -> None:
    assert client([("x-forwarded-for", "203.0.113.7:4711")]) == ("203.0.113.7", 4711)
    assert client([("x-forwarded-for", "[2001:db8::7]:4711")]) == ("2001:db8::7", 4711)


@pytest.mark.parametrize(
    "value",
    ["not-an-ip", "203.0.113.7, evil.example", "", ",", "1.2.3.4:99999", "[::1", "1.2.3.4.5"],
)
def test_malformed_entries_are_ignored(value: str) -> None:
    assert client([("x-forwarded-for", value)]) == PEER


def test_malformed_entry_beyond_the_client_does_not_matter() -> None:
    headers = [("x-forwarded-for", "garbage, 203.0.113.7")]
    assert client(headers) == ("203.0.113.7", 0)


def test_malformed_entry_between_trusted_proxies_stops_the_walk() -> None:
    headers = [("x-forwarded-for", "203.0.113.7, garbage, 10.0.0.1")]
    assert client(headers, "127.0.0.1", "10.0.0.0/8") == PEER


@pytest.mark.parametrize("value", ["unknown", "UNKNOWN", "_hidden"])
def test_unknown_client_is_none(value: str) -> None:
    assert client([("x-forwarded-for", value)]) is None


# ---- X-Forwarded-Proto, -Host, -Port -------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "scheme"),
    [("https", "https"), ("HTTPS", "https"), (" http ", "http"), ("wss", "https"), ("ws", "http")],
)
def test_proto(value: str, scheme: str) -> None:
    assert resolve([("x-forwarded-proto", value)])[1] == scheme


@pytest.mark.parametrize("value", ["ftp", "", "javascript", "https;x"])
def test_bad_proto_is_ignored(value: str) -> None:
    assert resolve([("x-forwarded-proto", value)], scheme="http")[1] == "http"


def test_proto_lines_up_with_the_client_hop() -> None:
    # The client reached proxy A over https, A reached B (our peer) over http.
    headers = [
        ("x-forwarded-for", "203.0.113.7, 10.0.0.1"),
        ("x-forwarded-proto", "https, http"),
    ]
    assert resolve(headers, "127.0.0.1", "10.0.0.0/8")[1] == "https"


def test_proto_that_does_not_line_up_uses_the_last() -> None:
    headers = [("x-forwarded-for", "203.0.113.7, 10.0.0.1"), ("x-forwarded-proto", "https")]
    assert resolve(headers, "127.0.0.1", "10.0.0.0/8")[1] == "https"


def test_host_and_port() -> None:
    headers = [("x-forwarded-host", "example.com"), ("x-forwarded-port", "8443")]
    assert resolve(headers)[2] == ("example.com", 8443)


def test_host_with_port_wins_over_x_forwarded_port() -> None:
    headers = [("x-forwarded-host", "example.com:9000"), ("x-forwarded-port", "8443")]
    assert resolve(headers)[2] == ("example.com", 9000)


def test_host_alone_takes_the_scheme_default_port() -> None:
    headers = [("x-forwarded-host", "example.com"), ("x-forwarded-proto", "https")]
    assert resolve(headers)[1:] == ("https", ("example.com", 443))
    assert resolve([("x-forwarded-host", "example.com")])[2] == ("example.com", 80)


def test_ipv6_host() -> None:
    assert resolve([("x-forwarded-host", "[2001:db8::1]:8080")])[2] == ("[2001:db8::1]", 8080)


def test_port_alone_keeps_the_server_host() -> None:
    assert resolve([("x-forwarded-port", "443")])[2] == ("127.0.0.1", 443)


@pytest.mark.parametrize("value", ["exa mple.com", "a/b", "host:99999", "[zz::1]", "", "h:p"])
def test_bad_host_is_ignored(value: str) -> None:
    assert resolve([("x-forwarded-host", value)])[2] == SERVER


@pytest.mark.parametrize("value", ["abc", "-1", "65536", "", "80 80"])
def test_bad_port_is_ignored(value: str) -> None:
    assert resolve([("x-forwarded-port", value)])[2] == SERVER


# ---- Forwarded (RFC 7239) --------------------------------------------------------------------


def test_forwarded_rfc_examples_parse() -> None:
    # RFC 7239 4 and 7.1 examples.
    assert parse_forwarded(b'for="_gazonk"') == [{"for": "_gazonk"}]
    assert parse_forwarded(b'For="[2001:db8:cafe::17]:4711"') == [
        {"for": "[2001:db8:cafe::17]:4711"}
    ]
    assert parse_forwarded(b"for=192.0.2.60;proto=http;by=203.0.113.43") == [
        {"for": "192.0.2.60", "proto": "http", "by": "203.0.113.43"}
    ]
    assert parse_forwarded(b"for=192.0.2.43, for=198.51.100.17") == [
        {"for": "192.0.2.43"},
        {"for": "198.51.100.17"},
    ]


@pytest.mark.parametrize(
    "value",
    [
        b"for",  # no "="
        b'for="unterminated',
        b"for=a b",  # whitespace inside a token
        b"for=1.2.3.4;for=5.6.7.8",  # RFC 7239 4: a parameter at most once per element
        b"f@r=1.2.3.4",
        b"for=\xff",
        b"for=[::1]",  # an IPv6 node must be quoted: "[" is not a token character
    ],
)
def test_forwarded_malformed_parses_to_nothing(value: bytes) -> None:
    assert parse_forwarded(value) == []


def test_forwarded_empty_elements_are_skipped() -> None:
    assert parse_forwarded(b" , for=192.0.2.43,, ") == [{"for": "192.0.2.43"}]


def test_forwarded_quoted_pair() -> None:
    assert parse_forwarded(b'host="ex\\"ample"') == [{"host": 'ex"ample'}]


def test_forwarded_client_proto_host() -> None:
    headers = [("forwarded", 'for=203.0.113.7;proto=https;host="example.com:8443"')]
    assert resolve(headers) == (("203.0.113.7", 0), "https", ("example.com", 8443))


def test_forwarded_ipv6_with_port() -> None:
    headers = [("forwarded", 'for="[2001:db8:cafe::17]:4711"')]
    assert client(headers) == ("2001:db8:cafe::17", 4711)


def test_forwarded_walks_from_the_right() -> None:
    headers = [("forwarded", "for=198.51.100.1, for=203.0.113.7;proto=https, for=10.0.0.1")]
    assert resolve(headers, "127.0.0.1", "10.0.0.0/8")[:2] == (("203.0.113.7", 0), "https")


def test_forwarded_all_trusted_gives_the_leftmost() -> None:
    headers = [("forwarded", "for=10.0.0.2;proto=https, for=10.0.0.1;proto=http")]
    assert resolve(headers, "127.0.0.1", "10.0.0.0/8")[:2] == (("10.0.0.2", 0), "https")


@pytest.mark.parametrize("node", ["_hidden", "unknown", '"_gazonk:_port"'])
def test_forwarded_obfuscated_client_is_none(node: str) -> None:
    assert resolve([("forwarded", f"for={node};proto=https")])[:2] == (None, "https")


def test_forwarded_obfuscated_port_is_zero() -> None:
    assert client([("forwarded", 'for="203.0.113.7:_abc"')]) == ("203.0.113.7", 0)


def test_forwarded_without_for_keeps_the_peer() -> None:
    headers = [("forwarded", 'proto=https;host="example.com"')]
    assert resolve(headers) == (PEER, "https", ("example.com", 443))


@pytest.mark.parametrize(
    "node",
    [
        '"2001:db8::1"',  # RFC 7239 6: IPv6 must be bracketed
        '"[192.0.2.1]"',  # and IPv4 never is
        "evil.example",
        '"203.0.113.7:99999"',
        '"[2001:db8::1]x"',
    ],
)
def test_forwarded_bad_node_is_ignored(node: str) -> None:
    assert client([("forwarded", f"for={node}")]) == PEER


def test_forwarded_bad_proto_and_host_are_ignored() -> None:
    headers = [("forwarded", 'for=203.0.113.7;proto=gopher;host="a b"')]
    assert resolve(headers) == (("203.0.113.7", 0), "http", SERVER)


def test_forwarded_wins_over_x_forwarded() -> None:
    headers = [
        ("x-forwarded-for", "198.51.100.99"),
        ("x-forwarded-proto", "http"),
        ("forwarded", "for=203.0.113.7;proto=https"),
    ]
    assert resolve(headers)[:2] == (("203.0.113.7", 0), "https")


def test_unparsable_forwarded_falls_back_to_x_forwarded() -> None:
    headers = [("forwarded", 'for="oops'), ("x-forwarded-for", "203.0.113.7")]
    assert client(headers) == ("203.0.113.7", 0)


# ---- the scopes ------------------------------------------------------------------------------


def _event(headers: list[tuple[bytes, bytes]]) -> RequestReceived:
    return RequestReceived(
        stream_id=1,
        method=b"GET",
        target=b"/",
        http_version="1.1",
        headers=headers,
    )


def _info(trusted: bool) -> ConnectionInfo:
    trust = ProxyTrust(["127.0.0.1"] if trusted else ["10.0.0.1"])
    return ConnectionInfo(client=PEER, server=SERVER, forwarder=trust.for_peer(PEER))


HEADERS = [
    (b"host", b"internal"),
    (b"x-forwarded-for", b"203.0.113.7"),
    (b"x-forwarded-proto", b"https"),
    (b"x-forwarded-host", b"example.com"),
]


def test_http_scope_from_a_trusted_peer() -> None:
    scope = build_http_scope(_event(HEADERS), _info(True), root_path="", state={})
    assert scope["client"] == ("203.0.113.7", 0)
    assert scope["scheme"] == "https"
    assert scope["server"] == ("example.com", 443)
    assert scope["headers"] == HEADERS  # the headers themselves are left as they came


def test_http_scope_from_an_untrusted_peer() -> None:
    scope = build_http_scope(_event(HEADERS), _info(False), root_path="", state={})
    assert (scope["client"], scope["scheme"], scope["server"]) == (PEER, "http", SERVER)
    assert scope["headers"] == HEADERS


def test_websocket_scope_from_a_trusted_peer() -> None:
    scope = build_websocket_scope(
        _event(HEADERS), _info(True), root_path="", state={}, subprotocols=[]
    )
    assert scope["client"] == ("203.0.113.7", 0)
    assert scope["scheme"] == "wss"
    assert scope["server"] == ("example.com", 443)


def test_websocket_scope_from_an_untrusted_peer() -> None:
    scope = build_websocket_scope(
        _event(HEADERS), _info(False), root_path="", state={}, subprotocols=[]
    )
    assert (scope["client"], scope["scheme"]) == (PEER, "ws")


def test_results_are_cached_within_bounds() -> None:
    found = forwarder()
    headers = [(b"x-forwarded-for", b"203.0.113.7")]
    first = found.read(headers)
    assert found.read(headers) is first  # the second request of a connection: no parsing
    for n in range(3000):
        found.read([(b"x-forwarded-for", f"10.{n // 256}.{n % 256}.1".encode())])
    assert len(found._cache) <= 1024
    huge = [(b"x-forwarded-for", b", ".join([b"203.0.113.7"] * 100))]
    found._cache.clear()
    assert found.read(huge) is not None
    assert found._cache == {}  # a client's long header is parsed, never kept


_NAMES = ["forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
          "x-forwarded-port"]  # fmt: skip
_PIECES = st.sampled_from(
    ["for=", "proto=", "host=", '"', "[", "]", ":", ";", ",", " ", "_x", "unknown", "1.2.3.4",
     "2001:db8::1", "10.0.0.1", "65536", "https", "\\", "=", "%", "\xff"]
)  # fmt: skip


@given(
    st.lists(
        st.tuples(
            st.sampled_from(_NAMES),
            st.one_of(st.binary(max_size=40), st.lists(_PIECES, max_size=12).map("".join)),
        ),
        max_size=5,
    )
)
def test_any_header_values_resolve_without_raising(pairs: list[tuple[str, object]]) -> None:
    headers = [
        (name.encode(), value if isinstance(value, bytes) else str(value).encode("latin-1"))
        for name, value in pairs
    ]
    found = ProxyTrust(["127.0.0.0/8", "10.0.0.0/8", "2001:db8::/32"]).for_peer(PEER)
    assert found is not None
    got_client, got_scheme, got_server = found.resolve(headers, PEER, "http", SERVER)
    assert got_scheme in ("http", "https")
    assert got_client is None or (isinstance(got_client[0], str) and 0 <= got_client[1] < 65536)
    assert got_server is not None and (got_server[1] is None or 0 <= got_server[1] < 65536)
