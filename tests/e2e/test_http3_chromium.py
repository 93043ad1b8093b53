"""Headless Chromium (Debian's `chromium`) reaches multicorn over HTTP/3, on asyncio and trio:
once forced onto QUIC for the origin, and once it has learned the origin's Alt-Svc over HTTP/2.

The server certificate comes from the session's trustme CA, which Chromium does not trust, so
each run passes the SHA-256 of the certificate's SubjectPublicKeyInfo in
--ignore-certificate-errors-spki-list, with a throwaway --user-data-dir. That is not enough for
QUIC: Chromium's QUIC certificate check (net/quic/crypto/proof_verifier_chromium.cc)
also rejects any chain that does not end at a root of the Chrome Root Store
(ERR_QUIC_CERT_ROOT_NOT_KNOWN, which shows as "TLS handshake failure ... certificate unknown",
and the Alt-Svc entry is then marked broken) unless the host is named in
--origin-to-force-quic-on. A locally trusted CA does not count as a known root either. So the
Alt-Svc test forces QUIC on localhost:1, an origin nothing visits, which allows unknown roots
for the host localhost without forcing the origin under test.

Chromium resolves localhost to ::1 before 127.0.0.1 (whatever /etc/hosts says) and does not
fall back to IPv4 when the QUIC packets to ::1 are refused, so the runs map localhost to
127.0.0.1, where the server listens, and every other name to nothing (no traffic leaves the
loopback). docs/http3-browsers.md has the same flags for people.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import anyio
import anyio.abc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .support import free_port, host_port, serving
from .tls import Certs

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(
        shutil.which("chromium") is None, reason="needs chromium (the Debian package chromium)"
    ),
]

# Each step is well under a second on loopback; these only bound a hung browser.
DUMP_LIMIT = 30.0
LEARN_LIMIT = 30.0

# The page for the forced run: the server's http_version, and the protocol Chromium itself says
# it used for the navigation (Navigation Timing's nextHopProtocol: "h3" for HTTP/3).
FORCED_PAGE = """<!doctype html>
<p id="version">{version}</p>
<p id="protocol"></p>
<script>
document.getElementById("protocol").textContent =
  performance.getEntriesByType("navigation")[0].nextHopProtocol;
</script>
"""

# The page for the Alt-Svc run, loaded over HTTP/2: it asks for /version until a response comes
# over HTTP/3 (Chromium connects QUIC in the background once it has seen Alt-Svc), then
# navigates to /second, which reports the protocol of its own navigation.
LEARN_PAGE = """<!doctype html>
<p id="version">{version}</p>
<script>
(async () => {{
  for (let i = 0; i < 200; i++) {{
    const response = await fetch("/version?" + i);
    if ((await response.text()) === "3") {{
      location.href = "/second";
      return;
    }}
    await new Promise((resolve) => setTimeout(resolve, 100));
  }}
}})();
</script>
"""

SECOND_PAGE = """<!doctype html>
<p id="version">{version}</p>
<script>
fetch("/report?" + performance.getEntriesByType("navigation")[0].nextHopProtocol);
</script>
"""


class RecordingApp:
    """The pages above; remembers each request's path and http_version, and what /second
    reported about its own navigation."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.reported: str | None = None
        self.report_received = anyio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        version: str = scope["http_version"]
        path: str = scope["path"]
        self.requests.append((path, version))
        status, content_type, body = 200, "text/html; charset=utf-8", ""
        if path == "/":
            body = FORCED_PAGE.format(version=version)
        elif path == "/learn":
            body = LEARN_PAGE.format(version=version)
        elif path == "/version":
            content_type, body = "text/plain", version
        elif path == "/second":
            body = SECOND_PAGE.format(version=version)
        elif path == "/report":
            self.reported = unquote(scope["query_string"].decode("ascii"))
            self.report_received.set()
            status = 204
        else:
            status, content_type = 404, "text/plain"
        head = [(b"content-type", content_type.encode()), (b"cache-control", b"no-store")]
        await send({"type": "http.response.start", "status": status, "headers": head})
        await send({"type": "http.response.body", "body": body.encode()})


def spki_sha256(cert_path: str) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)) of the first certificate in a PEM file, the form
    --ignore-certificate-errors-spki-list takes."""
    certificate = x509.load_pem_x509_certificates(Path(cert_path).read_bytes())[0]
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


def chromium_command(profile: Path, cert_path: str, *args: str) -> list[str]:
    return [
        "chromium",
        "--headless",
        "--no-sandbox",  # these tests may run as root, where the sandbox refuses to start
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--host-resolver-rules=MAP localhost 127.0.0.1, MAP * ~NOTFOUND",
        "--enable-quic",
        f"--ignore-certificate-errors-spki-list={spki_sha256(cert_path)}",
        *args,
    ]


@contextlib.asynccontextmanager
async def chromium(command: list[str], log: Path) -> AsyncIterator[anyio.abc.Process]:
    """Chromium in its own process group, with stdout piped and stderr in `log`. On the way out
    it is asked to stop (SIGTERM), and after 5 s the whole group is killed, helpers included."""
    with log.open("wb") as stderr:
        process = await anyio.open_process(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,
        )
        try:
            yield process
        finally:
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
                with anyio.move_on_after(5):
                    await process.wait()
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.aclose()


async def dump_dom(command: list[str], log: Path) -> str:
    """Run a --dump-dom command to its end; its output."""
    async with chromium(command, log) as process:
        assert process.stdout is not None
        output = b""
        with anyio.fail_after(DUMP_LIMIT):
            async for chunk in process.stdout:
                output += chunk
            await process.wait()
    return output.decode()


def stderr_tail(log: Path) -> str:
    lines = log.read_text(errors="replace").splitlines()
    return "\n".join(line for line in lines[-15:] if "dbus" not in line)


async def test_forced_quic_origin_is_served_over_http3(certs: Certs, tmp_path: Path) -> None:
    app = RecordingApp()
    port = free_port()  # --origin-to-force-quic-on wants the UDP port to be the TCP port
    address = f"127.0.0.1:{port}"
    async with serving(
        app, bind=[address], quic_bind=[address], certfile=certs.cert_path, lifespan="off"
    ):
        command = chromium_command(
            tmp_path / "profile",
            certs.cert_path,
            f"--origin-to-force-quic-on=localhost:{port}",
            "--dump-dom",
            f"https://localhost:{port}/",
        )
        log = tmp_path / "chromium.log"
        dom = await dump_dom(command, log)
    assert '<p id="version">3</p>' in dom, (dom, stderr_tail(log))
    assert '<p id="protocol">h3</p>' in dom, dom
    assert ("/", "3") in app.requests
    assert all(version == "3" for _, version in app.requests), app.requests


async def test_alt_svc_is_learned_over_http2_and_then_http3_is_used(
    certs: Certs, tmp_path: Path
) -> None:
    app = RecordingApp()
    async with serving(
        app,
        bind=["127.0.0.1:0"],
        quic_bind=["127.0.0.1:0"],
        certfile=certs.cert_path,
        lifespan="off",
    ) as server:
        _, port = host_port(server)  # the UDP port is another: only Alt-Svc names it
        command = chromium_command(
            tmp_path / "profile",
            certs.cert_path,
            # Forces nothing we load; it lets QUIC accept the test CA for localhost (see above).
            "--origin-to-force-quic-on=localhost:1",
            f"https://localhost:{port}/learn",
        )
        log = tmp_path / "chromium.log"
        async with chromium(command, log):
            with anyio.move_on_after(LEARN_LIMIT):
                await app.report_received.wait()
            # Stopped while Chromium still runs: it acknowledges the GOAWAYs and the server
            # closes at once. (Chromium stopped by a signal sends no CONNECTION_CLOSE, so the
            # server would wait for the GOAWAY's acknowledgement until graceful_timeout.)
            started = anyio.current_time()
            await server.shutdown()
            drain_time = anyio.current_time() - started
    assert app.report_received.is_set(), (app.requests, stderr_tail(log))
    assert app.requests[0] == ("/learn", "2"), app.requests
    assert ("/version", "3") in app.requests, app.requests
    assert ("/second", "3") in app.requests, app.requests
    assert app.reported == "h3", app.requests
    assert drain_time < server.config.graceful_timeout
