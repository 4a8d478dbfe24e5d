"""Console output (rich): a progress bar while scenarios run, each run's result as it ends,
then a summary table with one row per scenario; `--quiet` prints the outcomes only."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape as esc
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from orchestrator.compare import Change
from orchestrator.events import SoakLocating, SoakProgress
from orchestrator.report.model import ScenarioReport, Verdict
from orchestrator.run.session import Outcome, ScenarioOutcome
from orchestrator.scenario.durations import Duration

_STYLE = {
    Verdict.PASS: "bold green",
    Verdict.FAIL: "bold red",
    Verdict.ERROR: "bold magenta",
    Outcome.FLAKY: "bold yellow",
}


def progress_bar(console: Console, disable: bool) -> Progress:
    """A bar over the invocation's runs. It is drawn only on a terminal and vanishes when
    done (what stays on screen are the results), so logs and pipes get no control codes."""
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=disable,
    )


def _rate(o: ScenarioOutcome) -> str:
    return f"{o.passed}/{o.runs} ({o.pass_rate:.0%})"


def print_quiet(console: Console, outcomes: Sequence[ScenarioOutcome]) -> None:
    for o in outcomes:
        rate = f" {_rate(o)}" if o.runs > 1 else ""
        console.print(
            f"[{_STYLE[o.outcome]}]{o.outcome.value}[/] {esc(o.variant)}{rate}", highlight=False
        )


def print_table(
    console: Console, outcomes: Sequence[ScenarioOutcome], seed: int, root: str
) -> None:
    repeated = any(o.runs > 1 for o in outcomes)
    table = Table(
        title="scenarios (ok / failed: assertions; peak MiB: the largest agent peak RSS)",
        caption=f"seed {seed} (rerun with --seed {seed}); reports in {root}",
        show_edge=False,
    )
    table.add_column("scenario", overflow="fold")
    table.add_column("verdict")
    if repeated:
        table.add_column("runs passed", justify="right")
    # Short headers leave the width to the scenario names (80 columns in a CI log).
    for col in ("ok", "failed", "time s", "peak MiB"):
        table.add_column(col, justify="right")
    for o in outcomes:
        row = [esc(o.variant), f"[{_STYLE[o.outcome]}]{o.outcome.value}[/]"]
        if repeated:
            row.append(_rate(o))
        row += [
            str(o.assertions_passed),
            str(o.assertions_failed),
            f"{o.duration_s:.2f}",
            _mib(o.peak_rss_bytes),
        ]
        table.add_row(*row)
    console.print(table)


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / (1 << 20):.1f}"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def print_summary(console: Console, report: ScenarioReport, verbose: bool = False) -> None:
    name = report.variant or report.scenario
    if report.repeat is not None:
        name += f" (run {report.repeat})"
    console.print(
        f"[{_STYLE[report.verdict]}]{report.verdict.value}[/] {esc(name)}"
        f"  ({report.duration_s:.2f}s, {_count(len(report.agents), 'agent')},"
        f" {_count(report.bus.messages_routed, 'message')})"
        f"  report: {esc(report.report_dir)}/report.json"
    )
    for a in report.assertions:
        mark = (
            "[green]ok[/]   "
            if a.passed
            else "[red]ERROR[/]"
            if a.error is not None
            else "[red]FAIL[/] "
        )
        console.print(f"  {mark} {esc(a.id)}: {esc(a.message)}", highlight=False)
    for s in report.steps:
        if s.status == "failed" and s.kind != "assert":
            console.print(
                f"  [red]step {s.path}[/] {esc(s.description)}: {esc(s.error or '')}",
                highlight=False,
            )
        elif s.status == "skipped" and s.skipped_reason != report.stop_reason:
            console.print(
                f"  [yellow]step {s.path}[/] {esc(s.description)}: {esc(s.skipped_reason or '')}",
                highlight=False,
            )
    if report.verdict.value != "PASS" and report.verification.reasons:
        console.print(f"  why: {esc(report.verification.reasons[0])}", highlight=False)
    for e in report.errors:
        if e.source != "step":
            console.print(f"  [magenta]error[/] ({e.source}) {esc(e.message)}", highlight=False)
            if verbose and e.detail:
                console.print(e.detail, highlight=False, markup=False)
    if report.bus is not None and report.bus.drain and report.bus.drain.startswith("gave up"):
        console.print(f"  [yellow]teardown[/] {esc(report.bus.drain)}", highlight=False)
    if not verbose:
        return
    table = Table(title="agents", show_edge=False)
    for col in (
        "agent",
        "pid",
        "status",
        "start s",
        "peak RSS MiB",
        "in",
        "out",
        "retries",
        "dups",
        "dead",
        "p50 ms",
        "p99 ms",
    ):
        table.add_column(col, justify="right" if col != "agent" else "left")
    for ag in report.agents:
        lat = ag.delivery_latency
        table.add_row(
            ag.id,
            str(ag.pid),
            ag.status,
            "-" if ag.startup_s is None else f"{ag.startup_s:.3f}",
            _mib(ag.memory.peak_rss_bytes),
            str(ag.messages_in),
            str(ag.messages_out),
            str(ag.retries),
            str(ag.duplicates_dropped),
            str(ag.dead_letters),
            _ms(lat.p50_ms),
            _ms(lat.p99_ms),
        )
    console.print(table)
    if report.bus.rejected_frames:
        console.print(f"  rejected frames: {report.bus.rejected_frames}")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


PROGRESS_AGENTS = 5
"""Agents on a soak's progress line: those whose USS grows fastest."""


def soak_progress_line(label: str, event: SoakProgress) -> str:
    """One line a soak prints every progress interval (a log gets one line a minute):
    `soak NAME 12m0s/8h, pass 1234: leaky uss 95.1 MiB +3331.2 MiB/h (leak), ...`."""
    done = Duration(round(event.elapsed_s))
    total = Duration(round(event.elapsed_s + event.remaining_s))
    ranked = sorted(event.agents, key=lambda a: -(a.uss_per_h or 0.0))
    parts = []
    for a in ranked[:PROGRESS_AGENTS]:
        memory = a.uss if a.uss is not None else a.rss
        now = f"{memory / 2**20:.1f} MiB" if memory is not None else "?"
        trend = f" {a.uss_per_h / 2**20:+.1f} MiB/h" if a.uss_per_h is not None else ""
        parts.append(f"{a.agent} uss {now}{trend} ({a.verdict})")
    more = f", {len(ranked) - PROGRESS_AGENTS} more" if len(ranked) > PROGRESS_AGENTS else ""
    return f"soak {label} {done}/{total}, pass {event.iteration}: " + ", ".join(parts) + more


def soak_locating_line(label: str, event: SoakLocating) -> str:
    """`soak NAME: leaks found in leaky; locating pass of 10s, tracing leaky only`."""
    who = ", ".join(event.agents[:PROGRESS_AGENTS])
    if len(event.agents) > PROGRESS_AGENTS:
        who += f" and {len(event.agents) - PROGRESS_AGENTS} more"
    return (
        f"soak {label}: leaks found in {who}; locating pass of"
        f" {Duration(round(event.duration_s))} with tracemalloc in those agents only"
    )


def print_comparison(console: Console, changes: Sequence[Change], only: Sequence[str]) -> None:
    """`scenario-runner compare`: one row per metric, regressions first."""
    table = Table(title="base -> new (with repeats: the worst base run against the best new one)")
    columns = (
        "scenario", "subject", "metric", "worst base", "best new", "change", "status", "note",
    )  # fmt: skip
    for column in columns:
        right = column in ("worst base", "best new", "change")
        table.add_column(column, justify="right" if right else "left")

    def shown(value: float | None, unit: str) -> str:
        if value is None:
            return "-"
        if unit == "B":
            return f"{value / 2**20:.1f} MiB"
        return f"{value:.2f} {unit}"

    for c in sorted(changes, key=lambda c: (not c.regression, c.scenario, c.subject, c.metric)):
        change = "-" if c.change is None else f"{c.change:+.1%}"
        status = "[red]REGRESSION[/red]" if c.regression else "ok"
        table.add_row(esc(c.scenario), esc(c.subject), c.metric, shown(c.base, c.unit),
                      shown(c.new, c.unit), change, status, esc(c.note))  # fmt: skip
    console.print(table)
    for line in only:
        console.print(esc(line), highlight=False)
    regressions = sum(1 for c in changes if c.regression)
    console.print(f"{regressions} regression(s) in {len(changes)} comparison(s)", highlight=False)
