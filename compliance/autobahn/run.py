#!/usr/bin/env python3
"""Entry point of the Autobahn|Testsuite runner: `python3 compliance/autobahn/run.py [options]`.

This file only makes the repository importable and hands over to `compliance.autobahn.runner`,
which owns the run (see compliance/README.md). It needs nothing but the standard library of
Python 3.10 or later; the testsuite itself runs on Python 2.7 in a virtualenv of its own.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from compliance.autobahn.runner import main

if __name__ == "__main__":
    sys.exit(main())
