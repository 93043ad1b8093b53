"""`Transport.abort()` drops the socket and nothing else, on asyncio and on trio alike.

The slow-read cut-off aborts a connection whose client stopped reading, but leaves the app task
running so that its next `send()` raises: an app that catches that and then awaits its own
cleanup must be allowed to finish, whichever runtime serves it.
"""

from __future__ import annotations

import anyio
import pytest

from .support import host_port, serving

pytestmark = pytest.mark.anyio


async def test_app_cleanup_after_slow_read_cut_off_runs_to_completion():
    events: list[str] = []

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
            events.append("disconnect seen")
            await anyio.sleep(0.2)  # cleanup that awaits, e.g. releasing a pooled resource
            events.append("cleanup finished")

    async with serving(app, send_timeout=0.3) as server:
        host, port = host_port(server)
        async with await anyio.connect_tcp(host, port) as stream:
            await stream.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            # Never read: the server's buffers fill and the cut-off fires after send_timeout.
            with anyio.move_on_after(10):
                while "cleanup finished" not in events:
                    await anyio.sleep(0.05)
    assert events == ["disconnect seen", "cleanup finished"]
