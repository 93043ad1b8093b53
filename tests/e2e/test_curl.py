"""The example app under the real `multicorn` command, driven by curl, on every worker class."""

from __future__ import annotations

import shutil
import signal
import subprocess

import pytest

from .process import multicorn_process

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


@pytest.fixture(params=["asyncio", "trio"])
def hello_url(request):
    args = ("examples.hello:app", "--bind", "127.0.0.1:0", "--worker-class", request.param)
    with multicorn_process(*args) as (proc, url):
        yield url
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def curl(*args: str, data: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["curl", "--silent", "--show-error", *args], input=data, capture_output=True, timeout=30
    )


def test_keep_alive_reuses_the_connection(hello_url):
    result = curl("--verbose", hello_url + "/", hello_url + "/again")
    assert result.stdout == b"Hello, world!\n" * 2
    assert b"Re-using existing connection" in result.stderr


def test_chunked_upload_is_echoed(hello_url):
    body = b"0123456789" * 10_000
    result = curl(
        "-H", "Transfer-Encoding: chunked", "--data-binary", "@-", hello_url + "/echo", data=body
    )
    assert result.stdout == body


def test_expect_100_continue(hello_url):
    body = b"z" * 2_000_000
    result = curl(
        "--verbose",
        "-H",
        "Expect: 100-continue",
        "--data-binary",
        "@-",
        hello_url + "/echo",
        data=body,
    )
    assert b"HTTP/1.1 100 Continue" in result.stderr
    assert result.stdout == body


def test_head_and_http10(hello_url):
    head = curl("--head", hello_url + "/")
    assert head.stdout.startswith(b"HTTP/1.1 200 OK")
    assert b"content-length: 14" in head.stdout
    old = curl("--http1.0", hello_url + "/")
    assert old.stdout == b"Hello, world!\n"
