"""`scenario-runner compare BASE NEW`: what changed between two sets of runs, and is it a
regression.

Each side is a report directory (`run` or `soak` output): every report.json under it is read
and grouped by scenario (and matrix variant). Per scenario the comparison covers the run's
duration and the delivery latency p99; per agent, its peak RSS, its largest USS and, where a
soak measured it, its USS growth per hour.

Noise is handled by comparing extremes, not means: with repeated runs on both sides
(`--repeat N`), a metric regresses only when the *best* new run is worse than the *worst* base
run by more than the threshold. With one run a side, that is the plain comparison. A growth
rate regresses when the new run's 95% lower bound exceeds the base's upper bound by more than
`max_growth_per_h`, so two noisy soaks do not make a regression of their noise.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from orchestrator.report.model import AgentReport, ScenarioReport

MIB = 1024 * 1024


class CompareError(Exception):
    """A side that cannot be compared: no reports, or reports that do not parse."""


@dataclass(frozen=True, slots=True)
class Thresholds:
    memory: float = 0.10
    """Peak RSS and USS may grow by this fraction."""
    latency: float = 0.20
    duration: float = 0.20
    growth_per_h: float = 1.0 * MIB
    """A soak's USS growth rate may rise by this much (bytes per hour) beyond the noise."""


@dataclass(frozen=True, slots=True)
class Change:
    scenario: str
    subject: str
    """`scenario` or an agent id."""
    metric: str
    base: float | None
    new: float | None
    unit: str
    regression: bool
    note: str = ""

    @property
    def change(self) -> float | None:
        if self.base is None or self.new is None or self.base == 0:
            return None
        return (self.new - self.base) / self.base


def load_side(directory: Path) -> dict[str, list[ScenarioReport]]:
    """Every report under `directory`, by scenario label."""
    if not directory.is_dir():
        raise CompareError(f"{directory}: not a directory")
    found: dict[str, list[ScenarioReport]] = defaultdict(list)
    for path in sorted(directory.rglob("report.json")):
        try:
            report = ScenarioReport.model_validate_json(path.read_text(encoding="utf-8"))
        except (OSError, ValidationError, json.JSONDecodeError) as exc:
            raise CompareError(f"{path}: not a report this version can read: {exc}") from None
        label = report.scenario if report.variant in ("", report.scenario) else report.variant
        found[label].append(report)
    if not found:
        raise CompareError(f"{directory}: no report.json in it (or under it)")
    return found


def _worse(
    scenario: str, subject: str, metric: str, unit: str,
    base: Iterable[float | None], new: Iterable[float | None], allowed: float,
) -> Change | None:  # fmt: skip
    b = [x for x in base if x is not None]
    n = [x for x in new if x is not None]
    if not b or not n:
        return None
    worst_base, best_new = max(b), min(n)
    regression = best_new > worst_base * (1 + allowed)
    many = len(b) + len(n) > 2

    def show(x: float) -> str:
        return f"{x / MIB:.2f} MiB" if unit == "B" else f"{x:.4g} {unit}"

    spread = (
        f"base {show(min(b))} .. {show(max(b))}, new {show(min(n))} .. {show(max(n))}"
        if many
        else ""
    )
    return Change(scenario, subject, metric, max(b), min(n), unit, regression, spread)


def compare(
    base: dict[str, list[ScenarioReport]],
    new: dict[str, list[ScenarioReport]],
    limits: Thresholds,
) -> tuple[list[Change], list[str]]:
    """The changes per scenario and agent, and what was on one side only."""
    changes: list[Change] = []
    only = [f"only in base: {s}" for s in sorted(set(base) - set(new))]
    only += [f"only in new: {s}" for s in sorted(set(new) - set(base))]
    if not set(base) & set(new):
        raise CompareError(
            "no scenario is in both (" + "; ".join(only) + "): nothing to compare"
        )
    for label in sorted(set(base) & set(new)):
        b, n = base[label], new[label]
        for change in (
            _worse(label, "scenario", "duration", "s",
                   (r.duration_s for r in b), (r.duration_s for r in n), limits.duration),
            _worse(label, "scenario", "delivery p99", "ms",
                   (r.bus.delivery_latency.p99_ms for r in b),
                   (r.bus.delivery_latency.p99_ms for r in n), limits.latency),
        ):  # fmt: skip
            if change is not None:
                changes.append(change)
        agents = sorted({a.id for r in b for a in r.agents} & {a.id for r in n for a in r.agents})
        for agent in agents:
            mine_b = [a for r in b for a in r.agents if a.id == agent]
            mine_n = [a for r in n for a in r.agents if a.id == agent]
            for metric, get in (
                ("peak RSS", lambda a: a.memory.peak_rss_bytes),
                ("USS peak", lambda a: a.memory.uss_peak_bytes),
            ):
                change = _worse(label, agent, metric, "B", map(get, mine_b), map(get, mine_n),
                                limits.memory)  # fmt: skip
                if change is not None:
                    changes.append(change)
            growth = _growth(label, agent, mine_b, mine_n, limits.growth_per_h)
            if growth is not None:
                changes.append(growth)
    return changes, only


def _growth(
    label: str, agent: str, base: list[AgentReport], new: list[AgentReport], allowed: float
) -> Change | None:
    def fits(side: list[AgentReport]) -> list[tuple[float, float, float]]:
        return [
            (leak.slope_low_per_h, leak.slope_per_h, leak.slope_high_per_h)
            for a in side
            for leak in a.memory.leak
            if leak.series == "uss"
            and leak.slope_per_h is not None
            and leak.slope_low_per_h is not None
            and leak.slope_high_per_h is not None
        ]

    b, n = fits(base), fits(new)
    if not b or not n:
        return None
    base_high = max(x[2] for x in b)
    new_low = min(x[0] for x in n)
    regression = new_low > base_high + allowed
    return Change(
        label, agent, "USS growth", max(x[1] for x in b) / MIB, min(x[1] for x in n) / MIB,
        "MiB/h", regression,
        f"new 95% low {new_low / MIB:.2f} vs base 95% high {base_high / MIB:.2f} MiB/h",
    )  # fmt: skip
