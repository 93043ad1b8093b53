"""Logging setup (handlers, levels, idempotency) and access log atoms."""

from __future__ import annotations

import logging
import os
import re

import pytest

from multicorn.app.logs import AccessAtoms, AccessRecord, Loggers, format_access, log_access
from multicorn.config import Config, ConfigError
from multicorn.logging import ACCESS_LOGGER, ERROR_LOGGER, TRACE, configure_logging

# 2024-03-05 14:07:09 UTC
START = 1709647629.25


def record(**changes) -> AccessRecord:
    fields = {
        "client": ("192.0.2.7", 51234),
        "method": "GET",
        "path": "/items/1",
        "query_string": b"q=1&b=2",
        "http_version": "1.1",
        "status": 200,
        "response_bytes": 1234,
        "request_headers": [
            (b"host", b"example.com"),
            (b"referer", b"https://ref.example/"),
            (b"user-agent", b"curl/8.0"),
            (b"x-multi", b"a"),
            (b"x-multi", b"b"),
        ],
        "response_headers": [(b"content-type", b"text/plain"), (b"x-trace", b"abc")],
        "start_time": START,
        "duration": 2.0012345,
    }
    fields.update(changes)
    return AccessRecord(**fields)


@pytest.fixture(autouse=True)
def _reset_loggers():
    yield
    for name in (ERROR_LOGGER, ACCESS_LOGGER):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
        logger.setLevel(logging.NOTSET)
        logger.propagate = True


# --- atoms -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("atom", "expected"),
    [
        ("h", "192.0.2.7"),
        ("l", "-"),
        ("u", "-"),
        ("t", "[05/Mar/2024:14:07:09 +0000]"),
        ("r", "GET /items/1?q=1&b=2 HTTP/1.1"),
        ("m", "GET"),
        ("U", "/items/1"),
        ("q", "q=1&b=2"),
        ("H", "HTTP/1.1"),
        ("s", "200"),
        ("S", "200"),
        ("B", "1234"),
        ("b", "1234"),
        ("f", "https://ref.example/"),
        ("a", "curl/8.0"),
        ("T", "2"),
        ("D", "2001234"),
        ("L", "2.001234"),
        ("p", f"<{os.getpid()}>"),
        ("{host}i", "example.com"),
        ("{Host}i", "example.com"),
        ("{x-multi}i", "a, b"),
        ("{x-missing}i", "-"),
        ("{content-type}o", "text/plain"),
        ("{X-Trace}o", "abc"),
        ("{x-missing}o", "-"),
        ("{MULTICORN_TEST_ENV_ATOM}e", "from-env"),
        ("{MULTICORN_TEST_ENV_UNSET}e", "-"),
        ("{x}z", "-"),
        ("nonsense", "-"),
    ],
)
def test_each_atom(atom, expected, monkeypatch):
    monkeypatch.setenv("MULTICORN_TEST_ENV_ATOM", "from-env")
    monkeypatch.delenv("MULTICORN_TEST_ENV_UNSET", raising=False)
    assert format_access(f"%({atom})s", record()) == expected
    assert AccessAtoms(record())[atom] == expected


def test_missing_values_render_dash():
    rec = record(
        client=None,
        query_string=b"",
        response_bytes=0,
        request_headers=[],
        response_headers=[],
    )
    assert format_access("%(h)s|%(q)s|%(b)s|%(B)s|%(f)s|%(a)s", rec) == "-|-|-|0|-|-"
    assert format_access("%(r)s", rec) == "GET /items/1 HTTP/1.1"


def test_http_versions():
    assert format_access("%(H)s", record(http_version="2")) == "HTTP/2"
    assert format_access("%(r)s", record(http_version="1.0", query_string=b"")) == (
        "GET /items/1 HTTP/1.0"
    )


def test_short_durations():
    rec = record(duration=0.001234)
    assert format_access("%(T)s %(D)s %(L)s", rec) == "0 1234 0.001234"


def test_control_characters_are_escaped():
    rec = record(path="/a\nb", request_headers=[(b"user-agent", b"evil\r\n\x1b[31m")])
    line = format_access("%(r)s %(a)s", rec)
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert "/a\\x0ab" in line
    assert "evil\\x0d\\x0a\\x1b[31m" in line


def test_default_format_like_gunicorn():
    line = format_access(Config().access_logformat, record())
    assert line == (
        '192.0.2.7 - - [05/Mar/2024:14:07:09 +0000] "GET /items/1?q=1&b=2 HTTP/1.1" 200 1234 '
        '"https://ref.example/" "curl/8.0"'
    )


def test_atoms_mapping_protocol():
    atoms = AccessAtoms(record())
    assert "h" in set(atoms)
    assert len(atoms) == len(list(atoms))
    assert dict(atoms)["s"] == "200"


# --- configure_logging -----------------------------------------------------------------------


def test_error_logger_to_stderr(capsys):
    loggers = configure_logging(Config(log_level="warning"))
    assert loggers.error.name == ERROR_LOGGER
    assert loggers.error.level == logging.WARNING
    assert loggers.error.propagate is False
    assert loggers.access is None
    loggers.error.info("quiet")
    loggers.error.warning("loud")
    err = capsys.readouterr().err
    assert "loud" in err and "quiet" not in err
    assert "[WARNING]" in err


def test_root_logger_untouched():
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    configure_logging(Config(access_logfile="-", log_level="debug"))
    assert (list(root.handlers), root.level) == before


def test_trace_level(capsys):
    loggers = configure_logging(Config(log_level="trace"))
    assert loggers.error.level == TRACE == 5
    loggers.error.log(TRACE, "tiny detail")
    assert "[TRACE] tiny detail" in capsys.readouterr().err


def test_idempotent():
    configure_logging(Config(access_logfile="-"))
    loggers = configure_logging(Config(access_logfile="-"))
    assert len(loggers.error.handlers) == 1
    assert loggers.access is not None
    assert len(loggers.access.handlers) == 1


def test_user_handlers_survive_reconfiguration():
    mine = logging.NullHandler()
    logging.getLogger(ERROR_LOGGER).addHandler(mine)
    configure_logging(Config())
    configure_logging(Config())
    handlers = logging.getLogger(ERROR_LOGGER).handlers
    assert mine in handlers
    assert len(handlers) == 2


def test_log_files(tmp_path):
    error_path = tmp_path / "error.log"
    access_path = tmp_path / "access.log"
    loggers = configure_logging(
        Config(
            error_logfile=str(error_path),
            access_logfile=str(access_path),
            access_logformat="%(m)s %(U)s %(s)s",
        )
    )
    loggers.error.error("it broke")
    log_access(loggers, record())
    for handler in [*loggers.error.handlers, *(loggers.access.handlers if loggers.access else [])]:
        handler.flush()
    assert "it broke" in error_path.read_text()
    assert access_path.read_text() == "GET /items/1 200\n"


def test_access_log_to_stdout(capsys):
    loggers = configure_logging(Config(access_logfile="-"))
    log_access(loggers, record())
    out = capsys.readouterr().out
    assert re.match(r'^192\.0\.2\.7 - - \[05/Mar/2024:14:07:09 \+0000\] "GET ', out)


def test_no_error_log_means_silence(capsys):
    loggers = configure_logging(Config(error_logfile=None))
    loggers.error.critical("should go nowhere")
    assert capsys.readouterr().err == ""


def test_unopenable_log_file(tmp_path):
    with pytest.raises(ConfigError, match=r"^error_logfile: cannot open log file"):
        configure_logging(Config(error_logfile=str(tmp_path / "missing" / "e.log")))
    with pytest.raises(ConfigError, match=r"^access_logfile: cannot open log file"):
        configure_logging(Config(access_logfile=str(tmp_path / "missing" / "a.log")))


class _Exploding:
    """A record whose every field access fails, to prove nothing is formatted."""

    def __getattr__(self, name):
        raise AssertionError(f"formatted {name} although access logging is off")


def test_log_access_is_free_when_disabled():
    log_access(
        Loggers(error=logging.getLogger(ERROR_LOGGER), access=None, access_format="%(h)s"),
        _Exploding(),
    )  # type: ignore[arg-type]
    access = logging.getLogger(ACCESS_LOGGER)
    access.setLevel(logging.WARNING)
    log_access(
        Loggers(error=logging.getLogger(ERROR_LOGGER), access=access, access_format="%(h)s"),
        _Exploding(),
    )  # type: ignore[arg-type]


# ---- JSON lines, --log-config -----------------------------------------------------------


def test_access_fields_as_json(monkeypatch):
    import json

    from multicorn.app.logs import access_fields

    monkeypatch.setattr(os, "getpid", lambda: 42)
    fields = access_fields(record())
    assert fields == {
        "time": "2024-03-05T14:07:09.250Z",
        "client": "192.0.2.7",
        "client_port": 51234,
        "method": "GET",
        "path": "/items/1",
        "query": "q=1&b=2",
        "protocol": "HTTP/1.1",
        "status": 200,
        "bytes": 1234,
        "duration": 2.001234,
        "user_agent": "curl/8.0",
        "referer": "https://ref.example/",
        "pid": 42,
    }
    bare = access_fields(record(client=None, request_headers=[]))
    assert bare["client"] is bare["user_agent"] is bare["referer"] is None
    json.dumps(bare)


def test_log_access_json_line(capsys):
    import json

    loggers = configure_logging(Config(access_logfile="-", log_format="json"))
    assert loggers.access_json
    log_access(loggers, record())
    line = capsys.readouterr().out.strip()
    assert json.loads(line)["path"] == "/items/1"


def test_error_log_json_lines(capsys):
    import json

    loggers = configure_logging(Config(log_format="json"))
    loggers.error.info("hello %s", "world")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        loggers.error.exception("failed")
    first, second = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert first["message"] == "hello world" and first["level"] == "INFO"
    assert first["logger"] == ERROR_LOGGER and first["pid"] == os.getpid()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    assert "RuntimeError: boom" in second["exception"]


def test_response_header_atom_prints_the_header_as_sent():
    assert format_access("%({x-trace}o)s %({Content-Type}o)s %({nope}o)s", record()) == (
        "abc text/plain -"
    )


def _log_config_json(tmp_path, target) -> str:
    import json

    path = tmp_path / "logging.json"
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "formatters": {"plain": {"format": "custom %(levelname)s %(message)s"}},
                "handlers": {
                    "file": {
                        "class": "logging.FileHandler",
                        "filename": str(target),
                        "formatter": "plain",
                    }
                },
                "loggers": {
                    ERROR_LOGGER: {"handlers": ["file"], "level": "WARNING"},
                    ACCESS_LOGGER: {"handlers": ["file"], "level": "INFO"},
                },
            }
        )
    )
    return str(path)


def test_log_config_json_decides_the_handlers(tmp_path, capsys):
    target = tmp_path / "out.log"
    loggers = configure_logging(Config(log_config=_log_config_json(tmp_path, target)))
    try:
        loggers.error.info("not written: below WARNING")
        loggers.error.warning("written")
        # The file configures the access logger, so access lines flow without access_logfile.
        log_access(loggers, record())
        for handler in loggers.error.handlers:
            handler.flush()
        text = target.read_text()
        assert "custom WARNING written" in text
        assert "not written" not in text
        assert 'custom INFO 192.0.2.7 - - [05/Mar/2024:14:07:09 +0000] "GET' in text
        assert capsys.readouterr().err == ""
    finally:
        for name in (ERROR_LOGGER, ACCESS_LOGGER):
            for handler in list(logging.getLogger(name).handlers):
                logging.getLogger(name).removeHandler(handler)
                handler.close()


def test_log_config_ini(tmp_path):
    from multicorn.logging import apply_log_config

    target = tmp_path / "ini.log"
    ini = tmp_path / "logging.ini"
    ini.write_text(
        "[loggers]\nkeys=root,app\n[handlers]\nkeys=file\n[formatters]\nkeys=\n"
        "[logger_root]\nhandlers=\n[logger_app]\nqualname=multicorn-test-ini\nhandlers=file\n"
        "level=INFO\n"
        f"[handler_file]\nclass=FileHandler\nargs=({str(target)!r},)\n"
    )
    apply_log_config(str(ini))
    logger = logging.getLogger("multicorn-test-ini")
    logger.info("from ini")
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)
    assert "from ini" in target.read_text()


def test_log_config_yaml_without_pyyaml_is_a_clear_error(tmp_path, monkeypatch):
    import sys

    from multicorn.logging import apply_log_config

    path = tmp_path / "logging.yaml"
    path.write_text("version: 1\n")
    monkeypatch.setitem(sys.modules, "yaml", None)
    with pytest.raises(ConfigError, match="needs PyYAML: pip install pyyaml"):
        apply_log_config(str(path))


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("logging.txt", "", "expected a .json, .yaml/.yml"),
        ("logging.json", "{not json", "could not be applied"),
        ("logging.json", "[1]", "must hold a mapping"),
        ("logging.json", '{"version": 99}', "could not be applied"),
        ("missing.ini", None, "could not be applied"),
    ],
)
def test_log_config_errors_name_the_file(tmp_path, name, content, message):
    from multicorn.logging import apply_log_config

    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message) as info:
        apply_log_config(str(path))
    assert info.value.key == "log_config"
    if content is not None and name != "logging.txt":
        assert str(path) in str(info.value)


def test_log_config_yaml(tmp_path):
    pytest.importorskip("yaml")
    from multicorn.logging import apply_log_config

    target = tmp_path / "yaml.log"
    path = tmp_path / "logging.yml"
    path.write_text(
        "version: 1\n"
        "handlers:\n"
        f"  file: {{class: logging.FileHandler, filename: {str(target)!r}}}\n"
        "loggers:\n"
        "  multicorn-test-yaml: {handlers: [file], level: INFO}\n"
    )
    apply_log_config(str(path))
    logger = logging.getLogger("multicorn-test-yaml")
    logger.info("from yaml")
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)
    assert "from yaml" in target.read_text()
