"""The assertions a scenario may make: one model per assertion type, each a mapping with one
kind key (`message`, `state`, `action`, `timing`, `memory`, `errors`, `delivery`, `custom`)
plus the shared `id`, `weight` and `required`.

What each one means is judged in `orchestrator/judge/judges.py`; this module only says what
may be written.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, Self

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ByteSize,
    Discriminator,
    Field,
    JsonValue,
    Tag,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from orchestrator.events import ErrorKind
from orchestrator.scenario.durations import Duration
from orchestrator.scenario.jsonschema_lite import SchemaError, check_schema
from orchestrator.scenario.schema import (
    ActionMatch,
    ActionStatus,
    CountRange,
    EventMatch,
    ImportPath,
    MessageMatch,
    Origin,
    Regex,
    SpecModel,
    StateCheck,
    kind_key_check,
    kind_tag,
    quote,
    spec_error,
)

Weight = Annotated[float, Field(strict=True, ge=0)]


class AssertionBase(SpecModel):
    """What every assertion has besides its kind key."""

    id: str | None = None
    weight: Weight = 1.0
    """Its share of the verification score."""
    required: bool = True
    """A required assertion that fails makes the verdict FAIL whatever the score."""


# --- message ---------------------------------------------------------------------------------


def _check_json_schema(schema: dict[str, JsonValue]) -> dict[str, JsonValue]:
    try:
        check_schema(schema)
    except SchemaError as exc:
        raise spec_error("json_schema", f"bad json_schema: {exc}") from None
    return schema


class Anchor(SpecModel):
    """The event a time window starts from: exactly one of a message, an action run or any
    event."""

    message: MessageMatch | None = None
    action: ActionMatch | None = None
    event: EventMatch | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        chosen = [k for k in ("message", "action", "event") if getattr(self, k) is not None]
        if len(chosen) != 1:
            raise spec_error(
                "anchor",
                "needs exactly one of 'message', 'action' or 'event'"
                + (f"; this one has {' and '.join(chosen)}" if chosen else ""),
            )
        return self


class Within(SpecModel):
    """Only messages sent at most `window` after the latest `of` event before them count."""

    window: Duration
    of: Anchor


class MessageAssertionArgs(SpecModel):
    """Holds when the number of messages from `from` matching every set filter is in `count`,
    none of them contains `not_contains` or breaks `json_schema`, and the order holds."""

    from_: str = Field(alias="from")
    to: str | None = None
    room: str | None = None
    contains: str | None = None
    regex: Regex | None = None
    equals: str | None = None
    not_contains: str | None = None
    json_schema: Annotated[dict[str, JsonValue], AfterValidator(_check_json_schema)] | None = None
    """Every matching message's text is JSON that this schema accepts."""
    origin: Origin = "agent"
    count: CountRange = CountRange(min=1)
    before: MessageMatch | None = None
    """The first matching message comes before the first message matching this."""
    after: MessageMatch | None = None
    """The first matching message comes after the first message matching this."""
    within: Within | None = None

    def match(self) -> MessageMatch:
        """The filter part, as a match (what `wait_for` would wait for)."""
        return MessageMatch.model_validate(
            {
                "from": self.from_,
                "to": self.to,
                "room": self.room,
                "contains": self.contains,
                "regex": self.regex,
                "equals": self.equals,
                "origin": self.origin,
            }
        )


class MessageAssertion(AssertionBase):
    message: MessageAssertionArgs


# --- action and state ------------------------------------------------------------------------


class ActionAssertionArgs(SpecModel):
    """Holds when the number of `agent`'s runs of action `name` that ended with `status` and
    whose parameters include every key/value of `params` is in `count`."""

    agent: str
    name: Annotated[str, Field(min_length=1)]
    status: ActionStatus | None = "succeeded"
    params: dict[str, JsonValue] = {}
    count: CountRange = CountRange(min=1)


class ActionAssertion(AssertionBase):
    action: ActionAssertionArgs


class StateAssertion(AssertionBase):
    """At the end: on `agent`'s final state (sent with BYE). Inline (`assert` step): on its
    live state."""

    state: StateCheck


# --- timing ----------------------------------------------------------------------------------

PERCENTILES: tuple[str, ...] = ("p50", "p95", "p99", "max")


class TimingAssertionArgs(SpecModel):
    """Latency percentiles, a step's duration or the scenario's duration, under limits.

    Exactly one of `latency` (`delivery`: from the bus accepting a message to the recipient's
    ack; `reply`: from a message's delivery to an agent until that agent's reply to it, per
    `agent` and/or `room`), `step` (a step id: the durations of its runs) or `scenario: true`
    (the script's duration; only `max`)."""

    latency: Literal["delivery", "reply"] | None = None
    agent: str | None = None
    room: str | None = None
    step: str | None = None
    scenario: Literal[True] | None = None
    p50: Duration | None = None
    p95: Duration | None = None
    p99: Duration | None = None
    max: Duration | None = None

    @model_validator(mode="after")
    def _shape(self) -> Self:
        chosen = [k for k in ("latency", "step", "scenario") if getattr(self, k) is not None]
        if len(chosen) != 1:
            raise spec_error(
                "timing",
                "a timing assertion needs exactly one of latency, step, scenario"
                + (f"; this one has {' and '.join(chosen)}" if chosen else ""),
            )
        if not any(getattr(self, p) is not None for p in PERCENTILES):
            raise spec_error("timing", "a timing assertion needs a limit: p50, p95, p99 or max")
        if self.latency is None and (self.agent is not None or self.room is not None):
            raise spec_error("timing", "'agent' and 'room' apply to latency only")
        if self.scenario and any(getattr(self, p) is not None for p in PERCENTILES[:3]):
            raise spec_error("timing", "the scenario has one duration: use 'max'")
        return self

    def limits(self) -> dict[str, Duration]:
        return {p: d for p in PERCENTILES if (d := getattr(self, p)) is not None}


class TimingAssertion(AssertionBase):
    timing: TimingAssertionArgs


# --- memory ----------------------------------------------------------------------------------

Size = Annotated[
    ByteSize,
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*[A-Za-z]*\s*$"},
            ]
        }
    ),
]
"""A size in bytes, written as a number or with a unit: `200MiB`, `1.5GB`, `512KiB`."""


def _check_agent_pattern(value: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9_.*?\[\]!-]{1,64}", value) is None:
        raise spec_error("agent_pattern", f"bad agent id or pattern {quote(value)}")
    return value


AgentPattern = Annotated[str, AfterValidator(_check_agent_pattern)]
"""An agent id, or a shell-style pattern over agent ids (`worker-*`)."""


_RATE_UNITS = {"s": 3600.0, "min": 60.0, "m": 60.0, "h": 1.0}


def _parse_rate(value: object) -> float:
    """`1MiB/h`, `64KiB/min`, `10kB/s` -> bytes per hour."""
    if not isinstance(value, str) or value.count("/") != 1:
        message = f"a growth rate is a size per time, like 1MiB/h, not {quote(value)}"
        raise spec_error("rate", message)
    size, _, unit = value.partition("/")
    per = _RATE_UNITS.get(unit.strip())
    if per is None:
        raise spec_error("rate", f"{quote(value)}: the time unit is one of s, m (or min), h")
    try:
        amount = _SIZE.validate_python(size.strip())
    except ValidationError:
        raise spec_error("rate", f"{quote(value)}: {quote(size.strip())} is not a size") from None
    if amount <= 0:
        raise spec_error("rate", f"{quote(value)}: a growth limit must be more than nothing")
    return float(amount) * per


_SIZE: TypeAdapter[ByteSize] = TypeAdapter(ByteSize)


GrowthRate = Annotated[
    float,
    BeforeValidator(_parse_rate),
    WithJsonSchema(
        {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*[A-Za-z]*\s*/\s*(s|min|m|h)$"}
    ),
]
"""A growth rate, written as a size per time unit: `1MiB/h`, `64KiB/min`; bytes per hour."""


class GrowthLimit(SpecModel):
    """The most memory (USS and RSS) may grow after the warm-up, at 95% confidence: the
    upper bound of the slope's interval must be under `max`."""

    max: GrowthRate


class MemoryAssertionArgs(SpecModel):
    """Each selected agent's peak RSS (its own high-water mark) and/or its largest sampled USS
    stay at or under the limits. `agent` is an id or a pattern; unset means every agent."""

    agent: AgentPattern | None = None
    peak_rss: Size | None = None
    uss: Size | None = None
    growth: GrowthLimit | None = None
    leak: Literal["none", "detected"] | None = None
    """`none`: every series of each selected agent (USS, RSS, descriptors, threads) must be
    judged NO LEAK after the warm-up; a LEAK fails, and so does INCONCLUSIVE (the run could not
    tell: make it longer). `detected`: each selected agent must be judged LEAK in at least one
    series (a known-leaky control that the instrument must catch)."""

    @model_validator(mode="after")
    def _a_limit(self) -> Self:
        if all(x is None for x in (self.peak_rss, self.uss, self.leak, self.growth)):
            raise spec_error(
                "memory", "a memory assertion needs a limit: peak_rss, uss, growth and/or leak"
            )
        return self


class MemoryAssertion(AssertionBase):
    memory: MemoryAssertionArgs


# --- errors and delivery ---------------------------------------------------------------------


class ErrorsAssertionArgs(SpecModel):
    """At most `max` errors (default none) of the given `kind`s (default all), optionally only
    from `agent`. Errors that an `errors` assertion covers are judged by it instead of making
    the verdict ERROR, except the run's own (crash, hung, step, rule, init, startup, runner),
    which always do. The kinds are `orchestrator.events.ErrorKind`: `handler` (an action
    handler, a provider or an evaluator raised, or handling a message failed), `model` (a model
    call failed, fixture problems), `service` (a service failed to stop), `agent` (anything
    else an agent reported), `limit` (an agent went past one of its `limits`; covered, it is a
    planned limit), and the run's own kinds."""

    max: Annotated[int, Field(strict=True, ge=0)] = 0
    kind: list[ErrorKind] | None = None
    agent: str | None = None


class ErrorsAssertion(AssertionBase):
    errors: ErrorsAssertionArgs


class DeliveryAssertionArgs(SpecModel):
    """Every message sent (to or from `agent`, if set) was acknowledged by each recipient,
    none was dead-lettered and none reached a handler twice."""

    agent: str | None = None


class DeliveryAssertion(AssertionBase):
    delivery: DeliveryAssertionArgs


# --- custom ----------------------------------------------------------------------------------


class CustomAssertionArgs(SpecModel):
    """A Python callable, by import path, that receives a read-only view of the run (and
    `params`) and returns a `RuleResult` (`orchestrator.rules`)."""

    rule: ImportPath
    params: dict[str, JsonValue] = {}
    timeout: Duration = Duration(30.0)


class CustomAssertion(AssertionBase):
    custom: CustomAssertionArgs


# To add an assertion type: write its model, add it here and to the `Assertion` union.
ASSERTION_TYPES: dict[str, type[SpecModel]] = {
    "message": MessageAssertion,
    "action": ActionAssertion,
    "state": StateAssertion,
    "timing": TimingAssertion,
    "memory": MemoryAssertion,
    "errors": ErrorsAssertion,
    "delivery": DeliveryAssertion,
    "custom": CustomAssertion,
}

Assertion = Annotated[
    Annotated[MessageAssertion, Tag("MessageAssertion")]
    | Annotated[ActionAssertion, Tag("ActionAssertion")]
    | Annotated[StateAssertion, Tag("StateAssertion")]
    | Annotated[TimingAssertion, Tag("TimingAssertion")]
    | Annotated[MemoryAssertion, Tag("MemoryAssertion")]
    | Annotated[ErrorsAssertion, Tag("ErrorsAssertion")]
    | Annotated[DeliveryAssertion, Tag("DeliveryAssertion")]
    | Annotated[CustomAssertion, Tag("CustomAssertion")],
    Discriminator(kind_tag(ASSERTION_TYPES)),
    kind_key_check("assertion", ASSERTION_TYPES, frozenset(AssertionBase.model_fields)),
]


def assertion_kind(assertion: Assertion) -> str:
    for key, model in ASSERTION_TYPES.items():
        if isinstance(assertion, model):
            return key
    raise AssertionError(f"unknown assertion {assertion!r}")
