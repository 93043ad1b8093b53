#!/usr/bin/env sh
# The whole test suite, from a fresh checkout: makes .venv, installs multicorn with its test
# extra, then runs the linters, the type checker, the layer contracts and pytest.
# Extra arguments go to pytest (e.g. `sh scripts/test.sh -k http11`).
set -eu
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -e '.[test]'
"$VENV/bin/ruff" check src tests examples bench compliance
"$VENV/bin/ruff" format --check src tests examples bench compliance
"$VENV/bin/mypy"
"$VENV/bin/lint-imports"
# pytest exits 5 when it collected no tests; like any non-zero status, that fails this script.
"$VENV/bin/python" -m pytest "$@"
