"""The backends the runtime contract suite runs against: each one is a fixture parameter.

A new backend joins the suite by adding one `_Param` to `BACKENDS`: its name, the event loop
anyio's pytest plugin must run the tests on (with any loop options), and how to make it.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import trustme

from multicorn.runtime.base import Backend

from .harness import BackendUnderTest


def _asyncio(logger: logging.Logger) -> Backend:
    from multicorn.runtime.asyncio.serve import AsyncioBackend

    return AsyncioBackend(logger)


def _trio(logger: logging.Logger) -> Backend:
    from multicorn.runtime.trio.serve import TrioBackend

    return TrioBackend(logger)


def _uvloop_factory() -> Callable[[], Any]:
    uvloop = pytest.importorskip("uvloop")
    return uvloop.new_event_loop


@dataclass(frozen=True)
class _Param:
    name: str
    library: str
    make: Callable[[logging.Logger], Backend]
    options: Callable[[], dict[str, Any]] = field(default=dict)


BACKENDS = [
    _Param("asyncio", "asyncio", _asyncio),
    _Param("uvloop", "asyncio", _asyncio, lambda: {"loop_factory": _uvloop_factory()}),
    _Param("trio", "trio", _trio),
]


@pytest.fixture(params=BACKENDS, ids=[param.name for param in BACKENDS])
def _backend_param(request: pytest.FixtureRequest) -> _Param:
    return request.param


@pytest.fixture
def anyio_backend(_backend_param: _Param) -> tuple[str, dict[str, Any]]:
    return (_backend_param.library, _backend_param.options())


@pytest.fixture
def backend(_backend_param: _Param) -> BackendUnderTest:
    """The backend under test; `async with backend.running() as b:` starts a session."""
    return BackendUnderTest(_backend_param.name, _backend_param.make)


@pytest.fixture(scope="module")
def server_tls_context() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for 127.0.0.1 (ALPN h2 and http/1.1), and a client
    context that trusts it and offers http/1.1."""
    ca = trustme.CA()
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    server_context.set_alpn_protocols(["h2", "http/1.1"])
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    client_context.set_alpn_protocols(["http/1.1"])
    return server_context, client_context
