"""Applications the supervisor tests start by import string (tests.e2e.supervisor_apps:NAME)."""

from __future__ import annotations

import asyncio
import os
import time

import sniffio


async def _sleep(seconds: float) -> None:
    if sniffio.current_async_library() == "trio":
        import trio

        await trio.sleep(seconds)
    else:
        await asyncio.sleep(seconds)


async def app(scope, receive, send):
    """GET /pid answers the worker's process id; /slow answers after 1 s; /stuck never;
    /block blocks the event loop (time.sleep) for 60 s, as a hung application does. A
    WebSocket is accepted, told the pid, and left open until the client or server closes it."""
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": str(os.getpid())})
        while (await receive())["type"] != "websocket.disconnect":
            pass
        return
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/slow":
        print(f"[test-app] {os.getpid()} sleeping in /slow", flush=True)
        await _sleep(1.0)
    elif path == "/stuck":
        print(f"[test-app] {os.getpid()} sleeping in /stuck", flush=True)
        await _sleep(3600)
    elif path == "/block":
        print(f"[test-app] {os.getpid()} blocking its loop", flush=True)
        time.sleep(60)
    body = str(os.getpid()).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def crash_at_startup(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "database unreachable"})


async def crash_soon(scope, receive, send):
    """Starts, then the process dies 0.3 s later: a crash loop."""
    if scope["type"] == "lifespan":
        import threading

        await receive()
        threading.Timer(0.3, os._exit, args=(1,)).start()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})
