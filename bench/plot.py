"""The results plot: `python bench/plot.py RESULTS.json OUT.png` (needs matplotlib).

This module owns the picture: grouped bars of each scenario's headline per server, one panel
per unit so that no panel mixes scales: requests/s (messages/s for WebSocket echo), then MiB/s
when ws-echo-1m ran, then KiB per idle connection when an idle-memory scenario ran. It reads
only the results JSON, so any interpreter with matplotlib can draw it; `run.py` uses the peers'
virtualenv, which has matplotlib.
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
    # (headlines drawn in the panel, its y label, its height relative to the others)
    kinds = (
        (("requests_per_s", "messages_per_s"), "requests/s (WebSocket echo: messages/s)", 2.0),
        (("mib_per_s",), "MiB/s echoed (WebSocket, 1 MiB messages)", 1.0),
        (("kib_per_connection",), "KiB per idle connection (lower is better)", 1.0),
    )
    panels = [
        ([s for s in scenarios if headline[s] in keys], label, height)
        for keys, label, height in kinds
    ]
    panels = [panel for panel in panels if panel[0]]
    servers = [
        name for name in results["server_order"] if any(name in summary[s] for s in scenarios)
    ]
    colours = plt.get_cmap("tab20")
    colour = {name: colours(index % 20) for index, name in enumerate(servers)}

    if not panels:
        raise SystemExit("nothing to plot")
    widest = max(len(group) for group, _, _ in panels)
    figure, axes = plt.subplots(
        len(panels),
        1,
        figsize=(max(10, 1.6 * widest + 4), 5.5 + 3.5 * (len(panels) - 1)),
        squeeze=False,
        gridspec_kw={"height_ratios": [height for _, _, height in panels]},
    )
    for axis, (group, ylabel, _) in zip((a[0] for a in axes), panels, strict=True):
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
        axis.set_ylabel(ylabel)
        axis.margins(y=0.15)
        axis.grid(axis="y", alpha=0.3)
    # One legend for every panel: a server measured only on WebSocket has no bar in the first.
    legend: dict[str, Any] = {}
    for axis in (a[0] for a in axes):
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    ordered = [name for name in servers if name in legend]
    axes[0][0].legend(
        [legend[name] for name in ordered],
        ordered,
        fontsize=7,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
    )
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
