"""The supervisor's pure decisions and its settings, without processes: the restart backoff,
max-requests jitter, how an exit is described, which files --reload watches, and the
settings that start a supervisor."""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from multicorn.__main__ import needs_supervisor
from multicorn.config import Config, ConfigError, load_config
from multicorn.reloader import FileFilter, PollingWatcher
from multicorn.supervisor import BACKOFF_CAP, backoff, describe_exit, request_limit
from multicorn.worker import retire_message


def test_backoff_replaces_a_lone_crash_at_once_then_doubles_up_to_a_cap():
    assert backoff(0) == backoff(1) == 0.0
    delays = [backoff(n) for n in range(2, 20)]
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0]
    assert all(a <= b for a, b in itertools.pairwise(delays))
    assert max(delays) == BACKOFF_CAP == delays[-1]


def test_request_limit_adds_jitter_within_bounds():
    rng = random.Random(7)
    limits = {request_limit(100, 10, rng) for _ in range(500)}
    assert limits <= set(range(100, 111))
    assert len(limits) > 5  # workers started together get different limits
    assert request_limit(100, 0, rng) == 100
    assert request_limit(0, 50, rng) == 0  # no limit stays no limit


def test_describe_exit():
    assert describe_exit(0) == "exit status 0"
    assert describe_exit(3) == "exit status 3"
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(-signal.SIGSEGV) == "killed by SIGSEGV"


def test_retire_message_is_one_line():
    assert retire_message("served 5 requests") == b"retire served 5 requests\n"


_BALLAST = """
import mmap
from multicorn.worker import resident_mib
before = resident_mib()
ballast = mmap.mmap(-1, 64 * 1024 * 1024)  # fresh pages, whatever the allocator holds
for offset in range(0, len(ballast), mmap.PAGESIZE):
    ballast[offset] = 1  # touch every page
print(before, resident_mib())
"""


def test_resident_memory_is_measured():
    # In a fresh interpreter: in this one, after thousands of tests, the allocator may hand
    # out pages that are resident already, and RSS need not grow.
    result = subprocess.run(
        [sys.executable, "-c", _BALLAST], capture_output=True, text=True, timeout=60, check=True
    )
    before, after = map(float, result.stdout.split())
    assert before > 1
    assert after > before + 32


def test_file_filter(tmp_path):
    files = FileFilter([str(tmp_path)], ["*.py"], [".*", "__pycache__"])
    assert files(str(tmp_path / "app.py"))
    assert files(str(tmp_path / "pkg" / "mod.py"))
    assert not files(str(tmp_path / "notes.txt"))
    assert not files(str(tmp_path / ".venv" / "lib" / "site.py"))
    assert not files(str(tmp_path / "pkg" / "__pycache__" / "mod.py"))
    assert not files(str(tmp_path / ".#app.py"))  # an editor's lock file
    assert not files("/elsewhere/app.py")  # outside every watched directory


def test_polling_watcher_sees_edits_new_and_removed_files(tmp_path):
    (tmp_path / "a.py").write_text("a")
    (tmp_path / "b.txt").write_text("b")
    (tmp_path / ".hidden").mkdir()
    watcher = PollingWatcher(FileFilter([str(tmp_path)], ["*.py"], [".*"]), interval=0)
    assert watcher.changes() == []
    stamp = time.time() + 5
    os.utime(tmp_path / "a.py", (stamp, stamp))
    (tmp_path / "b.txt").write_text("not watched")
    (tmp_path / ".hidden" / "c.py").write_text("not watched either")
    assert watcher.changes() == [str(tmp_path / "a.py")]
    (tmp_path / "new.py").write_text("n")
    assert watcher.changes() == [str(tmp_path / "new.py")]
    (tmp_path / "a.py").unlink()
    assert watcher.changes() == [str(tmp_path / "a.py")]
    assert watcher.changes() == []


def test_workers_settings_defaults():
    config = Config()
    assert config.workers == 1
    assert not config.reload and not config.reuse_port
    assert config.worker_healthcheck_timeout == 30.0
    assert (config.max_requests, config.max_requests_jitter, config.max_worker_memory) == (0, 0, 0)
    assert config.reload_dirs == [] and config.reload_includes == ["*.py"]
    assert not needs_supervisor(config)


@pytest.mark.parametrize(
    ("settings", "supervised"),
    [
        ({"workers": 2}, True),
        ({"reload": True}, True),
        ({"max_requests": 100}, True),
        ({"max_worker_memory": 512}, True),
        ({"workers": 1, "reuse_port": True}, False),
    ],
)
def test_what_starts_a_supervisor(settings, supervised):
    assert needs_supervisor(Config(**settings)) is supervised


def test_web_concurrency_is_the_default_worker_count():
    def workers(environ, cli=None):
        return load_config(toml_path=None, environ=environ, cli=cli or {}).workers

    assert workers({"WEB_CONCURRENCY": "4"}) == 4
    assert workers({"WEB_CONCURRENCY": "4", "MULTICORN_WORKERS": "2"}) == 2
    assert workers({"WEB_CONCURRENCY": "4"}, {"workers": 3}) == 3
    assert workers({"WEB_CONCURRENCY": ""}) == 1
    with pytest.raises(ConfigError, match="WEB_CONCURRENCY"):
        workers({"WEB_CONCURRENCY": "many"})


def test_reload_cannot_be_combined_with_several_workers():
    with pytest.raises(ConfigError, match=r"--reload cannot be combined with --workers 2 > 1"):
        Config(reload=True, workers=2)
    # A platform's WEB_CONCURRENCY is no request for several workers: --reload runs one.
    config = load_config(toml_path=None, environ={"WEB_CONCURRENCY": "4"}, cli={"reload": True})
    assert config.reload and config.workers == 1
    with pytest.raises(ConfigError):
        load_config(toml_path=None, environ={}, cli={"reload": True, "workers": 2})


@pytest.mark.parametrize(
    "kwargs",
    [
        {"workers": 0},
        {"worker_healthcheck_timeout": 0},
        {"max_requests": -1},
        {"max_requests_jitter": -1},
        {"max_worker_memory": -1},
        {"quic_secret": "abc"},
        {"quic_secret": "zz" * 32},
        {"reload_includes": [""]},
    ],
)
def test_process_settings_are_validated(kwargs):
    with pytest.raises(ConfigError):
        Config(**kwargs)


def test_reload_lists_are_text_not_addresses(tmp_path):
    config = load_config(
        toml_path=None,
        environ={"MULTICORN_RELOAD_EXCLUDES": ".*, build", "MULTICORN_QUIC_SECRET": "ab" * 32},
        cli={"reload_dirs": [str(tmp_path)], "reload_includes": ["*.py", "*.html"]},
    )
    assert config.reload_excludes == [".*", "build"]
    assert config.reload_dirs == [str(tmp_path)]
    assert config.reload_includes == ["*.py", "*.html"]
    assert config.quic_secret == "ab" * 32
