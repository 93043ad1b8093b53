"""The `multicorn` command as a user runs it: a subprocess, real signals, real exit codes."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from .process import ROOT, multicorn_process

WORKERS = ["asyncio", "uvloop", "trio"]


@pytest.mark.parametrize("http", ["h11", "httptools"])
@pytest.mark.parametrize("worker", WORKERS)
def test_serves_the_example_app(worker, http):
    args = ("examples.hello:app", "--bind", "127.0.0.1:0", "--worker-class", worker, "--http", http)
    with multicorn_process(*args) as (proc, url):
        response = httpx.get(url)
        assert response.status_code == 200
        assert response.text == "Hello, world!\n"
        echoed = httpx.post(url + "/echo", content=b"x" * 100_000)
        assert echoed.content == b"x" * 100_000
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


@pytest.mark.parametrize("worker", WORKERS)
def test_sigterm_lets_in_flight_request_finish(worker):
    args = ("tests.e2e.apps:slow", "--bind", "127.0.0.1:0", "-k", worker)
    with multicorn_process(*args) as (proc, url):
        result = {}

        def slow_request():
            result["response"] = httpx.get(url + "/slow", timeout=10)

        thread = threading.Thread(target=slow_request)
        thread.start()
        proc.output.wait_for("sleeping in /slow")
        proc.send_signal(signal.SIGTERM)
        thread.join(timeout=10)
        assert proc.wait(timeout=10) == 0
    assert result["response"].status_code == 200
    assert result["response"].text == "done /slow"


@pytest.mark.parametrize("worker", WORKERS)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_graceful_timeout_bounds_shutdown(worker, sig):
    args = ("tests.e2e.apps:slow", "-b", "127.0.0.1:0", "-k", worker, "--graceful-timeout", "1")
    with multicorn_process(*args) as (proc, url):
        errors = []

        def stuck_request():
            try:
                httpx.get(url + "/stuck", timeout=20)
            except httpx.HTTPError as exc:
                errors.append(exc)

        thread = threading.Thread(target=stuck_request)
        thread.start()
        proc.output.wait_for("sleeping in /stuck")
        start = time.monotonic()
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == 0
        elapsed = time.monotonic() - start
        thread.join(timeout=10)
    assert 0.9 < elapsed < 4, elapsed
    assert len(errors) == 1


def test_factory_and_app_dir(tmp_path):
    (tmp_path / "myapp.py").write_text(
        "async def app(scope, receive, send):\n"
        "    if scope['type'] != 'http': return\n"
        "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "    await send({'type': 'http.response.body', 'body': b'from factory'})\n"
        "def create():\n"
        "    return app\n"
    )
    args = ("myapp:create", "--factory", "--app-dir", str(tmp_path), "-b", "127.0.0.1:0")
    with multicorn_process(*args) as (proc, url):
        assert httpx.get(url).text == "from factory"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "multicorn", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (("no_such_module:app",), "no_such_module", 3),
        (("examples.hello:nope",), "nope", 3),
        (("tests.e2e.apps:failing_startup", "-b", "127.0.0.1:0"), "database unreachable", 3),
        (("examples.hello:app", "--error-logfile", "/nonexistent/dir/e.log"), "error_logfile", 3),
        (("examples.hello:app", "--certfile", "/nonexistent/cert.pem"), "cert.pem", 3),
        # A bad flag is a usage error: argparse's exit status 2.
        (("examples.hello:app", "--keep-alive", "-1"), "keep", 2),
        (("examples.hello:app", "--bind", "not a bind::"), "bind", 2),
    ],
)
def test_startup_failures_exit_non_zero_with_one_clear_line(args, message, code):
    result = run_cli(*args)
    assert result.returncode == code
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_bind_in_use_is_a_clear_error():
    with multicorn_process("examples.hello:app", "-b", "127.0.0.1:0") as (proc, url):
        port = url.rsplit(":", 1)[1]
        result = run_cli("examples.hello:app", "-b", f"127.0.0.1:{port}")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    assert result.returncode == 3
    assert "address already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_version_and_help():
    assert run_cli("--version").stdout.strip().endswith("0.1.0")
    help_text = run_cli("--help").stdout
    for flag in ("--bind", "--worker-class", "--keep-alive", "--graceful-timeout", "--root-path"):
        assert flag in help_text
