"""The benchmark run: options, the round-robin plan, one measured run, and the outputs.

This module owns what `python3 bench/run.py` does from start to end: read the options, run the
setup (unless `--no-setup`), find which servers can run here, plan the runs (rounds x
scenarios x servers, the servers shuffled with a fixed seed each round so that drift favours
nobody), start a fresh server for every run and load it, and then print the markdown tables and
write the JSON, the plot and the optional report page. A server that cannot start, or a load
that fails, is recorded with the reason and the run goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import random
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import report, setup_env
from bench.loadgen import LoadContext, LoadError, run_load
from bench.parsers import parse_lscpu
from bench.procutil import kill_group, pinned, sample_group, tail, wait_ready
from bench.scenarios import SCENARIOS, SCENARIOS_BY_NAME, TOOL_PROGRAMS, Scenario
from bench.servers import (
    SERVERS,
    SERVERS_BY_NAME,
    WS,
    Availability,
    Launch,
    ServerConfig,
    command,
)
from bench.servers import probe as probe_server

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
QUICK_SERVERS = ("multicorn-asyncio", "hypercorn-asyncio", "uvicorn-httptools")
DEFAULT_SEED = 20261125


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Benchmark multicorn against Hypercorn, Uvicorn, Granian, Gunicorn and Daphne.",
        epilog="Servers: "
        + ", ".join(server.name for server in SERVERS)
        + ". Scenarios: "
        + ", ".join(scenario.name for scenario in SCENARIOS)
        + ".",
    )
    parser.add_argument(
        "--no-setup", action="store_true", help="skip apt-get and the venv installs"
    )
    parser.add_argument(
        "--use-current-venv",
        action="store_true",
        help="run multicorn from this interpreter's venv (else the repository's .venv) instead of "
        "bench/.venv-multicorn",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny scale: 1 round of 2 s, 3 servers"
    )
    parser.add_argument("--duration", type=float, help="seconds of load per run (default 10)")
    parser.add_argument("--rounds", type=int, help="rounds; medians are over these (default 3)")
    parser.add_argument("--warmup", type=float, help="seconds of unmeasured load first (default 1)")
    parser.add_argument(
        "--servers",
        help="comma-separated configurations, families (multicorn, hypercorn, ...), 'peers' or "
        "'all' (default all; with --quick: " + ",".join(QUICK_SERVERS) + ")",
    )
    parser.add_argument("--scenarios", help="comma-separated scenarios (default all)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the server order")
    parser.add_argument(
        "--json-out", type=Path, help="results JSON (default bench/results/<time>-<sha>.json)"
    )
    parser.add_argument(
        "--plot",
        type=Path,
        default=RESULTS / "latest.png",
        help="PNG of each scenario's headline per server (default bench/results/latest.png)",
    )
    parser.add_argument("--no-plot", action="store_true", help="do not draw the plot")
    parser.add_argument("--markdown", type=Path, help="also write a full report page here")
    parser.add_argument(
        "--server-cpu", type=int, help="CPU the server is pinned to (default: first)"
    )
    parser.add_argument(
        "--load-cpu", type=int, help="CPU the load generators use (default: second)"
    )
    parser.add_argument("--startup-timeout", type=float, default=30.0, help="seconds to answer")
    parser.add_argument(
        "--idle-connections", type=int, help="idle-memory connections (default 1000)"
    )
    parser.add_argument(
        "--ws-processes", type=int, help="WebSocket client processes (default: load CPUs)"
    )
    parser.add_argument("--list", action="store_true", help="list servers and scenarios, then exit")
    args = parser.parse_args(argv)
    quick = args.quick
    if args.duration is None:
        args.duration = 2.0 if quick else 10.0
    if args.rounds is None:
        args.rounds = 1 if quick else 3
    if args.warmup is None:
        args.warmup = 1.0
    if args.idle_connections is None:
        args.idle_connections = 1000
    if args.duration <= 0 or args.rounds < 1 or args.warmup < 0 or args.idle_connections < 1:
        parser.error("--duration and --idle-connections must be positive, --rounds at least 1")
    return args


def select_servers(spec: str | None, quick: bool) -> list[ServerConfig]:
    if spec is None:
        return [SERVERS_BY_NAME[name] for name in QUICK_SERVERS] if quick else list(SERVERS)
    chosen: list[ServerConfig] = []
    for token in (part.strip() for part in spec.split(",")):
        if not token:
            continue
        if token == "all":
            matches = list(SERVERS)
        elif token == "peers":
            matches = [server for server in SERVERS if not server.is_multicorn]
        elif token in SERVERS_BY_NAME:
            matches = [SERVERS_BY_NAME[token]]
        else:
            matches = [server for server in SERVERS if server.family == token]
        if not matches:
            known = ", ".join(server.name for server in SERVERS)
            raise SystemExit(f"bench/run.py: unknown server {token!r}; known: {known}")
        chosen += [server for server in matches if server not in chosen]
    return chosen


def select_scenarios(spec: str | None) -> list[Scenario]:
    if spec is None:
        return list(SCENARIOS)
    chosen: list[Scenario] = []
    for token in (part.strip() for part in spec.split(",")):
        if not token:
            continue
        if token not in SCENARIOS_BY_NAME:
            known = ", ".join(scenario.name for scenario in SCENARIOS)
            raise SystemExit(f"bench/run.py: unknown scenario {token!r}; known: {known}")
        if SCENARIOS_BY_NAME[token] not in chosen:
            chosen.append(SCENARIOS_BY_NAME[token])
    return chosen


def _output(argv: list[str], timeout: float = 30) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stdout + done.stderr).strip()


def git_info() -> dict[str, Any]:
    sha = _output(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"])
    if not sha or " " in sha:
        return {"sha": "nogit", "dirty": False}
    dirty = bool(_output(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"]))
    return {"sha": sha, "dirty": dirty}


def machine_info() -> dict[str, Any]:
    lscpu = parse_lscpu(_output(["lscpu"]))
    memory = "unknown memory"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return {
        "cpu_model": lscpu.get("Model name", platform.processor() or "unknown CPU"),
        "cpus": os.cpu_count(),
        "lscpu": {
            key: lscpu[key]
            for key in ("Model name", "CPU(s)", "Thread(s) per core", "Hypervisor vendor")
            if key in lscpu
        },
        "memory": memory,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def tool_versions() -> dict[str, str]:
    versions = {}
    if shutil.which("wrk"):
        first = _output(["wrk", "-v"]).splitlines()[0]  # "wrk debian/4.1.0-3 [epoll] Copyright..."
        versions["wrk"] = first.split(" Copyright")[0].removeprefix("wrk ")
    if shutil.which("h2load"):
        versions["h2load"] = (
            _output(["h2load", "--version"]).splitlines()[0].removeprefix("h2load ")
        )
    if shutil.which("gtlsclient"):  # it has no --version: ask the package manager
        package = _output(["dpkg-query", "-W", "-f", "${Version}", "ngtcp2-client"])
        versions["gtlsclient"] = f"ngtcp2-client {package}" if package else "(version unknown)"
    return versions


def cpu_plan(args: argparse.Namespace) -> tuple[list[int] | None, list[int] | None]:
    """(server CPUs, load CPUs): one CPU each when there are two, else no pinning."""
    available = sorted(os.sched_getaffinity(0))
    if args.server_cpu is not None or args.load_cpu is not None:
        server = args.server_cpu if args.server_cpu is not None else available[0]
        load = (
            args.load_cpu
            if args.load_cpu is not None
            else next(c for c in available if c != server)
        )
        return [server], [load]
    if len(available) < 2:
        print("[bench] fewer than 2 CPUs: server and load generator are not pinned", flush=True)
        return None, None
    return [available[0]], [available[1]]


def make_certificates(directory: Path) -> tuple[Path, Path] | str:
    """A throwaway self-signed certificate for 127.0.0.1 / localhost; or why there is none."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    argv = [
        "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-days", "2", "-subj", "/CN=localhost",
        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        "-keyout", str(key), "-out", str(cert),
    ]  # fmt: skip
    if shutil.which("openssl") is None:
        return "openssl is not installed"
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        return f"openssl failed: {done.stderr.strip()[-200:]}"
    return cert, key


@dataclass
class Context:
    """What every run needs to know."""

    args: argparse.Namespace
    venvs: dict[str, Path | None]
    server_cpus: list[int] | None
    load: LoadContext
    certs: tuple[Path, Path] | None
    workdir: Path
    env: dict[str, str]


def measure(
    ctx: Context, server: ServerConfig, scenario: Scenario, round_number: int
) -> dict[str, Any]:
    """Start `server`, warm it up, load it once, sample it, stop it; always returns a run record."""
    from bench.procutil import free_port

    port = free_port()
    certfile, keyfile = ctx.certs if (scenario.tls and ctx.certs) else (None, None)
    launch = Launch(
        port,
        scenario.protocol,
        certfile,
        keyfile,
        long_keep_alive=scenario.measures_idle_memory,
        config_dir=ctx.workdir,
    )
    venv = ctx.venvs[server.venv]
    assert venv is not None
    argv = pinned(command(server, venv, launch), ctx.server_cpus)
    record: dict[str, Any] = {
        "round": round_number,
        "scenario": scenario.name,
        "server": server.name,
        "ok": False,
        "error": "",
        "metrics": {},
        "server_command": shlex.join(argv),
    }
    log_path = ctx.workdir / f"{scenario.name}-{server.name}-r{round_number}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=ctx.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    load = LoadContext(
        port=port,
        cpus=ctx.load.cpus,
        threads=ctx.load.threads,
        workdir=ctx.workdir,
        ws_python=ctx.load.ws_python,
        ws_processes=ctx.load.ws_processes,
        idle_connections=ctx.load.idle_connections,
    )
    try:
        problem = wait_ready(proc, port, launch.tls, ctx.args.startup_timeout)
        if problem:
            record["error"] = f"server did not start: {problem}\n{tail(log_path)}"
            return record

        def rss() -> int:
            return sample_group(proc.pid).rss_kib

        if ctx.args.warmup > 0 and not scenario.measures_idle_memory:
            with contextlib.suppress(LoadError):
                run_load(scenario, load, ctx.args.warmup, rss)
        before = sample_group(proc.pid)
        started = time.monotonic()
        try:
            metrics = run_load(scenario, load, ctx.args.duration, rss)
        except LoadError as exc:
            record["error"] = f"load failed: {exc}\n{tail(log_path, 10)}"
            return record
        finally:
            wall = time.monotonic() - started
            after = sample_group(proc.pid)
        if proc.poll() is not None:
            record["error"] = (
                f"server exited (status {proc.returncode}) during the run\n{tail(log_path)}"
            )
            return record
        metrics["server_cpu_percent"] = 100.0 * (after.cpu_seconds - before.cpu_seconds) / wall
        metrics["peak_rss_kib"] = after.hwm_kib
        metrics["worker_peak_rss_kib"] = after.largest_hwm_kib
        metrics["server_processes"] = len(after.per_process)
        record["metrics"] = metrics
        record["ok"] = True
        return record
    finally:
        kill_group(proc)


def headline_text(scenario: Scenario, metrics: dict[str, Any]) -> str:
    value = metrics.get(scenario.headline)
    text = f"{value:,.1f} {scenario.headline_label}" if value is not None else "-"
    if metrics.get("latency_p99_ms") is not None:
        text += f", p99 {metrics['latency_p99_ms']:.1f} ms"
    if metrics.get("errors"):
        text += f", {metrics['errors']} errors"
    return text


def main(argv: list[str] | None = None) -> int:
    raw_argv = sys.argv[1:] if argv is None else argv
    args = parse_args(raw_argv)
    if args.list:
        for server in SERVERS:
            features = ",".join(sorted(server.features))
            print(f"server   {server.name:<22} {features:<22} {server.note}")
        for scenario in SCENARIOS:
            print(f"scenario {scenario.name:<22} {scenario.description}")
        return 0
    servers = select_servers(args.servers, args.quick)
    scenarios = select_scenarios(args.scenarios)
    started = datetime.datetime.now(datetime.timezone.utc)
    print(
        f"[bench] {len(servers)} server configuration(s), {len(scenarios)} scenario(s)", flush=True
    )

    if not args.no_setup:
        setup_env.setup(args.use_current_venv)
    venvs: dict[str, Path | None] = {
        "multicorn": setup_env.current_venv()
        if args.use_current_venv
        else setup_env.MULTICORN_VENV,
        "peers": setup_env.PEERS_VENV,
    }

    availability: dict[str, Availability] = {}
    for server in servers:
        found = availability[server.name] = probe_server(server, venvs[server.venv], ROOT)
        if not found.ok:
            print(f"[bench] {server.name} unavailable: {found.reason}", flush=True)
        for feature, why in sorted(found.missing_features.items()):
            print(f"[bench] {server.name}: {feature} not measured: {why}", flush=True)
    runnable = [server for server in servers if availability[server.name].ok]

    def measured_on(server: ServerConfig, scenario: Scenario) -> bool:
        return scenario.protocol in availability[server.name].features

    skipped: dict[str, str] = {}
    for scenario in scenarios:
        program = TOOL_PROGRAMS[scenario.tool]
        if program and shutil.which(program) is None:
            skipped[scenario.name] = f"{program} is not installed"
        elif not any(measured_on(server, scenario) for server in runnable):
            skipped[scenario.name] = f"no selected, available server supports {scenario.protocol}"

    server_cpus, load_cpus = cpu_plan(args)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    if load_cpus:
        os.sched_setaffinity(0, load_cpus)  # this process is part of the load side too

    peers_python = setup_env.PEERS_VENV / "bin" / "python"
    ws_python = str(peers_python) if peers_python.exists() else sys.executable
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("VIRTUAL_ENV", None)

    runs: list[dict[str, Any]] = []
    commands: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="multicorn-bench-") as tmp:
        workdir = Path(tmp)
        certs: tuple[Path, Path] | None = None
        if any(s.tls for s in scenarios if s.name not in skipped):
            made = make_certificates(workdir)
            if isinstance(made, str):
                for scenario in scenarios:
                    if scenario.tls:
                        skipped[scenario.name] = made
            else:
                certs = made
        for name, why in skipped.items():
            print(f"[bench] scenario {name} skipped: {why}", flush=True)
        to_run = [scenario for scenario in scenarios if scenario.name not in skipped]
        ctx = Context(
            args=args,
            venvs=venvs,
            server_cpus=server_cpus,
            load=LoadContext(
                port=0,
                cpus=load_cpus,
                threads=len(load_cpus) if load_cpus else 1,
                workdir=workdir,
                ws_python=ws_python,
                ws_processes=args.ws_processes or (len(load_cpus) if load_cpus else 1),
                idle_connections=args.idle_connections,
            ),
            certs=certs,
            workdir=workdir,
            env=env,
        )
        rng = random.Random(args.seed)
        plan: list[tuple[int, Scenario, ServerConfig]] = []
        for round_number in range(1, args.rounds + 1):
            order = list(runnable)
            rng.shuffle(order)
            for scenario in to_run:
                for _ in range(scenario.repeats):
                    plan += [(round_number, scenario, s) for s in order if measured_on(s, scenario)]
        per_run = args.duration + args.warmup + 3
        print(
            f"[bench] {len(plan)} runs, about {len(plan) * per_run / 60:.0f} min "
            f"(server CPU {server_cpus or 'any'}, load CPU {load_cpus or 'any'})",
            flush=True,
        )
        for index, (round_number, scenario, server) in enumerate(plan, 1):
            record = measure(ctx, server, scenario, round_number)
            runs.append(record)
            if scenario.protocol == "h1" and server.name not in commands:
                commands[server.name] = record["server_command"]
            status = (
                headline_text(scenario, record["metrics"])
                if record["ok"]
                else ("FAILED: " + record["error"].splitlines()[0][:200])
            )
            print(
                f"[{index}/{len(plan)}] round {round_number} "
                f"{scenario.name:<14} {server.name:<19} {status}",
                flush=True,
            )
        for server in runnable:  # a command line for the report even if no h1 scenario ran
            if server.name not in commands:
                commands[server.name] = next(
                    (r["server_command"] for r in runs if r["server"] == server.name), ""
                )

    summary = report.summarize(runs)
    git = git_info()
    results: dict[str, Any] = {
        "schema": 1,
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, os.path.relpath(sys.argv[0]), *raw_argv]),
        "cwd": os.getcwd(),
        "git": git,
        "machine": machine_info(),
        "tools": tool_versions(),
        "settings": {
            "duration": args.duration,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "seed": args.seed,
            "quick": args.quick,
            "server_cpus": server_cpus,
            "load_cpus": load_cpus,
            "idle_connections": args.idle_connections,
            "ws_processes": ctx.load.ws_processes,
            "ws_client_python": ws_python,
        },
        "venvs": {name: str(path) if path else None for name, path in venvs.items()},
        "venv_python": {
            server.venv: availability[server.name].python
            for server in servers
            if availability[server.name].python
        },
        "servers": {
            server.name: {
                "family": server.family,
                "venv": server.venv,
                # The protocols measured here, and why the row's others were not.
                "features": sorted(availability[server.name].features or server.features),
                "missing_features": availability[server.name].missing_features,
                "note": server.note,
                "available": availability[server.name].ok,
                "reason": availability[server.name].reason,
                "versions": availability[server.name].versions,
                "command": commands.get(server.name, ""),
            }
            for server in servers
        },
        "scenarios": {
            scenario.name: {
                "description": scenario.description,
                "protocol": scenario.protocol,
                "tool": scenario.tool,
                "path": scenario.path,
                "connections": scenario.connections,
                "streams": scenario.streams,
                "message_size": scenario.message_size if scenario.protocol == WS else None,
                "binary": scenario.binary,
                "headline": scenario.headline,
                "higher_is_better": scenario.higher_is_better,
            }
            for scenario in scenarios
        },
        "scenario_order": [scenario.name for scenario in scenarios],
        "server_order": [server.name for server in servers],
        "headlines": {scenario.name: scenario.headline for scenario in scenarios},
        "skipped_scenarios": skipped,
        "runs": runs,
        "summary": summary,
        "ratios": report.ratios(summary, scenarios, servers),
        "plot": None,
        "plot_error": None,
    }

    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    sha = git["sha"] + ("-dirty" if git["dirty"] else "")
    json_path = args.json_out or RESULTS / f"{stamp}-{sha}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    if not args.no_plot and str(args.plot):
        results["plot"], results["plot_error"] = draw_plot(json_path, args.plot)
        json_path.write_text(json.dumps(results, indent=2) + "\n")

    print()
    print("\n".join(report.scenario_tables(results, scenarios)))
    print("\n".join(report.problems(results)))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        link = None
        if results["plot"]:
            link = os.path.relpath(Path(results["plot"]).resolve(), args.markdown.resolve().parent)
        args.markdown.write_text(report.report_page(results, scenarios, link))
        print(f"[bench] report page: {args.markdown}")
    print(f"[bench] results: {json_path}")
    if results["plot"]:
        print(f"[bench] plot: {results['plot']}")
    elif results["plot_error"]:
        print(f"[bench] no plot: {results['plot_error']}")
    return 0 if any(run["ok"] for run in runs) else 1


def draw_plot(json_path: Path, out: Path) -> tuple[str | None, str | None]:
    """Run plot.py with an interpreter that has matplotlib; returns (path, None) or (None, why)."""
    candidates = [setup_env.PEERS_VENV / "bin" / "python", Path(sys.executable)]
    for python in candidates:
        if not python.exists():
            continue
        check = subprocess.run(
            [str(python), "-c", "import matplotlib"], capture_output=True, timeout=60, check=False
        )
        if check.returncode != 0:
            continue
        done = subprocess.run(
            [str(python), str(BENCH / "plot.py"), str(json_path), str(out)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode == 0:
            return str(out), None
        return None, f"plot.py failed: {done.stderr.strip()[-300:]}"
    return None, "matplotlib is not installed (bench/.venv-peers has it after setup)"
