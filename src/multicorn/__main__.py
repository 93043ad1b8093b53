"""The `multicorn` command: parse flags, build the Config, load the app, run a runtime."""

from __future__ import annotations

import dataclasses
import gc
import importlib
import sys
from collections.abc import Callable, Coroutine, MutableMapping, Sequence
from functools import partial
from typing import Any

from multicorn.app.errors import LifespanFailure
from multicorn.cli import parse_args
from multicorn.config import Config, ConfigError, install_hint, load_config
from multicorn.daemon import PidFile, PrivilegeError
from multicorn.loading import AppLoadError, load_app
from multicorn.net.binds import BindError
from multicorn.net.sockets import BindFailed
from multicorn.net.tls import TLSConfigError
from multicorn.serve import serve
from multicorn.systemd import ActivationError, activation_binds, listen_fds
from multicorn.typing import ASGIApp

# Startup failures exit with 3, as Uvicorn does, so supervisors can tell them from crashes.
EXIT_STARTUP_FAILED = 3


def _freeze_startup_heap(*modules: str) -> None:
    """Leave everything imported so far (the app, its framework, the protocol libraries) out of
    the garbage collector's full passes. Those objects live as long as the process; walking them
    made each full collection a 10-12 ms stall of the event loop (measured under load on the
    benchmark app), which is what the slowest responses waited on. Only for the command: an
    embedding program's heap is its own business. `modules` (the runtime backend, the loop) are
    imported first, to be frozen too."""
    for module in modules:
        importlib.import_module(module)
    gc.collect()
    gc.freeze()


# The package each worker class beyond plain asyncio runs on, and the extra that installs it.
_WORKER_PACKAGES = {"trio": ("trio", "trio"), "uvloop": ("uvloop", "uvloop")}


def _import_worker_package(worker_class: str) -> None:
    """Import what `worker_class` runs on, or fail with one line saying what to install."""
    if worker_class not in _WORKER_PACKAGES:
        return
    package, extra = _WORKER_PACKAGES[worker_class]
    try:
        importlib.import_module(package)
    except ImportError as exc:
        # exc says which module is missing: the package itself or one it needs.
        raise ConfigError(
            "worker_class", f"{package} cannot be imported ({exc}): {install_hint(extra)}"
        ) from None


def needs_supervisor(config: Config) -> bool:
    """Several workers, reloading and recycling take a supervisor process; one worker without
    them is served in this process."""
    recycling = config.max_requests > 0 or config.max_worker_memory > 0
    return config.workers > 1 or config.reload or recycling


def startup_errors() -> tuple[type[Exception], ...]:
    """What `run` raises when the server cannot start: one line for the user, exit status 3."""
    return (BindFailed, LifespanFailure, ConfigError, TLSConfigError, PrivilegeError)


def run(
    app: ASGIApp,
    config: Config,
    *,
    entry: Callable[[ASGIApp, Config], Coroutine[Any, Any, None]] = serve,
) -> None:
    """Run `entry(app, config)` (by default `serve`: until SIGINT/SIGTERM) in a new event loop
    of `config.worker_class`."""
    _import_worker_package(config.worker_class)
    if config.worker_class == "trio":
        import trio

        _freeze_startup_heap("multicorn.runtime.trio.serve")
        trio.run(partial(entry, app, config))
        return
    import asyncio

    loop_modules = ("uvloop",) if config.worker_class == "uvloop" else ()
    _freeze_startup_heap("multicorn.runtime.asyncio.serve", *loop_modules)
    if config.worker_class == "uvloop":
        import uvloop

        if sys.version_info >= (3, 11):
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(entry(app, config))
            return
        uvloop.install()
    asyncio.run(entry(app, config))


def print_warning(message: str) -> None:
    # Logging is configured later, by the server; this goes out as startup errors do.
    print(f"multicorn: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    import os

    try:
        spec, config_path, cli_values = parse_args(list(sys.argv[1:] if argv is None else argv))
        config = load_config(toml_path=config_path, environ=os.environ, cli=cli_values)
        config = with_activated_sockets(config, os.environ, os.getpid())
        if needs_supervisor(config):
            # A missing package is one line here, not a worker that fails at every start.
            _import_worker_package(config.worker_class)
            # The app is imported by each worker, not here: a reload must see new code.
            from multicorn.supervisor import supervise

            return supervise(spec, config)
        app = load_app(spec, app_dir=config.app_dir, factory=config.factory, warn=print_warning)
    except (ConfigError, AppLoadError, BindError, ActivationError) as exc:
        print(f"multicorn: error: {exc}", file=sys.stderr)
        return EXIT_STARTUP_FAILED
    pid_file = None if config.pid is None else PidFile(config.pid, os.getpid())
    try:
        if pid_file is not None:
            pid_file.write()
        run(app, config)
    except startup_errors() as exc:
        print(f"multicorn: error: {exc}", file=sys.stderr)
        return EXIT_STARTUP_FAILED
    except KeyboardInterrupt:
        pass
    finally:
        if pid_file is not None:
            pid_file.remove()
    return 0


def with_activated_sockets(config: Config, environ: MutableMapping[str, str], pid: int) -> Config:
    """`config` serving the sockets systemd passed (they replace every bind setting), or
    `config` itself without socket activation. Unsets LISTEN_* in `environ`."""
    activated = listen_fds(environ, pid)
    if not activated:
        return config
    binds = activation_binds(activated, tls=config.certfile is not None)
    return dataclasses.replace(
        config,
        bind=binds["bind"],
        insecure_bind=binds["insecure_bind"],
        quic_bind=binds["quic_bind"],
    )


if __name__ == "__main__":
    sys.exit(main())
