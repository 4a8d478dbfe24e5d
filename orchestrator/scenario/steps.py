"""The steps of a script: one model per step type, each a mapping with one kind key (`send`,
`wait_for`, `action`, `set_state`, `assert`, `repeat`, `parallel`, `pause`) plus the fields
every step has (`id`, `timeout`, `retries`, `critical`); and the scenario's `stop_when`
conditions and per-agent `actors` timelines.

How each step runs is `orchestrator/run/executor.py`'s business; this module only says what
may be written.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Literal, Self

from pydantic import Discriminator, Field, JsonValue, Tag, WithJsonSchema, model_validator

from orchestrator.scenario.assertions import Assertion
from orchestrator.scenario.durations import Duration
from orchestrator.scenario.schema import (
    ActionMatch,
    ActionStatus,
    Count,
    EventMatch,
    ImportPath,
    MessageMatch,
    MessageText,
    SpecModel,
    StateCheck,
    kind_key_check,
    kind_tag,
    spec_error,
)


class StepBase(SpecModel):
    """What every step has besides its kind key."""

    id: str | None = None
    """Names the step in reports, in `timing` assertions and in `stop_when`."""
    timeout: Duration | None = None
    """How long the step may take; default: the scenario's `defaults.timeout`, else whatever
    the scenario's own deadline leaves."""
    retries: Count | None = None
    """Extra attempts after a transient failure (a timeout, an agent that is gone or
    restarting); default: `defaults.retries`."""
    critical: bool = False
    """When this step fails, its timeline stops (the other timelines go on)."""


def _one_timeout(step: StepBase, inner: Duration | None, key: str) -> None:
    if step.timeout is not None and inner is not None:
        raise spec_error(
            "timeout", f"set the timeout once: either the step's 'timeout' or '{key}.timeout'"
        )


# --- send, wait_for, action, set_state -------------------------------------------------------


class SendArgs(SpecModel):
    agent: str
    room: str
    text: MessageText


class SendStep(StepBase):
    """Makes `agent` post `text` to `room`, as if the agent had said it (origin `script`)."""

    send: SendArgs


class WaitForArgs(SpecModel):
    """Exactly one of `message`, `action`, `state` or `event`."""

    message: MessageMatch | None = None
    action: ActionMatch | None = None
    state: StateCheck | None = None
    event: EventMatch | None = None
    # None: the step's own timeout, or the scenario's defaults, or its deadline.
    timeout: Duration | None = None
    count: Annotated[int, Field(strict=True, ge=1)] = 1
    """How many matching messages, actions or events to wait for (after the timeline's
    previous wait), e.g. an answer from every worker."""

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        chosen = [
            k for k in ("message", "action", "state", "event") if getattr(self, k) is not None
        ]
        if len(chosen) != 1:
            raise spec_error(
                "wait_for",
                "wait_for needs exactly one of 'message', 'action', 'state' or 'event'"
                + (f"; this one has {' and '.join(chosen)}" if chosen else ""),
            )
        if self.state is not None and self.count != 1:
            raise spec_error("wait_for", "'count' does not apply to a state condition")
        return self


class WaitForStep(StepBase):
    """Blocks its timeline until the event happens (or the state holds), or fails at the
    timeout."""

    wait_for: WaitForArgs

    @model_validator(mode="after")
    def _timeout_once(self) -> Self:
        _one_timeout(self, self.wait_for.timeout, "wait_for")
        return self


class ActionArgs(SpecModel):
    """Run action `name` in `agent`'s runtime (validate, then its handler); the step passes
    when the action ends with status `expect`."""

    agent: str
    name: Annotated[str, Field(min_length=1)]
    params: dict[str, JsonValue] = {}
    room: str | None = None
    expect: ActionStatus = "succeeded"
    timeout: Duration | None = None


class ActionStep(StepBase):
    action: ActionArgs

    @model_validator(mode="after")
    def _timeout_once(self) -> Self:
        _one_timeout(self, self.action.timeout, "action")
        return self


class SetStateArgs(SpecModel):
    agent: str
    path: Annotated[str, Field(min_length=1)]
    value: JsonValue


class SetStateStep(StepBase):
    set_state: SetStateArgs


# --- assert, repeat, parallel, pause ---------------------------------------------------------


class AssertStep(StepBase):
    """Judges an assertion at this point of the run (state on the live state, everything else
    on what has happened so far). Its result is one of the run's assertion results; a failing
    one also fails the step."""

    assert_: Assertion = Field(alias="assert")


class RepeatArgs(SpecModel):
    """`steps`, `count` times or for a `duration` (the block always finishes the iteration it
    is in); exactly one of the two."""

    count: Annotated[int, Field(strict=True, ge=1)] | None = None
    duration: Duration | None = None
    steps: Annotated[list[Step], Field(min_length=1)]

    @model_validator(mode="after")
    def _count_or_duration(self) -> Self:
        if (self.count is None) == (self.duration is None):
            raise spec_error("repeat", "repeat needs exactly one of 'count' or 'duration'")
        return self


class RepeatStep(StepBase):
    repeat: RepeatArgs


class ParallelStep(StepBase):
    """Runs its steps at once; it ends when all of them have."""

    parallel: Annotated[list[Step], Field(min_length=1)]


class PauseStep(StepBase):
    """Waits for a fixed time: explicit pacing that a soak script asks for, the only sleep in a
    run."""

    pause: Duration


FaultSignal = Literal["SIGKILL", "SIGTERM", "SIGINT", "SIGQUIT", "SIGABRT", "SIGSEGV", "SIGUSR2"]


PROCESS_FAULTS = ("kill", "stop", "cont", "restart")
WIRE_FAULTS = ("drop", "delay", "duplicate", "reorder", "partition")
Rate = Annotated[float, Field(gt=0, le=1)]
AgentNames = Annotated[list[str], Field(min_length=1)]

OneOrMore = Annotated[
    list[str],
    WithJsonSchema(
        {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
    ),
]
"""A list of names, where one name may be written alone (`from: a` is `from: [a]`)."""


class FaultArgs(SpecModel):
    """A fault on purpose. Exactly one operation:

    - on one agent's process: `kill`, `stop`, `cont`, `restart` (each names the agent);
    - on the bus, for the messages it carries to agents: `drop`, `delay`, `duplicate`,
      `reorder` or `partition`, scoped by `from`, `to` and `room`, for a window of time
      (`for`) or a number of messages (`messages`), seeded by the run's `--seed`.

    A planned fault is not an error: the killed agent is reported as killed by the script, not
    as a crash. Bus faults act on transmissions, below delivery: a dropped one is retransmitted,
    a duplicate is de-duplicated, a reordered one is resequenced, so exactly-once delivery
    still holds (a partition longer than the retry budget makes dead letters)."""

    kill: str | None = None
    """Send the agent's process group `signal`; the agent ends (its exit is planned)."""
    signal: FaultSignal | None = None
    """With `kill`: which signal (default SIGKILL)."""
    stop: str | None = None
    """SIGSTOP: the agent hangs, on purpose, until a `cont` (it is not declared hung
    meanwhile; what is sent to it waits, and is retried)."""
    cont: str | None = None
    """SIGCONT: a stopped agent runs again."""
    restart: str | None = None
    """Stop the agent in order (or take it as a kill or a crash left it) and start a new
    incarnation under the same id, waiting for its READY."""
    keep_store: bool | None = None
    """With `restart`: whether the new incarnation keeps the agent's memory store (default
    true); false starts it empty."""

    drop: Rate | None = None
    """The share of message transmissions lost (each is retransmitted later)."""
    frames: Literal["messages", "all"] | None = None
    """With `drop`: `messages` (default), or `all`, every frame of the links in scope both
    ways (acks, heartbeats, commands, the handshake), as a lossy wire loses them; scoped by
    `from`/`to` (agents whose links lose frames), not by `room`."""
    delay: Duration | None = None
    """Every message transmission goes out this much later..."""
    jitter: Duration | None = None
    """... give or take up to this much (with `delay`)."""
    duplicate: Rate | None = None
    """The share of message transmissions sent twice."""
    reorder: Rate | None = None
    """The share of message transmissions held back (by up to `within`) so later ones
    overtake them."""
    within: Duration | None = None
    """With `reorder`: the longest hold (default 200ms)."""
    partition: Annotated[list[AgentNames], Field(min_length=2)] | None = None
    """Groups of agents that cannot reach each other: a message from one group to another is
    not delivered until the partition ends (it is retried)."""

    from_: OneOrMore | None = Field(None, alias="from")
    """Only messages from these agents (default: any)."""
    to: OneOrMore | None = None
    """Only messages to these agents."""
    room: OneOrMore | None = None
    """Only messages in these rooms."""
    for_: Duration | None = Field(None, alias="for")
    """How long the fault lasts (from the step); the script goes on meanwhile."""
    messages: Annotated[int, Field(strict=True, ge=1)] | None = None
    """Or: how many matching message transmissions it affects."""

    @model_validator(mode="before")
    @classmethod
    def _lists(cls, data: object) -> object:
        # `from: a` means `from: [a]`.
        if isinstance(data, dict):
            data = dict(data)
            for key in ("from", "to", "room"):
                if isinstance(data.get(key), str):
                    data[key] = [data[key]]
        return data

    @model_validator(mode="after")
    def _one(self) -> Self:
        given = [k for k in (*PROCESS_FAULTS, *WIRE_FAULTS) if getattr(self, k) is not None]
        if len(given) != 1:
            raise spec_error(
                "fault", "a fault has exactly one of kill, stop, cont, restart, drop, delay,"
                " duplicate, reorder, partition" + (f" (got {', '.join(given)})" if given else "")
            )
        op = given[0]
        only = {
            "signal": "kill", "keep_store": "restart", "jitter": "delay", "within": "reorder",
            "frames": "drop",
        }  # fmt: skip
        for key, owner in only.items():
            if getattr(self, key) is not None and op != owner:
                raise spec_error("fault", f"'{key}' goes with '{owner}'")
        wire_keys = ("from_", "to", "room", "for_", "messages")
        if op in PROCESS_FAULTS:
            extra = [k.rstrip("_") for k in wire_keys if getattr(self, k) is not None]
            if extra:
                raise spec_error("fault", f"'{extra[0]}' goes with a bus fault, not '{op}'")
        elif self.frames == "all" and self.drop is not None and self.drop >= 1.0:
            raise spec_error(
                "fault", "'frames: all' with drop 1 cuts the agents off the coordinator (they"
                " would be declared hung): give a share under 1, or use a partition"
            )
        elif self.frames == "all" and self.room is not None:
            raise spec_error(
                "fault", "'frames: all' loses frames of agents' links, which have no room:"
                " scope it with 'from' or 'to'"
            )
        elif (self.for_ is None) == (self.messages is None):
            raise spec_error(
                "fault", f"a '{op}' fault lasts for a time ('for: 10s') or a number of"
                " messages ('messages: 100'): give exactly one"
            )
        if op == "partition" and self.partition is not None:
            seen: set[str] = set()
            for group in self.partition:
                twice = seen & set(group)
                if twice:
                    raise spec_error(
                        "fault", f"agent {sorted(twice)[0]!r} is in two partition groups"
                    )
                seen |= set(group)
        return self

    @property
    def op(self) -> str:
        return next(k for k in (*PROCESS_FAULTS, *WIRE_FAULTS) if getattr(self, k) is not None)

    @property
    def agent(self) -> str:
        """The target of a process fault."""
        value = getattr(self, self.op)
        assert isinstance(value, str), "a bus fault has no one agent"
        return value


class FaultStep(StepBase):
    """A fault on purpose, recorded as a `fault.injected` event (and a bus fault's end as
    `fault.ended`) and shown in every report."""

    fault: FaultArgs


# To add a step type: write its model (a StepBase with its one kind key as a field), add it
# here and to the `Step` union below with its Tag, and teach the executor to run it.
STEP_TYPES: dict[str, type[SpecModel]] = {
    "send": SendStep,
    "wait_for": WaitForStep,
    "action": ActionStep,
    "set_state": SetStateStep,
    "assert": AssertStep,
    "repeat": RepeatStep,
    "parallel": ParallelStep,
    "pause": PauseStep,
    "fault": FaultStep,
}

Step = Annotated[
    Annotated[SendStep, Tag("SendStep")]
    | Annotated[WaitForStep, Tag("WaitForStep")]
    | Annotated[ActionStep, Tag("ActionStep")]
    | Annotated[SetStateStep, Tag("SetStateStep")]
    | Annotated[AssertStep, Tag("AssertStep")]
    | Annotated[RepeatStep, Tag("RepeatStep")]
    | Annotated[ParallelStep, Tag("ParallelStep")]
    | Annotated[PauseStep, Tag("PauseStep")]
    | Annotated[FaultStep, Tag("FaultStep")],
    Discriminator(kind_tag(STEP_TYPES)),
    kind_key_check("step", STEP_TYPES, frozenset(StepBase.model_fields)),
]

RepeatArgs.model_rebuild()
ParallelStep.model_rebuild()


def step_kind(step: Step) -> str:
    for key, model in STEP_TYPES.items():
        if isinstance(step, model):
            return key
    raise AssertionError(f"unknown step {step!r}")


# --- timelines and stop conditions ------------------------------------------------------------

# Step types whose arguments name the agent that acts; in an actor's script they default to it.
_ACTING = ("send", "action", "set_state")


def _default_agent(steps: object, agent: object) -> object:
    if not isinstance(steps, list):
        return steps
    out: list[object] = []
    for step in steps:
        if isinstance(step, dict):
            step = dict(step)
            for key in _ACTING:
                args = step.get(key)
                if isinstance(args, dict) and "agent" not in args:
                    step[key] = {"agent": agent, **args}
            repeat = step.get("repeat")
            if isinstance(repeat, dict) and "steps" in repeat:
                step["repeat"] = {**repeat, "steps": _default_agent(repeat["steps"], agent)}
            if "parallel" in step:
                step["parallel"] = _default_agent(step["parallel"], agent)
        out.append(step)
    return out


class Actor(SpecModel):
    """A timeline of its own for `agent`: its script runs concurrently with the main script and
    with other actors. In it, `send`, `action` and `set_state` act as `agent` unless they name
    another agent."""

    agent: str
    script: Annotated[list[Step], Field(min_length=1)]

    @model_validator(mode="before")
    @classmethod
    def _acting_agent(cls, data: object) -> object:
        if isinstance(data, dict) and isinstance(data.get("agent"), str):
            data = {**data, "script": _default_agent(data.get("script"), data["agent"])}
        return data


class StopCondition(SpecModel):
    """Ends every timeline early when it holds (remaining steps are skipped, not failed):
    exactly one of `messages` (that many messages sent), `elapsed` (time since the script
    started), `keyword` (a message containing it, from `from` if set) or `custom` (a rule by
    import path, called with the run's view after each message, action and state change)."""

    messages: Annotated[int, Field(strict=True, ge=1)] | None = None
    elapsed: Duration | None = None
    keyword: Annotated[str, Field(min_length=1)] | None = None
    from_: str | None = Field(None, alias="from")
    custom: ImportPath | None = None
    params: dict[str, JsonValue] = {}

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        chosen = [
            k for k in ("messages", "elapsed", "keyword", "custom") if getattr(self, k) is not None
        ]
        if len(chosen) != 1:
            raise spec_error(
                "stop_when",
                "a stop condition needs exactly one of messages, elapsed, keyword, custom"
                + (f"; this one has {' and '.join(chosen)}" if chosen else ""),
            )
        if self.from_ is not None and self.keyword is None:
            raise spec_error("stop_when", "'from' applies to 'keyword' only")
        if self.params and self.custom is None:
            raise spec_error("stop_when", "'params' applies to 'custom' only")
        return self


StepLoc = tuple[str | int, ...]


def walk_steps(steps: list[Step], loc: StepLoc) -> Iterator[tuple[StepLoc, Step]]:
    """Every step in `steps` and inside their `repeat` and `parallel` blocks, depth first,
    with its path (`loc` + index, e.g. ("script", 3, "repeat", "steps", 0))."""
    for i, step in enumerate(steps):
        yield from walk_step(step, (*loc, i))


def walk_step(step: Step, loc: StepLoc) -> Iterator[tuple[StepLoc, Step]]:
    """`step` at `loc`, then every step inside its blocks."""
    yield loc, step
    if isinstance(step, RepeatStep):
        yield from walk_steps(step.repeat.steps, (*loc, "repeat", "steps"))
    elif isinstance(step, ParallelStep):
        yield from walk_steps(step.parallel, (*loc, "parallel"))
