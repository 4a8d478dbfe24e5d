"""Runs one scenario end to end: launch, script, teardown, judge, report, clean up.

The order matters. Agents are stopped before assertions are judged, so final states and stats
are in; the report is written before the private run directory is removed; and every resource
(processes, sockets, the run directory, the event spill file) is released in `finally`, even
when the run is cancelled or the runner itself breaks.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from orchestrator.assertions import AssertionResult, evaluate
from orchestrator.bus import Bus, Link
from orchestrator.durations import Duration
from orchestrator.events import Event, EventKind, EventLog
from orchestrator.executor import Executor, StepResult, StepStatus
from orchestrator.launchers import LAUNCHERS, LaunchSpec
from orchestrator.metrics import LatencyHistogram
from orchestrator.report import (
    EXIT_CODES,
    EXIT_INVALID,
    ActionReport,
    AgentReport,
    AssertionReport,
    BusReport,
    ErrorReport,
    MemoryReport,
    ScenarioReport,
    StepReport,
    Timings,
    Verdict,
)
from orchestrator.sampler import AgentSamples, Sampler
from orchestrator.scenario import ActionCallSpec, ModelSpec, Scenario, channel_type
from orchestrator.supervisor import AgentInitError, AgentProcess, StartupError, Supervisor
from protocol import (
    ActionCallConfig,
    AgentConfig,
    AgentStats,
    ChannelType,
    FixtureConfig,
    FixturesModelConfig,
    ModelConfig,
    OpenAIModelConfig,
    RetentionConfig,
    RoomConfig,
    RuleConfig,
    RulesModelConfig,
)

LOG_TAIL_LINES = 20


@dataclass(frozen=True, slots=True)
class RunOptions:
    report_dir: Path | None = None
    """Where report.json and events.jsonl go; default scenario-runs/<timestamp>-<name>/."""
    timeout: Duration | None = None
    """Overrides the scenario's own timeout."""
    keep_run_dir: bool = False
    launcher: str = "spawn"
    startup_timeout_s: float = 30.0
    stop_deadline_s: float = 2.0
    heartbeat_interval_s: float = 0.5
    hung_after_s: float = 3.0
    coordinator_timeout_s: float = 10.0
    inbox_capacity: int = 1024
    sample_interval_s: float = 1.0


def default_report_dir(scenario: Scenario) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return Path("scenario-runs") / f"{stamp}-{scenario.name}"


def agent_configs(scenario: Scenario, run_dir: Path) -> list[AgentConfig]:
    configs = []
    for agent in scenario.agents:
        rooms = [
            RoomConfig(id=r.id, channel=ChannelType(channel_type(r.type)), members=list(r.members))
            for r in scenario.rooms
            if agent.id in r.members
        ]
        configs.append(
            AgentConfig(
                agent_id=agent.id,
                agent_dir=str(run_dir / "agents" / agent.id),
                name=agent.name,
                bio=agent.bio,
                model=model_config(agent.model),
                rooms=rooms,
                plugins=list(agent.plugins),
                settings=dict(agent.settings),
                retention=RetentionConfig(
                    max_per_room=agent.memory.max_per_room,
                    max_age_s=agent.memory.max_age.seconds if agent.memory.max_age else None,
                ),
                action_timeout_s=agent.action_timeout.seconds,
            )
        )
    return configs


def plugin_env(source: Path) -> dict[str, str]:
    """Plugins are imported by path relative to the scenario file's folder (as well as from
    wherever Python finds them), so `plugins.todo:plugin` next to the file works from any
    working directory."""
    folder = str(source.resolve().parent)
    existing = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": folder if not existing else f"{folder}{os.pathsep}{existing}"}


def _calls(calls: list[ActionCallSpec]) -> list[ActionCallConfig]:
    return [ActionCallConfig(name=c.name, params=dict(c.params)) for c in calls]


def model_config(spec: ModelSpec | None) -> ModelConfig:
    """The wire form of an agent's model; no model means rules that never answer."""
    if spec is None or spec.rules is not None:
        rules = spec.rules if spec is not None and spec.rules is not None else []
        return RulesModelConfig(
            rules=[
                RuleConfig(
                    contains=r.when.contains,
                    regex=r.when.regex,
                    reply=r.reply,
                    actions=_calls(r.actions),
                )
                for r in rules
            ]
        )
    if spec.fixtures is not None:
        return FixturesModelConfig(
            fixtures=[
                FixtureConfig(
                    position=f.match.position if f.match else None,
                    prompt_contains=f.match.prompt_contains if f.match else None,
                    prompt_regex=f.match.prompt_regex if f.match else None,
                    reply=f.reply,
                    actions=_calls(f.actions),
                    label=f"model.fixtures[{i}]",
                )
                for i, f in enumerate(spec.fixtures)
            ]
        )
    assert spec.openai is not None  # ModelSpec holds exactly one provider
    o = spec.openai
    return OpenAIModelConfig(
        base_url=o.base_url,
        model=o.model,
        api_key_env=o.api_key_env,
        timeout_s=o.timeout.seconds,
        max_retries=o.max_retries,
        temperature=o.temperature,
        system_prompt=o.system_prompt,
    )


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

    async def execute(self) -> ScenarioReport:
        opts = self.options
        report_dir = opts.report_dir or default_report_dir(self.scenario)
        report_dir.mkdir(parents=True, exist_ok=True)
        run_dir = Path(tempfile.mkdtemp(prefix="sr-"))  # 0700, and short enough for ipc paths
        started_at = datetime.now(UTC).isoformat()
        events = EventLog(report_dir / "events.jsonl")
        if self.on_event is not None:
            events.subscribe(self.on_event)
        bus = Bus(
            f"ipc://{run_dir}/bus.sock",
            events,
            heartbeat_interval_s=opts.heartbeat_interval_s,
            hung_after_s=opts.hung_after_s,
        )
        supervisor: Supervisor | None = None
        sampler = Sampler(events, opts.sample_interval_s)
        t_start = time.monotonic()
        t_ready = t_script_end = t_start
        try:
            events.emit(
                EventKind.RUN_STARTED,
                None,
                scenario=self.scenario.name,
                file=str(self.source),
                endpoint=bus.endpoint,
            )
            bus.start()
            bus.set_rooms((r.id, tuple(r.members)) for r in self.scenario.rooms)
            supervisor = Supervisor(LAUNCHERS[opts.launcher], bus, events)
            bus.on_hung = supervisor.on_hung
            supervisor.on_crash = self._on_crash
            try:
                await self._launch(supervisor, sampler, run_dir)
            except AgentInitError as exc:
                self.init_errors = exc.lines
                for line in exc.lines:
                    self.errors.append(ErrorReport(source="init", message=line))
            except StartupError as exc:
                self.errors.append(ErrorReport(source="startup", message=str(exc)))
            t_ready = time.monotonic()
            if not self.errors:
                sampler.start()
                timeout = (opts.timeout or self.scenario.timeout).seconds
                # An action step waits for the agent's own action timeout plus a round trip.
                action_timeout = max(a.action_timeout.seconds for a in self.scenario.agents)
                executor = Executor(bus, events, action_timeout_s=action_timeout + 5.0)
                self.steps = await executor.run(self.scenario.script, t_ready + timeout)
            t_script_end = time.monotonic()
            sampler.sample_all("before-stop")
            sampler.stop()
            await supervisor.stop_all(opts.stop_deadline_s)
        except Exception as exc:
            self.errors.append(
                ErrorReport(
                    source="runner",
                    message=f"{type(exc).__name__}: {exc}",
                    detail=traceback.format_exc(),
                )
            )
        finally:
            sampler.stop()
            if supervisor is not None:
                supervisor.close()
            bus.close()
        t_end = time.monotonic()
        try:
            final_states = {
                agent: link.bye.stats.state
                for agent, link in bus.links.items()
                if link.bye is not None
            }
            self.assertions = evaluate(self.scenario.assertions, events.replay(), final_states)
        except Exception as exc:
            self.errors.append(
                ErrorReport(
                    source="runner", message=f"assertions: {exc}", detail=traceback.format_exc()
                )
            )
        events.emit(EventKind.RUN_FINISHED, None)
        events.close()
        report = self._report(
            report_dir,
            run_dir,
            bus,
            supervisor,
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
        report.write(report_dir)
        if not opts.keep_run_dir:
            shutil.rmtree(run_dir, ignore_errors=True)
        return report

    async def _launch(self, supervisor: Supervisor, sampler: Sampler, run_dir: Path) -> None:
        opts = self.options
        for config in agent_configs(self.scenario, run_dir):
            spec = LaunchSpec(
                agent_id=config.agent_id,
                endpoint=supervisor.bus.endpoint,
                incarnation=1,
                agent_dir=Path(config.agent_dir),
                death_fd=-1,
                heartbeat_interval_s=opts.heartbeat_interval_s,
                coordinator_timeout_s=opts.coordinator_timeout_s,
                inbox_capacity=opts.inbox_capacity,
                env=plugin_env(self.source),
            )
            supervisor.launch(spec, config)
        await supervisor.wait_ready(opts.startup_timeout_s)
        for proc in supervisor.processes.values():
            sampler.track(proc.agent_id, proc.pid)
            sampler.sample(proc.agent_id, "ready")

    def _on_crash(self, proc: AgentProcess) -> None:
        assert proc.exit is not None
        self.errors.append(
            ErrorReport(
                source="agent",
                agent=proc.agent_id,
                message=f"agent {proc.agent_id} (pid {proc.pid}) died unexpectedly:"
                f" {proc.exit.describe()}",
                detail=_log_tail(proc.spec.log_path),
            )
        )

    # -- verdict and report ---------------------------------------------------------------
    def verdict(self) -> Verdict:
        if self.errors or any(s.status is not StepStatus.PASSED for s in self.steps):
            return Verdict.ERROR
        if not self.assertions or not all(a.passed for a in self.assertions):
            return Verdict.FAIL
        return Verdict.PASS

    def _report(
        self,
        report_dir: Path,
        run_dir: Path,
        bus: Bus,
        supervisor: Supervisor | None,
        sampler: Sampler,
        events: EventLog,
        started_at: str,
        timings: Timings,
    ) -> ScenarioReport:
        for step in self.steps:
            if step.status is not StepStatus.PASSED:
                self.errors.append(
                    ErrorReport(
                        source="step",
                        step=step.index,
                        message=f"step {step.index} ({step.description}): {step.error}",
                        detail=step.traceback,
                    )
                )
        for event in events.replay():
            if event.kind is EventKind.AGENT_ERROR:
                self.errors.append(
                    ErrorReport(
                        source="agent",
                        agent=event.agent,
                        message=f"agent {event.agent} reported an error: {event.data}",
                    )
                )
        verdict = self.verdict()
        agents = [self._agent_report(link, supervisor, sampler) for link in bus.links.values()]
        overall = LatencyHistogram()
        for link in bus.links.values():
            overall.merge(link.stats.latency)
        return ScenarioReport(
            scenario=self.scenario.name,
            description=self.scenario.description,
            file=str(self.source),
            verdict=verdict,
            exit_code=EXIT_INVALID if self.init_errors else EXIT_CODES[verdict],
            started_at=started_at,
            duration_s=round(timings.total_s, 6),
            timings=timings,
            steps=[
                StepReport(
                    index=s.index,
                    id=s.id,
                    kind=s.kind,
                    description=s.description,
                    status=s.status.value,
                    started_s=round(s.started_s, 6),
                    duration_s=round(s.duration_s, 6),
                    error=s.error,
                )
                for s in self.steps
            ],
            assertions=[
                AssertionReport(
                    id=a.id,
                    type=a.type,
                    passed=a.passed,
                    expected=a.expected,
                    actual=a.actual,
                    message=a.message,
                    evidence=a.evidence,
                )
                for a in self.assertions
            ],
            errors=self.errors,
            agents=agents,
            bus=BusReport(
                endpoint=bus.endpoint,
                messages_routed=bus.messages_routed,
                dead_letters=bus.dead_letters,
                retries=sum(lk.stats.retries for lk in bus.links.values()),
                rejected_frames=dict(bus.rejected),
                delivery_latency=overall.summary(),
            ),
            events_file=str(events.spill_path),
            events=events.last_id,
            report_dir=str(report_dir),
            run_dir=str(run_dir) if self.options.keep_run_dir else None,
        )

    def _agent_report(
        self, link: Link, supervisor: Supervisor | None, sampler: Sampler
    ) -> AgentReport:
        proc = supervisor.processes.get(link.agent_id) if supervisor else None
        exit_info = proc.exit if proc else None
        samples = sampler.agents.get(link.agent_id)
        stats = link.bye.stats if link.bye else None
        ready = link.ready_info
        return AgentReport(
            id=link.agent_id,
            pid=proc.pid if proc else None,
            launcher=self.options.launcher,
            status=proc.status.value if proc else "not launched",
            exit_code=exit_info.returncode if exit_info else None,
            signal=(
                exit_info.describe().removeprefix("killed by ")
                if exit_info and exit_info.signal
                else None
            ),
            escalation=proc.escalation if proc else None,
            startup_s=round(proc.startup_s, 6) if proc and proc.startup_s is not None else None,
            cpu_user_s=exit_info.cpu_user_s if exit_info else None,
            cpu_system_s=exit_info.cpu_system_s if exit_info else None,
            memory=MemoryReport(
                samples=samples.count if samples else 0,
                rss_first_bytes=samples.first_rss if samples else None,
                rss_last_bytes=samples.last_rss if samples else None,
                rss_peak_sampled_bytes=samples.peak_rss if samples and samples.count else None,
                peak_rss_bytes=_peak_rss(stats, samples),
                num_fds=samples.num_fds if samples else None,
                num_threads=samples.num_threads if samples else None,
                rss_series=[(round(t, 3), v) for t, v in samples.rss.points] if samples else [],
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


def _peak_rss(stats: AgentStats | None, samples: AgentSamples | None) -> int | None:
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
