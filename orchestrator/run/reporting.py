"""A run's report assembled from its parts: agents (link, process, samples), the bus, the
event log, the coordinator's own figures, steps and assertions. Each report model is built in
one place here, from the object that holds its figures."""

from __future__ import annotations

import os
import traceback
from datetime import UTC, datetime
from pathlib import Path

from pydantic import JsonValue

from orchestrator.cluster.bus import Bus
from orchestrator.cluster.cluster import AgentHandle
from orchestrator.cluster.sampler import AgentSamples, Sampler
from orchestrator.events import ErrorKind, EventLog, EventStorage
from orchestrator.judge.judges import AssertionResult
from orchestrator.leak import LeakAnalysis
from orchestrator.metrics import LatencyHistogram, Series
from orchestrator.report.model import (
    EXIT_CODES,
    ActionReport,
    AgentReport,
    AssertionReport,
    BusReport,
    CoordinatorReport,
    ErrorReport,
    EventLogReport,
    LeakReport,
    MemoryReport,
    SamplerReport,
    ScenarioReport,
    StepReport,
    Timings,
    TraceReport,
    Verdict,
    VerificationReport,
)
from orchestrator.run.executor import StepResult, StepStatus
from orchestrator.run.loopwatch import LoopWatch
from orchestrator.scenario.spec import Scenario
from protocol import AgentStats


def agent_report(
    handle: AgentHandle,
    samples: AgentSamples | None,
    launcher: str,
    leaks: tuple[LeakAnalysis, ...] = (),
    trace: JsonValue = None,
    leaks_until: float | None = None,
) -> AgentReport:
    """An agent's entry: how its process ended, its memory, its link's and its own counts."""
    link = handle.link
    exit_info = handle.exit
    stats = link.bye.stats if link.bye else None
    ready = link.ready_info
    return AgentReport(
        id=handle.id,
        pid=handle.pid,
        launcher=launcher,
        status=handle.state.value,
        exit_code=exit_info.returncode if exit_info else None,
        signal=(
            exit_info.describe().removeprefix("killed by ")
            if exit_info and exit_info.signal
            else None
        ),
        escalation=handle.escalation,
        restarts=handle.restarts,
        restart_causes=[cause for _, cause in handle.restart_history],
        killed_by_script=handle.killed_by_script,
        limit=handle.limit,
        startup_s=round(handle.startup_s, 6) if handle.startup_s is not None else None,
        cpu_user_s=exit_info.cpu_user_s if exit_info else None,
        cpu_system_s=exit_info.cpu_system_s if exit_info else None,
        memory=MemoryReport(
            samples=samples.count if samples else 0,
            rss_first_bytes=samples.first_rss if samples else None,
            rss_last_bytes=samples.last_rss if samples else None,
            rss_peak_sampled_bytes=samples.peak_rss if samples and samples.count else None,
            peak_rss_bytes=peak_rss(stats, samples),
            uss_peak_bytes=samples.uss_peak or None if samples else None,
            num_fds=samples.num_fds if samples else None,
            num_threads=samples.num_threads if samples else None,
            rss_series=[(round(t, 3), v) for t, v in samples.rss.points] if samples else [],
            leak=[leak_report(a) for a in leaks],
            series=chart_series(samples, leaks, leaks_until),
            trace=TraceReport.model_validate(trace) if trace is not None else None,
        ),
        messages_in=link.stats.delivered,
        messages_out=link.stats.posted,
        retries=link.stats.retries + (stats.retries if stats else 0),
        duplicates_dropped=link.stats.duplicates_dropped
        + (stats.duplicates_dropped if stats else 0),
        dead_letters=link.stats.dead_letters + (stats.dead_letters if stats else 0),
        rejected_frames=link.stats.rejected + (stats.rejected_frames if stats else 0),
        handler_errors=stats.handler_errors if stats else None,
        store_rows=stats.store_rows if stats else None,
        store_evicted=stats.store_evicted if stats else None,
        store_rows_by_room=stats.store_rows_by_room if stats else None,
        delivery_latency=link.stats.latency.summary(),
        final_state=stats.state if stats else None,
        actions=[ActionReport.model_validate(a.model_dump()) for a in ready.actions]
        if ready
        else [],
        services=list(ready.services) if ready else [],
    )




CHART_POINTS = 120
"""Points per series in the report's `series` (what the HTML report charts): enough for a
chart's width, and the report's size does not depend on the run's length."""


def chart_series(
    samples: AgentSamples | None,
    leaks: tuple[LeakAnalysis, ...],
    until: float | None = None,
) -> dict[str, list[tuple[float, int]]]:
    """The series each leak verdict read (up to `until`, where the verdicts were made),
    decimated keeping minima (a soak's only)."""
    if samples is None:
        return {}
    charts: dict[str, list[tuple[float, int]]] = {}
    for a in leaks:
        kept = Series(CHART_POINTS, keep="min")
        for t, v in samples.floors[a.series].points:
            if until is not None and t > until:
                break
            kept.add(t, v)
        charts[a.series] = [(round(t, 3), v) for t, v in kept.points]
    return charts


def peak_rss(stats: AgentStats | None, samples: AgentSamples | None) -> int | None:
    """The agent's own high-water RSS: the largest of what it sent with BYE, the VmHWM read at
    each sample and the sampled RSS (see reports.md: never ru_maxrss)."""
    known = [
        v
        for v in (
            stats.peak_rss_bytes if stats else None,
            samples.hwm if samples else None,
            samples.peak_rss if samples and samples.count else None,
        )
        if v
    ]
    return max(known) if known else None


def agent_metrics(agent: AgentReport) -> dict[str, JsonValue]:
    """What a custom rule sees of an agent: its report's numbers (not the series, the action
    list or the final state, which `RunView.final_states` has)."""
    return agent.model_dump(
        mode="json", exclude={"memory": {"rss_series"}, "actions": True, "final_state": True}
    )


def broken_report(
    scenario: Scenario,
    source: Path,
    report_dir: Path | None,
    repeat: int | None,
    seed: int,
    exc: BaseException,
) -> ScenarioReport:
    """The report of a run that the runner could not carry out at all (it raised before it
    had a report): an ERROR that says why, so an invocation's other runs are still reported."""
    message = f"the runner broke: {type(exc).__name__}: {exc}"
    no_latency = LatencyHistogram().summary()
    return ScenarioReport(
        scenario=scenario.name,
        description=scenario.description,
        file=str(source),
        verdict=Verdict.ERROR,
        exit_code=EXIT_CODES[Verdict.ERROR],
        started_at=datetime.now(UTC).isoformat(),
        duration_s=0.0,
        timings=Timings(launch_s=0.0, script_s=0.0, teardown_s=0.0, total_s=0.0),
        tags=list(scenario.tags),
        variant=scenario.label,
        parameters=dict(scenario.parameters),
        repeat=repeat,
        seed=seed,
        verification=VerificationReport(
            score=0.0,
            threshold=scenario.verification.threshold,
            assertions_passed=0,
            assertions_failed=0,
            reasons=[message],
            run_errors=[message],
        ),
        steps=[],
        assertions=[],
        errors=[
            ErrorReport(
                source=ErrorKind.RUNNER,
                message=message,
                detail="".join(traceback.format_exception(exc)),
            )
        ],
        agents=[],
        bus=BusReport(
            endpoint="",
            messages_routed=0,
            dead_letters=0,
            retries=0,
            rejected_frames={},
            delivery_latency=no_latency,
        ),
        events_file="",
        events=0,
        report_dir=str(report_dir or ""),
        run_dir=None,
    )


def step_report(s: StepResult) -> StepReport:
    d = s.durations
    return StepReport(
        path=s.path,
        id=s.id,
        kind=s.kind,
        description=s.description,
        timeline=s.timeline,
        status=s.status.value,
        runs=s.runs,
        passed=s.passed,
        failed=s.failed,
        retries=s.retries,
        started_s=round(s.started_s, 6) if s.started_s is not None else None,
        duration_s=round(s.duration_s, 6),
        max_duration_s=round(d.max_s, 6) if d.count else None,
        p50_duration_s=round(p50, 6) if (p50 := d.percentile(0.5)) is not None else None,
        error=s.error,
        skipped_reason=s.skipped_reason,
    )




def step_errors(steps: list[StepResult]) -> list[ErrorReport]:
    """An error per failed step (an `assert` step's failure is its assertion's, not an error)."""
    return [
        ErrorReport(
            source=ErrorKind.STEP,
            step=step.path,
            message=f"step {step.path} ({step.description}): {step.error}"
            + (f" [failed {step.failed} of {step.runs} runs]" if step.runs > 1 else ""),
            detail=step.traceback,
        )
        for step in steps
        if step.status is StepStatus.FAILED and step.kind != "assert"
    ]


def assertion_report(a: AssertionResult) -> AssertionReport:
    return AssertionReport(
        id=a.id,
        type=a.type,
        passed=a.passed,
        expected=a.expected,
        actual=a.actual,
        message=a.message,
        evidence=a.evidence,
        weight=a.weight,
        required=a.required,
        error=a.error,
        inline=a.inline,
    )


def leak_report(a: LeakAnalysis) -> LeakReport:
    fit = a.fit
    return LeakReport(
        series=a.series,
        verdict=a.verdict.value,
        reason=a.reason,
        unit="count" if a.floor_per_h == 0 else "bytes",
        slope_per_h=round(fit.slope_per_h, 3) if fit else None,
        slope_low_per_h=round(fit.slope_low_per_h, 3) if fit else None,
        slope_high_per_h=round(fit.slope_high_per_h, 3) if fit else None,
        trend_tau=round(fit.tau, 4) if fit else None,
        trend_p=round(fit.p, 6) if fit else None,
        floor_per_h=a.floor_per_h,
        detectable_per_h=round(fit.detectable_per_h, 3) if fit else None,
        windows=a.windows,
        analysed_s=a.analysed_s,
        trend_line=(
            ((round(fit.line[0][0], 3), round(fit.line[0][1], 1)),
             (round(fit.line[1][0], 3), round(fit.line[1][1], 1)))
            if fit else None
        ),
    )  # fmt: skip


def bus_report(bus: Bus, drain: str | None = None) -> BusReport:
    overall = LatencyHistogram()
    for link in bus.links.values():
        overall.merge(link.stats.latency)
    return BusReport(
        endpoint=bus.endpoint,
        messages_routed=bus.messages_routed,
        refused=bus.refused,
        dead_letters=bus.dead_letters,
        retries=sum(lk.stats.retries for lk in bus.links.values()),
        rejected_frames=dict(bus.rejected),
        delivery_latency=overall.summary(),
        drain=drain,
    )


def event_log_report(events: EventLog, storage: EventStorage) -> EventLogReport:
    return EventLogReport(
        file=str(events.spill_path) if storage is not EventStorage.OFF else None,
        storage=storage,
        emitted=dict(events.counts),
        omitted=dict(events.omitted),
        bytes_written=events.bytes_written,
        summary_from=events.summary_from,
        full_from=events.full_from,
    )


def coordinator_report(
    loop: LoopWatch,
    sampler: Sampler | None = None,
    leaks: tuple[LeakAnalysis, ...] = (),
    leaks_until: float | None = None,
) -> CoordinatorReport:
    user, system = loop.cpu_s()
    return CoordinatorReport(
        pid=os.getpid(),
        cpu_user_s=round(user, 4),
        cpu_system_s=round(system, 4),
        peak_rss_bytes=LoopWatch.peak_rss(),
        loop_lag=loop.whole().summary(),
        loop_lag_by_phase={p.value: h.summary() for p, h in loop.lag.items()},
        cpu_s_by_phase={p.value: round(cpu, 4) for p, cpu in loop.cpu_by_phase.items()},
        sampler=sampler_report(sampler) if sampler is not None else None,
        rss_series=[(round(t, 3), v) for t, v in sampler.coordinator.rss.points]
        if sampler is not None
        else [],
        uss_peak_bytes=sampler.coordinator.uss_peak or None if sampler is not None else None,
        leak=[leak_report(a) for a in leaks],
        series=chart_series(sampler.coordinator, leaks, leaks_until) if sampler else {},
    )


def sampler_report(sampler: Sampler) -> SamplerReport:
    cost = sampler.cost
    return SamplerReport(
        agents=len(sampler.agents),
        rounds=cost.rounds,
        readings=cost.readings,
        cpu_s=round(cost.cpu_s, 4),
        max_round_s=round(cost.max_round_s, 4),
        interval_s=sampler.base_interval_s,
        final_interval_s=cost.interval_s,
    )
