"""The supervisor: `multicorn --workers N` (N > 1) and `--reload`.

It binds every listener once and keeps `workers` worker processes (multicorn.worker, each a
fresh interpreter) serving them, replacing any that dies or stops answering. It never imports
the application, and it runs no event loop: one thread waits in `select()` on the workers'
channels and a signal wake-up pipe, and does everything else between two waits.

Theory of operation:
- Listeners: TCP and unix sockets are bound here and passed to every worker (`fd://N`); the
  kernel queues new connections on the one socket and whichever worker accepts first takes
  each, so a worker that stops accepting leaves nothing behind. With `reuse_port` each worker
  binds its own SO_REUSEPORT socket on the port held here instead (the kernel spreads
  connections by hash; a worker that stops loses what its own queue held). QUIC (UDP) always
  gets one SO_REUSEPORT socket per worker, as one socket cannot be read by several processes;
  the workers share one secret so a Retry token or a stateless reset made by one is good at
  another. A connection whose packets hash to another worker (after a client migrates, or
  when the worker count changes) is not routed back to its worker.
- Replacing a worker (SIGHUP, one at a time; `max_requests`; `max_worker_memory`; `--reload`):
  the replacement starts and says `ready`; only then is the old one told to drain (SIGUSR1: a
  restart, so WebSockets get 1012 and idle HTTP/1.1 connections answer one more request). So
  there is always a worker accepting.
- Health: a worker writes `beat` from its event loop every second. One silent for
  `worker_healthcheck_timeout` is killed (SIGKILL) and replaced; one that takes longer than
  `startup_timeout` plus that to get ready, or longer than the graceful and shutdown timeouts
  to drain, likewise.
- Deaths: a worker that exits unasked is replaced, at once the first time; repeated failures
  wait longer each time (`backoff`). A worker that fails at startup (exit status 3) before any
  ever got ready, or five times in a row, ends the supervisor with exit status 3. With
  `--reload`, a failed start waits for the next change instead.
- Signals: SIGTERM or SIGINT drain every worker (SIGTERM to them) and exit 0 once all are
  gone; a second SIGINT, or SIGQUIT, kills them at once. SIGHUP is a rolling restart; SIGTTIN
  and SIGTTOU add and remove a worker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import selectors
import signal
import socket
import stat
import subprocess
import sys
import time
from collections import deque
from typing import TYPE_CHECKING, Final

from multicorn.config import Config, ConfigError
from multicorn.daemon import PidFile, PrivilegeError, apply_umask, chown_paths, resolve_identity
from multicorn.logging import configure_logging
from multicorn.net.binds import Bind, BindError, parse_bind
from multicorn.net.sockets import BindFailed, create_datagram_socket, create_socket
from multicorn.net.tls import TLSConfigError, create_ssl_context
from multicorn.systemd import Notifier, watchdog_interval
from multicorn.worker import BEAT, READY

if TYPE_CHECKING:
    import logging
    from collections.abc import Callable
    from types import FrameType
    from typing import TypeAlias

    from multicorn.reloader import Watcher

    # What signal.getsignal() returns.
    _SignalHandler: TypeAlias = Callable[[int, FrameType | None], object] | int | None

EXIT_STARTUP_FAILED: Final = 3  # the worker's and the command's "could not start"
GIVE_UP_AFTER: Final = 5  # startup failures in a row before the supervisor stops trying
STABLE_AFTER: Final = 10.0  # seconds between two deaths for them not to count as a loop
BACKOFF_FIRST: Final = 0.5  # seconds before the second restart in a row
BACKOFF_CAP: Final = 30.0
_TICK: Final = 0.2  # the longest select() wait: health checks and backoff run this often
_DRAIN_MARGIN: Final = 5.0  # seconds past graceful + shutdown timeouts before a kill
# systemd talks to the supervisor only: a worker's READY=1 or STOPPING=1 (a recycled worker
# stops while the service goes on) would mislead it.
_SUPERVISOR_ONLY_ENV: Final = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def backoff(failures: int) -> float:
    """Seconds to wait before starting a worker after `failures` unexpected exits in a row:
    none after one (a lone crash is replaced at once), then doubling from BACKOFF_FIRST up to
    BACKOFF_CAP."""
    if failures <= 1:
        return 0.0
    return float(min(BACKOFF_FIRST * 2 ** (failures - 2), BACKOFF_CAP))


def request_limit(max_requests: int, jitter: int, rng: random.Random) -> int:
    """One worker's request limit: `max_requests` plus a random 0..`jitter`, so workers
    started together are not all replaced together; 0 (no limit) stays 0."""
    if max_requests <= 0:
        return 0
    return max_requests + (rng.randint(0, jitter) if jitter > 0 else 0)


def describe_exit(returncode: int) -> str:
    """A worker's end as a person reads it: "exit status 3", "killed by SIGKILL"."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exit status {returncode}"


@dataclasses.dataclass(eq=False)
class _Worker:
    proc: subprocess.Popen[bytes]
    channel: int  # read end of the worker's report pipe
    started: float
    beat: float
    ready_at: float | None = None
    draining_since: float | None = None
    replaces: int | None = None  # the pid this one takes over from, once ready
    stop_reason: str | None = None  # why we stopped it, to explain its exit
    killed: bool = False
    retire_asked: bool = False
    buffer: bytes = b""

    @property
    def pid(self) -> int:
        return self.proc.pid


class Supervisor:
    """See the module docstring. `run()` returns the command's exit status."""

    def __init__(self, spec: str, config: Config, logger: logging.Logger) -> None:
        self._spec = spec
        self._config = config
        self._log = logger
        self._rng = random.Random()
        self._target = 1 if config.reload else config.workers
        self._workers: dict[int, _Worker] = {}
        self._selector = selectors.DefaultSelector()
        self._signals: deque[int] = deque()
        self._wake_r, self._wake_w = os.pipe()
        # Listeners: (group, socket); group "bind" speaks TLS when there is a certificate.
        self._listeners: list[tuple[str, socket.socket]] = []
        self._reuse_port_binds: list[tuple[str, Bind]] = []
        self._quic_binds: list[Bind] = []  # UDP addresses with their real port
        self._quic_spare: dict[int, socket.socket] = {}  # index -> first socket, for worker 1
        self._quic_fds: list[socket.socket] = []  # UDP sockets inherited as they are (fd://)
        self._unix_paths: list[str] = []
        self._secret = config.quic_secret or os.urandom(32).hex()
        self._replace_queue: deque[int] = deque()
        self._replacing: int | None = None
        self._failures = 0  # unexpected exits in a row (less than STABLE_AFTER apart)
        self._last_failure = -math.inf
        self._boot_failures = 0  # exits before `ready` in a row
        self._ever_ready = False
        self._next_spawn = 0.0
        self._stopping = False
        self._killing = False
        self._exit_code = 0
        self._waiting_for_change = False
        self._watcher: Watcher | None = None
        self._previous: dict[signal.Signals, _SignalHandler] = {}
        self._last_check = time.monotonic()
        self._notifier = Notifier.from_environ(os.environ, logger)
        self._watchdog = watchdog_interval(os.environ, os.getpid())
        self._next_watchdog = 0.0
        self._announced = False  # READY=1 sent once every first worker was up
        self._reloading = False  # RELOADING=1 sent; READY=1 when the rolling restart is over
        self._env = {k: v for k, v in os.environ.items() if k not in _SUPERVISOR_ONLY_ENV}

    # ---- setup and teardown ---------------------------------------------------------------

    def _bind(self) -> None:
        config = self._config
        for group, texts in (("bind", config.bind), ("insecure_bind", config.insecure_bind)):
            for text in texts:
                bind = parse_bind(text)
                if config.reuse_port and bind.kind == "tcp":
                    # Held, not listening: it keeps the port (and tells port 0's number)
                    # without taking a share of the connections.
                    sock = create_socket(
                        bind, backlog=config.backlog, reuse_port=True, listen=False
                    )
                    port = sock.getsockname()[1]
                    self._reuse_port_binds.append((group, Bind("tcp", host=bind.host, port=port)))
                    self._listeners.append(("held", sock))
                    continue
                sock = create_socket(bind, backlog=config.backlog)
                self._listeners.append((group, sock))
                if bind.kind == "unix":
                    self._unix_paths.append(bind.path)
        for text in config.quic_bind:
            bind = parse_bind(text)
            if bind.kind == "fd":
                self._log.warning(
                    "QUIC on an inherited socket (%s) is read by every worker: a connection "
                    "breaks when its packets reach another one; use --quic-bind HOST:PORT",
                    text,
                )
                self._quic_fds.append(create_datagram_socket(bind))
                continue
            sock = create_datagram_socket(bind, reuse_port=True)
            self._quic_spare[len(self._quic_binds)] = sock
            self._quic_binds.append(Bind("tcp", host=bind.host, port=sock.getsockname()[1]))

    def _close(self) -> None:
        for _, sock in self._listeners:
            with contextlib.suppress(OSError):
                sock.close()
        for sock in [*self._quic_spare.values(), *self._quic_fds]:
            with contextlib.suppress(OSError):
                sock.close()
        for path in self._unix_paths:
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(os.stat(path).st_mode):
                    os.unlink(path)
        if self._watcher is not None:
            self._watcher.close()
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _install_signals(self) -> None:
        # Looked up here, not at import: Windows has none of SIGHUP, SIGTTIN, SIGTTOU, SIGCHLD.
        handled = (
            signal.SIGINT,
            signal.SIGTERM,
            signal.SIGQUIT,
            signal.SIGHUP,
            signal.SIGTTIN,
            signal.SIGTTOU,
            signal.SIGCHLD,
        )
        for sig in handled:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._on_signal)
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        signal.set_wakeup_fd(self._wake_w)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)

    def _restore_signals(self) -> None:
        signal.set_wakeup_fd(-1)
        for sig, handler in self._previous.items():
            if handler is not None:
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals.append(signum)

    # ---- the loop -------------------------------------------------------------------------

    def run(self) -> int:
        try:
            # Checked once here: a bad certificate is one line, not one per worker start.
            create_ssl_context(self._config)
            apply_umask(self._config.umask)  # before binding: it sets unix socket files' mode
            self._bind()
            # The workers drop to user/group themselves once they hold their sockets; the
            # supervisor keeps its rights to bind QUIC sockets for new workers.
            identity = resolve_identity(self._config.user, self._config.group)
            chown_paths(self._unix_paths, identity)
        except (BindFailed, TLSConfigError, PrivilegeError) as exc:
            self._close()
            print(f"multicorn: error: {exc}", file=sys.stderr)
            return EXIT_STARTUP_FAILED
        self._install_signals()
        try:
            if self._config.reload:
                from multicorn.reloader import make_watcher, watchfiles_available

                config = self._config
                self._watcher = make_watcher(
                    config.reload_dirs, config.reload_includes, config.reload_excludes
                )
                self._log.info(
                    "reload: watching %s for %s (%s)",
                    ", ".join(config.reload_dirs) or os.getcwd(),
                    ", ".join(config.reload_includes),
                    "watchfiles" if watchfiles_available() else "polling every second",
                )
            self._log.info(
                "supervisor %d starting %d %s worker%s",
                os.getpid(),
                self._target,
                self._config.worker_class,
                "" if self._target == 1 else "s",
            )
            while self._workers or not self._stopping:
                self._handle_signals()
                self._reap()
                if self._stopping and not self._workers:
                    break
                self._check_reload()
                self._maintain()
                self._check_health()
                self._tell_systemd()
                self._ping_watchdog()
                self._wait()
        finally:
            for worker in self._workers.values():
                with contextlib.suppress(OSError):
                    worker.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    worker.proc.wait(timeout=5)
            self._restore_signals()
            self._close()
        self._log.info("supervisor %d stopped", os.getpid())
        return self._exit_code

    def _ping_watchdog(self) -> None:
        if self._watchdog is None:
            return
        now = time.monotonic()
        if now >= self._next_watchdog:
            self._notifier.watchdog()
            self._next_watchdog = now + self._watchdog

    def _wait(self) -> None:
        timeout = _TICK
        if self._next_spawn > time.monotonic():
            timeout = min(timeout, self._next_spawn - time.monotonic())
        for key, _ in self._selector.select(timeout):
            if key.data is None:
                with contextlib.suppress(OSError):
                    while os.read(self._wake_r, 512):
                        pass
                continue
            self._read_channel(key.data)

    def _read_channel(self, worker: _Worker) -> None:
        try:
            data = os.read(worker.channel, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._selector.unregister(worker.channel)
            return
        now = time.monotonic()
        worker.beat = now
        worker.buffer += data
        *lines, worker.buffer = worker.buffer.split(b"\n")
        for line in lines:
            message = line + b"\n"
            if message == READY:
                self._on_ready(worker, now)
            elif message == BEAT:
                pass
            elif line.startswith(b"retire "):
                reason = line[len(b"retire ") :].decode("ascii", "replace")
                self._on_retire(worker, reason)

    # ---- signals --------------------------------------------------------------------------

    def _handle_signals(self) -> None:
        while self._signals:
            sig = self._signals.popleft()
            if sig == signal.SIGCHLD:
                continue
            if sig == signal.SIGQUIT or (sig == signal.SIGINT and self._stopping):
                self._kill_all(signal.Signals(sig).name)
            elif sig in (signal.SIGINT, signal.SIGTERM):
                if not self._stopping:
                    self._log.info(
                        "%s: draining %d worker%s (within %s s)",
                        signal.Signals(sig).name,
                        len(self._workers),
                        "" if len(self._workers) == 1 else "s",
                        self._config.graceful_timeout,
                    )
                    self._stop_all()
            elif self._stopping:
                continue
            elif sig == signal.SIGHUP:
                self._rolling_restart("SIGHUP")
            elif sig == signal.SIGTTIN:
                self._target += 1
                self._log.info("SIGTTIN: now %d workers", self._target)
            elif sig == signal.SIGTTOU:
                if self._target > 1:
                    self._target -= 1
                self._log.info("SIGTTOU: now %d workers", self._target)

    def _stop_all(self) -> None:
        if not self._stopping:
            self._notifier.stopping("Shutting down")
        self._stopping = True
        self._replace_queue.clear()
        for worker in list(self._workers.values()):
            if worker.draining_since is None:
                self._drain(worker, restart=False, why="shutdown")

    def _kill_all(self, why: str) -> None:
        if not self._killing:
            self._log.info("%s: stopping %d workers at once", why, len(self._workers))
            if not self._stopping:
                self._notifier.stopping("Stopping now")
        self._stopping = self._killing = True
        self._replace_queue.clear()
        for worker in self._workers.values():
            self._kill(worker, why)

    def _rolling_restart(self, cause: str) -> None:
        pids = [w.pid for w in self._workers.values() if self._active(w)]
        if pids and not self._reloading:
            self._reloading = self._notifier.reloading(f"{cause}: replacing workers")
        self._log.info(
            "%s: replacing %d worker%s one at a time",
            cause,
            len(pids),
            "" if len(pids) == 1 else "s",
        )
        for pid in pids:
            if pid not in self._replace_queue:
                self._replace_queue.append(pid)

    # ---- workers --------------------------------------------------------------------------

    @staticmethod
    def _active(worker: _Worker) -> bool:
        """Serving or about to, and not itself standing in for another worker yet."""
        return worker.draining_since is None and not worker.killed and worker.replaces is None

    def _worker_config(self, quic: list[socket.socket]) -> dict[str, object]:
        values = dataclasses.asdict(self._config)
        groups: dict[str, list[str]] = {"bind": [], "insecure_bind": []}
        for group, sock in self._listeners:
            if group in groups:
                groups[group].append(f"fd://{sock.fileno()}")
        for group, bind in self._reuse_port_binds:
            groups[group].append(str(bind))
        values.update(groups)
        values["quic_bind"] = [f"fd://{sock.fileno()}" for sock in quic]
        values["quic_secret"] = self._secret
        values["workers"] = 1
        values["reload"] = False
        values["pid"] = None  # the supervisor's pid is the service's
        return values

    def _spawn(self, *, replaces: int | None = None) -> _Worker | None:
        quic = list(self._quic_fds)
        made: list[socket.socket] = []
        try:
            for index, bind in enumerate(self._quic_binds):
                sock = self._quic_spare.pop(index, None)
                if sock is None:
                    sock = create_datagram_socket(bind, reuse_port=True)
                made.append(sock)
        except BindFailed as exc:
            # Taken by another program while no worker held it: try again later.
            for sock in made:
                sock.close()
            self._spawn_failed(exc)
            return None
        quic.extend(made)
        config = self._worker_config(quic)
        limit = request_limit(
            self._config.max_requests, self._config.max_requests_jitter, self._rng
        )
        channel_r, channel_w = os.pipe()
        spec_r, spec_w = os.pipe()
        spec = {"app": self._spec, "config": config, "channel": channel_w, "max_requests": limit}
        try:
            fds = [spec_r, channel_w, *(sock.fileno() for sock in quic)]
            fds += [sock.fileno() for group, sock in self._listeners if group != "held"]
            proc = subprocess.Popen(
                [sys.executable, "-m", "multicorn.worker", str(spec_r)], pass_fds=fds, env=self._env
            )
        except OSError as exc:
            os.close(channel_r)
            os.close(spec_w)
            self._spawn_failed(exc)
            return None
        finally:
            os.close(spec_r)
            os.close(channel_w)
            # The worker holds its own UDP sockets now; a copy kept here would stay in the
            # SO_REUSEPORT group after the worker is gone and swallow its share of packets.
            for sock in made:
                sock.close()
        # Written once the worker runs, so a spec larger than a pipe's buffer cannot block here
        # before anyone reads it. A worker that died at once breaks the pipe; its exit says why.
        with contextlib.suppress(OSError), os.fdopen(spec_w, "wb") as fh:
            fh.write(json.dumps(spec).encode())
        os.set_blocking(channel_r, False)
        now = time.monotonic()
        worker = _Worker(proc=proc, channel=channel_r, started=now, beat=now, replaces=replaces)
        self._workers[proc.pid] = worker
        self._selector.register(channel_r, selectors.EVENT_READ, worker)
        if replaces is None:
            self._log.info("worker %d started", proc.pid)
        else:
            self._log.info("worker %d started to replace worker %d", proc.pid, replaces)
        return worker

    def _spawn_failed(self, exc: OSError) -> None:
        now = time.monotonic()
        self._failures += 1
        self._last_failure = now
        self._next_spawn = now + max(backoff(self._failures), BACKOFF_FIRST)
        self._log.error("could not start a worker process: %s", exc)

    def _on_ready(self, worker: _Worker, now: float) -> None:
        worker.ready_at = now
        self._ever_ready = True
        self._boot_failures = 0
        self._waiting_for_change = False
        self._log.debug("worker %d ready", worker.pid)
        if worker.replaces is not None:
            old = self._workers.get(worker.replaces)
            worker.replaces = None
            if old is not None and old.draining_since is None and not old.killed:
                self._drain(old, restart=True, why=f"replaced by worker {worker.pid}")
        if self._replacing == worker.pid:
            self._replacing = None

    def _tell_systemd(self) -> None:
        """READY=1 once every first worker is up, and again when a rolling restart is over
        (done, or stopped because a replacement failed: systemd must not wait for ever)."""
        if not self._notifier.enabled or self._stopping:
            return
        serving = [w for w in self._workers.values() if self._active(w) and w.ready_at]
        if not self._announced and len(serving) >= self._target:
            self._announced = True
            self._notifier.ready(f"{len(serving)} workers serving")
        elif self._reloading and not self._replace_queue and self._replacing is None:
            self._reloading = False
            self._notifier.ready(f"{len(serving)} workers serving")

    def _on_retire(self, worker: _Worker, reason: str) -> None:
        if worker.retire_asked or self._stopping:
            return
        worker.retire_asked = True
        self._log.info("worker %d %s: replacing it", worker.pid, reason)
        if worker.pid not in self._replace_queue:
            self._replace_queue.append(worker.pid)

    def _drain(self, worker: _Worker, *, restart: bool, why: str) -> None:
        worker.draining_since = time.monotonic()
        worker.stop_reason = why
        with contextlib.suppress(ProcessLookupError):
            worker.proc.send_signal(signal.SIGUSR1 if restart else signal.SIGTERM)

    def _kill(self, worker: _Worker, why: str) -> None:
        if worker.killed:
            return
        worker.killed = True
        worker.stop_reason = why
        with contextlib.suppress(ProcessLookupError):
            worker.proc.kill()

    def _reap(self) -> None:
        for worker in list(self._workers.values()):
            code = worker.proc.poll()
            if code is not None:
                self._exited(worker, code)

    def _exited(self, worker: _Worker, code: int) -> None:
        del self._workers[worker.pid]
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(worker.channel)
        os.close(worker.channel)
        with contextlib.suppress(ValueError):
            self._replace_queue.remove(worker.pid)
        for other in self._workers.values():
            if other.replaces == worker.pid:
                other.replaces = None  # the one it was to replace is gone: it is a worker now
        how = describe_exit(code)
        now = time.monotonic()
        if self._stopping or worker.draining_since is not None:
            # Told to go: draining, or killed once that took too long or we stop at once.
            self._log.info("worker %d exited (%s; %s)", worker.pid, how, worker.stop_reason)
            return
        if worker.stop_reason is not None:
            self._log.error("worker %d %s (%s)", worker.pid, how, worker.stop_reason)
        else:
            self._log.error("worker %d died unexpectedly (%s)", worker.pid, how)
        if now - self._last_failure >= STABLE_AFTER:
            self._failures = 0
        self._failures += 1
        self._last_failure = now
        if worker.ready_at is None:
            self._boot_failed(worker, code)
        if self._replacing == worker.pid:
            self._replacing = None
            if worker.ready_at is None:
                self._replace_queue.clear()
                self._log.error(
                    "the replacement worker failed to start: the rolling restart stops and "
                    "the running workers keep serving"
                )
        delay = backoff(self._failures)
        self._next_spawn = now + delay
        if delay and not self._stopping:
            self._log.info("restarting in %.1f s (%d failures in a row)", delay, self._failures)

    def _boot_failed(self, worker: _Worker, code: int) -> None:
        self._boot_failures += 1
        if self._config.reload:
            if not any(w.ready_at is not None for w in self._workers.values()):
                self._waiting_for_change = True
                self._log.error("the worker failed to start: waiting for a file to change")
            return
        if code != EXIT_STARTUP_FAILED:
            return
        serving = any(
            w.ready_at is not None and w.draining_since is None and not w.killed
            for w in self._workers.values()
        )
        if not self._ever_ready or (self._boot_failures >= GIVE_UP_AFTER and not serving):
            print(
                f"multicorn: error: worker {worker.pid} failed to start (exit status {code}"
                + ("" if not self._ever_ready else f", {self._boot_failures} times in a row")
                + "); see its error above. Giving up.",
                file=sys.stderr,
                flush=True,
            )
            self._exit_code = EXIT_STARTUP_FAILED
            self._stop_all()

    def _maintain(self) -> None:
        if self._stopping or self._waiting_for_change:
            return
        now = time.monotonic()
        if self._failures and now - self._last_failure >= STABLE_AFTER:
            self._failures = 0
        if self._replacing is None or self._replacing not in self._workers:
            self._replacing = None
            while self._replace_queue:
                old = self._workers.get(self._replace_queue.popleft())
                if old is not None and self._active(old):
                    if now < self._next_spawn:
                        self._replace_queue.appendleft(old.pid)
                        break
                    new = self._spawn(replaces=old.pid)
                    if new is None:
                        self._replace_queue.appendleft(old.pid)
                    else:
                        self._replacing = new.pid
                    break
        active = [w for w in self._workers.values() if self._active(w)]
        if len(active) < self._target and now >= self._next_spawn:
            count = self._target - len(active) if self._failures == 0 else 1
            for _ in range(count):
                if self._spawn() is None:
                    break
            if self._failures:
                self._next_spawn = now + backoff(self._failures + 1)
        elif len(active) > self._target:
            queued = set(self._replace_queue)
            spare = sorted(active, key=lambda w: (w.pid in queued, w.started), reverse=True)
            for worker in spare[: len(active) - self._target]:
                self._drain(worker, restart=False, why="fewer workers wanted")

    def _check_health(self) -> None:
        now = time.monotonic()
        config = self._config
        if now - self._last_check > config.worker_healthcheck_timeout / 2:
            # This process was not running (stopped, or the machine slept): the workers'
            # silence is ours, not theirs.
            for worker in self._workers.values():
                worker.beat = now
        self._last_check = now
        for worker in list(self._workers.values()):
            if worker.killed:
                continue
            if worker.draining_since is not None:
                limit = config.graceful_timeout + config.shutdown_timeout + _DRAIN_MARGIN
                if now - worker.draining_since > limit:
                    self._log.error(
                        "worker %d did not finish draining in %.0f s", worker.pid, limit
                    )
                    self._kill(worker, "too slow to drain")
                continue
            if worker.ready_at is None:
                limit = config.startup_timeout + config.worker_healthcheck_timeout
                if now - worker.started > limit:
                    self._log.error("worker %d did not start in %.0f s", worker.pid, limit)
                    self._kill(worker, "too slow to start")
                continue
            silent = now - worker.beat
            if silent > config.worker_healthcheck_timeout:
                self._log.error(
                    "worker %d sent no heartbeat for %.1f s (its event loop is blocked?)",
                    worker.pid,
                    silent,
                )
                self._kill(worker, "no heartbeat")

    def _check_reload(self) -> None:
        if self._watcher is None or self._stopping:
            return
        changed = self._watcher.changes()
        if not changed:
            return
        shown = ", ".join(os.path.relpath(path) for path in changed[:3])
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        self._log.info("reload: %s changed%s", shown, more)
        self._failures = 0
        self._next_spawn = 0.0
        if self._waiting_for_change:
            self._waiting_for_change = False
            return
        self._rolling_restart("reload")


def supervise(spec: str, config: Config) -> int:
    """Run the supervisor for the app at `spec` until it is told to stop; the exit status.
    The pid file, when configured, names the supervisor."""
    if sys.platform == "win32":
        print(
            "multicorn: error: worker processes, --reload and recycling need a POSIX system; "
            "run one process (--workers 1) on Windows",
            file=sys.stderr,
        )
        return EXIT_STARTUP_FAILED
    pid_file = None if config.pid is None else PidFile(config.pid, os.getpid())
    try:
        loggers = configure_logging(config)
        if pid_file is not None:
            pid_file.write()
        return Supervisor(spec, config, loggers.error).run()
    except (ConfigError, BindError, PrivilegeError) as exc:
        print(f"multicorn: error: {exc}", file=sys.stderr)
        return EXIT_STARTUP_FAILED
    finally:
        if pid_file is not None:
            pid_file.remove()
