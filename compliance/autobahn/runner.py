"""One Autobahn|Testsuite run against one server: the command line and the run's life.

This module owns the run: it parses the options, gets `wstest` ready (through `toolchain`),
makes a throwaway certificate for wss, starts the server under test on a free 127.0.0.1 port in
its own process group, waits until the port accepts, writes the fuzzing client's spec, runs
`wstest -m fuzzingclient` under the run's deadline, stops the server, and hands the report to
`report` for the verdict. Only 127.0.0.1 is ever contacted.

Exit status: 0 when every case passed (non-strict ones too, unless --strict), 1 when a case
failed or is missing from the report or the server died during the run, 2 when the run could
not start, 3 when the global timeout ran out, 130 or 143 on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from compliance.autobahn import toolchain
from compliance.autobahn.report import Summary, load_results

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parents[2]
DEFAULT_REPORTS = Path(__file__).resolve().parent / "reports"
APP = "compliance.autobahn.echo:app"
# Autobahn has no category 11; 12 and 13 are permessage-deflate and take about ten minutes.
DEFAULT_CASES = "1-10,12,13"
COMPRESSION_CATEGORIES = {"12", "13"}
WORKER_CLASSES = ("asyncio", "uvloop", "trio")

EXIT_OK, EXIT_FAILED, EXIT_ERROR, EXIT_TIMEOUT = 0, 1, 2, 3


class RunError(Exception):
    """The run could not be carried out (as opposed to: the server failed cases)."""


class RunTimeout(Exception):
    """The global deadline passed."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="compliance/autobahn/run.py",
        description=(
            "Run the Autobahn|Testsuite fuzzing client against multicorn (or any server given "
            "with --server-cmd) serving compliance/autobahn/echo.py on 127.0.0.1."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--cases",
        default=DEFAULT_CASES,
        help="comma-separated categories, ranges of categories or case ids: 1-10, 12,13, "
        "6.4.*, 9.1.6 (12 and 13 take about ten minutes)",
    )
    parser.add_argument(
        "--exclude", default="", help="cases to leave out, in the same form as --cases"
    )
    parser.add_argument("--tls", action="store_true", help="test over wss with a self-signed cert")
    parser.add_argument(
        "--worker-class", "-k", choices=WORKER_CLASSES, default="asyncio", help="multicorn's loop"
    )
    parser.add_argument(
        "--python",
        default=None,
        help="interpreter that runs multicorn (default: the repo's .venv/bin/python if present, "
        "else this interpreter)",
    )
    parser.add_argument(
        "--server-cmd",
        default=None,
        help="run this server instead of multicorn; {port}, {certfile} and {keyfile} are "
        "replaced, and the command runs from the repo root with it on PYTHONPATH",
    )
    parser.add_argument(
        "--agent", default=None, help="name in the report (default: derived from the server)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds for the whole run once wstest is installed (default: 600, or 1800 "
        "when 12 or 13 are included)",
    )
    parser.add_argument(
        "--startup-timeout", type=float, default=30.0, help="seconds for the server to accept"
    )
    parser.add_argument("--summary", type=Path, default=None, help="write a markdown summary here")
    parser.add_argument(
        "--strict", action="store_true", help="exit non-zero on NON-STRICT cases too"
    )
    parser.add_argument(
        "--reports",
        type=Path,
        default=DEFAULT_REPORTS,
        help="directory for the spec, the logs and Autobahn's HTML/JSON reports (servers/)",
    )
    parser.add_argument("--python2", default=None, help="CPython 2.7 to build wstest's venv from")
    parser.add_argument("--reinstall", action="store_true", help="rebuild wstest's venv first")
    parser.add_argument(
        "--install-only", action="store_true", help="build wstest's venv, then stop"
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="echo wstest's output")
    return parser.parse_args(argv)


def expand_cases(text: str) -> list[str]:
    """`1-3,12,6.4.*,9.1.6` -> Autobahn spec patterns `1.*`, `2.*`, `3.*`, `12.*`, `6.4.*`,
    `9.1.6`."""
    patterns: list[str] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        if re.fullmatch(r"\d+-\d+", item):
            low, high = (int(bound) for bound in item.split("-"))
            if low > high:
                raise RunError(f"empty case range {item!r}")
            patterns += [f"{n}.*" for n in range(low, high + 1) if n != 11]
        elif re.fullmatch(r"\d+", item):
            patterns.append(f"{item}.*")
        elif re.fullmatch(r"\d+(\.(\d+|\*))+", item):
            patterns.append(item)
        else:
            raise RunError(f"cannot read case {item!r}: use 1-10, 12, 6.4.* or 9.1.6")
    return patterns


def default_timeout(patterns: Sequence[str]) -> float:
    slow = any(pattern.split(".")[0] in COMPRESSION_CATEGORIES for pattern in patterns)
    return 1800.0 if slow else 600.0


def default_python() -> str:
    repo_venv = REPO / ".venv" / "bin" / "python"
    return str(repo_venv) if repo_venv.exists() else sys.executable


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True, slots=True, kw_only=True)
class Cert:
    certfile: Path
    keyfile: Path


@contextlib.contextmanager
def throwaway_cert() -> Iterator[Cert]:
    """A self-signed certificate for 127.0.0.1, deleted afterwards.

    The fuzzing client does not verify the server's certificate (it sends no SNI and uses
    Twisted's plain ClientContextFactory), so nothing needs to trust it; it only has to be a
    certificate every server accepts as its own.
    """
    toolchain.ensure_commands({"openssl": "openssl"})
    with tempfile.TemporaryDirectory(prefix="autobahn-cert-") as tmp:
        cert = Cert(certfile=Path(tmp) / "cert.pem", keyfile=Path(tmp) / "key.pem")
        subprocess.run(
            [
                *["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"],
                *("-subj", f"/CN={HOST}", "-addext", f"subjectAltName=IP:{HOST}"),
                *("-keyout", str(cert.keyfile), "-out", str(cert.certfile)),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        yield cert


def server_argv(args: argparse.Namespace, port: int, cert: Cert | None) -> list[str]:
    certfile = str(cert.certfile) if cert else ""
    keyfile = str(cert.keyfile) if cert else ""
    if args.server_cmd:
        if cert and not ("{certfile}" in args.server_cmd and "{keyfile}" in args.server_cmd):
            raise RunError("--tls with --server-cmd needs {certfile} and {keyfile} in the command")
        # Placeholders are replaced token by token, so a path with spaces stays one argument
        # and braces elsewhere in the command need no escaping.
        return [
            token.replace("{port}", str(port))
            .replace("{certfile}", certfile)
            .replace("{keyfile}", keyfile)
            for token in shlex.split(args.server_cmd)
        ]
    argv = [
        args.python or default_python(),
        "-m",
        "multicorn",
        APP,
        "--bind",
        f"{HOST}:{port}",
        "--worker-class",
        args.worker_class,
    ]
    if cert:
        argv += ["--certfile", certfile, "--keyfile", keyfile]
    return argv


def agent_name(args: argparse.Namespace) -> str:
    if args.agent:
        return str(args.agent)
    if args.server_cmd:
        program = Path(shlex.split(args.server_cmd)[0]).name
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", program) or "server"
    return f"multicorn-{args.worker_class}"


class Server:
    """The server under test, in its own process group so stopping it stops its workers."""

    def __init__(self, argv: list[str], log_path: Path) -> None:
        self.argv = argv
        self.log_path = log_path
        env = dict(os.environ)
        # The repo root makes the echo app importable for any server; src/ makes multicorn
        # come from this checkout even when the interpreter's venv was installed from another.
        paths = [str(REPO / "src"), str(REPO), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
        self._log: IO[bytes] = log_path.open("wb")
        self.proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_accepting(self, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RunError(
                    f"the server exited with status {self.proc.returncode} before accepting; "
                    f"its output:\n{self.log_tail()}"
                )
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
                return
            time.sleep(0.1)
        raise RunError(
            f"the server did not accept on {HOST}:{port} within {timeout:.0f} s; "
            f"its output:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            _signal_group(self.proc, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                _signal_group(self.proc, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


@dataclass(slots=True)
class WstestOutput:
    """What the fuzzing client said while running, as far as the runner cares."""

    planned: list[str]
    current: str | None = None
    done: int = 0


def run_wstest(
    wstest: Path, spec_path: Path, log_path: Path, deadline: float, *, verbose: bool
) -> WstestOutput:
    """Run the fuzzing client to completion or to the deadline (RunTimeout)."""
    output = WstestOutput(planned=[])
    proc = subprocess.Popen(
        [str(wstest), "-m", "fuzzingclient", "-s", str(spec_path)],
        cwd=spec_path.parent,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    assert proc.stdout is not None
    reader = threading.Thread(
        target=_follow_wstest, args=(proc.stdout, log_path, output, verbose), daemon=True
    )
    reader.start()
    try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise RunTimeout(
            f"wstest did not finish in time ({output.done}/{len(output.planned)} cases started, "
            f"last {output.current})"
        ) from None
    finally:
        # wstest has its own session, so a Ctrl-C reaches only us: take it down in every case.
        if proc.poll() is None:
            _signal_group(proc, signal.SIGKILL)
            proc.wait(timeout=10)
    reader.join(timeout=10)
    if proc.returncode != 0:
        raise RunError(f"wstest exited with status {proc.returncode}; see {log_path}")
    return output


def _follow_wstest(stream: IO[bytes], log_path: Path, output: WstestOutput, verbose: bool) -> None:
    category = None
    last_report = time.monotonic()
    with log_path.open("w") as log:
        for raw in stream:
            line = raw.decode("utf-8", "replace")
            log.write(line)
            log.flush()
            if verbose:
                print(f"  wstest: {line}", end="", flush=True)
            if line.startswith("Cases = "):
                # The client prints its expanded case list as a Python 2 list literal.
                with contextlib.suppress(ValueError, SyntaxError):
                    output.planned = [str(case) for case in ast.literal_eval(line[8:].strip())]
                    print(f"autobahn: {len(output.planned)} cases planned", flush=True)
            elif match := re.match(r"Running test case ID (\S+)", line):
                output.current = match.group(1)
                output.done += 1
                # One line per category, and one at least every 30 s through the slow ones
                # (12 and 13), so a long run is visibly alive.
                new_category = output.current.split(".")[0] != category
                if not verbose and (new_category or time.monotonic() - last_report > 30):
                    category = output.current.split(".")[0]
                    last_report = time.monotonic()
                    print(
                        f"autobahn: case {output.current} ({output.done}/{len(output.planned)})",
                        flush=True,
                    )
            elif line.startswith("Connection to ") and " failed " in line:
                print(f"autobahn: {line.strip()}", flush=True)


def write_spec(path: Path, *, agent: str, url: str, cases: list[str], exclude: list[str]) -> None:
    spec = {
        "outdir": "./servers",
        "servers": [{"agent": agent, "url": url}],
        "cases": cases,
        "exclude-cases": exclude,
        "exclude-agent-cases": {},
    }
    path.write_text(json.dumps(spec, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # A plain SIGTERM would end us without stopping the server and wstest (each has its own
    # session); as an exception it unwinds through the cleanups like Ctrl-C does.
    signal.signal(signal.SIGTERM, _terminated)
    try:
        return _main(args)
    except RunTimeout as timeout:
        print(f"autobahn: TIMEOUT: {timeout}", file=sys.stderr)
        return EXIT_TIMEOUT
    except (RunError, toolchain.ToolchainError) as error:
        print(f"autobahn: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("autobahn: interrupted; the server and wstest are stopped", file=sys.stderr)
        return 128 + signal.SIGINT


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _main(args: argparse.Namespace) -> int:
    cases = expand_cases(args.cases)
    exclude = expand_cases(args.exclude)
    if not cases:
        raise RunError("no cases selected")
    wstest = toolchain.ensure_wstest(toolchain.find_python2(args.python2), reinstall=args.reinstall)
    if args.install_only:
        print(f"autobahn: {wstest} is ready")
        return EXIT_OK

    timeout = args.timeout if args.timeout is not None else default_timeout(cases)
    started = time.monotonic()
    deadline = started + timeout
    agent = agent_name(args)
    reports: Path = args.reports.resolve()
    reports.mkdir(parents=True, exist_ok=True)
    # The client adds to an existing output directory; a stale index must not be read back.
    shutil.rmtree(reports / "servers", ignore_errors=True)

    with contextlib.ExitStack() as stack:
        cert = stack.enter_context(throwaway_cert()) if args.tls else None
        port = free_port()
        argv = server_argv(args, port, cert)
        scheme = "wss" if cert else "ws"
        print(f"autobahn: starting {shlex.join(argv)}", flush=True)
        server = Server(argv, reports / "server.log")
        stack.callback(server.stop)
        server.wait_accepting(port, min(args.startup_timeout, deadline - time.monotonic()))
        spec_path = reports / "spec.json"
        write_spec(
            spec_path, agent=agent, url=f"{scheme}://{HOST}:{port}", cases=cases, exclude=exclude
        )
        print(
            f"autobahn: fuzzing {scheme}://{HOST}:{port} as {agent!r}, cases {','.join(cases)}"
            f" (timeout {timeout:.0f} s)",
            flush=True,
        )
        output = run_wstest(
            wstest, spec_path, reports / "wstest.log", deadline, verbose=args.verbose
        )
        server_exit = server.proc.poll()
    elapsed = time.monotonic() - started

    try:
        results = load_results(reports / "servers", agent)
    except (FileNotFoundError, KeyError) as exc:
        raise RunError(
            f"wstest wrote no report for {agent!r} ({exc}); see the logs in {reports}"
        ) from None
    reported = {case.case_id for case in results}
    summary = Summary(
        agent=agent,
        results=results,
        missing=[case for case in output.planned if case not in reported],
    )
    print(summary.console())
    if server_exit is not None:
        print(f"autobahn: the server exited during the run, with status {server_exit}")
    print(f"autobahn: {elapsed:.0f} s; HTML report: {reports / 'servers' / 'index.html'}")
    if args.summary:
        facts = {
            "server": f"`{shlex.join(argv)}`",
            "transport": scheme,
            "selection": ", ".join(cases),
            "duration": f"{elapsed:.0f} s",
        }
        if exclude:
            facts["excluded"] = ", ".join(exclude)
        args.summary.write_text(summary.markdown(title=f"Autobahn: {agent}", facts=facts))
    if server_exit is not None or summary.failed(strict=args.strict):
        return EXIT_FAILED
    return EXIT_OK
