"""The QUIC (HTTP/3) TLS configuration: aioquic's `QuicConfiguration`, built from the same
certificate and key settings as the TCP listeners' `SSLContext` (net/tls.py).

QUIC does its TLS 1.3 handshake inside aioquic, not OpenSSL. This module reads the files, so
that `protocol.quic.QuicEndpoint`, which takes the finished configuration, never opens one. It
is kept apart from net/tls.py because the runtime backends import that module (for `TLSInfo`)
and must not import aioquic, even indirectly.
"""

from __future__ import annotations

import re

from aioquic.quic.configuration import QuicConfiguration
from aioquic.tls import load_pem_private_key, load_pem_x509_certificates

from multicorn.net.tls import TLSConfigError, TLSSettings, read_certificates, read_text

# PKCS#8 ("PRIVATE KEY", "ENCRYPTED PRIVATE KEY") or traditional ("EC PRIVATE KEY", ...).
_PEM_KEY = re.compile(
    r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----\s.*?-----END \1PRIVATE KEY-----", re.DOTALL
)

__all__ = ["quic_configuration"]


def quic_configuration(
    config: TLSSettings,
    *,
    idle_timeout: float = 30.0,
    connection_id_length: int = 8,
    max_datagram_size: int = 1200,
) -> QuicConfiguration:
    """The server-side aioquic configuration for HTTP/3 over QUIC.

    ALPN is always `h3` (RFC 9114 3.1): `config.alpn_protocols` names what TCP listeners offer.
    The idle timeout is QUIC's own (RFC 9000 10.1: the smaller of ours and the client's wins).
    `connection_id_length` is the length of the connection IDs the server issues, which is how
    the endpoint finds the connection of a short-header packet. Client certificates are not
    requested: aioquic's server side sends no CertificateRequest, so `ca_certs` and
    `verify_mode` do not apply to QUIC.

    Raises TLSConfigError naming the setting and the file when the certificate or key cannot be
    used, and ValueError when `config.certfile` is not set (QUIC has no cleartext form).
    """
    if config.certfile is None:
        raise ValueError("QUIC needs a certificate: set certfile (and keyfile)")
    certfile, keyfile = config.certfile, config.keyfile
    pems = read_certificates(certfile, "certfile")
    quic = QuicConfiguration(
        is_client=False,
        alpn_protocols=["h3"],
        idle_timeout=idle_timeout,
        connection_id_length=connection_id_length,
        max_datagram_size=max_datagram_size,
    )
    key_setting = "keyfile" if keyfile is not None else "certfile"
    key_path = keyfile if keyfile is not None else certfile
    # Parsed here rather than by QuicConfiguration.load_cert_chain, which only finds a key
    # stored in certfile when it is PKCS#8 and reports anything else as a bad certificate.
    key_pem = _PEM_KEY.search(read_text(key_path, key_setting))
    if key_pem is None:
        raise TLSConfigError(
            f"{key_setting} {key_path!r} holds no PEM private key"
            + ("; give the private key file with keyfile (--keyfile)" if keyfile is None else ""),
            path=key_path,
        )
    password = config.keyfile_password
    try:
        quic.private_key = load_pem_private_key(
            key_pem.group().encode(), None if password is None else password.encode()
        )
    except (ValueError, TypeError) as exc:
        # cryptography's verdicts: a key that needs a password, a wrong password, not a key.
        raise TLSConfigError(
            f"{key_setting} {key_path!r} holds no private key QUIC can use ({exc}); give the "
            "PEM private key, and keyfile_password if it is encrypted",
            path=key_path,
        ) from exc
    certificates = load_pem_x509_certificates("".join(pems).encode())
    quic.certificate = certificates[0]
    quic.certificate_chain = certificates[1:]
    return quic
