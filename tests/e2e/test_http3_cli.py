"""The README's HTTP/3 command, as a user runs it: one port for TCP (HTTP/1.1 and HTTP/2 over
TLS) and UDP (HTTP/3), the example app, on asyncio, uvloop and trio; curl for the first two and
gtlsclient (ngtcp2) for HTTP/3. SIGTERM then stops the server cleanly."""

from __future__ import annotations

import shutil
import signal
import subprocess

import pytest

from .process import multicorn_process
from .support import free_port

pytestmark = pytest.mark.skipif(
    shutil.which("curl") is None or shutil.which("gtlsclient") is None,
    reason="needs curl and gtlsclient (Debian packages curl and ngtcp2-client)",
)


@pytest.mark.parametrize("worker_class", ["asyncio", "uvloop", "trio"])
def test_one_port_serves_http11_http2_and_http3(certs, worker_class: str):
    port = free_port()
    args = (
        "examples.hello:app",
        "--worker-class",
        worker_class,
        "--certfile",
        certs.cert_path,
        "--bind",
        f"127.0.0.1:{port}",
        "--quic-bind",
        f"127.0.0.1:{port}",
        "--access-logfile",
        "-",
    )
    with multicorn_process(*args) as (proc, url):
        assert url == f"https://127.0.0.1:{port}"
        proc.output.wait_for("Running HTTP/3")
        base = ["curl", "--silent", "--show-error", "--cacert", certs.ca_path, "--include"]
        for flag, version in (("--http1.1", "HTTP/1.1"), ("--http2", "HTTP/2")):
            result = subprocess.run(
                [*base, flag, f"https://localhost:{port}/"], capture_output=True, timeout=30
            )
            head, _, body = result.stdout.partition(b"\r\n\r\n")
            assert head.startswith(f"{version} 200".encode()), result
            assert f'alt-svc: h3=":{port}"; ma=86400'.encode() in head
            assert body == b"Hello, world!\n"
        result = subprocess.run(
            [
                "gtlsclient",
                "--exit-on-all-streams-close",
                "--no-quic-dump",
                "127.0.0.1",
                str(port),
                f"https://localhost:{port}/",
            ],
            capture_output=True,
            timeout=30,
        )
        assert result.returncode == 0, result
        assert b"[:status: 200]" in result.stdout + result.stderr
        proc.output.wait_for(r'"GET / HTTP/3" 200')
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
