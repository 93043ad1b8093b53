"""HTTP/3 end to end over real UDP on loopback, on asyncio and trio, with aioquic's client
(tests/e2e/h3client.py): the scope, bodies both ways, many streams on one connection,
trailers and early hints, Alt-Svc on the TCP side, a malformed head costing only its stream,
garbage datagrams, a client that changes address or connection ID, WebSocket over HTTP/3
(RFC 9220), and the graceful drain (GOAWAY, in-flight requests finish, then CONNECTION_CLOSE).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from typing import Any

import anyio
import httpx
import pytest
from aioquic.h3.connection import ErrorCode, Setting
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, TextMessage

from .h3client import H3Client, quic_port
from .support import host_port, serving

pytestmark = pytest.mark.anyio

STARTED: dict[str, anyio.Event] = {}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "websocket":
        await _websocket_echo(receive, send)
        return
    assert scope["type"] == "http"
    path = scope["path"]
    body = b""
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body += message.get("body", b"")
        more = message.get("more_body", False)
    if path == "/scope":
        tls = scope["extensions"].get("tls", {})
        payload = {
            "http_version": scope["http_version"],
            "scheme": scope["scheme"],
            "client": scope["client"],
            "server": scope["server"],
            "tls_version": tls.get("tls_version"),
            "cipher_suite": tls.get("cipher_suite"),
            "server_cert": bool(tls.get("server_cert")),
            "extensions": sorted(scope["extensions"]),
        }
        await _respond(send, json.dumps(payload).encode())
    elif path == "/echo":
        await _respond(send, body)
    elif path == "/digest":
        await _respond(send, hashlib.sha256(body).hexdigest().encode())
    elif path == "/slow":
        STARTED.setdefault("slow", anyio.Event()).set()
        await anyio.sleep(0.5)
        await _respond(send, b"slow done")
    elif path == "/trailers":
        await send({"type": "http.response.early_hint", "links": ["</style.css>; rel=preload"]})
        trailers = "http.response.trailers" in scope["extensions"]
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain")],
                "trailers": trailers,
            }
        )
        await send({"type": "http.response.body", "body": b"with trailers"})
        if trailers:
            await send({"type": "http.response.trailers", "headers": [(b"x-checksum", b"42")]})
    else:
        await _respond(send, b"Hello over HTTP/3")


async def _respond(send: Any, body: bytes) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def _websocket_echo(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "websocket.connect":
            await send({"type": "websocket.accept"})
        elif message["type"] == "websocket.receive":
            reply = {"type": "websocket.send"}
            if message.get("text") is not None:
                reply["text"] = "echo: " + message["text"]
            else:
                reply["bytes"] = message["bytes"]
            await send(reply)
        else:
            return


def quic_settings(certs: Any, **extra: Any) -> dict[str, Any]:
    return {
        "bind": ["127.0.0.1:0"],
        "quic_bind": ["127.0.0.1:0"],
        "certfile": certs.cert_path,
        "lifespan": "off",
        **extra,
    }


async def test_get_reports_http3_in_the_scope(certs):
    async with (
        serving(app, **quic_settings(certs)) as server,
        H3Client.connect("127.0.0.1", quic_port(server), cafile=certs.ca_path) as client,
    ):
        stream = await client.request("/scope")
        assert stream.status == 200
        scope = json.loads(stream.body)
        assert scope["http_version"] == "3"
        assert scope["scheme"] == "https"
        assert scope["client"][0] == "127.0.0.1"
        assert scope["server"] == ["127.0.0.1", quic_port(server)]
        # RFC 9001 4.2: QUIC runs TLS 1.3 only, with one of its AEAD suites.
        assert scope["tls_version"] == 0x0304
        assert scope["cipher_suite"] in (0x1301, 0x1302, 0x1303)
        assert scope["server_cert"]
        assert "http.response.early_hint" in scope["extensions"]
        assert b"alt-svc" not in stream.response_headers


async def test_request_and_response_bodies(certs):
    body = os.urandom(512 * 1024)
    async with (
        serving(app, **quic_settings(certs)) as server,
        H3Client.connect("127.0.0.1", quic_port(server), cafile=certs.ca_path) as client,
    ):
        stream = await client.request("/echo", "POST", body=body, limit=20)
        assert stream.status == 200
        assert stream.body == body


async def test_an_upload_past_the_receive_windows(certs):
    # 5 MiB: past the stream window (1 MiB) and the connection window (4 MiB), so the upload
    # only completes if credit comes back as the application reads.
    body = os.urandom(5 * 1024 * 1024)
    async with (
        serving(app, **quic_settings(certs)) as server,
        H3Client.connect("127.0.0.1", quic_port(server), cafile=certs.ca_path) as client,
    ):
        stream = await client.request("/digest", "POST", body=body, limit=30)
        assert stream.status == 200
        assert stream.body == hashlib.sha256(body).hexdigest().encode()


async def test_fifty_concurrent_streams_on_one_connection(certs):
    async with (
        serving(app, **quic_settings(certs)) as server,
        H3Client.connect("127.0.0.1", quic_port(server), cafile=certs.ca_path) as client,
    ):
        streams = [
            await client.open_stream(client.request_headers(f"/n{i}"), end_stream=True)
            for i in range(50)
        ]
        for stream in streams:
            await client.finished(stream)
        assert [s.status for s in streams] == [200] * 50
        assert {s.body for s in streams} == {b"Hello over HTTP/3"}


async def test_trailers_and_early_hints(certs):
    async with (
        serving(app, **quic_settings(certs)) as server,
        H3Client.connect("127.0.0.1", quic_port(server), cafile=certs.ca_path) as client,
    ):
        stream = await client.request("/trailers", extra=[(b"te", b"trailers")])
        statuses = [dict(block).get(b":status") for block in stream.headers]
        # 103, then the final head, then the trailer section (no :status).
        assert statuses == [b"103", b"200", None]
        assert dict(stream.headers[0])[b"link"] == b"</style.css>; rel=preload"
        assert dict(stream.headers[2]) == {b"x-checksum": b"42"}
        assert stream.body == b"with trailers"


async def test_alt_svc_is_announced_on_http11_and_http2(certs):
    async with serving(app, **quic_settings(certs)) as server:
        host, port = host_port(server)
        expected = f'h3=":{quic_port(server)}"; ma=86400'
        for http2 in (False, True):
            async with httpx.AsyncClient(verify=certs.verify(), http2=http2) as client:
                response = await client.get(f"https://{host}:{port}/")
            assert response.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
            assert response.headers["alt-svc"] == expected


async def test_alt_svc_can_be_turned_off(certs):
    async with serving(app, **quic_settings(certs, alt_svc_headers=False)) as server:
        host, port = host_port(server)
        async with httpx.AsyncClient(verify=certs.verify()) as client:
            response = await client.get(f"https://{host}:{port}/")
        assert "alt-svc" not in response.headers


async def test_no_alt_svc_without_a_quic_listener(certs):
    async with serving(app, bind=["127.0.0.1:0"], certfile=certs.cert_path) as server:
        host, port = host_port(server)
        async with httpx.AsyncClient(verify=certs.verify()) as client:
            response = await client.get(f"https://{host}:{port}/")
        assert "alt-svc" not in response.headers


async def test_a_malformed_head_costs_only_its_stream(certs):
    async with (
        serving(app, **quic_settings(certs)) as server,
        H3Client.connect("127.0.0.1", quic_port(server), cafile=certs.ca_path) as client,
    ):
        # RFC 9114 4.2: field names must be lowercase; 4.1.2: a malformed request is a stream
        # error of type H3_MESSAGE_ERROR.
        bad = await client.open_stream(
            client.request_headers("/", extra=[(b"X-Upper", b"1")]), end_stream=True
        )
        await client.finished(bad)
        assert bad.reset_code == ErrorCode.H3_MESSAGE_ERROR
        good = await client.request("/")
        assert good.status == 200
        assert client.terminated is None


async def test_garbage_datagrams_leave_the_listener_serving(certs):
    async with serving(app, **quic_settings(certs)) as server:
        port = quic_port(server)
        junk = [
            b"",
            b"\x00",
            os.urandom(20),
            b"\xc0\x00\x00\x00\x01\x08" + os.urandom(1300),  # an Initial that does not decrypt
            b"\xc0\x00\x00\x00\x01\xff" + os.urandom(10),  # a CID length past the packet
        ]
        unknown_cid = b"\x40" + os.urandom(40)  # a short header no connection has
        unsupported = b"\xc0\x1a\x2a\x3a\x4a\x08" + b"D" * 8 + b"\x08" + b"S" * 8
        unsupported += bytes(1200 - len(unsupported))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
            raw.settimeout(5)
            for datagram in junk:
                raw.sendto(datagram, ("127.0.0.1", port))
            raw.sendto(unknown_cid, ("127.0.0.1", port))
            # RFC 9000 10.3: a stateless reset looks like a short-header packet, is smaller
            # than what triggered it, and ends in a 16-byte token.
            reset = await anyio.to_thread.run_sync(raw.recv, 2048)
            raw.sendto(unsupported, ("127.0.0.1", port))
            # RFC 9000 6.1: an unsupported version in a datagram that could start a connection
            # is answered with Version Negotiation (version 0), the CIDs swapped.
            answer = await anyio.to_thread.run_sync(raw.recv, 2048)
        assert reset[0] & 0xC0 == 0x40
        assert 21 <= len(reset) < len(unknown_cid)
        assert answer[1:5] == b"\x00\x00\x00\x00"
        assert answer[6:14] == b"S" * 8 and answer[15:23] == b"D" * 8
        async with H3Client.connect("127.0.0.1", port, cafile=certs.ca_path) as client:
            assert (await client.request("/")).status == 200


async def test_a_client_that_moves_keeps_its_connection(certs):
    async with (
        serving(app, **quic_settings(certs)) as server,
        H3Client.connect("127.0.0.1", quic_port(server), cafile=certs.ca_path) as client,
    ):
        assert (await client.request("/scope")).status == 200
        before = client.udp.extra(anyio.abc.SocketAttribute.local_port)
        await client.rebind()  # RFC 9000 9: migration to a new local address
        assert client.udp.extra(anyio.abc.SocketAttribute.local_port) != before
        assert (await client.request("/")).status == 200
        client.quic.change_connection_id()  # RFC 9000 5.1.1: a new CID from the server's pool
        assert (await client.request("/")).status == 200
        assert client.terminated is None


async def test_websocket_over_http3(certs):
    async with (
        serving(app, **quic_settings(certs)) as server,
        H3Client.connect("127.0.0.1", quic_port(server), cafile=certs.ca_path) as client,
    ):
        # RFC 9220 3: extended CONNECT only once the server's SETTINGS allowed it.
        await client.wait_for(lambda: client.h3.received_settings is not None)
        assert client.h3.received_settings[Setting.ENABLE_CONNECT_PROTOCOL] == 1
        headers = [
            (b":method", b"CONNECT"),
            (b":protocol", b"websocket"),
            (b":scheme", b"https"),
            (b":authority", b"localhost"),
            (b":path", b"/ws"),
            (b"sec-websocket-version", b"13"),
        ]
        stream = await client.open_stream(headers, end_stream=False)
        await client.wait_for(lambda: bool(stream.headers))
        assert stream.status == 200
        frames = Connection(ConnectionType.CLIENT)
        for event in (TextMessage(data="hi"), BytesMessage(data=b"\x00\x01")):
            await client.send_data(stream, frames.send(event), end_stream=False)
        received: list[Any] = []
        seen = 0

        def collect() -> bool:
            nonlocal seen
            frames.receive_data(stream.body[seen:])
            seen = len(stream.body)
            received.extend(frames.events())
            return len(received) >= wanted

        wanted = 2
        await client.wait_for(collect)
        assert received[0] == TextMessage(data="echo: hi")
        assert received[1] == BytesMessage(data=bytearray(b"\x00\x01"))
        await client.send_data(stream, frames.send(CloseConnection(code=1000)), end_stream=False)
        wanted = 3  # the server's Close answering ours (RFC 6455 5.5.1)
        await client.wait_for(collect)
        assert isinstance(received[2], CloseConnection)
        assert received[2].code == 1000


async def test_websocket_off_means_no_extended_connect(certs):
    async with (
        serving(app, **quic_settings(certs, websocket=False)) as server,
        H3Client.connect("127.0.0.1", quic_port(server), cafile=certs.ca_path) as client,
    ):
        await client.wait_for(lambda: client.h3.received_settings is not None)
        assert Setting.ENABLE_CONNECT_PROTOCOL not in client.h3.received_settings
        assert (await client.request("/")).status == 200


async def test_graceful_shutdown_finishes_in_flight_requests(certs):
    STARTED["slow"] = anyio.Event()
    async with (
        serving(app, **quic_settings(certs)) as server,
        H3Client.connect("127.0.0.1", quic_port(server), cafile=certs.ca_path) as client,
    ):
        slow = await client.open_stream(client.request_headers("/slow"), end_stream=True)
        with anyio.fail_after(5):
            await STARTED["slow"].wait()
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.shutdown)
            await client.finished(slow)
            assert slow.status == 200
            assert slow.body == b"slow done"
            # RFC 9114 5.2: once the accepted requests are done, the server closes the
            # connection with H3_NO_ERROR.
            await client.wait_for(lambda: client.terminated is not None)
        assert client.terminated is not None
        assert client.terminated.error_code == ErrorCode.H3_NO_ERROR


async def test_address_validation_with_retry(certs):
    async with (
        serving(app, **quic_settings(certs, quic_retry=True)) as server,
        H3Client.connect("127.0.0.1", quic_port(server), cafile=certs.ca_path) as client,
    ):
        # RFC 9000 7.3: after a Retry the server's transport parameters name the Retry's
        # source CID, which aioquic's client checks before completing the handshake.
        assert client.quic._retry_source_connection_id is not None
        assert (await client.request("/")).status == 200
