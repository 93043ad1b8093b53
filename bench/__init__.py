"""The benchmark suite: multicorn side by side with its peers (`python3 bench/run.py`).

This package owns the benchmark only; nothing under `src/` imports it. `run.py` is the entry
point and README.md says how to use it. The modules import nothing outside the standard library
except `apps.py` (which each server loads, and which uses `sniffio` when present) and `plot.py`
(matplotlib, run with whichever interpreter has it).
"""
