"""What a new user meets first: a missing event-loop package, a failing lifespan startup and
a mistyped flag each end in one clear message, not a traceback or a usage block."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .process import ROOT

# Runs the command with `trio` and `uvloop` made unimportable, as on a machine without them.
_WITHOUT_PACKAGES = """
import sys

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("trio", "uvloop"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Refuse())
for name in [name for name in sys.modules if name.split(".")[0] in ("trio", "uvloop")]:
    del sys.modules[name]
from multicorn.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def run(*args: str, code: str | None = None) -> subprocess.CompletedProcess[str]:
    command = ["-c", code] if code is not None else ["-m", "multicorn"]
    return subprocess.run(
        [sys.executable, *command, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(("worker", "extra"), [("trio", "trio"), ("uvloop", "uvloop")])
def test_missing_worker_package_says_what_to_install(worker, extra):
    result = run("examples.hello:app", "-b", "127.0.0.1:0", "-k", worker, code=_WITHOUT_PACKAGES)
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("multicorn: error: ")
    assert f"No module named '{worker}'" in lines[0]
    assert f"pip install '.[{extra}]' in a multicorn checkout" in lines[0]


def test_asyncio_worker_needs_neither_package():
    # Gets as far as the app's lifespan startup (which fails on purpose) without them.
    args = ("tests.e2e.apps:failing_startup", "-b", "127.0.0.1:0", "-k", "asyncio")
    result = run(*args, code=_WITHOUT_PACKAGES)
    assert result.returncode == 3
    assert "database unreachable" in result.stderr
    assert "pip install" not in result.stderr


@pytest.mark.parametrize("worker", ["asyncio", "trio"])
@pytest.mark.parametrize(
    "args",
    [
        ("tests.e2e.apps:starlette_failing_startup", "--factory"),
        ("tests.e2e.apps:raising_startup", "--lifespan", "on"),
    ],
    ids=["starlette", "raises"],
)
def test_lifespan_startup_failure_shows_its_traceback_once(worker, args):
    result = run(*args, "-b", "127.0.0.1:0", "-k", worker)
    assert result.returncode == 3, result.stderr
    assert result.stderr.count("Traceback (most recent call last)") == 1, result.stderr
    assert result.stderr.count('raise RuntimeError("database unreachable")') == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("multicorn: error: application startup failed: ")
    assert "database unreachable" in last


def test_usage_error_is_one_line_and_a_hint():
    result = run("examples.hello:app", "--keep-alive", "soon")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "multicorn: error: argument --keep-alive: expected a number of seconds >= 0, got 'soon'",
        "Run 'multicorn --help' for the options.",
    ]
    assert "usage:" not in result.stderr
