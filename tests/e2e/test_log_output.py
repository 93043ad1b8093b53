"""What the server writes to its logs, as a subprocess on both runtimes: JSON lines with
--log-format json, response-header atoms showing the header as sent, the startup line with the
URL, the shutdown lines, and a --log-config file taking over the handlers."""

from __future__ import annotations

import json
import signal

import httpx
import pytest

from .process import multicorn_process

WORKERS = ["asyncio", "trio"]


@pytest.mark.parametrize("worker", WORKERS)
def test_json_log_lines(worker):
    args = ("tests.e2e.apps:identity", "-k", worker, "--bind", "127.0.0.1:0")
    args += ("--log-format", "json", "--access-logfile", "-")
    with multicorn_process(*args) as (proc, url):
        response = httpx.get(url + "/hello?x=1", headers={"user-agent": "json-test"})
        assert response.status_code == 200
        proc.output.wait_for('"path": "/hello"')
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        proc.output.wait_for("Finished server process")
    entries = [json.loads(line) for line in proc.output.lines if line.strip()]
    access = [e for e in entries if "status" in e]
    assert len(access) == 1
    assert access[0]["status"] == 200 and access[0]["method"] == "GET"
    assert access[0]["query"] == "x=1" and access[0]["user_agent"] == "json-test"
    assert access[0]["client"] == "127.0.0.1" and access[0]["protocol"] == "HTTP/1.1"
    assert access[0]["bytes"] == len(response.content)
    messages = [e["message"] for e in entries if "message" in e]
    assert f"Running on {url} (CTRL + C to quit)" in messages
    assert "Shutting down" in messages
    assert messages[-1] == f"Finished server process [{proc.pid}]"


@pytest.mark.parametrize("worker", WORKERS)
def test_response_header_atom_shows_the_header_as_sent(worker):
    args = ("tests.e2e.apps:identity", "-k", worker, "--bind", "127.0.0.1:0")
    args += ("--access-logfile", "-", "--access-logformat")
    args += ("ACCESS %(s)s %({x-served-by}o)s %({content-type}o)s %({server}o)s",)
    with multicorn_process(*args) as (proc, url):
        assert httpx.get(url).status_code == 200
        line = proc.output.wait_for("ACCESS ").string
        assert line.strip() == "ACCESS 200 multicorn-test application/json multicorn"


@pytest.mark.parametrize("worker", WORKERS)
def test_log_config_file(worker, tmp_path):
    target = tmp_path / "server.log"
    config = tmp_path / "logging.json"
    config.write_text(
        json.dumps(
            {
                "version": 1,
                "formatters": {"tagged": {"format": "TAGGED %(name)s %(message)s"}},
                "handlers": {
                    "file": {"class": "logging.FileHandler", "filename": str(target)},
                    "console": {"class": "logging.StreamHandler", "formatter": "tagged"},
                },
                "loggers": {
                    "multicorn.error": {"handlers": ["console"], "level": "INFO"},
                    "multicorn.access": {"handlers": ["file"], "level": "INFO"},
                },
            }
        )
    )
    args = ("tests.e2e.apps:identity", "-k", worker, "--bind", "127.0.0.1:0")
    with multicorn_process(*args, "--log-config", str(config)) as (proc, url):
        assert proc.output.lines[-1].startswith("TAGGED multicorn.error Running on")
        httpx.get(url + "/via-config")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    assert '"GET /via-config HTTP/1.1" 200' in target.read_text()
