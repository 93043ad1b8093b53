"""Pins the public API: anything added or removed here is a deliberate change."""

import types

import multicorn


def test_public_names():
    public = sorted(
        name
        for name, value in vars(multicorn).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    )
    assert public == ["Config", "Server", "serve"]
    assert multicorn.__version__ == "0.1.0"
