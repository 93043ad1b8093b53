"""The one configuration object, and where its values come from.

Precedence, lowest to highest: defaults, a TOML file, MULTICORN_* environment variables,
command-line flags, the Python API (keyword arguments / attribute assignment).

This module owns the `Config` field list, the rules each field's value must obey, the
coercion of text (environment variables, flags) and TOML values into those types, and the
merging of all sources in `load_config`. Every rejected value raises `ConfigError`, which names
the setting and where the value came from.
"""

from __future__ import annotations

import difflib
import math
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Final, Literal

from multicorn.app.proxy import ProxyTrust
from multicorn.daemon import parse_umask
from multicorn.net.binds import BindError, parse_bind

ENV_PREFIX: Final = "MULTICORN_"

WORKER_CLASSES: Final = ("asyncio", "uvloop", "trio")
LIFESPAN_MODES: Final = ("auto", "on", "off")
INTERFACES: Final = ("auto", "asgi3", "asgi2", "wsgi")
LOG_LEVELS: Final = ("critical", "error", "warning", "info", "debug", "trace")
LOG_FORMATS: Final = ("text", "json")
VERIFY_MODES: Final = ("none", "optional", "required")
H2C_MODES: Final = ("off", "prior-knowledge", "upgrade", "both")
ALPN_PROTOCOLS: Final = ("h2", "http/1.1")
HTTP_ENGINES: Final = ("auto", "h11", "httptools")
PROXY_PROTOCOL_MODES: Final = ("off", "v1", "v2", "auto")
# What --reload watches unless told otherwise: Python sources, not hidden directories (.git,
# .venv), nor bytecode caches.
RELOAD_INCLUDES: Final = ("*.py",)
RELOAD_EXCLUDES: Final = (".*", "__pycache__")


def install_hint(extra: str) -> str:
    """How to install one of this repository's extras (pyproject.toml's optional dependencies).

    Never `pip install 'multicorn[...]'`: the project of that name on PyPI is an unrelated one.
    """
    return f"pip install '.[{extra}]' in a multicorn checkout"


_TRUE_WORDS: Final = frozenset({"1", "true", "yes", "on"})
_FALSE_WORDS: Final = frozenset({"0", "false", "no", "off"})


class ConfigError(ValueError):
    """A setting is unknown or its value is unusable.

    `key` is the setting's field name (or the unknown key as written), `reason` says what was
    expected, and `source` says where the value came from (None for the Python API).
    """

    def __init__(self, key: str, reason: str, *, source: str | None = None) -> None:
        self.key = key
        self.reason = reason
        self.source = source
        message = f"{key}: {reason}"
        if source is not None:
            message += f" (from {source})"
        super().__init__(message)


@dataclass(kw_only=True)
class Config:
    """Every server setting, with its default. Field names match Hypercorn's where they exist."""

    bind: list[str] = field(default_factory=lambda: ["127.0.0.1:8000"])
    worker_class: str = "asyncio"  # asyncio | uvloop | trio
    http: str = "auto"  # HTTP/1.1 parser: auto (httptools when installed) | h11 | httptools
    backlog: int = 2048
    keep_alive: float = 5.0  # idle keep-alive timeout, seconds
    keep_alive_max_requests: int = 1000  # requests served on one connection before it closes
    header_timeout: float = 10.0  # a request head must arrive whole within this, once begun
    graceful_timeout: float = 3.0
    root_path: str = ""
    lifespan: str = "auto"  # auto | on | off
    startup_timeout: float = 60.0
    shutdown_timeout: float = 60.0
    h11_max_incomplete_size: int = 16 * 1024
    include_date_header: bool = True
    include_server_header: bool = True
    access_logfile: str | None = None  # "-" is stdout
    access_logformat: str = '%(h)s %(l)s %(l)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'
    error_logfile: str | None = "-"  # "-" is stderr
    log_level: str = "info"
    # A logging configuration file (dictConfig as JSON or YAML, or fileConfig INI) applied
    # before the server's own logging setup; loggers it gives handlers are left as it says.
    log_config: str | None = None
    log_format: str = "text"  # text | json (one JSON object per error and access log line)
    factory: bool = False
    app_dir: str = ""
    # What APP is: auto (detected from its signature) | asgi3 | asgi2 | wsgi.
    interface: str = "auto"
    # Threads running WSGI calls at once; more requests wait for one without holding a thread.
    # 10, as Uvicorn's and a2wsgi's WSGI middleware default.
    wsgi_max_workers: int = 10
    # TLS: with a certificate, `bind` addresses speak TLS and `insecure_bind` ones cleartext.
    insecure_bind: list[str] = field(default_factory=list)
    certfile: str | None = None
    keyfile: str | None = None
    keyfile_password: str | None = None
    ca_certs: str | None = None
    verify_mode: str = "none"  # client certificates: none | optional | required
    ciphers: str = "ECDHE+AESGCM:ECDHE+CHACHA20"  # TLS 1.2 suites; TLS 1.3 keeps OpenSSL's
    alpn_protocols: list[str] = field(default_factory=lambda: ["h2", "http/1.1"])
    ssl_handshake_timeout: float = 60.0
    # Reload certfile/keyfile/ca_certs when they change (polled every reload_certs_interval s).
    reload_certs: bool = False
    reload_certs_interval: float = 5.0
    # HTTP/2
    h2c: str = "both"  # cleartext HTTP/2: off | prior-knowledge | upgrade | both
    h2_max_concurrent_streams: int = 100
    h2_max_header_list_size: int = 64 * 1024
    h2_max_inbound_frame_size: int = 16 * 1024
    h2_initial_window_size: int = 65535  # per stream, granted as the app consumes the body
    h2_connection_window_size: int = 1024 * 1024
    # Output that cannot move for this long ends it: an HTTP/2 stream is reset, and a connection
    # whose client stopped reading (any protocol) is closed.
    send_timeout: float = 60.0
    # WebSocket (HTTP/1.1 Upgrade, and extended CONNECT on HTTP/2)
    websocket: bool = True
    ws_per_message_deflate: bool = True  # accept a client's permessage-deflate offer
    websocket_max_message_size: int = 16 * 1024 * 1024  # bytes, after inflating; larger: 1009
    websocket_max_queue: int = 32  # received messages the app has not taken before reading pauses
    websocket_ping_interval: float = 20.0  # seconds between pings; 0 sends none
    websocket_ping_timeout: float = 20.0  # a pong must come within this, else 1011; 0 waits
    websocket_handshake_timeout: float = 10.0  # for the app's accept, and the peer's Close
    # HTTP/3 over QUIC: UDP listeners, TLS from certfile/keyfile.
    quic_bind: list[str] = field(default_factory=list)
    # Advertise HTTP/3 (Alt-Svc: h3=":PORT") on HTTP/1.1 and HTTP/2 responses while QUIC is up.
    alt_svc_headers: bool = True
    quic_idle_timeout: float = 30.0  # QUIC idle timeout (the smaller of ours and the client's)
    quic_max_concurrent_streams: int = 100  # HTTP/3 request streams a client may have open
    quic_max_stream_data: int = 1024 * 1024  # per-stream receive window, bytes
    quic_max_data: int = 4 * 1024 * 1024  # per-connection receive window, bytes
    # HTTP/3: the largest request head (RFC 9114 4.2.2's measure), and the QPACK dynamic table
    # a client may use and how many streams may wait on it.
    h3_max_field_section_size: int = 64 * 1024
    h3_qpack_max_table_capacity: int = 4096
    h3_qpack_blocked_streams: int = 16
    quic_max_connections: int = 10_000  # QUIC connections per listener, handshaking or not
    # Validate client addresses with a Retry before keeping any state (costs one round trip).
    quic_retry: bool = False
    # Accept 0-RTT early data from resuming clients (only GET, HEAD, OPTIONS are served before
    # the handshake completes; other requests wait for it).
    quic_0rtt: bool = False
    # Load limits. A request body larger than this is answered 413 (0: no cap; the body is
    # streamed to the app under flow control either way, so the server's memory is bounded).
    max_request_body_size: int = 0
    # A request body arriving more slowly than this (bytes/second) is answered 408 and, on
    # HTTP/1.1, its connection closed (0: off). Only the time the server spends waiting for the
    # client counts (the application blocked in receive() with nothing buffered), and only once
    # that adds up to the grace period. 100 B/s is far below any real link (2G GPRS carries
    # ~3 KB/s) yet ends a body trickled a few bytes at a time; Kestrel's default is 240 B/s with
    # a 5 s grace, Apache's mod_reqtimeout 500 B/s after 20 s. The 10 s grace lets a slow start
    # (a mobile handover, a client reading a file) pass.
    min_request_body_rate: int = 100
    min_request_body_rate_grace: float = 10.0
    # Requests and WebSockets served at once, server-wide; past it 503 + Retry-After (0: off).
    limit_concurrency: int = 0
    # Proxies: believe X-Forwarded-* and Forwarded (RFC 7239) from these peers only: IP
    # addresses, CIDR networks, "unix" (Unix-socket peers) and "*" (everyone), as Uvicorn.
    proxy_headers: bool = True
    forwarded_allow_ips: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    # HAProxy's PROXY protocol on cleartext listeners: off | v1 | v2 | auto. From the peers in
    # proxy_protocol_allow_ips the header is required; from others it is refused.
    proxy_protocol: str = "off"
    proxy_protocol_allow_ips: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    # Processes. With workers > 1, reload or recycling (max_requests, max_worker_memory) a
    # supervisor binds the listeners once and runs that many worker processes on them;
    # WEB_CONCURRENCY is the default worker count when set.
    workers: int = 1
    reuse_port: bool = False  # each worker binds its own SO_REUSEPORT socket instead of sharing
    worker_healthcheck_timeout: float = 30.0  # a worker silent this long is killed and replaced
    max_requests: int = 0  # a worker that served this many requests is replaced (0: never)
    max_requests_jitter: int = 0  # plus a random 0..this, per worker, so they do not all go at once
    max_worker_memory: int = 0  # MiB of RSS past which a worker is replaced (0: never)
    # Signs QUIC Retry tokens and stateless resets: 64 hex digits, shared by every process that
    # serves one QUIC address (the supervisor gives its workers one); None: random per process.
    quic_secret: str | None = None
    reload: bool = False  # restart the worker when a watched file changes (development)
    reload_dirs: list[str] = field(default_factory=list)  # empty: the current directory
    reload_includes: list[str] = field(default_factory=lambda: list(RELOAD_INCLUDES))
    reload_excludes: list[str] = field(default_factory=lambda: list(RELOAD_EXCLUDES))
    # Process: a pid file, the user and group to serve as (after binding, as root), the umask.
    pid: str | None = None
    user: str | None = None
    group: str | None = None
    umask: str | None = None  # octal, e.g. "027"; unix socket files get 0777 & ~umask

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError for the first field holding an unusable value.

        Runs on construction; call it again after assigning attributes directly.
        """
        for f in fields(self):
            problem = _problem(f.name, getattr(self, f.name))
            if problem is not None:
                raise ConfigError(f.name, problem)
        if (self.keyfile or self.ca_certs or self.insecure_bind) and not self.certfile:
            key = "keyfile" if self.keyfile else "ca_certs" if self.ca_certs else "insecure_bind"
            raise ConfigError(key, "needs certfile: TLS is only on when a certificate is given")
        if self.quic_bind and not self.certfile:
            raise ConfigError(
                "quic_bind", "needs certfile (and keyfile): QUIC always runs over TLS 1.3"
            )
        if self.reload_certs and not self.certfile:
            raise ConfigError("reload_certs", "needs certfile: there is no certificate to reload")
        if self.verify_mode != "none" and not self.ca_certs:
            raise ConfigError(
                "verify_mode", "client certificates need ca_certs, the CAs to verify them with"
            )
        if self.reload and self.workers > 1:
            raise ConfigError(
                "reload",
                f"--reload cannot be combined with --workers {self.workers} > 1: reloading "
                "runs one worker; drop one of the two",
            )


_Kind = Literal["bool", "int", "float", "str", "optional_str", "str_list", "choice"]


@dataclass(frozen=True, slots=True)
class _Rule:
    kind: _Kind
    expected: str  # completes "expected ..." in error messages
    minimum: float | None = None
    minimum_inclusive: bool = True
    choices: tuple[str, ...] = ()


def _seconds() -> _Rule:
    return _Rule("float", "a number of seconds >= 0", minimum=0)


def _positive_int(what: str) -> _Rule:
    return _Rule("int", f"{what} > 0", minimum=0, minimum_inclusive=False)


def _choice(options: tuple[str, ...]) -> _Rule:
    return _Rule("choice", "one of " + ", ".join(options), choices=options)


_BOOL = _Rule("bool", "true or false (or 1/0, yes/no, on/off)")

_RULES: Final[Mapping[str, _Rule]] = MappingProxyType(
    {
        "bind": _Rule("str_list", "one or more addresses like 127.0.0.1:8000"),
        "worker_class": _choice(WORKER_CLASSES),
        "http": _choice(HTTP_ENGINES),
        "backlog": _positive_int("a whole number of pending connections"),
        "keep_alive": _seconds(),
        "keep_alive_max_requests": _positive_int("a whole number of requests"),
        "header_timeout": _seconds(),
        "graceful_timeout": _seconds(),
        "root_path": _Rule("str", "'' or a path starting with '/' and not ending with '/'"),
        "lifespan": _choice(LIFESPAN_MODES),
        "startup_timeout": _seconds(),
        "shutdown_timeout": _seconds(),
        "h11_max_incomplete_size": _positive_int("a whole number of bytes"),
        "include_date_header": _BOOL,
        "include_server_header": _BOOL,
        "access_logfile": _Rule("optional_str", "'-' (stdout) or a file path"),
        "access_logformat": _Rule("str", "a %-style format using %(atom)s placeholders"),
        "error_logfile": _Rule("optional_str", "'-' (stderr) or a file path"),
        "log_level": _choice(LOG_LEVELS),
        "log_config": _Rule("optional_str", "a .json, .yaml/.yml or .ini/.conf logging config"),
        "log_format": _choice(LOG_FORMATS),
        "factory": _BOOL,
        "app_dir": _Rule("str", "a directory path"),
        "interface": _choice(INTERFACES),
        "wsgi_max_workers": _positive_int("a whole number of threads"),
        "insecure_bind": _Rule("str_list", "zero or more addresses like 127.0.0.1:8080"),
        "certfile": _Rule("optional_str", "a PEM certificate (chain) file path"),
        "keyfile": _Rule("optional_str", "a PEM private key file path"),
        "keyfile_password": _Rule("optional_str", "the private key's password"),
        "ca_certs": _Rule("optional_str", "a PEM file of CAs trusted for client certificates"),
        "verify_mode": _choice(VERIFY_MODES),
        "ciphers": _Rule("str", "an OpenSSL cipher list"),
        "alpn_protocols": _Rule("str_list", "one or more of " + ", ".join(ALPN_PROTOCOLS)),
        "ssl_handshake_timeout": _seconds(),
        "reload_certs": _BOOL,
        "reload_certs_interval": _Rule(
            "float", "a number of seconds > 0", minimum=0, minimum_inclusive=False
        ),
        "h2c": _choice(H2C_MODES),
        "h2_max_concurrent_streams": _positive_int("a whole number of streams"),
        "h2_max_header_list_size": _positive_int("a whole number of bytes"),
        "h2_max_inbound_frame_size": _Rule(
            "int", "a frame size from 16384 to 16777215 bytes", minimum=16384
        ),
        "h2_initial_window_size": _Rule("int", "a window from 1 to 2147483647 bytes", minimum=1),
        "h2_connection_window_size": _Rule(
            "int", "a window from 65535 to 2147483647 bytes", minimum=65535
        ),
        "send_timeout": _seconds(),
        "websocket": _BOOL,
        "ws_per_message_deflate": _BOOL,
        "websocket_max_message_size": _positive_int("a whole number of bytes"),
        "websocket_max_queue": _positive_int("a whole number of messages"),
        "websocket_ping_interval": _seconds(),
        "websocket_ping_timeout": _seconds(),
        "websocket_handshake_timeout": _seconds(),
        "quic_bind": _Rule("str_list", "zero or more UDP addresses like 0.0.0.0:443"),
        "alt_svc_headers": _BOOL,
        "quic_idle_timeout": _Rule(
            "float", "a number of seconds > 0", minimum=0, minimum_inclusive=False
        ),
        "quic_max_concurrent_streams": _positive_int("a whole number of streams"),
        "quic_max_stream_data": _Rule("int", "a window from 1024 bytes", minimum=1024),
        "quic_max_data": _Rule("int", "a window from 1024 bytes", minimum=1024),
        "h3_max_field_section_size": _positive_int("a whole number of bytes"),
        "h3_qpack_max_table_capacity": _Rule("int", "a whole number of bytes >= 0", minimum=0),
        "h3_qpack_blocked_streams": _Rule("int", "a whole number of streams >= 0", minimum=0),
        "quic_max_connections": _positive_int("a whole number of connections"),
        "quic_retry": _BOOL,
        "quic_0rtt": _BOOL,
        "max_request_body_size": _Rule(
            "int", "a whole number of bytes >= 0 (0: no cap)", minimum=0
        ),
        "min_request_body_rate": _Rule(
            "int", "a whole number of bytes per second >= 0 (0: off)", minimum=0
        ),
        "min_request_body_rate_grace": _seconds(),
        "limit_concurrency": _Rule("int", "a whole number of streams >= 0 (0: no cap)", minimum=0),
        "proxy_headers": _BOOL,
        "forwarded_allow_ips": _Rule(
            "str_list", "IP addresses, CIDR networks, 'unix' or '*', comma-separated"
        ),
        "proxy_protocol": _choice(PROXY_PROTOCOL_MODES),
        "proxy_protocol_allow_ips": _Rule(
            "str_list", "IP addresses, CIDR networks, 'unix' or '*', comma-separated"
        ),
        "workers": _positive_int("a whole number of worker processes"),
        "reuse_port": _BOOL,
        "worker_healthcheck_timeout": _Rule(
            "float", "a number of seconds > 0", minimum=0, minimum_inclusive=False
        ),
        "max_requests": _Rule("int", "a whole number of requests >= 0 (0: never)", minimum=0),
        "max_requests_jitter": _Rule("int", "a whole number of requests >= 0", minimum=0),
        "max_worker_memory": _Rule("int", "a whole number of MiB >= 0 (0: never)", minimum=0),
        "quic_secret": _Rule("optional_str", "64 hexadecimal digits (32 random bytes)"),
        "reload": _BOOL,
        "reload_dirs": _Rule("str_list", "directories, comma-separated"),
        "reload_includes": _Rule("str_list", "glob patterns such as *.py, comma-separated"),
        "reload_excludes": _Rule("str_list", "glob patterns such as .*, comma-separated"),
        "pid": _Rule("optional_str", "a file path for the process id"),
        "user": _Rule("optional_str", "a user name or uid"),
        "group": _Rule("optional_str", "a group name or gid"),
        "umask": _Rule("optional_str", "an octal umask from 000 to 777, such as 027"),
    }
)


# Address lists that may be empty (only `bind` must name at least one address).
_MAY_BE_EMPTY: Final = frozenset(
    {
        "insecure_bind",
        "quic_bind",
        "forwarded_allow_ips",
        "proxy_protocol_allow_ips",
        "reload_dirs",
        "reload_includes",
        "reload_excludes",
    }
)

# Lists of plain text (paths, patterns), not addresses.
_TEXT_LISTS: Final = frozenset({"reload_dirs", "reload_includes", "reload_excludes"})

_INT_MAXIMA: Final[Mapping[str, int]] = MappingProxyType(
    {
        "h2_max_inbound_frame_size": 2**24 - 1,
        "h2_initial_window_size": 2**31 - 1,
        "h2_connection_window_size": 2**31 - 1,
        # RFC 9000 19.11: MAX_STREAMS values above 2^60 are a connection error.
        "quic_max_concurrent_streams": 2**60,
        "quic_max_stream_data": 2**62 - 1,
        "quic_max_data": 2**62 - 1,
        # RFC 9204 5: both are varints on the wire; pylsqpack takes 32-bit values.
        "h3_max_field_section_size": 2**62 - 1,
        "h3_qpack_max_table_capacity": 2**30,
        "h3_qpack_blocked_streams": 2**16,
    }
)


def setting_names() -> tuple[str, ...]:
    """The names of every setting, in declaration order."""
    return tuple(f.name for f in fields(Config))


def _as_number(value: object) -> float | None:
    # bool is an int subclass, but "keep_alive = true" is a mistake, not 1 second.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _problem(name: str, value: object) -> str | None:
    """Why `value` is unusable for setting `name` ("expected ..., got ..."), or None if fine."""
    rule = _RULES[name]
    bad = f"expected {rule.expected}, got {value!r}"
    if rule.kind == "bool":
        return None if isinstance(value, bool) else bad
    if rule.kind in ("int", "float"):
        number = _as_number(value)
        if number is None or (rule.kind == "int" and not isinstance(value, int)):
            return bad
        if not math.isfinite(number):
            return bad
        if rule.minimum is not None:
            in_range = number >= rule.minimum if rule.minimum_inclusive else number > rule.minimum
            if not in_range:
                return bad
        if name in _INT_MAXIMA and number > _INT_MAXIMA[name]:
            return bad
        return None
    if rule.kind == "choice":
        return None if value in rule.choices else bad
    if rule.kind == "optional_str":
        if value is None:
            return None
        if name == "quic_secret":
            return None if isinstance(value, str) and _is_hex_key(value) else bad
        if name == "umask" and isinstance(value, str):
            try:
                parse_umask(value)
            except ValueError:
                return bad
        return None if isinstance(value, str) and value else bad
    if rule.kind == "str_list":
        if not isinstance(value, list) or (not value and name not in _MAY_BE_EMPTY):
            return bad
        for item in value:
            if not isinstance(item, str):
                return bad
            if name in _TEXT_LISTS:
                if not item:
                    return bad
                continue
            if name == "alpn_protocols":
                if item not in ALPN_PROTOCOLS:
                    return bad
                continue
            if name in ("forwarded_allow_ips", "proxy_protocol_allow_ips"):
                problem = ProxyTrust.problem(item)
                if problem is not None:
                    return problem
                continue
            try:
                bind = parse_bind(item)
            except BindError as exc:
                return str(exc)
            if name == "quic_bind" and bind.kind == "unix":
                return f"QUIC listens on UDP: expected HOST:PORT or fd://N, got {item!r}"
        return None
    if not isinstance(value, str):
        return bad
    if name == "root_path" and value and (not value.startswith("/") or value.endswith("/")):
        return bad
    if name == "access_logformat":
        return _format_problem(value)
    return None


def _is_hex_key(text: str) -> bool:
    try:
        return len(bytes.fromhex(text)) == 32
    except ValueError:
        return False


class _ProbeAtoms(Mapping[str, str]):
    """Answers every atom with "-", so a format can be tried without a real request."""

    def __getitem__(self, key: str) -> str:
        return "-"

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __str__(self) -> str:
        # A bare "%s" would otherwise print this object; make it fail like other mistakes.
        raise TypeError("use named placeholders such as %(h)s, not bare %s")


def _format_problem(fmt: str) -> str | None:
    try:
        fmt % _ProbeAtoms()
    except (TypeError, ValueError, KeyError) as exc:
        return f"expected a %-style format using %(atom)s placeholders, got {fmt!r} ({exc})"
    return None


def _parse_text(name: str, text: str) -> object:
    """Turn text from an environment variable or a flag into the setting's type.

    Returns the raw text unchanged when it cannot be converted, so `_problem` reports it with
    the same "expected ..., got ..." wording as every other bad value.
    """
    rule = _RULES[name]
    stripped = text.strip()
    if rule.kind == "bool":
        word = stripped.lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
        return text
    if rule.kind == "int":
        try:
            return int(stripped)
        except ValueError:
            return text
    if rule.kind == "float":
        try:
            return float(stripped)
        except ValueError:
            return text
    if rule.kind == "choice":
        return stripped.lower()
    if rule.kind == "optional_str":
        # An empty variable is the only way to say "none" in the environment.
        return text or None
    if rule.kind == "str_list":
        items = [item.strip() for item in text.split(",")]
        return [item for item in items if item]
    return text


def _coerce_structured(name: str, value: object) -> object:
    """Adapt an already-typed value (TOML, argparse, Python) to the setting's type."""
    rule = _RULES[name]
    if rule.kind == "float":
        number = _as_number(value)
        return value if number is None else number
    if rule.kind == "choice" and isinstance(value, str):
        return value.strip().lower()
    if rule.kind == "str_list" and isinstance(value, str):
        return [value]
    if rule.kind == "str_list" and isinstance(value, (list, tuple)):
        return list(value)
    return value


def parse_setting(name: str, value: object, *, source: str | None = None) -> object:
    """Coerce and validate one value for setting `name`; text is parsed as from the environment.

    Raises ConfigError (naming `name` and `source`) for an unknown setting or a bad value.
    """
    if name not in _RULES:
        raise ConfigError(name, _unknown_reason(name), source=source)
    coerced = _parse_text(name, value) if isinstance(value, str) else value
    coerced = _coerce_structured(name, coerced)
    problem = _problem(name, coerced)
    if problem is not None:
        raise ConfigError(name, problem, source=source)
    return coerced


def _unknown_reason(name: str, *, prefix: str = "") -> str:
    close = difflib.get_close_matches(name.replace("-", "_").lower(), list(_RULES), n=1)
    if close:
        return f"no such setting; did you mean {prefix}{close[0].upper() if prefix else close[0]}?"
    return "no such setting; known settings are " + ", ".join(_RULES)


def _from_toml(path: str) -> dict[str, object]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised only on Python 3.10
        import tomli as tomllib  # type: ignore[import-not-found]  # 3.10-only dependency

    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError("config", f"could not read {path!r}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{path!r} is not valid TOML: {exc}") from exc
    values: dict[str, object] = {}
    for key, value in data.items():
        if key not in _RULES:
            raise ConfigError(key, _unknown_reason(key), source=path)
        coerced = _coerce_structured(key, value)
        problem = _problem(key, coerced)
        if problem is not None:
            raise ConfigError(key, problem, source=path)
        values[key] = coerced
    return values


def _from_environ(environ: Mapping[str, str]) -> dict[str, object]:
    values: dict[str, object] = {}
    for var, text in environ.items():
        if not var.startswith(ENV_PREFIX):
            continue
        name = var[len(ENV_PREFIX) :].lower()
        if name not in _RULES:
            reason = _unknown_reason(name, prefix=ENV_PREFIX)
            raise ConfigError(var, reason, source="the environment")
        values[name] = parse_setting(name, text, source=var)
    return values


def _from_mapping(data: Mapping[str, object], *, source: str, skip_none: bool) -> dict[str, object]:
    values: dict[str, object] = {}
    for name, value in data.items():
        if value is None and skip_none:
            continue
        values[name] = parse_setting(name, value, source=source)
    return values


def load_config(
    *,
    toml_path: str | None,
    environ: Mapping[str, str],
    cli: Mapping[str, object],
    overrides: Mapping[str, object] | None = None,
) -> Config:
    """Build a Config from every source, lowest to highest precedence.

    defaults < WEB_CONCURRENCY (for `workers`) < TOML file at `toml_path` < MULTICORN_<FIELD>
    variables in `environ` < `cli` (values that are None count as not given) < `overrides`.
    Raises ConfigError naming the setting and its source for unknown keys and bad values.
    """
    values: dict[str, object] = {}
    # The convention of Heroku-style platforms (and Uvicorn, Gunicorn): the default worker count.
    concurrency = environ.get("WEB_CONCURRENCY")
    if concurrency is not None and concurrency.strip():
        values["workers"] = parse_setting("workers", concurrency, source="WEB_CONCURRENCY")
    given: dict[str, object] = {}
    if toml_path is not None:
        given.update(_from_toml(toml_path))
    given.update(_from_environ(environ))
    given.update(_from_mapping(cli, source="the command line", skip_none=True))
    if overrides is not None:
        given.update(_from_mapping(overrides, source="overrides", skip_none=False))
    if given.get("reload") and "workers" not in given:
        # A platform default is no request for several workers: --reload runs one.
        values.pop("workers", None)
    values.update(given)
    return Config(**values)  # type: ignore[arg-type]  # every value was validated above
