"""HTTP/3 against an independent QUIC stack: Debian's ngtcp2 example client (`gtlsclient`,
package ngtcp2-client, installed by scripts/install-tools.sh), on asyncio and trio.

Scenarios: a GET whose body is saved and compared, 50 concurrent streams on one connection
(the app holds every response until all 50 requests are in, so a client or server that
serialized them would time out), a key update (RFC 9001 6), and a client address change with
path validation, plus NAT rebinding where the client moves without validating (RFC 9000 9).
gtlsclient prints what happened on stderr/stdout; the checks read that and what the app saw.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import anyio
import pytest

from .h3client import quic_port
from .support import serving

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(
        shutil.which("gtlsclient") is None,
        reason="gtlsclient is not installed (Debian package ngtcp2-client)",
    ),
]

BODY = b"Hello from multicorn over HTTP/3\n"
CONCURRENT = 50


class App:
    """Says hello, records each request's client address, and holds /together responses
    until `CONCURRENT` of them are in flight."""

    def __init__(self) -> None:
        self.clients: list[tuple[str, int]] = []
        self.versions: set[str] = set()
        self.waiting = 0
        self.all_in = anyio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        self.clients.append(tuple(scope["client"]))
        self.versions.add(scope["http_version"])
        if scope["path"] == "/together":
            self.waiting += 1
            if self.waiting == CONCURRENT:
                self.all_in.set()
            with anyio.fail_after(10):
                await self.all_in.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": BODY})


async def gtlsclient(port: int, *args: str, path: str = "/", limit: float = 20.0) -> str:
    with anyio.fail_after(limit):
        result = await anyio.run_process(
            [
                "gtlsclient",
                "--exit-on-all-streams-close",
                "--no-quic-dump",
                "--timeout=10s",
                *args,
                "127.0.0.1",
                str(port),
                f"https://localhost:{port}{path}",
            ],
            check=False,
        )
    output = (result.stdout + result.stderr).decode(errors="replace")
    assert result.returncode == 0, output[-3000:]
    return output


def settings(certs: Any) -> dict[str, Any]:
    return {
        "bind": ["127.0.0.1:0"],
        "quic_bind": ["127.0.0.1:0"],
        "certfile": certs.cert_path,
        "lifespan": "off",
    }


async def test_get(certs, tmp_path: Path):
    app = App()
    async with serving(app, **settings(certs)) as server:
        port = quic_port(server)
        output = await gtlsclient(port, "--no-http-dump", f"--download={tmp_path}")
    assert "[:status: 200]" in output
    assert (tmp_path / "index.html").read_bytes() == BODY
    assert app.versions == {"3"}


async def test_fifty_concurrent_streams(certs):
    app = App()
    async with serving(app, **settings(certs)) as server:
        port = quic_port(server)
        output = await gtlsclient(port, "--no-http-dump", "-n", str(CONCURRENT), path="/together")
    assert output.count("[:status: 200]") == CONCURRENT
    # 0x100 is H3_NO_ERROR: every stream ended cleanly.
    assert output.count("closed with error code 256") == CONCURRENT
    assert app.waiting == CONCURRENT


async def test_key_update(certs):
    app = App()
    async with serving(app, **settings(certs)) as server:
        port = quic_port(server)
        # The request goes out after the key update, in packets under the new keys.
        output = await gtlsclient(
            port, "--no-http-dump", "--key-update=10ms", "--delay-stream=100ms"
        )
    assert "Initiate key update" in output
    assert "key update confirmed" in output
    assert "[:status: 200]" in output


@pytest.mark.parametrize("nat_rebinding", [False, True], ids=["migration", "nat-rebinding"])
async def test_client_address_change(certs, nat_rebinding: bool):
    app = App()
    extra = ["--nat-rebinding"] if nat_rebinding else []
    async with serving(app, **settings(certs)) as server:
        port = quic_port(server)
        output = await gtlsclient(
            port, "--no-http-dump", "--change-local-addr=10ms", "--delay-stream=100ms", *extra
        )
    assert "Local address is now" in output
    assert "[:status: 200]" in output
    # The request was sent from the new address, and the scope says so.
    new_port = int(output.split("Local address is now", 1)[1].split("]:", 1)[1].split()[0])
    assert app.clients == [("127.0.0.1", new_port)]
    if not nat_rebinding:
        assert "Path validation" in output and "succeeded" in output
