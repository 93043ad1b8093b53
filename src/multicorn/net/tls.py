"""TLS for listening sockets: the server `ssl.SSLContext`, and the ASGI `tls` extension.

This module owns the server's TLS policy (minimum protocol version, OpenSSL options, cipher
list, ALPN, client certificate verification), turning unusable certificate, key and CA files
into `TLSConfigError` messages a user can act on, and describing one established connection
as a `TLSInfo` (the ASGI TLS extension, spec version 0.2, plus the negotiated ALPN protocol).

Runtime-neutral: it works on `ssl.SSLObject` (memory BIOs, as asyncio and trio use) and
`ssl.SSLSocket` alike, and imports no event loop library. It reads its settings through the
`TLSSettings` shape rather than importing `multicorn.config`: `TLSInfo` is the record every layer
may see (the runtime fills it, app/ reports it), so this module must not drag the configuration
in behind it.
"""

from __future__ import annotations

import re
import ssl
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Protocol, cast

__all__ = [
    "TLSConfigError",
    "TLSInfo",
    "TLSInfoFactory",
    "TLSSettings",
    "create_ssl_context",
    "read_certificates",
    "rfc4514_name",
]

# ASGI reports the version as the TLS wire value (ProtocolVersion in RFC 8446).
_TLS_VERSIONS: Final[Mapping[str, int]] = MappingProxyType(
    {"TLSv1": 0x0301, "TLSv1.1": 0x0302, "TLSv1.2": 0x0303, "TLSv1.3": 0x0304}
)

_VERIFY_MODES: Final[Mapping[str, ssl.VerifyMode]] = MappingProxyType(
    {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
)

_PEM_CERTIFICATE: Final = re.compile(
    r"-----BEGIN CERTIFICATE-----\s.*?-----END CERTIFICATE-----", re.DOTALL
)

# getpeercert() names attributes by OpenSSL long name. RFC 4514 section 3 lists the short
# names a DN string may use; every other attribute must be written as its dotted OID.
_RFC4514_NAMES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "commonName": "CN",
        "localityName": "L",
        "stateOrProvinceName": "ST",
        "organizationName": "O",
        "organizationalUnitName": "OU",
        "countryName": "C",
        "streetAddress": "STREET",
        "domainComponent": "DC",
        "userId": "UID",
    }
)
_ATTRIBUTE_OIDS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "emailAddress": "1.2.840.113549.1.9.1",
        "serialNumber": "2.5.4.5",
        "surname": "2.5.4.4",
        "title": "2.5.4.12",
        "businessCategory": "2.5.4.15",
        "postalCode": "2.5.4.17",
        "name": "2.5.4.41",
        "givenName": "2.5.4.42",
        "initials": "2.5.4.43",
        "generationQualifier": "2.5.4.44",
        "dnQualifier": "2.5.4.46",
        "pseudonym": "2.5.4.65",
        "jurisdictionCountryName": "1.3.6.1.4.1.311.60.2.1.3",
        "jurisdictionStateOrProvinceName": "1.3.6.1.4.1.311.60.2.1.2",
        "jurisdictionLocalityName": "1.3.6.1.4.1.311.60.2.1.1",
    }
)
_RFC4514_ESCAPED: Final = frozenset(',+"\\<>;')


class TLSSettings(Protocol):
    """The settings TLS is built from; `multicorn.config.Config` has all of them."""

    @property
    def certfile(self) -> str | None: ...
    @property
    def keyfile(self) -> str | None: ...
    @property
    def keyfile_password(self) -> str | None: ...
    @property
    def ca_certs(self) -> str | None: ...
    @property
    def verify_mode(self) -> str: ...
    @property
    def ciphers(self) -> str: ...
    @property
    def alpn_protocols(self) -> Sequence[str]: ...


class TLSConfigError(ValueError):
    """A certificate, key or CA file (or the cipher list) cannot be used to serve TLS.

    `path` is the offending file, or None when the problem is not a file's. The message names
    the setting and the file and says what to change.
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        self.path = path
        super().__init__(message)


class _KeyIsEncrypted(Exception):
    """Raised from the password callback so OpenSSL never prompts on the terminal."""


def _refuse_password_prompt() -> str:
    # Without a callback OpenSSL would block reading a pass phrase from the controlling
    # terminal, hanging a server started by a supervisor.
    raise _KeyIsEncrypted


def _ssl_reason(exc: ssl.SSLError) -> str:
    return str(getattr(exc, "reason", None) or exc)


def read_text(path: str, setting: str) -> str:
    """The text of a certificate or key file; TLSConfigError naming `setting` if unreadable."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise TLSConfigError(
            f"{setting} {path!r} could not be read ({exc.strerror or exc}); check the path and "
            "that the server's user may read the file",
            path=path,
        ) from exc
    # PEM is ASCII; latin-1 never fails, so binary (DER) files reach the "no PEM" message.
    return data.decode("latin-1")


def read_certificates(path: str, setting: str = "certfile") -> list[str]:
    """Return the PEM certificates in `path`, in file order, as normalised PEM text.

    Raises TLSConfigError, naming `setting` and `path`, when the file cannot be read, holds no
    PEM certificate, or holds one OpenSSL cannot parse. Other PEM blocks (such as a private key
    stored alongside) are skipped.
    """
    blocks = _PEM_CERTIFICATE.findall(read_text(path, setting))
    if not blocks:
        raise TLSConfigError(
            f"{setting} {path!r} holds no PEM certificate ('-----BEGIN CERTIFICATE-----'); give "
            "the certificate in PEM form (convert DER with `openssl x509 -inform der -in FILE "
            "-out FILE.pem`)",
            path=path,
        )
    try:
        ders = [ssl.PEM_cert_to_DER_cert(block) for block in blocks]
        # Loading into a scratch store makes OpenSSL parse each certificate, so a damaged
        # one is blamed on this file rather than on the private key loaded next to it.
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=b"".join(ders))
    except (ValueError, ssl.SSLError) as exc:
        reason = _ssl_reason(exc) if isinstance(exc, ssl.SSLError) else str(exc)
        raise TLSConfigError(
            f"{setting} {path!r} holds a certificate that cannot be parsed ({reason}); "
            "export the certificate again",
            path=path,
        ) from exc
    # Re-encoding gives one canonical text (64-column lines, "\n" endings) for every file.
    return [ssl.DER_cert_to_PEM_cert(der) for der in ders]


def create_ssl_context(config: TLSSettings) -> ssl.SSLContext | None:
    """Build the server-side SSLContext `config` describes, or None when TLS is off.

    TLS is on when `config.certfile` is set. Raises TLSConfigError naming the file and the fix
    when the certificate, key or CA file is unreadable or unusable, or when the key does not
    belong to the certificate.
    """
    if config.certfile is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # Only ever add options: Python and OpenSSL already set secure ones (OP_NO_SSLv3, ...)
    # that assigning `options` would silently clear.
    context.options |= ssl.OP_NO_COMPRESSION  # CRIME: compressed records leak secrets
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE  # our cipher order wins on TLS 1.2
    context.options |= _optional_option("OP_SINGLE_ECDH_USE")
    context.options |= _optional_option("OP_NO_RENEGOTIATION")  # client-initiated renegotiation DoS
    _set_ciphers(context, config.ciphers)
    _load_cert_chain(context, config.certfile, config.keyfile, config.keyfile_password)
    if config.ca_certs is not None:
        # Loaded even with verify_mode "none", so a bad path fails now, not when it is enabled.
        _load_ca_certs(context, config.ca_certs)
    context.verify_mode = _VERIFY_MODES[config.verify_mode]
    context.set_alpn_protocols(list(config.alpn_protocols))
    return context


def _optional_option(name: str) -> ssl.Options:
    # Some constants exist only when the linked OpenSSL defines them.
    return ssl.Options(getattr(ssl, name, 0))


def _set_ciphers(context: ssl.SSLContext, ciphers: str) -> None:
    try:
        context.set_ciphers(ciphers)
    except ssl.SSLError as exc:
        raise TLSConfigError(
            f"ciphers {ciphers!r} selects no cipher this OpenSSL supports; give an OpenSSL "
            "cipher list such as 'ECDHE+AESGCM:ECDHE+CHACHA20' (see `openssl ciphers -v`)"
        ) from exc


def _load_cert_chain(
    context: ssl.SSLContext, certfile: str, keyfile: str | None, password: str | None
) -> None:
    read_certificates(certfile, "certfile")
    if keyfile is not None:
        read_text(keyfile, "keyfile")
    key_path = keyfile if keyfile is not None else certfile
    key_setting = "keyfile" if keyfile is not None else "certfile"
    callback: str | Callable[[], str] = (
        password if password is not None else _refuse_password_prompt
    )
    try:
        context.load_cert_chain(certfile, keyfile, callback)
    except _KeyIsEncrypted:
        raise TLSConfigError(
            f"{key_setting} {key_path!r} holds an encrypted private key; set keyfile_password "
            "(--keyfile-password or MULTICORN_KEYFILE_PASSWORD)",
            path=key_path,
        ) from None
    except ssl.SSLError as exc:
        if getattr(exc, "reason", None) == "KEY_VALUES_MISMATCH":
            raise TLSConfigError(
                f"{key_setting} {key_path!r} holds a private key that does not match the "
                f"certificate in certfile {certfile!r}; give the key the certificate was issued "
                "for (the first certificate in certfile must be the server's own, not a CA's)",
                path=key_path,
            ) from exc
        if password is not None:
            problem = "could not be decrypted with keyfile_password or holds no private key"
            fix = "check keyfile_password and that the file is the PEM private key"
        elif keyfile is None:
            problem = "holds no private key"
            fix = "give the private key file with keyfile (--keyfile)"
        else:
            problem = "holds no usable private key"
            fix = "give the PEM private key (PKCS#8, RSA or EC) for the certificate"
        raise TLSConfigError(
            f"{key_setting} {key_path!r} {problem} ({_ssl_reason(exc)}); {fix}", path=key_path
        ) from exc
    except OSError as exc:  # the file changed between the checks above and loading it
        raise TLSConfigError(
            f"certfile {certfile!r} / keyfile {keyfile!r} could not be loaded "
            f"({exc.strerror or exc}); check both paths",
            path=key_path,
        ) from exc


def _load_ca_certs(context: ssl.SSLContext, ca_certs: str) -> None:
    read_certificates(ca_certs, "ca_certs")
    try:
        context.load_verify_locations(cafile=ca_certs)
    except (ssl.SSLError, OSError) as exc:
        reason = _ssl_reason(exc) if isinstance(exc, ssl.SSLError) else exc.strerror or str(exc)
        raise TLSConfigError(
            f"ca_certs {ca_certs!r} could not be loaded ({reason}); give the PEM certificates "
            "of the CAs that issue client certificates",
            path=ca_certs,
        ) from exc


def _escape_rfc4514(value: str) -> str:
    """Escape one attribute value as RFC 4514 section 2.4 requires."""
    out: list[str] = []
    last = len(value) - 1
    for index, char in enumerate(value):
        if char in _RFC4514_ESCAPED:
            out.append("\\" + char)
        elif char == "\x00":
            out.append("\\00")
        elif (index == 0 and char in "# ") or (index == last and char == " "):
            out.append("\\" + char)
        else:
            out.append(char)
    return "".join(out)


def rfc4514_name(subject: Iterable[Iterable[tuple[str, str]]]) -> str:
    """Format a subject as `getpeercert()` gives it (RDNs of (name, value)) per RFC 4514.

    The certificate stores RDNs most-general first (C, O, ..., CN); RFC 4514 writes them in
    reverse, so the result reads like "CN=alice,O=Example Org,C=GB". Attributes RFC 4514 has no
    short name for are written as their dotted OID with the value as a string, as common TLS
    stacks do (the DER needed for the "#hex" form is not available here).
    """
    rdns: list[str] = []
    for rdn in subject:
        parts = [
            f"{_RFC4514_NAMES.get(name) or _ATTRIBUTE_OIDS.get(name, name)}"
            f"={_escape_rfc4514(value)}"
            for name, value in rdn
        ]
        rdns.append("+".join(parts))
    return ",".join(reversed(rdns))


@dataclass(frozen=True, slots=True)
class TLSInfo:
    """One TLS connection, as the ASGI `tls` extension (spec 0.2) describes it, plus ALPN.

    `client_cert_error` is always None from `TLSInfoFactory`: Python's ssl module aborts the
    handshake when a presented client certificate fails verification, so a connection that
    exists never carries a failed one.
    """

    server_cert: str | None = None
    client_cert_chain: list[str] = field(default_factory=list)
    client_cert_name: str | None = None
    client_cert_error: str | None = None
    tls_version: int | None = None
    cipher_suite: int | None = None
    alpn: str | None = None

    def as_extension(self) -> dict[str, object]:
        """The value for `scope["extensions"]["tls"]`: exactly the spec's keys."""
        return {
            "server_cert": self.server_cert,
            # A copy, so an application cannot change what later scopes see.
            "client_cert_chain": list(self.client_cert_chain),
            "client_cert_name": self.client_cert_name,
            "client_cert_error": self.client_cert_error,
            "tls_version": self.tls_version,
            "cipher_suite": self.cipher_suite,
        }


class TLSInfoFactory:
    """Makes a `TLSInfo` for each connection served with one SSLContext.

    Holds what is the same for every connection: the server certificate's PEM and the
    cipher name -> IANA id table, so per-connection work is a few lookups.
    """

    __slots__ = ("_cipher_ids", "_server_cert")

    def __init__(self, context: ssl.SSLContext, server_cert: str | None) -> None:
        self._server_cert = server_cert
        # OpenSSL ids carry a 0x0300_0000 marker above the 16-bit IANA code point.
        self._cipher_ids: Mapping[str, int] = MappingProxyType(
            {cipher["name"]: cipher["id"] & 0xFFFF for cipher in context.get_ciphers()}
        )

    @classmethod
    def from_config(cls, context: ssl.SSLContext, config: TLSSettings) -> TLSInfoFactory:
        """A factory for `context`, with the first certificate in `config.certfile`.

        Raises TLSConfigError when the certificate file cannot be read.
        """
        server_cert = None
        if config.certfile is not None:
            server_cert = read_certificates(config.certfile, "certfile")[0]
        return cls(context, server_cert)

    @property
    def server_cert(self) -> str | None:
        """The PEM text of the server's own certificate."""
        return self._server_cert

    def replace_server_cert(self, server_cert: str | None) -> None:
        """Describe connections made from now on with this certificate (after a TLS reload)."""
        self._server_cert = server_cert

    def from_ssl_object(self, obj: ssl.SSLObject | ssl.SSLSocket) -> TLSInfo:
        """Describe the connection `obj` after its handshake has completed."""
        version = obj.version()
        cipher = obj.cipher()
        peer = obj.getpeercert()
        client_cert_name = None
        if peer:
            # getpeercert()'s "subject" is always a tuple of RDNs of (name, value) pairs.
            subject = cast("Iterable[Iterable[tuple[str, str]]]", peer.get("subject", ()))
            client_cert_name = rfc4514_name(subject)
        return TLSInfo(
            server_cert=self._server_cert,
            client_cert_chain=_client_cert_chain(obj),
            client_cert_name=client_cert_name,
            client_cert_error=None,
            tls_version=_TLS_VERSIONS.get(version) if version is not None else None,
            cipher_suite=self._cipher_ids.get(cipher[0]) if cipher is not None else None,
            alpn=obj.selected_alpn_protocol(),
        )


def _client_cert_chain(obj: ssl.SSLObject | ssl.SSLSocket) -> list[str]:
    leaf = obj.getpeercert(binary_form=True)
    if not leaf:
        # No client certificate. (3.13.0's get_verified_chain() crashes on that case.)
        return []
    if sys.version_info >= (3, 13):
        # Both return DER bytes, leaf first; the verified chain runs up to the trusted CA.
        chain = obj.get_verified_chain() or obj.get_unverified_chain()
        return [ssl.DER_cert_to_PEM_cert(der) for der in chain]
    # Before 3.13 only the client's own certificate is reachable through public API.
    return [ssl.DER_cert_to_PEM_cert(leaf)]
