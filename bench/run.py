#!/usr/bin/env python3
"""Entry point of the benchmark suite: `python3 bench/run.py [options]` (see bench/README.md).

This file only makes the repository importable and hands over to `bench.runner`, which owns
the run. It needs nothing but the standard library of Python 3.10 or later.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.runner import main

if __name__ == "__main__":
    sys.exit(main())
