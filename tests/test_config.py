"""Config: defaults, validation, and precedence across TOML, environment, CLI and overrides."""

from __future__ import annotations

import dataclasses

import pytest

from multicorn.config import (
    LIFESPAN_MODES,
    LOG_LEVELS,
    WORKER_CLASSES,
    Config,
    ConfigError,
    load_config,
    parse_setting,
    setting_names,
)


def load(tmp_path, toml: str | None = None, environ=None, cli=None, overrides=None) -> Config:
    path = None
    if toml is not None:
        path = tmp_path / "multicorn.toml"
        path.write_text(toml)
    return load_config(
        toml_path=None if path is None else str(path),
        environ=environ or {},
        cli=cli or {},
        overrides=overrides,
    )


def test_defaults_are_valid_and_unchanged():
    config = Config()
    assert config.bind == ["127.0.0.1:8000"]
    assert config.worker_class == "asyncio"
    assert config.backlog == 2048
    assert config.keep_alive == 5.0
    assert config.h11_max_incomplete_size == 16 * 1024
    assert config.access_logfile is None
    assert config.error_logfile == "-"
    assert config.log_level == "info"
    assert load_config(toml_path=None, environ={}, cli={}) == config


def test_every_field_has_a_rule():
    names = [f.name for f in dataclasses.fields(Config)]
    assert list(setting_names()) == names
    defaults = Config()
    for name in names:
        # Each default must round-trip through the validator for its own field.
        parse_setting(name, getattr(defaults, name))


def test_defaults_list_is_not_shared():
    a, b = Config(), Config()
    a.bind.append("0.0.0.0:1")
    assert b.bind == ["127.0.0.1:8000"]


def test_precedence_each_layer_beats_the_one_below(tmp_path):
    toml = 'keep_alive = 1\nbacklog = 10\nroot_path = "/toml"\nlog_level = "debug"\n'
    environ = {
        "MULTICORN_BACKLOG": "20",
        "MULTICORN_ROOT_PATH": "/env",
        "MULTICORN_LOG_LEVEL": "warning",
        "PATH": "/usr/bin",  # unrelated variables are ignored
    }
    cli = {"root_path": "/cli", "log_level": "error", "keep_alive": None}
    overrides = {"log_level": "critical"}
    config = load(tmp_path, toml, environ, cli, overrides)
    assert config.keep_alive == 1.0  # only TOML set it; cli None means "not given"
    assert isinstance(config.keep_alive, float)
    assert config.backlog == 20  # env beats TOML
    assert config.root_path == "/cli"  # CLI beats env
    assert config.log_level == "critical"  # overrides beat CLI
    assert config.graceful_timeout == Config().graceful_timeout  # untouched default


def test_toml_list_and_string_bind(tmp_path):
    assert load(tmp_path, 'bind = ["127.0.0.1:1", "unix:/tmp/s"]').bind == [
        "127.0.0.1:1",
        "unix:/tmp/s",
    ]
    assert load(tmp_path, 'bind = "[::1]:9000"').bind == ["[::1]:9000"]


def test_env_bind_is_comma_separated(tmp_path):
    config = load(tmp_path, environ={"MULTICORN_BIND": "127.0.0.1:1, [::1]:2,unix:/tmp/x"})
    assert config.bind == ["127.0.0.1:1", "[::1]:2", "unix:/tmp/x"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", True),
        ("true", True),
        ("YES", True),
        ("on", True),
        ("0", False),
        ("false", False),
        ("No", False),
        (" off ", False),
    ],
)
def test_env_bool_words(tmp_path, text, expected):
    config = load(tmp_path, environ={"MULTICORN_INCLUDE_DATE_HEADER": text})
    assert config.include_date_header is expected


def test_env_numbers_and_choices(tmp_path):
    config = load(
        tmp_path,
        environ={
            "MULTICORN_KEEP_ALIVE": "2.5",
            "MULTICORN_KEEP_ALIVE_MAX_REQUESTS": "7",
            "MULTICORN_WORKER_CLASS": "Trio",
            "MULTICORN_ACCESS_LOGFILE": "-",
            "MULTICORN_ERROR_LOGFILE": "",
        },
    )
    assert config.keep_alive == 2.5
    assert config.keep_alive_max_requests == 7
    assert config.worker_class == "trio"
    assert config.access_logfile == "-"
    assert config.error_logfile is None  # empty variable means "none"


def test_bad_env_value_message_names_key_and_variable(tmp_path):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, environ={"MULTICORN_KEEP_ALIVE": "abc"})
    assert str(info.value) == (
        "keep_alive: expected a number of seconds >= 0, got 'abc' (from MULTICORN_KEEP_ALIVE)"
    )
    assert info.value.key == "keep_alive"
    assert info.value.source == "MULTICORN_KEEP_ALIVE"


@pytest.mark.parametrize(
    ("var", "text"),
    [
        ("MULTICORN_INCLUDE_SERVER_HEADER", "maybe"),
        ("MULTICORN_BACKLOG", "0"),
        ("MULTICORN_BACKLOG", "1.5"),
        ("MULTICORN_KEEP_ALIVE", "-1"),
        ("MULTICORN_KEEP_ALIVE", "nan"),
        ("MULTICORN_KEEP_ALIVE", "inf"),
        ("MULTICORN_H11_MAX_INCOMPLETE_SIZE", "0"),
        ("MULTICORN_WORKER_CLASS", "gevent"),
        ("MULTICORN_LIFESPAN", "maybe"),
        ("MULTICORN_LOG_LEVEL", "verbose"),
        ("MULTICORN_BIND", ""),
        ("MULTICORN_BIND", "127.0.0.1:99999"),
        ("MULTICORN_ROOT_PATH", "api"),
        ("MULTICORN_ROOT_PATH", "/api/"),
        ("MULTICORN_ACCESS_LOGFORMAT", "%(h)d"),
        ("MULTICORN_ACCESS_LOGFORMAT", "100%"),
        ("MULTICORN_ACCESS_LOGFORMAT", "%s"),
    ],
)
def test_bad_env_values(tmp_path, var, text):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, environ={var: text})
    name = var.removeprefix("MULTICORN_").lower()
    assert info.value.key == name
    assert str(info.value).startswith(f"{name}: ")
    assert str(info.value).endswith(f"(from {var})")


def test_choice_error_lists_options(tmp_path):
    for var, options in [
        ("MULTICORN_WORKER_CLASS", WORKER_CLASSES),
        ("MULTICORN_LIFESPAN", LIFESPAN_MODES),
        ("MULTICORN_LOG_LEVEL", LOG_LEVELS),
    ]:
        with pytest.raises(ConfigError) as info:
            load(tmp_path, environ={var: "nope"})
        for option in options:
            assert option in str(info.value)


def test_unknown_env_var(tmp_path):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, environ={"MULTICORN_KEEPALIVE": "1"})
    assert info.value.key == "MULTICORN_KEEPALIVE"
    assert "MULTICORN_KEEP_ALIVE" in str(info.value)  # suggests the right spelling
    assert "environment" in str(info.value)


def test_unknown_toml_key(tmp_path):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, "keep-alive = 3\n")
    assert info.value.key == "keep-alive"
    assert "keep_alive" in str(info.value)
    assert str(tmp_path / "multicorn.toml") in str(info.value)


def test_unknown_cli_and_override_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"^nope: .*\(from the command line\)"):
        load(tmp_path, cli={"nope": 1})
    with pytest.raises(ConfigError, match=r"^nope: .*\(from overrides\)"):
        load(tmp_path, overrides={"nope": 1})


@pytest.mark.parametrize(
    "toml",
    [
        'keep_alive = "soon"',
        "backlog = 1.5",
        "backlog = true",
        "keep_alive = true",
        'factory = "yes"',
        "bind = []",
        "bind = [1]",
        "bind = 8000",
        "worker_class = 3",
        "access_logfile = ''",
        "[root_path]\nx = 1",
    ],
)
def test_bad_toml_values(tmp_path, toml):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, toml)
    assert str(tmp_path / "multicorn.toml") in str(info.value)


def test_toml_file_problems(tmp_path):
    with pytest.raises(ConfigError, match="could not read"):
        load_config(toml_path=str(tmp_path / "missing.toml"), environ={}, cli={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(tmp_path, "keep_alive = = 3")


def test_cli_values_may_be_text_or_typed(tmp_path):
    config = load(tmp_path, cli={"backlog": "12", "keep_alive": 3, "factory": True})
    assert (config.backlog, config.keep_alive, config.factory) == (12, 3.0, True)
    with pytest.raises(ConfigError, match=r"^backlog: .*got -5 \(from the command line\)"):
        load(tmp_path, cli={"backlog": -5})


def test_overrides_may_set_none(tmp_path):
    config = load(tmp_path, environ={"MULTICORN_ACCESS_LOGFILE": "-"})
    assert config.access_logfile == "-"
    config = load(
        tmp_path, environ={"MULTICORN_ACCESS_LOGFILE": "-"}, overrides={"access_logfile": None}
    )
    assert config.access_logfile is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"keep_alive": -1},
        {"keep_alive": "5"},
        {"backlog": 0},
        {"backlog": True},
        {"backlog": 2.0},
        {"bind": "127.0.0.1:8000"},
        {"bind": []},
        {"bind": ["nope:port"]},
        {"worker_class": "threads"},
        {"lifespan": "ON"},
        {"include_date_header": 1},
        {"error_logfile": ""},
        {"access_logformat": "%(h)"},
    ],
)
def test_python_api_is_validated(kwargs):
    (name,) = kwargs
    with pytest.raises(ConfigError) as info:
        Config(**kwargs)
    assert info.value.key == name
    assert info.value.source is None


def test_validate_after_assignment():
    config = Config()
    config.keep_alive = 0  # zero is allowed for timeouts
    config.validate()
    config.graceful_timeout = -0.5
    with pytest.raises(ConfigError, match="graceful_timeout"):
        config.validate()


def test_config_error_is_value_error():
    assert issubclass(ConfigError, ValueError)


def test_quic_bind_needs_a_certificate_and_an_ip_address():
    assert Config().quic_bind == []
    with pytest.raises(ConfigError, match="quic_bind: needs certfile"):
        Config(quic_bind=["127.0.0.1:8443"])
    with pytest.raises(ConfigError, match="QUIC listens on UDP"):
        Config(quic_bind=["unix:/tmp/q.sock"], certfile="cert.pem")
    config = Config(quic_bind=["127.0.0.1:8443", "[::1]:8443"], certfile="cert.pem")
    assert config.alt_svc_headers is True


@pytest.mark.parametrize(
    "kwargs",
    [
        {"quic_idle_timeout": 0},
        {"quic_max_concurrent_streams": 0},
        {"quic_max_concurrent_streams": 2**61},
        {"quic_max_stream_data": 1000},
        {"quic_max_data": 2**62},
        {"quic_max_connections": 0},
        {"quic_retry": "yes"},
    ],
)
def test_quic_values_are_validated(kwargs):
    (name,) = kwargs
    with pytest.raises(ConfigError) as info:
        Config(certfile="cert.pem", **kwargs)
    assert info.value.key == name


# ---- load limits: request body size and concurrency -----------------------------------------


def test_load_limits_are_off_by_default():
    config = Config()
    assert config.max_request_body_size == 0
    assert config.limit_concurrency == 0


def test_min_request_body_rate_is_on_by_default_with_a_grace():
    config = Config()
    assert (config.min_request_body_rate, config.min_request_body_rate_grace) == (100, 10.0)


def test_min_request_body_rate_from_the_environment(tmp_path):
    config = load(
        tmp_path,
        "min_request_body_rate = 0\n",
        environ={"MULTICORN_MIN_REQUEST_BODY_RATE_GRACE": "2.5"},
    )
    assert (config.min_request_body_rate, config.min_request_body_rate_grace) == (0, 2.5)


def test_load_limits_from_the_environment_and_toml(tmp_path):
    toml = "max_request_body_size = 1048576\n"
    config = load(tmp_path, toml, environ={"MULTICORN_LIMIT_CONCURRENCY": "64"})
    assert (config.max_request_body_size, config.limit_concurrency) == (1048576, 64)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_request_body_size": -1},
        {"max_request_body_size": 1.5},
        {"max_request_body_size": True},
        {"limit_concurrency": -1},
        {"limit_concurrency": "10"},
        {"min_request_body_rate": -1},
        {"min_request_body_rate": 0.5},
        {"min_request_body_rate_grace": -1},
    ],
)
def test_load_limits_are_validated(kwargs):
    (name,) = kwargs
    with pytest.raises(ConfigError) as info:
        Config(**kwargs)
    assert info.value.key == name


# ---- what APP is: interface and WSGI threads -------------------------------------------------


def test_interface_and_wsgi_workers_defaults_and_sources(tmp_path):
    assert (Config().interface, Config().wsgi_max_workers) == ("auto", 10)
    config = load(tmp_path, 'interface = "wsgi"\n', environ={"MULTICORN_WSGI_MAX_WORKERS": "32"})
    assert (config.interface, config.wsgi_max_workers) == ("wsgi", 32)


@pytest.mark.parametrize(
    "kwargs",
    [{"interface": "asgi"}, {"interface": "WSGI"}, {"wsgi_max_workers": 0}],
)
def test_interface_and_wsgi_workers_are_validated(kwargs):
    (name,) = kwargs
    with pytest.raises(ConfigError) as info:
        Config(**kwargs)
    assert info.value.key == name
