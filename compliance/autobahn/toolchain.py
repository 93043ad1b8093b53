"""The Python 2.7 toolchain that runs `wstest`, and the system tools the run needs.

This module owns finding CPython 2.7 (pyenv's, normally), building the virtualenv
compliance/.venv-autobahn from it with the pins in requirements.txt, and installing the few
Debian packages the install and the TLS run rely on (a C compiler for wsaccel, openssl for the
throwaway certificate) when they are missing and we are root. The Autobahn testsuite only runs
on Python 2; everything else in compliance/ is Python 3.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import venv
from pathlib import Path

HERE = Path(__file__).resolve().parent
COMPLIANCE = HERE.parent
VENV_DIR = COMPLIANCE / ".venv-autobahn"
BOOTSTRAP_DIR = COMPLIANCE / ".venv-autobahn-bootstrap"
REQUIREMENTS = HERE / "requirements.txt"
BOOTSTRAP_REQUIREMENTS = HERE / "requirements-bootstrap.txt"
# Written last by a successful install: what it was built from, so a changed pin set or a
# different interpreter rebuilds the virtualenv instead of running a stale one.
STAMP = "autobahn-install.stamp"
INSTALL_TIMEOUT = 900.0


class ToolchainError(Exception):
    """The run cannot start: a missing interpreter, tool or package, said in words."""


def find_python2(explicit: str | None = None) -> Path:
    """The CPython 2.7 interpreter to build the virtualenv from.

    Order: `explicit` (the --python2 option), $AUTOBAHN_PYTHON2, the newest
    $PYENV_ROOT/versions/2.7.* (PYENV_ROOT defaults to ~/.pyenv), then python2.7 on PATH.
    """
    candidates: list[Path] = []
    if explicit:
        candidates.append(Path(explicit))
    elif os.environ.get("AUTOBAHN_PYTHON2"):
        candidates.append(Path(os.environ["AUTOBAHN_PYTHON2"]))
    else:
        pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
        versions = sorted(
            (pyenv_root / "versions").glob("2.7.*"),
            key=lambda path: _version_key(path.name),
            reverse=True,
        )
        candidates.extend(path / "bin" / "python" for path in versions)
        on_path = shutil.which("python2.7")
        if on_path:
            candidates.append(Path(on_path))
    for candidate in candidates:
        if _is_python27(candidate):
            return candidate
    looked = ", ".join(str(path) for path in candidates) or "no candidates"
    raise ToolchainError(
        "CPython 2.7 not found (looked at: "
        f"{looked}). The Autobahn testsuite runs only on Python 2.7: install it with "
        "`pyenv install 2.7.18`, or point --python2 (or $AUTOBAHN_PYTHON2) at a 2.7 interpreter."
    )


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name))


def _is_python27(path: Path) -> bool:
    if not path.is_file() or not os.access(path, os.X_OK):
        return False
    try:
        out = subprocess.run(
            [str(path), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and out.stdout.strip() == "2.7"


def ensure_commands(commands: dict[str, str]) -> None:
    """Make every command in `commands` (command -> Debian package) available.

    Missing ones are installed with apt-get when we are root on a Debian-like system; otherwise
    the error names the packages to install.
    """
    missing = {cmd: pkg for cmd, pkg in commands.items() if shutil.which(cmd) is None}
    if not missing:
        return
    packages = sorted(set(missing.values()))
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ToolchainError(
            f"missing {', '.join(sorted(missing))}: install the package(s) {' '.join(packages)}"
        )
    print(f"autobahn: installing {' '.join(packages)} with apt-get", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
    ):
        _run(argv, env=env)
    still = [cmd for cmd in missing if shutil.which(cmd) is None]
    if still:
        raise ToolchainError(f"apt-get ran, but {', '.join(still)} is still missing")


def wstest_path(venv_dir: Path = VENV_DIR) -> Path:
    return venv_dir / "bin" / "wstest"


def ensure_wstest(python2: Path, *, reinstall: bool = False, venv_dir: Path = VENV_DIR) -> Path:
    """A working `wstest` in `venv_dir`, building the virtualenv first when needed."""
    stamp = _stamp_text(python2)
    stamp_file = venv_dir / STAMP
    if (
        not reinstall
        and wstest_path(venv_dir).exists()
        and stamp_file.exists()
        and stamp_file.read_text() == stamp
    ):
        return wstest_path(venv_dir)

    print(f"autobahn: building {venv_dir} from {python2} (about a minute)", flush=True)
    # wsaccel compiles a C extension against the 2.7 headers.
    ensure_commands({"cc": "gcc"})
    if venv_dir.exists():
        shutil.rmtree(venv_dir)
    virtualenv = _bootstrap_virtualenv()
    _run([str(virtualenv), "--quiet", "--python", str(python2), str(venv_dir)])
    pip = [str(venv_dir / "bin" / "python"), "-m", "pip"]
    # The 2.7 pip prints a deprecation banner on every call; it is noise here.
    quiet = ["--quiet", "--no-python-version-warning", "--disable-pip-version-check"]
    _run([*pip, "install", *quiet, "-r", str(REQUIREMENTS)])
    version = subprocess.run(
        [str(wstest_path(venv_dir)), "--autobahnversion"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if version.returncode != 0:
        raise ToolchainError(
            f"wstest was installed but does not start:\n{version.stdout}{version.stderr}"
        )
    stamp_file.write_text(stamp)
    return wstest_path(venv_dir)


def _stamp_text(python2: Path) -> str:
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    return f"python2={python2}\nrequirements-sha256={digest}\n"


def _bootstrap_virtualenv() -> Path:
    """A Python 3 venv holding the last virtualenv that still creates 2.7 environments."""
    virtualenv = BOOTSTRAP_DIR / "bin" / "virtualenv"
    if virtualenv.exists():
        return virtualenv
    venv.EnvBuilder(with_pip=True, clear=True).create(BOOTSTRAP_DIR)
    _run(
        [
            str(BOOTSTRAP_DIR / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
            str(BOOTSTRAP_REQUIREMENTS),
        ]
    )
    return virtualenv


def _run(argv: list[str], env: dict[str, str] | None = None) -> None:
    try:
        done = subprocess.run(argv, env=env, timeout=INSTALL_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ToolchainError(f"timed out after {INSTALL_TIMEOUT:.0f} s: {' '.join(argv)}") from exc
    if done.returncode != 0:
        raise ToolchainError(f"exit status {done.returncode}: {' '.join(argv)}")
