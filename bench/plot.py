"""The results plot: `python bench/plot.py RESULTS.json OUT.png` (needs matplotlib).

This module owns the picture: grouped bars of requests/s (messages/s for WebSocket) per server
in each throughput scenario, and, when the idle-memory scenario ran, a second panel of KiB per
idle connection. It reads only the results JSON, so any interpreter with matplotlib can draw
it; `run.py` uses the peers' virtualenv, which has matplotlib.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def plot(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary: dict[str, dict[str, dict[str, Any]]] = results["summary"]
    scenarios = [s for s in results["scenario_order"] if s in summary]
    headline = results["headlines"]
    throughput = [s for s in scenarios if headline[s] in ("requests_per_s", "messages_per_s")]
    memory = [s for s in scenarios if headline[s] == "kib_per_connection"]
    servers = [
        name for name in results["server_order"] if any(name in summary[s] for s in scenarios)
    ]
    colours = plt.get_cmap("tab20")
    colour = {name: colours(index % 20) for index, name in enumerate(servers)}

    panels = [p for p in (throughput, memory) if p]
    if not panels:
        raise SystemExit("nothing to plot")
    figure, axes = plt.subplots(
        len(panels),
        1,
        figsize=(max(10, 1.6 * len(throughput) + 4), 5.5 + 3.5 * (len(panels) - 1)),
        squeeze=False,
        gridspec_kw={"height_ratios": [2.0 if p is throughput else 1.0 for p in panels]},
    )
    for axis, group in zip((a[0] for a in axes), panels, strict=True):
        width = 0.8 / max(1, len(servers))
        for index, name in enumerate(servers):
            xs, ys = [], []
            for position, scenario in enumerate(group):
                value = summary[scenario].get(name, {}).get(headline[scenario])
                if value is not None:
                    xs.append(position - 0.4 + width * (index + 0.5))
                    ys.append(value)
            if xs:
                bars = axis.bar(xs, ys, width, label=name, color=colour[name])
                labels = [f"{y / 1000:.1f}k" if y >= 1000 else f"{y:.1f}" for y in ys]
                axis.bar_label(bars, labels=labels, rotation=90, fontsize=6, padding=2)
        axis.set_xticks(range(len(group)), group)
        if group is memory:
            axis.set_ylabel("KiB per idle connection (lower is better)")
        else:
            axis.set_ylabel("requests/s (ws-echo: messages/s)")
        axis.margins(y=0.15)
        axis.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    settings = results["settings"]
    figure.suptitle(
        f"multicorn and peers, one worker each, {results['started'][:10]}, "
        f"median of {settings['rounds']} x {settings['duration']} s ({results['git']['sha']})",
        fontsize=10,
    )
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120, bbox_inches="tight")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: plot.py RESULTS.json OUT.png", file=sys.stderr)
        return 2
    plot(json.loads(Path(argv[0]).read_text()), Path(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
