"""Every HTTP/1.1 protocol test runs once per request-parsing engine (h11 and httptools)."""

from __future__ import annotations

import pytest

from multicorn.protocol import http11


@pytest.fixture(autouse=True, params=["h11", "httptools"])
def h1_engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    engine: str = request.param
    real = http11.new_parser
    monkeypatch.setattr(http11, "new_parser", lambda _engine, size: real(engine, size))
    return engine
