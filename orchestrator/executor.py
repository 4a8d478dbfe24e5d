"""The step executor: runs a scenario's script, each step inside its own error boundary.

A step that fails is recorded (which step, what, why) and the script goes on; nothing here
sleeps. `send` asks the agent's own process to post the message and waits for its RESULT;
`wait_for` is a future on the event log that wakes the moment a matching event is emitted,
and it consumes: each wait starts looking after the event the previous wait matched, so two
waits for similar replies do not both match the first one.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from enum import StrEnum

from orchestrator.bus import AgentGone, Bus
from orchestrator.durations import Duration
from orchestrator.events import EventKind, EventLog
from orchestrator.matching import MessageFilter
from orchestrator.scenario import SendStep, Step, WaitForStep
from protocol import CmdSend

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
    return "send" if isinstance(step, SendStep) else "wait_for"


def describe(step: Step) -> str:
    if isinstance(step, SendStep):
        a = step.send
        return f"{a.agent} says {a.text!r} in {a.room}"
    m = step.wait_for.message
    return "wait for " + _filter(m.from_, m.room, m.contains, m.regex).describe()


def _filter(
    sender: str | None, room: str | None, contains: str | None, regex: str | None
) -> MessageFilter:
    return MessageFilter.build(sender, room, contains, regex)


class Executor:
    def __init__(
        self, bus: Bus, events: EventLog, send_timeout_s: float = SEND_TIMEOUT_S
    ) -> None:
        self.bus = bus
        self.events = events
        self.send_timeout_s = send_timeout_s
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
            if isinstance(step, SendStep):
                await self._send(step, remaining)
            else:
                await self._wait_for(step, remaining)
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
        m = step.wait_for.message
        own = step.wait_for.timeout.seconds if step.wait_for.timeout is not None else None
        # Without a timeout of its own, a wait may use whatever the scenario's deadline leaves.
        timeout = remaining if own is None else min(own, remaining)
        match = _filter(m.from_, m.room, m.contains, m.regex)
        try:
            event = await self.events.wait_for(match, timeout, after=self.cursor)
        except TimeoutError:
            raise StepFailure(f"no {match.describe()[2:]} within {Duration(timeout)}") from None
        self.cursor = event.id
