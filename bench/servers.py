"""The servers under test: one data row per configuration, and how each family is launched.

This module owns the list of server configurations (`SERVERS`), what each supports
(`h1`, `h2c`, `h2-tls`, `ws`, `h3`), what it needs before it can run (Python modules in its venv,
flags in its `--help`), and the command line that starts it for one scenario. Adding a
configuration is adding a row. A row whose `flags` are missing from the server's `--help` is
reported as unavailable rather than run (the multicorn rows need `--http`, which picks the
HTTP/1.1 parser). A protocol can be gated the same way on its own (`feature_flags`): the
multicorn rows list `ws`, which runs only once their `--help` shows the WebSocket options, so
the same rows measure WebSocket as soon as the multicorn under test has it, and HTTP/3 once
its `--help` shows `--quic-bind`. A protocol can also need a module of its own
(`feature_modules`): Hypercorn serves HTTP/3 only when aioquic is installed (`hypercorn[h3]`).

Every configuration runs one worker, serves `bench.apps:app` from the repository root, binds
127.0.0.1 only, and logs warnings only (no access log), so the servers do the same work.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

APP = "bench.apps:app"
H1 = "h1"
H2C = "h2c"
H2_TLS = "h2-tls"
WS = "ws"
H3 = "h3"  # HTTP/3 over QUIC: the TCP listener (TLS) stays, a UDP one is added on the same port
# Keep idle keep-alive connections open this long (seconds) in the idle-memory scenario; the
# defaults (2 s for Gunicorn, 5 s for most) could close them before memory is sampled.
IDLE_KEEP_ALIVE = 120
# Listen backlog for servers whose default is small (Hypercorn 100, Granian 1024, Twisted 50), so
# the 512-connection scenario does not lose SYNs; multicorn, Uvicorn and Gunicorn default to it.
BACKLOG = 2048
# Requests per connection allowed in the h2 scenarios, for servers that cap them (see _hypercorn).
H2_MAX_REQUESTS = 100_000_000
# HTTP/3 request streams a client may have open at once: aioquic's default MAX_STREAMS, which
# Hypercorn runs with (it cannot be set there). multicorn (default 100) is given the same, since
# the HTTP/3 client opens as many streams as the server allows: both carry as many requests.
H3_MAX_STREAMS = 128
# The WebSocket message size limit most servers default to (multicorn, Uvicorn, Hypercorn,
# Gunicorn), given to those whose default is lower (Daphne's is 1 MiB).
WS_MAX_MESSAGE_SIZE = 16 * 1024 * 1024


@dataclass(frozen=True)
class Launch:
    """What a scenario asks of the server it starts."""

    port: int
    protocol: str  # H1, H2C, H2_TLS, WS or H3
    certfile: Path | None = None
    keyfile: Path | None = None
    long_keep_alive: bool = False
    config_dir: Path | None = None  # where a server's config file may be written

    @property
    def tls(self) -> bool:
        return self.certfile is not None


@dataclass(frozen=True)
class ServerConfig:
    """One benchmarked configuration.

    `family` picks the command builder, `venv` is `multicorn` or `peers`, `args` are the
    configuration's own flags (worker class, loop, parser), `features` the protocols it is
    measured on, `modules` what must import in its venv and `flags` what its `--help` must
    list for it to be available. `feature_flags` pairs a protocol with a flag its `--help`
    must list for that protocol alone to be measured, and `feature_modules` a module that must
    import in its venv for that protocol alone. `packages` are the distributions whose
    versions the report shows.
    """

    name: str
    family: str
    venv: str
    args: tuple[str, ...]
    features: frozenset[str]
    packages: tuple[str, ...]
    modules: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    feature_flags: tuple[tuple[str, str], ...] = ()
    feature_modules: tuple[tuple[str, str], ...] = ()
    note: str = ""

    @property
    def is_multicorn(self) -> bool:
        return self.family == "multicorn"


_MC_FEATURES = frozenset({H1, H2C, H2_TLS, WS, H3})
# WebSocket is measured once multicorn has it: this is one of the options it comes with; HTTP/3
# once its CLI can open the QUIC listener.
_MC_FEATURE_FLAGS = ((WS, "--ws-per-message-deflate"), (H3, "--quic-bind"))
_HYPERCORN_FEATURES = frozenset({H1, H2C, H2_TLS, WS, H3})
# Hypercorn's --quic-bind is always in its --help; it serves HTTP/3 only with aioquic installed.
_HYPERCORN_H3_MODULES = ((H3, "aioquic"),)
_MC_PACKAGES = ("multicorn", "h11", "h2", "wsproto", "aioquic")
# Uvicorn's default `--ws auto` picks websockets (its Sans-I/O protocol in Uvicorn 0.54)
# when it is installed, as uvicorn[standard] does; `uvicorn-wsproto` measures the other one.
_UVICORN_WS_NOTE = "WebSocket: websockets (--ws auto)"

SERVERS: tuple[ServerConfig, ...] = (
    # The pure-Python parser (h11) on each runtime. `--http h11` is explicit because multicorn's
    # default, `auto`, switches to httptools whenever it is installed (it is, in the bench venv).
    ServerConfig(
        "multicorn-asyncio",
        "multicorn",
        "multicorn",
        ("-k", "asyncio", "--http", "h11"),
        _MC_FEATURES,
        _MC_PACKAGES,
        flags=("--http",),
        feature_flags=_MC_FEATURE_FLAGS,
        note="h11 parser",
    ),
    ServerConfig(
        "multicorn-uvloop",
        "multicorn",
        "multicorn",
        ("-k", "uvloop", "--http", "h11"),
        _MC_FEATURES,
        (*_MC_PACKAGES, "uvloop"),
        modules=("uvloop",),
        flags=("--http",),
        feature_flags=_MC_FEATURE_FLAGS,
        note="h11 parser",
    ),
    ServerConfig(
        "multicorn-trio",
        "multicorn",
        "multicorn",
        ("-k", "trio", "--http", "h11"),
        _MC_FEATURES,
        (*_MC_PACKAGES, "trio"),
        modules=("trio",),
        flags=("--http",),
        feature_flags=_MC_FEATURE_FLAGS,
        note="h11 parser",
    ),
    ServerConfig(
        "multicorn-httptools",
        "multicorn",
        "multicorn",
        ("-k", "uvloop", "--http", "httptools"),
        _MC_FEATURES,
        (*_MC_PACKAGES, "uvloop", "httptools"),
        modules=("uvloop", "httptools"),
        flags=("--http",),
        feature_flags=_MC_FEATURE_FLAGS,
        note="httptools parser for HTTP/1.1, uvloop (HTTP/2 is h2 either way)",
    ),
    ServerConfig(
        "hypercorn-asyncio",
        "hypercorn",
        "peers",
        ("-k", "asyncio"),
        _HYPERCORN_FEATURES,
        ("hypercorn", "h11", "h2", "wsproto", "aioquic"),
        feature_modules=_HYPERCORN_H3_MODULES,
    ),
    ServerConfig(
        "hypercorn-uvloop",
        "hypercorn",
        "peers",
        ("-k", "uvloop"),
        _HYPERCORN_FEATURES,
        ("hypercorn", "h11", "h2", "wsproto", "aioquic", "uvloop"),
        modules=("uvloop",),
        feature_modules=_HYPERCORN_H3_MODULES,
    ),
    ServerConfig(
        "hypercorn-trio",
        "hypercorn",
        "peers",
        ("-k", "trio"),
        _HYPERCORN_FEATURES,
        ("hypercorn", "h11", "h2", "wsproto", "aioquic", "trio"),
        modules=("trio",),
        feature_modules=_HYPERCORN_H3_MODULES,
    ),
    ServerConfig(
        "uvicorn-h11",
        "uvicorn",
        "peers",
        ("--http", "h11", "--loop", "asyncio"),
        frozenset({H1, WS}),
        ("uvicorn", "h11", "websockets"),
        note=_UVICORN_WS_NOTE,
    ),
    ServerConfig(
        "uvicorn-httptools",
        "uvicorn",
        "peers",
        ("--http", "httptools", "--loop", "uvloop"),
        frozenset({H1, WS}),
        ("uvicorn", "httptools", "uvloop", "websockets"),
        modules=("httptools", "uvloop"),
        note=_UVICORN_WS_NOTE,
    ),
    # The same server with wsproto for WebSocket; its HTTP/1.1 is uvicorn-httptools', so it is
    # measured on WebSocket only.
    ServerConfig(
        "uvicorn-wsproto",
        "uvicorn",
        "peers",
        ("--http", "httptools", "--loop", "uvloop", "--ws", "wsproto"),
        frozenset({WS}),
        ("uvicorn", "httptools", "uvloop", "wsproto"),
        modules=("httptools", "uvloop", "wsproto"),
        note="WebSocket: wsproto (--ws wsproto); httptools, uvloop",
    ),
    ServerConfig(
        "granian-asgi",
        "granian",
        "peers",
        ("--interface", "asgi", "--loop", "uvloop"),
        frozenset({H1, H2C, H2_TLS, WS}),
        ("granian", "uvloop"),
        modules=("uvloop",),
        note="Rust HTTP stack (hyper), uvloop for the app",
    ),
    ServerConfig(
        "gunicorn-asgi",
        "gunicorn",
        "peers",
        ("-k", "asgi", "--asgi-loop", "uvloop"),
        frozenset({H1, H2C, H2_TLS, WS}),
        ("gunicorn", "h2", "uvloop"),
        modules=("gunicorn.workers.gasgi", "uvloop"),
        note="gunicorn's own asgi worker (gunicorn >= 24), pure-Python parser, uvloop",
    ),
    ServerConfig(
        "daphne",
        "daphne",
        "peers",
        (),
        frozenset({H1, H2_TLS, WS}),
        ("daphne", "twisted", "autobahn", "h2"),
        note="Twisted; HTTP/2 over TLS only (no h2c)",
    ),
)

SERVERS_BY_NAME = {server.name: server for server in SERVERS}


def _multicorn(server: ServerConfig, bindir: Path, launch: Launch) -> list[str]:
    argv = [str(bindir / "multicorn"), APP, "--bind", f"127.0.0.1:{launch.port}"]
    argv += ["--log-level", "warning", *server.args]
    if launch.tls:
        argv += ["--certfile", str(launch.certfile), "--keyfile", str(launch.keyfile)]
    if launch.protocol == H3:
        argv += ["--quic-bind", f"127.0.0.1:{launch.port}"]
        argv += ["--quic-max-concurrent-streams", str(H3_MAX_STREAMS)]
    if launch.long_keep_alive:
        argv += ["--keep-alive", str(IDLE_KEEP_ALIVE)]
    return argv


def _hypercorn(server: ServerConfig, bindir: Path, launch: Launch) -> list[str]:
    argv = [str(bindir / "hypercorn"), APP, "--bind", f"127.0.0.1:{launch.port}", "--workers", "1"]
    argv += ["--log-level", "warning", "--backlog", str(BACKLOG), *server.args]
    if launch.tls:
        argv += ["--certfile", str(launch.certfile), "--keyfile", str(launch.keyfile)]
    if launch.protocol == H3:
        # Hypercorn's HTTP/3 has no per-connection request cap (keep_alive_max_requests is
        # read by its h11 and h2 protocols only).
        argv += ["--quic-bind", f"127.0.0.1:{launch.port}"]
    if launch.long_keep_alive:
        argv += ["--keep-alive", str(IDLE_KEEP_ALIVE)]
    if launch.protocol in (H2C, H2_TLS) and launch.config_dir is not None:
        # Hypercorn closes a connection after 1000 requests (keep_alive_max_requests, settable
        # only in a config file); h2load does not reconnect, so an h2 run would stop early.
        config = launch.config_dir / "hypercorn-h2.toml"
        config.write_text(f"keep_alive_max_requests = {H2_MAX_REQUESTS}\n")
        argv += ["--config", str(config)]
    return argv


def _uvicorn(server: ServerConfig, bindir: Path, launch: Launch) -> list[str]:
    argv = [str(bindir / "uvicorn"), APP, "--host", "127.0.0.1", "--port", str(launch.port)]
    argv += ["--workers", "1", "--log-level", "warning", "--no-access-log", *server.args]
    if launch.tls:
        argv += ["--ssl-certfile", str(launch.certfile), "--ssl-keyfile", str(launch.keyfile)]
    if launch.long_keep_alive:
        argv += ["--timeout-keep-alive", str(IDLE_KEEP_ALIVE)]
    return argv


def _granian(server: ServerConfig, bindir: Path, launch: Launch) -> list[str]:
    argv = [str(bindir / "granian"), APP, "--host", "127.0.0.1", "--port", str(launch.port)]
    argv += ["--workers", "1", "--log-level", "warning", "--no-access-log", *server.args]
    argv += ["--backlog", str(BACKLOG)]
    if launch.protocol in (H2C, H2_TLS):
        argv += ["--http", "auto"]
    if launch.tls:
        argv += ["--ssl-certificate", str(launch.certfile), "--ssl-keyfile", str(launch.keyfile)]
    # Granian has no idle keep-alive timeout to raise (only a 30 s header-read timer).
    return argv


def _gunicorn(server: ServerConfig, bindir: Path, launch: Launch) -> list[str]:
    argv = [str(bindir / "gunicorn"), APP, "--bind", f"127.0.0.1:{launch.port}", "--workers", "1"]
    # gunicorn 27's asgi worker listens with asyncio's default backlog of 100 whatever this says.
    argv += ["--log-level", "warning", "--backlog", str(BACKLOG), *server.args]
    if launch.protocol == H2C:
        # `both`, not `prior-knowledge`: the readiness probe is an HTTP/1.1 request.
        argv += ["--http-protocols", "h2,h1", "--http2-cleartext", "both"]
    if launch.protocol == H2_TLS:
        argv += ["--http-protocols", "h2,h1"]
    if launch.tls:
        argv += ["--certfile", str(launch.certfile), "--keyfile", str(launch.keyfile)]
    if launch.long_keep_alive:
        argv += ["--keep-alive", str(IDLE_KEEP_ALIVE)]
    return argv


def _daphne(server: ServerConfig, bindir: Path, launch: Launch) -> list[str]:
    # A Twisted endpoint string, for TLS and to raise the listen backlog from Twisted's 50 to
    # the 2048 the other servers use.
    endpoint = f"tcp:{launch.port}:interface=127.0.0.1:backlog={BACKLOG}"
    if launch.tls:
        endpoint = (
            f"ssl:{launch.port}:interface=127.0.0.1:backlog={BACKLOG}"
            f":privateKey={launch.keyfile}:certKey={launch.certfile}"
        )
    argv = [str(bindir / "daphne"), "-v", "0", *server.args, "-e", endpoint]
    if launch.protocol == WS:
        # Daphne refuses WebSocket messages and frames over 1 MiB by default; the other servers
        # allow 16 MiB (or more), which ws-echo-1m needs some room under.
        limit = str(WS_MAX_MESSAGE_SIZE)
        argv += ["--websocket-max-message-size", limit, "--websocket-max-frame-size", limit]
    # Daphne has no keep-alive timeout: idle connections stay open.
    return [*argv, APP]


_BUILDERS: dict[str, Callable[[ServerConfig, Path, Launch], list[str]]] = {
    "multicorn": _multicorn,
    "hypercorn": _hypercorn,
    "uvicorn": _uvicorn,
    "granian": _granian,
    "gunicorn": _gunicorn,
    "daphne": _daphne,
}


def command(server: ServerConfig, venv: Path, launch: Launch) -> list[str]:
    """The argv that starts `server` from `venv` for one scenario."""
    return _BUILDERS[server.family](server, venv / "bin", launch)


_PROBE = """
import importlib, importlib.metadata, json, sys
out = {"python": sys.version.split()[0], "missing": [], "versions": {}, "optional": {}}
for name in sys.argv[1].split(","):
    if name:
        try:
            importlib.import_module(name)
        except Exception as exc:
            out["missing"].append(f"{name} ({type(exc).__name__}: {exc})")
for name in sys.argv[3].split(","):
    if name:
        try:
            importlib.import_module(name)
        except Exception as exc:
            out["optional"][name] = f"{type(exc).__name__}: {exc}"
for dist in sys.argv[2].split(","):
    if dist:
        try:
            out["versions"][dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out["versions"][dist] = None
print(json.dumps(out))
"""


@dataclass
class Availability:
    """Whether a configuration can run here, on which protocols, and with which versions.

    `features` are the protocols it is measured on here: its row's, less those whose
    `feature_flags` its `--help` lacks (`missing_features` says why, per protocol).
    """

    ok: bool
    reason: str = ""
    python: str = ""
    versions: dict[str, str | None] = field(default_factory=dict)
    features: frozenset[str] = frozenset()
    missing_features: dict[str, str] = field(default_factory=dict)


def probe(server: ServerConfig, venv: Path | None, cwd: Path) -> Availability:
    """Check the venv, the executable, the modules and the flags `server` needs."""
    if venv is None or not (venv / "bin" / "python").exists():
        where = venv if venv is not None else "(none)"
        return Availability(False, f"virtualenv {where} missing (run without --no-setup)")
    executable = venv / "bin" / server.family
    if not executable.exists():
        return Availability(False, f"{executable} missing: {server.family} not installed")
    modules = (server.family, *server.modules)
    try:
        out = subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-c",
                _PROBE,
                ",".join(modules),
                ",".join(server.packages),
                ",".join(module for _, module in server.feature_modules),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=cwd,
            check=False,
        )
        info = json.loads(out.stdout)
    except (subprocess.TimeoutExpired, json.JSONDecodeError, OSError) as exc:
        return Availability(False, f"could not probe {venv}: {exc}")
    availability = Availability(
        True, python=info["python"], versions=info["versions"], features=server.features
    )
    if info["missing"]:
        availability.ok = False
        availability.reason = "missing module(s): " + ", ".join(info["missing"])
        return availability
    absent_modules: dict[str, str] = info["optional"]
    availability.features, availability.missing_features = gated_features(
        server, None, absent_modules
    )
    if server.flags or server.feature_flags:
        try:
            help_text = subprocess.run(
                [str(executable), "--help"],
                capture_output=True,
                text=True,
                timeout=60,
                cwd=cwd,
                check=False,
            ).stdout
        except (subprocess.TimeoutExpired, OSError) as exc:
            return Availability(False, f"{executable} --help failed: {exc}")
        absent = [flag for flag in server.flags if not has_flag(help_text, flag)]
        if absent:
            availability.ok = False
            availability.reason = f"{server.family} has no {', '.join(absent)} option" + (
                f" ({server.note})" if server.note else ""
            )
        availability.features, availability.missing_features = gated_features(
            server, help_text, absent_modules
        )
    return availability


def gated_features(
    server: ServerConfig, help_text: str | None, absent_modules: Mapping[str, str] | None = None
) -> tuple[frozenset[str], dict[str, str]]:
    """The protocols `server` can be measured on, and why not the others.

    `help_text` is its `--help` (None: flags not checked); `absent_modules` maps each of its
    `feature_modules` that does not import in its venv to the error.
    """
    missing: dict[str, str] = {}
    absent = absent_modules or {}
    for feature, module in server.feature_modules:
        if feature in server.features and module in absent:
            missing[feature] = (
                f"{module} does not import in {server.family}'s venv ({absent[module]}): no "
                f"{feature} support"
            )
    if help_text is not None:
        for feature, flag in server.feature_flags:
            if feature in server.features and not has_flag(help_text, flag):
                missing.setdefault(
                    feature, f"{server.family} has no {flag} option: no {feature} support yet"
                )
    return server.features - missing.keys(), missing


def has_flag(help_text: str, flag: str) -> bool:
    """Whether `flag` itself (not merely a longer flag that starts with it) is in `--help`."""
    return re.search(r"(?<![\w-])" + re.escape(flag) + r"(?![\w-])", help_text) is not None
