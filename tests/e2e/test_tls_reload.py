"""Hot TLS reload: after SIGHUP (or a file change with --reload-certs) new connections get the
new certificate, open ones keep working, and a broken new certificate is refused."""

from __future__ import annotations

import http.client
import os
import signal
import ssl
from pathlib import Path

import pytest

from multicorn import Config, Server

from .h3client import H3Client, quic_port
from .process import multicorn_process
from .tls import Certs

WORKERS = ["asyncio", "trio"]


def _issue(certs: Certs, name: str) -> bytes:
    return certs.ca.issue_cert(
        "localhost", "127.0.0.1", common_name=name
    ).private_key_and_cert_chain_pem.bytes()


def _install(path: Path, pem: bytes) -> None:
    # As certbot and friends do: a new file moved over the old one.
    tmp = path.with_suffix(".new")
    tmp.write_bytes(pem)
    os.replace(tmp, path)


def _common_name(cert: dict) -> str:
    for rdn in cert["subject"]:
        for key, value in rdn:
            if key == "commonName":
                return value
    raise AssertionError(cert)


class KeepAlive:
    """One TLS connection kept open across requests."""

    def __init__(self, url: str, certs: Certs) -> None:
        port = int(url.rsplit(":", 1)[1])
        context = ssl.create_default_context(cafile=certs.ca_path)
        self.conn = http.client.HTTPSConnection("localhost", port, context=context, timeout=5)
        self.conn.connect()

    @property
    def common_name(self) -> str:
        return _common_name(self.conn.sock.getpeercert())

    def get(self) -> int:
        self.conn.request("GET", "/")
        response = self.conn.getresponse()
        response.read()
        return response.status

    def close(self) -> None:
        self.conn.close()


def _connect(url: str, certs: Certs) -> KeepAlive:
    conn = KeepAlive(url, certs)
    assert conn.get() == 200
    return conn


@pytest.fixture
def cert_file(tmp_path: Path, certs: Certs) -> Path:
    path = tmp_path / "server.pem"
    _install(path, _issue(certs, "cert-a"))
    return path


@pytest.mark.parametrize("worker", WORKERS)
def test_sighup_reloads_the_certificate(worker, certs, cert_file):
    args = ("tests.e2e.apps:identity", "-k", worker, "--bind", "127.0.0.1:0")
    with multicorn_process(*args, "--certfile", str(cert_file)) as (proc, url):
        old = _connect(url, certs)
        assert old.common_name == "cert-a"
        _install(cert_file, _issue(certs, "cert-b"))
        proc.send_signal(signal.SIGHUP)
        proc.output.wait_for("TLS certificate reloaded")
        new = _connect(url, certs)
        assert new.common_name == "cert-b"
        assert old.get() == 200  # the connection opened before still works

        # A broken certificate is refused, named in the log, and cert-b stays.
        cert_file.write_bytes(
            b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"
        )
        proc.send_signal(signal.SIGHUP)
        line = proc.output.wait_for("TLS reload refused").string
        assert str(cert_file) in line and "[ERROR]" in line
        assert _connect(url, certs).common_name == "cert-b"
        assert new.get() == 200
        old.close()
        new.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


@pytest.mark.parametrize("worker", WORKERS)
def test_reload_certs_follows_file_changes(worker, certs, cert_file):
    args = ("tests.e2e.apps:identity", "-k", worker, "--bind", "127.0.0.1:0")
    args += ("--certfile", str(cert_file), "--reload-certs", "--reload-certs-interval", "0.2")
    with multicorn_process(*args) as (proc, url):
        old = _connect(url, certs)
        assert old.common_name == "cert-a"
        _install(cert_file, _issue(certs, "cert-b"))
        proc.output.wait_for("TLS certificate reloaded")
        assert _connect(url, certs).common_name == "cert-b"
        assert old.get() == 200
        old.close()


def test_sighup_without_tls_is_ignored():
    args = ("tests.e2e.apps:identity", "--bind", "127.0.0.1:0")
    with multicorn_process(*args) as (proc, url):
        import httpx

        httpx.get(url)  # serving: the signal handlers are in place
        proc.send_signal(signal.SIGHUP)
        proc.output.wait_for("no TLS certificate to reload")
        assert httpx.get(url).status_code == 200


def _quic_common_name(client: H3Client) -> str:
    from cryptography.x509.oid import NameOID

    cert = client.quic.tls._peer_certificate
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


async def server_cert_app(scope, receive, send):
    """Answers with the `tls` extension's server_cert (PEM)."""
    if scope["type"] != "http":
        return
    body = scope["extensions"]["tls"]["server_cert"].encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def _pem_common_name(pem: bytes) -> str:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_pem_x509_certificate(pem)
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


@pytest.mark.anyio
async def test_reload_tls_reaches_new_quic_connections(certs, cert_file):
    import httpx

    config = Config(
        bind=["127.0.0.1:0"],
        quic_bind=["127.0.0.1:0"],
        certfile=str(cert_file),
        error_logfile=None,
    )
    async with Server(server_cert_app, config) as server:
        port = quic_port(server)
        https = server.bound_addresses[0].replace("127.0.0.1", "localhost")
        async with H3Client.connect("127.0.0.1", port, cafile=certs.ca_path) as old:
            assert _quic_common_name(old) == "cert-a"
            _install(cert_file, _issue(certs, "cert-b"))
            assert server.reload_tls()
            async with H3Client.connect("127.0.0.1", port, cafile=certs.ca_path) as new:
                assert _quic_common_name(new) == "cert-b"
                stream = await new.request("/")
                assert stream.status == 200
                # The ASGI tls extension names the certificate now served, on HTTP/3 ...
                assert _pem_common_name(stream.body) == "cert-b"
            stream = await old.request("/")
            assert stream.status == 200
        # ... and on TCP.
        async with httpx.AsyncClient(verify=certs.verify()) as client:
            response = await client.get(https)
        assert _pem_common_name(response.content) == "cert-b"
        cert_file.write_text("garbage")
        assert not server.reload_tls()  # refused: nothing changes
