"""Flame graphs of multicorn under bench's own load: one SVG per protocol, for docs/.

This module owns the profiling runs behind docs/flamegraphs/: for each scenario it starts
`bench/run.py` for one multicorn configuration (one round, no plot), waits for the server
process, lets the warm-up pass, and records it with py-spy (`--nonblocking`, so the server is
never stopped to be sampled) while the measured load runs. The load, the pinning and the server
command are bench's, so the graphs show what the tables measure.

    python3 bench/flamegraphs.py                      # the four protocols, into docs/flamegraphs
    python3 bench/flamegraphs.py --scenarios h2c --seconds 5

py-spy comes with bench's multicorn venv (bench/setup_env.py); run bench/run.py once without
`--no-setup` first on a new machine.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY_SPY = BENCH / ".venv-multicorn" / "bin" / "py-spy"

# The configuration profiled per scenario: the fastest multicorn setup for that protocol.
CONFIGS = {
    "h1-get": "multicorn-httptools",
    "h2c": "multicorn-uvloop",
    "h2-tls": "multicorn-uvloop",
    "h3-get": "multicorn-uvloop",
    "ws-echo": "multicorn-uvloop",
}
WARMUP = 1.0  # bench's warm-up load, which the profile leaves out
RATE = 250  # samples per second


def server_pid(deadline: float) -> int | None:
    """The benchmarked multicorn server (the console script bench starts), once it runs."""
    while time.monotonic() < deadline:
        found = subprocess.run(
            ["pgrep", "-n", "-f", "bin/multicorn bench.apps:app"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        if found:
            return int(found[0])
        time.sleep(0.1)
    return None


def profile(scenario: str, out: Path, seconds: float) -> bool:
    server = CONFIGS[scenario]
    run = subprocess.Popen(
        [
            sys.executable,
            str(BENCH / "run.py"),
            "--no-setup",
            "--servers",
            server,
            "--scenarios",
            scenario,
            "--rounds",
            "1",
            "--duration",
            str(seconds + 2),
            "--warmup",
            str(WARMUP),
            "--no-plot",
            "--json-out",
            str(out / f".{scenario}.json"),
        ],
        cwd=ROOT,
    )
    try:
        pid = server_pid(time.monotonic() + 120)
        if pid is None:
            print(f"[flamegraphs] {scenario}: no server process appeared", file=sys.stderr)
            return False
        # The server answers its readiness probe first, then the warm-up load runs.
        time.sleep(WARMUP + 2)
        svg = out / f"{scenario}.svg"
        recorded = subprocess.run(
            [
                str(PY_SPY),
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(RATE),
                "--duration",
                str(int(seconds)),
                "--nonblocking",
                "--format",
                "flamegraph",
                "--output",
                str(svg),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if recorded.returncode != 0:
            print(f"[flamegraphs] {scenario}: py-spy failed: {recorded.stderr}", file=sys.stderr)
            return False
        print(f"[flamegraphs] {scenario} ({server}): {svg.relative_to(ROOT)}", flush=True)
        return True
    finally:
        run.wait(timeout=300)
        (out / f".{scenario}.json").unlink(missing_ok=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default="h1-get,h2c,h3-get,ws-echo")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds recorded each")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "flamegraphs")
    args = parser.parse_args()
    if not PY_SPY.exists():
        parser.error(f"{PY_SPY} is missing: run `python3 bench/run.py --quick` once to set up")
    args.out.mkdir(parents=True, exist_ok=True)
    scenarios = [name for name in args.scenarios.split(",") if name]
    unknown = [name for name in scenarios if name not in CONFIGS]
    if unknown:
        parser.error(f"no configuration to profile for {unknown}; known: {sorted(CONFIGS)}")
    ok = [profile(name, args.out, args.seconds) for name in scenarios]
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())
