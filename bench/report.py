"""Results: medians over rounds, multicorn-to-peer ratios, markdown tables and the report page.

This module owns turning the list of runs into what people read: per scenario and server the
median over the rounds that succeeded (`summarize`), the ratio of every multicorn configuration
to every peer measured in the same run (`ratios`), one markdown table per scenario
(`scenario_tables`), and the full report page (`report_page`). It computes nothing about
servers itself; the runs carry every figure.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from bench.scenarios import Scenario
from bench.servers import ServerConfig

# Figures whose median over rounds the summary keeps.
MEDIAN_KEYS = (
    "requests_per_s",
    "messages_per_s",
    "mib_per_s",
    "kib_per_connection",
    "latency_avg_ms",
    "latency_p50_ms",
    "latency_p90_ms",
    "latency_p99_ms",
    "peak_rss_kib",
    "worker_peak_rss_kib",
    "server_cpu_percent",
    "client_cpu_percent",
    "errors",
    "connections_open",
    "rss_before_kib",
    "rss_after_kib",
)


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """`{scenario: {server: {key: median, 'rounds_ok': n, 'rounds_failed': n}}}`."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        grouped.setdefault((run["scenario"], run["server"]), []).append(run)
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for (scenario, server), group in grouped.items():
        ok = [run["metrics"] for run in group if run["ok"]]
        entry: dict[str, Any] = {"rounds_ok": len(ok), "rounds_failed": len(group) - len(ok)}
        for key in MEDIAN_KEYS:
            values = [metrics[key] for metrics in ok if metrics.get(key) is not None]
            if values:
                entry[key] = statistics.median(values)
        if ok:
            summary.setdefault(scenario, {})[server] = entry
    return summary


def ratios(
    summary: dict[str, dict[str, dict[str, Any]]],
    scenarios: Sequence[Scenario],
    servers: Sequence[ServerConfig],
) -> dict[str, dict[str, dict[str, float]]]:
    """`{scenario: {multicorn config: {peer: headline(multicorn) / headline(peer)}}}`.

    For a lower-is-better headline (idle memory) the ratio is still multicorn / peer, so below
    1.0 is multicorn's advantage there; the tables say which way is better.
    """
    by_name = {server.name: server for server in servers}
    result: dict[str, dict[str, dict[str, float]]] = {}
    for scenario in scenarios:
        measured = summary.get(scenario.name, {})
        ours = [name for name in measured if by_name.get(name) and by_name[name].is_multicorn]
        peers = [name for name in measured if by_name.get(name) and not by_name[name].is_multicorn]
        for mine in ours:
            for peer in peers:
                a = measured[mine].get(scenario.headline)
                b = measured[peer].get(scenario.headline)
                if a is not None and b:
                    result.setdefault(scenario.name, {}).setdefault(mine, {})[peer] = a / b
    return result


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _mib(kib: float | None) -> str:
    return "-" if kib is None else f"{kib / 1024:,.1f}"


def _rss(entry: dict[str, Any]) -> str:
    worker, total = entry.get("worker_peak_rss_kib"), entry.get("peak_rss_kib")
    if worker is not None and total is not None and abs(total - worker) > 1:
        return f"{_mib(worker)} / {_mib(total)}"
    return _mib(total)


def scenario_table(
    scenario: Scenario, measured: dict[str, dict[str, Any]], rounds: int
) -> list[str]:
    """The markdown table of one scenario, best headline first."""
    order = sorted(
        measured,
        key=lambda name: measured[name].get(scenario.headline) or 0.0,
        reverse=scenario.higher_is_better,
    )
    rss_header = "peak RSS MiB (worker / all)"
    # WebSocket echo: the headline (messages/s or MiB/s) first, the other one beside it.
    ws_rates = [("messages/s", "messages_per_s", 0), ("MiB/s", "mib_per_s", 1)]
    if scenario.headline == "mib_per_s":
        ws_rates.reverse()
    if scenario.measures_idle_memory:
        header = ["server", "KiB/connection", "connections open", "RSS before MiB"]
        header += ["RSS after MiB", "errors", rss_header]
    elif scenario.tool == "ws":
        header = ["server", *(label for label, _, _ in ws_rates), "server CPU %"]
        header += ["client CPU %", "errors", rss_header]
    else:
        header = ["server", "requests/s", "avg latency ms", "p99 latency ms", "errors"]
        header += ["server CPU %", "client CPU %", rss_header]
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    for name in order:
        entry = measured[name]
        if scenario.measures_idle_memory:
            cells = [
                _num(entry.get("kib_per_connection"), 1),
                _num(entry.get("connections_open")),
                _mib(entry.get("rss_before_kib")),
                _mib(entry.get("rss_after_kib")),
            ]
        elif scenario.tool == "ws":
            cells = [_num(entry.get(key), digits) for _, key, digits in ws_rates]
            cells += [
                _num(entry.get("server_cpu_percent")),
                _num(entry.get("client_cpu_percent")),
            ]
        else:
            cells = [
                _num(entry.get("requests_per_s")),
                _num(entry.get("latency_avg_ms"), 2),
                _num(entry.get("latency_p99_ms"), 2),
            ]
        cells.append(_num(entry.get("errors")))
        if not scenario.measures_idle_memory and scenario.tool != "ws":
            cells += [_num(entry.get("server_cpu_percent")), _num(entry.get("client_cpu_percent"))]
        cells.append(_rss(entry))
        runs = rounds * scenario.repeats
        label = name if entry["rounds_ok"] == runs else f"{name} ({entry['rounds_ok']}/{runs})"
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return lines


def ratio_table(scenario: Scenario, table: dict[str, dict[str, float]]) -> list[str]:
    """Rows: multicorn configurations; columns: peers; cells: multicorn / peer."""
    if not table:
        return []
    peers = sorted({peer for row in table.values() for peer in row})
    better = "higher" if scenario.higher_is_better else "lower"
    lines = [
        f"Ratio of {scenario.headline_label}, multicorn / peer ({better} is better for multicorn):",
        "",
        "| multicorn / peer | " + " | ".join(peers) + " |",
        "|---" + "|---:" * len(peers) + "|",
    ]
    for mine in sorted(table):
        cells = [f"{table[mine][peer]:.2f}x" if peer in table[mine] else "-" for peer in peers]
        lines.append("| " + " | ".join([mine, *cells]) + " |")
    return lines


def scenario_tables(results: dict[str, Any], scenarios: Sequence[Scenario]) -> list[str]:
    """Every scenario's heading, table and ratios, as markdown lines."""
    rounds = results["settings"]["rounds"]
    lines: list[str] = []
    for scenario in scenarios:
        measured = results["summary"].get(scenario.name)
        lines += [f"### {scenario.name}", "", scenario.description + ".", ""]
        if not measured:
            reason = results["skipped_scenarios"].get(scenario.name, "no server completed a run")
            lines += [f"Not measured: {reason}.", ""]
            continue
        lines += [*scenario_table(scenario, measured, rounds), ""]
        ratio_lines = ratio_table(scenario, results["ratios"].get(scenario.name, {}))
        if ratio_lines:
            lines += [*ratio_lines, ""]
    return lines


def problems(results: dict[str, Any]) -> list[str]:
    """Markdown lines listing unavailable servers, skipped scenarios and failed runs."""
    lines: list[str] = []
    unavailable = {
        name: info["reason"] for name, info in results["servers"].items() if not info["available"]
    }
    if unavailable:
        lines += ["Servers not run:", ""]
        lines += [f"- `{name}`: {reason}" for name, reason in sorted(unavailable.items())]
        lines.append("")
    partial = [
        f"- `{name}`, {feature}: {why}"
        for name, info in sorted(results["servers"].items())
        if info["available"]
        for feature, why in sorted(info.get("missing_features", {}).items())
    ]
    if partial:
        lines += ["Protocols not measured on some servers:", "", *partial, ""]
    if results["skipped_scenarios"]:
        lines += ["Scenarios not run:", ""]
        lines += [
            f"- `{name}`: {why}" for name, why in sorted(results["skipped_scenarios"].items())
        ]
        lines.append("")
    failed = [run for run in results["runs"] if not run["ok"]]
    if failed:
        lines += ["Failed runs (left out of the medians):", ""]
        for run in failed:
            reason = " ".join(run["error"].split())[:300]
            lines.append(
                f"- round {run['round']}, `{run['scenario']}`, `{run['server']}`: {reason}"
            )
        lines.append("")
    return lines


def report_page(
    results: dict[str, Any], scenarios: Sequence[Scenario], plot_link: str | None
) -> str:
    """The full markdown report: machine, versions, command, date, tables, plot, problems."""
    machine = results["machine"]
    settings = results["settings"]
    tools = results["tools"]
    lines = [
        f"# multicorn benchmark, {results['started'][:10]}",
        "",
        f"- Date: {results['started']} to {results['finished']} (UTC)",
        f"- Command: `{results['command']}`",
        f"- Commit: `{results['git']['sha']}`"
        + (" (uncommitted changes)" if results["git"]["dirty"] else ""),
        f"- Machine: {machine['cpu_model']}, {machine['cpus']} CPUs, {machine['memory']}, "
        f"{machine['kernel']}",
        f"- Pinning: server on CPU {settings['server_cpus'] or 'any'}, "
        f"load generator on CPU {settings['load_cpus'] or 'any'}",
        f"- Runner Python {machine['python']}; servers' Python: "
        + ", ".join(
            f"{venv} {version}" for venv, version in sorted(results["venv_python"].items())
        ),
        f"- {settings['rounds']} round(s) of {settings['duration']} s per server and scenario "
        f"(after {settings['warmup']} s warm-up), servers in a shuffled order each round "
        f"(seed {settings['seed']}); figures are medians over rounds"
        + "".join(
            f" ({scenario.name}: {scenario.repeats} runs per round)"
            for scenario in scenarios
            if scenario.repeats > 1
        ),
        "- Tools: " + ", ".join(f"{tool} {version}" for tool, version in sorted(tools.items())),
        "",
    ]
    if plot_link:
        lines += [f"![headline per server and scenario]({plot_link})", ""]
    lines += ["## Results", "", *scenario_tables(results, scenarios)]
    lines += ["## Servers", "", "| server | packages | command (h1 scenarios) |", "|---|---|---|"]
    for name, info in results["servers"].items():
        packages = ", ".join(
            f"{dist} {version}" for dist, version in sorted(info["versions"].items())
        )
        command = f"`{info['command']}`" if info.get("command") else info.get("reason", "")
        lines.append(f"| {name} | {packages or '-'} | {command} |")
    lines.append("")
    trouble = problems(results)
    if trouble:
        lines += ["## Problems", "", *trouble]
    return "\n".join(lines) + "\n"
