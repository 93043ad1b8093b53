"""Hot TLS certificate reload: new connections get the new certificate, open ones stay up.

`reload_tls` checks the files first by building a throwaway SSLContext (and QUIC configuration)
from them; only when that works are they loaded into the running `SSLContext` and QUIC
configurations. OpenSSL copies a context's certificate into each connection when the connection
is created, and aioquic reads its configuration when a connection starts, so connections already
open keep the certificate they began with. A file that cannot be used is refused with one error
line naming it, and the old certificate stays in use.

`CertificateWatcher` decides when to reload for `--reload-certs`: it compares the files' stat
(mtime, size, inode) on each poll. Client CA certificates (`ca_certs`) are added to the trusted
set on reload; a CA removed from the file stays trusted until a restart (OpenSSL's store only
grows).
"""

from __future__ import annotations

import os
import ssl
from typing import TYPE_CHECKING, Protocol

from multicorn.net.tls import TLSConfigError, TLSSettings, create_ssl_context, read_certificates

if TYPE_CHECKING:
    import logging
    from collections.abc import Sequence

    from aioquic.quic.configuration import QuicConfiguration


__all__ = ["CertificateWatcher", "ServerCertHolder", "reload_tls"]


class ServerCertHolder(Protocol):
    """Something that reports the server certificate to apps (the ASGI `tls` extension)."""

    def replace_server_cert(self, server_cert: str | None) -> None: ...


def reload_tls(
    config: TLSSettings,
    context: ssl.SSLContext,
    *,
    logger: logging.Logger,
    holders: Sequence[ServerCertHolder] = (),
    quic: Sequence[QuicConfiguration] = (),
) -> bool:
    """Load `config`'s certificate, key and CA files into the running `context` and QUIC
    configurations; tell `holders` the new certificate. True when the new files are in use.

    On a file that cannot be used, logs an error naming it and changes nothing.
    """
    certfile = config.certfile
    if certfile is None:
        return False
    try:
        # Every check create_ssl_context makes (readable, parsable, key matches certificate).
        create_ssl_context(config)
        server_cert = read_certificates(certfile, "certfile")[0]
        fresh_quic = None
        if quic:
            from multicorn.net.quic import quic_configuration

            fresh_quic = quic_configuration(config)
    except TLSConfigError as exc:
        logger.error("TLS reload refused, the current certificate stays in use: %s", exc)
        return False
    password = config.keyfile_password
    try:
        context.load_cert_chain(certfile, config.keyfile, password if password else None)
        if config.ca_certs is not None:
            context.load_verify_locations(cafile=config.ca_certs)
    except (ssl.SSLError, OSError) as exc:
        # The files changed again between the check and the load.
        logger.error("TLS reload failed while loading %s: %s; retry the reload", certfile, exc)
        return False
    if fresh_quic is not None:
        for configuration in quic:
            configuration.certificate = fresh_quic.certificate
            configuration.certificate_chain = fresh_quic.certificate_chain
            configuration.private_key = fresh_quic.private_key
    for holder in holders:
        holder.replace_server_cert(server_cert)
    logger.info("TLS certificate reloaded from %s", certfile)
    return True


_Stamp = tuple[int, int, int] | None


def _stamp(path: str) -> _Stamp:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class CertificateWatcher:
    """Tells, on each `changed()` call, whether any of the TLS files changed since the last."""

    __slots__ = ("_paths", "_stamps")

    def __init__(self, config: TLSSettings) -> None:
        paths = (config.certfile, config.keyfile, config.ca_certs)
        self._paths = [path for path in paths if path is not None]
        self._stamps = [_stamp(path) for path in self._paths]

    def changed(self) -> bool:
        stamps = [_stamp(path) for path in self._paths]
        if stamps == self._stamps:
            return False
        self._stamps = stamps
        return True
