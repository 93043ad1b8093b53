"""Memory bounds, one test per queue: a client tries to make the server queue without end
(request bodies an application does not read, responses a client does not read, pipelined
requests, HTTP/2 streams, WebSocket messages), and the server's RSS must stay flat.

The server is a subprocess (tests.e2e.apps:hoarder) so that its RSS is its own, as in
test_memory.py; the client runs here, on the anyio backend under test, which is also the
server's worker class. Each client pushes for PUSH_SECONDS (or until it has pushed its budget),
then the server is watched a little longer; its RSS peak may exceed the baseline taken after a
warm-up exchange by at most MAX_GROWTH, far below what the clients try to push (64 MiB or
more). The bounds themselves are documented in docs/security.md.

A slow-reading HTTP/1.1 upload of 256 MiB is test_memory.py's; here the HTTP/1.1 application
does not read at all.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import anyio
import anyio.abc
import h2.events
import h2.settings
import hpack
import psutil
import pytest

from .h2client import H2Client
from .h3client import H3Client
from .process import multicorn_process
from .support import free_port, read_until
from .test_websocket_h2 import open_websocket
from .wsclient import BINARY, MASK, handshake

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024
PUSH_SECONDS = 2.0
SETTLE_SECONDS = 0.5
# Allocator noise, interpreter warm-up of the first streams, a few 64 KiB reads in flight: not
# the megabytes the clients push.
MAX_GROWTH = 20 * MiB


@dataclass
class Served:
    process: psutil.Process
    host: str
    port: int
    baseline: int = 0
    peak: int = 0

    def rss(self) -> int:
        value: int = self.process.memory_info().rss
        self.peak = max(self.peak, value)
        return value

    def mark(self) -> None:
        """Take the baseline (after a warm-up exchange)."""
        self.baseline = self.peak = self.rss()

    @property
    def growth(self) -> int:
        return self.peak - self.baseline

    def check(self, pushed: int) -> None:
        print(f"pushed {pushed / MiB:.1f} MiB, server RSS grew {self.growth / MiB:.1f} MiB")
        assert self.growth < MAX_GROWTH, (
            f"server RSS grew by {self.growth / MiB:.1f} MiB while the client pushed "
            f"{pushed / MiB:.1f} MiB"
        )


@contextlib.contextmanager
def hoarder(backend: str, *extra: str) -> Iterator[Served]:
    args = ("tests.e2e.apps:hoarder", "-b", "127.0.0.1:0", "-k", backend, *extra)
    with multicorn_process(*args) as (proc, url):
        host, port = url.split("://", 1)[1].rsplit(":", 1)
        yield Served(psutil.Process(proc.pid), host, int(port))


@contextlib.asynccontextmanager
async def sampling(served: Served) -> AsyncIterator[None]:
    """Sample the server's RSS every 20 ms while the block runs, and SETTLE_SECONDS after."""

    async def sample() -> None:
        while True:
            served.rss()
            await anyio.sleep(0.02)

    async with anyio.create_task_group() as tg:
        tg.start_soon(sample)
        yield
        await anyio.sleep(SETTLE_SECONDS)
        tg.cancel_scope.cancel()


async def push(stream: anyio.abc.ByteStream, data: bytes, budget: int) -> int:
    """Send `data` again and again until `budget` bytes or PUSH_SECONDS; the bytes sent."""
    sent = 0
    with anyio.move_on_after(PUSH_SECONDS):
        with contextlib.suppress(anyio.BrokenResourceError, ConnectionError):
            while sent < budget:
                await stream.send(data)
                sent += len(data)
    return sent


async def warm_up_http11(served: Served) -> None:
    async with await anyio.connect_tcp(served.host, served.port) as stream:
        await stream.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await read_until(stream, b"y" * 16)
    served.mark()


# ---- inbound body ---------------------------------------------------------------------------


async def test_http11_upload_to_an_app_that_does_not_read(anyio_backend: str) -> None:
    budget = 128 * MiB
    with hoarder(anyio_backend) as served:
        await warm_up_http11(served)
        stream = await anyio.connect_tcp(served.host, served.port)
        async with stream, sampling(served):
            await stream.send(
                b"POST /noread HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % budget
            )
            pushed = await push(stream, b"\0" * MiB, budget)
        served.check(pushed)
        assert pushed < budget, "nothing held the client back"


def _data_frame(stream_id: int, payload: bytes, *, end_stream: bool = False) -> bytes:
    head = len(payload).to_bytes(3, "big") + bytes([0x0, 0x1 if end_stream else 0])
    return head + struct.pack("!I", stream_id) + payload


def _headers_frame(encoder: hpack.Encoder, stream_id: int, headers: list) -> bytes:
    block = encoder.encode(headers)
    head = len(block).to_bytes(3, "big") + bytes([0x1, 0x4])  # HEADERS, END_HEADERS
    return head + struct.pack("!I", stream_id) + block


async def _h2_warm_up(served: Served) -> None:
    client = await H2Client.connect(served.host, served.port)
    stream_id = await client.request("/")
    await client.response(stream_id)
    await client.aclose()
    served.mark()


async def test_http2_upload_to_an_app_that_does_not_read(anyio_backend: str) -> None:
    """DATA frames past every window: the server must not buffer what it never granted."""
    budget = 64 * MiB
    with hoarder(anyio_backend) as served:
        await _h2_warm_up(served)
        client = await H2Client.connect(served.host, served.port)
        headers = client.request_headers("/noread", "POST")
        async with sampling(served):
            await client.stream.send(_headers_frame(hpack.Encoder(), 1, headers))
            pushed = await push(client.stream, _data_frame(1, b"\0" * 16384), budget)
        await client.aclose()
        served.check(pushed)
        assert pushed < budget, "nothing held the client back"


async def test_http2_upload_within_the_windows(anyio_backend: str) -> None:
    """A client that keeps to flow control can put at most the windows' worth in the server."""
    with hoarder(anyio_backend) as served:
        await _h2_warm_up(served)
        client = await H2Client.connect(served.host, served.port)
        pushed = 0
        async with sampling(served):
            await client.receive()  # the server's SETTINGS
            ids = []
            for _ in range(50):
                ids.append(client.conn.get_next_available_stream_id())
                client.conn.send_headers(ids[-1], client.request_headers("/noread", "POST"))
            with anyio.move_on_after(PUSH_SECONDS):
                while True:
                    for stream_id in ids:
                        window = client.conn.local_flow_control_window(stream_id)
                        size = min(window, client.conn.max_outbound_frame_size)
                        if size > 0:
                            client.conn.send_data(stream_id, b"\0" * size)
                            pushed += size
                    await client.flush()
                    await client.receive(limit=PUSH_SECONDS)
        await client.aclose()
        served.check(pushed)
        # 1 MiB of connection window and the initial 64 KiB: what the server granted.
        assert pushed <= 2 * MiB


async def test_http3_upload_to_an_app_that_does_not_read(anyio_backend: str, certs) -> None:
    budget = 64 * MiB
    port = free_port()
    extra = ("--certfile", certs.cert_path, "--quic-bind", f"127.0.0.1:{port}")
    with hoarder(anyio_backend, *extra) as served:
        async with H3Client.connect("127.0.0.1", port, cafile=certs.ca_path) as client:
            await client.request("/")
            served.mark()
            async with sampling(served):
                streams = []
                for _ in range(8):
                    stream = await client.open_stream(
                        client.request_headers("/noread", "POST"), end_stream=False
                    )
                    streams.append(stream)
                    await client.send_data(stream, b"\0" * (budget // 8), end_stream=True)
                await anyio.sleep(PUSH_SECONDS)
            # What left the client: its send offsets, capped by the server's MAX_DATA.
            sent = sum(client.quic._streams[s.stream_id].sender._buffer_start for s in streams)
        served.check(sent)
        assert sent < budget


# ---- outbound -------------------------------------------------------------------------------


async def test_http11_response_to_a_client_that_does_not_read(anyio_backend: str) -> None:
    with hoarder(anyio_backend) as served:
        await warm_up_http11(served)
        stream = await anyio.connect_tcp(served.host, served.port)
        async with stream, sampling(served):
            await stream.send(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
            await anyio.sleep(PUSH_SECONDS)
        # The application tries to send 256 MiB.
        served.check(0)


async def test_http2_responses_to_a_client_that_does_not_read(anyio_backend: str) -> None:
    """The client opens every window as wide as it goes, then stops reading."""
    big = 2**31 - 1
    with hoarder(anyio_backend) as served:
        await _h2_warm_up(served)
        client = await H2Client.connect(
            served.host, served.port, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: big}
        )
        client.conn.increment_flow_control_window(big - 65535)
        await client.flush()
        await client.receive()
        async with sampling(served):
            for _ in range(50):
                await client.request("/stream")
            await anyio.sleep(PUSH_SECONDS)
        await client.aclose()
        # 50 applications try to send 256 MiB each.
        served.check(0)


# ---- pipelined requests ---------------------------------------------------------------------


async def test_pipelined_requests_from_a_client_that_does_not_read(anyio_backend: str) -> None:
    budget = 64 * MiB
    request = b"GET /p HTTP/1.1\r\nHost: x\r\n\r\n"
    batch = request * 2048
    # With the default 1000 requests a connection would close early; let it run.
    with hoarder(anyio_backend, "--keep-alive-max-requests", "100000000") as served:
        await warm_up_http11(served)
        stream = await anyio.connect_tcp(served.host, served.port)
        async with stream, sampling(served):
            pushed = await push(stream, batch, budget)
        served.check(pushed)
        print(f"{pushed // len(request)} requests")
        assert pushed < budget, "nothing held the client back"


# ---- HTTP/2 streams -------------------------------------------------------------------------


async def test_http2_streams_beyond_the_limit(anyio_backend: str) -> None:
    """HEADERS and a DATA frame on stream after stream, far past h2_max_concurrent_streams,
    without waiting for the server's SETTINGS or reading its answers."""
    count = 20000
    with hoarder(anyio_backend) as served:
        await _h2_warm_up(served)
        client = await H2Client.connect(served.host, served.port)
        encoder = hpack.Encoder()
        headers = client.request_headers("/noread", "POST")
        body = b"\0" * 4096
        pushed = 0
        async with sampling(served):
            with anyio.move_on_after(PUSH_SECONDS):
                with contextlib.suppress(anyio.BrokenResourceError, ConnectionError):
                    for stream_id in range(1, 2 * count, 2):
                        data = _headers_frame(encoder, stream_id, headers)
                        data += _data_frame(stream_id, body)
                        await client.stream.send(data)
                        pushed += len(data)
        await client.aclose()
        served.check(pushed)


# ---- WebSocket messages ---------------------------------------------------------------------


def _binary_frame(size: int) -> bytes:
    """A masked binary frame of `size` zero bytes (masked, they are MASK repeated)."""
    head = bytes([0x80 | BINARY, 0x80 | 127]) + struct.pack("!Q", size)
    return head + MASK + MASK * (size // 4)


async def _flood_websocket(served: Served, message: int, budget: int) -> int:
    async with await anyio.connect_tcp(served.host, served.port) as stream:
        await stream.send(handshake("/ws"))
        await read_until(stream, b"\r\n\r\n")
        async with sampling(served):
            return await push(stream, _binary_frame(message), budget)


async def test_websocket_messages_to_an_app_that_does_not_receive(anyio_backend: str) -> None:
    budget = 128 * MiB
    with hoarder(anyio_backend) as served:
        await warm_up_http11(served)
        pushed = await _flood_websocket(served, 64 * 1024, budget)
        served.check(pushed)
        assert pushed < budget, "nothing held the client back"


async def test_websocket_big_messages_to_an_app_that_does_not_receive(anyio_backend: str) -> None:
    """The queue is bounded in bytes too: about websocket_max_message_size (one message may
    overshoot it), besides websocket_max_queue messages. Here 2 MiB messages and an 8 MiB
    message limit: counted in messages alone, 32 of them would be 64 MiB."""
    budget = 256 * MiB
    size = 2 * MiB
    limit = 8 * MiB
    with hoarder(anyio_backend, "--websocket-max-message-size", str(limit)) as served:
        await warm_up_http11(served)
        pushed = await _flood_websocket(served, size, budget)
        print(f"pushed {pushed / MiB:.1f} MiB, server RSS grew {served.growth / MiB:.1f} MiB")
        # Queued: the limit plus one message; then a message being assembled and what is in
        # flight, and copies the allocator has not given back.
        assert served.growth < 2 * limit + 4 * size
        assert pushed < budget, "nothing held the client back"


async def test_websocket_over_http2_messages_to_an_app_that_does_not_receive(
    anyio_backend: str,
) -> None:
    pushed = 0
    message = _binary_frame(64 * 1024)
    with hoarder(anyio_backend) as served:
        await _h2_warm_up(served)
        client = await H2Client.connect(served.host, served.port)
        await client.receive_until(lambda e: isinstance(e, h2.events.RemoteSettingsChanged))
        headers, websocket = await open_websocket(client, "http")
        assert headers[b":status"] == b"200", headers
        async with sampling(served):
            with anyio.move_on_after(PUSH_SECONDS):
                while pushed < 128 * MiB:
                    await websocket.send_raw(message, limit=2 * PUSH_SECONDS)
                    pushed += len(message)
        await client.aclose()
        served.check(pushed)
        # The stream window (64 KiB) and 32 queued messages of 64 KiB: about 2 MiB.
        assert pushed < 4 * MiB
