"""One invocation of `scenario-runner run`: which runs to make (`--filter`, each file's `matrix`,
`--repeat`), where each run's report goes, running them (`--parallel` at once, each with its own
agents, bus and run directory), and each scenario's outcome over its repeats.

Layout of the report directory: a single run writes report.json and events.jsonl at its top;
several runs each get a subdirectory named after the scenario (with its matrix values), and
`--repeat` adds `run-1`, `run-2`, ... below that. summary.json (every scenario's outcome) and
junit.xml (every run) are always at the top.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from fnmatch import fnmatchcase
from pathlib import Path

from pydantic import BaseModel, JsonValue

from orchestrator.events import Event
from orchestrator.report.model import EXIT_INVALID, ScenarioReport, Verdict
from orchestrator.run.reporting import broken_report
from orchestrator.run.runner import RunOptions, run_scenario
from orchestrator.scenario.spec import Scenario

SUMMARY_SCHEMA_VERSION = 1


class Outcome(StrEnum):
    """A scenario's result over all its runs."""

    PASS = "PASS"
    FAIL = "FAIL"
    ERROR = "ERROR"
    FLAKY = "FLAKY"
    """Some runs passed and some did not."""


def outcome_of(verdicts: Sequence[Verdict]) -> Outcome:
    """PASS / FAIL / ERROR when every run agrees; FLAKY when some passed and some did not; the
    worse of ERROR and FAIL when none passed."""
    if all(v is Verdict.PASS for v in verdicts):
        return Outcome.PASS
    if any(v is Verdict.PASS for v in verdicts):
        return Outcome.FLAKY
    return Outcome.ERROR if Verdict.ERROR in verdicts else Outcome.FAIL


def matches(scenario: Scenario, patterns: Sequence[str]) -> bool:
    """Whether `--filter` selects the scenario: any pattern that is, or as a shell-style glob
    (case-sensitive) matches, its name, its label with matrix values (short or full paths),
    or one of its tags. A label holds `[`, which a glob reads as a character class, so a
    label is also matched as it is written. No patterns select everything."""
    if not patterns:
        return True
    names = (scenario.name, scenario.label, scenario.full_label, *scenario.tags)
    return any(p == name or fnmatchcase(name, p) for p in patterns for name in names)


@dataclass(frozen=True)
class Planned:
    source: Path
    scenario: Scenario
    repeat: int | None
    """1..N with `--repeat N` (N > 1), None for a single run."""
    report_dir: Path

    @property
    def group(self) -> tuple[str, str]:
        return (str(self.source), self.scenario.label)


_UNSAFE = re.compile(r"[^A-Za-z0-9_.,=+-]+")

RESERVED = frozenset({"summary.json", "junit.xml", "report.json", "events.jsonl"})
"""Names at the top of a report directory that no run's directory may take."""


def _dirname(label: str) -> str:
    name = _UNSAFE.sub("_", label).strip("._") or "scenario"
    if len(name) > 80:  # file names have limits; the hash keeps long labels apart
        name = f"{name[:68]}-{hashlib.sha256(label.encode()).hexdigest()[:10]}"
    return name


def default_root(scenarios: Sequence[Scenario], now: datetime | None = None) -> Path:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S.%fZ")
    suffix = f"-{scenarios[0].name}" if len({s.name for s in scenarios}) == 1 else ""
    return Path("scenario-runs") / f"{stamp}{suffix}"


def plan(selected: Sequence[tuple[Path, Scenario]], repeat: int, root: Path) -> list[Planned]:
    """Every run of the invocation, with its report directory, in the order given."""
    if len(selected) == 1 and repeat == 1:
        path, scenario = selected[0]
        return [Planned(path, scenario, None, root)]
    taken = set(RESERVED)
    planned: list[Planned] = []
    for path, scenario in selected:
        base = name = _dirname(scenario.label)
        n = 1
        while name in taken:  # two files may hold scenarios of the same name
            n += 1
            name = f"{base}-{n}"
        taken.add(name)
        if repeat == 1:
            planned.append(Planned(path, scenario, None, root / name))
        else:
            planned += [
                Planned(path, scenario, k, root / name / f"run-{k}") for k in range(1, repeat + 1)
            ]
    return planned


async def run_planned(
    planned: Sequence[Planned],
    options: RunOptions,
    parallel: int = 1,
    on_start: Callable[[Planned], None] | None = None,
    on_done: Callable[[Planned, ScenarioReport], None] | None = None,
    on_event: Callable[[Planned, Event], None] | None = None,
) -> list[ScenarioReport]:
    """Run everything, at most `parallel` at once, in one event loop; reports in plan order.

    Each run has its own agents, bus socket and run directory, so runs share nothing but the
    coordinator process. Cancelling (Ctrl-C) cancels every run, and each tears itself down."""
    if parallel < 1:
        raise ValueError(f"parallel must be at least 1, got {parallel}")
    slots = asyncio.Semaphore(parallel)

    async def one(item: Planned) -> ScenarioReport:
        async with slots:
            if on_start is not None:
                on_start(item)
            run_options = dataclasses.replace(
                options, report_dir=item.report_dir, repeat=item.repeat
            )
            listen = None if on_event is None else functools.partial(on_event, item)
            try:
                report = await run_scenario(item.scenario, item.source, run_options, listen)
            except Exception as exc:  # a runner bug: this run is an ERROR, the others go on
                report = broken_report(
                    item.scenario, item.source, run_options.report_dir, run_options.repeat,
                    run_options.seed, exc,
                )  # fmt: skip
                with contextlib.suppress(OSError):
                    report.write(item.report_dir)
            if on_done is not None:
                on_done(item, report)
            return report

    return list(await asyncio.gather(*(one(item) for item in planned)))


def prepare(planned: Sequence[Planned], root: Path) -> list[str]:
    """Create the report directories before anything runs; what stands in the way (a file
    where a directory must go, no permission), one line each."""
    directories = [root, *(item.report_dir for item in planned)]
    problems = [
        f"{d}: cannot create the report directory: File exists"
        for d in directories
        if d.exists() and not d.is_dir()
    ]
    for directory in directories if not problems else []:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            problems.append(f"{directory}: cannot create the report directory: {exc.strerror}")
            break
    return problems


# --- outcomes and summary.json ---------------------------------------------------------------


class ScenarioOutcome(BaseModel):
    """One scenario (one matrix combination) over its runs."""

    scenario: str
    variant: str
    file: str
    parameters: dict[str, JsonValue]
    outcome: Outcome
    runs: int
    passed: int
    pass_rate: float
    verdicts: list[Verdict]
    """Each run's verdict, in repeat order."""
    assertions_passed: int
    assertions_failed: int
    """Over all runs."""
    duration_s: float
    """Over all runs."""
    peak_rss_bytes: int | None
    """The largest peak RSS of any agent in any run."""
    reports: list[str]


class Summary(BaseModel):
    schema_version: int = SUMMARY_SCHEMA_VERSION
    seed: int
    repeat: int
    parallel: int
    filters: list[str]
    exit_code: int
    interrupted: bool = False
    """Ctrl-C ended the invocation; `scenarios` holds the runs that finished."""
    outcomes: dict[str, int]
    """How many scenarios had each outcome."""
    scenarios: list[ScenarioOutcome]
    junit: str

    def write(self, directory: Path) -> Path:
        path = directory / "summary.json"
        path.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
        return path


@dataclass
class _Group:
    scenario: Scenario
    source: Path
    reports: list[ScenarioReport] = field(default_factory=list)


def outcomes(
    planned: Sequence[Planned], reports: Sequence[ScenarioReport]
) -> list[ScenarioOutcome]:
    groups: dict[tuple[str, str], _Group] = {}
    for item, report in zip(planned, reports, strict=True):
        groups.setdefault(item.group, _Group(item.scenario, item.source)).reports.append(report)
    result = []
    for group in groups.values():
        verdicts = [r.verdict for r in group.reports]
        passed = sum(1 for v in verdicts if v is Verdict.PASS)
        peaks = [
            a.memory.peak_rss_bytes
            for r in group.reports
            for a in r.agents
            if a.memory.peak_rss_bytes is not None
        ]
        result.append(
            ScenarioOutcome(
                scenario=group.scenario.name,
                variant=group.scenario.label,
                file=str(group.source),
                parameters=dict(group.scenario.parameters),
                outcome=outcome_of(verdicts),
                runs=len(verdicts),
                passed=passed,
                pass_rate=round(passed / len(verdicts), 6),
                verdicts=verdicts,
                assertions_passed=sum(r.verification.assertions_passed for r in group.reports),
                assertions_failed=sum(r.verification.assertions_failed for r in group.reports),
                duration_s=round(sum(r.duration_s for r in group.reports), 6),
                peak_rss_bytes=max(peaks) if peaks else None,
                reports=[str(Path(r.report_dir) / "report.json") for r in group.reports],
            )
        )
    return result


OUTCOME_EXIT = {Outcome.PASS: 0, Outcome.FAIL: 1, Outcome.FLAKY: 1, Outcome.ERROR: 3}


def exit_code(scenarios: Sequence[ScenarioOutcome], reports: Sequence[ScenarioReport]) -> int:
    """2 when an agent's plugins could not load (invalid input); 3 when any run was an ERROR
    (a crash in one of ten repeats is FLAKY as an outcome, but still a broken run); else 1 for
    any FAIL or FLAKY, 0 when everything passed."""
    if any(r.exit_code == EXIT_INVALID for r in reports):
        return EXIT_INVALID
    if any(r.verdict is Verdict.ERROR for r in reports):
        return OUTCOME_EXIT[Outcome.ERROR]
    return max((OUTCOME_EXIT[s.outcome] for s in scenarios), default=0)
