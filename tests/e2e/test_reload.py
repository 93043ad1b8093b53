"""`--reload`: the supervisor restarts its worker when a watched file changes, with watchfiles
when it is installed and by polling otherwise."""

from __future__ import annotations

import os
import time

import httpx
import pytest

from .process import ROOT, launch, stop
from .supervision import RUNTIMES, wait_for_workers

APP_SOURCE = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    await send({{"type": "http.response.body", "body": b"{text}"}})
"""


def _write(path, text: str) -> None:
    path.write_text(APP_SOURCE.format(text=text))
    # A new modification time even on file systems with coarse timestamps.
    stamp = time.time() + 2
    os.utime(path, (stamp, stamp))


def _started(tmp_path, worker: str, *, polling: bool, broken: bool = False):
    env: dict[str, str] = {}
    if polling:
        # A watchfiles that cannot be imported: the supervisor falls back to polling.
        fake = tmp_path / "no_watchfiles" / "watchfiles"
        fake.mkdir(parents=True)
        (fake / "__init__.py").write_text("raise ImportError('not here')\n")
        env["PYTHONPATH"] = os.pathsep.join([str(fake.parent), str(ROOT)])
    src = tmp_path / "src"
    src.mkdir()
    _write(src / "reloadme.py", "one")
    if broken:
        (src / "reloadme.py").write_text("this is not python\n")
    (src / "notes.txt").write_text("not watched")
    args = ["reloadme:app", "--app-dir", str(src), "--reload", "--reload-dir", str(src)]
    args += ["-b", "127.0.0.1:0", "-k", worker, "--graceful-timeout", "1"]
    return launch(*args, env=env), src


def _get(url: str, want: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    text = None
    while time.monotonic() < deadline:
        text = httpx.get(url).text
        if text == want:
            return
        time.sleep(0.1)
    raise AssertionError(f"still {text!r}, not {want!r}")


@pytest.mark.parametrize("polling", [True, False], ids=["polling", "watchfiles"])
@pytest.mark.parametrize("worker", RUNTIMES)
def test_an_edited_file_restarts_the_worker(tmp_path, worker, polling):
    if not polling:
        pytest.importorskip("watchfiles")
    proc, src = _started(tmp_path, worker, polling=polling)
    try:
        backend = "polling every second" if polling else "watchfiles"
        proc.output.wait_for(f"reload: watching .* \\({backend}\\)")
        url = proc.output.wait_for(r"Running on (http://\S+)").group(1)
        [first] = wait_for_workers(proc.pid, 1)
        assert httpx.get(url).text == "one"
        (src / "notes.txt").write_text("still not watched")
        time.sleep(1.5)
        assert wait_for_workers(proc.pid, 1) == {first}  # not a *.py file: no restart
        _write(src / "reloadme.py", "two")
        proc.output.wait_for("reload: .*reloadme.py changed")
        _get(url, "two")
        wait_for_workers(proc.pid, 1, exclude={first})
        # Broken code does not take the server down: the running worker stays, and the
        # next good edit is picked up.
        (src / "reloadme.py").write_text("this is not python\n")
        proc.output.wait_for("the replacement worker failed to start")
        assert httpx.get(url).text == "two"
        _write(src / "reloadme.py", "three")
        _get(url, "three")
    finally:
        stop(proc)


@pytest.mark.parametrize("worker", RUNTIMES)
def test_code_broken_from_the_start_waits_for_a_fix(tmp_path, worker):
    proc, src = _started(tmp_path, worker, polling=False, broken=True)
    try:
        proc.output.wait_for("the worker failed to start: waiting for a file to change")
        time.sleep(0.5)
        assert proc.poll() is None  # neither given up nor restarting in a loop
        assert sum("started" in line for line in proc.output.lines) == 1
        _write(src / "reloadme.py", "fixed")
        url = proc.output.wait_for(r"Running on (http://\S+)").group(1)
        _get(url, "fixed")
        assert proc.poll() is None
    finally:
        stop(proc)
