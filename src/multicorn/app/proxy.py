"""Trusted proxies: who the client really is when a reverse proxy forwards the request.

Theory of operation. A proxy that forwards a request says who sent it to it, in `Forwarded`
(RFC 7239) or in the older `X-Forwarded-For` / `-Proto` / `-Host` / `-Port`. Each proxy on the
way appends one entry, so the list reads client, proxy1, proxy2, ..., and the connection's peer
is the last proxy. Anyone can write these headers, so they are believed only as far as the
chain of trusted proxies reaches:

1. Once per connection (`ProxyTrust.for_peer`), the peer is checked against the allow-list
   (`forwarded_allow_ips`: IP addresses, CIDR networks, `unix` for Unix-socket peers, `*`).
   An untrusted peer gets no `Forwarder`, and its requests cost nothing more: their headers
   are never even looked at (and stay in the scope's headers, untouched).
2. Per request from a trusted peer (`Forwarder.resolve`), the list is walked from the right.
   Each entry names who connected to the proxy that wrote it; while that is a trusted proxy,
   keep walking. The first untrusted address is the client; if every address is trusted, the
   leftmost one is. Entries to the left of the client were written by the client itself and
   prove nothing.
3. The scheme and the host the client asked for come from the same hop as the client.

Precedence: when a trusted peer sends a `Forwarded` header, it alone is used and every
X-Forwarded-* header is ignored (RFC 7239 is the standard, and mixing the two would let a
client add to whichever list the proxy does not rewrite). Values that do not parse (a `for`
that is not an address, a scheme other than http/https/ws/wss, a malformed host or port) are
ignored: the scope keeps what the connection itself says. Never an error.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Final, Literal

from multicorn.protocol.errors import RemoteProtocolError
from multicorn.protocol.proxy_protocol import (
    V1_MAX_LENGTH,
    V2_MAX_LENGTH,
    ProxyHeader,
    ProxyMode,
    parse_proxy_header,
    preamble_length,
)
from multicorn.runtime.base import Preamble, PreambleRefused

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from multicorn.app.context import AppSettings, ConnectionInfo
    from multicorn.net.binds import SockName

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_SCHEMES: Final = {"http": "http", "https": "https", "ws": "http", "wss": "https"}
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
# RFC 3986 reg-name or IPv4 (unreserved and sub-delims, percent-escapes), or an IP literal.
_HOST: Final = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=%]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
_PORT: Final = re.compile(r"[0-9]{1,5}")

# One hop of a forwarding list: an address and port; "unknown" when the proxy hides or does not
# know it (RFC 7239 6.2 "unknown" and 6.3 obfuscated identifiers); "missing" for a Forwarded
# element without `for`; None when the entry is malformed.
_Hop = tuple[_IPAddress, int] | Literal["unknown", "missing"] | None


class ProxyTrust:
    """The parsed allow-list: addresses, networks, `unix` and `*`."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.trust_all = False
        self.trust_unix = False
        networks: list[_IPNetwork] = []
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            if entry == "*":
                self.trust_all = True
            elif entry.lower() == "unix":
                self.trust_unix = True
            else:
                # strict=False: "10.0.0.1/8" means the network 10.0.0.0/8, as a person meant.
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
        # Most lists are a few single addresses: a set lookup, not a scan of networks.
        self._addresses = frozenset(n.network_address for n in networks if n.num_addresses == 1)
        self._ranges = tuple(n for n in networks if n.num_addresses > 1)
        self._forwarder = Forwarder(self)

    @staticmethod
    def problem(entry: str) -> str | None:
        """Why `entry` cannot be in an allow-list, or None if it can."""
        entry = entry.strip()
        if entry == "*" or entry.lower() == "unix":
            return None
        try:
            ipaddress.ip_network(entry.strip("[]"), strict=False)
        except ValueError:
            return f"{entry!r} is not an IP address, a CIDR network, 'unix' or '*'"
        return None

    def trusts_address(self, address: _IPAddress) -> bool:
        if self.trust_all:
            return True
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            # A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d.
            address = address.ipv4_mapped
        if address in self._addresses:
            return True
        return any(address in network for network in self._ranges)

    def trusts_peer(self, client: tuple[str, int] | None) -> bool:
        """Is the connection's peer a trusted proxy? `None` is a Unix-socket peer."""
        if self.trust_all:
            return True
        if client is None:
            return self.trust_unix
        address = parse_ip(client[0])
        return address is not None and self.trusts_address(address)

    def for_peer(self, client: tuple[str, int] | None) -> Forwarder | None:
        """The Forwarder for a connection from `client`, or None when its headers are not
        believed. Called once per connection."""
        return self._forwarder if self.trusts_peer(client) else None


@dataclass(frozen=True, slots=True)
class Forwarded:
    """What the trusted chain says about the request: each None means "keep the
    connection's own"."""

    client: tuple[str, int] | Literal["unknown"] | None = None  # "unknown": the client is hidden
    scheme: str | None = None  # "http" or "https"
    host: str | None = None
    port: int | None = None


# Results kept per distinct set of forwarding headers: a client sends the same ones on every
# request of a connection, and parsing addresses costs microseconds. Bounded in entries and
# in key size, since the keys are the client's bytes.
_CACHE_ENTRIES: Final = 1024
_CACHE_KEY_BYTES: Final = 512


class Forwarder:
    """Reads forwarding headers of requests from trusted peers."""

    __slots__ = ("_cache", "trust")

    def __init__(self, trust: ProxyTrust) -> None:
        self.trust = trust
        self._cache: dict[tuple[tuple[bytes, bytes], ...], Forwarded | None] = {}

    def resolve(
        self,
        headers: Sequence[tuple[bytes, bytes]],
        client: tuple[str, int] | None,
        scheme: str,
        server: tuple[str, int | None] | None,
    ) -> tuple[tuple[str, int] | None, str, tuple[str, int | None] | None]:
        """(client, scheme, server) for the scope of a request carrying `headers`."""
        forwarded = self.read(headers)
        if forwarded is None:
            return client, scheme, server
        if forwarded.client == "unknown":
            client = None
        elif forwarded.client is not None:
            client = forwarded.client
        if forwarded.scheme is not None:
            scheme = forwarded.scheme
        if forwarded.host is not None:
            port = forwarded.port if forwarded.port is not None else _DEFAULT_PORTS[scheme]
            server = (forwarded.host, port)
        elif forwarded.port is not None:
            server = (server[0] if server is not None else "", forwarded.port)
        return client, scheme, server

    def read(self, headers: Sequence[tuple[bytes, bytes]]) -> Forwarded | None:
        # Most requests carry none of these, even from a proxy: look before collecting.
        for name, _ in headers:
            if name in _NAMES:
                break
        else:
            return None
        found = [pair for pair in headers if pair[0] in _NAMES]
        key = tuple(found)
        cache = self._cache
        if key in cache:
            return cache[key]
        forwarded = self._read(found)
        if sum(len(value) for _, value in found) <= _CACHE_KEY_BYTES:
            if len(cache) >= _CACHE_ENTRIES:
                cache.clear()
            cache[key] = forwarded
        return forwarded

    def _read(self, found: list[tuple[bytes, bytes]]) -> Forwarded | None:
        rfc7239: list[bytes] = []
        xff: list[bytes] = []
        proto: list[bytes] = []
        host: list[bytes] = []
        port: list[bytes] = []
        lists = {
            b"forwarded": rfc7239,
            b"x-forwarded-for": xff,
            b"x-forwarded-proto": proto,
            b"x-forwarded-host": host,
            b"x-forwarded-port": port,
        }
        for name, value in found:
            lists[name].append(value)
        if rfc7239:
            elements = parse_forwarded(b",".join(rfc7239))
            if elements:
                return self._from_forwarded(elements)
        if xff or proto or host or port:
            return self._from_x_forwarded(xff, proto, host, port)
        return None

    def _walk(self, hops: Sequence[_Hop]) -> int | None:
        """The index of the client's hop: the first from the right that is not a trusted
        proxy, else the leftmost. None when a malformed entry comes first: what lies beyond
        it cannot be told apart from what the client wrote."""
        for index in range(len(hops) - 1, -1, -1):
            hop = hops[index]
            if hop is None:
                return None
            if not isinstance(hop, tuple) or index == 0:
                return index
            if not self.trust.trusts_address(hop[0]):
                return index
        return None

    def _from_forwarded(self, elements: list[dict[str, str]]) -> Forwarded:
        hops = [_forwarded_node(element.get("for")) for element in elements]
        index = self._walk(hops)
        if index is None:
            return Forwarded()
        element = elements[index]
        scheme = _scheme(element.get("proto"))
        host, port = _host(element.get("host"))
        return Forwarded(client=_client(hops[index]), scheme=scheme, host=host, port=port)

    def _from_x_forwarded(
        self, xff: list[bytes], proto: list[bytes], host: list[bytes], port: list[bytes]
    ) -> Forwarded:
        client: tuple[str, int] | Literal["unknown"] | None = None
        index = None
        count = 0
        if xff:
            items = _split_list(xff)
            count = len(items)
            hops = [_xff_node(item) for item in items]
            index = self._walk(hops)
            if index is not None:
                client = _client(hops[index])
        # The other lists line up with X-Forwarded-For when each proxy appended to all of
        # them; otherwise only the last entry, written by the trusted peer, is believable.
        scheme = _scheme(_pick(proto, index, count))
        forwarded_host, host_port = _host(_pick(host, index, count))
        port_text = _pick(port, index, count)
        forwarded_port = int(port_text) if port_text and _PORT.fullmatch(port_text) else None
        if forwarded_port is not None and forwarded_port > 65535:
            forwarded_port = None
        return Forwarded(
            client=client,
            scheme=scheme,
            host=forwarded_host,
            port=host_port if host_port is not None else forwarded_port,
        )


_NAMES: Final = frozenset(
    (b"forwarded", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
     b"x-forwarded-port")
)  # fmt: skip


def with_proxy_header(
    info: ConnectionInfo, header: ProxyHeader | None, settings: AppSettings
) -> ConnectionInfo:
    """The connection as the PROXY protocol header describes it: the client is the address
    that connected to the load balancer, the server the address it connected to. Whether that
    client's own X-Forwarded-* are believed is decided again, for the client named."""
    if header is None or header.source is None:
        return info
    client = header.source
    trust = settings.proxy_trust
    return replace(
        info,
        client=client,
        server=header.destination if header.destination is not None else info.server,
        forwarder=None if trust is None else trust.for_peer(client),
    )


def proxy_preamble(trust: ProxyTrust, mode: ProxyMode, timeout: float) -> Preamble:
    """The PROXY protocol as a listener's preamble: a peer in `trust` must begin with a header
    `mode` accepts, within `timeout` seconds; any other peer may not send one."""

    def measure(peername: SockName | None, first: bytes) -> int | None:
        allowed = trust.trusts_peer(peer_address(peername))
        try:
            return preamble_length(first, mode if allowed else "reject")
        except RemoteProtocolError as exc:
            raise PreambleRefused(str(exc)) from None

    # The longest header either version may be (v2: 16 fixed bytes and its block).
    return Preamble(
        measure=measure, max_size=max(V1_MAX_LENGTH, 16 + V2_MAX_LENGTH), timeout=timeout
    )


def header_of(preamble: bytes) -> ProxyHeader | None:
    """The PROXY header a listener's preamble holds, or None for none."""
    if not preamble:
        return None
    parsed = parse_proxy_header(preamble, "auto")  # checked whole by the listener already
    return None if parsed is None else parsed[0]


def peer_address(name: object) -> tuple[str, int] | None:
    """A socket's peer as the scope's `client`: (host, port) for TCP, None for a unix socket."""
    if isinstance(name, tuple) and len(name) >= 2:
        return (str(name[0]), int(name[1]))
    return None


def parse_ip(text: str) -> _IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _client(hop: _Hop) -> tuple[str, int] | Literal["unknown"] | None:
    if isinstance(hop, tuple):
        return (str(hop[0]), hop[1])
    return "unknown" if hop == "unknown" else None


def _split_list(values: list[bytes]) -> list[str]:
    text = b",".join(values).decode("latin-1")
    return [item.strip() for item in text.split(",")]


def _pick(values: list[bytes], index: int | None, count: int) -> str | None:
    if not values:
        return None
    items = _split_list(values)
    if index is not None and len(items) == count:
        return items[index] or None
    return items[-1] or None


def _xff_node(item: str) -> _Hop:
    """A parsed X-Forwarded-For entry: (address, port), "unknown", or None for garbage. Some
    proxies add a port ("1.2.3.4:5678", "[::1]:80"), though most do not."""
    if item.lower() == "unknown" or item.startswith("_"):
        return "unknown"
    address = parse_ip(item)
    if address is not None:
        return (address, 0)
    return _address_and_port(item)


def _forwarded_node(value: str | None) -> _Hop:
    """RFC 7239 6: node = nodename [ ":" node-port ], nodename = IPv4address / "[" IPv6address
    "]" / "unknown" / obfnode."""
    if value is None:
        return "missing"
    name, port_text = value, ""
    if value.startswith("["):
        end = value.find("]")
        if end == -1:
            return None
        name, rest = value[1:end], value[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                return None
            port_text = rest[1:]
        address = parse_ip(name)
        if not isinstance(address, ipaddress.IPv6Address):
            # RFC 7239 6: IPv6 addresses are always in brackets, IPv4 never.
            return None
    else:
        name, _, port_text = value.partition(":")
        if name.lower() == "unknown" or name.startswith("_"):
            # RFC 7239 6.2/6.3: the proxy hides or does not know the client.
            return "unknown"
        address = parse_ip(name)
        if not isinstance(address, ipaddress.IPv4Address):
            return None
    port = 0
    if port_text:
        if port_text.startswith("_"):
            port_text = ""  # RFC 7239 6.3: an obfuscated port says nothing usable
        elif not _PORT.fullmatch(port_text) or int(port_text) > 65535:
            return None
        else:
            port = int(port_text)
    return (address, port)


def _address_and_port(item: str) -> _Hop:
    if item.startswith("["):
        node = _forwarded_node(item)
        return node if isinstance(node, tuple) else None
    name, sep, port_text = item.rpartition(":")
    if not sep or not _PORT.fullmatch(port_text) or int(port_text) > 65535:
        return None
    address = parse_ip(name)
    if not isinstance(address, ipaddress.IPv4Address):
        return None
    return (address, int(port_text))


def _scheme(value: str | None) -> str | None:
    if value is None:
        return None
    return _SCHEMES.get(value.strip().lower())


def _host(value: str | None) -> tuple[str | None, int | None]:
    """(host, port or None) from a Host-header-like value; (None, None) when malformed."""
    if value is None or not _HOST.fullmatch(value):
        return None, None
    if value.startswith("["):
        end = value.index("]")
        host, rest = value[: end + 1], value[end + 1 :]
        if parse_ip(host[1:-1]) is None:
            return None, None
        port_text = rest[1:] if rest else ""
    else:
        host, _, port_text = value.partition(":")
    if not host:
        return None, None
    if port_text:
        port = int(port_text)
        if port > 65535:
            return None, None
        return host, port
    return host, None


def parse_forwarded(value: bytes) -> list[dict[str, str]]:
    """RFC 7239 4: Forwarded = 1#forwarded-element; forwarded-element = [ forwarded-pair ]
    *( ";" [ forwarded-pair ] ); forwarded-pair = token "=" value; value = token /
    quoted-string. Parameter names are case-insensitive. Returns [] when the value does not
    parse: a header that is not understood is not believed in part."""
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return []
    elements: list[dict[str, str]] = []
    element: dict[str, str] = {}
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] not in ",;":
            eq = text.find("=", i)
            if eq == -1:
                return []
            name = text[i:eq].strip().lower()
            if not name or not _TOKEN.fullmatch(name):
                return []
            i = eq + 1
            if i < n and text[i] == '"':
                chars = []
                i += 1
                while i < n and text[i] != '"':
                    if text[i] == "\\" and i + 1 < n:
                        i += 1
                    chars.append(text[i])
                    i += 1
                if i >= n:
                    return []  # an unterminated quoted-string
                i += 1
                item = "".join(chars)
            else:
                start = i
                while i < n and text[i] not in ",; \t":
                    i += 1
                item = text[start:i]
                if not _TOKEN.fullmatch(item):
                    return []
            if name in element:
                # RFC 7239 4: "Each parameter MUST NOT occur more than once per
                # forwarded-element."
                return []
            element[name] = item
            while i < n and text[i] in " \t":
                i += 1
        if i >= n:
            if element:
                elements.append(element)
            return elements
        if text[i] == ",":
            # RFC 9110 5.6.1: empty list elements are allowed and ignored.
            if element:
                elements.append(element)
            element = {}
        elif text[i] != ";":
            return []
        i += 1


_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
