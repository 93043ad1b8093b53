"""Development certificates: `python -m multicorn.certs [DIR]`.

This module owns making a local development CA and the certificates it signs for serving
HTTPS on this machine: a server certificate for localhost, 127.0.0.1 and ::1, and a client
certificate for trying mutual TLS. It writes them with safe file modes, reuses the CA on later
runs (so it only has to be trusted once), and prints how to trust the CA and serve with them.

It needs the optional `cryptography` package, imported only when certificates are made.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import getpass
import importlib
import ipaddress
import os
import shlex
import socket
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeAlias

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    _SigningKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

__all__ = [
    "DEFAULT_DIRECTORY",
    "DevCertError",
    "DevCertificates",
    "create_dev_certificates",
    "main",
]

DEFAULT_DIRECTORY: Final = "certs/dev"

CA_CERT: Final = "ca.pem"
CA_KEY: Final = "ca-key.pem"
SERVER_CERT: Final = "cert.pem"
SERVER_KEY: Final = "key.pem"
CLIENT_CERT: Final = "client.pem"
CLIENT_KEY: Final = "client-key.pem"

SERVER_NAMES: Final = ("localhost", "127.0.0.1", "::1")
CLIENT_COMMON_NAME: Final = "multicorn dev client"

CA_DAYS: Final = 3650
# Apple platforms reject TLS server certificates valid for longer than 825 days.
LEAF_DAYS: Final = 825

_KEY_MODE: Final = 0o600
_CERT_MODE: Final = 0o644
_MISSING_CRYPTOGRAPHY: Final = (
    "multicorn.certs needs the 'cryptography' package: pip install cryptography"
)


class DevCertError(Exception):
    """The certificates could not be made: an unusable existing CA, or an unwritable DIR.

    The message names the file and says what to do about it.
    """


@dataclass(frozen=True, slots=True)
class DevCertificates:
    """Where `create_dev_certificates` wrote each file, and whether the CA is new."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path
    ca_created: bool
    not_valid_after: datetime.datetime  # of the server and client certificates


def create_dev_certificates(directory: str | os.PathLike[str]) -> DevCertificates:
    """Write a development CA (unless one is already in `directory`) and fresh certificates.

    The server and client certificates (and their keys) are replaced on every call; the CA is
    reused when both of its files exist. Raises DevCertError when an existing CA is unusable or
    the files cannot be written, and ImportError when `cryptography` is not installed.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder = Path(directory)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DevCertError(
            f"could not create directory {str(folder)!r} ({exc.strerror or exc}); "
            "choose a DIR you can write to"
        ) from exc

    now = datetime.datetime.now(datetime.timezone.utc)
    # Back-dating a little tolerates clocks that are slightly behind this one's.
    not_before = now - datetime.timedelta(hours=1)

    existing = _load_ca(folder, now)
    if existing is None:
        ca_key: _SigningKey = ec.generate_private_key(ec.SECP256R1())
        ca_cert = _make_ca(ca_key, not_before)
        # Key first: a later run treats a lone key as a broken CA rather than silently
        # replacing a certificate someone may already trust.
        _write_file(folder / CA_KEY, _key_pem(ca_key), _KEY_MODE)
        _write_file(folder / CA_CERT, _cert_pem(ca_cert), _CERT_MODE)
    else:
        ca_cert, ca_key = existing

    # The period is measured from not_before (as Apple measures it), and a leaf must not
    # outlive the CA that vouches for it.
    not_after = min(not_before + datetime.timedelta(days=LEAF_DAYS), ca_cert.not_valid_after_utc)

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_names: list[x509.GeneralName] = [x509.DNSName(SERVER_NAMES[0])]
    server_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in SERVER_NAMES[1:]]
    server_cert = _make_leaf(
        ca_cert,
        ca_key,
        server_key,
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAMES[0])]),
        ExtendedKeyUsageOID.SERVER_AUTH,
        x509.SubjectAlternativeName(server_names),
        not_before,
        not_after,
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = _make_leaf(
        ca_cert,
        ca_key,
        client_key,
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CLIENT_COMMON_NAME)]),
        ExtendedKeyUsageOID.CLIENT_AUTH,
        None,
        not_before,
        not_after,
    )
    _write_file(folder / SERVER_KEY, _key_pem(server_key), _KEY_MODE)
    _write_file(folder / SERVER_CERT, _cert_pem(server_cert), _CERT_MODE)
    _write_file(folder / CLIENT_KEY, _key_pem(client_key), _KEY_MODE)
    _write_file(folder / CLIENT_CERT, _cert_pem(client_cert), _CERT_MODE)
    return DevCertificates(
        directory=folder,
        ca_cert=folder / CA_CERT,
        ca_key=folder / CA_KEY,
        cert=folder / SERVER_CERT,
        key=folder / SERVER_KEY,
        client_cert=folder / CLIENT_CERT,
        client_key=folder / CLIENT_KEY,
        ca_created=existing is None,
        not_valid_after=not_after,
    )


def _owner() -> str:
    """user@host, so a trust store holding CAs from several machines tells them apart."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name, e.g. an arbitrary uid in a container
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _make_ca(key: _SigningKey, not_before: datetime.datetime) -> x509.Certificate:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    owner = _owner()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "multicorn development CA"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, owner),
            x509.NameAttribute(NameOID.COMMON_NAME, f"multicorn dev CA {owner}"),
        ]
    )
    public_key = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + datetime.timedelta(days=CA_DAYS))
        # path_length=0: this CA may sign leaf certificates only, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signs_certificates=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )


def _make_leaf(
    ca_cert: x509.Certificate,
    ca_key: _SigningKey,
    key: ec.EllipticCurvePrivateKey,
    subject: x509.Name,
    usage: x509.ObjectIdentifier,
    alt_names: x509.SubjectAlternativeName | None,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> x509.Certificate:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    public_key = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signs_certificates=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if alt_names is not None:
        builder = builder.add_extension(alt_names, critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    from cryptography import x509

    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def _load_ca(folder: Path, now: datetime.datetime) -> tuple[x509.Certificate, _SigningKey] | None:
    """The CA already in `folder`, None when there is none, or DevCertError if unusable."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    cert_path, key_path = folder / CA_CERT, folder / CA_KEY
    if not cert_path.exists() and not key_path.exists():
        return None
    start_over = (
        f"delete {str(cert_path)!r} and {str(key_path)!r} to make a new CA "
        "(and trust the new one instead)"
    )
    for present, missing in ((cert_path, key_path), (key_path, cert_path)):
        if present.exists() and not missing.exists():
            raise DevCertError(
                f"found {str(present)!r} but not {str(missing)!r}: restore it, or {start_over}"
            )
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except OSError as exc:
        raise DevCertError(
            f"could not read the CA in {str(folder)!r} ({exc.strerror or exc}); check the "
            f"file permissions, or {start_over}"
        ) from exc
    except (ValueError, TypeError) as exc:  # TypeError: the key is password-protected
        raise DevCertError(
            f"the CA in {str(folder)!r} cannot be used ({exc}); {start_over}"
        ) from exc
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise DevCertError(f"{str(key_path)!r} is not an EC or RSA key; {start_over}")
    if cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise DevCertError(f"{str(key_path)!r} is not the key of {str(cert_path)!r}; {start_over}")
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise DevCertError(f"{str(cert_path)!r} is not a CA certificate; {start_over}")
    # A day's margin, so freshly signed certificates are not dead on arrival.
    if cert.not_valid_after_utc <= now + datetime.timedelta(days=1):
        raise DevCertError(f"the CA in {str(cert_path)!r} has expired; {start_over}")
    return cert, key


def _cert_pem(cert: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: _SigningKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    # Unencrypted: a development server must start without prompting; 0600 protects it.
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` atomically, with permission bits `mode` from the first byte written."""
    try:
        # mkstemp creates the file 0600, so a key is never readable by others, not even
        # briefly; the rename means a crash never leaves half a file behind.
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise DevCertError(
            f"could not write in {str(path.parent)!r} ({exc.strerror or exc}); choose a DIR "
            "you can write to"
        ) from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            if hasattr(os, "fchmod"):  # not on Windows before Python 3.13
                os.fchmod(fh.fileno(), mode)
            fh.write(data)
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise DevCertError(
            f"could not write {str(path)!r} ({exc.strerror or exc}); check that it is not a "
            "directory and that you may replace it"
        ) from exc


def _report(made: DevCertificates) -> str:
    def q(path: Path) -> str:
        return shlex.quote(str(path))

    ca_line = (
        f"Created a development CA: {made.ca_cert} (its key: {made.ca_key})"
        if made.ca_created
        else f"Reused the development CA in {made.ca_cert} (its key: {made.ca_key})"
    )
    serve = (
        f"multicorn examples.hello:app --bind 127.0.0.1:8443 "
        f"--certfile {q(made.cert)} --keyfile {q(made.key)}"
    )
    until = made.not_valid_after.date().isoformat()
    return "\n".join(
        [
            ca_line,
            f"Server certificate for {', '.join(SERVER_NAMES)} (valid until {until}):",
            f"  {made.cert}",
            f"  {made.key}",
            f"Client certificate {CLIENT_COMMON_NAME!r} for mutual TLS:",
            f"  {made.client_cert}",
            f"  {made.client_key}",
            "",
            f"Keep {made.ca_key} private: once the CA is trusted, whoever holds that key can",
            "make certificates this machine believes. Trust it only where you develop.",
            "",
            "Trust the CA (once; later runs reuse it):",
            "  Debian/Ubuntu: sudo cp "
            f"{q(made.ca_cert)} /usr/local/share/ca-certificates/multicorn-dev.crt "
            "&& sudo update-ca-certificates",
            "  macOS:         sudo security add-trusted-cert -d -r trustRoot "
            f"-k /Library/Keychains/System.keychain {q(made.ca_cert)}",
            "  Firefox:       Settings > Privacy & Security > Certificates > View Certificates >"
            f" Authorities > Import {made.ca_cert}",
            f"  curl:          curl --cacert {q(made.ca_cert)} https://localhost:8443/",
            "",
            "Serve HTTPS:",
            f"  {serve}",
            "Require client certificates (mutual TLS), and connect with the client certificate:",
            f"  {serve} --ca-certs {q(made.ca_cert)} --verify-mode required",
            f"  curl --cacert {q(made.ca_cert)} --cert {q(made.client_cert)} "
            f"--key {q(made.client_key)} https://localhost:8443/",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns 0 on success, 1 on DevCertError, 2 without cryptography."""
    parser = argparse.ArgumentParser(
        prog="python -m multicorn.certs",
        description=(
            "Make a local development CA and certificates for serving HTTPS on localhost, "
            "127.0.0.1 and ::1, plus a client certificate for mutual TLS."
        ),
    )
    parser.add_argument(
        "directory",
        nargs="?",
        default=DEFAULT_DIRECTORY,
        metavar="DIR",
        help=f"where to write them; an existing CA there is reused (default: {DEFAULT_DIRECTORY})",
    )
    args = parser.parse_args(argv)
    try:
        importlib.import_module("cryptography.x509")
    except ImportError:
        print(_MISSING_CRYPTOGRAPHY, file=sys.stderr)
        return 2
    try:
        made = create_dev_certificates(args.directory)
    except DevCertError as exc:
        print(f"multicorn.certs: {exc}", file=sys.stderr)
        return 1
    print(_report(made))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
