"""The proxy settings: defaults (Uvicorn's), the environment, the command line, and bad lists."""

from __future__ import annotations

import pytest

from multicorn.cli import parse_args
from multicorn.config import Config, ConfigError, load_config


def test_defaults_follow_uvicorn():
    config = Config()
    assert config.proxy_headers is True
    assert config.forwarded_allow_ips == ["127.0.0.1"]
    assert config.proxy_protocol == "off"
    assert config.proxy_protocol_allow_ips == ["127.0.0.1"]


def test_environment_lists_are_comma_separated():
    environ = {
        "MULTICORN_PROXY_HEADERS": "false",
        "MULTICORN_FORWARDED_ALLOW_IPS": "10.0.0.0/8, ::1,unix",
        "MULTICORN_PROXY_PROTOCOL": "V2",
        "MULTICORN_PROXY_PROTOCOL_ALLOW_IPS": "*",
    }
    config = load_config(toml_path=None, environ=environ, cli={})
    assert config.proxy_headers is False
    assert config.forwarded_allow_ips == ["10.0.0.0/8", "::1", "unix"]
    assert config.proxy_protocol == "v2"
    assert config.proxy_protocol_allow_ips == ["*"]


def test_an_empty_list_trusts_nobody():
    config = load_config(toml_path=None, environ={"MULTICORN_FORWARDED_ALLOW_IPS": ""}, cli={})
    assert config.forwarded_allow_ips == []


def test_flags():
    _, _, values = parse_args(
        [
            "x:app",
            "--no-proxy-headers",
            "--forwarded-allow-ips",
            "127.0.0.1,10.0.0.0/8",
            "--proxy-protocol",
            "auto",
            "--proxy-protocol-allow-ips",
            "192.0.2.0/24",
        ]
    )
    assert values == {
        "proxy_headers": False,
        "forwarded_allow_ips": ["127.0.0.1", "10.0.0.0/8"],
        "proxy_protocol": "auto",
        "proxy_protocol_allow_ips": ["192.0.2.0/24"],
    }


@pytest.mark.parametrize("entry", ["localhost", "10.0.0.0/33", "unix:/run/x.sock", "1.2.3"])
@pytest.mark.parametrize("name", ["forwarded_allow_ips", "proxy_protocol_allow_ips"])
def test_bad_allow_list_entries(name, entry):
    with pytest.raises(ConfigError, match="not an IP address"):
        Config(**{name: ["127.0.0.1", entry]})


def test_bad_proxy_protocol_mode():
    with pytest.raises(ConfigError, match="v1"):
        Config(proxy_protocol="v3")
