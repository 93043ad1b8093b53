"""Applications the subprocess tests start by import string (tests.e2e.apps:NAME)."""

from __future__ import annotations

import asyncio

import sniffio


async def _sleep(seconds: float) -> None:
    if sniffio.current_async_library() == "trio":
        import trio

        await trio.sleep(seconds)
    else:
        await asyncio.sleep(seconds)


def _announce(text: str) -> None:
    """A readiness signal for the test driving this server's process (it reads our stdout)."""
    print(f"[test-app] {text}", flush=True)


async def slow(scope, receive, send):
    """GET /slow takes 1 s; GET /stuck never finishes; anything else answers at once. Each
    announces on stdout when it is inside its sleep."""
    if scope["type"] != "http":
        return
    _announce(f"sleeping in {scope['path']}")
    if scope["path"] == "/slow":
        await _sleep(1.0)
    elif scope["path"] == "/stuck":
        await _sleep(3600)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"done " + scope["path"].encode()})


async def slow_reader(scope, receive, send):
    """Reads the request body at about 100 MiB/s (slower than loopback) and answers with the
    number of bytes it saw."""
    if scope["type"] != "http":
        return
    total = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        total += len(message["body"])
        more = message["more_body"]
        await _sleep(len(message["body"]) / (100 * 1024 * 1024))
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(total).encode()})


async def failing_startup(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "database unreachable"})


def factory():
    return slow


async def hoarder(scope, receive, send):
    """For tests/e2e/test_queue_bounds.py, each path trying to make the server queue more:
    /noread never reads its body; /stream sends 64 KiB chunks (256 MiB in all) to a client that
    need not read them; anything else answers 16 KiB at once (pipelining). A WebSocket is
    accepted and then never received from."""
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        await _sleep(3600)
        return
    if scope["type"] != "http":
        return
    if scope["path"] == "/noread":
        await _sleep(3600)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    if scope["path"] == "/stream":
        chunk = b"x" * 65536
        for _ in range(4096):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"y" * 16384})


async def identity(scope, receive, send):
    """Answers with the process's effective uid and gid and what it sees of the LISTEN_*
    variables, as JSON, and an `x-served-by` response header (for access log atoms)."""
    import json
    import os

    if scope["type"] != "http":
        return
    body = json.dumps(
        {
            "euid": os.geteuid(),
            "egid": os.getegid(),
            "listen": {k: v for k, v in os.environ.items() if k.startswith("LISTEN_")},
        }
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"x-served-by", b"multicorn-test")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
