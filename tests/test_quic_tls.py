"""The QUIC server configuration built from the TLS settings (net/quic.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from multicorn.net.quic import quic_configuration
from multicorn.net.tls import TLSConfigError
from tests.protocol.quic.h3helpers import TLSFiles


@pytest.fixture(scope="module")
def cert() -> trustme.LeafCert:
    return trustme.CA().issue_cert("localhost")


def test_certificate_and_key_files(tmp_path: Path, cert: trustme.LeafCert) -> None:
    certfile, keyfile = tmp_path / "c.pem", tmp_path / "k.pem"
    certfile.write_bytes(cert.cert_chain_pems[0].bytes())
    keyfile.write_bytes(cert.private_key_pem.bytes())
    config = quic_configuration(
        TLSFiles(certfile=str(certfile), keyfile=str(keyfile)), idle_timeout=12.0
    )
    assert not config.is_client
    assert config.alpn_protocols == ["h3"]
    assert config.idle_timeout == 12.0
    assert config.certificate is not None
    assert config.private_key is not None


def test_key_inside_certfile(tmp_path: Path, cert: trustme.LeafCert) -> None:
    both = tmp_path / "both.pem"
    both.write_bytes(cert.cert_chain_pems[0].bytes() + cert.private_key_pem.bytes())
    assert quic_configuration(TLSFiles(certfile=str(both))).private_key is not None


def test_unusable_files(tmp_path: Path, cert: trustme.LeafCert) -> None:
    certfile = tmp_path / "c.pem"
    certfile.write_bytes(cert.cert_chain_pems[0].bytes())
    with pytest.raises(ValueError, match="certfile"):
        quic_configuration(TLSFiles(certfile=None))
    with pytest.raises(TLSConfigError, match="no PEM private key"):
        quic_configuration(TLSFiles(certfile=str(certfile)))
    bad_key = tmp_path / "bad.pem"
    bad_key.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(TLSConfigError, match="keyfile"):
        quic_configuration(TLSFiles(certfile=str(certfile), keyfile=str(bad_key)))
    with pytest.raises(TLSConfigError, match="certfile"):
        quic_configuration(TLSFiles(certfile=str(tmp_path / "missing.pem")))
