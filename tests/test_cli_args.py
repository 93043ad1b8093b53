"""Command-line parsing: every flag, its Config field, defaults in help, and usage errors."""

from __future__ import annotations

import dataclasses

import pytest

from multicorn._version import __version__
from multicorn.cli import build_parser, parse_args
from multicorn.config import Config, load_config


def test_only_app_given():
    assert parse_args(["pkg.mod:app"]) == ("pkg.mod:app", None, {})


def test_config_path():
    app, config_path, values = parse_args(["-c", "conf.toml", "x:app"])
    assert (app, config_path, values) == ("x:app", "conf.toml", {})
    assert parse_args(["--config", "other.toml", "x:app"])[1] == "other.toml"


def test_bind_is_repeatable():
    _, _, values = parse_args(["x:app", "-b", "127.0.0.1:0", "--bind", "[::1]:9", "-b", "fd://3"])
    assert values == {"bind": ["127.0.0.1:0", "[::1]:9", "fd://3"]}


@pytest.mark.parametrize(
    ("argv", "field", "expected"),
    [
        (["-k", "trio"], "worker_class", "trio"),
        (["--worker-class", "UVLOOP"], "worker_class", "uvloop"),
        (["--backlog", "64"], "backlog", 64),
        (["--keep-alive", "2.5"], "keep_alive", 2.5),
        (["--keep-alive-max-requests", "3"], "keep_alive_max_requests", 3),
        (["--header-timeout", "1"], "header_timeout", 1.0),
        (["--h11-header-timeout", "2.5"], "header_timeout", 2.5),  # the name issue 10 uses
        (["--graceful-timeout", "0"], "graceful_timeout", 0.0),
        (["--root-path", "/api"], "root_path", "/api"),
        (["--lifespan", "off"], "lifespan", "off"),
        (["--startup-timeout", "4"], "startup_timeout", 4.0),
        (["--shutdown-timeout", "5"], "shutdown_timeout", 5.0),
        (["--h11-max-incomplete-size", "100"], "h11_max_incomplete_size", 100),
        (["--date-header"], "include_date_header", True),
        (["--no-date-header"], "include_date_header", False),
        (["--server-header"], "include_server_header", True),
        (["--no-server-header"], "include_server_header", False),
        (["--access-logfile", "-"], "access_logfile", "-"),
        (["--access-logformat", "%(h)s %(s)s"], "access_logformat", "%(h)s %(s)s"),
        (["--error-logfile", "err.log"], "error_logfile", "err.log"),
        (["--log-file", "err.log"], "error_logfile", "err.log"),
        (["--log-level", "trace"], "log_level", "trace"),
        (["--factory"], "factory", True),
        (["--app-dir", "src"], "app_dir", "src"),
        (["--quic-bind", "0.0.0.0:443"], "quic_bind", ["0.0.0.0:443"]),
        (["--no-alt-svc-headers"], "alt_svc_headers", False),
        (["--quic-idle-timeout", "10"], "quic_idle_timeout", 10.0),
        (["--quic-max-concurrent-streams", "50"], "quic_max_concurrent_streams", 50),
        (["--quic-max-stream-data", "65536"], "quic_max_stream_data", 65536),
        (["--quic-max-data", "1048576"], "quic_max_data", 1048576),
        (["--quic-max-connections", "100"], "quic_max_connections", 100),
        (["--quic-retry"], "quic_retry", True),
        (["--quic-0rtt"], "quic_0rtt", True),
        (["--h3-max-field-section-size", "8192"], "h3_max_field_section_size", 8192),
        (["--h3-qpack-max-table-capacity", "0"], "h3_qpack_max_table_capacity", 0),
        (["--h3-qpack-blocked-streams", "0"], "h3_qpack_blocked_streams", 0),
    ],
)
def test_each_flag(argv, field, expected):
    app, _, values = parse_args(["x:app", *argv])
    assert app == "x:app"
    assert values == {field: expected}
    assert type(values[field]) is type(expected)


def test_every_setting_has_a_flag():
    dests = {action.dest for action in build_parser()._actions}
    missing = {f.name for f in dataclasses.fields(Config)} - dests
    assert not missing


def test_last_boolean_flag_wins():
    _, _, values = parse_args(["x:app", "--no-date-header", "--date-header"])
    assert values == {"include_date_header": True}


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["x:app", "--keep-alive", "abc"],
        ["x:app", "--keep-alive", "-1"],
        ["x:app", "--backlog", "0"],
        ["x:app", "-k", "threads"],
        ["x:app", "--lifespan", "sometimes"],
        ["x:app", "--log-level", "loud"],
        ["x:app", "-b", "::1:80"],
        ["x:app", "-b", "host:port"],
        ["x:app", "--root-path", "api"],
        ["x:app", "--no-such-flag"],
        ["x:app", "--quic-bind", "unix:/tmp/q"],
        ["x:app", "--quic-max-concurrent-streams", "0"],
    ],
)
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        parse_args(argv)
    assert info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_bad_value_message_names_flag(capsys):
    with pytest.raises(SystemExit):
        parse_args(["x:app", "--keep-alive", "abc"])
    err = capsys.readouterr().err
    assert "argument --keep-alive: expected a number of seconds >= 0, got 'abc'" in err


def test_help_states_every_default(capsys):
    with pytest.raises(SystemExit) as info:
        parse_args(["--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # undo line wrapping
    defaults = Config()
    assert f"(default: {defaults.backlog})" in out
    assert f"(default: {defaults.keep_alive})" in out
    assert f"(default: {defaults.h11_max_incomplete_size})" in out
    assert f"(default: {defaults.bind[0]})" in out
    assert f"(default: {defaults.access_logformat})" in out  # % survives help formatting
    for action in build_parser()._actions:
        if action.option_strings and action.dest not in ("help", "version"):
            assert "(default:" in (action.help or ""), action.dest


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        parse_args(["--version"])
    assert info.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_result_feeds_load_config():
    _, _, values = parse_args(["x:app", "--backlog", "5", "--no-server-header"])
    config = load_config(toml_path=None, environ={"MULTICORN_BACKLOG": "9"}, cli=values)
    assert config.backlog == 5
    assert config.include_server_header is False


@pytest.mark.parametrize(
    ("argv", "field", "expected"),
    [
        (["--max-request-body-size", "1048576"], "max_request_body_size", 1048576),
        (["--min-request-body-rate", "500"], "min_request_body_rate", 500),
        (["--min-request-body-rate", "0"], "min_request_body_rate", 0),
        (["--min-request-body-rate-grace", "20"], "min_request_body_rate_grace", 20.0),
        (["--limit-concurrency", "0"], "limit_concurrency", 0),
        (["--limit-concurrency", "100"], "limit_concurrency", 100),
    ],
)
def test_load_limit_flags(argv, field, expected):
    _, _, values = parse_args(["x:app", *argv])
    assert values == {field: expected}


@pytest.mark.parametrize(
    ("argv", "field", "expected"),
    [
        (["--interface", "wsgi"], "interface", "wsgi"),
        (["--interface", "asgi2"], "interface", "asgi2"),
        (["--wsgi-max-workers", "4"], "wsgi_max_workers", 4),
    ],
)
def test_interface_flags(argv, field, expected):
    _, _, values = parse_args(["x:app", *argv])
    assert values == {field: expected}
