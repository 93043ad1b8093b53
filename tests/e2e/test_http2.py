"""TLS and HTTP/2 end to end, on asyncio and trio: httpx, nghttp, curl and a raw h2 client."""

from __future__ import annotations

import shutil

import anyio
import anyio.streams.tls
import h2.connection
import h2.errors
import h2.events
import h2.settings
import httpx
import pytest

from .h2client import H2Client
from .support import host_port, read_until_closed, serving

pytestmark = pytest.mark.anyio

needs_nghttp = pytest.mark.skipif(shutil.which("nghttp") is None, reason="nghttp2-client missing")


async def recorder_app(scope, receive, send):
    """Answers with the scope fields the tests check, and records each scope."""
    if scope["type"] != "http":
        return
    recorder_app.scopes.append(scope)
    body = b""
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body += message.get("body", b"")
        more = message.get("more_body", False)
    text = f"{scope['http_version']} {scope['scheme']} {scope['path']} {len(body)}"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": text.encode()})


recorder_app.scopes = []


def tls_settings(certs, **extra):
    return {"certfile": certs.cert_path, **extra}


async def test_http2_over_tls_with_httpx(certs):
    recorder_app.scopes.clear()
    async with serving(recorder_app, **tls_settings(certs)) as server:
        url = server.bound_addresses[0]
        assert url.startswith("https://127.0.0.1:")
        async with httpx.AsyncClient(http2=True, verify=certs.verify()) as client:
            response = await client.post(url + "/p", content=b"x" * 100_000)
    assert response.http_version == "HTTP/2"
    assert response.text == "2 https /p 100000"
    scope = recorder_app.scopes[0]
    tls = scope["extensions"]["tls"]
    assert tls["tls_version"] in (0x0303, 0x0304)
    assert isinstance(tls["cipher_suite"], int)
    assert tls["server_cert"].startswith("-----BEGIN CERTIFICATE-----")
    assert tls["client_cert_chain"] == []
    assert tls["client_cert_name"] is None
    assert "http.response.push" in scope["extensions"]
    assert scope["headers"][0][0] == b"host"


async def test_alpn_http11_and_insecure_bind_side_by_side(certs):
    recorder_app.scopes.clear()
    settings = tls_settings(certs, insecure_bind=["127.0.0.1:0"])
    async with serving(recorder_app, **settings) as server:
        secure, plain = server.bound_addresses
        assert secure.startswith("https://") and plain.startswith("http://")
        async with httpx.AsyncClient(verify=certs.verify()) as client:
            over_tls = await client.get(secure + "/a")
            cleartext = await client.get(plain + "/b")
    assert over_tls.http_version == "HTTP/1.1"
    assert over_tls.text == "1.1 https /a 0"
    assert cleartext.text == "1.1 http /b 0"
    assert "tls" in recorder_app.scopes[0]["extensions"]
    assert "tls" not in recorder_app.scopes[1]["extensions"]


async def test_client_certificate_reaches_the_tls_extension(certs):
    recorder_app.scopes.clear()
    settings = tls_settings(certs, ca_certs=certs.ca_path, verify_mode="required")
    async with serving(recorder_app, **settings) as server:
        context = certs.client_context(alpn=["h2"], client_cert=True)
        async with httpx.AsyncClient(http2=True, verify=context) as client:
            response = await client.get(server.bound_addresses[0])
        assert response.status_code == 200
        # Without a certificate the handshake fails, and the server keeps serving.
        async with httpx.AsyncClient(verify=certs.client_context(alpn=["h2"])) as client:
            with pytest.raises(httpx.HTTPError):
                await client.get(server.bound_addresses[0])
        async with httpx.AsyncClient(http2=True, verify=context) as client:
            assert (await client.get(server.bound_addresses[0])).status_code == 200
    tls = recorder_app.scopes[0]["extensions"]["tls"]
    assert tls["client_cert_name"] is not None and "CN=alice" in tls["client_cert_name"]
    assert tls["client_cert_chain"][0].startswith("-----BEGIN CERTIFICATE-----")
    assert tls["client_cert_error"] is None


async def test_garbage_and_slow_handshakes_cost_nothing(certs):
    settings = tls_settings(certs, ssl_handshake_timeout=0.5)
    async with serving(recorder_app, **settings) as server:
        host, port = host_port(server)
        async with await anyio.connect_tcp(host, port) as stream:
            await stream.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # not TLS
            await read_until_closed(stream, limit=3)
        async with await anyio.connect_tcp(host, port) as stream:
            begin = anyio.current_time()
            await read_until_closed(stream, limit=3)  # says nothing: cut off after 0.5 s
            assert anyio.current_time() - begin < 2.5
        async with httpx.AsyncClient(http2=True, verify=certs.verify()) as client:
            assert (await client.get(server.bound_addresses[0])).status_code == 200


async def test_h2c_prior_knowledge_with_httpx():
    client = httpx.AsyncClient(http1=False, http2=True)
    async with serving(recorder_app) as server, client:
        response = await client.get(server.bound_addresses[0] + "/pk")
    assert response.http_version == "HTTP/2"
    assert response.text == "2 http /pk 0"


async def test_h2c_off_refuses_the_preface():
    client = httpx.AsyncClient(http1=False, http2=True)
    async with serving(recorder_app, h2c="off") as server, client:
        with pytest.raises(httpx.HTTPError):
            await client.get(server.bound_addresses[0])


async def test_h2c_upgrade_keeps_the_request_body():
    async with serving(recorder_app) as server:
        host, port = host_port(server)
        stream = await anyio.connect_tcp(host, port)
        client = H2Client(stream)
        client.conn = h2.connection.H2Connection(config=client.conn.config)
        settings = client.conn.initiate_upgrade_connection()
        body = b"upgrade-body" * 100
        await stream.send(
            b"POST /up HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: " + settings + b"\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        data = b""
        with anyio.fail_after(5):
            while b"\r\n\r\n" not in data:
                data += await stream.receive()
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 Switching Protocols")
        client.events.extend(client.conn.receive_data(rest))
        await client.flush()
        headers, text = await client.response(1)
        await client.aclose()
    assert headers[b":status"] == b"200"
    assert text == b"2 http /up 1200"


@needs_nghttp
@pytest.mark.parametrize("mode", ["tls", "prior-knowledge", "upgrade"])
async def test_nghttp(certs, mode, tmp_path):
    settings = tls_settings(certs) if mode == "tls" else {}
    body = tmp_path / "body"
    body.write_bytes(b"n" * 5000)
    async with serving(recorder_app, **settings) as server:
        url = server.bound_addresses[0] + "/ng"
        args = ["nghttp", "-d", str(body), url]
        if mode == "tls":
            args.insert(1, "--no-verify-peer")
        if mode == "upgrade":
            args.insert(1, "-u")
        result = await anyio.run_process(args, check=False)
    assert result.returncode == 0, result.stderr
    scheme = "https" if mode == "tls" else "http"
    assert result.stdout.endswith(f"2 {scheme} /ng 5000".encode())


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl missing")
async def test_curl_http2_over_tls(certs):
    async with serving(recorder_app, **tls_settings(certs)) as server:
        result = await anyio.run_process(
            [
                "curl",
                "-s",
                "--http2",
                "--cacert",
                certs.ca_path,
                "-w",
                " %{http_version}",
                server.bound_addresses[0] + "/c",
            ],
            check=False,
        )
    assert result.stdout == b"2 https /c 0 2"


async def test_one_hundred_concurrent_streams_finish_in_about_one_sleep(certs):
    async def sleepy(scope, receive, send):
        if scope["type"] != "http":
            return
        await anyio.sleep(0.5)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scope["path"].encode()})

    results = []
    async with serving(sleepy, **tls_settings(certs)) as server:
        url = server.bound_addresses[0]
        limits = httpx.Limits(max_connections=1)
        client = httpx.AsyncClient(http2=True, verify=certs.verify(), limits=limits)
        async with client:

            async def one(i):
                response = await client.get(f"{url}/{i}")
                results.append((response.http_version, response.text))

            begin = anyio.current_time()
            async with anyio.create_task_group() as tg:
                for i in range(100):
                    tg.start_soon(one, i)
            elapsed = anyio.current_time() - begin
    assert sorted(text for _, text in results) == sorted(f"/{i}" for i in range(100))
    assert {version for version, _ in results} == {"HTTP/2"}
    assert elapsed < 2.5, elapsed


async def test_trailers_early_hints_and_push(certs):
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        if scope["path"] == "/style.css":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"pushed"})
            return
        await send({"type": "http.response.early_hint", "links": [b"</style.css>; rel=preload"]})
        await send({"type": "http.response.push", "path": "/style.css", "headers": []})
        await send({"type": "http.response.start", "status": 200, "headers": [], "trailers": True})
        await send({"type": "http.response.body", "body": b"main"})
        await send(
            {
                "type": "http.response.trailers",
                "headers": [(b"x-checksum", b"abc")],
                "more_trailers": False,
            }
        )

    async with serving(app, **tls_settings(certs)) as server:
        host, port = host_port(server)
        client = await H2Client.connect(host, port, tls=certs.client_context(alpn=["h2"]))
        stream_id = await client.request("/", te="trailers")
        _headers, body = await client.response(stream_id)
        pushed = [e for e in client.events if isinstance(e, h2.events.PushedStreamReceived)]
        assert len(pushed) == 1
        _, pushed_body = await client.response(pushed[0].pushed_stream_id)
        await client.aclose()
    assert body == b"main"
    assert pushed_body == b"pushed"
    hints = [e for e in client.events if isinstance(e, h2.events.InformationalResponseReceived)]
    assert hints and dict(hints[0].headers)[b":status"] == b"103"
    trailers = [e for e in client.events if isinstance(e, h2.events.TrailersReceived)]
    assert dict(trailers[0].headers) == {b"x-checksum": b"abc"}


async def test_graceful_shutdown_sends_goaway_and_finishes_the_stream(certs):
    started = anyio.Event()

    async def slow(scope, receive, send):
        if scope["type"] != "http":
            return
        started.set()
        await anyio.sleep(0.5)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"finished"})

    server_cm = serving(slow, **tls_settings(certs), graceful_timeout=5)
    async with anyio.create_task_group() as tg, server_cm as server:
        host, port = host_port(server)
        client = await H2Client.connect(host, port, tls=certs.client_context(alpn=["h2"]))
        stream_id = await client.request("/")
        await started.wait()
        result = {}

        async def read_response():
            result["response"] = await client.response(stream_id)

        tg.start_soon(read_response)
    # Leaving `serving` drained the server; the response still arrived.
    _headers, body = result["response"]
    assert body == b"finished"
    goaways = [e for e in client.events if isinstance(e, h2.events.ConnectionTerminated)]
    assert goaways and goaways[0].error_code == h2.errors.ErrorCodes.NO_ERROR
    await client.aclose()


async def test_rapid_reset_is_cut_off_and_its_work_cancelled():
    running = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        running.append(1)
        try:
            await anyio.sleep(30)
        finally:
            running.pop()

    async with serving(app) as server:
        host, port = host_port(server)
        client = await H2Client.connect(host, port)
        sent = 0
        with anyio.fail_after(10):
            while not client.closed and sent < 5000:
                for _ in range(50):
                    stream_id = client.conn.get_next_available_stream_id()
                    client.conn.send_headers(stream_id, client.request_headers("/"))
                    client.conn.reset_stream(stream_id)
                    sent += 1
                try:
                    await client.flush()
                except (anyio.BrokenResourceError, OSError):
                    break
                with anyio.move_on_after(0.01):
                    await client.receive()
                if any(isinstance(e, h2.events.ConnectionTerminated) for e in client.events):
                    break
        await client.aclose()
        with anyio.fail_after(2):  # cancelled, not left to sleep out their 30 s
            while running:
                await anyio.sleep(0.05)
    terminated = [e for e in client.events if isinstance(e, h2.events.ConnectionTerminated)]
    assert terminated[0].error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    assert sent < 5000


async def test_zero_window_peer_times_out_and_memory_stays_bounded():
    sent_chunks = []
    outcome = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            for _ in range(1000):  # 1 GB if nothing held it back
                await send(
                    {"type": "http.response.body", "body": b"x" * 1_000_000, "more_body": True}
                )
                sent_chunks.append(1)
        except OSError:
            outcome.append("send raised")

    async with serving(app, send_timeout=0.5) as server:
        host, port = host_port(server)
        settings = {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0}
        client = await H2Client.connect(host, port, settings=settings)
        stream_id = await client.request("/")
        await client.response(stream_id, limit=5)
        await client.aclose()
    resets = [e for e in client.events if isinstance(e, h2.events.StreamReset)]
    assert resets and resets[0].error_code == h2.errors.ErrorCodes.CANCEL
    assert len(sent_chunks) <= 2
    assert outcome == ["send raised"]


async def test_protocol_error_gets_goaway_and_the_worker_keeps_serving():
    async with serving(recorder_app) as server:
        host, port = host_port(server)
        async with await anyio.connect_tcp(host, port) as stream:
            await stream.send(
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x08\x07" + b"\xff" * 30
            )
            data = await read_until_closed(stream, limit=3)
        assert b"\x07" in data  # a GOAWAY frame (type 7) came back before the close
        async with httpx.AsyncClient(http1=False, http2=True) as client:
            assert (await client.get(server.bound_addresses[0])).status_code == 200


async def test_alpn_protocols_can_be_restricted(certs):
    settings = tls_settings(certs, alpn_protocols=["http/1.1"])
    client = httpx.AsyncClient(http2=True, verify=certs.verify())
    async with serving(recorder_app, **settings) as server, client:
        response = await client.get(server.bound_addresses[0])
    assert response.http_version == "HTTP/1.1"


async def test_configured_settings_are_advertised_and_idle_connections_close():
    settings = {
        "h2_max_concurrent_streams": 7,
        "h2_max_header_list_size": 12345,
        "h2_max_inbound_frame_size": 32768,
        "h2_initial_window_size": 100_000,
        "keep_alive": 0.3,
    }
    async with serving(recorder_app, **settings) as server:
        host, port = host_port(server)
        client = await H2Client.connect(host, port)
        await client.receive_until(lambda e: isinstance(e, h2.events.RemoteSettingsChanged))
        remote = client.conn.remote_settings
        assert remote.max_concurrent_streams == 7
        assert remote.max_header_list_size == 12345
        assert remote.max_frame_size == 32768
        assert remote.initial_window_size == 100_000
        begin = anyio.current_time()
        await client.receive_until(lambda e: isinstance(e, h2.events.ConnectionTerminated), 3)
        assert anyio.current_time() - begin < 2
        await client.aclose()
