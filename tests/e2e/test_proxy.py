"""Behind a proxy, end to end: X-Forwarded-* and Forwarded from a trusted peer reach the scope
and the access log on HTTP/1.1, HTTP/2, HTTP/3 and WebSocket; an untrusted peer's are ignored.
The test client is the "proxy": it connects from 127.0.0.1, the default trusted address."""

from __future__ import annotations

import json
import logging
from typing import Any

import anyio
import anyio.streams.tls
import pytest
from anyio.streams.tls import TLSStream
from wsproto.events import TextMessage

from .h2client import H2Client
from .h3client import H3Client, quic_port
from .support import host_port, raw_exchange, read_until, read_until_closed, serving
from .wsclient import RawWebSocket, handshake

pytestmark = pytest.mark.anyio

FORWARDED_HEADERS = (
    b"X-Forwarded-For: 198.51.100.1, 203.0.113.7\r\n"
    b"X-Forwarded-Proto: https\r\n"
    b"X-Forwarded-Host: example.com\r\n"
)
# Everyone but the test client, which connects from 127.0.0.1.
UNTRUSTED = {"forwarded_allow_ips": ["10.0.0.1"]}
LOG_FORMAT = '%(h)s "%(r)s" %(s)s'


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        return
    seen = {
        "client": scope["client"],
        "scheme": scope["scheme"],
        "server": scope["server"],
        "headers": [[name.decode(), value.decode()] for name, value in scope["headers"]],
    }
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": json.dumps(seen)})
        await send({"type": "websocket.close", "code": 1000})
        return
    body = json.dumps(seen).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def _http11(extra: bytes) -> bytes:
    return b"GET /who HTTP/1.1\r\nHost: internal:8000\r\nConnection: close\r\n" + extra + b"\r\n"


async def _http11_scope(server: Any, extra: bytes) -> dict[str, Any]:
    response = await raw_exchange(server, _http11(extra))
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    seen: dict[str, Any] = json.loads(body)
    return seen


async def test_http11_trusted_peer(tmp_path):
    log = tmp_path / "access.log"
    async with serving(app, access_logfile=str(log), access_logformat=LOG_FORMAT) as server:
        seen = await _http11_scope(server, FORWARDED_HEADERS)
    assert seen["client"] == ["203.0.113.7", 0]
    assert seen["scheme"] == "https"
    assert seen["server"] == ["example.com", 443]
    # The headers themselves reach the app as they came.
    assert ["x-forwarded-for", "198.51.100.1, 203.0.113.7"] in seen["headers"]
    assert log.read_text().strip() == '203.0.113.7 "GET /who HTTP/1.1" 200'


async def test_http11_forwarded_header():
    extra = b'Forwarded: for="[2001:db8::7]:4711";proto=https;host="example.com:8443"\r\n'
    async with serving(app) as server:
        seen = await _http11_scope(server, extra + b"X-Forwarded-For: 198.51.100.99\r\n")
    # Forwarded wins over X-Forwarded-*.
    assert seen["client"] == ["2001:db8::7", 4711]
    assert seen["scheme"] == "https"
    assert seen["server"] == ["example.com", 8443]


async def test_http11_untrusted_peer_is_ignored(tmp_path):
    log = tmp_path / "access.log"
    settings = {"access_logfile": str(log), "access_logformat": LOG_FORMAT, **UNTRUSTED}
    async with serving(app, **settings) as server:
        seen = await _http11_scope(server, FORWARDED_HEADERS)
        port = host_port(server)[1]
    assert seen["client"][0] == "127.0.0.1"
    assert seen["client"][1] != 0
    assert seen["scheme"] == "http"
    assert seen["server"] == ["127.0.0.1", port]
    assert ["x-forwarded-proto", "https"] in seen["headers"]
    assert log.read_text().startswith('127.0.0.1 "GET /who')


async def test_http11_proxy_headers_off():
    async with serving(app, proxy_headers=False) as server:
        seen = await _http11_scope(server, FORWARDED_HEADERS)
    assert (seen["client"][0], seen["scheme"]) == ("127.0.0.1", "http")


async def test_http11_garbage_is_ignored_not_an_error():
    extra = b'X-Forwarded-For: <script>\r\nX-Forwarded-Proto: gopher\r\nForwarded: for="oops\r\n'
    async with serving(app) as server:
        seen = await _http11_scope(server, extra)
    assert (seen["client"][0], seen["scheme"]) == ("127.0.0.1", "http")


async def test_http11_cidr_and_chain():
    extra = b"X-Forwarded-For: 198.51.100.1, 203.0.113.7, 10.1.2.3\r\n"
    async with serving(app, forwarded_allow_ips=["127.0.0.0/8", "10.0.0.0/8"]) as server:
        seen = await _http11_scope(server, extra)
    assert seen["client"] == ["203.0.113.7", 0]


@pytest.mark.parametrize(("allow", "client"), [(["unix"], "203.0.113.7"), (["127.0.0.1"], None)])
async def test_unix_socket_peer(tmp_path, allow, client):
    path = tmp_path / "s.sock"
    async with (
        serving(app, bind=[f"unix:{path}"], forwarded_allow_ips=allow),
        await anyio.connect_unix(str(path)) as stream,
    ):
        await stream.send(_http11(FORWARDED_HEADERS))
        response = await read_until_closed(stream)
    seen = json.loads(response.partition(b"\r\n\r\n")[2])
    assert (seen["client"] or [None])[0] == client


async def _h2_scope(server: Any, **extra: str) -> dict[str, Any]:
    client = await H2Client.connect(*host_port(server))
    try:
        stream_id = await client.request("/who", **extra)
        headers, body = await client.response(stream_id)
    finally:
        await client.aclose()
    assert headers[b":status"] == b"200"
    seen: dict[str, Any] = json.loads(body)
    return seen


async def test_http2_trusted_peer(tmp_path):
    log = tmp_path / "access.log"
    async with serving(app, access_logfile=str(log), access_logformat=LOG_FORMAT) as server:
        seen = await _h2_scope(
            server, x_forwarded_for="203.0.113.7", x_forwarded_proto="http", forwarded=""
        )
    assert seen["client"] == ["203.0.113.7", 0]
    # The cleartext HTTP/2 connection says http; the proxy says so too.
    assert seen["scheme"] == "http"
    assert log.read_text().strip() == '203.0.113.7 "GET /who HTTP/2" 200'


async def test_http2_forwarded_and_untrusted():
    async with serving(app) as server:
        seen = await _h2_scope(server, forwarded="for=203.0.113.7;proto=https")
    assert (seen["client"], seen["scheme"]) == (["203.0.113.7", 0], "https")
    async with serving(app, **UNTRUSTED) as server:
        seen = await _h2_scope(server, forwarded="for=203.0.113.7;proto=https")
    assert (seen["client"][0], seen["scheme"]) == ("127.0.0.1", "http")


async def _ws_scope(server: Any, extra: bytes) -> dict[str, Any]:
    ws = await RawWebSocket.connect(server, extra=extra)
    try:
        event = await ws.receive()
    finally:
        await ws.aclose()
    assert isinstance(event, TextMessage), event
    seen: dict[str, Any] = json.loads(event.data)
    return seen


async def test_websocket_trusted_peer(tmp_path):
    log = tmp_path / "access.log"
    async with serving(app, access_logfile=str(log), access_logformat=LOG_FORMAT) as server:
        seen = await _ws_scope(server, FORWARDED_HEADERS)
        with anyio.fail_after(5):
            while not log.read_text():
                await anyio.sleep(0.01)
    assert seen["client"] == ["203.0.113.7", 0]
    assert seen["scheme"] == "wss"
    assert seen["server"] == ["example.com", 443]
    assert log.read_text().startswith('203.0.113.7 "GET /ws HTTP/1.1"')


async def test_websocket_untrusted_peer():
    async with serving(app, **UNTRUSTED) as server:
        seen = await _ws_scope(server, FORWARDED_HEADERS)
    assert (seen["client"][0], seen["scheme"]) == ("127.0.0.1", "ws")


async def test_http3_trusted_and_untrusted(certs):
    settings: dict[str, Any] = {
        "quic_bind": ["127.0.0.1:0"],
        "certfile": certs.cert_path,
        "lifespan": "off",
    }
    extra = [(b"x-forwarded-for", b"203.0.113.7"), (b"x-forwarded-proto", b"http")]
    for more, expected in (({}, ("203.0.113.7", "http")), (UNTRUSTED, ("127.0.0.1", "https"))):
        async with (
            serving(app, **settings, **more) as server,
            H3Client.connect("127.0.0.1", quic_port(server), cafile=certs.ca_path) as client,
        ):
            stream = await client.request("/who", extra=extra)
        seen = json.loads(stream.body)
        assert (seen["client"][0], seen["scheme"]) == expected


# ---- the PROXY protocol ----------------------------------------------------------------------

V1_HEADER = b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 8443\r\n"
V2_HEADER = (
    b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c"
    + bytes([203, 0, 113, 8, 192, 0, 2, 1])
    + (40000).to_bytes(2, "big")
    + (443).to_bytes(2, "big")
)
V2_LOCAL = b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"


async def test_proxy_protocol_v1_names_the_client(tmp_path):
    log = tmp_path / "access.log"
    settings = {"access_logfile": str(log), "access_logformat": LOG_FORMAT}
    async with serving(app, proxy_protocol="v1", **settings) as server:
        response = await raw_exchange(server, V1_HEADER + _http11(b""))
    seen = json.loads(response.partition(b"\r\n\r\n")[2])
    assert seen["client"] == ["203.0.113.7", 56324]
    assert seen["server"] == ["192.0.2.1", 8443]
    assert seen["scheme"] == "http"
    assert log.read_text().strip() == '203.0.113.7 "GET /who HTTP/1.1" 200'


async def _who_over_h2(stream: Any) -> bytes:
    """GET /who over HTTP/2 on `stream` (the PROXY header already sent); the response body."""
    client = H2Client(stream)
    await client.flush()
    try:
        stream_id = await client.request("/who")
        _, body = await client.response(stream_id)
    finally:
        await client.aclose()
    return body


async def test_proxy_protocol_v2_then_http2():
    async with serving(app, proxy_protocol="auto") as server:
        stream = await anyio.connect_tcp(*host_port(server))
        await stream.send(V2_HEADER)
        body = await _who_over_h2(stream)
    assert json.loads(body)["client"] == ["203.0.113.8", 40000]


async def test_proxy_protocol_local_keeps_the_connection():
    async with serving(app, proxy_protocol="v2") as server:
        seen = await _http11_scope_raw(server, V2_LOCAL)
    assert seen["client"][0] == "127.0.0.1"


async def test_proxy_protocol_then_websocket():
    async with serving(app, proxy_protocol="v1") as server:
        stream = await anyio.connect_tcp(*host_port(server))
        await stream.send(V1_HEADER)
        ws = await _ws_on(stream)
        event = await ws.receive()
        await ws.aclose()
    assert isinstance(event, TextMessage)
    assert json.loads(event.data)["client"] == ["203.0.113.7", 56324]


async def test_proxy_protocol_client_headers_are_not_believed():
    # The balancer is trusted; the client it names (203.0.113.7) is not, so its own
    # X-Forwarded-For is ignored.
    async with serving(app, proxy_protocol="v1") as server:
        seen = await _http11_scope_raw(server, V1_HEADER, b"X-Forwarded-For: 198.51.100.1\r\n")
    assert seen["client"] == ["203.0.113.7", 56324]


@pytest.mark.parametrize(
    "data",
    [
        _http11(b""),  # a trusted balancer must send the header
        b"PROXY TCP4 203.0.113.7 192.0.2.1 56324\r\n" + _http11(b""),
        V2_HEADER + _http11(b""),  # v2 while only v1 is on
    ],
)
async def test_proxy_protocol_missing_or_garbage_closes(data):
    async with serving(app, proxy_protocol="v1") as server:
        assert await raw_exchange(server, data) == b""


async def test_proxy_protocol_untrusted_peer():
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("multicorn.error")
    logger.addHandler(handler)
    settings = {"proxy_protocol_allow_ips": ["10.0.0.1"], "log_level": "debug"}
    try:
        async with serving(app, proxy_protocol="auto", **settings) as server:
            # A peer not allowed to send the header is cut off when it does, with a debug line...
            assert await raw_exchange(server, V1_HEADER + _http11(b"")) == b""
    finally:
        logger.removeHandler(handler)
    lines = [r.getMessage() for r in records if r.levelno == logging.DEBUG]
    assert any("not allowed" in line and "127.0.0.1" in line for line in lines), lines
    async with serving(app, proxy_protocol="auto", proxy_protocol_allow_ips=["10.0.0.1"]) as server:
        # ...and served as usual when it does not.
        seen = await _http11_scope(server, b"")
    assert seen["client"][0] == "127.0.0.1"


# ---- the PROXY protocol on TLS listeners: the header comes before the TLS handshake ---------


async def _tls_after(server: Any, certs: Any, header: bytes, alpn: str) -> anyio.abc.ByteStream:
    """A TLS connection whose first bytes (in the same segment as the ClientHello, as
    HAProxy writes them) are `header`."""
    tcp = await anyio.connect_tcp(*host_port(server))
    await tcp.send(header)
    return await TLSStream.wrap(
        tcp, hostname="localhost", ssl_context=certs.client_context(alpn=[alpn])
    )


async def test_proxy_protocol_v1_before_tls_http11(certs, tmp_path):
    log = tmp_path / "access.log"
    settings = {"access_logfile": str(log), "access_logformat": LOG_FORMAT}
    async with serving(app, proxy_protocol="v1", certfile=certs.cert_path, **settings) as server:
        stream = await _tls_after(server, certs, V1_HEADER, "http/1.1")
        await stream.send(_http11(b""))
        response = await read_until_closed(stream)
    seen = json.loads(response.partition(b"\r\n\r\n")[2])
    assert seen["client"] == ["203.0.113.7", 56324]
    assert seen["server"] == ["192.0.2.1", 8443]
    assert seen["scheme"] == "https"
    assert log.read_text().strip() == '203.0.113.7 "GET /who HTTP/1.1" 200'


async def test_proxy_protocol_v2_before_tls_http2(certs):
    async with serving(app, proxy_protocol="auto", certfile=certs.cert_path) as server:
        stream = await _tls_after(server, certs, V2_HEADER, "h2")
        assert stream.extra(anyio.streams.tls.TLSAttribute.alpn_protocol) == "h2"
        body = await _who_over_h2(stream)
    seen = json.loads(body)
    assert seen["client"] == ["203.0.113.8", 40000]
    assert seen["scheme"] == "https"


async def test_proxy_protocol_header_split_from_tls(certs):
    # A header in pieces, the ClientHello after it: the listener waits for the whole header
    # and hands TLS exactly the bytes after it.
    async with serving(app, proxy_protocol="v1", certfile=certs.cert_path) as server:
        tcp = await anyio.connect_tcp(*host_port(server))
        for piece in (V1_HEADER[:7], V1_HEADER[7:20], V1_HEADER[20:]):
            await tcp.send(piece)
            await anyio.sleep(0.02)
        stream = await TLSStream.wrap(
            tcp, hostname="localhost", ssl_context=certs.client_context(alpn=["http/1.1"])
        )
        await stream.send(_http11(b""))
        response = await read_until_closed(stream)
    assert json.loads(response.partition(b"\r\n\r\n")[2])["client"][0] == "203.0.113.7"


async def test_proxy_protocol_tls_without_header_or_untrusted_closes(certs):
    async with serving(app, proxy_protocol="v1", certfile=certs.cert_path) as server:
        # A trusted peer that starts TLS without the header is cut off before the handshake.
        with pytest.raises((anyio.BrokenResourceError, anyio.EndOfStream, OSError)):
            await _tls_after(server, certs, b"", "http/1.1")
    settings = {"proxy_protocol_allow_ips": ["10.0.0.1"], "certfile": certs.cert_path}
    async with serving(app, proxy_protocol="v1", **settings) as server:
        # A peer not trusted to send the header may not send one...
        with pytest.raises((anyio.BrokenResourceError, anyio.EndOfStream, OSError)):
            await _tls_after(server, certs, V1_HEADER, "http/1.1")
        # ...and is served over TLS as usual without one.
        stream = await _tls_after(server, certs, b"", "http/1.1")
        await stream.send(_http11(b""))
        response = await read_until_closed(stream)
    assert json.loads(response.partition(b"\r\n\r\n")[2])["client"][0] == "127.0.0.1"


async def _http11_scope_raw(server: Any, header: bytes, extra: bytes = b"") -> dict[str, Any]:
    response = await raw_exchange(server, header + _http11(extra))
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    seen: dict[str, Any] = json.loads(body)
    return seen


async def _ws_on(stream: anyio.abc.ByteStream) -> RawWebSocket:
    await stream.send(handshake("/ws"))
    data = await read_until(stream, b"\r\n\r\n")
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), head
    return RawWebSocket(stream, head, rest)
