"""The only exception types that leave protocol/.

RemoteProtocolError: the peer broke the protocol; `error_status_hint` is the HTTP status to answer
with. LocalProtocolError: our side (usually the application) asked for something the protocol
forbids, such as a header value containing CR or LF.
"""

from __future__ import annotations


class ProtocolError(Exception):
    def __init__(self, message: str, *, error_status_hint: int = 400) -> None:
        super().__init__(message)
        self.error_status_hint = error_status_hint


class RemoteProtocolError(ProtocolError):
    """The peer sent something invalid."""


class PeerAbuse(RemoteProtocolError):
    """The peer overspent a budget (floods, rapid reset): the work it started is cancelled."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_status_hint=429)


class LocalProtocolError(ProtocolError):
    """We were asked to send something invalid."""

    def __init__(self, message: str, *, error_status_hint: int = 500) -> None:
        super().__init__(message, error_status_hint=error_status_hint)
