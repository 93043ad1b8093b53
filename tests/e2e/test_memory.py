"""Read backpressure: a 256 MiB upload to a slowly reading app keeps server RSS bounded."""

from __future__ import annotations

import signal
import socket
import threading

import psutil
import pytest

from .process import multicorn_process

UPLOAD = 256 * 1024 * 1024
CHUNK = 1024 * 1024
# The server reads at most 64 KiB per read and stops reading once 64 KiB of body wait unread;
# kernel socket buffers hold the rest. 48 MiB leaves room for allocator noise, not for the upload.
MAX_GROWTH = 48 * 1024 * 1024


def _upload(host: str, port: int, result: dict) -> None:
    with socket.create_connection((host, port), timeout=120) as sock:
        sock.sendall(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % UPLOAD
        )
        block = b"\0" * CHUNK
        for _ in range(UPLOAD // CHUNK):
            sock.sendall(block)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    result["response"] = data


@pytest.mark.parametrize("worker", ["asyncio", "trio"])
def test_slow_reader_upload_keeps_memory_bounded(worker):
    args = ("tests.e2e.apps:slow_reader", "-b", "127.0.0.1:0", "-k", worker)
    with multicorn_process(*args) as (proc, url):
        server = psutil.Process(proc.pid)
        baseline = server.memory_info().rss
        host, port = url.split("://", 1)[1].rsplit(":", 1)
        result: dict = {}
        thread = threading.Thread(target=_upload, args=(host, int(port), result))
        thread.start()
        peak = baseline
        while thread.is_alive():
            peak = max(peak, server.memory_info().rss)
            thread.join(timeout=0.05)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    response = result["response"]
    assert response.startswith(b"HTTP/1.1 200 OK")
    assert response.endswith(str(UPLOAD).encode())
    assert peak - baseline < MAX_GROWTH, f"RSS grew by {(peak - baseline) / 2**20:.1f} MiB"
