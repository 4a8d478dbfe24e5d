"""The step executor: runs a scenario's timelines (the main `script` and each actor's), every
step inside its own error boundary.

A step that fails is recorded (which step, what, why) and its timeline goes on, unless the step
is `critical`; transient failures (a timeout, an agent that is gone) are retried as the step's
`retries` say. Nothing here sleeps except a `pause` step, which is the user's own pacing. Waits
are futures on the event log that wake the moment a matching event is emitted, and message and
action waits consume: each starts looking after the event the previous wait of its timeline
matched, so two waits for similar replies do not both match the first one.

Results are kept per step *definition*, not per run: a step inside a `repeat` that runs ten
thousand times is one record with counts and a duration histogram, so a soak run's report
stays small.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import time
import traceback
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from orchestrator.cluster.bus import AgentGone
from orchestrator.cluster.cluster import AgentControl, FaultError
from orchestrator.cluster.faults import WireFault
from orchestrator.events import (
    ActionCompleted,
    ActionFailed,
    AgentCrashed,
    AgentHung,
    AgentRestarting,
    Event,
    EventLog,
    Matcher,
    MessageSent,
    StateChanged,
    StepFinished,
    StepStarted,
    StopConditionMet,
    Subscription,
    Tap,
)
from orchestrator.judge.judges import AssertionResult
from orchestrator.judge.matching import (
    ActionMatcher,
    EventMatcher,
    MessageFilter,
    describe_action_match,
    describe_event_match,
)
from orchestrator.judge.statecheck import check_value, describe_state_check
from orchestrator.metrics import LatencyHistogram
from orchestrator.rules import RuleError, RunView, call_rule
from orchestrator.scenario.assertions import Assertion, assertion_kind
from orchestrator.scenario.durations import Duration
from orchestrator.scenario.schema import Loc, StateCheck, clip, format_loc, quote
from orchestrator.scenario.spec import Scenario
from orchestrator.scenario.steps import (
    WIRE_FAULTS,
    ActionStep,
    AssertStep,
    FaultArgs,
    FaultStep,
    ParallelStep,
    PauseStep,
    RepeatStep,
    SendStep,
    SetStateStep,
    Step,
    StopCondition,
    WaitForStep,
    step_kind,
    walk_step,
    walk_steps,
)
from protocol import CmdAction, CmdGetState, CmdSend, CmdSetState, Result
from protocol.bodies import Command
from protocol.statepath import NO_STATE_AT

RETRY_BACKOFF_S = 0.05
RETRY_BACKOFF_MAX_S = 1.0
"""A retried step waits RETRY_BACKOFF_S before its second attempt, twice that before its third,
and so on up to RETRY_BACKOFF_MAX_S."""

SEND_TIMEOUT_S = 30.0
"""How long a `send` or `set_state` waits for the agent's answer unless told otherwise: the
runner passes the link's retry budget each way (RetryPolicy.budget_s, 15 s), since over a lossy
link the command and its answer may each be retransmitted that long (a fixed 5 s failed runs
at 30% frame loss). An agent that crashes or hangs fails the wait at once."""

InlineJudge = Callable[[Assertion, str, float], Awaitable[AssertionResult]]
"""Judges an `assert` step's assertion now; the string is the result's id, the float the
step's time budget (live state reads must answer within it)."""


class StepStatus(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"
    """Not run (or not finished): the deadline passed, a stop condition held, or an earlier
    critical step of its timeline failed."""


class StepFailure(Exception):
    """A step did not do what it says; the message says what happened instead.

    `transient` failures (a timeout, an agent that is gone) may succeed when tried again, so
    the step's `retries` apply to them; others (an action with the wrong outcome) would fail
    the same way again."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class _Stopped(Exception):
    """Ends a timeline early: a critical step failed."""


@dataclass(slots=True)
class StepResult:
    """Every run of one step definition."""

    path: str
    id: str | None
    kind: str
    description: str
    timeline: str
    critical: bool
    runs: int = 0
    passed: int = 0
    failed: int = 0
    retries: int = 0
    skipped_reason: str | None = None
    started_s: float | None = None
    duration_s: float = 0.0
    durations: LatencyHistogram = field(default_factory=LatencyHistogram)
    error: str | None = None
    """The first failure."""
    last_error: str | None = None
    traceback: str | None = None

    @property
    def status(self) -> StepStatus:
        if self.failed:
            return StepStatus.FAILED
        if self.skipped_reason is not None or self.runs == 0:
            return StepStatus.SKIPPED
        return StepStatus.PASSED


@dataclass
class _Timeline:
    name: str
    """Who it is, for people: `script`, or the actor's agent."""
    key: str
    """Where it is in the file (`script`, `actors[1].script`): two actors of one agent are two
    timelines."""
    cursor: int
    """Message and action waits look after this event id."""
    root: _Timeline | None = None
    """For a `parallel` branch, the timeline it branched from."""

    def floor(self) -> int:
        """The lowest cursor any wait of this timeline may still look after: a branch starts
        at its timeline's cursor, and cursors only move forward."""
        return self.root.cursor if self.root is not None else self.cursor


def describe(step: Step) -> str:
    match step:
        case SendStep(send=a):
            return f"{a.agent} says {quote(a.text, 80)} in {a.room}"
        case WaitForStep(wait_for=w):
            if w.message is not None:
                return "wait for " + MessageFilter.of(w.message).describe()
            if w.action is not None:
                return "wait for " + describe_action_match(w.action)
            if w.state is not None:
                return "wait until " + describe_state_check(w.state)
            assert w.event is not None
            return "wait for " + describe_event_match(w.event)
        case ActionStep(action=a):
            return f"{a.agent} runs {a.name} {clip(json.dumps(a.params, sort_keys=True))}"
        case SetStateStep(set_state=a):
            return f"set {a.agent}'s state {a.path} = {clip(json.dumps(a.value, sort_keys=True))}"
        case AssertStep():
            return "assert " + assertion_kind(step.assert_)
        case RepeatStep(repeat=r):
            times = f"{r.count} times" if r.count is not None else f"for {r.duration}"
            return f"repeat {len(r.steps)} step(s) {times}"
        case ParallelStep(parallel=p):
            return f"run {len(p)} steps at once"
        case PauseStep(pause=d):
            return f"pause {d}"
        case FaultStep(fault=f) if f.op in WIRE_FAULTS:
            window = f"for {f.for_}" if f.for_ is not None else f"for {f.messages} messages"
            return f"fault: {f.op} on the bus, {window}"
        case FaultStep(fault=f):
            more = f" with {f.signal}" if f.signal else ""
            if f.keep_store is False:
                more = " with an empty store"
            return f"fault: {f.op} {f.agent}{more}"
    raise AssertionError(f"unknown step {step!r}")


class Executor:
    def __init__(
        self,
        scenario: Scenario,
        agents: AgentControl,
        events: EventLog,
        judge: InlineJudge,
        members: Mapping[str, frozenset[str]] | None = None,
        action_timeout_s: float = 30.0,
        send_timeout_s: float = SEND_TIMEOUT_S,
        seed: int = 0,
    ) -> None:
        self.scenario = scenario
        self.seed = seed
        """The run's seed: bus faults draw from generators seeded by it."""
        self.send_timeout_s = send_timeout_s
        """How long a `send` or `set_state` waits for the agent's answer by default."""
        self.agents = agents
        self.events = events
        self.judge = judge
        self._inline_runs: dict[str, int] = {}
        """Per `assert` step kept in `inline`: the run of the step its result is from."""
        self.members = members
        """Room id -> its agents: a wait for a message `to` someone watches their rooms."""
        self.action_timeout_s = action_timeout_s
        self.results: dict[str, StepResult] = {}
        self._step_runs = 0
        self.inline: dict[str, AssertionResult] = {}
        """One result per `assert` step definition (every run of it must pass)."""
        self.stop_reason: str | None = None
        self.rule_errors: list[str] = []
        """Custom stop rules that could not decide (each makes the run an ERROR)."""
        self._deadline = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._timelines: dict[str, _Timeline] = {}
        self.taps: dict[str, Tap] = {}
        """Per `wait_for` step on messages, actions or events: its standing wait, registered
        before the script starts so that nothing it may look back at is missed."""
        self.pending: dict[str, PendingWait] = {}
        """Waits under way, by step path (diagnostics)."""
        self.on_wait_timeout: Callable[[PendingWait, str], None] | None = None
        """Hears of each wait that timed out, with its failure (`--diagnose-on-timeout`)."""
        self._waits_on: dict[str, list[Tap]] = {}
        """Agent -> the taps of waits for its messages or actions, which fail at once when it
        is lost (a crash or a hang), instead of at their timeout."""
        self._register()
        self._loss = events.subscribe(self._on_loss, (AgentCrashed, AgentHung, AgentRestarting))

    # -- set-up ---------------------------------------------------------------------------
    def _register(self) -> None:
        start = self.events.last_id
        main = self._timelines["script"] = _Timeline("script", "script", start)
        for i, step in enumerate(self.scenario.script):
            for loc, s in walk_step(step, ("script", i)):
                self._record(loc, s, main)
        for i, actor in enumerate(self.scenario.actors):
            loc = ("actors", i, "script")
            timeline = self._timelines[format_loc(loc)] = _Timeline(
                actor.agent, format_loc(loc), start
            )
            for step_loc, s in walk_steps(actor.script, loc):
                self._record(step_loc, s, timeline)

    def _record(self, loc: tuple[str | int, ...], step: Step, timeline: _Timeline) -> None:
        path = format_loc(loc)
        if path not in self.results:  # a soak's next pass adds to the same results
            self.results[path] = StepResult(
                path, step.id, step_kind(step), describe(step), timeline.name, step.critical
            )
        if isinstance(step, WaitForStep) and step.wait_for.state is None:
            tap = self.taps[path] = Tap(self.events, _matcher(step, self.members), timeline.floor)
            agent = _waits_on(step)
            if agent is not None:
                self._waits_on.setdefault(agent, []).append(tap)

    def _on_loss(self, event: Event) -> None:
        agent = event.agent or ""
        if isinstance(event, AgentRestarting):
            if event.gave_up is None:  # its restart policy brings it back: waits wait again
                for tap in self._waits_on.get(agent, []):
                    tap.recover()
            return
        if isinstance(event, AgentHung):
            how = f"hung (silent for {event.silent_s:g}s)"
        elif not isinstance(event, AgentCrashed):
            return  # subscribed to those two kinds only
        elif event.signal is not None:
            how = f"killed by {event.signal}"
        else:
            how = f"exited with code {event.returncode}"
        for tap in self._waits_on.get(agent, []):
            what = tap.matcher.describe()
            tap.fail(StepFailure(f"{agent} is gone ({how}): {what} can never come"))

    def _done_with(self, path: str) -> None:
        """The step at `path` (or a block and its steps) has run for the last time, unless a
        `repeat` around it runs it again: its taps are closed, so a wait that already ran
        stops collecting matches for the rest of the run."""
        if ".repeat.steps" in path:
            return
        inner = path + "."
        for tap_path in [p for p in self.taps if p == path or p.startswith(inner)]:
            tap = self.taps.pop(tap_path)
            tap.close()
            for taps in self._waits_on.values():
                if tap in taps:
                    taps.remove(tap)

    def close(self) -> None:
        for tap in self.taps.values():
            tap.close()
        self.taps.clear()
        self._waits_on.clear()
        self._loss.close()

    def again(self) -> None:
        """Get ready to run the script once more on the same agents (a soak's next pass):
        fresh timelines and waits that look only after now, the same step results (their
        runs, failures and durations add up)."""
        self._timelines.clear()
        self._register()
        self._loss = self.events.subscribe(
            self._on_loss, (AgentCrashed, AgentHung, AgentRestarting)
        )

    # -- the run --------------------------------------------------------------------------
    async def run(self, deadline: float) -> list[StepResult]:
        """Run every timeline at once; `deadline` (monotonic) bounds them all."""
        self._deadline = deadline
        stop = _StopWatch(self, self.scenario.stop_when)
        stop.start()
        timelines: list[tuple[list[Step], Loc]] = [(self.scenario.script, ("script",))]
        timelines += [
            (actor.script, ("actors", i, "script")) for i, actor in enumerate(self.scenario.actors)
        ]
        self._tasks = [
            asyncio.get_running_loop().create_task(
                self._run_timeline(self._timelines[format_loc(loc)], steps, loc),
                name=f"timeline {format_loc(loc)}",
            )
            for steps, loc in timelines
            if steps
        ]
        try:
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await stop.finish()
        finally:
            stop.close()
            self.close()
        for result in self.results.values():
            if result.runs == 0 and result.skipped_reason is None:
                result.skipped_reason = self.stop_reason or "not reached"
        return list(self.results.values())

    def stop(self, reason: str) -> None:
        """End every timeline now (a stop condition held); what is unfinished is skipped."""
        if self.stop_reason is not None:
            return
        self.stop_reason = f"stopped: {reason}"
        self.events.emit(StopConditionMet(reason=reason))
        for task in self._tasks:
            task.cancel()

    async def _run_timeline(self, timeline: _Timeline, steps: list[Step], loc: Loc) -> None:
        try:
            await self._run_steps(timeline, steps, loc)
        except _Stopped as exc:
            self._skip_rest(timeline.key, str(exc))
        except asyncio.CancelledError:
            pass  # a stop condition: the unfinished steps are marked skipped by run()

    def _skip_rest(self, key: str, reason: str) -> None:
        for path, result in self.results.items():
            if (
                path.startswith(key + "[")
                and result.runs == 0
                and result.skipped_reason is None
            ):
                result.skipped_reason = reason

    async def _run_steps(self, timeline: _Timeline, steps: list[Step], loc: Loc) -> None:
        for i, step in enumerate(steps):
            await self._run_step(timeline, step, (*loc, i))

    async def _run_step(self, timeline: _Timeline, step: Step, loc: Loc) -> None:
        result = self.results[format_loc(loc)]
        if time.monotonic() >= self._deadline:
            result.skipped_reason = result.skipped_reason or "the scenario's timeout had passed"
            return
        match step:
            case RepeatStep():
                try:
                    await self._container(result, self._repeat(timeline, step, loc))
                finally:
                    self._done_with(result.path)
                return
            case ParallelStep():
                await self._container(result, self._parallel(timeline, step, loc))
                return
        attempts = 1 + (
            step.retries if step.retries is not None else self.scenario.defaults.retries
        )
        started = self.events.now()
        t0 = time.monotonic()
        if result.started_s is None:
            result.started_s = started
        self.events.emit(StepStarted(
            timeline=timeline.name, path=result.path, step_id=step.id, step_kind=result.kind,
            description=result.description,
        ))  # fmt: skip
        error: str | None = None
        tb: str | None = None
        # One key per run of the step, the same for its attempts: a retried send posts once.
        self._step_runs += 1
        run_key = f"{result.path}#{self._step_runs}"
        for attempt in range(1, attempts + 1):
            error, tb, transient = await self._attempt(timeline, step, result, run_key)
            if error is None or not transient or attempt == attempts:
                break
            # A retry waits a little longer each time, and none starts past the deadline: a
            # large `retries` once spun at full CPU long after the scenario's timeout.
            backoff = min(RETRY_BACKOFF_MAX_S, RETRY_BACKOFF_S * 2 ** (attempt - 1))
            left = self._deadline - time.monotonic()
            if left <= backoff:
                error += f" (no retry left: {attempt} attempt(s) used the scenario's timeout)"
                break
            await asyncio.sleep(backoff)  # backoff between attempts, by design
            result.retries += 1
        elapsed = time.monotonic() - t0
        result.runs += 1
        result.duration_s += elapsed
        result.durations.add(elapsed)
        if error is None:
            result.passed += 1
        else:
            result.failed += 1
            result.error = result.error or error
            result.last_error = error
            result.traceback = result.traceback or tb
        self.events.emit(StepFinished(
            timeline=timeline.name, path=result.path, step_id=step.id, step_kind=result.kind,
            status="passed" if error is None else "failed", duration_s=round(elapsed, 6),
            error=error,
        ))  # fmt: skip
        self._done_with(result.path)
        if error is not None and step.critical:
            raise _Stopped(f"not run: critical step {result.path} failed")

    async def _attempt(
        self, timeline: _Timeline, step: Step, result: StepResult, run_key: str
    ) -> tuple[str | None, str | None, bool]:
        """One try of `step`: (error or None, traceback, whether the failure is transient)."""
        try:
            match step:
                case SendStep():
                    await self._send(step, run_key)
                case WaitForStep():
                    await self._wait_for(timeline, step, result.path)
                case ActionStep():
                    await self._action(step)
                case SetStateStep():
                    await self._set_state(step)
                case AssertStep():
                    await self._assert(step, result)
                case PauseStep():
                    await self._pause(step)
                case FaultStep():
                    await self._fault(step, f"{result.path}#{result.runs}")
        except StepFailure as exc:
            return str(exc), None, exc.transient
        except AgentGone as exc:
            return f"agent gone: {exc}", None, True
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in the runner: kept, with its traceback
            return f"internal error: {type(exc).__name__}: {exc}", traceback.format_exc(), False
        return None, None, False

    async def _container(self, result: StepResult, body: Awaitable[None]) -> None:
        t0 = time.monotonic()
        if result.started_s is None:
            result.started_s = self.events.now()
        try:
            await body
        except asyncio.CancelledError:
            # A stop condition ended the block part way: it did not finish, so it is skipped.
            result.skipped_reason = self.stop_reason
            raise
        finally:
            elapsed = time.monotonic() - t0
            result.duration_s += elapsed
            result.durations.add(elapsed)
        result.runs += 1
        inner = [r for path, r in self.results.items() if path.startswith(result.path + ".")]
        first = next((r for r in inner if r.failed), None)
        if first is not None:
            result.failed += 1
            result.error = result.error or f"{first.path} failed: {first.error}"
        else:
            result.passed += 1

    # -- the step types ---------------------------------------------------------------------
    def _timeout(self, step: Step, inner: Duration | None, default: float | None) -> float:
        """The step's time budget: its own, else the defaults', else `default`, never past the
        scenario's deadline."""
        remaining = self._deadline - time.monotonic()
        own = inner or step.timeout or self.scenario.defaults.timeout
        if own is not None:
            return max(0.0, min(own.seconds, remaining))
        return max(0.0, remaining if default is None else min(default, remaining))

    async def _command(self, agent: str, command: Command, timeout: float, what: str) -> Result:
        try:
            return await self.agents.command(agent, command, timeout)
        except TimeoutError:
            raise StepFailure(
                f"{agent} did not answer ({what}) within {Duration(timeout)}", transient=True
            ) from None

    async def _send(self, step: SendStep, key: str) -> None:
        a = step.send
        timeout = self._timeout(step, None, self.send_timeout_s)
        command = CmdSend(room=a.room, text=a.text, key=key)
        result = await self._command(a.agent, command, timeout, "send")
        if not result.ok:
            raise StepFailure(f"{a.agent} could not send: {result.error}")

    async def _wait_for(self, timeline: _Timeline, step: WaitForStep, path: str) -> None:
        w = step.wait_for
        timeout = self._timeout(step, w.timeout, None)
        pending = PendingWait(
            timeline.key, timeline.name, path, describe(step), _waits_on(step)
            or (w.state.agent if w.state is not None else None),
            _by_script(step), time.monotonic(), time.monotonic() + timeout,
        )  # fmt: skip
        self.pending[path] = pending
        try:
            await self._wait(timeline, step, path, timeout)
        except StepFailure as failure:
            if failure.transient and self.on_wait_timeout is not None:
                self.on_wait_timeout(pending, str(failure))
            raise
        finally:
            self.pending.pop(path, None)

    async def _wait(
        self, timeline: _Timeline, step: WaitForStep, path: str, timeout: float
    ) -> None:
        w = step.wait_for
        if w.state is not None:
            await self._wait_for_state(w.state, timeout)
            return
        tap = self.taps[path]
        what = tap.matcher.describe().removeprefix("a ").removeprefix("an ")
        deadline = time.monotonic() + timeout
        cursor = timeline.cursor
        for seen in range(w.count):
            try:
                cursor = await tap.next_after(cursor, deadline - time.monotonic())
            except TimeoutError:
                got = "" if w.count == 1 else f" (wanted {w.count}, saw {seen})"
                raise StepFailure(
                    f"no {what} within {Duration(timeout)}{got}", transient=True
                ) from None
        timeline.cursor = cursor

    async def _wait_for_state(self, check: StateCheck, timeout: float) -> None:
        """Level-triggered: passes as soon as the agent's state meets `check`, now or later.

        The agent is asked for the value; each `state.changed` event it emits afterwards is a
        cue to ask again. Watching starts before the first question, so a change that lands
        between the answer and the wait is not missed. The timeline's cursor does not move.
        """
        deadline = time.monotonic() + timeout
        changed = asyncio.Event()
        watch: Subscription = self.events.subscribe(
            lambda _: changed.set(), (StateChanged,), check.agent
        )
        found = "nothing (no answer)"
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                changed.clear()
                ok, found = await self.read_state(check, left)
                if ok:
                    return
                try:
                    # Not asyncio.wait_for: see EventLog.until.
                    async with asyncio.timeout_at(deadline):
                        await changed.wait()
                except TimeoutError:
                    break
        finally:
            watch.close()
        raise StepFailure(
            f"{describe_state_check(check)} did not hold within {Duration(timeout)} "
            f"(last found: {found})",
            transient=True,
        )

    async def read_state(self, check: StateCheck, timeout: float) -> tuple[bool, str]:
        """Ask the agent for the value at the check's path and judge it: (holds, found)."""
        agent = check.agent
        result = await self._command(agent, CmdGetState(path=check.path), timeout, "get_state")
        if not result.ok and not (result.error or "").startswith(NO_STATE_AT):
            raise StepFailure(f"{agent} could not report its state: {result.error}")
        return check_value(check, result.ok, result.value)

    async def _action(self, step: ActionStep) -> None:
        a = step.action
        # The agent bounds the handler by its action timeout; allow that plus the round trip.
        timeout = self._timeout(step, a.timeout, self.action_timeout_s)
        result = await self._command(
            a.agent, CmdAction(name=a.name, params=dict(a.params), room=a.room), timeout, a.name
        )
        value = result.value
        status = value.get("status") if isinstance(value, dict) else None
        if status is None:  # the agent could not even try (e.g. it failed to initialise)
            raise StepFailure(f"{a.agent} could not run {a.name}: {result.error}")
        if status != a.expect:
            why = f": {result.error}" if result.error else ""
            raise StepFailure(f"{a.name} in {a.agent} {status} (expected {a.expect}){why}")

    async def _set_state(self, step: SetStateStep) -> None:
        a = step.set_state
        result = await self._command(
            a.agent,
            CmdSetState(path=a.path, value=a.value),
            self._timeout(step, None, self.send_timeout_s),
            "set_state",
        )
        if not result.ok:
            raise StepFailure(f"{a.agent} could not set {a.path!r}: {result.error}")

    async def _assert(self, step: AssertStep, result: StepResult) -> None:
        ident = step.assert_.id or step.id or result.path
        timeout = self._timeout(step, None, self.send_timeout_s)
        unanswered = False
        try:
            async with asyncio.timeout(timeout):
                judged = await self.judge(step.assert_, ident, timeout)
        except (TimeoutError, AgentGone, StepFailure) as exc:
            unanswered = True
            # Not judged (a live state read with nobody to answer): an assertion that could
            # not be judged, which makes the run an ERROR, never a silent pass.
            why = f"within {Duration(timeout)}" if isinstance(exc, TimeoutError) else str(exc)
            judged = AssertionResult(
                id=ident, type=assertion_kind(step.assert_), passed=False, expected="",
                actual="not judged", message=f"could not be judged: {why}", error=why,
            )  # fmt: skip
        previous = self.inline.get(result.path)
        # Keep a run's last attempt (a retry replaces what it retried), and across runs of a
        # repeated step the first failure, else the latest pass.
        retried = self._inline_runs.get(result.path) == result.runs
        if previous is None or retried or (previous.passed and not judged.passed):
            self.inline[result.path] = judged
            self._inline_runs[result.path] = result.runs
        if unanswered:  # worth another try (its `retries`), unlike a judged failure
            raise StepFailure(f"assertion {ident} could not be judged: {judged.error}", True)
        if not judged.passed:
            raise StepFailure(f"assertion {ident} failed: {judged.message}")

    async def _fault(self, step: FaultStep, where: str) -> None:
        f = step.fault
        if f.op in WIRE_FAULTS:
            self.agents.wire_fault(self._wire_fault(f, where))
            return
        timeout = self._timeout(step, None, self.send_timeout_s)
        try:
            await self.agents.fault(
                f.op, f.agent, signal=f.signal or "SIGKILL",
                keep_store=f.keep_store is not False, timeout=timeout,
            )  # fmt: skip
        except FaultError as exc:
            raise StepFailure(f"fault {f.op} {f.agent}: {exc}") from None

    def _wire_fault(self, f: FaultArgs, where: str) -> WireFault:
        """The bus's form of a bus fault step, with its own generator, seeded by the run's
        seed, the step's path and its run (not by the order steps happen to run in: parallel
        actors' faults replay too)."""
        scope = ""
        if f.from_:
            scope += f" from {', '.join(f.from_)}"
        if f.to:
            scope += f" to {', '.join(f.to)}"
        if f.room:
            scope += f" in {', '.join(f.room)}"
        window = f" for {f.for_}" if f.for_ is not None else f" for {f.messages} messages"
        fault = WireFault(
            kind=f.op,
            description="",
            senders=frozenset(f.from_) if f.from_ else None,
            recipients=frozenset(f.to) if f.to else None,
            rooms=frozenset(f.room) if f.room else None,
            until=time.monotonic() + f.for_.seconds if f.for_ is not None else None,
            messages=f.messages,
            rng=random.Random(f"{self.seed}:fault:{where}"),
        )
        if f.drop is not None and f.frames == "all":
            fault.rate, fault.frames = f.drop, "all"
            agents = sorted({*(f.from_ or ()), *(f.to or ())})
            links = f"the links of {', '.join(agents)}" if agents else "every link"
            fault.description = f"lose {f.drop:.0%} of the frames on {links}, both ways{window}"
            return fault
        if f.drop is not None:
            fault.rate, what = f.drop, f"drop {f.drop:.0%} of"
        elif f.delay is not None:
            fault.delay_s, fault.jitter_s = f.delay.seconds, f.jitter.seconds if f.jitter else 0.0
            what = f"delay by {f.delay}" + (f" (+-{f.jitter})" if f.jitter else "")
        elif f.duplicate is not None:
            fault.rate, what = f.duplicate, f"duplicate {f.duplicate:.0%} of"
        elif f.reorder is not None:
            fault.rate = f.reorder
            fault.within_s = f.within.seconds if f.within else fault.within_s
            what = f"hold back {f.reorder:.0%} of"
        else:
            assert f.partition is not None
            fault.groups = tuple(frozenset(group) for group in f.partition)
            what = "partition " + " | ".join(", ".join(g) for g in f.partition) + ": cut"
        fault.description = f"{what} the messages{scope}{window}"
        return fault

    async def _pause(self, step: PauseStep) -> None:
        remaining = self._deadline - time.monotonic()
        if step.pause.seconds > remaining:
            left = Duration(max(0.0, remaining))
            raise StepFailure(f"pause {step.pause} would pass the scenario's timeout ({left} left)")
        await asyncio.sleep(step.pause.seconds)  # the user's own pacing: the one sleep in a run

    async def _repeat(self, timeline: _Timeline, step: RepeatStep, loc: Loc) -> None:
        r = step.repeat
        inner = (*loc, "repeat", "steps")
        if r.count is not None:
            for _ in range(r.count):
                await self._run_steps(timeline, r.steps, inner)
            return
        assert r.duration is not None
        until = min(time.monotonic() + r.duration.seconds, self._deadline)
        while time.monotonic() < until:
            await self._run_steps(timeline, r.steps, inner)

    async def _parallel(self, timeline: _Timeline, step: ParallelStep, loc: Loc) -> None:
        # Each branch consumes events with its own cursor; afterwards the timeline continues
        # after the furthest event any branch matched.
        root = timeline.root or timeline
        branches = [
            _Timeline(timeline.name, timeline.key, timeline.cursor, root) for _ in step.parallel
        ]
        outcomes = await asyncio.gather(
            *(
                self._run_step(b, s, (*loc, "parallel", i))
                for i, (b, s) in enumerate(zip(branches, step.parallel, strict=True))
            ),
            return_exceptions=True,
        )
        timeline.cursor = max(b.cursor for b in branches)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome


@dataclass(frozen=True, slots=True)
class PendingWait:
    """A `wait_for` under way: what the diagnostics show of a run that does not move."""

    timeline: str
    """Its timeline's key (`script`, `actors[1].script`)."""
    actor: str
    """The timeline's agent, or `script`."""
    path: str
    what: str
    agent: str | None
    """The agent it waits on (the sender of a message, the agent of an action or state)."""
    from_script: bool
    """It waits for something the script makes that agent do (origin script): the agent's
    own timeline, not its runtime, is what it waits for."""
    since: float
    deadline: float


def _by_script(step: WaitForStep) -> bool:
    m = step.wait_for.message
    return m is not None and m.origin in ("script", "any")


def _waits_on(step: WaitForStep) -> str | None:
    """The agent whose loss means the wait can never end well: a message's sender (else its
    recipient), an action's agent. Not for `event` waits: one may wait for the loss itself."""
    w = step.wait_for
    if w.message is not None:
        return w.message.from_ or w.message.to
    if w.action is not None:
        return w.action.agent
    return None


def _matcher(step: WaitForStep, members: Mapping[str, frozenset[str]] | None) -> Matcher:
    w = step.wait_for
    if w.message is not None:
        return MessageFilter.of(w.message, members)
    if w.action is not None:
        return ActionMatcher(w.action)
    assert w.event is not None  # WaitForArgs holds exactly one
    return EventMatcher(w.event)


_RULE_CUES = (MessageSent, ActionCompleted, ActionFailed, StateChanged)
"""Events after which custom stop rules are asked again."""

NEW_EVENTS_LIMIT = 100_000
"""Events a stop rule's incremental view holds between two calls; beyond it the oldest are
dropped and the count is in `view.memo["dropped_events"]`."""


class _StopWatch:
    """Watches the `stop_when` conditions and stops the executor when one holds.

    Custom rules run one at a time: a cue that arrives while a rule is running marks it to be
    asked again when it finishes, so a slow rule never piles up calls. Each rule sees an
    incremental view: the events since its previous call, never the whole run again."""

    def __init__(self, executor: Executor, conditions: list[StopCondition]) -> None:
        self.executor = executor
        self.conditions = conditions
        self.messages = 0
        self._timers: list[asyncio.TimerHandle] = []
        self._subscriptions: list[Subscription] = []
        self._custom = [c for c in conditions if c.custom is not None]
        self._undecided: set[int] = set()
        self._closing = False
        """Rules that raised or timed out: an error of the run, asked no more."""
        self._checking: asyncio.Task[None] | None = None
        self._again = False
        self._new: list[deque[Event]] = [deque(maxlen=NEW_EVENTS_LIMIT) for _ in self._custom]
        self._views = [
            RunView(
                executor.scenario.name,
                functools.partial(self._drain, i),
                agents=tuple(executor.scenario.agent_ids),
                incremental=True,
            )
            for i in range(len(self._custom))
        ]

    def _drain(self, i: int) -> Iterator[Event]:
        # A sync rule calls this from its thread while the loop appends: take one at a time,
        # so an event appended meanwhile is either taken now or left for the next call.
        new = self._new[i]
        taken: list[Event] = []
        while new:
            taken.append(new.popleft())
        return iter(taken)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for cond in self.conditions:
            if cond.elapsed is not None:
                reason = f"{cond.elapsed} elapsed"
                self._timers.append(
                    loop.call_later(cond.elapsed.seconds, self.executor.stop, reason)
                )
        events = self.executor.events
        if any(c.messages is not None or c.keyword is not None for c in self.conditions):
            self._subscriptions.append(events.subscribe(self._on_message, (MessageSent,)))
        if self._custom:
            # Every event goes to the rules' views; only some are a cue to ask them again.
            self._subscriptions.append(events.subscribe(self._keep))
            self._subscriptions.append(events.subscribe(self._on_cue, _RULE_CUES))

    async def finish(self) -> None:
        """The script is over: a rule call in flight is let finish (bounded by its timeout),
        so a rule that raises still makes the run an ERROR; no rule is asked again."""
        self._closing = True
        checking = self._checking
        if checking is not None and not checking.done():
            await asyncio.wait([checking])

    def close(self) -> None:
        if self._checking is not None:
            self._checking.cancel()
        for timer in self._timers:
            timer.cancel()
        for subscription in self._subscriptions:
            subscription.close()
        self._subscriptions.clear()

    def _keep(self, event: Event) -> None:
        for i, new in enumerate(self._new):
            if len(new) == new.maxlen:
                memo = self._views[i].memo
                memo["dropped_events"] = int(memo.get("dropped_events", 0)) + 1  # type: ignore[call-overload]
            new.append(event)

    def _on_cue(self, event: Event) -> None:
        if self._closing:
            return
        if self._checking is None or self._checking.done():
            self._checking = asyncio.get_running_loop().create_task(self._check_rules())
        else:
            self._again = True

    def _on_message(self, event: MessageSent) -> None:
        self.messages += 1
        for cond in self.conditions:
            if cond.messages is not None and self.messages >= cond.messages:
                self.executor.stop(f"{cond.messages} messages sent")
            elif (
                cond.keyword is not None
                and cond.keyword in event.text
                and (cond.from_ is None or event.agent == cond.from_)
            ):
                who = f" from {cond.from_}" if cond.from_ else ""
                self.executor.stop(f"a message{who} contained {cond.keyword!r}")

    async def _check_rules(self) -> None:
        while True:
            self._again = False
            for i, cond in enumerate(self._custom):
                if i in self._undecided or cond.custom is None:
                    continue
                try:
                    outcome = await call_rule(cond.custom, self._views[i], cond.params, 30.0)
                except RuleError as exc:
                    self.executor.rule_errors.append(f"stop_when: {exc}")
                    self._undecided.add(i)
                    continue
                if outcome.passed:
                    self.executor.stop(f"rule {cond.custom}: {outcome.message}")
                    return
            if self._closing or not self._again or len(self._undecided) == len(self._custom):
                return
