"""Running a server inside an event loop that is already running: `serve()` and `Server`.

The order of events is the same on every runtime and lives here once:
umask -> bind sockets -> drop to user/group -> lifespan startup -> accept -> sd_notify READY=1
(and watchdog pings) -> (shutdown trigger) -> STOPPING=1 -> stop accepting -> drain connections
within the graceful timeout -> lifespan shutdown. SIGHUP (and --reload-certs) reload the TLS
certificate in place (multicorn.tlsreload).
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

from multicorn.app.asgi2 import ASGI2Adapter
from multicorn.app.connection import ConnectionHandler
from multicorn.app.context import AppSettings, ConnectionInfo, DefaultHeaders, ServerContext
from multicorn.app.errors import StartupInterrupted
from multicorn.app.lifespan import Lifespan
from multicorn.app.proxy import (
    ProxyTrust,
    header_of,
    peer_address,
    proxy_preamble,
    with_proxy_header,
)
from multicorn.app.registry import ConnectionRegistry
from multicorn.app.wsgi import WSGIAdapter
from multicorn.config import Config, ConfigError, install_hint
from multicorn.daemon import apply_umask, chown_paths, drop_privileges, resolve_identity
from multicorn.loading import detect_interface
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
from multicorn.systemd import Notifier, watchdog_interval
from multicorn.tlsreload import CertificateWatcher, ServerCertHolder, reload_tls

if TYPE_CHECKING:
    import logging
    import socket
    import ssl
    from types import TracebackType

    from aioquic.quic.configuration import QuicConfiguration

    from multicorn.protocol.proxy_protocol import ProxyMode
    from multicorn.runtime.base import (
        Backend,
        ConnectionDetails,
        DatagramTransport,
        Runtime,
        TimerHandle,
        Transport,
        Waiter,
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
            "http", f"httptools is not installed: {install_hint('speed')}, or use --http h11"
        )
    return "h11"


def _alt_svc(sockets: list[socket.socket]) -> bytes | None:
    """The Alt-Svc value that points clients at the QUIC listeners (RFC 7838 3: an alternative
    with only a port is on the same host), each port once; None without any."""
    ports = dict.fromkeys(sock.getsockname()[1] for sock in sockets)
    if not ports:
        return None
    return ", ".join(f'h3=":{port}"; ma={_ALT_SVC_MAX_AGE}' for port in ports).encode("ascii")


def adapt_app(app: Any, config: Config, runtime: Runtime, logger: logging.Logger) -> ASGIApp:
    """`app` as the ASGI 3 application the bridges call: ASGI 2 and WSGI apps wrapped once,
    for the interface `config.interface` names or, with "auto", the one its signature shows."""
    interface = config.interface
    if interface == "auto":
        interface = detect_interface(app)
    if interface == "asgi2":
        logger.debug("serving an ASGI 2 application")
        return ASGI2Adapter(app)
    if interface == "wsgi":
        logger.info("Serving a WSGI application in up to %d threads", config.wsgi_max_workers)
        return WSGIAdapter(
            app,
            runtime=runtime,
            max_workers=config.wsgi_max_workers,
            logger=logger,
            multiprocess=config.workers > 1,
        )
    return cast("ASGIApp", app)


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
        # Hot TLS reload: what a new certificate is loaded into.
        self._ssl_context: ssl.SSLContext | None = None
        self._cert_holders: list[ServerCertHolder] = []
        self._quic_configurations: list[QuicConfiguration] = []
        self._timers: dict[str, TimerHandle] = {}
        # Set by serve(): SIGINT and SIGTERM are caught from the start, lifespan startup
        # included, so none is left to the process's handlers, which may ignore it (a process
        # started in the background by a shell ignores SIGINT) or end the process undrained.
        self._catch_signals = False
        self._signalled: Waiter | None = None  # set by a signal, while catching them
        self._lifespan: Lifespan | None = None

    async def __aenter__(self) -> Server:
        config = self.config
        loggers = configure_logging(config)
        self._loggers = loggers
        self._notifier = Notifier.from_environ(os.environ, loggers.error)
        backend = _backend(config, loggers.error)
        self._backend = backend
        await self._exit.enter_async_context(backend.session())
        try:
            if self._catch_signals:
                self._catch(backend)
            await self._start(backend)
        except BaseException:
            await self._exit.aclose()
            self._close_sockets()
            self._close_quic_sockets()
            raise
        return self

    def _catch(self, backend: Backend) -> Waiter:
        signalled = self._signalled
        if signalled is None:
            self._signalled = signalled = backend.runtime.waiter()
            backend.catch_signals(self._on_signal, self._on_hangup)
        return signalled

    def _on_signal(self) -> None:
        if self._signalled is not None:
            self._signalled.set()
        if self._lifespan is not None:
            # Stopping at once beats serving first: startup may take up to startup_timeout.
            self._lifespan.interrupt()

    async def _start(self, backend: Backend) -> None:
        config = self.config
        ssl_context = create_ssl_context(config)
        tls_info = TLSInfoFactory.from_config(ssl_context, config) if ssl_context else None
        self._ssl_context = ssl_context
        if tls_info is not None:
            self._cert_holders.append(tls_info)
        # Before any socket exists: the umask decides the mode of unix socket files.
        apply_umask(config.umask)
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
        # Bound (ports below 1024 need root); everything from here on runs as user/group.
        identity = resolve_identity(config.user, config.group)
        chown_paths(self._unix_paths, identity)
        drop_privileges(identity)
        runtime: Runtime = backend.runtime
        app = adapt_app(self.app, config, runtime, self._loggers.error)
        self._lifespan = lifespan = Lifespan(
            app, mode=config.lifespan, runtime=runtime, logger=self._loggers.error
        )
        await lifespan.startup(config.startup_timeout)
        context = ServerContext(
            app=app,
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
            state=lifespan.state,
        )
        registry = ConnectionRegistry(runtime)
        self._registry = registry
        # PROXY protocol: the header comes before anything else, TLS included, so the
        # listener reads it (a preamble) and the connection starts with what it says.
        preamble = None
        if config.proxy_protocol != "off":
            preamble = proxy_preamble(
                ProxyTrust(config.proxy_protocol_allow_ips),
                cast("ProxyMode", config.proxy_protocol),
                timeout=config.header_timeout,
            )

        def new_connection(
            transport: Transport, conn_runtime: Runtime, details: ConnectionDetails
        ) -> ConnectionHandler:
            server = peer_address(details.sockname)
            tls = details.tls
            client = peer_address(details.peername)
            trust = context.settings.proxy_trust
            info = ConnectionInfo(
                client=client,
                server=server if server is not None else (str(details.sockname), None),
                scheme="https" if tls is not None else "http",
                tls=None if tls is None else tls.as_extension(),
                forwarder=None if trust is None else trust.for_peer(client),
            )
            if details.preamble:
                # The load balancer named the client: scopes and log lines name it.
                info = with_proxy_header(info, header_of(details.preamble), context.settings)
            protocol = for_connection(
                context.protocol_limits,
                alpn=None if tls is None else tls.alpn,
                tls=tls is not None,
                now=conn_runtime.now(),
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
            await backend.start_listener(
                sock, new_connection, backlog=config.backlog, tls=bind_tls, preamble=preamble
            )
            url = bound_url(sock, bind, scheme="https" if bind_tls else "http")
            self.bound_addresses.append(url)
            self._loggers.error.info("Running on %s (CTRL + C to quit)", url)
        if self._quic_sockets:
            await self._start_quic(backend, context, registry, tls_info)
        urls = self.bound_addresses + self.bound_quic_addresses
        self._notifier.ready(f"Serving on {', '.join(urls)}")
        self._start_watchdog(runtime)
        if config.reload_certs and ssl_context is not None:
            self._watch_certificates(runtime, CertificateWatcher(config))

    def _start_watchdog(self, runtime: Runtime) -> None:
        """WATCHDOG=1 pings from the event loop itself, so a stuck loop stops them."""
        interval = watchdog_interval(os.environ, os.getpid())
        if interval is None or not self._notifier.enabled:
            return

        def ping() -> None:
            self._notifier.watchdog()
            self._timers["watchdog"] = runtime.call_at(runtime.now() + interval, ping)

        ping()

    def _watch_certificates(self, runtime: Runtime, watcher: CertificateWatcher) -> None:
        interval = self.config.reload_certs_interval

        def poll() -> None:
            try:
                if watcher.changed():
                    self._reload_tls_safely()
            finally:
                self._timers["certificates"] = runtime.call_at(runtime.now() + interval, poll)

        self._timers["certificates"] = runtime.call_at(runtime.now() + interval, poll)

    def reload_tls(self) -> bool:
        """Load the configured certificate, key and CA files again: new connections (TCP and
        QUIC) use them, open ones keep theirs. A file that cannot be used is refused with an
        error log line and the old certificate stays. True when the new files are in use."""
        if self._ssl_context is None:
            self._loggers.error.info("no TLS certificate to reload")
            return False
        self._notifier.reloading("Reloading TLS certificates")
        try:
            return reload_tls(
                self.config,
                self._ssl_context,
                logger=self._loggers.error,
                holders=self._cert_holders,
                quic=self._quic_configurations,
            )
        finally:
            urls = self.bound_addresses + self.bound_quic_addresses
            self._notifier.ready(f"Serving on {', '.join(urls)}")

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
        self._quic_configurations.append(configuration)
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
            server: tuple[str, int | None] | None = peer_address(sock.getsockname())

            def new_endpoint(
                transport: DatagramTransport, runtime: Runtime, server: Any = server
            ) -> QuicListener:
                listener = QuicListener(
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
                self._cert_holders.append(listener)
                return listener

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
        self._notifier.stopping("Shutting down")
        self._loggers.error.info("Shutting down")
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
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
        if self._lifespan is not None:
            await self._lifespan.shutdown(self.config.shutdown_timeout)
        self._loggers.error.info("Finished server process [%d]", os.getpid())

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
        """Return on SIGINT or SIGTERM (main thread only; elsewhere wait forever), then leave
        them to the process's handlers again."""
        signalled = self._catch(self._backend)
        try:
            await signalled.wait()
        finally:
            self._backend.release_signals()
            self._signalled = None

    def _on_hangup(self) -> None:
        if self._ssl_context is None:
            self._loggers.error.info("SIGHUP: no TLS certificate to reload; ignored")
            return
        self._reload_tls_safely()

    def _reload_tls_safely(self) -> None:
        # From a signal or a timer: a surprise must cost the reload, never the server.
        try:
            self.reload_tls()
        except Exception:
            self._loggers.error.exception("TLS reload failed; the current certificate stays")


async def serve(
    app: ASGIApp,
    config: Config | None = None,
    *,
    shutdown_trigger: Callable[[], Awaitable[Any]] | None = None,
) -> None:
    """Serve `app` until `shutdown_trigger()` returns (default: until SIGINT or SIGTERM).

    Works inside a running asyncio event loop (uvloop included) or a trio run.
    """
    server = Server(app, config)
    server._catch_signals = shutdown_trigger is None
    try:
        async with server:
            if shutdown_trigger is None:
                await server.wait_for_signal()
            else:
                await shutdown_trigger()
    except StartupInterrupted as exc:
        # Asked to stop while starting: stopped, nothing served, nothing to report but this.
        server._loggers.error.info("%s; stopped", exc)
