"""Reading the fuzzing client's JSON report and saying what it means.

This module owns the verdict of a run: it loads `index.json` (and, for cases that did not pass,
the per-case JSON with Autobahn's own explanation), counts the `behavior` and `behaviorClose`
values, sorts every case into passed / non-strict / failed, and renders the result for the
console and as markdown. It knows nothing about processes or servers.

Autobahn grades each case twice. `behavior` is about the messages: OK, NON-STRICT (passed, but
the spec's SHOULD was not met, e.g. invalid UTF-8 noticed late), INFORMATIONAL (nothing to
pass), UNIMPLEMENTED (an optional feature, permessage-deflate for 12.* and 13.*) or FAILED.
`behaviorClose` is about the closing handshake: OK, INFORMATIONAL, FAILED, or one of three
milder grades. The verdict follows the colours of Autobahn's own HTML report: UNCLEAN (the
spec requires a clean close) counts as failed; WRONG CODE (a close code outside the expected
set) and FAILED BY CLIENT (the client, not the server, had to drop TCP) count as non-strict.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

OK = "OK"
NON_STRICT = "NON-STRICT"
INFORMATIONAL = "INFORMATIONAL"
UNIMPLEMENTED = "UNIMPLEMENTED"
FAILED = "FAILED"
# The grades every summary shows, even at zero; any other value seen is listed after them.
HEADLINE_GRADES = (OK, NON_STRICT, INFORMATIONAL, UNIMPLEMENTED, FAILED)

PASSING_BEHAVIOR = {OK, INFORMATIONAL, UNIMPLEMENTED}
NON_STRICT_BEHAVIOR = {NON_STRICT, "NO_CLOSE"}
PASSING_CLOSE = {OK, INFORMATIONAL}
NON_STRICT_CLOSE = {"WRONG CODE", "FAILED BY CLIENT"}


class Verdict(Enum):
    PASSED = "passed"
    NON_STRICT = "non-strict"
    FAILED = "failed"


@dataclass(frozen=True, slots=True, kw_only=True)
class CaseResult:
    """One case as graded by the fuzzing client."""

    case_id: str
    behavior: str
    behavior_close: str
    remote_close_code: int | None
    duration_ms: int
    remote_close_reason: str | None = None
    description: str = ""
    expectation: str = ""
    result: str = ""
    result_close: str = ""
    # What the fuzzer saw before the close, and what a strict pass needed, as event kinds
    # ("message", "pong", "timeout A"): the payloads can be megabytes.
    received: tuple[str, ...] | None = None
    expected_strict: tuple[str, ...] | None = None

    @property
    def verdict(self) -> Verdict:
        if self.behavior == UNIMPLEMENTED:
            # Autobahn closes an unimplemented case itself; its close grade means nothing.
            return Verdict.PASSED
        if self.behavior not in PASSING_BEHAVIOR | NON_STRICT_BEHAVIOR:
            return Verdict.FAILED
        if self.behavior_close not in PASSING_CLOSE | NON_STRICT_CLOSE:
            return Verdict.FAILED
        if self.behavior in NON_STRICT_BEHAVIOR or self.behavior_close in NON_STRICT_CLOSE:
            return Verdict.NON_STRICT
        return Verdict.PASSED

    @property
    def reason(self) -> str:
        """Autobahn's words for whichever of the two grades did not pass."""
        parts = []
        if self.behavior in NON_STRICT_BEHAVIOR:
            # Autobahn's result text only says some expectation matched; the strict one it
            # missed is what explains the grade.
            got = ""
            if self.received is not None and self.expected_strict is not None:
                got = (
                    f" (got {_events(self.received)}, strict wants {_events(self.expected_strict)})"
                )
            parts.append(
                f"{self.behavior}: met only a lenient expectation{got}; "
                f"strictly: {self.expectation}"
            )
        elif self.behavior not in PASSING_BEHAVIOR:
            parts.append(f"{self.behavior}: {self.result}")
        if self.behavior != UNIMPLEMENTED and self.behavior_close not in PASSING_CLOSE:
            close = f"close {self.behavior_close}: {self.result_close}"
            if self.remote_close_code is not None:
                close += f" (server's close code {self.remote_close_code}"
                if self.remote_close_reason:
                    close += f", reason {self.remote_close_reason!r}"
                close += ")"
            parts.append(close)
        return "; ".join(" ".join(part.split()) for part in parts)

    @property
    def title(self) -> str:
        """The first sentence-ish of the description, without the HTML and hex dumps."""
        first = re.split(r"<br\s*/?>", self.description, maxsplit=1)[0]
        return " ".join(re.sub(r"<[^>]*>", "", first).split())


def case_sort_key(case_id: str) -> tuple[int, ...]:
    """'9.10.2' sorts after '9.2.1', as Autobahn numbers them."""
    return tuple(int(part) for part in case_id.split("."))


def load_results(outdir: Path, agent: str) -> list[CaseResult]:
    """Every case the fuzzing client reported for `agent` under `outdir`, in case order.

    Raises FileNotFoundError when the client wrote no index (it died before reporting) and
    KeyError when the index has no entry for the agent.
    """
    index = json.loads((outdir / "index.json").read_text())
    cases = index[agent]
    results = []
    for case_id in sorted(cases, key=case_sort_key):
        entry = cases[case_id]
        details: dict[str, object] = {}
        graded_ok = entry["behavior"] in PASSING_BEHAVIOR and entry["behaviorClose"] in (
            PASSING_CLOSE
        )
        report_file = entry.get("reportfile")
        # Only the cases worth explaining need their (sometimes large) per-case file.
        if not graded_ok and report_file and (outdir / report_file).exists():
            details = json.loads((outdir / report_file).read_text())
        results.append(
            CaseResult(
                case_id=case_id,
                behavior=entry["behavior"],
                behavior_close=entry["behaviorClose"],
                remote_close_code=entry.get("remoteCloseCode"),
                duration_ms=int(entry.get("duration") or 0),
                remote_close_reason=_optional_str(details.get("remoteCloseReason")),
                description=str(details.get("description", "")),
                expectation=str(details.get("expectation", "")),
                result=str(details.get("result", "")),
                result_close=str(details.get("resultClose", "")),
                received=_event_kinds(details.get("received")),
                expected_strict=_event_kinds(_get(details.get("expected"), OK)),
            )
        )
    return results


@dataclass(frozen=True, slots=True, kw_only=True)
class Summary:
    """The counts and verdicts of one run, ready to print."""

    agent: str
    results: list[CaseResult]
    missing: list[str]

    def counts(self, field: str) -> Counter[str]:
        key = "behavior" if field == "behavior" else "behavior_close"
        return Counter(getattr(case, key) for case in self.results)

    def grades(self) -> list[str]:
        seen = set(self.counts("behavior")) | set(self.counts("behaviorClose"))
        return [*HEADLINE_GRADES, *sorted(seen - set(HEADLINE_GRADES))]

    def with_verdict(self, verdict: Verdict) -> list[CaseResult]:
        return [case for case in self.results if case.verdict is verdict]

    def failed(self, *, strict: bool) -> bool:
        """Whether this run should fail the command: a failed or missing case, and with
        `strict`, a non-strict one too."""
        if self.missing or self.with_verdict(Verdict.FAILED):
            return True
        return strict and bool(self.with_verdict(Verdict.NON_STRICT))

    def console(self) -> str:
        behavior, close = self.counts("behavior"), self.counts("behaviorClose")
        width = max(len(grade) for grade in self.grades())
        lines = [
            f"Autobahn results for {self.agent}: {len(self.results)} cases",
            f"  {'':{width}}  behavior  behaviorClose",
        ]
        lines += [
            f"  {grade:{width}}  {behavior[grade]:8d}  {close[grade]:13d}"
            for grade in self.grades()
        ]
        for verdict in (Verdict.FAILED, Verdict.NON_STRICT):
            cases = self.with_verdict(verdict)
            lines.append(f"{verdict.value}: {len(cases)}")
            lines += [f"  {case.case_id:10} {case.reason}" for case in cases]
        if self.missing:
            lines.append(f"missing from the report: {len(self.missing)}: {' '.join(self.missing)}")
        return "\n".join(lines)

    def markdown(self, *, title: str, facts: dict[str, str]) -> str:
        behavior, close = self.counts("behavior"), self.counts("behaviorClose")
        lines = [f"# {title}", ""]
        lines += [f"- {name}: {value}" for name, value in facts.items()]
        lines += [
            f"- cases: {len(self.results)}",
            "",
            "| grade | behavior | behaviorClose |",
            "|---|---:|---:|",
        ]
        lines += [f"| {grade} | {behavior[grade]} | {close[grade]} |" for grade in self.grades()]
        for verdict in (Verdict.FAILED, Verdict.NON_STRICT):
            cases = self.with_verdict(verdict)
            lines += ["", f"## {verdict.value.capitalize()}: {len(cases)}", ""]
            if not cases:
                lines.append("None.")
                continue
            lines += ["| case | what it does | why |", "|---|---|---|"]
            lines += [
                f"| {case.case_id} | {_cell(case.title)} | {_cell(case.reason)} |" for case in cases
            ]
        if self.missing:
            lines += ["", f"## Missing from the report: {len(self.missing)}", ""]
            lines.append(" ".join(self.missing))
        return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)


def _event_kinds(value: object) -> tuple[str, ...] | None:
    """["message", payload, binary] -> "message"; ["timeout", "A"] -> "timeout A"."""
    if not isinstance(value, list):
        return None
    kinds = []
    for event in value:
        if isinstance(event, list) and event:
            kind = str(event[0])
            kinds.append(f"{kind} {event[1]}" if kind == "timeout" and len(event) > 1 else kind)
    return tuple(kinds)


def _events(kinds: tuple[str, ...]) -> str:
    if not kinds:
        return "nothing"
    shown = ", ".join(kinds[:4])
    return shown + (f" and {len(kinds) - 4} more" if len(kinds) > 4 else "")


def _get(value: object, key: str) -> object:
    return value.get(key) if isinstance(value, dict) else None
