"""Runs one scenario end to end: launch, script, teardown, judge, report, clean up.

The order matters. Agents are stopped before assertions are judged, so final states and stats
are in; the report is written before the private run directory is removed; and every resource
(processes, sockets, the run directory, the event spill file) is released in `finally`, even
when the run is cancelled or the runner itself breaks.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from pydantic import JsonValue

from orchestrator.cluster.cluster import (
    AgentHandle,
    AgentInitError,
    Cluster,
    ClusterSettings,
    RestartPolicy,
    StartupError,
)
from orchestrator.cluster.launchers import LAUNCHERS, AgentLimits, default_launcher
from orchestrator.cluster.sampler import COORDINATOR, USS_EVERY, Sampler
from orchestrator.events import (
    DEFAULT_MAX_BYTES,
    AgentMemoryNow,
    ErrorKind,
    Event,
    EventLog,
    EventStorage,
    RunError,
    RunFinished,
    RunStarted,
    SoakIteration,
    SoakLocating,
    SoakProgress,
)
from orchestrator.judge.judges import (
    PROCESS_SERIES,
    AssertionResult,
    ErrorFact,
    Facts,
    MemoryFact,
)
from orchestrator.leak import LeakAnalysis, LeakVerdict, analyse
from orchestrator.report.html import write_html
from orchestrator.report.model import (
    EXIT_CODES,
    EXIT_INVALID,
    AgentReport,
    ErrorReport,
    LocateReport,
    ScenarioReport,
    SoakReport,
    Timings,
    Verdict,
    VerificationReport,
)
from orchestrator.rules import RunView
from orchestrator.run import live
from orchestrator.run.diagnostics import agent_lines, diagnose
from orchestrator.run.executor import Executor, PendingWait, StepResult
from orchestrator.run.judging import Judgement, no_events
from orchestrator.run.loopwatch import LoopWatch, Phase
from orchestrator.run.reporting import (
    agent_metrics,
    agent_report,
    assertion_report,
    bus_report,
    coordinator_report,
    event_log_report,
    peak_rss,
    step_errors,
    step_report,
)
from orchestrator.run.rundir import make_run_dir, sweep_stale
from orchestrator.run.verdict import Decision, decide
from orchestrator.run.wire import SOAK_MAX_PER_ROOM, agent_configs, plugin_env, room_members
from orchestrator.scenario.assertions import Assertion, ErrorsAssertion, MemoryAssertion
from orchestrator.scenario.durations import Duration
from orchestrator.scenario.schema import StateCheck
from orchestrator.scenario.spec import Scenario, all_steps
from orchestrator.scenario.steps import AssertStep
from protocol import AgentStats, CmdTrace
from protocol.liveness import Liveness

LOG_TAIL_LINES = 20

AGENT_NICE = 5
"""Agents run this much nicer than the coordinator. Every message passes through the
coordinator's one loop, so when agents outnumber cores it must not wait its turn behind
them. Measured with 32 agents ping-ponging 10,000 messages on 2 cores (agents in the
coordinator's session, see SpawnLauncher): at equal priority 2,190 msg/s and the loop's
script-phase lag p50 9.3 ms, max 29 ms; at +5, 2,340 msg/s and p50 6.1 ms, max 26 ms (in
sessions of their own, as before: 1,930 msg/s, p50 11.6 ms, max 41-53 ms). Agents compete
with each other exactly as before."""



@dataclass(frozen=True, slots=True)
class SoakOptions:
    """A soak run: the script on repeat, on the same agents, for `duration_s`."""

    duration_s: float
    warmup_s: float
    """Samples in the first `warmup_s` after READY are left out of the leak verdicts."""
    sample_interval_s: float = 1.0
    progress_every_s: float = 60.0
    """How often a soak reports its progress (a `soak.progress` event, a line on the console)
    and checkpoints report.json."""
    trace_leaks: bool = False
    """Run tracemalloc in every agent and report the allocation sites that grew after the
    warm-up."""
    locate: bool = True
    """When the soak finds an agent leaking (and did not trace throughout), run a shorter
    traced pass of the leaking agents after it to name the lines (`locate_s`)."""
    locate_for_s: float | None = None
    """The locating pass's length (`--locate-for`); default see `locate_s`."""

    @staticmethod
    def default_warmup(duration_s: float) -> float:
        """A fifth of the run, at most five minutes."""
        return min(300.0, duration_s / 5)

    @property
    def locate_s(self) -> float:
        """The locating pass: as asked, else a quarter of the soak, from 5 s to 5 minutes (5 s
        of a 64 KiB a message leak is megabytes at its line)."""
        if self.locate_for_s is not None:
            return self.locate_for_s
        return min(300.0, max(5.0, self.duration_s / 4))


@dataclass(frozen=True, slots=True)
class RunOptions:
    report_dir: Path | None = None
    """Where report.json and events.jsonl go; default scenario-runs/<timestamp>-<name>/."""
    timeout: Duration | None = None
    """Overrides the scenario's own timeout."""
    keep_run_dir: bool = False
    launcher: str = field(default_factory=default_launcher)
    """`fork` (a template forks the agents) where the system allows it, else `spawn`."""
    bind: str | None = None
    """Where the bus listens (`--bind`); default a private ipc socket in the run directory."""
    startup_timeout_s: float = 30.0
    stop_deadline_s: float = 2.0
    heartbeat_interval_s: float = 0.5
    hung_after_s: float = 3.0
    coordinator_timeout_s: float = 10.0
    inbox_capacity: int = 1024
    sample_interval_s: float = 1.0
    progress_every_s: float = 60.0
    """How often a soak reports its progress (a `soak.progress` event, a line on the console)
    and checkpoints report.json."""
    trace_leaks: bool = False
    """Run tracemalloc in every agent and report the allocation sites that grew after the
    warm-up."""
    seed: int = 0
    """The run's seed; each agent's seed is derived from it (`agent_seed`)."""
    repeat: int | None = None
    """Which run of a `--repeat` this is, from 1 (None when not repeated)."""
    events: EventStorage = EventStorage.FULL
    """What goes to events.jsonl (`--events`)."""
    events_max_bytes: int = DEFAULT_MAX_BYTES
    """The size cap of a `full` events.jsonl (`--events-max-size`)."""
    soak: SoakOptions | None = None
    """Set for `scenario-runner soak`: the script repeats until the duration is spent."""
    diagnose_on_timeout: bool = False
    """Write diagnostics-N.txt when a wait times out (`--diagnose-on-timeout`)."""


def default_report_dir(scenario: Scenario) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return Path("scenario-runs") / f"{stamp}-{scenario.name}"


class ScenarioRun:
    """One run of one scenario; `execute` returns its report and leaves nothing behind."""

    def __init__(
        self,
        scenario: Scenario,
        source: Path,
        options: RunOptions,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        """`on_event` sees every event as it is emitted (live progress, test probes)."""
        self.on_event = on_event
        self.scenario = scenario
        self.source = source
        self.options = options
        self.errors: list[ErrorReport] = []
        self.steps: list[StepResult] = []
        self.assertions: list[AssertionResult] = []
        self.init_errors: list[str] = []
        """Agents that could not initialise (plugins): invalid input, exit code 2."""
        self.members: dict[str, frozenset[str]] = room_members(scenario)
        self.executor: Executor | None = None
        self.events: EventLog | None = None
        self.sampler: Sampler | None = None
        self._waits_on: dict[str, list[str]] = {}
        """Per agent declared hung: the script's waits on it at that moment."""
        self.cluster: Cluster | None = None
        self.stop_reason: str | None = None
        self.agent_reports: list[AgentReport] = []
        self.judgement: Judgement | None = None
        self.loop = LoopWatch()
        self.liveness = Liveness(
            options.heartbeat_interval_s, options.hung_after_s, options.coordinator_timeout_s
        )
        """The link timings, checked against each other (protocol/liveness.py)."""
        self._script_t0 = 0.0
        self._t_start = 0.0
        self._started_at = ""
        self._report_dir = Path()
        self._run_dir = Path()
        """Where and since when: what a soak's checkpoint report needs mid-run."""
        self.iterations = 0
        """Passes of the script (1 unless this is a soak)."""
        self.leaks: dict[str, tuple[LeakAnalysis, ...]] = {}
        self.leaks_until: float | None = None
        """A soak that ran a locating pass: the end of the soak proper (event-log seconds);
        its verdicts, and the series charted, stop there."""
        self.traces: dict[str, JsonValue] = {}
        """`--trace-leaks` or a locating pass: each agent's answer to the final trace report."""
        self.located: LocateReport | None = None
        self._diagnostics = 0
        self.soak_s: float | None = None
        """The soak proper's seconds (its passes), without a locating pass."""

    async def execute(self) -> ScenarioReport:
        # Custom rules are imported here, like plugins in the agents: from the file's folder.
        folder = str(self.source.resolve().parent)
        if folder not in sys.path:
            sys.path.append(folder)
        report_dir = self.options.report_dir or default_report_dir(self.scenario)
        report_dir.mkdir(parents=True, exist_ok=True)
        live.ACTIVE[id(self)] = self  # what --metrics-port serves while the run goes on
        sweep_stale()  # what killed coordinators left behind
        run_dir = make_run_dir()
        try:
            return await self._execute(report_dir, run_dir)
        finally:  # also when cancelled (Ctrl-C) or when the runner itself broke
            live.ACTIVE.pop(id(self), None)
            if not self.options.keep_run_dir:
                shutil.rmtree(run_dir, ignore_errors=True)

    async def _execute(self, report_dir: Path, run_dir: Path) -> ScenarioReport:
        opts = self.options
        started_at = datetime.now(UTC).isoformat()
        events = EventLog(
            report_dir / "events.jsonl", storage=opts.events, max_bytes=opts.events_max_bytes
        )
        if self.on_event is not None:
            events.subscribe(self.on_event)
        judgement = self.judgement = Judgement(self.scenario, events, self.members, opts.events)
        events.flush_every()
        self.loop.start()
        preload = tuple(
            sorted({path.partition(":")[0] for a in self.scenario.agents for path in a.plugins})
        )
        cluster = Cluster(
            run_dir,
            events,
            LAUNCHERS[opts.launcher](preload),
            ClusterSettings(
                liveness=self.liveness,
                inbox_capacity=opts.inbox_capacity,
                env=plugin_env(self.source),
                nice=AGENT_NICE,
                endpoint=opts.bind,
            ),
            on_lost=self._on_lost,
            stop_deadline_s=opts.stop_deadline_s,
        )
        # A soak reads every agent's USS each round (its leak verdict needs the points); the
        # sampler's budget lengthens the interval when that is too costly.
        sampler = Sampler(
            events,
            opts.sample_interval_s,
            uss_every=1 if opts.soak else USS_EVERY,
            preallocate=opts.soak is not None,
        )
        self.events, self.sampler, self.cluster = events, sampler, cluster
        t_start = time.monotonic()
        t_ready = t_script_end = t_start
        self._t_start, self._started_at = t_start, started_at
        self._report_dir, self._run_dir = report_dir, run_dir
        try:
            events.emit(
                RunStarted(scenario=self.scenario.name, file=str(self.source),
                           endpoint=cluster.endpoint)
            )  # fmt: skip
            async with cluster:
                cluster.set_rooms((room, tuple(ids)) for room, ids in self.members.items())
                try:
                    await self._launch(cluster, sampler, run_dir)
                except AgentInitError as exc:
                    self.init_errors = exc.lines
                    for line in exc.lines:
                        self._error(ErrorReport(source=ErrorKind.INIT, message=line))
                except StartupError as exc:
                    self._error(ErrorReport(source=ErrorKind.STARTUP, message=str(exc)))
                t_ready = time.monotonic()
                self.loop.enter(Phase.SCRIPT)
                if not self.errors:
                    sampler.start()
                    await self._script(cluster, events, t_ready)
                t_script_end = time.monotonic()
                self.loop.enter(Phase.END)
                # What is still on its way (replies, retransmissions under loss) is delivered
                # before anyone is stopped: within the time the bus would retry a frame
                # anyway (a quiet run drains in one round trip).
                await cluster.drain(max(opts.stop_deadline_s, cluster.retry_budget_s))
                sampler.stop()
                await sampler.sample_now("before-stop")
                await cluster.stop(opts.stop_deadline_s)
        except Exception as exc:
            self._error(
                ErrorReport(
                    source=ErrorKind.RUNNER,
                    message=f"{type(exc).__name__}: {exc}",
                    detail=traceback.format_exc(),
                )
            )
        finally:
            sampler.stop()
            cluster.close()
        t_end = time.monotonic()
        try:
            await self._judge_all(cluster, sampler, judgement, t_script_end - t_ready)
        except Exception as exc:
            self._error(
                ErrorReport(
                    source=ErrorKind.RUNNER,
                    message=f"assertions: {exc}",
                    detail=traceback.format_exc(),
                )
            )
        for problem in events.listener_errors:
            self._error(ErrorReport(source=ErrorKind.RUNNER, message=f"event listener: {problem}"))
        events.tell_held_rejections()
        events.emit(RunFinished())
        self.loop.stop()
        events.close()
        report = self._report(
            report_dir,
            run_dir,
            cluster,
            sampler,
            events,
            started_at,
            Timings(
                launch_s=t_ready - t_start,
                script_s=t_script_end - t_ready,
                teardown_s=t_end - t_script_end,
                total_s=t_end - t_start,
            ),
        )
        # The page first, report.json last: report.json's arrival means the run is done (an
        # interrupted invocation counts the runs with one), so nothing may follow it.
        try:
            await asyncio.to_thread(write_html, report, report_dir)
        except Exception as exc:  # the page failing is the runner's bug: say so, keep the rest
            report.errors.append(
                ErrorReport(
                    source=ErrorKind.RUNNER,
                    message=f"report.html could not be written: {exc!r}",
                    detail=traceback.format_exc(),
                )
            )
            if report.verdict is not Verdict.ERROR:
                report.verdict, report.exit_code = Verdict.ERROR, EXIT_CODES[Verdict.ERROR]
            why = "the runner could not write report.html"
            report.verification.run_errors.append(why)
            report.verification.reasons.append(why)
        report.write(report_dir)
        return report

    async def _script(self, cluster: Cluster, events: EventLog, t_ready: float) -> None:
        """Run every timeline to its end, the scenario's timeout or a stop condition."""
        timeout = (self.options.timeout or self.scenario.timeout).seconds
        # An action step waits for the agent's own action timeout plus a round trip.
        action_timeout = max(a.action_timeout.seconds for a in self.scenario.agents)
        executor = self.executor = Executor(
            self.scenario,
            cluster,
            events,
            self._inline_judge,
            self.members,
            action_timeout_s=action_timeout + 5.0,
            send_timeout_s=2 * cluster.retry_budget_s,
            seed=self.options.seed,
        )
        if self.options.diagnose_on_timeout:
            executor.on_wait_timeout = self._on_wait_timeout
        self._script_t0 = t_ready
        soak = self.options.soak
        if soak is None:
            self.iterations = 1
            self.steps = await executor.run(t_ready + timeout)
        else:
            # Passes start until the duration is spent; the last one finishes within its own
            # timeout (cutting it at the end would fail its waits for nothing).
            end = t_ready + soak.duration_s
            # The verdicts' statistics (scipy, ~40 MB) load now, in the warm-up: loaded at the
            # first progress line, they were a step in the coordinator's own memory series
            # that its verdict called a 16 GiB/h LEAK.
            await asyncio.to_thread(importlib.import_module, "scipy.stats")
            # Likewise the agents' side of the progress step: the first stats command runs
            # code for the first time in each agent (a step of a few pages in its USS, which
            # at the first progress line fell in the analysed window). Now, in the warm-up.
            await self._trace(cluster, "stats")
            marked = not soak.trace_leaks
            if soak.trace_leaks:
                await self._trace(cluster, "start")
            next_progress = t_ready + soak.progress_every_s
            while (now := time.monotonic()) < end and executor.stop_reason is None:
                if now >= next_progress:
                    await self._progress(cluster, t_ready, end)
                    next_progress = time.monotonic() + soak.progress_every_s
                if not marked and now >= t_ready + soak.warmup_s:
                    await self._trace(cluster, "mark")  # the baseline: the warm-up is over
                    marked = True
                if self.iterations:
                    executor.again()
                self.iterations += 1
                events.emit(
                    SoakIteration(iteration=self.iterations, elapsed_s=round(now - t_ready, 3),
                                  remaining_s=round(end - now, 3))
                )  # fmt: skip
                self.steps = await executor.run(time.monotonic() + timeout)
            self.soak_s = time.monotonic() - t_ready
            if soak.trace_leaks:
                if not marked:
                    self._error(ErrorReport(source=ErrorKind.RUNNER, message=(
                        "--trace-leaks: the soak ended before its warm-up did; no allocation"
                        " sites to report")))  # fmt: skip
                else:
                    self.traces = await self._trace(cluster, "report")
            elif soak.locate and executor.stop_reason is None:
                await self._locate(cluster, executor, timeout)
        self.stop_reason = executor.stop_reason
        for message in executor.rule_errors:
            self._error(ErrorReport(source=ErrorKind.RULE, message=message))

    def elapsed_s(self) -> float:
        """Seconds since the run started (0 before)."""
        return time.monotonic() - self._t_start if self._t_start else 0.0

    async def _progress(self, cluster: Cluster, t_ready: float, end: float) -> None:
        """A soak's progress: each agent's memory now and its USS trend so far (an event the
        console prints), and a checkpoint of report.json, so a soak killed at hour 7 leaves a
        readable report of the first 7 hours."""
        sampler = self.sampler
        soak = self.options.soak
        if sampler is None or soak is None or self.events is None:
            return
        now = time.monotonic()
        elapsed = now - t_ready
        warming = elapsed <= soak.warmup_s
        # From inside each agent: the interpreter's allocated blocks (a Python-level leak
        # shows here before it shows in memory), one point per progress interval.
        t = self.events.now()
        for agent, stats in (await self._trace(cluster, "stats")).items():
            blocks = stats.get("allocated_blocks") if isinstance(stats, dict) else None
            samples = sampler.agents.get(agent)
            if samples is not None and isinstance(blocks, int):
                samples.floor("blocks", t, blocks)
        self.leaks = await asyncio.to_thread(
            self._leak_verdicts, sampler, 0.0 if warming else soak.warmup_s
        )
        rows = []
        for agent, samples in sampler.agents.items():
            uss = next((a for a in self.leaks.get(agent, ()) if a.series == "uss"), None)
            rows.append(
                AgentMemoryNow(
                    agent=agent,
                    rss=samples.last_rss,
                    uss=samples.floors["uss"].last() if "uss" in samples.floors else None,
                    uss_per_h=round(uss.fit.slope_per_h, 1) if uss and uss.fit else None,
                    verdict="warming up" if warming else uss.verdict.value if uss else "none yet",
                )
            )
        self.events.emit(
            SoakProgress(iteration=self.iterations, elapsed_s=round(elapsed, 3),
                         remaining_s=round(max(0.0, end - now), 3), agents=rows)
        )  # fmt: skip
        t_start = self._t_start
        report = self._report(
            self._report_dir,
            self._run_dir,
            cluster,
            sampler,
            self.events,
            self._started_at,
            Timings(launch_s=t_ready - t_start, script_s=elapsed, teardown_s=0.0,
                    total_s=now - t_start),
            checkpoint=f"checkpoint: the soak was still running at {Duration(round(elapsed))}"
            f" of {Duration(soak.duration_s)} (pass {self.iterations}); no assertion judged",
        )  # fmt: skip
        await asyncio.to_thread(report.write, self._report_dir)

    async def _locate(self, cluster: Cluster, executor: Executor, timeout: float) -> None:
        """After a soak: judge it, and if an agent leaks, run the script on for `locate_s`
        with tracemalloc in the leaking agents only, to name the lines that allocate what
        grows. The verdicts are the soak's own, made before any tracing (tracing perturbs an
        agent's memory: docs/leaks.md), and the clean agents are never traced."""
        soak, sampler, events = self.options.soak, self.sampler, self.events
        assert soak is not None and sampler is not None and events is not None
        self.leaks = await asyncio.to_thread(self._leak_verdicts, sampler)
        self.leaks_until = events.now()
        leaking = [
            agent
            for agent, verdicts in self.leaks.items()
            if agent != COORDINATOR
            and any(v.series in PROCESS_SERIES and v.verdict is LeakVerdict.LEAK for v in verdicts)
        ]
        if not leaking:
            return
        t0 = time.monotonic()
        located = self.located = LocateReport(agents=leaking, from_s=round(events.now(), 3))
        events.emit(SoakLocating(agents=leaking, duration_s=soak.locate_s))
        await self._trace(cluster, "start", leaking)
        # tracemalloc's own tables grow as it starts seeing allocations: the baseline waits a
        # quarter of the pass, and what grows after it is the leak.
        mark_at, end = t0 + soak.locate_s / 4, t0 + soak.locate_s
        marked = False
        while (now := time.monotonic()) < end and executor.stop_reason is None:
            if not marked and now >= mark_at:
                await self._trace(cluster, "mark", leaking)
                marked = True
            executor.again()
            located.passes += 1
            self.steps = await executor.run(time.monotonic() + timeout)
        if marked:
            self.traces = await self._trace(cluster, "report", leaking)
        located.duration_s = round(time.monotonic() - t0, 3)

    async def _trace(
        self,
        cluster: Cluster,
        step: Literal["start", "mark", "report", "stats"],
        only: list[str] | None = None,
    ) -> dict[str, JsonValue]:
        """Send a tracing step to every live agent (or those in `only`) at once; their answers
        (a failure is an error of the run, naming the agent)."""
        agents = [
            a
            for a, h in cluster.handles.items()
            if not h.state.ended and (only is None or a in only)
        ]

        async def one(agent: str) -> JsonValue:
            result = await cluster.command(agent, CmdTrace(step=step), TRACE_TIMEOUT_S)
            if not result.ok:
                raise RuntimeError(result.error)
            return result.value

        answers = await asyncio.gather(*(one(a) for a in agents), return_exceptions=True)
        values: dict[str, JsonValue] = {}
        for agent, answer in zip(agents, answers, strict=True):
            if isinstance(answer, BaseException):
                self._error(ErrorReport(source=ErrorKind.RUNNER, agent=agent,
                                        message=f"tracing ({step}): {answer}"))  # fmt: skip
            else:
                values[agent] = answer
        return values

    async def _judge_all(
        self, cluster: Cluster, sampler: Sampler, judgement: Judgement, script_s: float
    ) -> None:
        """Every assertion, once the agents have stopped (final states and stats are in)."""
        final_states = {
            agent: h.bye.stats.state for agent, h in cluster.handles.items() if h.bye
        }
        if self.leaks_until is None and (
            self.options.soak is not None or _asks_for_leaks(self.scenario)
        ):
            self.leaks = await asyncio.to_thread(self._leak_verdicts, sampler)
        facts = self._facts(sampler, script_s)
        facts.final_states = final_states
        self.agent_reports = self._agent_reports(cluster, sampler)
        facts.view = RunView(
            self.scenario.name,
            judgement.log_so_far(),
            MappingProxyType(final_states),
            MappingProxyType({a.id: agent_metrics(a) for a in self.agent_reports}),
            tuple(self.scenario.agent_ids),
        )
        inline = list(self.executor.inline.values()) if self.executor else []
        self.assertions = await judgement.final(facts, inline)

    async def _launch(self, cluster: Cluster, sampler: Sampler, run_dir: Path) -> None:
        configs = agent_configs(
            self.scenario,
            run_dir,
            self.options.seed,
            self.options.repeat,
            SOAK_MAX_PER_ROOM if self.options.soak else None,
        )
        for agent_id in self.scenario.agent_ids:
            agent_spec = self.scenario.agent_spec(agent_id)
            spec = agent_spec.restart
            if spec is not None:
                cluster.restart_policies[agent_id] = RestartPolicy(
                    frozenset(spec.on), spec.max, spec.within.seconds, spec.backoff.seconds
                )
            limits = agent_spec.limits
            cluster.limits[agent_id] = AgentLimits(
                data_bytes=None if limits.memory is None else int(limits.memory),
                rss_soft=limits.soft_bytes,
                rss_hard=limits.hard_bytes,
                cpu_s=None if limits.cpu is None else limits.cpu.seconds,
                open_files=limits.open_files,
            )
        cluster.on_limit = self._on_limit
        cluster.on_hung = self._note_waits
        sampler.watch = cluster.check_memory
        await cluster.launch(configs, self.options.startup_timeout_s)

        def restarted(handle: AgentHandle) -> None:  # started again: measure the new process
            store = handle.ready_info.store_path if handle.ready_info else None
            sampler.track(handle.id, handle.pid, store)

        cluster.on_restarted = restarted
        for handle in cluster.handles.values():
            store = handle.ready_info.store_path if handle.ready_info else None
            sampler.track(handle.id, handle.pid, store)
        await sampler.sample_now("ready")

    # -- judging ------------------------------------------------------------------------------
    def _facts(self, sampler: Sampler, script_s: float) -> Facts:
        """What the judges read besides the events they folded."""
        steps = self.executor.results.values() if self.executor else []
        handles = self.cluster.handles if self.cluster else {}
        return Facts(
            view=RunView(self.scenario.name, no_events, agents=tuple(self.scenario.agent_ids)),
            step_durations={s.id: s.durations for s in steps if s.id is not None},
            script_s=script_s,
            memory={
                agent: MemoryFact(
                    peak_rss=peak_rss(self._bye_stats(agent), samples),
                    uss_peak=samples.uss_peak or None,
                    leaks=self.leaks.get(agent),
                    top_site=_top_site(self.traces.get(agent)),
                )
                for agent, samples in sampler.agents.items()
            },
            errors=self.error_facts() + self._step_error_facts(),
            actions={
                agent: tuple(a.name for a in h.ready_info.actions)
                for agent, h in handles.items()
                if h.ready_info is not None
            },
        )

    def _leak_verdicts(
        self, sampler: Sampler, warmup: float | None = None
    ) -> dict[str, tuple[LeakAnalysis, ...]]:
        """Each agent's leak verdict per series (blocking: scipy; run in a thread). `warmup`:
        the soak's own by default."""
        soak = self.options.soak
        if warmup is None:
            warmup = soak.warmup_s if soak is not None else 0.0
        verdicts: dict[str, tuple[LeakAnalysis, ...]] = {}
        everyone = [*sampler.agents.items(), (COORDINATOR, sampler.coordinator)]
        for agent, samples in everyone:
            verdicts[agent] = tuple(
                analyse(
                    name,
                    samples.floors[name].points,
                    warmup_s=warmup,
                    counts=name in COUNT_SERIES,
                )
                for name in LEAK_SERIES
                if samples.floors.get(name)  # a series never measured is left out
            )
        return verdicts

    def _bye_stats(self, agent: str) -> AgentStats | None:
        handle = self.cluster.handles.get(agent) if self.cluster else None
        return handle.bye.stats if handle and handle.bye else None

    async def _inline_judge(
        self, assertion: Assertion, ident: str, timeout: float
    ) -> AssertionResult:
        """An `assert` step: its judge's state now, state read live within the step's budget."""
        assert self.executor is not None and self.sampler and self.judgement
        executor = self.executor

        async def live(check: StateCheck) -> tuple[bool, str]:
            return await executor.read_state(check, timeout)

        facts = self._facts(self.sampler, time.monotonic() - self._script_t0)
        facts.live_state = live
        return await self.judgement.inline(assertion, ident, facts)

    def error_facts(self) -> list[ErrorFact]:
        """Every error so far, classified: the runner's own and those the agents reported
        (collected as their events arrive, so asking costs no pass over the log)."""
        agents = self.judgement.agent_errors if self.judgement else []
        return [ErrorFact(e.source, e.agent, e.message) for e in self.errors] + agents

    def _step_error_facts(self) -> list[ErrorFact]:
        """The steps that failed so far, as errors of kind `step` (what an `errors` assertion
        counts; the verdict reads the steps themselves)."""
        results = list(self.executor.results.values()) if self.executor else []
        return [ErrorFact(e.source, e.agent, e.message) for e in step_errors(results)]

    def _error(self, report: ErrorReport) -> None:
        """Collect an error of the run, and put it in the event stream."""
        self.errors.append(report)
        if self.events is not None:
            self.events.emit(
                RunError(agent=report.agent, error_kind=report.source, message=report.message)
            )

    def _on_lost(self, handle: AgentHandle) -> None:
        assert handle.exit is not None
        detail = _log_tail(handle.spec.log_path)
        if handle.hung is not None:
            kind = ErrorKind.HUNG
            message = f"agent {handle.id} (pid {handle.pid}) hung: {handle.hung}; it was killed"
            # What it was doing and last said and heard, who waited on it, and its stacks
            # (which also went to its log).
            about = agent_lines(handle, self.events.ring if self.events else (), time.monotonic())
            waits = self._waits_on.pop(handle.id, [])
            detail = "\n".join(
                about + (["waits on it:", *waits] if waits else []) + ["", handle.diagnosis or ""]
            ).rstrip() + "\n"
        else:
            kind = ErrorKind.CRASH
            message = (
                f"agent {handle.id} (pid {handle.pid}) died unexpectedly: "
                f"{handle.exit.describe()}"
            )
        if handle.gave_up is not None:
            message += f"; {handle.gave_up}"
        self._error(
            ErrorReport(
                source=kind,
                agent=handle.id,
                message=message,
                detail=detail,
            )
        )

    def _note_waits(self, handle: AgentHandle) -> None:
        """The script's waits on an agent declared hung, noted now: they fail the moment the
        hang is known, well before its stacks are taken and its exit reported (_on_lost)."""
        self._waits_on[handle.id] = [
            f"  {w.actor} {w.path}: {w.what}"
            for w in (self.executor.pending.values() if self.executor else ())
            if w.agent == handle.id
        ]

    def _on_limit(self, handle: AgentHandle) -> None:
        self._error(
            ErrorReport(
                source=ErrorKind.LIMIT,
                agent=handle.id,
                message=f"agent {handle.id} (pid {handle.pid}) went past a limit: {handle.limit}",
                detail=None,
            )
        )

    def _on_wait_timeout(self, wait: PendingWait, failure: str) -> None:
        self.write_diagnostics(f"{wait.path} ({wait.actor}) failed: {failure}")

    def write_diagnostics(self, why: str) -> Path | None:
        """Write why the run does not move (diagnostics.py) to its report directory, as
        diagnostics-N.txt: on SIGUSR1 to the coordinator, or when a wait times out
        (`--diagnose-on-timeout`, at most MAX_DIAGNOSTICS a run). The run goes on."""
        if self.cluster is None or self.events is None or self._diagnostics >= MAX_DIAGNOSTICS:
            return None
        self._diagnostics += 1
        text = diagnose(
            self.executor.pending.values() if self.executor else (),
            self.cluster.handles,
            self.events.ring,
            title=f"{self.scenario.label} at {self.elapsed_s():.1f}s: {why}",
        )
        path = self._report_dir / f"diagnostics-{self._diagnostics}.txt"
        path.write_text(text, encoding="utf-8")
        return path

    # -- verdict and report ---------------------------------------------------------------
    def decide(self, events: EventLog) -> Decision:
        if self.init_errors:  # invalid input (a plugin): nothing was judged
            return Decision(Verdict.ERROR, 0.0, 1.0, list(self.init_errors), list(self.init_errors))
        return decide(
            self.assertions,
            self.steps,
            self.error_facts(),
            [a for a in self.scenario.assertions if isinstance(a, ErrorsAssertion)]
            + [
                s.assert_
                for _, s in all_steps(self.scenario)
                if isinstance(s, AssertStep) and isinstance(s.assert_, ErrorsAssertion)
            ],
            self.scenario.verification.threshold,
            self.stop_reason,
        )

    def _report(
        self,
        report_dir: Path,
        run_dir: Path,
        cluster: Cluster,
        sampler: Sampler,
        events: EventLog,
        started_at: str,
        timings: Timings,
        checkpoint: str | None = None,
    ) -> ScenarioReport:
        """The run's report; with `checkpoint` (why the run is not over), a soak's report of
        what is known so far: verdict ERROR with that reason, no assertions judged yet, and
        nothing of the run's state changed by making it."""
        if checkpoint is None:
            decision = self.decide(events)
        else:
            decision = Decision(Verdict.ERROR, 0.0, self.scenario.verification.threshold,
                                [checkpoint], [checkpoint])  # fmt: skip
        verdict = decision.verdict
        errors = list(self.errors)
        for fact in self.judgement.agent_errors if self.judgement else []:
            errors.append(ErrorReport(source=fact.kind, agent=fact.agent,
                                      message=fact.message))  # fmt: skip
        steps = (
            self.steps
            if checkpoint is None or self.executor is None
            else list(self.executor.results.values())
        )
        errors += step_errors(steps)
        if checkpoint is None:
            self.errors = errors
        agents = (
            self.agent_reports
            if self.agent_reports and checkpoint is None
            else self._agent_reports(cluster, sampler)
        )
        soak = self.options.soak
        scenario = self.scenario
        return ScenarioReport(
            scenario=scenario.name,
            description=scenario.description,
            file=str(self.source),
            verdict=verdict,
            exit_code=EXIT_INVALID if self.init_errors else EXIT_CODES[verdict],
            started_at=started_at,
            duration_s=round(timings.total_s, 6),
            timings=timings,
            tags=list(scenario.tags),
            variant=scenario.label,
            parameters=dict(scenario.parameters),
            repeat=self.options.repeat,
            seed=self.options.seed,
            verification=VerificationReport(
                score=round(decision.score, 6),
                threshold=decision.threshold,
                assertions_passed=sum(1 for a in self.assertions if a.passed),
                assertions_failed=sum(1 for a in self.assertions if not a.passed),
                reasons=decision.reasons,
                run_errors=decision.run_errors,
            ),
            stop_reason=self.stop_reason,
            soak=SoakReport(
                duration_s=soak.duration_s,
                warmup_s=soak.warmup_s,
                iterations=self.iterations,
                elapsed_s=round(self.soak_s if self.soak_s is not None else timings.script_s, 3),
                locate=self.located,
                complete=checkpoint is None,
            )
            if soak is not None
            else None,
            steps=[step_report(s) for s in steps],
            assertions=[assertion_report(a) for a in self.assertions],
            errors=errors,
            agents=agents,
            bus=bus_report(cluster.bus, cluster.drain_outcome),
            events_file=str(events.spill_path) if events.storage is not EventStorage.OFF else "",
            events=events.last_id,
            event_log=event_log_report(events, self.options.events),
            coordinator=coordinator_report(
                self.loop, sampler, self.leaks.get(COORDINATOR, ()), self.leaks_until
            ),
            report_dir=str(report_dir),
            run_dir=str(run_dir) if self.options.keep_run_dir else None,
        )

    def _agent_reports(self, cluster: Cluster, sampler: Sampler) -> list[AgentReport]:
        return [
            agent_report(
                handle,
                sampler.agents.get(agent),
                self.options.launcher,
                self.leaks.get(agent, ()),
                self.traces.get(agent),
                self.leaks_until,
            )
            for agent, handle in cluster.handles.items()
        ]


LEAK_SERIES = ("uss", "pss", "rss", "fds", "threads", "store", "blocks")
"""`store`, the agent's SQLite store on disk, is judged and reported as a series of its own:
a growing store is then neither mistaken for the process leaking nor hides a leak. `pss` (USS
plus a fair share of the pages the agent shares) and `blocks`, the interpreter's allocated
memory blocks from inside the agent (one point per progress interval), are reported beside
them too."""
MAX_DIAGNOSTICS = 20
"""Diagnostics files a run writes at most (a wait timing out in a soak's every pass would
otherwise write thousands)."""
TRACE_TIMEOUT_S = 60.0
"""A tracemalloc snapshot of a large heap takes seconds."""
COUNT_SERIES = frozenset({"fds", "threads", "blocks"})


def _top_site(trace: JsonValue) -> str | None:
    """'file:line (+size)' of the site that grew most, from an agent's trace report."""
    if not isinstance(trace, dict) or not isinstance(sites := trace.get("sites"), list):
        return None
    if not sites or not isinstance(site := sites[0], dict):
        return None
    grown = site.get("size_diff_bytes")
    size = ""
    if isinstance(grown, int):
        size = f" (+{grown / 2**20:.1f} MiB)" if grown >= 2**20 else f" (+{grown / 1024:.1f} KiB)"
    where = str(site.get("file"))
    with contextlib.suppress(ValueError):
        where = str(Path(where).relative_to(Path.cwd()))
    return f"{where}:{site.get('line')}{size}"


def _asks_for_leaks(scenario: Scenario) -> bool:
    """A `memory` assertion with a `leak` limit, at the end or in an `assert` step."""
    candidates: list[Assertion] = list(scenario.assertions)
    candidates += [s.assert_ for _, s in all_steps(scenario) if isinstance(s, AssertStep)]
    return any(
        isinstance(a, MemoryAssertion)
        and (a.memory.leak is not None or a.memory.growth is not None)
        for a in candidates
    )


def _log_tail(path: Path) -> str | None:
    with contextlib.suppress(OSError):
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(lines[-LOG_TAIL_LINES:]) or None
    return None


async def run_scenario(
    scenario: Scenario,
    source: Path,
    options: RunOptions,
    on_event: Callable[[Event], None] | None = None,
) -> ScenarioReport:
    return await ScenarioRun(scenario, source, options, on_event).execute()
