"""How every backend runs a callback it was handed (`call_soon`, `call_at`): what the callback
raises is logged here rather than by the event loop's own handler, so a failing callback reads
the same on every runtime and never tears down a nursery or reaches an embedding application's
exception handler."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import logging
    from collections.abc import Callable


def run_callback(fn: Callable[[], object], logger: logging.Logger) -> None:
    try:
        fn()
    except Exception:
        logger.exception("exception in callback %r", fn)
