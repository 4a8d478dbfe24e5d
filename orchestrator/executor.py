"""The step executor: runs a scenario's script, each step inside its own error boundary.

A step that fails is recorded (which step, what, why) and the script goes on; nothing here
sleeps. `send` asks the agent's own process to post the message and waits for its RESULT;
`wait_for` is a future on the event log that wakes the moment a matching event is emitted,
and it consumes: each wait starts looking after the event the previous wait matched, so two
waits for similar replies do not both match the first one.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from orchestrator.assertions import action_status, check_value, describe_state_check
from orchestrator.bus import AgentGone, Bus
from orchestrator.durations import Duration
from orchestrator.events import Event, EventKind, EventLog
from orchestrator.matching import MessageFilter
from orchestrator.scenario import (
    ActionMatch,
    ActionStep,
    MessageMatch,
    SendStep,
    SetStateStep,
    StateCheck,
    Step,
    WaitForArgs,
    WaitForStep,
)
from protocol import CmdAction, CmdGetState, CmdSend, CmdSetState, Result
from protocol.bodies import Command
from protocol.statepath import NO_STATE_AT

SEND_TIMEOUT_S = 5.0
"""How long a `send` waits for the agent to confirm it posted the message."""


class StepStatus(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"
    """Not run: the scenario's deadline passed first."""


class StepFailure(Exception):
    """A step did not do what it says; the message says what happened instead."""


@dataclass(slots=True)
class StepResult:
    index: int
    id: str | None
    kind: str
    description: str
    status: StepStatus
    started_s: float
    duration_s: float
    error: str | None = None
    traceback: str | None = None


def step_kind(step: Step) -> str:
    match step:
        case SendStep():
            return "send"
        case WaitForStep():
            return "wait_for"
        case ActionStep():
            return "action"
        case SetStateStep():
            return "set_state"


def describe(step: Step) -> str:
    match step:
        case SendStep(send=a):
            return f"{a.agent} says {a.text!r} in {a.room}"
        case WaitForStep(wait_for=WaitForArgs(message=MessageMatch() as m)):
            return "wait for " + _filter(m.from_, m.room, m.contains, m.regex).describe()
        case WaitForStep(wait_for=WaitForArgs(action=ActionMatch() as am)):
            return "wait for " + _describe_action_match(am)
        case WaitForStep(wait_for=WaitForArgs(state=StateCheck() as sc)):
            return "wait until " + describe_state_check(sc)
        case ActionStep(action=a):
            return f"{a.agent} runs {a.name} {json.dumps(a.params, sort_keys=True)}"
        case SetStateStep(set_state=a):
            return f"set {a.agent}'s state {a.path} = {json.dumps(a.value, sort_keys=True)}"
    raise AssertionError(f"unknown step {step!r}")


def _describe_action_match(m: ActionMatch) -> str:
    text = f"an action of {m.agent}"
    if m.name is not None:
        text = f"{m.name} run by {m.agent}"
    return text + (f" that {m.status}" if m.status is not None else " to finish")


def _action_predicate(m: ActionMatch) -> Callable[[Event], bool]:
    def matches(event: Event) -> bool:
        status = action_status(event)
        return (
            status is not None
            and event.agent == m.agent
            and (m.name is None or event.data.get("action") == m.name)
            and (m.status is None or status == m.status)
        )

    return matches


def _filter(
    sender: str | None, room: str | None, contains: str | None, regex: str | None
) -> MessageFilter:
    return MessageFilter.build(sender, room, contains, regex)


class Executor:
    def __init__(
        self,
        bus: Bus,
        events: EventLog,
        send_timeout_s: float = SEND_TIMEOUT_S,
        action_timeout_s: float = 30.0,
    ) -> None:
        self.bus = bus
        self.events = events
        self.send_timeout_s = send_timeout_s
        self.action_timeout_s = action_timeout_s
        self.cursor = events.last_id

    async def run(self, script: list[Step], deadline: float) -> list[StepResult]:
        """Run every step in order; `deadline` (monotonic) bounds the whole script."""
        results: list[StepResult] = []
        for index, step in enumerate(script):
            results.append(await self.run_step(index, step, deadline))
        return results

    async def run_step(self, index: int, step: Step, deadline: float) -> StepResult:
        kind = step_kind(step)
        text = describe(step)
        started = self.events.now()
        t0 = time.monotonic()
        remaining = deadline - t0
        if remaining <= 0:
            return self._finish(
                StepResult(
                    index,
                    step.id,
                    kind,
                    text,
                    StepStatus.SKIPPED,
                    started,
                    0.0,
                    "the scenario's timeout had passed",
                )
            )
        self.events.emit(
            EventKind.STEP_STARTED, None, index=index, step_id=step.id, kind=kind, description=text
        )
        status, error, tb = StepStatus.PASSED, None, None
        try:
            match step:
                case SendStep():
                    await self._send(step, remaining)
                case WaitForStep():
                    await self._wait_for(step, remaining)
                case ActionStep():
                    await self._action(step, remaining)
                case SetStateStep():
                    await self._set_state(step, remaining)
        except StepFailure as exc:
            status, error = StepStatus.FAILED, str(exc)
        except AgentGone as exc:
            status, error = StepStatus.FAILED, f"agent gone: {exc}"
        except Exception as exc:  # a bug in the runner: kept, with its traceback
            status, error = StepStatus.FAILED, f"internal error: {type(exc).__name__}: {exc}"
            tb = traceback.format_exc()
        result = StepResult(
            index, step.id, kind, text, status, started, time.monotonic() - t0, error, tb
        )
        return self._finish(result)

    def _finish(self, result: StepResult) -> StepResult:
        self.events.emit(
            EventKind.STEP_FINISHED,
            None,
            index=result.index,
            step_id=result.id,
            kind=result.kind,
            status=result.status.value,
            duration_s=round(result.duration_s, 6),
            error=result.error,
        )
        return result


    async def _send(self, step: SendStep, remaining: float) -> None:
        args = step.send
        timeout = min(self.send_timeout_s, remaining)
        try:
            result = await self.bus.command(
                args.agent, CmdSend(room=args.room, text=args.text), timeout
            )
        except TimeoutError:
            raise StepFailure(
                f"{args.agent} did not confirm the send within {Duration(timeout)}"
            ) from None
        if not result.ok:
            raise StepFailure(f"{args.agent} could not send: {result.error}")

    async def _wait_for(self, step: WaitForStep, remaining: float) -> None:
        args = step.wait_for
        own = args.timeout.seconds if args.timeout is not None else None
        # Without a timeout of its own, a wait may use whatever the scenario's deadline leaves.
        timeout = remaining if own is None else min(own, remaining)
        if args.state is not None:
            await self._wait_for_state(args.state, timeout)
            return
        predicate: Callable[[Event], bool]
        if args.message is not None:
            m = args.message
            match = _filter(m.from_, m.room, m.contains, m.regex)
            predicate, what = match, match.describe()[2:]
        else:
            assert args.action is not None  # WaitForArgs holds exactly one
            predicate, what = _action_predicate(args.action), _describe_action_match(args.action)
        try:
            event = await self.events.wait_for(predicate, timeout, after=self.cursor)
        except TimeoutError:
            raise StepFailure(f"no {what} within {Duration(timeout)}") from None
        self.cursor = event.id

    async def _wait_for_state(self, check: StateCheck, timeout: float) -> None:
        """Level-triggered: passes as soon as the agent's state meets `check`, now or later.

        The agent is asked for its state; each `state.changed` event it emits afterwards is a
        cue to ask again. Watching starts before the first question, so a change that lands
        between the answer and the wait is not missed. The message cursor does not move.
        """
        deadline = time.monotonic() + timeout
        watched = self.events.last_id
        agent = check.agent

        def changed(event: Event) -> bool:
            return event.kind is EventKind.STATE_CHANGED and event.agent == agent

        found = "nothing (no answer)"
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            result = await self._command(agent, CmdGetState(path=check.path), left, "get_state")
            if not result.ok and not (result.error or "").startswith(NO_STATE_AT):
                raise StepFailure(f"{agent} could not report its state: {result.error}")
            ok, found = check_value(check, result.ok, result.value)
            if ok:
                return
            try:
                event = await self.events.wait_for(
                    changed, deadline - time.monotonic(), after=watched
                )
            except TimeoutError:
                break
            watched = event.id
        raise StepFailure(
            f"{describe_state_check(check)} did not hold within {Duration(timeout)} "
            f"(last found: {found})"
        )

    async def _command(self, agent: str, command: Command, timeout: float, what: str) -> Result:
        try:
            return await self.bus.command(agent, command, timeout)
        except TimeoutError:
            raise StepFailure(
                f"{agent} did not answer ({what}) within {Duration(timeout)}"
            ) from None

    async def _action(self, step: ActionStep, remaining: float) -> None:
        a = step.action
        # The agent bounds the handler by its action timeout; allow that plus the round trip.
        own = a.timeout.seconds if a.timeout is not None else self.action_timeout_s
        timeout = min(own, remaining)
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

    async def _set_state(self, step: SetStateStep, remaining: float) -> None:
        a = step.set_state
        result = await self._command(
            a.agent,
            CmdSetState(path=a.path, value=a.value),
            min(self.send_timeout_s, remaining),
            "set_state",
        )
        if not result.ok:
            raise StepFailure(f"{a.agent} could not set {a.path!r}: {result.error}")
