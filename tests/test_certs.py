"""`python -m multicorn.certs`: the development CA and the certificates it signs.

The certificates are checked the way clients will use them: a real TLS handshake (over memory
BIOs) against a server context built by multicorn, verified with only ca.pem as trust.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from multicorn.certs import main
from multicorn.config import Config
from multicorn.net.tls import TLSInfoFactory, create_ssl_context

FILES = ("ca.pem", "ca-key.pem", "cert.pem", "key.pem", "client.pem", "client-key.pem")
KEYS = ("ca-key.pem", "key.pem", "client-key.pem")


@pytest.fixture
def made(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    directory = tmp_path / "dev"
    assert main([str(directory)]) == 0
    capsys.readouterr()
    return directory


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str
) -> ssl.SSLObject:
    """Complete a handshake over memory BIOs; return the server side."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=server_hostname)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    pending = [client, server]
    for _ in range(20):
        for obj in list(pending):
            try:
                obj.do_handshake()
                pending.remove(obj)
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if not pending:
            break
    else:
        raise AssertionError("handshake did not finish")
    client.write(b"ping")
    s_in.write(c_out.read())
    assert server.read(4) == b"ping"
    return server


def strict_client(directory: Path, *, with_cert: bool) -> ssl.SSLContext:
    # Trusts ca.pem only, checks the host name, and (as Python 3.13 does by default) applies
    # OpenSSL's strict RFC 5280 checks.
    context = ssl.create_default_context(cafile=str(directory / "ca.pem"))
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    if with_cert:
        context.load_cert_chain(str(directory / "client.pem"), str(directory / "client-key.pem"))
    return context


def test_writes_every_file(made: Path) -> None:
    assert sorted(p.name for p in made.iterdir()) == sorted(FILES)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
def test_file_modes(made: Path) -> None:
    for name in FILES:
        mode = (made / name).stat().st_mode & 0o777
        assert mode == (0o600 if name in KEYS else 0o644), name


def test_server_certificate_names_and_usage(made: Path) -> None:
    cert = load(made / "cert.pem")
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == datetime.timedelta(days=825)
    assert cert.issuer == load(made / "ca.pem").subject


def test_client_certificate(made: Path) -> None:
    cert = load(made / "client.pem")
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        "multicorn dev client"
    )
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_ca_certificate(made: Path) -> None:
    ca = load(made / "ca.pem")
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    assert ca.not_valid_after_utc - ca.not_valid_before_utc == datetime.timedelta(days=3650)
    key = serialization.load_pem_private_key((made / "ca-key.pem").read_bytes(), password=None)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert key.public_key().public_bytes(serialization.Encoding.DER, spki) == (
        ca.public_key().public_bytes(serialization.Encoding.DER, spki)
    )


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "::1"])
def test_server_certificate_verifies_against_the_ca(made: Path, host: str) -> None:
    config = Config(certfile=str(made / "cert.pem"), keyfile=str(made / "key.pem"))
    context = create_ssl_context(config)
    assert context is not None
    server = handshake(context, strict_client(made, with_cert=False), host)
    assert server.version() is not None


def test_hostname_outside_the_certificate_is_rejected(made: Path) -> None:
    context = create_ssl_context(
        Config(certfile=str(made / "cert.pem"), keyfile=str(made / "key.pem"))
    )
    assert context is not None
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(context, strict_client(made, with_cert=False), "example.com")


def test_client_certificate_passes_mutual_tls(made: Path) -> None:
    config = Config(
        certfile=str(made / "cert.pem"),
        keyfile=str(made / "key.pem"),
        ca_certs=str(made / "ca.pem"),
        verify_mode="required",
    )
    context = create_ssl_context(config)
    assert context is not None
    server = handshake(context, strict_client(made, with_cert=True), "localhost")
    info = TLSInfoFactory.from_config(context, config).from_ssl_object(server)
    assert info.client_cert_name == "CN=multicorn dev client"
    assert info.server_cert == (made / "cert.pem").read_text()


def test_second_run_reuses_the_ca(
    made: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca_before = (made / "ca.pem").read_bytes(), (made / "ca-key.pem").read_bytes()
    leaf_before = (made / "cert.pem").read_bytes()
    assert main([str(made)]) == 0
    assert "Reused the development CA" in capsys.readouterr().out
    assert ((made / "ca.pem").read_bytes(), (made / "ca-key.pem").read_bytes()) == ca_before
    assert (made / "cert.pem").read_bytes() != leaf_before
    # A client that trusted the CA from the first run accepts the new server certificate.
    (tmp_path / "trusted").mkdir()
    (tmp_path / "trusted" / "ca.pem").write_bytes(ca_before[0])
    context = create_ssl_context(
        Config(certfile=str(made / "cert.pem"), keyfile=str(made / "key.pem"))
    )
    assert context is not None
    handshake(context, strict_client(tmp_path / "trusted", with_cert=False), "localhost")


def test_prints_paths_trust_steps_and_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "dev"
    assert main([str(directory)]) == 0
    out = capsys.readouterr().out
    assert "Created a development CA" in out
    for name in FILES:
        assert str(directory / name) in out
    assert "/usr/local/share/ca-certificates/multicorn-dev.crt" in out
    assert "update-ca-certificates" in out
    assert "security add-trusted-cert" in out
    assert f"--cacert {directory / 'ca.pem'}" in out
    assert (
        f"multicorn examples.hello:app --bind 127.0.0.1:8443 "
        f"--certfile {directory / 'cert.pem'} --keyfile {directory / 'key.pem'}"
    ) in out


def test_default_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([]) == 0
    assert (tmp_path / "certs" / "dev" / "cert.pem").is_file()
    assert "--certfile certs/dev/cert.pem --keyfile certs/dev/key.pem" in capsys.readouterr().out


def test_without_cryptography(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # None in sys.modules makes the import fail as if the package were not installed.
    monkeypatch.setitem(sys.modules, "cryptography", None)
    monkeypatch.setitem(sys.modules, "cryptography.x509", None)
    assert main([str(tmp_path / "dev")]) == 2
    assert "pip install cryptography" in capsys.readouterr().err
    assert not (tmp_path / "dev").exists()


def test_half_a_ca_is_an_error(made: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (made / "ca-key.pem").unlink()
    assert main([str(made)]) == 1
    err = capsys.readouterr().err
    assert "ca-key.pem" in err
    assert "delete" in err


def test_ca_key_from_elsewhere_is_an_error(
    made: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other"
    assert main([str(other)]) == 0
    (made / "ca-key.pem").write_bytes((other / "ca-key.pem").read_bytes())
    capsys.readouterr()
    assert main([str(made)]) == 1
    assert "is not the key of" in capsys.readouterr().err


def test_unwritable_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert main([str(blocker / "dev")]) == 1
    assert "choose a DIR you can write to" in capsys.readouterr().err


def test_keys_are_never_group_or_world_readable_even_if_replaced(made: Path) -> None:
    if not hasattr(os, "fchmod"):  # pragma: no cover
        pytest.skip("POSIX permission bits")
    (made / "key.pem").chmod(0o644)
    assert main([str(made)]) == 0
    assert (made / "key.pem").stat().st_mode & 0o777 == 0o600
