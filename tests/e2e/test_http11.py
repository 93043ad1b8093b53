"""HTTP/1.1 end to end: real loopback sockets, httpx and raw bytes, on asyncio and on trio."""

from __future__ import annotations

import anyio
import httpx
import pytest

from multicorn.app.errors import LifespanFailure

from . import support
from .support import host_port, raw_exchange, read_until, read_until_closed, serving

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True, params=["h11", "httptools"])
def engine(request):
    support.ENGINE["http"] = request.param
    yield request.param
    support.ENGINE["http"] = "auto"


async def hello(scope, receive, send):
    if scope["type"] != "http":
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": b"hello " + scope["path"].encode()})


async def echo(scope, receive, send):
    """Streams the request body back as it arrives (chunked response)."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        more = message["more_body"]
        await send({"type": "http.response.body", "body": message["body"], "more_body": more})


async def test_get_has_body_date_and_server_headers():
    async with serving(hello) as server, httpx.AsyncClient() as client:
        response = await client.get(server.bound_addresses[0] + "/abc")
    assert response.status_code == 200
    assert response.text == "hello /abc"
    assert response.headers["content-length"] == "10"
    assert response.headers["server"] == "multicorn"
    assert "GMT" in response.headers["date"]


async def test_date_and_server_headers_can_be_switched_off():
    settings = {"include_date_header": False, "include_server_header": False}
    async with serving(hello, **settings) as server, httpx.AsyncClient() as client:
        response = await client.get(server.bound_addresses[0])
    assert "date" not in response.headers
    assert "server" not in response.headers


async def test_app_headers_pass_through_unchanged():
    async def app(scope, receive, send):
        await send(
            {
                "type": "http.response.start",
                "status": 201,
                "headers": [(b"x-one", b"1"), (b"x-one", b"2"), (b"server", b"mine")],
            }
        )
        await send({"type": "http.response.body", "body": b""})

    async with serving(app) as server:
        raw = await raw_exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head = raw.split(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 201 created")
    assert b"x-one: 1\r\nx-one: 2" in head
    assert head.count(b"server:") == 1 and b"server: mine" in head


async def test_keep_alive_reuses_one_connection():
    async with serving(hello) as server:
        host, port = host_port(server)
        async with await anyio.connect_tcp(host, port) as stream:
            for path in (b"/1", b"/2", b"/3"):
                await stream.send(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
                data = await read_until(stream, b"hello " + path)
                assert data.startswith(b"HTTP/1.1 200 OK")


async def test_pipelined_requests_answered_in_order():
    async def slow_first(scope, receive, send):
        if scope["path"] == "/1":
            await anyio.sleep(0.2)
        await hello(scope, receive, send)

    requests = (
        b"".join(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(1, 4))
        + b"GET /4 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    async with serving(slow_first) as server:
        raw = await raw_exchange(server, requests)
    bodies = [part for part in raw.split(b"\r\n\r\n") if part.startswith(b"hello")]
    assert [body[:8] for body in bodies] == [b"hello /1", b"hello /2", b"hello /3", b"hello /4"]


async def test_chunked_request_and_response_bodies():
    payload = [b"a" * 1000, b"b" * 5000, b"c"]

    async def chunks():
        for part in payload:
            yield part

    async with serving(echo) as server, httpx.AsyncClient() as client:
        response = await client.post(server.bound_addresses[0], content=chunks())
    assert response.status_code == 200
    assert response.headers["transfer-encoding"] == "chunked"
    assert response.content == b"".join(payload)


async def test_content_length_body_echoed():
    body = bytes(range(256)) * 400
    async with serving(echo) as server, httpx.AsyncClient() as client:
        response = await client.post(server.bound_addresses[0], content=body)
    assert response.content == body


async def test_head_response_has_no_body():
    async with serving(hello) as server:
        raw = await raw_exchange(
            server, b"HEAD /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert b"content-length: 8" in head
    assert rest == b""


async def test_expect_100_continue_sent_only_when_app_reads():
    reading = anyio.Event()

    async def app(scope, receive, send):
        await anyio.sleep(0.3)
        reading.set()
        message = await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": message["body"]})

    async with serving(app) as server:
        host, port = host_port(server)
        async with await anyio.connect_tcp(host, port) as stream:
            await stream.send(
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
            )
            with anyio.move_on_after(0.15):
                early = await stream.receive()
                pytest.fail(f"got {early!r} before the app asked for the body")
            data = await read_until(stream, b"\r\n\r\n")
            assert reading.is_set()
            assert data.startswith(b"HTTP/1.1 100 Continue\r\n")
            await stream.send(b"hello")
            data = await read_until(stream, b"hello")
            assert b"HTTP/1.1 200 OK" in data


async def test_no_100_continue_when_app_answers_without_reading():
    async with serving(hello) as server:
        raw = await raw_exchange(
            server,
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
        )
    assert raw.startswith(b"HTTP/1.1 200 OK")
    assert b"100 Continue" not in raw


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 20000 + b"\r\n\r\n", b"431"),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", b"501"),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
            b"400",
        ),
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", b"505"),
        (b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", b"400"),
        (b"GET /  HTTP/1.1\r\nHost: a\r\n\r\n", b"400"),
        (b"FOO / HTTP/1.1\r\nHost: a\r\n\r\n", b"501"),
        (b"get / HTTP/1.1\r\nHost: a\r\n\r\n", b"501"),
    ],
)
async def test_bad_requests_get_a_clear_status_and_close(request_bytes, status):
    async with serving(hello) as server:
        raw = await raw_exchange(server, request_bytes)
        assert raw.startswith(b"HTTP/1.1 " + status)
        assert b"connection: close" in raw.lower()
        assert b"Traceback" not in raw
        # The worker is still serving.
        async with httpx.AsyncClient() as client:
            assert (await client.get(server.bound_addresses[0])).status_code == 200


async def test_app_exception_before_start_is_500():
    async def app(scope, receive, send):
        raise ValueError("boom")

    async with serving(app) as server, httpx.AsyncClient() as client:
        response = await client.get(server.bound_addresses[0])
    assert response.status_code == 500
    assert b"boom" not in response.content


async def test_app_exception_after_start_closes_connection():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise ValueError("boom")

    async with serving(app) as server:
        raw = await raw_exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200 OK")
    assert b"partial" in raw
    assert not raw.endswith(b"0\r\n\r\n")  # the chunked body was never terminated


async def test_app_returning_without_response_is_500():
    async def app(scope, receive, send):
        return

    async with serving(app) as server, httpx.AsyncClient() as client:
        response = await client.get(server.bound_addresses[0])
    assert response.status_code == 500


async def test_crlf_in_response_header_is_refused_with_500(tmp_path):
    log = tmp_path / "error.log"

    async def app(scope, receive, send):
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"x-evil", b"a\r\nset-cookie: pwned=1")],
            }
        )
        await send({"type": "http.response.body", "body": b"ok"})

    async with serving(app, error_logfile=str(log)) as server:
        raw = await raw_exchange(server, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 500")
    assert b"pwned" not in raw
    assert "control character" in log.read_text()


async def test_client_disconnect_mid_body_reaches_app_and_send_raises():
    seen = []
    done = anyio.Event()

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        try:
            while True:
                message = await receive()
                seen.append(message["type"])
                if message["type"] == "http.disconnect":
                    break
            try:
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": b"late"})
            except OSError as exc:
                seen.append(type(exc).__name__)
        finally:
            done.set()

    async with serving(app) as server:
        host, port = host_port(server)
        async with await anyio.connect_tcp(host, port) as stream:
            await stream.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly-part")
            await anyio.sleep(0.1)
        with anyio.fail_after(5):
            await done.wait()
    assert seen == ["http.request", "http.disconnect", "ClientDisconnected"]


async def test_scope_contents():
    scopes = []

    async def lifespan_app(scope, receive, send):
        if scope["type"] == "lifespan":
            message = await receive()
            scope["state"]["db"] = "connected"
            await send({"type": "lifespan.startup.complete"})
            message = await receive()
            assert message["type"] == "lifespan.shutdown"
            await send({"type": "lifespan.shutdown.complete"})
            return
        scopes.append(scope)
        await hello(scope, receive, send)

    async with serving(lifespan_app, root_path="/api") as server:
        async with httpx.AsyncClient() as client:
            await client.get(server.bound_addresses[0] + "/caf%C3%A9/a%2Fb?x=1&y=%20")
        host, port = host_port(server)
    scope = scopes[0]
    assert scope["type"] == "http"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.5"}
    assert scope["http_version"] == "1.1"
    assert scope["method"] == "GET"
    assert scope["scheme"] == "http"
    assert scope["path"] == "/api/café/a/b"
    assert scope["raw_path"] == b"/api/caf%C3%A9/a%2Fb"
    assert scope["query_string"] == b"x=1&y=%20"
    assert scope["root_path"] == "/api"
    assert (b"host", f"{host}:{port}".encode()) in scope["headers"]
    assert all(name == name.lower() for name, _ in scope["headers"])
    assert scope["client"][0] == "127.0.0.1"
    assert scope["server"] == (host, port)
    assert scope["state"] == {"db": "connected"}
    assert scope["extensions"] == {"http.response.early_hint": {}}


async def test_lifespan_startup_failure_raises():
    async def app(scope, receive, send):
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})

    with pytest.raises(LifespanFailure, match="no database"):
        async with serving(app):
            pass


async def test_lifespan_auto_tolerates_apps_without_lifespan():
    async with serving(hello, lifespan="auto") as server, httpx.AsyncClient() as client:
        assert (await client.get(server.bound_addresses[0])).status_code == 200


async def test_lifespan_on_requires_support():
    with pytest.raises(LifespanFailure):
        async with serving(hello, lifespan="on"):
            pass


async def test_keep_alive_timeout_closes_idle_connection():
    async with serving(hello, keep_alive=0.3) as server:
        host, port = host_port(server)
        async with await anyio.connect_tcp(host, port) as stream:
            await stream.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await read_until(stream, b"hello /")
            start = anyio.current_time()
            rest = await read_until_closed(stream, limit=3)
            assert rest == b""
            assert 0.2 < anyio.current_time() - start < 2.5


async def test_slow_header_gets_408():
    async with serving(hello, header_timeout=0.3) as server:
        host, port = host_port(server)
        async with await anyio.connect_tcp(host, port) as stream:
            await stream.send(b"GET / HTTP/1.1\r\nHost")
            raw = await read_until_closed(stream, limit=3)
    assert raw.startswith(b"HTTP/1.1 408")


async def test_max_requests_per_connection():
    async with serving(hello, keep_alive_max_requests=2) as server:
        raw = await raw_exchange(server, b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
    assert raw.count(b"HTTP/1.1 200") == 2
    assert raw.lower().count(b"connection: close") == 1


async def test_http10_closes_after_response():
    async with serving(hello) as server:
        host, port = host_port(server)
        async with await anyio.connect_tcp(host, port) as stream:
            await stream.send(b"GET / HTTP/1.0\r\n\r\n")
            raw = await read_until_closed(stream)
    assert raw.startswith(b"HTTP/1.1 200 OK")
    assert raw.endswith(b"hello /")


async def test_unix_socket(tmp_path):
    path = tmp_path / "s.sock"
    async with serving(hello, bind=[f"unix:{path}"]) as server:
        assert server.bound_addresses == [f"unix:{path}"]
        transport = httpx.AsyncHTTPTransport(uds=str(path))
        async with httpx.AsyncClient(transport=transport) as client:
            response = await client.get("http://localhost/u")
    assert response.text == "hello /u"
    assert not path.exists()


async def test_ipv6_and_several_binds():
    async with serving(hello, bind=["[::1]:0", "127.0.0.1:0"]) as server:
        assert server.bound_addresses[0].startswith("http://[::1]:")
        async with httpx.AsyncClient() as client:
            for url in server.bound_addresses:
                assert (await client.get(url)).status_code == 200


async def test_graceful_shutdown_finishes_in_flight_request():
    started = anyio.Event()

    async def slow(scope, receive, send):
        if scope["type"] != "http":
            return
        started.set()
        await anyio.sleep(0.5)
        await hello(scope, receive, send)

    result = {}

    async def request(url):
        async with httpx.AsyncClient() as client:
            result["response"] = await client.get(url)

    async with anyio.create_task_group() as tg:
        async with serving(slow, graceful_timeout=5) as server:
            tg.start_soon(request, server.bound_addresses[0])
            await started.wait()
            begin = anyio.current_time()
        elapsed = anyio.current_time() - begin
    assert result["response"].status_code == 200
    assert elapsed < 3


async def test_graceful_timeout_cancels_what_is_left():
    started = anyio.Event()
    cancelled = []

    async def stuck(scope, receive, send):
        if scope["type"] != "http":
            return
        started.set()
        try:
            await anyio.sleep(60)
        except BaseException:
            cancelled.append(True)
            raise

    async def request(url):
        async with httpx.AsyncClient() as client:
            with pytest.raises(httpx.HTTPError):
                await client.get(url)

    async with anyio.create_task_group() as tg:
        async with serving(stuck, graceful_timeout=0.5) as server:
            tg.start_soon(request, server.bound_addresses[0])
            await started.wait()
            begin = anyio.current_time()
        elapsed = anyio.current_time() - begin
    assert cancelled == [True]
    assert elapsed < 3


async def test_access_log_line(tmp_path):
    log = tmp_path / "access.log"
    fmt = '%(h)s "%(r)s" %(s)s %(b)s %(D)s "%({content-type}o)s" "%(a)s"'
    client = httpx.AsyncClient(headers={"user-agent": "probe/1"})
    async with serving(hello, access_logfile=str(log), access_logformat=fmt) as server, client:
        await client.get(server.bound_addresses[0] + "/logged?q=1")
    line = log.read_text().strip()
    host, request, rest = line.split('"', 2)[0], line.split('"')[1], line.split('"', 2)[2]
    assert host.strip() == "127.0.0.1"
    assert request == "GET /logged?q=1 HTTP/1.1"
    status, size, micros, _ = rest.split(" ", 4)[1:]
    assert (status, size) == ("200", "13")
    assert int(micros) > 0
    assert '"text/plain"' in line
    assert line.endswith('"probe/1"')


async def test_idle_keep_alive_connection_closed_promptly_on_shutdown():
    async with serving(hello, graceful_timeout=10, keep_alive=30) as server:
        host, port = host_port(server)
        stream = await anyio.connect_tcp(host, port)
        await stream.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await read_until(stream, b"hello /")
        begin = anyio.current_time()
    assert anyio.current_time() - begin < 2
    assert await read_until_closed(stream, limit=2) == b""
    await stream.aclose()


async def test_inherited_fd_bind():
    import socket

    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    fd = sock.detach()  # as a supervisor would: the server owns the descriptor now
    async with serving(hello, bind=[f"fd://{fd}"]) as server:
        assert server.bound_addresses == [f"http://127.0.0.1:{port}"]
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{port}/fd")
        assert response.text == "hello /fd"


async def test_send_waits_while_the_client_does_not_read():
    sent = []
    chunk = b"x" * (1024 * 1024)

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(64):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            sent.append(len(chunk))
        await send({"type": "http.response.body", "body": b""})

    async with serving(app) as server:
        host, port = host_port(server)
        async with await anyio.connect_tcp(host, port) as stream:
            await stream.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await anyio.sleep(0.5)
            # Not reading: kernel buffers plus one chunk at most, far from all 64 MiB.
            assert sum(sent) < 16 * len(chunk)
            received = 0
            with anyio.fail_after(10):
                while sum(sent) < 64 * len(chunk) or received < 64 * len(chunk):
                    received += len(await stream.receive(1 << 20))
    assert sum(sent) == 64 * len(chunk)


async def test_server_exits_cleanly_without_a_checkpoint_inside():
    async with serving(hello) as server:
        assert server.bound_addresses


async def test_a_client_that_stops_reading_is_cut_off_after_send_timeout():
    outcome = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            for _ in range(1000):  # 1 GB if nothing stopped it
                await send(
                    {"type": "http.response.body", "body": b"x" * 1_000_000, "more_body": True}
                )
        except OSError:
            outcome.append(anyio.current_time())

    async with serving(app, send_timeout=0.5) as server:
        host, port = host_port(server)
        async with await anyio.connect_tcp(host, port) as stream:
            await stream.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            begin = anyio.current_time()
            with anyio.fail_after(10):
                while not outcome:
                    await anyio.sleep(0.05)
    assert 0.4 < outcome[0] - begin < 5
