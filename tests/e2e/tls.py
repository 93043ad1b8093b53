"""Certificates for the TLS tests, made fresh by trustme for each test session."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class Certs:
    ca: trustme.CA
    ca_path: str
    cert_path: str  # server chain + key in one PEM
    client_cert_path: str  # client chain + key in one PEM

    def verify(self) -> ssl.SSLContext:
        """A client context trusting the test CA (httpx sets ALPN on it itself)."""
        return ssl.create_default_context(cafile=self.ca_path)

    def client_context(self, *, alpn: list[str], client_cert: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_path)
        context.set_alpn_protocols(alpn)
        if client_cert:
            context.load_cert_chain(self.client_cert_path)
        return context


def make_certs(directory: Path) -> Certs:
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1", "::1")
    client = ca.issue_cert("alice@example.org", common_name="alice")
    paths = {name: str(directory / f"{name}.pem") for name in ("ca", "server", "client")}
    ca.cert_pem.write_to_path(paths["ca"])
    server.private_key_and_cert_chain_pem.write_to_path(paths["server"])
    client.private_key_and_cert_chain_pem.write_to_path(paths["client"])
    return Certs(ca, paths["ca"], paths["server"], paths["client"])
