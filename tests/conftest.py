"""Shared fixtures: every end-to-end test runs once on asyncio and once on trio."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory):
    from tests.e2e.tls import make_certs

    return make_certs(tmp_path_factory.mktemp("certs"))
