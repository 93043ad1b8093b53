"""The server SSLContext built from Config, and the ASGI `tls` extension (TLSInfo).

Every handshake here is real OpenSSL over in-memory BIOs: no sockets, no event loop.
"""

from __future__ import annotations

import datetime
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from multicorn.config import Config
from multicorn.net.tls import (
    TLSConfigError,
    TLSInfo,
    TLSInfoFactory,
    create_ssl_context,
    read_certificates,
    rfc4514_name,
)

# From the IANA TLS Cipher Suites registry, independent of OpenSSL's numbering.
IANA_SUITES = {
    "TLS_AES_128_GCM_SHA256": 0x1301,
    "TLS_AES_256_GCM_SHA384": 0x1302,
    "TLS_CHACHA20_POLY1305_SHA256": 0x1303,
    "ECDHE-ECDSA-AES128-GCM-SHA256": 0xC02B,
    "ECDHE-ECDSA-AES256-GCM-SHA384": 0xC02C,
    "ECDHE-RSA-AES128-GCM-SHA256": 0xC02F,
    "ECDHE-RSA-AES256-GCM-SHA384": 0xC030,
    "ECDHE-RSA-CHACHA20-POLY1305": 0xCCA8,
    "ECDHE-ECDSA-CHACHA20-POLY1305": 0xCCA9,
}

EXTENSION_KEYS = {
    "server_cert",
    "client_cert_chain",
    "client_cert_name",
    "client_cert_error",
    "tls_version",
    "cipher_suite",
}


@dataclass
class Pki:
    ca: trustme.CA
    server: trustme.LeafCert
    client: trustme.LeafCert
    ca_file: str
    cert_file: str
    key_file: str
    tmp: Path

    @property
    def server_pem(self) -> str:
        return self.server.cert_chain_pems[0].bytes().decode()

    @property
    def client_pem(self) -> str:
        return self.client.cert_chain_pems[0].bytes().decode()


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("alice@example.org", common_name="alice", organization_name="Example")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    server.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    server.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    return Pki(
        ca=ca,
        server=server,
        client=client,
        ca_file=str(tmp_path / "ca.pem"),
        cert_file=str(tmp_path / "cert.pem"),
        key_file=str(tmp_path / "key.pem"),
        tmp=tmp_path,
    )


def server_context(pki: Pki, **settings: Any) -> ssl.SSLContext:
    config = Config(certfile=pki.cert_file, keyfile=pki.key_file, **settings)
    context = create_ssl_context(config)
    assert context is not None
    return context


def client_context(
    pki: Pki, *, alpn: list[str] | None = None, with_cert: bool = False
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    pki.ca.configure_trust(context)
    if alpn:
        context.set_alpn_protocols(alpn)
    if with_cert:
        pki.client.configure_cert(context)
    return context


def handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str = "localhost"
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """Run a full handshake between two SSLObjects; return (server, client)."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=server_hostname)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for side, obj in (("client", client), ("server", server)):
            if not done[side]:
                try:
                    obj.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()) and not c_out.pending and not s_out.pending:
            break
    else:
        raise AssertionError("handshake did not finish")
    # Prove the session carries data, not merely that both sides stopped asking for bytes.
    client.write(b"ping")
    s_in.write(c_out.read())
    assert server.read(4) == b"ping"
    return server, client


def info_for(context: ssl.SSLContext, pki: Pki, server: ssl.SSLObject) -> TLSInfo:
    factory = TLSInfoFactory.from_config(
        context, Config(certfile=pki.cert_file, keyfile=pki.key_file)
    )
    return factory.from_ssl_object(server)


# --- the context ---------------------------------------------------------------------------


def test_no_certfile_means_no_tls() -> None:
    assert create_ssl_context(Config()) is None


def test_context_policy(pki: Pki) -> None:
    context = server_context(pki)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_COMPRESSION
    assert context.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    # Options were added to, not replaced: Python's secure defaults survive.
    assert context.options & ssl.OP_NO_SSLv3
    assert context.verify_mode == ssl.CERT_NONE
    tls12 = {c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12 <= {name for name in IANA_SUITES if "-" in name}


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("none", ssl.CERT_NONE), ("optional", ssl.CERT_OPTIONAL), ("required", ssl.CERT_REQUIRED)],
)
def test_verify_mode_mapping(pki: Pki, mode: str, expected: ssl.VerifyMode) -> None:
    context = server_context(pki, ca_certs=pki.ca_file, verify_mode=mode)
    assert context.verify_mode == expected


def test_key_inside_certfile(pki: Pki) -> None:
    combined = pki.tmp / "combined.pem"
    combined.write_bytes(pki.server.private_key_and_cert_chain_pem.bytes())
    context = create_ssl_context(Config(certfile=str(combined)))
    assert context is not None
    server, _ = handshake(context, client_context(pki))
    assert server.version() in ("TLSv1.2", "TLSv1.3")


@dataclass(frozen=True)
class PlainSettings:
    """Not a Config: net.tls needs only the TLS settings, whatever object carries them."""

    certfile: str | None
    keyfile: str | None = None
    keyfile_password: str | None = None
    ca_certs: str | None = None
    verify_mode: str = "none"
    ciphers: str = "ECDHE+AESGCM:ECDHE+CHACHA20"
    alpn_protocols: tuple[str, ...] = ("http/1.1",)


def test_any_object_with_the_tls_settings_will_do(pki: Pki) -> None:
    settings = PlainSettings(certfile=pki.cert_file, keyfile=pki.key_file)
    context = create_ssl_context(settings)
    assert context is not None
    server, _ = handshake(context, client_context(pki, alpn=["http/1.1"]))
    info = TLSInfoFactory.from_config(context, settings).from_ssl_object(server)
    assert info.alpn == "http/1.1"
    assert info.server_cert == pki.server_pem


# --- TLSInfo from real handshakes -------------------------------------------------------------


def test_tls13_handshake_without_client_cert(pki: Pki) -> None:
    context = server_context(pki)
    server, client = handshake(context, client_context(pki, alpn=["h2", "http/1.1"]))
    info = info_for(context, pki, server)

    assert info.tls_version == 0x0304
    negotiated = client.cipher()
    assert negotiated is not None
    assert isinstance(info.cipher_suite, int)
    assert info.cipher_suite == IANA_SUITES[negotiated[0]]
    assert info.alpn == "h2"
    assert info.server_cert == pki.server_pem
    assert info.client_cert_chain == []
    assert info.client_cert_name is None
    assert info.client_cert_error is None

    extension = info.as_extension()
    assert set(extension) == EXTENSION_KEYS
    assert extension["tls_version"] == 0x0304
    assert extension["server_cert"] == pki.server_pem


def test_tls12_handshake_reports_iana_suite(pki: Pki) -> None:
    context = server_context(pki)
    client_ctx = client_context(pki, alpn=["http/1.1"])
    client_ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    client_ctx.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")  # trustme's keys are ECDSA
    server, _ = handshake(context, client_ctx)
    info = info_for(context, pki, server)
    assert info.tls_version == 0x0303
    assert info.cipher_suite == 0xC02B
    assert info.alpn == "http/1.1"


@pytest.mark.parametrize(
    ("server_alpn", "client_alpn", "expected"),
    [
        (["h2", "http/1.1"], ["h2", "http/1.1"], "h2"),
        (["h2", "http/1.1"], ["http/1.1"], "http/1.1"),
        (["http/1.1"], ["h2", "http/1.1"], "http/1.1"),
        (["h2", "http/1.1"], None, None),
    ],
)
def test_alpn(
    pki: Pki, server_alpn: list[str], client_alpn: list[str] | None, expected: str | None
) -> None:
    context = server_context(pki, alpn_protocols=server_alpn)
    server, client = handshake(context, client_context(pki, alpn=client_alpn))
    assert info_for(context, pki, server).alpn == expected
    assert client.selected_alpn_protocol() == expected


@pytest.mark.parametrize("mode", ["optional", "required"])
def test_client_certificate(pki: Pki, mode: str) -> None:
    context = server_context(pki, ca_certs=pki.ca_file, verify_mode=mode)
    server, _ = handshake(context, client_context(pki, with_cert=True))
    info = info_for(context, pki, server)

    subject = x509.load_pem_x509_certificate(pki.client_pem.encode()).subject
    assert info.client_cert_name == subject.rfc4514_string()
    assert info.client_cert_name is not None
    assert info.client_cert_name.startswith("CN=alice,OU=")
    assert info.client_cert_name.endswith(",O=Example")
    assert info.client_cert_chain[0].startswith("-----BEGIN CERTIFICATE-----")
    assert info.client_cert_chain[0] == pki.client_pem
    if sys.version_info >= (3, 13):
        # The verified chain runs up to the CA that vouched for the client.
        assert info.client_cert_chain[-1] == pki.ca.cert_pem.bytes().decode()
    else:
        assert len(info.client_cert_chain) == 1
    assert info.client_cert_error is None
    assert info.as_extension()["client_cert_name"] == info.client_cert_name


def test_optional_client_certificate_may_be_absent(pki: Pki) -> None:
    context = server_context(pki, ca_certs=pki.ca_file, verify_mode="optional")
    server, _ = handshake(context, client_context(pki))
    info = info_for(context, pki, server)
    assert info.client_cert_chain == []
    assert info.client_cert_name is None
    assert info.client_cert_error is None


def test_required_client_certificate_missing_fails(pki: Pki) -> None:
    context = server_context(pki, ca_certs=pki.ca_file, verify_mode="required")
    with pytest.raises(ssl.SSLError, match="CERTIFICATE"):
        handshake(context, client_context(pki))


def test_client_certificate_from_another_ca_fails(pki: Pki) -> None:
    context = server_context(pki, ca_certs=pki.ca_file, verify_mode="required")
    client_ctx = client_context(pki)
    trustme.CA().issue_cert("mallory@example.org").configure_cert(client_ctx)
    with pytest.raises(ssl.SSLError):
        handshake(context, client_ctx)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls11_client_is_refused(pki: Pki) -> None:
    context = server_context(pki)
    client_ctx = client_context(pki)
    client_ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client itself offer TLS 1.1
    client_ctx.minimum_version = ssl.TLSVersion.TLSv1_1
    client_ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    server = context.wrap_bio(s_in, s_out, server_side=True)
    try:
        client.do_handshake()
    except ssl.SSLWantReadError:
        pass
    except ssl.SSLError as exc:  # pragma: no cover - depends on how OpenSSL was built
        pytest.skip(f"this OpenSSL cannot offer TLS 1.1 at all ({exc})")
    s_in.write(c_out.read())
    # The server, not the client, ends it: TLS 1.1 is below minimum_version.
    with pytest.raises(ssl.SSLError) as caught:
        server.do_handshake()
    assert caught.value.reason == "UNSUPPORTED_PROTOCOL"


# --- TLSInfoFactory and TLSInfo ---------------------------------------------------------------


def test_server_cert_is_first_certificate_of_chain_file(pki: Pki) -> None:
    intermediate = pki.ca.create_child_ca()
    leaf = intermediate.issue_cert("localhost")
    chain_file = pki.tmp / "chain.pem"
    chain_file.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key_file = pki.tmp / "chain-key.pem"
    key_file.write_bytes(leaf.private_key_pem.bytes())
    config = Config(certfile=str(chain_file), keyfile=str(key_file))
    context = create_ssl_context(config)
    assert context is not None
    factory = TLSInfoFactory.from_config(context, config)
    assert factory.server_cert == leaf.cert_chain_pems[0].bytes().decode()
    # Leaf and intermediate, in file order (trustme leaves the root out of the chain).
    assert read_certificates(str(chain_file)) == [
        blob.bytes().decode() for blob in leaf.cert_chain_pems
    ]
    assert len(leaf.cert_chain_pems) == 2


def test_as_extension_copies_the_chain() -> None:
    info = TLSInfo(client_cert_chain=["PEM"], tls_version=0x0304, cipher_suite=0x1301)
    extension = info.as_extension()
    assert extension == {
        "server_cert": None,
        "client_cert_chain": ["PEM"],
        "client_cert_name": None,
        "client_cert_error": None,
        "tls_version": 0x0304,
        "cipher_suite": 0x1301,
    }
    chain = extension["client_cert_chain"]
    assert isinstance(chain, list)
    chain.append("tampered")
    assert info.client_cert_chain == ["PEM"]


# --- RFC 4514 names -------------------------------------------------------------------------


def test_rfc4514_order_is_reversed() -> None:
    subject = (
        (("countryName", "GB"),),
        (("organizationName", "Example Org"),),
        (("commonName", "alice"),),
    )
    assert rfc4514_name(subject) == "CN=alice,O=Example Org,C=GB"


@pytest.mark.parametrize(
    ("value", "escaped"),
    [
        ("Smith, John", "Smith\\, John"),
        ('say "hi"', 'say \\"hi\\"'),
        ("a+b;c<d>e\\f", "a\\+b\\;c\\<d\\>e\\\\f"),
        ("#hash", "\\#hash"),
        ("mid#hash", "mid#hash"),
        (" padded ", "\\ padded\\ "),
        ("nul\x00", "nul\\00"),
        ("café", "café"),
    ],
)
def test_rfc4514_escaping(value: str, escaped: str) -> None:
    assert rfc4514_name(((("commonName", value),),)) == f"CN={escaped}"


def test_rfc4514_multivalued_rdn_and_unregistered_names() -> None:
    subject = (
        (("domainComponent", "org"),),
        (("organizationalUnitName", "Ops"), ("userId", "42")),
        (("emailAddress", "a@example.org"),),
        (("1.2.3.4", "x"),),
    )
    assert (
        rfc4514_name(subject) == "1.2.3.4=x,1.2.840.113549.1.9.1=a@example.org,OU=Ops+UID=42,DC=org"
    )


def _sign_client(pki: Pki, subject: x509.Name) -> tuple[bytes, bytes]:
    """A client certificate with `subject`, signed by the trustme CA: (cert PEM, key PEM)."""
    ca_cert = x509.load_pem_x509_certificate(pki.ca.cert_pem.bytes())
    ca_key = serialization.load_pem_private_key(pki.ca.private_key_pem.bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def test_client_cert_name_matches_cryptography_for_awkward_subject(pki: Pki) -> None:
    subject = x509.Name(
        [
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COUNTRY_NAME, "GB")]),
            x509.RelativeDistinguishedName(
                [x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "Greater London")]
            ),
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.LOCALITY_NAME, "London")]),
            x509.RelativeDistinguishedName(
                [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Smith, Jones & Co; <Ltd>")]
            ),
            x509.RelativeDistinguishedName(
                [
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "R+D"),
                    x509.NameAttribute(NameOID.USER_ID, "u1"),
                ]
            ),
            x509.RelativeDistinguishedName(
                [x509.NameAttribute(NameOID.EMAIL_ADDRESS, "alice@example.org")]
            ),
            x509.RelativeDistinguishedName(
                [x509.NameAttribute(NameOID.COMMON_NAME, '#alice "the admin" \\ ')]
            ),
        ]
    )
    cert_pem, key_pem = _sign_client(pki, subject)
    (pki.tmp / "odd.pem").write_bytes(cert_pem)
    (pki.tmp / "odd-key.pem").write_bytes(key_pem)
    context = server_context(pki, ca_certs=pki.ca_file, verify_mode="required")
    client_ctx = client_context(pki)
    client_ctx.load_cert_chain(str(pki.tmp / "odd.pem"), str(pki.tmp / "odd-key.pem"))
    server, _ = handshake(context, client_ctx)
    info = info_for(context, pki, server)
    assert info.client_cert_name == subject.rfc4514_string()
    assert info.client_cert_name is not None
    assert info.client_cert_name.startswith('CN=\\#alice \\"the admin\\" \\\\\\ ,')


# --- configuration errors ---------------------------------------------------------------------


@pytest.fixture
def other_key(pki: Pki) -> str:
    path = pki.tmp / "other-key.pem"
    path.write_bytes(pki.client.private_key_pem.bytes())
    return str(path)


def test_mismatched_key(pki: Pki, other_key: str) -> None:
    with pytest.raises(TLSConfigError, match="does not match") as caught:
        create_ssl_context(Config(certfile=pki.cert_file, keyfile=other_key))
    assert caught.value.path == other_key
    assert other_key in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_missing_files(pki: Pki) -> None:
    missing = str(pki.tmp / "nope.pem")
    with pytest.raises(TLSConfigError, match="could not be read") as caught:
        create_ssl_context(Config(certfile=missing, keyfile=pki.key_file))
    assert caught.value.path == missing
    with pytest.raises(TLSConfigError, match=r"keyfile .*could not be read"):
        create_ssl_context(Config(certfile=pki.cert_file, keyfile=missing))
    with pytest.raises(TLSConfigError, match=r"ca_certs .*could not be read"):
        create_ssl_context(Config(certfile=pki.cert_file, keyfile=pki.key_file, ca_certs=missing))


def test_files_with_the_wrong_content(pki: Pki) -> None:
    junk = pki.tmp / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(TLSConfigError, match=r"certfile .*no PEM certificate"):
        create_ssl_context(Config(certfile=str(junk), keyfile=pki.key_file))
    with pytest.raises(TLSConfigError, match=r"keyfile .*no usable private key"):
        create_ssl_context(Config(certfile=pki.cert_file, keyfile=str(junk)))
    with pytest.raises(TLSConfigError, match=r"ca_certs .*no PEM certificate"):
        create_ssl_context(Config(certfile=pki.cert_file, keyfile=pki.key_file, ca_certs=str(junk)))
    with pytest.raises(TLSConfigError, match=r"certfile .*holds no private key.*--keyfile"):
        create_ssl_context(Config(certfile=pki.cert_file))


def test_corrupt_certificate(pki: Pki) -> None:
    lines = pki.server_pem.splitlines()
    lines[3] = "A" * len(lines[3])  # valid base64, invalid DER
    corrupt = pki.tmp / "corrupt.pem"
    corrupt.write_text("\n".join(lines) + "\n")
    with pytest.raises(TLSConfigError, match="cannot be parsed"):
        create_ssl_context(Config(certfile=str(corrupt), keyfile=pki.key_file))


def test_encrypted_key(pki: Pki) -> None:
    key = serialization.load_pem_private_key(pki.server.private_key_pem.bytes(), password=None)
    encrypted = pki.tmp / "encrypted-key.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"s3cret"),
        )
    )
    # Without a password this must fail fast, never prompt on the terminal.
    with pytest.raises(TLSConfigError, match=r"encrypted.*keyfile_password"):
        create_ssl_context(Config(certfile=pki.cert_file, keyfile=str(encrypted)))
    with pytest.raises(TLSConfigError, match="could not be decrypted"):
        create_ssl_context(
            Config(certfile=pki.cert_file, keyfile=str(encrypted), keyfile_password="wrong")
        )
    context = create_ssl_context(
        Config(certfile=pki.cert_file, keyfile=str(encrypted), keyfile_password="s3cret")
    )
    assert context is not None
    handshake(context, client_context(pki))


def test_unusable_cipher_list(pki: Pki) -> None:
    with pytest.raises(TLSConfigError, match="ciphers 'NOPE'"):
        create_ssl_context(Config(certfile=pki.cert_file, keyfile=pki.key_file, ciphers="NOPE"))


def test_read_certificates_normalises_line_endings(pki: Pki) -> None:
    crlf = pki.tmp / "crlf.pem"
    crlf.write_bytes(pki.server_pem.replace("\n", "\r\n").encode())
    assert read_certificates(str(crlf)) == [pki.server_pem]
