"""Console output: the end-of-run summary (rich), and one clear line per problem."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from orchestrator.report import ScenarioReport, Verdict

_STYLE = {Verdict.PASS: "bold green", Verdict.FAIL: "bold red", Verdict.ERROR: "bold magenta"}


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / (1 << 20):.1f}"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def print_summary(console: Console, report: ScenarioReport, verbose: bool = False) -> None:
    console.print(
        f"[{_STYLE[report.verdict]}]{report.verdict.value}[/] {report.scenario}"
        f"  ({report.duration_s:.2f}s, {len(report.agents)} agents,"
        f" {report.bus.messages_routed} messages)  report: {report.report_dir}/report.json"
    )
    for a in report.assertions:
        mark = "[green]ok[/]  " if a.passed else "[red]FAIL[/]"
        console.print(f"  {mark} {a.id}: {a.message}", highlight=False)
    for s in report.steps:
        if s.status == "failed" and s.kind != "assert":
            console.print(f"  [red]step {s.path}[/] {s.description}: {s.error}", highlight=False)
        elif s.status == "skipped" and s.skipped_reason != report.stop_reason:
            console.print(
                f"  [yellow]step {s.path}[/] {s.description}: {s.skipped_reason}", highlight=False
            )
    if report.verdict.value != "PASS" and report.verification.reasons:
        console.print(f"  why: {report.verification.reasons[0]}", highlight=False)
    for e in report.errors:
        if e.source != "step":
            console.print(f"  [magenta]error[/] ({e.source}) {e.message}", highlight=False)
            if verbose and e.detail:
                console.print(e.detail, highlight=False, markup=False)
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
