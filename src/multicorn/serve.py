"""Running a server inside an event loop that is already running: `serve()` and `Server`.

The order of events is the same on every runtime and lives here once:
bind sockets -> lifespan startup -> accept -> (shutdown trigger) -> stop accepting ->
drain connections within the graceful timeout -> lifespan shutdown.
Only the listeners, signals and task primitives come from the runtime backend, chosen by which
async library is running (sniffio).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import stat
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast, final

import sniffio

from multicorn.app.connection import ConnectionHandler
from multicorn.app.context import AppSettings, ConnectionInfo, DefaultHeaders, ServerContext
from multicorn.app.lifespan import Lifespan
from multicorn.app.proxy import ProxyTrust
from multicorn.app.registry import ConnectionRegistry
from multicorn.config import Config, ConfigError
from multicorn.logging import configure_logging
from multicorn.net.binds import format_url, parse_bind
from multicorn.net.sockets import bound_url, create_datagram_socket, create_socket
from multicorn.net.tls import TLSInfoFactory, create_ssl_context
from multicorn.protocol.http2 import HTTP2Limits
from multicorn.protocol.http11 import HTTP11Limits
from multicorn.protocol.http11_parsers import httptools_available
from multicorn.protocol.negotiate import ProtocolLimits, for_connection
from multicorn.protocol.websocket import WebSocketLimits
from multicorn.runtime.base import ServerTLS

if TYPE_CHECKING:
    import logging
    import socket
    from types import TracebackType

    from multicorn.protocol.proxy_protocol import ProxyMode
    from multicorn.runtime.base import (
        Backend,
        ConnectionDetails,
        DatagramTransport,
        Runtime,
        Transport,
    )
    from multicorn.typing import ASGIApp


# How long a client may remember the HTTP/3 alternative: a day, as the big sites announce it.
_ALT_SVC_MAX_AGE = 86400


def _backend(config: Config, logger: logging.Logger) -> Backend:
    library = sniffio.current_async_library()
    if library == "trio":
        from multicorn.runtime.trio.serve import TrioBackend

        return TrioBackend(logger)
    if library == "asyncio":
        from multicorn.runtime.asyncio.serve import AsyncioBackend

        return AsyncioBackend(logger)
    raise RuntimeError(f"multicorn runs on asyncio or trio, not {library}")


def protocol_limits(config: Config) -> ProtocolLimits:
    return ProtocolLimits(
        http11=HTTP11Limits(
            max_incomplete_size=config.h11_max_incomplete_size,
            keep_alive_timeout=config.keep_alive,
            header_timeout=config.header_timeout,
            max_requests=config.keep_alive_max_requests,
            h2c_prior_knowledge=config.h2c in ("prior-knowledge", "both"),
            h2c_upgrade=config.h2c in ("upgrade", "both"),
            engine=_http_engine(config.http),
            websocket=config.websocket,
        ),
        http2=HTTP2Limits(
            max_concurrent_streams=config.h2_max_concurrent_streams,
            max_header_list_size=config.h2_max_header_list_size,
            max_inbound_frame_size=config.h2_max_inbound_frame_size,
            initial_window_size=config.h2_initial_window_size,
            connection_window_size=config.h2_connection_window_size,
            keep_alive_timeout=config.keep_alive,
            send_timeout=config.send_timeout,
            extended_connect=config.websocket,
        ),
        websocket=WebSocketLimits(
            enabled=config.websocket,
            max_message_size=config.websocket_max_message_size,
            per_message_deflate=config.ws_per_message_deflate,
            ping_interval=config.websocket_ping_interval or None,
            ping_timeout=config.websocket_ping_timeout or None,
            handshake_timeout=config.websocket_handshake_timeout,
            max_queued_messages=config.websocket_max_queue,
        ),
    )


def _http_engine(choice: str) -> str:
    if choice == "h11":
        return "h11"
    if httptools_available():
        return "httptools"
    if choice == "httptools":
        raise ConfigError(
            "http", "httptools is not installed: pip install 'multicorn[speed]', or use --http h11"
        )
    return "h11"


def _alt_svc(sockets: list[socket.socket]) -> bytes | None:
    """The Alt-Svc value that points clients at the QUIC listeners (RFC 7838 3: an alternative
    with only a port is on the same host), each port once; None without any."""
    ports = dict.fromkeys(sock.getsockname()[1] for sock in sockets)
    if not ports:
        return None
    return ", ".join(f'h3=":{port}"; ma={_ALT_SVC_MAX_AGE}' for port in ports).encode("ascii")


def _address(name: Any) -> tuple[str, int] | None:
    if isinstance(name, tuple) and len(name) >= 2:
        return (str(name[0]), int(name[1]))
    return None


@final
class Server:
    """A running server, as an async context manager.

    ```python
    async with multicorn.Server(app, Config(bind=["127.0.0.1:0"])) as server:
        print(server.bound_addresses)   # ["http://127.0.0.1:54321"]
    ```
    Leaving the block shuts down gracefully (within `config.graceful_timeout`).
    """

    def __init__(self, app: ASGIApp, config: Config | None = None) -> None:
        self.app = app
        self.config = config if config is not None else Config()
        self.bound_addresses: list[str] = []
        self.bound_quic_addresses: list[str] = []  # HTTP/3 (UDP) listeners, as https URLs
        self._sockets: list[socket.socket] = []
        self._quic_sockets: list[socket.socket] = []
        self._unix_paths: list[str] = []
        self._exit = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Server:
        config = self.config
        loggers = configure_logging(config)
        self._loggers = loggers
        backend = _backend(config, loggers.error)
        self._backend = backend
        await self._exit.enter_async_context(backend.session())
        try:
            await self._start(backend)
        except BaseException:
            await self._exit.aclose()
            self._close_sockets()
            self._close_quic_sockets()
            raise
        return self

    async def _start(self, backend: Backend) -> None:
        config = self.config
        ssl_context = create_ssl_context(config)
        tls_info = TLSInfoFactory.from_config(ssl_context, config) if ssl_context else None
        server_tls = None
        if ssl_context is not None and tls_info is not None:
            server_tls = ServerTLS(
                context=ssl_context,
                handshake_timeout=config.ssl_handshake_timeout,
                describe=tls_info.from_ssl_object,
            )
        # With a certificate, `bind` speaks TLS and `insecure_bind` cleartext (as Hypercorn).
        groups = [(config.bind, server_tls), (config.insecure_bind, None)]
        binds = []
        for texts, group_tls in groups:
            for text in texts:
                bind = parse_bind(text)
                binds.append((bind, group_tls))
                self._sockets.append(
                    create_socket(bind, backlog=config.backlog, reuse_port=config.reuse_port)
                )
                if bind.kind == "unix":
                    self._unix_paths.append(bind.path)
        for text in config.quic_bind:
            self._quic_sockets.append(create_datagram_socket(parse_bind(text)))
        runtime: Runtime = backend.runtime
        self._lifespan = Lifespan(
            self.app, mode=config.lifespan, runtime=runtime, logger=self._loggers.error
        )
        await self._lifespan.startup(config.startup_timeout)
        context = ServerContext(
            app=self.app,
            settings=AppSettings(
                root_path=config.root_path,
                send_timeout=config.send_timeout,
                max_request_body_size=config.max_request_body_size,
                min_request_body_rate=config.min_request_body_rate,
                min_request_body_rate_grace=config.min_request_body_rate_grace,
                limit_concurrency=config.limit_concurrency,
                proxy_trust=(
                    ProxyTrust(config.forwarded_allow_ips) if config.proxy_headers else None
                ),
            ),
            loggers=self._loggers,
            protocol_limits=protocol_limits(config),
            default_headers=DefaultHeaders(
                date=config.include_date_header,
                server=config.include_server_header,
                alt_svc=_alt_svc(self._quic_sockets) if config.alt_svc_headers else None,
            ),
            state=self._lifespan.state,
        )
        registry = ConnectionRegistry(runtime)
        self._registry = registry
        # PROXY protocol: decided per connection, from the peer; None when it is off.
        header_trust = None
        header_mode = cast("ProxyMode", config.proxy_protocol)
        if config.proxy_protocol != "off":
            header_trust = ProxyTrust(config.proxy_protocol_allow_ips)
            if server_tls is not None and config.bind:
                self._loggers.error.warning(
                    "the PROXY protocol is read on cleartext listeners only, not on %s",
                    ", ".join(config.bind),
                )

        def new_connection(
            transport: Transport, conn_runtime: Runtime, details: ConnectionDetails
        ) -> ConnectionHandler:
            server = _address(details.sockname)
            tls = details.tls
            client = _address(details.peername)
            trust = context.settings.proxy_trust
            info = ConnectionInfo(
                client=client,
                server=server if server is not None else (str(details.sockname), None),
                scheme="https" if tls is not None else "http",
                tls=None if tls is None else tls.as_extension(),
                forwarder=None if trust is None else trust.for_peer(client),
            )
            proxy_header: ProxyMode | None = None
            if header_trust is not None and tls is None:
                # A trusted balancer must send the header; anyone else may not.
                proxy_header = header_mode if header_trust.trusts_peer(client) else "reject"
            protocol = for_connection(
                context.protocol_limits,
                alpn=None if tls is None else tls.alpn,
                tls=tls is not None,
                now=conn_runtime.now(),
                proxy_header=proxy_header,
            )
            return ConnectionHandler(
                protocol=protocol,
                transport=transport,
                runtime=conn_runtime,
                context=context,
                info=info,
                registry=registry,
            )

        for (bind, bind_tls), sock in zip(binds, self._sockets, strict=True):
            await backend.start_listener(sock, new_connection, backlog=config.backlog, tls=bind_tls)
            url = bound_url(sock, bind, scheme="https" if bind_tls else "http")
            self.bound_addresses.append(url)
            self._loggers.error.info("Running on %s (CTRL + C to quit)", url)
        if self._quic_sockets:
            await self._start_quic(backend, context, registry, tls_info)

    async def _start_quic(
        self,
        backend: Backend,
        context: ServerContext,
        registry: ConnectionRegistry,
        tls_info: TLSInfoFactory | None,
    ) -> None:
        # Imported here: aioquic costs ~100 ms to import, which servers without QUIC skip.
        from multicorn.app.quic import QuicListener
        from multicorn.net.quic import quic_configuration
        from multicorn.protocol.http3 import HTTP3Limits
        from multicorn.protocol.quic import QuicEndpoint

        config = self.config
        configuration = quic_configuration(config, idle_timeout=config.quic_idle_timeout)
        configuration.max_data = config.quic_max_data
        configuration.max_stream_data = config.quic_max_stream_data
        limits = HTTP3Limits(
            extended_connect=config.websocket,
            max_concurrent_streams=config.quic_max_concurrent_streams,
            max_field_section_size=config.h3_max_field_section_size,
            qpack_max_table_capacity=config.h3_qpack_max_table_capacity,
            qpack_blocked_streams=config.h3_qpack_blocked_streams,
        )
        # Signs Retry and stateless reset tokens. Per process unless configured: another process
        # on the same port must not be able to reset this one's connections, unless it is a
        # sibling worker (the supervisor gives them one secret) that may be handed a packet
        # of this one's connections.
        secret = bytes.fromhex(config.quic_secret) if config.quic_secret else os.urandom(32)
        # HTTP/3 responses need no Alt-Svc pointing at HTTP/3.
        quic_context = dataclasses.replace(
            context,
            default_headers=DefaultHeaders(
                date=config.include_date_header, server=config.include_server_header
            ),
        )
        server_cert = None if tls_info is None else tls_info.server_cert
        for sock in self._quic_sockets:
            server: tuple[str, int | None] | None = _address(sock.getsockname())

            def new_endpoint(
                transport: DatagramTransport, runtime: Runtime, server: Any = server
            ) -> QuicListener:
                return QuicListener(
                    transport=transport,
                    runtime=runtime,
                    endpoint=QuicEndpoint(
                        configuration=configuration,
                        now=runtime.now(),
                        limits=limits,
                        secret=secret,
                        retry=config.quic_retry,
                        max_connections=config.quic_max_connections,
                        early_data=config.quic_0rtt,
                    ),
                    context=quic_context,
                    registry=registry,
                    server=server,
                    server_cert=server_cert,
                )

            await backend.start_datagram_endpoint(sock, new_endpoint)
            url = format_url(sock.getsockname(), kind="tcp", scheme="https")
            self.bound_quic_addresses.append(url)
            self._loggers.error.info("Running HTTP/3 (QUIC) on %s", url)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.shutdown()
        finally:
            await self._exit.aclose()

    @property
    def requests_served(self) -> int:
        """Requests and WebSockets this server has started to serve, over every listener."""
        return self._registry.served

    async def shutdown(self, *, restart: bool = False) -> None:
        """Stop accepting, drain connections within the graceful timeout, run lifespan shutdown.

        `restart`: another process takes over the listeners, so clients may come straight back
        (WebSockets are closed with 1012 instead of 1001; an idle HTTP/1.1 connection answers
        one more request, with `connection: close`, instead of closing under a client that may
        be sending it)."""
        if not self._sockets:
            return
        self._backend.stop_listeners()
        self._close_sockets()
        if not await self._registry.drain(self.config.graceful_timeout, restart=restart):
            self._loggers.error.info(
                "graceful timeout (%s s) passed; cancelled what was left",
                self.config.graceful_timeout,
            )
        # Only now: QUIC connections drain over their endpoint's socket.
        self._backend.close_datagram_endpoints()
        self._close_quic_sockets()
        await self._lifespan.shutdown(self.config.shutdown_timeout)

    def _close_quic_sockets(self) -> None:
        for sock in self._quic_sockets:
            with contextlib.suppress(OSError):
                sock.close()
        self._quic_sockets = []

    def _close_sockets(self) -> None:
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()
        self._sockets = []
        # Leave no stale socket file behind for the next start to trip over.
        for path in self._unix_paths:
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.stat(path).st_mode):
                    os.unlink(path)
        self._unix_paths = []

    async def wait_for_signal(self) -> None:
        """Return on SIGINT or SIGTERM (main thread only; elsewhere wait forever)."""
        await self._backend.wait_for_signal()


async def serve(
    app: ASGIApp,
    config: Config | None = None,
    *,
    shutdown_trigger: Callable[[], Awaitable[Any]] | None = None,
) -> None:
    """Serve `app` until `shutdown_trigger()` returns (default: until SIGINT or SIGTERM).

    Works inside a running asyncio event loop (uvloop included) or a trio run.
    """
    async with Server(app, config) as server:
        if shutdown_trigger is None:
            await server.wait_for_signal()
        else:
            await shutdown_trigger()
