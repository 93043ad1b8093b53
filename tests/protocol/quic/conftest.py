"""Shared by the QUIC and HTTP/3 core tests: one test PKI for the session, and no HTTP/1.1
engine parametrization (tests/protocol/conftest.py's does not apply to these protocols)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.protocol.quic.h3helpers import Pki, make_pki


@pytest.fixture
def h1_engine() -> str:
    return "none"


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(Path(tmp_path_factory.mktemp("quicpki")))
