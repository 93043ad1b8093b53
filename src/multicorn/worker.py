"""One worker process under the supervisor: `python -m multicorn.worker SPEC_FD`.

The supervisor (multicorn.supervisor) starts this module in a fresh interpreter, never by fork:
an event loop (asyncio, uvloop, trio) must not be inherited half-built. It reads its orders
once, as JSON, from the pipe SPEC_FD: the app spec, the `Config` (its listeners already turned
into inherited `fd://N` sockets by the supervisor), the channel to report on and this worker's
request limit. Then it serves like the single-process command, and meanwhile a loop task
reports on the channel, one short line per message:

- `ready`: the listeners accept and lifespan startup is over (a rolling restart waits for it
  before draining the worker this one replaces);
- `beat`: every HEARTBEAT_INTERVAL seconds, written from the event loop, so a loop blocked by
  the application stops them and the supervisor can tell;
- `retire REASON`: past `max_requests` or `max_worker_memory`, asking to be replaced through
  the graceful path (the replacement comes up first; the supervisor then drains this one).

Signals are the supervisor's orders back: SIGTERM drains for a shutdown (WebSockets get 1001),
SIGUSR1 drains for a restart (1012; see `Server.shutdown`). SIGINT is ignored: a Ctrl+C in the
terminal reaches the whole process group, and the supervisor decides what it means. A worker
whose supervisor is gone (its channel breaks, or it is re-parented) drains and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from functools import partial
from typing import TYPE_CHECKING, Final

import sniffio

from multicorn.config import Config
from multicorn.net.binds import parse_bind
from multicorn.serve import Server

if TYPE_CHECKING:
    from types import FrameType

    from multicorn.typing import ASGIApp

HEARTBEAT_INTERVAL: Final = 1.0  # seconds between `beat` lines
_TICK: Final = 0.1  # how often the loop task looks at signals and limits
_MEMORY_EVERY: Final = 2.0  # seconds between RSS samples

# The messages on the channel (bytes, each one line: writes below PIPE_BUF are atomic).
READY: Final = b"ready\n"
BEAT: Final = b"beat\n"


def retire_message(reason: str) -> bytes:
    return b"retire " + reason.encode("ascii", "replace") + b"\n"


class Orders:
    """What the supervisor's signals asked for, set by plain signal handlers and read by the
    loop task: a handler must not touch the event loop, which it may interrupt anywhere."""

    def __init__(self) -> None:
        self.stop = False
        self.restart = False

    def install(self) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGUSR1, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop = True
        self.restart = self.restart or signum == signal.SIGUSR1


class Channel:
    """The write end of the pipe to the supervisor. Non-blocking: a supervisor that stops
    reading must not stall this event loop; a lost heartbeat costs nothing."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        os.set_blocking(fd, False)
        os.set_inheritable(fd, False)
        self.broken = False

    def send(self, message: bytes) -> None:
        if self.broken:
            return
        try:
            os.write(self._fd, message)
        except BlockingIOError:
            pass
        except OSError:  # EPIPE: the supervisor is gone
            self.broken = True


def _keep_to_ourselves(config: Config) -> None:
    """Inherited descriptors came in inheritable; a process the application starts must not
    hold our listeners (and the port) open after we are gone."""
    for text in [*config.bind, *config.insecure_bind, *config.quic_bind]:
        bind = parse_bind(text)
        if bind.kind == "fd":
            with contextlib.suppress(OSError):
                os.set_inheritable(bind.fd, False)


def resident_mib() -> float:
    """This process's resident set size in MiB: /proc where there is one (current RSS), else
    getrusage's peak (what BSDs and macOS offer without a dependency)."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # Linux reports KiB, macOS bytes.
        return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


async def _sleep(seconds: float) -> None:
    if sniffio.current_async_library() == "trio":
        import trio

        await trio.sleep(seconds)
    else:
        await asyncio.sleep(seconds)


async def _watch(
    server: Server, channel: Channel, orders: Orders, *, max_requests: int, max_memory: int
) -> bool:
    """Report until told to stop; return True when the stop is a restart."""
    parent = os.getppid()
    # Wall-clock spacing, not a count of ticks: a loop slowed by load still beats each second.
    next_beat = time.monotonic() + HEARTBEAT_INTERVAL
    next_memory = time.monotonic() + _MEMORY_EVERY
    retiring = False
    while not orders.stop:
        await _sleep(_TICK)
        clock = time.monotonic()
        if clock >= next_beat:
            next_beat = clock + HEARTBEAT_INTERVAL
            channel.send(BEAT)
            if channel.broken or os.getppid() != parent:
                return False  # nobody left to report to: drain and go
        if retiring:
            continue
        if max_requests and server.requests_served >= max_requests:
            retiring = True
            channel.send(retire_message(f"served {server.requests_served} requests"))
        elif max_memory and clock >= next_memory:
            next_memory = clock + _MEMORY_EVERY
            rss = resident_mib()
            if rss > max_memory:
                retiring = True
                channel.send(retire_message(f"uses {rss:.0f} MiB of memory"))
    return orders.restart


async def serve_worker(
    app: ASGIApp,
    config: Config,
    *,
    channel: Channel,
    orders: Orders,
    max_requests: int,
) -> None:
    """Serve `app` on the inherited listeners until the supervisor says stop."""
    async with Server(app, config) as server:
        channel.send(READY)
        restart = await _watch(
            server,
            channel,
            orders,
            max_requests=max_requests,
            max_memory=config.max_worker_memory,
        )
        await server.shutdown(restart=restart)


def main(argv: list[str]) -> int:
    # Imported here: __main__ imports the supervisor, which names this module's messages.
    from multicorn.__main__ import EXIT_STARTUP_FAILED, print_warning, run, startup_errors
    from multicorn.loading import AppLoadError, load_app

    orders = Orders()
    orders.install()  # before anything slow: a drain order may come during startup
    spec_fd = int(argv[0])
    with os.fdopen(spec_fd, "rb") as fh:
        spec = json.loads(fh.read())
    config = Config(**spec["config"])
    channel = Channel(int(spec["channel"]))
    _keep_to_ourselves(config)
    try:
        app = load_app(
            spec["app"], app_dir=config.app_dir, factory=config.factory, warn=print_warning
        )
    except AppLoadError as exc:
        print(f"multicorn: error: {exc}", file=sys.stderr)
        return EXIT_STARTUP_FAILED
    entry = partial(
        serve_worker, channel=channel, orders=orders, max_requests=int(spec["max_requests"])
    )
    try:
        run(app, config, entry=entry)
    except startup_errors() as exc:
        print(f"multicorn: error: {exc}", file=sys.stderr)
        return EXIT_STARTUP_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
