"""WSGI (Flask, Django's WSGI handler, a plain function) and ASGI 2 applications served over real
sockets, on asyncio and trio: detection, bodies streamed both ways with backpressure,
`wsgi.file_wrapper`, errors, HTTP/2 and HTTP/3, and the process ending while a WSGI thread is
stuck."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import time
from typing import Any

import anyio
import httpx
import pytest

from .h3client import H3Client, quic_port
from .process import multicorn_process
from .support import host_port, read_until, serving
from .wsgi_apps import CHUNK, ASGI2Echo, django_app, flask_app, plain_wsgi, probe

pytestmark = pytest.mark.anyio

BIG = 8 * 1024 * 1024  # an upload several times any buffer on its way


def big_body() -> bytes:
    return os.urandom(1024) * (BIG // 1024)


def summary(body: bytes) -> str:
    return f"{len(body)} {hashlib.sha256(body).hexdigest()}"


async def test_flask_get_and_a_large_body_read_in_chunks() -> None:
    body = big_body()
    probe.reset()
    async with serving(flask_app) as server, httpx.AsyncClient(timeout=30) as client:
        url = server.bound_addresses[0]
        hello = await client.get(url + "/")
        digest = await client.post(url + "/digest", content=body)
    assert hello.status_code == 200
    assert hello.text == "hello from flask over HTTP/1.1"
    assert digest.status_code == 200
    assert digest.text == summary(body)
    # wsgi.input never held more than a piece of the body beyond what the app read.
    assert 0 < probe.largest_buffer <= 1024 * 1024


async def test_the_app_reads_the_body_before_it_has_all_arrived() -> None:
    # The client sends a first part, then waits until the app has read from it: only a
    # server that hands the body over as it comes lets that happen.
    probe.reset()
    head = b"POST /digest HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % (2 * CHUNK)
    async with (
        serving(flask_app) as server,
        await anyio.connect_tcp(*host_port(server)) as stream,
    ):
        await stream.send(head + b"a" * CHUNK)
        await anyio.to_thread.run_sync(probe.first_read.wait, 5.0)
        assert probe.first_read.is_set()
        await stream.send(b"b" * CHUNK)
        response = await read_until(stream, summary(b"a" * CHUNK + b"b" * CHUNK).encode())
    assert response.startswith(b"HTTP/1.1 200 ")


async def test_a_chunked_request_body_reaches_a_wsgi_app() -> None:
    pieces = [os.urandom(10_000) for _ in range(30)]

    async def chunked() -> Any:
        for piece in pieces:
            yield piece

    async with serving(flask_app) as server, httpx.AsyncClient(timeout=30) as client:
        response = await client.post(server.bound_addresses[0] + "/digest", content=chunked())
    assert response.status_code == 200
    assert response.text == summary(b"".join(pieces))


async def test_a_slow_reader_holds_a_streaming_response_back() -> None:
    count = 512  # 32 MiB of 64 KiB chunks
    probe.reset()
    async with (
        serving(flask_app) as server,
        await anyio.connect_tcp(*host_port(server)) as stream,
    ):
        raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # no autotuning
        await stream.send(b"GET /stream/%d HTTP/1.1\r\nhost: x\r\n\r\n" % count)
        await read_until(stream, b"\r\n\r\n")
        await anyio.sleep(1.0)  # the client reads nothing for a while
        ahead = probe.produced
        received = 0
        tail = b""
        with anyio.fail_after(30):
            while not tail.endswith(b"0\r\n\r\n"):
                data = await stream.receive()
                received += len(data)
                tail = (tail + data)[-16:]
    # Socket buffers hold a few MiB; the generator did not run ahead of them to its end.
    assert 0 < ahead < count // 3
    assert received > (count - 1) * CHUNK  # (the part read with the head not counted)
    assert probe.produced == count


async def test_file_wrapper_and_an_app_exception(tmp_path: Any) -> None:
    data = os.urandom(300_000)
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    async with serving(plain_wsgi) as server, httpx.AsyncClient(timeout=30) as client:
        url = server.bound_addresses[0]
        served = await client.get(f"{url}/file?{path}")
        failed = await client.get(url + "/boom")
        after = await client.get(url + "/nothing")
    assert served.status_code == 200
    assert served.content == data
    assert failed.status_code == 500
    assert after.status_code == 404  # the server goes on serving


async def test_django_wsgi_handler() -> None:
    body = os.urandom(3 * 1024 * 1024)
    async with serving(django_app()) as server, httpx.AsyncClient(timeout=30) as client:
        url = server.bound_addresses[0]
        hello = await client.get(url + "/hello/", params={"q": "caf\u00e9"})
        digest = await client.post(url + "/digest/", content=body)
    assert hello.status_code == 200
    assert hello.text == "hello from django /hello/ caf\u00e9"
    assert digest.status_code == 200
    assert digest.text == summary(body)


async def test_asgi2_app_is_detected() -> None:
    async with serving(ASGI2Echo) as server, httpx.AsyncClient() as client:
        response = await client.post(server.bound_addresses[0] + "/two", content=b"x" * 1000)
    assert response.text == "asgi 2.0 /two 1000"


async def test_forced_interface() -> None:
    # Forced, a WSGI app is served as one whatever its signature says.
    async with (
        serving(lambda *args: flask_app(*args), interface="wsgi") as server,
        httpx.AsyncClient() as client,
    ):
        response = await client.get(server.bound_addresses[0] + "/")
    assert response.text == "hello from flask over HTTP/1.1"


async def test_flask_over_http2(certs: Any) -> None:
    body = os.urandom(1024 * 1024)
    async with (
        serving(flask_app, certfile=certs.cert_path) as server,
        httpx.AsyncClient(http2=True, verify=certs.verify(), timeout=30) as client,
    ):
        url = server.bound_addresses[0]
        hello = await client.get(url + "/")
        digest = await client.post(url + "/digest", content=body)
    assert hello.http_version == "HTTP/2"
    assert hello.text == "hello from flask over HTTP/2"
    assert digest.text == summary(body)


async def test_flask_over_http3(certs: Any) -> None:
    body = os.urandom(256 * 1024)
    settings = {"quic_bind": ["127.0.0.1:0"], "certfile": certs.cert_path}
    async with (
        serving(flask_app, **settings) as server,
        H3Client.connect("127.0.0.1", quic_port(server), cafile=certs.ca_path) as client,
    ):
        hello = await client.request("/")
        digest = await client.request("/digest", "POST", body=body)
    assert hello.status == 200
    assert hello.body == b"hello from flask over HTTP/3"
    assert digest.body.decode() == summary(body)


# ---- the command line -----------------------------------------------------------------------


@pytest.mark.parametrize("worker_class", ["asyncio", "trio"])
def test_command_line_factory_upgrade_warning_and_a_stuck_thread_at_shutdown(
    worker_class: str,
) -> None:
    args = [
        "tests.e2e.wsgi_apps:create_flask_app",
        "--bind",
        "127.0.0.1:0",
        "-k",
        worker_class,
        "--graceful-timeout",
        "1",
    ]
    with multicorn_process(*args) as (proc, url):
        output = proc.output
        assert any("looks like an app factory" in line for line in output.lines)
        assert any("WSGI application" in line for line in output.lines)
        upgrade = {"Upgrade": "foo", "Connection": "Upgrade"}
        for _ in range(2):
            response = httpx.get(url + "/", headers=upgrade, timeout=10)
            assert response.text == "hello from flask over HTTP/1.1"
        output.wait_for("Unsupported upgrade request")
        # A request stuck in the app past the graceful timeout does not keep the process.
        with socket.create_connection(host_port_of(url)) as sock:
            sock.sendall(b"GET /stuck HTTP/1.1\r\nhost: x\r\n\r\n")
            output.wait_for(r"\[test-app\] stuck in /stuck")
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
        assert time.monotonic() - started < 10
        rest = "".join(output.lines)
        assert rest.count("Unsupported upgrade request") == 1


def host_port_of(url: str) -> tuple[str, int]:
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    return host, int(port)
