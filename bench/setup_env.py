"""Setup: the load generators from Debian, and the two virtualenvs the servers run from.

This module owns making the machine ready, idempotently (skip it with `--no-setup`):

- `wrk`, `h2load` (package nghttp2-client), `gtlsclient` (ngtcp2-client, the HTTP/3 client),
  `taskset` (util-linux) and `openssl` through apt-get when missing and running as root;
  otherwise it prints what to install;
- `bench/.venv-peers`: Hypercorn (with aioquic, for its HTTP/3), Uvicorn (httptools, uvloop,
  websockets, wsproto), Granian, Gunicorn, Daphne and matplotlib for the plot;
- `bench/.venv-multicorn`: this repository installed editable with its trio and speed extras
  (httptools, uvloop, and websockets, whose C extension unmasks WebSocket frames).

A venv is only re-installed when its requirement list changed (a stamp file inside it records
the last one), so a second run starts at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PEERS_VENV = BENCH / ".venv-peers"
MULTICORN_VENV = BENCH / ".venv-multicorn"
STAMP = ".bench-requirements"

# Program -> Debian package that provides it.
TOOLS = {
    "wrk": "wrk",
    "h2load": "nghttp2-client",
    "gtlsclient": "ngtcp2-client",
    "taskset": "util-linux",
    "openssl": "openssl",
}

PEER_REQUIREMENTS = (
    "hypercorn[trio,uvloop,h3]",  # h3: aioquic, for --quic-bind
    "uvicorn[standard]",  # httptools, uvloop, websockets
    "wsproto",  # uvicorn-wsproto (Hypercorn depends on it too)
    "granian",
    "gunicorn",  # its `asgi` worker ships inside gunicorn >= 24 (detected, not assumed)
    "h2",  # gunicorn's HTTP/2
    "daphne",
    "twisted[tls,http2]",  # daphne's TLS and HTTP/2
    "sniffio",  # bench/apps.py
    "matplotlib",  # bench/plot.py
)
MULTICORN_EXTRA_REQUIREMENTS = ("sniffio", "py-spy")  # py-spy: bench/flamegraphs.py


def log(message: str) -> None:
    print(f"[setup] {message}", flush=True)


def missing_tools() -> dict[str, str]:
    """Programs the suite uses that are not on PATH, with their Debian packages."""
    return {tool: package for tool, package in TOOLS.items() if shutil.which(tool) is None}


def install_tools() -> dict[str, str]:
    """apt-get install the missing tools when root; returns those still missing."""
    missing = missing_tools()
    if not missing:
        log(", ".join(TOOLS) + " are installed")
        return {}
    packages = sorted(set(missing.values()))
    if os.geteuid() != 0:
        log(
            f"missing {', '.join(sorted(missing))}; not root, so install them yourself: "
            f"sudo apt-get install {' '.join(packages)}"
        )
        return missing
    if shutil.which("apt-get") is None:
        log(f"missing {', '.join(sorted(missing))} and no apt-get: install {' '.join(packages)}")
        return missing
    log(f"apt-get install {' '.join(packages)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", *packages], check=True, env=env, timeout=900
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        log(f"apt-get failed: {exc}")
    return missing_tools()


def _stamp(requirements: list[str]) -> str:
    return hashlib.sha256(json.dumps(requirements).encode()).hexdigest()


def ensure_venv(venv: Path, requirements: list[str], editable: Path | None = None) -> bool:
    """Create `venv` if needed and pip-install `requirements` unless its stamp matches.

    `editable` installs that project with `-e` (its pyproject.toml is part of the stamp, so a
    change of dependencies re-installs). Returns whether the venv is usable.
    """
    stamp_input = list(requirements)
    if editable is not None:
        stamp_input.append((editable / "pyproject.toml").read_text())
    stamp = _stamp(stamp_input)
    python = venv / "bin" / "python"
    stamp_file = venv / STAMP
    if python.exists() and stamp_file.exists() and stamp_file.read_text().strip() == stamp:
        log(f"{venv.relative_to(ROOT)} is up to date")
        return True
    if not python.exists():
        log(f"creating {venv.relative_to(ROOT)}")
        try:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            log(f"could not create {venv}: {exc} (on Debian: apt-get install python3-venv)")
            return False
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "install", "--quiet"]
    args = list(requirements)
    if editable is not None:
        args = ["-e", str(editable) + "[trio,speed]", *args]
    pip_log = venv / "pip.log"
    log(f"pip install {' '.join(args)} into {venv.relative_to(ROOT)} (log: {pip_log})")
    try:
        with pip_log.open("w") as out:
            for command in ([*pip, "--upgrade", "pip"], [*pip, *args]):
                subprocess.run(
                    command,
                    check=True,
                    timeout=1800,
                    cwd=ROOT,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        log(f"pip install into {venv} failed: {exc}; the end of {pip_log}:")
        print("\n".join(pip_log.read_text(errors="replace").splitlines()[-20:]), flush=True)
        return python.exists()
    stamp_file.write_text(stamp + "\n")
    return True


def setup(use_current_venv: bool) -> dict[str, str]:
    """Everything above; returns the tools still missing."""
    missing = install_tools()
    ensure_venv(PEERS_VENV, list(PEER_REQUIREMENTS))
    if not use_current_venv:
        ensure_venv(MULTICORN_VENV, list(MULTICORN_EXTRA_REQUIREMENTS), editable=ROOT)
    return missing


def current_venv() -> Path:
    """The venv `--use-current-venv` means: this interpreter's, else the repository's `.venv`."""
    if sys.prefix != sys.base_prefix:
        return Path(sys.prefix)
    return ROOT / ".venv"
