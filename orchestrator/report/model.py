"""The run report: pydantic models (the documented schema of report.json) and its writers.

`schema_version` changes whenever a field changes meaning or disappears; new optional fields
do not bump it. `scenario-runner` writes report.json next to events.jsonl in the report
directory and prints a short summary on the console.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, JsonValue

from orchestrator.events import ErrorKind, EventStorage
from orchestrator.metrics import LatencySummary

SCHEMA_VERSION = 3
"""3: typed events (events.jsonl lines are flat, see `scenario-runner schema --events`), error
kinds from one vocabulary, `event_log`, `coordinator` and `bus.refused`."""


class Verdict(StrEnum):
    PASS = "PASS"
    FAIL = "FAIL"
    """An assertion did not hold."""
    ERROR = "ERROR"
    """The scenario could not be judged: a crash, a failed step, a runner failure."""


EXIT_CODES: dict[Verdict, int] = {Verdict.PASS: 0, Verdict.FAIL: 1, Verdict.ERROR: 3}
EXIT_INVALID = 2


class StepReport(BaseModel):
    """Every run of one step definition (a step in a `repeat` runs many times)."""

    path: str
    """Where the step is in the file: `script[2]`, `actors[0].script[1].repeat.steps[0]`."""
    id: str | None
    kind: str
    description: str
    timeline: str
    """`script`, or the agent of an actor's timeline."""
    status: str
    """passed (every run passed), failed (any run failed) or skipped (never ran)."""
    runs: int
    passed: int
    failed: int
    retries: int
    """Extra attempts after transient failures, over all runs."""
    started_s: float | None
    """First start, seconds since the run's first event."""
    duration_s: float
    """Total over all runs."""
    max_duration_s: float | None
    p50_duration_s: float | None
    error: str | None = None
    """The first failure."""
    skipped_reason: str | None = None


class AssertionReport(BaseModel):
    id: str
    type: str
    passed: bool
    expected: str
    actual: str
    message: str
    evidence: list[int]
    """Event ids (in events.jsonl) that the result is based on."""
    weight: float = 1.0
    required: bool = True
    error: str | None = None
    """Set when the assertion could not be judged (a custom rule raised): the run is an ERROR."""
    inline: bool = False
    """Judged by an `assert` step during the run."""


class VerificationReport(BaseModel):
    score: float
    """Passed weight over total weight, 0 to 1."""
    threshold: float
    assertions_passed: int
    assertions_failed: int
    reasons: list[str]
    """Why the verdict is not PASS (empty for a PASS)."""
    run_errors: list[str] = []
    """The reasons for an ERROR that belong to the run, not to an assertion (a crash, a
    failed step, an uncovered agent error); junit.xml reports them as the run's error."""


class ErrorReport(BaseModel):
    source: ErrorKind
    """What kind of error (`ErrorKind`): the run's own, which are fatal (crash, hung, step,
    rule, init, startup, runner), or what an agent reported (handler, model, service,
    agent)."""
    agent: str | None = None
    step: str | None = None
    message: str
    detail: str | None = None
    """A traceback or the tail of the agent's log, where that helps."""


class ActionReport(BaseModel):
    """An action the agent offers, as it announced it at READY."""

    name: str
    description: str
    similes: list[str]
    parameters: dict[str, JsonValue] | None
    """The JSON Schema of its parameters model, if it has one."""


class LeakReport(BaseModel):
    """One series' leak verdict (orchestrator/leak.py; docs/leaks.md says how it is made)."""

    series: str
    verdict: str
    """`leak`, `no leak` or `inconclusive`."""
    reason: str
    unit: str
    """`bytes` or `count`."""
    slope_per_h: float | None
    slope_low_per_h: float | None
    slope_high_per_h: float | None
    """The Theil-Sen growth per hour of the window minima and its 95% confidence interval."""
    trend_tau: float | None
    trend_p: float | None
    floor_per_h: float
    """The smallest growth called a leak (0 for counts: any steady growth is one)."""
    detectable_per_h: float | None
    """The smallest growth this run could have called a leak."""
    windows: int
    analysed_s: float
    """Seconds of samples after the warm-up."""
    trend_line: tuple[tuple[float, float], tuple[float, float]] | None = None
    """The fitted line at the first and last analysed sample, ((t, value), (t, value)), t in
    seconds since the run's start: what the HTML report draws over the series."""


class LeakSite(BaseModel):
    """An allocation site that grew after the warm-up (`--trace-leaks`, tracemalloc)."""

    file: str
    line: int
    """The most recent frame in the agent's own code (a plugin), else the allocating frame."""
    size_diff_bytes: int
    count_diff: int
    size_bytes: int
    count: int
    traceback: list[str]
    """file:line, most recent first."""


class TraceReport(BaseModel):
    """`--trace-leaks`: what tracemalloc saw in the agent, at the end of the soak."""

    traced_bytes: int
    traced_peak_bytes: int
    tracing_overhead_bytes: int
    """Memory tracemalloc itself used (its own cost)."""
    gc_objects: list[int]
    """Objects tracked by the garbage collector, per generation."""
    sites: list[LeakSite]
    """The sites that grew most since the end of the warm-up, largest first."""


class MemoryReport(BaseModel):
    samples: int
    rss_first_bytes: int | None
    rss_last_bytes: int | None
    rss_peak_sampled_bytes: int | None
    peak_rss_bytes: int | None
    """The agent's own high-water RSS (VmHWM, the kernel's peak since the agent's exec): the
    largest of the value it sent with BYE, the values read at each sample and the sampled RSS.
    Never ru_maxrss, which on Linux carries the coordinator's RSS across the agent's exec."""
    uss_peak_bytes: int | None = None
    """The largest USS (private memory) read: at READY, before STOP, and about every tenth
    periodic sample."""
    num_fds: int | None
    num_threads: int | None
    rss_series: list[tuple[float, int]]
    """(seconds since run start, RSS bytes), decimated to a bounded length keeping peaks."""
    leak: list[LeakReport] = []
    """Soak runs: the leak verdict of each series (uss, pss, rss, fds, threads, store,
    blocks; only uss, rss, fds and threads are what `leak` and `growth` assertions judge)."""
    series: dict[str, list[tuple[float, int]]] = {}
    """Soak runs: each series the verdicts read (the minima kept per interval), decimated to
    at most CHART_POINTS points for charts."""
    trace: TraceReport | None = None
    """Soak runs with --trace-leaks: where the memory went."""


class LocateReport(BaseModel):
    """A soak's locating pass: after the soak proper found leaks, the script ran on with
    tracemalloc in the leaking agents only; their `memory.trace` names the lines."""

    agents: list[str]
    """The agents traced: those with a LEAK verdict on a process series."""
    from_s: float
    """When the pass began (seconds since the run's start): the verdicts and the charted
    series end here."""
    passes: int = 0
    duration_s: float = 0.0


class SoakReport(BaseModel):
    duration_s: float
    """The soak's requested duration (`--duration`)."""
    warmup_s: float
    """Samples before this (from the first READY) are left out of the leak verdicts."""
    iterations: int
    """Passes of the script run."""
    elapsed_s: float
    locate: LocateReport | None = None
    """Set when the soak found leaks and ran a locating pass (not with --trace-leaks, which
    traces throughout, nor with --no-locate)."""
    complete: bool = True
    """False in a checkpoint: the report of a soak still running (or killed since), written
    every `progress` interval; its verdict is ERROR, saying so, and no assertion is judged."""


class AgentReport(BaseModel):
    id: str
    pid: int | None
    launcher: str
    status: str
    exit_code: int | None
    signal: str | None
    escalation: str | None
    restarts: int = 0
    """Times this agent was started again (`restart` faults, its restart policy); the report
    is of its last incarnation."""
    restart_causes: list[str] = []
    """Why, each time: "restart fault", "crash: killed by SIGSEGV", "hang: ..."."""
    killed_by_script: str | None = None
    """The signal of the `kill` fault that ended it: a planned end, not a crash."""
    limit: str | None = None
    """The limit (`limits:`) that ended it, at what value, and how: "memory: RSS 612.0 MiB
    over memory_hard (600.0 MiB); it was killed"."""
    startup_s: float | None
    cpu_user_s: float | None
    cpu_system_s: float | None
    memory: MemoryReport
    messages_in: int
    """Messages delivered to this agent (acknowledged by it)."""
    messages_out: int
    """Messages this agent posted."""
    retries: int
    duplicates_dropped: int
    dead_letters: int
    rejected_frames: int
    handler_errors: int | None
    store_rows: int | None
    """Memories in the agent's store when it stopped."""
    store_evicted: int | None
    """Memories removed by retention (count and age) during the run."""
    store_rows_by_room: dict[str, int] | None
    delivery_latency: LatencySummary
    """From the bus accepting a message to this agent acknowledging it."""
    final_state: dict[str, JsonValue] | None
    actions: list[ActionReport]
    """What the agent can do (built-ins and plugins' actions), from READY."""
    services: list[str]
    """Its services, in the order they started."""


class BusReport(BaseModel):
    endpoint: str
    messages_routed: int
    refused: int = 0
    """Messages the bus refused: an unknown room, or a room the sender is not in."""
    dead_letters: int
    retries: int
    rejected_frames: dict[str, int]
    delivery_latency: LatencySummary
    drain: str | None = None
    """How the wait for what was in flight before STOP went: "quiet in 0.01s", or that it gave
    up (self-sustaining traffic, a link that does not recover) and why."""


class EventLogReport(BaseModel):
    """What the run's event log held, and what of it is in events.jsonl."""

    file: str | None
    storage: EventStorage
    """As asked (`--events`); `summary_from` says when a `full` log reached its size cap."""
    emitted: dict[str, int]
    """Every event of the run, by kind (exact, whatever was written)."""
    omitted: dict[str, int]
    """Events left out of the file, by kind (`summary` or `off` storage, the size cap, and
    `wire.rejected` lines rate-limited to one a second per reason)."""
    bytes_written: int
    summary_from: int | None = None
    """The event id from which a `full` log, at 90% of its size cap, kept only the summary."""
    full_from: int | None = None
    """The event id at which the file reached its size cap: no later event is in it."""


class SamplerReport(BaseModel):
    """The resource sampler's own cost: it reads every agent's process from a thread of the
    coordinator, and lengthens its interval when a round would use more than 5% of a core."""

    agents: int
    rounds: int
    """Periodic rounds (READY and before-STOP rounds are not counted here)."""
    readings: int
    """Agent readings, periodic and on demand."""
    cpu_s: float
    """CPU time of all the readings (the sampler thread's and the on-demand rounds')."""
    max_round_s: float
    interval_s: float
    """The configured interval."""
    final_interval_s: float
    """The interval in force at the end: longer than `interval_s` if the rounds did not fit
    the budget."""


class CoordinatorReport(BaseModel):
    """The runner's own process, measured like an agent's: a tool that slows or grows would
    distort every figure it reports."""

    pid: int
    cpu_user_s: float
    cpu_system_s: float
    """CPU time of the coordinator process during this run (shared with other `--parallel`
    runs in the same process)."""
    peak_rss_bytes: int | None
    """The coordinator's VmHWM at the end of the run."""
    loop_lag: LatencySummary
    """How late a probe timer scheduled every 50 ms ran: how long the event loop was busy
    (or the coordinator waited for a core)."""
    loop_lag_by_phase: dict[str, LatencySummary] = {}
    """The same per phase: `launch` (agents starting), `script`, `end` (teardown, judging)."""
    cpu_s_by_phase: dict[str, float] = {}
    """The coordinator's CPU seconds per phase (with each agent's CPU at READY and before STOP
    in its `sample` events, the cost of the script alone, apart from start-up)."""
    sampler: SamplerReport | None = None
    """What measuring the agents cost the coordinator."""
    rss_series: list[tuple[float, int]] = []
    """The coordinator's own RSS, sampled with the agents'."""
    series: dict[str, list[tuple[float, int]]] = {}
    """Soak runs: as `MemoryReport.series`, for the coordinator."""
    uss_peak_bytes: int | None = None
    leak: list[LeakReport] = []
    """Soak runs: the coordinator's own leak verdicts (a soak tool whose memory grows would
    poison every verdict it gives)."""



class Timings(BaseModel):
    launch_s: float
    """Launch of the first agent to the last READY."""
    script_s: float
    teardown_s: float
    total_s: float


class ScenarioReport(BaseModel):
    schema_version: int = SCHEMA_VERSION
    scenario: str
    description: str
    file: str
    verdict: Verdict
    exit_code: int
    started_at: str
    """Wall-clock start, ISO 8601 UTC."""
    duration_s: float
    timings: Timings
    tags: list[str] = []
    variant: str = ""
    """The scenario's name with its matrix values, `chat[defaults.retries=2]` (the name when
    there is no matrix)."""
    parameters: dict[str, JsonValue] = {}
    """The matrix values of this run, by dotted path."""
    repeat: int | None = None
    """Which run of `--repeat N` this is, from 1."""
    seed: int = 0
    """The invocation's `--seed` (chosen at random and recorded when not given)."""
    verification: VerificationReport
    stop_reason: str | None = None
    """Set when a `stop_when` condition ended the script early."""
    soak: SoakReport | None = None
    """Set for a soak run (`scenario-runner soak`)."""
    steps: list[StepReport]
    assertions: list[AssertionReport]
    errors: list[ErrorReport]
    agents: list[AgentReport]
    bus: BusReport
    events_file: str
    events: int
    event_log: EventLogReport | None = None
    coordinator: CoordinatorReport | None = None
    report_dir: str
    run_dir: str | None
    """The private run directory, when kept with --keep-run-dir (removed otherwise)."""

    def write(self, directory: Path) -> Path:
        """Write report.json atomically: a reader (or a soak killed while checkpointing) sees
        the previous report or this one, never half of one."""
        path = directory / "report.json"
        partial = path.with_suffix(".json.tmp")
        partial.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
        os.replace(partial, path)
        return path
