"""pyproject.toml in the form current setuptools reads without deprecation warnings."""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_license_is_an_spdx_expression():
    # setuptools warns about `license = {text = ...}` tables and "License ::" classifiers.
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    assert isinstance(project["license"], str)
    assert not [c for c in project.get("classifiers", []) if c.startswith("License ::")]
