"""Setting up the server's loggers from its configuration.

Owns the "multicorn.error" and "multicorn.access" loggers (never the root logger, unless a
`log_config` file the user gives configures it), the TRACE level, and the JSON line format.
What gets logged through them, and the access log line format, belong to the ASGI layer
(multicorn.app.logs), which must not depend on the configuration.
"""

from __future__ import annotations

import importlib
import json
import logging
import logging.config
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

from multicorn.app.logs import Loggers
from multicorn.config import ConfigError

if TYPE_CHECKING:
    from multicorn.config import Config

TRACE: Final = 5
ERROR_LOGGER: Final = "multicorn.error"
ACCESS_LOGGER: Final = "multicorn.access"

# Handlers we install carry this name so a second configure_logging() replaces, not duplicates.
_HANDLER_NAME: Final = "multicorn-managed"

_LEVELS: Final = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": TRACE,
}


def _open_handler(target: str, console: TextIO, key: str) -> logging.Handler:
    if target == "-":
        return logging.StreamHandler(console)
    try:
        return logging.FileHandler(target, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            key, f"cannot open log file {target!r}: {exc.strerror or exc}; fix the path"
        ) from exc


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, pid, message, and
    exception when there is a traceback. Usable from a --log-config file too."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        entry: dict[str, object] = {
            "time": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def _log_config_dict(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        loaded = json.loads(text)
    else:
        try:
            # By name: PyYAML is optional, and its type stubs may or may not be installed.
            yaml = importlib.import_module("yaml")
        except ImportError:
            raise ConfigError(
                "log_config",
                f"{str(path)!r} is YAML, which needs PyYAML: pip install pyyaml, or give the "
                "configuration as JSON",
            ) from None
        loaded = yaml.safe_load(text)
    if not isinstance(loaded, dict):
        raise ValueError("the file must hold a mapping (a dictConfig dictionary)")
    return loaded


def apply_log_config(path_text: str) -> None:
    """Apply a logging configuration file: logging.config.dictConfig for .json and .yaml/.yml,
    logging.config.fileConfig for .ini/.conf/.cfg. Loggers that exist already stay enabled
    unless the file says otherwise. Raises ConfigError naming the file and the problem."""
    path = Path(path_text)
    suffix = path.suffix.lower()
    try:
        if suffix in (".json", ".yaml", ".yml"):
            settings = _log_config_dict(path)
            settings.setdefault("disable_existing_loggers", False)
            logging.config.dictConfig(settings)
        elif suffix in (".ini", ".conf", ".cfg"):
            if not path.is_file():
                raise FileNotFoundError(f"no such file: {path_text!r}")
            logging.config.fileConfig(path_text, disable_existing_loggers=False)
        else:
            raise ConfigError(
                "log_config",
                f"{path_text!r}: expected a .json, .yaml/.yml (dictConfig) or .ini/.conf "
                "(fileConfig) file",
            )
    except ConfigError:
        raise
    except Exception as exc:  # dictConfig and fileConfig raise whatever the content provokes
        raise ConfigError(
            "log_config", f"{path_text!r} could not be applied ({exc}); fix the file"
        ) from exc


def _configured_elsewhere(logger: logging.Logger) -> bool:
    """Whether `logger` has handlers the server did not install: after a --log-config file
    was applied, the file's (then the file decides where its lines go)."""
    return any(handler.get_name() != _HANDLER_NAME for handler in logger.handlers)


def _formatter(config: Config, text: logging.Formatter) -> logging.Formatter:
    return JsonFormatter() if config.log_format == "json" else text


def _install(logger: logging.Logger, handler: logging.Handler, level: int) -> None:
    for old in [h for h in logger.handlers if h.get_name() == _HANDLER_NAME]:
        logger.removeHandler(old)
        old.close()
    handler.set_name(_HANDLER_NAME)
    logger.addHandler(handler)
    logger.setLevel(level)
    # The app's own logging setup (often on the root logger) must not re-print server lines.
    logger.propagate = False


def configure_logging(config: Config) -> Loggers:
    """Set up the error and access loggers from `config`; safe to call again to reconfigure."""
    if logging.getLevelName(TRACE) != "TRACE":
        logging.addLevelName(TRACE, "TRACE")

    if config.log_config is not None:
        apply_log_config(config.log_config)
    error = logging.getLogger(ERROR_LOGGER)
    access_logger = logging.getLogger(ACCESS_LOGGER)
    error.disabled = access_logger.disabled = False
    json_lines = config.log_format == "json"
    by_file = config.log_config is not None
    if not (by_file and _configured_elsewhere(error)):
        _install_error(config, error)
    if by_file and _configured_elsewhere(access_logger):
        access: logging.Logger | None = access_logger
    elif config.access_logfile is None:
        _install(access_logger, logging.NullHandler(), logging.INFO)
        access = None
    else:
        access_handler = _open_handler(config.access_logfile, sys.stdout, "access_logfile")
        access_handler.setFormatter(logging.Formatter("%(message)s"))
        _install(access_logger, access_handler, logging.INFO)
        access = access_logger
    return Loggers(
        error=error,
        access=access,
        access_format=config.access_logformat,
        access_json=json_lines,
    )


def _install_error(config: Config, error: logging.Logger) -> None:
    if config.error_logfile is None:
        # A logger with no handlers falls back to logging.lastResort; say "nowhere" explicitly.
        error_handler: logging.Handler = logging.NullHandler()
    else:
        error_handler = _open_handler(config.error_logfile, sys.stderr, "error_logfile")
    error_handler.setFormatter(
        _formatter(
            config,
            logging.Formatter(
                "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s",
                datefmt="%Y-%m-%d %H:%M:%S %z",
            ),
        )
    )
    _install(error, error_handler, _LEVELS[config.log_level])
