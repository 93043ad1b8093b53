"""Exceptions the ASGI layer raises into applications."""

from __future__ import annotations


class ClientDisconnected(OSError):
    """`send()` was called after the client went away (ASGI www spec 2.4)."""


class UnexpectedMessage(RuntimeError):
    """The application sent an ASGI message that is not valid at this point."""


class LifespanFailure(RuntimeError):
    """The application's lifespan startup failed, or did not finish in time."""


class StartupInterrupted(Exception):
    """SIGINT or SIGTERM arrived during the application's lifespan startup, which was abandoned:
    a request to stop, not a failure."""
