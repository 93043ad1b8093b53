"""The command line: flags (Hypercorn's names) mapped onto `Config` fields.

Owns the argument parser and turning argv into (app spec, config file, given settings). It
does not run anything; `multicorn.__main__` feeds the result to `load_config` and serves.
Values are parsed and validated with the same rules as the environment, so a bad flag fails
here with a one-line "argument --flag: ..." message, a hint to --help, and exit status 2.

`--help` lists the flags in sections: `FLAG_GROUPS` names the section of every setting, by its
`dest`, and the parser files each flag there as it is added, so a new flag needs one entry in
that table (tests/test_cli_args.py fails for a flag that has none).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from multicorn._version import __version__
from multicorn.config import (
    H2C_MODES,
    HTTP_ENGINES,
    INTERFACES,
    LIFESPAN_MODES,
    LOG_FORMATS,
    LOG_LEVELS,
    PROXY_PROTOCOL_MODES,
    VERIFY_MODES,
    WORKER_CLASSES,
    Config,
    ConfigError,
    parse_setting,
    setting_names,
)
from multicorn.net.binds import BindError, parse_bind

# The --help sections, in the order they are listed.
GROUP_TITLES = (
    "application",
    "process",
    "binding",
    "TLS",
    "HTTP (every version)",
    "HTTP/1.1",
    "HTTP/2",
    "HTTP/3 (QUIC)",
    "WebSocket",
    "limits",
    "proxies",
    "logging",
)

# The section each flag is listed under, by the setting (argparse dest) it sets. Some entries
# are for flags not every build has yet; an entry without a flag is harmless.
FLAG_GROUPS: dict[str, str] = {
    # application
    "config": "application",
    "factory": "application",
    "app_dir": "application",
    "interface": "application",
    "root_path": "application",
    "lifespan": "application",
    "startup_timeout": "application",
    "shutdown_timeout": "application",
    "wsgi_max_workers": "application",
    # process
    "worker_class": "process",
    "workers": "process",
    "graceful_timeout": "process",
    "worker_healthcheck_timeout": "process",
    "max_requests": "process",
    "max_requests_jitter": "process",
    "max_worker_memory": "process",
    "reload": "process",
    "reload_dirs": "process",
    "reload_includes": "process",
    "reload_excludes": "process",
    "pid": "process",
    "user": "process",
    "group": "process",
    "umask": "process",
    # binding
    "bind": "binding",
    "insecure_bind": "binding",
    "backlog": "binding",
    "reuse_port": "binding",
    # TLS
    "certfile": "TLS",
    "keyfile": "TLS",
    "keyfile_password": "TLS",
    "ca_certs": "TLS",
    "verify_mode": "TLS",
    "ciphers": "TLS",
    "alpn_protocols": "TLS",
    "ssl_handshake_timeout": "TLS",
    "reload_certs": "TLS",
    "reload_certs_interval": "TLS",
    # HTTP (every version)
    "keep_alive": "HTTP (every version)",
    "send_timeout": "HTTP (every version)",
    "include_date_header": "HTTP (every version)",
    "include_server_header": "HTTP (every version)",
    # HTTP/1.1
    "http": "HTTP/1.1",
    "keep_alive_max_requests": "HTTP/1.1",
    "header_timeout": "HTTP/1.1",
    "h11_max_incomplete_size": "HTTP/1.1",
    # HTTP/2
    "h2c": "HTTP/2",
    "h2_max_concurrent_streams": "HTTP/2",
    "h2_max_header_list_size": "HTTP/2",
    "h2_max_inbound_frame_size": "HTTP/2",
    "h2_initial_window_size": "HTTP/2",
    "h2_connection_window_size": "HTTP/2",
    # HTTP/3 (QUIC)
    "quic_bind": "HTTP/3 (QUIC)",
    "alt_svc_headers": "HTTP/3 (QUIC)",
    "quic_idle_timeout": "HTTP/3 (QUIC)",
    "quic_max_concurrent_streams": "HTTP/3 (QUIC)",
    "quic_max_stream_data": "HTTP/3 (QUIC)",
    "quic_max_data": "HTTP/3 (QUIC)",
    "quic_max_connections": "HTTP/3 (QUIC)",
    "quic_retry": "HTTP/3 (QUIC)",
    "quic_secret": "HTTP/3 (QUIC)",
    "quic_0rtt": "HTTP/3 (QUIC)",
    "h3_max_field_section_size": "HTTP/3 (QUIC)",
    "h3_qpack_max_table_capacity": "HTTP/3 (QUIC)",
    "h3_qpack_blocked_streams": "HTTP/3 (QUIC)",
    # WebSocket
    "websocket": "WebSocket",
    "ws_per_message_deflate": "WebSocket",
    "websocket_max_message_size": "WebSocket",
    "websocket_max_queue": "WebSocket",
    "websocket_ping_interval": "WebSocket",
    "websocket_ping_timeout": "WebSocket",
    "websocket_handshake_timeout": "WebSocket",
    # limits
    "max_request_body_size": "limits",
    "min_request_body_rate": "limits",
    "min_request_body_rate_grace": "limits",
    "limit_concurrency": "limits",
    # proxies
    "proxy_headers": "proxies",
    "forwarded_allow_ips": "proxies",
    "proxy_protocol": "proxies",
    "proxy_protocol_allow_ips": "proxies",
    # logging
    "access_logfile": "logging",
    "access_logformat": "logging",
    "error_logfile": "logging",
    "log_level": "logging",
    "log_config": "logging",
    "log_format": "logging",
}


class _Parser(argparse.ArgumentParser):
    """argparse, with each flag filed under its `FLAG_GROUPS` section and terser errors."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._sections = {title: self.add_argument_group(title) for title in GROUP_TITLES}

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        dest = kwargs.get("dest")
        if dest is None and args and args[0].startswith("-"):
            # The dest argparse would derive: the first long flag, else the first flag.
            long = [flag for flag in args if flag.startswith("--")]
            dest = (long or list(args))[0].lstrip("-").replace("-", "_")
        title = FLAG_GROUPS.get(dest) if dest is not None else None
        if title is None:
            return super().add_argument(*args, **kwargs)
        return self._sections[title].add_argument(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        # One line and a pointer, not the 20-line usage block in front of the message.
        self.exit(2, f"{self.prog}: error: {message}\nRun '{self.prog} --help' for the options.\n")


def _setting_type(name: str) -> Callable[[str], object]:
    def convert(text: str) -> object:
        try:
            return parse_setting(name, text)
        except ConfigError as exc:
            # argparse prefixes "argument --flag:", so the setting name would be noise.
            raise argparse.ArgumentTypeError(exc.reason) from None

    convert.__name__ = name
    return convert


def _bind_type(text: str) -> str:
    try:
        parse_bind(text)
    except BindError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text.strip()


def _quic_bind_type(text: str) -> str:
    text = _bind_type(text)
    if parse_bind(text).kind == "unix":
        raise argparse.ArgumentTypeError(f"QUIC listens on UDP: expected HOST:PORT, got {text!r}")
    return text


def _show(value: object) -> str:
    if isinstance(value, bool):
        text = "on" if value else "off"
    elif value is None:
        text = "none"
    elif isinstance(value, list):
        text = ", ".join(str(item) for item in value)
    elif value == "":
        text = "''"
    else:
        text = str(value)
    # argparse %-formats help strings; a literal % (as in the access log format) must survive.
    return text.replace("%", "%%")


def build_parser() -> argparse.ArgumentParser:
    """The `multicorn` argument parser. Settings flags default to None, meaning "not given"."""
    defaults = Config()
    parser = _Parser(
        prog="multicorn",
        # Listing every flag here made a 45-line usage block; the sections below list them.
        usage="%(prog)s [OPTIONS] APP",
        description="Serve an ASGI application over HTTP.",
        epilog=(
            "Settings are read, lowest to highest precedence, from defaults, the --config "
            "TOML file, MULTICORN_<SETTING> environment variables, then these flags."
        ),
    )

    def setting(*flags: str, dest: str, help: str, metavar: str | None = None) -> None:
        parser.add_argument(
            *flags,
            dest=dest,
            type=_setting_type(dest),
            default=None,
            metavar=metavar,
            help=f"{help} (default: {_show(getattr(defaults, dest))})",
        )

    def switch(flag: str, *, dest: str, help: str) -> None:
        parser.add_argument(
            flag,
            dest=dest,
            action=argparse.BooleanOptionalAction,
            default=None,
            help=f"{help} (default: {_show(getattr(defaults, dest))})",
        )

    def choices(options: tuple[str, ...]) -> str:
        return "{" + ",".join(options) + "}"

    parser.add_argument("app", metavar="APP", help="the application, as 'module:attribute'")
    parser.add_argument(
        "-c",
        "--config",
        dest="config",
        default=None,
        metavar="FILE",
        help="TOML file of settings, keyed by setting name (default: none)",
    )
    parser.add_argument(
        "-b",
        "--bind",
        dest="bind",
        action="append",
        type=_bind_type,
        default=None,
        metavar="ADDRESS",
        help=(
            "where to listen: HOST:PORT, [IPV6]:PORT, unix:PATH or fd://N; repeat to listen "
            f"on several (default: {_show(defaults.bind)})"
        ),
    )
    setting(
        "-k",
        "--worker-class",
        dest="worker_class",
        metavar=choices(WORKER_CLASSES),
        help="event loop to run on",
    )
    setting(
        "--http",
        dest="http",
        metavar=choices(HTTP_ENGINES),
        help="HTTP/1.1 request parser; auto picks httptools when installed (the speed extra)",
    )
    setting("--backlog", dest="backlog", metavar="N", help="pending connections the OS queues")
    setting(
        "--keep-alive",
        dest="keep_alive",
        metavar="SECONDS",
        help="close idle keep-alive connections after this long",
    )
    setting(
        "--keep-alive-max-requests",
        dest="keep_alive_max_requests",
        metavar="N",
        help="close a connection after serving this many requests",
    )
    setting(
        "--header-timeout",
        "--h11-header-timeout",
        dest="header_timeout",
        metavar="SECONDS",
        help="a request head, once begun, must arrive whole within this",
    )
    setting(
        "--graceful-timeout",
        dest="graceful_timeout",
        metavar="SECONDS",
        help="on shutdown, wait this long for requests in flight",
    )
    setting(
        "--root-path",
        dest="root_path",
        metavar="PATH",
        help="ASGI root_path, for apps mounted below a URL prefix",
    )
    setting(
        "--lifespan",
        dest="lifespan",
        metavar=choices(LIFESPAN_MODES),
        help="run the ASGI lifespan protocol: auto tolerates apps without it",
    )
    setting(
        "--startup-timeout",
        dest="startup_timeout",
        metavar="SECONDS",
        help="the app's lifespan startup must finish within this",
    )
    setting(
        "--shutdown-timeout",
        dest="shutdown_timeout",
        metavar="SECONDS",
        help="the app's lifespan shutdown must finish within this",
    )
    setting(
        "--h11-max-incomplete-size",
        dest="h11_max_incomplete_size",
        metavar="BYTES",
        help="largest HTTP/1.1 request head accepted",
    )
    switch("--date-header", dest="include_date_header", help="send a Date response header")
    switch("--server-header", dest="include_server_header", help="send a Server response header")
    setting(
        "--access-logfile",
        dest="access_logfile",
        metavar="FILE",
        help="write an access log here; '-' is stdout",
    )
    setting(
        "--access-logformat",
        dest="access_logformat",
        metavar="FORMAT",
        help="access log line, with Gunicorn-style atoms",
    )
    setting(
        "--error-logfile",
        "--log-file",
        dest="error_logfile",
        metavar="FILE",
        help="write the error log here; '-' is stderr",
    )
    setting(
        "--log-level",
        dest="log_level",
        metavar=choices(LOG_LEVELS),
        help="least severe error log messages to write",
    )
    setting(
        "--log-config",
        dest="log_config",
        metavar="FILE",
        help="logging configuration: dictConfig as .json or .yaml (PyYAML), or an .ini file",
    )
    setting(
        "--log-format",
        dest="log_format",
        metavar=choices(LOG_FORMATS),
        help="error and access log lines as text or as one JSON object each",
    )
    parser.add_argument(
        "--factory",
        dest="factory",
        action="store_const",
        const=True,
        default=None,
        help=(
            "APP is a factory: call it with no arguments to get the application "
            f"(default: {_show(defaults.factory)})"
        ),
    )
    setting(
        "--app-dir",
        dest="app_dir",
        metavar="DIR",
        help="import APP from this directory; '' is the current directory",
    )
    setting(
        "--interface",
        dest="interface",
        metavar=choices(INTERFACES),
        help="what APP is; auto detects ASGI 3, ASGI 2 or WSGI from its signature",
    )
    setting(
        "--wsgi-max-workers",
        dest="wsgi_max_workers",
        metavar="N",
        help="threads running a WSGI app's calls at once; more requests wait for one",
    )
    parser.add_argument(
        "--insecure-bind",
        dest="insecure_bind",
        action="append",
        type=_bind_type,
        default=None,
        metavar="ADDRESS",
        help="with --certfile, also listen here without TLS; repeatable (default: none)",
    )
    setting(
        "--certfile", dest="certfile", metavar="FILE", help="PEM certificate chain: enables TLS"
    )
    setting("--keyfile", dest="keyfile", metavar="FILE", help="PEM private key")
    setting(
        "--keyfile-password", dest="keyfile_password", metavar="TEXT", help="private key password"
    )
    setting("--ca-certs", dest="ca_certs", metavar="FILE", help="CAs for client certificates")
    setting(
        "--verify-mode",
        dest="verify_mode",
        metavar=choices(VERIFY_MODES),
        help="ask clients for a certificate",
    )
    setting("--ciphers", dest="ciphers", metavar="LIST", help="OpenSSL cipher list for TLS 1.2")
    parser.add_argument(
        "--alpn-protocols",
        dest="alpn_protocols",
        type=lambda text: [item.strip() for item in text.split(",") if item.strip()],
        default=None,
        metavar="LIST",
        help=f"ALPN protocols offered, comma-separated (default: {_show(defaults.alpn_protocols)})",
    )
    setting(
        "--ssl-handshake-timeout",
        dest="ssl_handshake_timeout",
        metavar="SECONDS",
        help="a TLS handshake must finish within this",
    )
    switch(
        "--reload-certs",
        dest="reload_certs",
        help="load certfile/keyfile/ca-certs again when they change, without a restart "
        "(SIGHUP reloads them too)",
    )
    setting(
        "--reload-certs-interval",
        dest="reload_certs_interval",
        metavar="SECONDS",
        help="how often --reload-certs checks the files",
    )
    setting("--h2c", dest="h2c", metavar=choices(H2C_MODES), help="cleartext HTTP/2")
    setting(
        "--h2-max-concurrent-streams",
        dest="h2_max_concurrent_streams",
        metavar="N",
        help="HTTP/2 streams a client may have open at once",
    )
    setting(
        "--h2-max-header-list-size",
        dest="h2_max_header_list_size",
        metavar="BYTES",
        help="largest HTTP/2 header list accepted",
    )
    setting(
        "--h2-max-inbound-frame-size",
        dest="h2_max_inbound_frame_size",
        metavar="BYTES",
        help="largest HTTP/2 frame accepted",
    )
    setting(
        "--h2-initial-window-size",
        dest="h2_initial_window_size",
        metavar="BYTES",
        help="HTTP/2 per-stream receive window",
    )
    setting(
        "--h2-connection-window-size",
        dest="h2_connection_window_size",
        metavar="BYTES",
        help="HTTP/2 per-connection receive window",
    )
    setting(
        "--send-timeout",
        dest="send_timeout",
        metavar="SECONDS",
        help="end a stream or connection whose output cannot move for this long",
    )
    switch(
        "--websocket",
        dest="websocket",
        help="serve WebSocket handshakes (HTTP/1.1 Upgrade, HTTP/2 extended CONNECT)",
    )
    switch(
        "--ws-per-message-deflate",
        dest="ws_per_message_deflate",
        help="accept a WebSocket client's permessage-deflate offer",
    )
    setting(
        "--websocket-max-message-size",
        dest="websocket_max_message_size",
        metavar="BYTES",
        help="largest WebSocket message received (after inflating); larger closes with 1009",
    )
    setting(
        "--websocket-max-queue",
        dest="websocket_max_queue",
        metavar="N",
        help="WebSocket messages received and not yet read by the app before reading pauses",
    )
    setting(
        "--websocket-ping-interval",
        dest="websocket_ping_interval",
        metavar="SECONDS",
        help="ping each WebSocket this often; 0 sends no pings",
    )
    setting(
        "--websocket-ping-timeout",
        dest="websocket_ping_timeout",
        metavar="SECONDS",
        help="close a WebSocket (1011) whose pong is this late; 0 waits forever",
    )
    setting(
        "--websocket-handshake-timeout",
        dest="websocket_handshake_timeout",
        metavar="SECONDS",
        help="the app must accept or deny a WebSocket, and a client answer its close, within this",
    )
    parser.add_argument(
        "--quic-bind",
        dest="quic_bind",
        action="append",
        type=_quic_bind_type,
        default=None,
        metavar="ADDRESS",
        help="serve HTTP/3 over QUIC on this UDP address (needs --certfile); repeatable "
        "(default: none)",
    )
    switch(
        "--alt-svc-headers",
        dest="alt_svc_headers",
        help="advertise HTTP/3 with Alt-Svc on HTTP/1.1 and HTTP/2 responses while QUIC is up",
    )
    setting(
        "--quic-idle-timeout",
        dest="quic_idle_timeout",
        metavar="SECONDS",
        help="close a QUIC connection idle this long",
    )
    setting(
        "--quic-max-concurrent-streams",
        dest="quic_max_concurrent_streams",
        metavar="N",
        help="HTTP/3 request streams a client may have open at once",
    )
    setting(
        "--quic-max-stream-data",
        dest="quic_max_stream_data",
        metavar="BYTES",
        help="QUIC per-stream receive window",
    )
    setting(
        "--quic-max-data",
        dest="quic_max_data",
        metavar="BYTES",
        help="QUIC per-connection receive window",
    )
    setting(
        "--h3-max-field-section-size",
        dest="h3_max_field_section_size",
        metavar="BYTES",
        help="largest HTTP/3 request head (names + values + 32 per field); larger ends the "
        "connection with H3_EXCESSIVE_LOAD",
    )
    setting(
        "--h3-qpack-max-table-capacity",
        dest="h3_qpack_max_table_capacity",
        metavar="BYTES",
        help="QPACK dynamic table a client may use; 0 turns it off",
    )
    setting(
        "--h3-qpack-blocked-streams",
        dest="h3_qpack_blocked_streams",
        metavar="N",
        help="HTTP/3 streams that may wait for QPACK table updates at once",
    )
    setting(
        "--quic-max-connections",
        dest="quic_max_connections",
        metavar="N",
        help="QUIC connections one listener holds at once; more Initials are dropped",
    )
    switch(
        "--quic-retry",
        dest="quic_retry",
        help="validate each QUIC client's address with a Retry before keeping any state",
    )
    switch(
        "--quic-0rtt",
        dest="quic_0rtt",
        help="accept 0-RTT early data (only GET, HEAD and OPTIONS before the handshake ends)",
    )
    setting(
        "--quic-secret",
        dest="quic_secret",
        metavar="HEX",
        help="64 hex digits signing QUIC Retry tokens and stateless resets, for several "
        "servers on one QUIC address; prefer MULTICORN_QUIC_SECRET (a command line is visible "
        "to every user)",
    )
    setting(
        "--max-request-body-size",
        dest="max_request_body_size",
        metavar="BYTES",
        help="answer a request body larger than this with 413, before the app reads past it "
        "(0: no cap)",
    )
    setting(
        "--min-request-body-rate",
        dest="min_request_body_rate",
        metavar="BYTES_PER_SECOND",
        help="answer 408 to a request body that arrives more slowly than this, counting only "
        "the time the server waits for it (0: off)",
    )
    setting(
        "--min-request-body-rate-grace",
        dest="min_request_body_rate_grace",
        metavar="SECONDS",
        help="waiting time allowed before min-request-body-rate applies",
    )
    setting(
        "--limit-concurrency",
        dest="limit_concurrency",
        metavar="N",
        help="requests and WebSockets served at once, server-wide; more are answered 503 with "
        "Retry-After without calling the app (0: no cap)",
    )
    switch(
        "--proxy-headers",
        dest="proxy_headers",
        help="believe X-Forwarded-For/-Proto/-Host/-Port and Forwarded from trusted proxies",
    )
    setting(
        "--forwarded-allow-ips",
        dest="forwarded_allow_ips",
        metavar="LIST",
        help="the trusted proxies, comma-separated: IP addresses, CIDR networks, 'unix', '*'",
    )
    setting(
        "--proxy-protocol",
        dest="proxy_protocol",
        metavar=choices(PROXY_PROTOCOL_MODES),
        help="read HAProxy's PROXY protocol header on cleartext listeners",
    )
    setting(
        "--proxy-protocol-allow-ips",
        dest="proxy_protocol_allow_ips",
        metavar="LIST",
        help="peers that must send the PROXY header (others may not), comma-separated",
    )
    # ---- processes: the supervisor and its workers ----
    parser.add_argument(
        "-w",
        "--workers",
        dest="workers",
        type=_setting_type("workers"),
        default=None,
        metavar="N",
        help="worker processes sharing the listeners; more than 1 starts a supervisor "
        f"(default: $WEB_CONCURRENCY when set, else {defaults.workers})",
    )
    switch(
        "--reuse-port",
        dest="reuse_port",
        help="each worker binds its own SO_REUSEPORT socket instead of sharing one",
    )
    setting(
        "--worker-healthcheck-timeout",
        dest="worker_healthcheck_timeout",
        metavar="SECONDS",
        help="kill and replace a worker whose event loop has not reported for this long",
    )
    setting(
        "--max-requests",
        dest="max_requests",
        metavar="N",
        help="replace a worker after it served this many requests (0: never)",
    )
    setting(
        "--max-requests-jitter",
        dest="max_requests_jitter",
        metavar="N",
        help="add a random 0..N to each worker's --max-requests",
    )
    setting(
        "--max-worker-memory",
        dest="max_worker_memory",
        metavar="MIB",
        help="replace a worker whose resident memory passed this many MiB (0: never)",
    )
    parser.add_argument(
        "--reload",
        dest="reload",
        action="store_const",
        const=True,
        default=None,
        help="restart the worker when a watched file changes; for development "
        f"(default: {_show(defaults.reload)})",
    )
    parser.add_argument(
        "--reload-dir",
        dest="reload_dirs",
        action="append",
        default=None,
        metavar="DIR",
        help="watch this directory; repeatable (default: the current directory)",
    )
    parser.add_argument(
        "--reload-include",
        dest="reload_includes",
        action="append",
        default=None,
        metavar="GLOB",
        help="watch files whose name matches; repeatable, replaces the default "
        f"(default: {_show(defaults.reload_includes)})",
    )
    parser.add_argument(
        "--reload-exclude",
        dest="reload_excludes",
        action="append",
        default=None,
        metavar="GLOB",
        help="ignore files and directories whose name matches; repeatable, replaces the "
        f"default (default: {_show(defaults.reload_excludes)})",
    )
    setting("-p", "--pid", dest="pid", metavar="FILE", help="write the process id to this file")
    setting(
        "-u",
        "--user",
        dest="user",
        metavar="USER",
        help="after binding, serve as this user (name or uid; the server must start as root)",
    )
    setting(
        "-g",
        "--group",
        dest="group",
        metavar="GROUP",
        help="after binding, serve as this group (name or gid; the server must start as root)",
    )
    setting(
        "-m",
        "--umask",
        dest="umask",
        metavar="OCTAL",
        help="process umask, set before binding (decides unix socket file modes), e.g. 027",
    )
    parser.add_argument("--version", action="version", version=f"multicorn {__version__}")
    return parser


def parse_args(argv: Sequence[str]) -> tuple[str, str | None, dict[str, object]]:
    """Parse `argv` (without the program name) into (app spec, config file, given settings).

    The settings dict is keyed by Config field name and holds only flags the user gave.
    Exits via SystemExit (status 2) on bad usage, and status 0 for --help / --version.
    """
    namespace = build_parser().parse_args(list(argv))
    given: dict[str, object] = {}
    for name in setting_names():
        value = getattr(namespace, name, None)
        if value is not None:
            given[name] = value
    return namespace.app, namespace.config, given
