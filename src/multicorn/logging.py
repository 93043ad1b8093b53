"""Setting up the server's loggers from its configuration.

Owns the "multicorn.error" and "multicorn.access" loggers (never the root logger) and the TRACE
level. What gets logged through them, and the access log line format, belong to the ASGI layer
(multicorn.app.logs), which must not depend on the configuration.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Final, TextIO

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

    error = logging.getLogger(ERROR_LOGGER)
    if config.error_logfile is None:
        # A logger with no handlers falls back to logging.lastResort; say "nowhere" explicitly.
        error_handler: logging.Handler = logging.NullHandler()
    else:
        error_handler = _open_handler(config.error_logfile, sys.stderr, "error_logfile")
    error_handler.setFormatter(
        logging.Formatter(
            "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s",
            datefmt="%Y-%m-%d %H:%M:%S %z",
        )
    )
    _install(error, error_handler, _LEVELS[config.log_level])

    access_logger = logging.getLogger(ACCESS_LOGGER)
    if config.access_logfile is None:
        _install(access_logger, logging.NullHandler(), logging.INFO)
        access: logging.Logger | None = None
    else:
        access_handler = _open_handler(config.access_logfile, sys.stdout, "access_logfile")
        access_handler.setFormatter(logging.Formatter("%(message)s"))
        _install(access_logger, access_handler, logging.INFO)
        access = access_logger
    return Loggers(error=error, access=access, access_format=config.access_logformat)
