"""The scenario file format: what a scenario may say, as pydantic models, and the checks that tie
its parts together (every member, sender and room it names is defined).

This module knows nothing of files or YAML; orchestrator/loader.py reads a file, validates it
against `Scenario` and turns every error into a located `Problem`. Reference problems (an undefined
agent, a duplicate id) carry the path of the offending field, so the loader can point at it.
"""

from __future__ import annotations

import difflib
import re
import string
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    JsonValue,
    Tag,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from orchestrator.durations import Duration

# Agent and room ids end up in socket routing ids, file names and report keys, hence the narrow
# alphabet. The coordinator is addressed by name on the bus, so no agent or room may take it.
ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
RESERVED_IDS: frozenset[str] = frozenset({"coordinator"})

# The names a rule's reply template may use; the agent fills them from the message it answers.
REPLY_PLACEHOLDERS: tuple[str, ...] = ("sender", "text", "room")

# Validation-context key: the loader passes {CHECK_REFERENCES: False} and runs
# `find_reference_issues` itself, because a model validator can raise only one error, at the
# scenario's root, while the loader reports each reference problem at its own line.
CHECK_REFERENCES = "check_references"

Loc = tuple[str | int, ...]
"""A path into scenario data: mapping keys (as written in the file) and list indexes."""


def format_loc(loc: Loc) -> str:
    """Render a path the way a user reads it: `script[2].wait_for.message.from`."""
    text = ""
    for segment in loc:
        if isinstance(segment, int):
            text += f"[{segment}]"
        else:
            text += f".{segment}" if text else segment
    return text


def describe_value(value: object) -> str:
    """Name a parsed YAML value's kind in the file's own terms, for "expected X, got Y"."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        return f"a number ({quote(value)})"
    if isinstance(value, str):
        return f"a string ({quote(value)})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def quote(value: object, limit: int = 60) -> str:
    """repr() of a user's value, cut short so that a problem still fits on one line."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 4]}...{text[-1]}"


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The one of `choices` that `word` is a near miss of, if any."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


def suggest(word: str, choices: Iterable[str]) -> str:
    """A " (did you mean 'x'?)" suffix when `word` is a near miss of one of `choices`, else ""."""
    guess = closest(word, choices)
    return f" (did you mean {guess!r}?)" if guess is not None else ""


def _error(kind: str, message: str) -> PydanticCustomError:
    # The message travels as context so that braces in user text (a regex, a reply template) are
    # never read as template fields; a custom error also keeps pydantic's "Value error, " prefix
    # out of what the user sees.
    return PydanticCustomError(kind, "{message}", {"message": message})


# --- field types -----------------------------------------------------------------------------


def _check_id(value: str) -> str:
    if re.fullmatch(ID_PATTERN, value) is None:
        raise _error("id", f"bad id {quote(value)}: use 1 to 64 letters, digits, '_', '.' or '-'")
    if value in RESERVED_IDS:
        raise _error("reserved_id", f"the id {quote(value)} is reserved for the runner itself")
    return value


def _check_name(value: str) -> str:
    # A scenario's name names its run directory and its junit suite: the id alphabet keeps both
    # safe, but "coordinator" is harmless here.
    if re.fullmatch(ID_PATTERN, value) is None:
        raise _error(
            "name", f"bad name {quote(value)}: use 1 to 64 letters, digits, '_', '.' or '-'"
        )
    return value


def _check_regex(value: str) -> str:
    try:
        re.compile(value)
    except (re.error, OverflowError, RecursionError) as exc:
        # The last two come from pathological patterns (huge repeat counts, deep nesting).
        raise _error("regex", f"bad regex {quote(value)}: {exc or type(exc).__name__}") from None
    return value


def _check_reply(template: str) -> str:
    return _check_template(template, REPLY_PLACEHOLDERS)


def _check_template(template: str, placeholders: Iterable[str], what: str = "reply") -> str:
    allowed_names = tuple(placeholders)
    try:
        fields = [
            (name, spec, conversion)
            for _, name, spec, conversion in string.Formatter().parse(template)
            if name is not None
        ]
    except ValueError as exc:
        raise _error(
            "reply_template",
            f"bad reply template {quote(template)}: {exc} (write {{{{ or }}}} for a literal brace)",
        ) from None
    allowed = ", ".join(f"{{{name}}}" for name in allowed_names)
    unknown = [name for name, _, _ in fields if name not in allowed_names]
    if unknown:
        names = ", ".join(f"{{{name}}}" for name in unknown)
        raise _error(
            "reply_template", f"unknown placeholder {names} in {what}; allowed: {allowed}"
        )
    # The agent substitutes plain text; a format spec or conversion would be a second template
    # language that nobody documents.
    fancy = [name for name, spec, conversion in fields if spec or conversion]
    if fancy:
        raise _error(
            "reply_template",
            f"placeholder {{{fancy[0]}}} in {what} takes no '!' conversion or ':' format spec",
        )
    return template


Id = Annotated[
    str,
    AfterValidator(_check_id),
    WithJsonSchema({"type": "string", "pattern": ID_PATTERN, "not": {"const": "coordinator"}}),
]
Name = Annotated[
    str, AfterValidator(_check_name), WithJsonSchema({"type": "string", "pattern": ID_PATTERN})
]
Regex = Annotated[str, AfterValidator(_check_regex)]
Template = Annotated[str, AfterValidator(_check_reply)]
# Strict so that YAML's `min: yes` is an error rather than a count of one.
Count = Annotated[int, Field(strict=True, ge=0)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# --- agents and rooms ------------------------------------------------------------------------


class MatchRule(_Model):
    """What a rule reacts to: exactly one of a substring or a regular expression."""

    contains: str | None = None
    regex: Regex | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.contains is None) == (self.regex is None):
            raise _error("match_rule", "set exactly one of 'contains' or 'regex'")
        return self


class ActionCallSpec(_Model):
    """An action a model selects. String parameters are templates over {sender}, {text},
    {room} and, in a rule with a regex, its named groups."""

    name: Annotated[str, Field(min_length=1)]
    params: dict[str, JsonValue] = {}


def _rule_placeholders(when: object) -> tuple[str, ...]:
    """What a rule's templates may use: the message's fields and its regex's named groups."""
    groups = (
        sorted(re.compile(when.regex).groupindex)
        if isinstance(when, MatchRule) and when.regex
        else []
    )
    return (*REPLY_PLACEHOLDERS, *groups)


class Rule(_Model):
    """When a message matches, answer with `reply` (a template over {sender}, {text}, {room})
    and/or run `actions`."""

    when: MatchRule
    reply: str | None = None
    actions: list[ActionCallSpec] = []

    @field_validator("reply")
    @classmethod
    def _reply_template(cls, reply: str | None, info: ValidationInfo) -> str | None:
        # `when` is declared first, so it is in info.data when it was valid.
        when = info.data.get("when")
        if reply is not None:
            _check_template(reply, _rule_placeholders(when))
        return reply

    @model_validator(mode="after")
    def _does_something(self) -> Self:
        if self.reply is None and not self.actions:
            raise _error("rule", "a rule needs a 'reply', 'actions', or both")
        allowed = _rule_placeholders(self.when)
        for call in self.actions:
            for text in _strings(call.params):
                _check_template(text, allowed, f"the parameters of {call.name}")
        return self


def _strings(value: JsonValue) -> Iterable[str]:
    """Every string in a JSON value, recursively."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)


class FixtureMatch(_Model):
    """Which model call a fixture answers: the n-th (`position`, from 1) and/or one whose
    prompt contains a text or matches a regex."""

    position: Annotated[int, Field(strict=True, ge=1)] | None = None
    prompt_contains: str | None = None
    prompt_regex: Regex | None = None


class Fixture(_Model):
    """A recorded model response: the reply and the actions (with parameters)."""

    match: FixtureMatch | None = None
    reply: Template | None = None
    actions: list[ActionCallSpec] = []

    @model_validator(mode="after")
    def _templates(self) -> Self:
        for call in self.actions:
            for text in _strings(call.params):
                _check_template(text, REPLY_PLACEHOLDERS, f"the parameters of {call.name}")
        return self


class OpenAISpec(_Model):
    base_url: Annotated[str, Field(min_length=1)]
    model: Annotated[str, Field(min_length=1)]
    api_key_env: str | None = None
    timeout: Duration = Duration(30.0)
    max_retries: Annotated[int, Field(strict=True, ge=0, le=10)] = 2
    temperature: float | None = None
    system_prompt: str | None = None


class ModelSpec(_Model):
    """Exactly one model provider: `rules`, `fixtures` or `openai`."""

    rules: list[Rule] | None = None
    fixtures: list[Fixture] | None = None
    openai: OpenAISpec | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        chosen = [k for k in ("rules", "fixtures", "openai") if getattr(self, k) is not None]
        if len(chosen) != 1:
            raise _error(
                "model",
                "a model is exactly one of rules, fixtures, openai"
                + (f"; this one has {' and '.join(chosen)}" if chosen else ""),
            )
        return self


def _check_plugin_path(value: str) -> str:
    module, sep, attribute = value.partition(":")
    if (
        not sep
        or not all(part.isidentifier() for part in module.split("."))
        or not attribute.isidentifier()
    ):
        raise _error("plugin_path", f"{quote(value)} is not an import path 'package.module:name'")
    return value


PluginPath = Annotated[str, AfterValidator(_check_plugin_path)]


class MemorySpec(_Model):
    """Retention of the agent's memory store: at most `max_per_room` memories per room (the
    oldest go first) and none older than `max_age`."""

    max_per_room: Annotated[int, Field(strict=True, ge=1)] | None = None
    max_age: Duration | None = None


class AgentSpec(_Model):
    id: Id
    name: str | None = None
    bio: str = ""
    model: ModelSpec | None = None
    plugins: list[PluginPath] = []
    settings: dict[str, JsonValue] = {}
    memory: MemorySpec = MemorySpec()
    action_timeout: Duration = Duration(10.0)


class RoomSpec(_Model):
    id: Id
    type: Literal["dm", "group"] = "group"
    members: Annotated[
        list[str],
        WithJsonSchema({"type": "array", "items": {"type": "string"}, "minItems": 1}),
    ]

    @field_validator("members")
    @classmethod
    def _member_count(cls, members: list[str], info: ValidationInfo) -> list[str]:
        # Checked here rather than with min_length so that the message speaks of rooms and
        # members; `type` is declared first, so it is in info.data when it was valid.
        if not members:
            raise _error("room_members", "a room needs at least one member")
        if info.data.get("type") == "dm" and len(members) != 2:
            raise _error(
                "room_members", f"a dm room has exactly 2 members, this one has {len(members)}"
            )
        return members


def channel_type(room_type: str) -> str:
    """The channel type of a room as agent runtimes name it."""
    match room_type:
        case "dm":
            return "DM"
        case _:
            return "GROUP"


# --- keyed unions: a step or an assertion is a mapping whose one kind key picks its model ------


def _kind_key_check(
    what: str, kinds: Mapping[str, type[_Model]], shared: frozenset[str]
) -> BeforeValidator:
    """Reject a `what` (step, assertion) unless it has exactly one of the `kinds` keys.

    Without this, pydantic reports "Unable to extract tag using discriminator" for a typo such as
    `wiat_for:`; here the user is told which keys exist and, when close, which one was meant.
    """
    known = ", ".join(kinds)

    def check(value: object) -> object:
        if isinstance(value, tuple(kinds.values())):
            return value
        if not isinstance(value, dict):
            raise _error(
                f"{what}_type",
                f"a {what} must be a mapping with one of the keys {known}, "
                f"got {describe_value(value)}",
            )
        present = [key for key in kinds if key in value]
        if len(present) == 1:
            return value
        if present:
            raise _error(
                f"{what}_type",
                f"a {what} has exactly one of the keys {known}; this one has "
                + " and ".join(present),
            )
        unknown = [key for key in value if key not in shared]
        if unknown:
            first = str(unknown[0])
            raise _error(
                f"{what}_type",
                f"unknown {what} type {quote(first)}{suggest(first, kinds)}; "
                f"known {what} types: {known}",
            )
        raise _error(f"{what}_type", f"a {what} needs one of the keys {known}")

    return BeforeValidator(check)


def _kind_tag(kinds: Mapping[str, type[_Model]]) -> Callable[[object], str | None]:
    """The discriminator of a keyed union: the tag (model name) of the one kind key present."""

    def tag(value: object) -> str | None:
        if isinstance(value, dict):
            present = [kinds[key].__name__ for key in kinds if key in value]
        elif isinstance(value, BaseModel):
            present = [type(value).__name__] if type(value) in kinds.values() else []
        else:
            present = []
        return present[0] if len(present) == 1 else None

    return tag


# --- script steps ----------------------------------------------------------------------------


class SendArgs(_Model):
    agent: str
    room: str
    text: str


class MessageMatch(_Model):
    """A message seen on the bus, matched on every field that is set."""

    from_: str | None = Field(None, alias="from")
    room: str | None = None
    contains: str | None = None
    regex: Regex | None = None

    @model_validator(mode="after")
    def _at_least_one(self) -> Self:
        if (
            self.from_ is None
            and self.room is None
            and self.contains is None
            and self.regex is None
        ):
            raise _error(
                "message_match", "a message match needs at least one of from, room, contains, regex"
            )
        return self


ActionStatus = Literal["succeeded", "failed", "invalid", "error", "timeout"]


class ActionMatch(_Model):
    """An action run (`action.completed` or `action.failed`), matched on every field set."""

    agent: str
    name: str | None = None
    status: ActionStatus | None = None


# Strict: a quoted "3" or a YAML boolean is not a number. Ints arrive as floats.
Number = Annotated[float, Field(strict=True)]

STATE_TESTS: tuple[str, ...] = ("equals", "not_equals", "exists", "absent", "lt", "le", "gt", "ge")


class StateCheck(_Model):
    """A condition on the value at dotted `path` in `agent`'s state: exactly one of `equals`,
    `not_equals`, `exists: true`, `absent: true`, or a comparison with one or two of `lt`, `le`,
    `gt`, `ge` (e.g. `gt: 0, le: 10`); compared values must be numbers."""

    agent: str
    path: Annotated[str, Field(min_length=1)]
    equals: JsonValue = None
    not_equals: JsonValue = None
    exists: Literal[True] | None = None
    absent: Literal[True] | None = None
    lt: Number | None = None
    le: Number | None = None
    gt: Number | None = None
    ge: Number | None = None

    @field_validator("path")
    @classmethod
    def _path(cls, path: str) -> str:
        if any(not part for part in path.split(".")):
            raise _error("state_path", f"bad state path {quote(path)}: empty segment")
        return path

    @model_validator(mode="before")
    @classmethod
    def _exists_false(cls, data: object) -> object:
        # `exists: false` reads naturally and means `absent: true`.
        if isinstance(data, dict) and data.get("exists") is False and "absent" not in data:
            data = {k: v for k, v in data.items() if k != "exists"} | {"absent": True}
        return data

    @model_validator(mode="after")
    def _one_test(self) -> Self:
        chosen = [k for k in STATE_TESTS if k in self.model_fields_set]
        compare = [k for k in chosen if k in ("lt", "le", "gt", "ge")]
        plain = [k for k in chosen if k not in compare]
        if (len(plain) == 1 and not compare) or (not plain and compare):
            if ("lt" in compare and "le" in compare) or ("gt" in compare and "ge" in compare):
                raise _error("state_check", "set at most one upper (lt, le) and one lower (gt, ge)")
            return self
        raise _error(
            "state_check",
            "a state check needs exactly one of equals, not_equals, exists, absent, or a "
            "comparison (lt, le, gt, ge)"
            + (f"; this one has {' and '.join(chosen)}" if chosen else ""),
        )


class WaitForArgs(_Model):
    """Exactly one of `message`, `action` or `state`."""

    message: MessageMatch | None = None
    action: ActionMatch | None = None
    state: StateCheck | None = None
    # None: the step waits as long as the scenario's own timeout allows.
    timeout: Duration | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        chosen = [k for k in ("message", "action", "state") if getattr(self, k) is not None]
        if len(chosen) != 1:
            raise _error(
                "wait_for",
                "wait_for needs exactly one of 'message', 'action' or 'state'"
                + (f"; this one has {' and '.join(chosen)}" if chosen else ""),
            )
        return self


class ActionArgs(_Model):
    """Run action `name` in `agent`'s runtime (validate, then its handler); the step passes
    when the action ends with status `expect`."""

    agent: str
    name: Annotated[str, Field(min_length=1)]
    params: dict[str, JsonValue] = {}
    room: str | None = None
    expect: ActionStatus = "succeeded"
    timeout: Duration | None = None


class SetStateArgs(_Model):
    agent: str
    path: Annotated[str, Field(min_length=1)]
    value: JsonValue


class SendStep(_Model):
    send: SendArgs
    id: str | None = None


class WaitForStep(_Model):
    wait_for: WaitForArgs
    id: str | None = None


class ActionStep(_Model):
    action: ActionArgs
    id: str | None = None


class SetStateStep(_Model):
    set_state: SetStateArgs
    id: str | None = None


# To add a step type: write its model (its one kind key as a field, plus `id`), add it here and to
# the `Step` union below with its Tag.
STEP_TYPES: dict[str, type[_Model]] = {
    "send": SendStep,
    "wait_for": WaitForStep,
    "action": ActionStep,
    "set_state": SetStateStep,
}

Step = Annotated[
    Annotated[SendStep, Tag("SendStep")]
    | Annotated[WaitForStep, Tag("WaitForStep")]
    | Annotated[ActionStep, Tag("ActionStep")]
    | Annotated[SetStateStep, Tag("SetStateStep")],
    Discriminator(_kind_tag(STEP_TYPES)),
    _kind_key_check("step", STEP_TYPES, frozenset({"id"})),
]


# --- assertions ------------------------------------------------------------------------------


class CountRange(_Model):
    """How many matching messages are acceptable; an unset bound is unbounded."""

    min: Count | None = None
    max: Count | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise _error("count_range", f"count min ({self.min}) is greater than max ({self.max})")
        return self


class MessageAssertionArgs(_Model):
    """Holds when the number of messages from `from` matching every set filter is in `count`."""

    from_: str = Field(alias="from")
    room: str | None = None
    contains: str | None = None
    regex: Regex | None = None
    not_contains: str | None = None
    count: CountRange = CountRange(min=1)


class MessageAssertion(_Model):
    message: MessageAssertionArgs
    id: str | None = None


class ActionAssertionArgs(_Model):
    """Holds when the number of `agent`'s runs of action `name` that ended with `status` and
    whose parameters include every key/value of `params` is in `count`."""

    agent: str
    name: Annotated[str, Field(min_length=1)]
    status: ActionStatus | None = "succeeded"
    params: dict[str, JsonValue] = {}
    count: CountRange = CountRange(min=1)


class ActionAssertion(_Model):
    action: ActionAssertionArgs
    id: str | None = None


StateAssertionArgs = StateCheck
"""A state assertion judges `agent`'s final state (sent with BYE) with a `StateCheck`."""


class StateAssertion(_Model):
    state: StateAssertionArgs
    id: str | None = None


# To add an assertion type: write its model, add it here and to the `Assertion` union.
ASSERTION_TYPES: dict[str, type[_Model]] = {
    "message": MessageAssertion,
    "action": ActionAssertion,
    "state": StateAssertion,
}

Assertion = Annotated[
    Annotated[MessageAssertion, Tag("MessageAssertion")]
    | Annotated[ActionAssertion, Tag("ActionAssertion")]
    | Annotated[StateAssertion, Tag("StateAssertion")],
    Discriminator(_kind_tag(ASSERTION_TYPES)),
    _kind_key_check("assertion", ASSERTION_TYPES, frozenset({"id"})),
]

# The tags pydantic puts into an error's location for a keyed union member; they are not part of
# the data, and the loader drops them when it turns a location into a path in the file.
UNION_TAGS: frozenset[str] = frozenset(
    model.__name__ for kinds in (STEP_TYPES, ASSERTION_TYPES) for model in kinds.values()
)


# --- the scenario ----------------------------------------------------------------------------


def _check_agents(agents: list[AgentSpec]) -> list[AgentSpec]:
    if not agents:
        raise _error("no_agents", "a scenario needs at least one agent")
    return agents


def _check_assertions(assertions: list[Assertion]) -> list[Assertion]:
    # A scenario that asserts nothing can only pass, which makes it no test at all.
    if not assertions:
        raise _error(
            "no_assertions", "a scenario with no assertion is invalid: add one under 'assertions'"
        )
    return assertions


class Scenario(_Model):
    name: Name
    description: str = ""
    timeout: Duration = Duration(60.0)
    agents: Annotated[list[AgentSpec], AfterValidator(_check_agents)]
    rooms: list[RoomSpec] = []
    script: list[Step] = []
    assertions: Annotated[list[Assertion], AfterValidator(_check_assertions)]

    @model_validator(mode="after")
    def _references(self, info: ValidationInfo) -> Self:
        if isinstance(info.context, dict) and info.context.get(CHECK_REFERENCES) is False:
            return self
        issues = self.reference_issues()
        if issues:
            raise _error("references", "; ".join(str(issue) for issue in issues))
        return self

    def reference_issues(self) -> list[ReferenceIssue]:
        return find_reference_issues(
            dict(enumerate(self.agents)),
            dict(enumerate(self.rooms)),
            dict(enumerate(self.script)),
            dict(enumerate(self.assertions)),
        )


# --- references between the parts of a scenario ----------------------------------------------


@dataclass(frozen=True)
class ReferenceIssue:
    """A problem between parts of a scenario, at the path of the field that is wrong."""

    loc: Loc
    message: str

    def __str__(self) -> str:
        return f"{format_loc(self.loc)}: {self.message}"


def find_reference_issues(
    agents: Mapping[int, AgentSpec],
    rooms: Mapping[int, RoomSpec],
    script: Mapping[int, Step],
    assertions: Mapping[int, Assertion],
) -> list[ReferenceIssue]:
    """Every reference problem, not just the first.

    The sections are keyed by their index in the file, so that the loader can check the items
    that did validate while reporting the others' own errors.
    """
    issues: list[ReferenceIssue] = []

    def issue(loc: Loc, message: str) -> None:
        issues.append(ReferenceIssue(loc, message))

    agent_at: dict[str, int] = {}
    for i, agent in agents.items():
        if agent.id in agent_at:
            first = format_loc(("agents", agent_at[agent.id]))
            issue(
                ("agents", i, "id"),
                f"duplicate agent id {quote(agent.id)} (first defined at {first})",
            )
        else:
            agent_at[agent.id] = i

    def undefined_agent(name: str) -> str:
        return f"undefined agent {quote(name)}{suggest(name, agent_at)}"

    room_at: dict[str, int] = {}
    for i, room in rooms.items():
        if room.id in room_at:
            first = format_loc(("rooms", room_at[room.id]))
            issue(
                ("rooms", i, "id"), f"duplicate room id {quote(room.id)} (first defined at {first})"
            )
        else:
            room_at[room.id] = i
        # A message is addressed to a room or to an agent by id, so one id must not mean both.
        if room.id in agent_at:
            issue(("rooms", i, "id"), f"room id {quote(room.id)} is also an agent id")
        seen: set[str] = set()
        for j, member in enumerate(room.members):
            if member not in agent_at:
                issue(("rooms", i, "members", j), undefined_agent(member))
            elif member in seen:
                issue(("rooms", i, "members", j), f"agent {quote(member)} is listed twice")
            seen.add(member)

    members = {room_id: set(rooms[i].members) for room_id, i in room_at.items()}

    def undefined_room(name: str) -> str:
        return f"undefined room {quote(name)}{suggest(name, room_at)}"

    step_at: dict[str, int] = {}
    for i, step in script.items():
        if step.id is not None:
            if step.id in step_at:
                first = format_loc(("script", step_at[step.id]))
                issue(("script", i, "id"), f"duplicate step id {quote(step.id)} (first at {first})")
            else:
                step_at[step.id] = i
        match step:
            case SendStep(send=send):
                if send.agent not in agent_at:
                    issue(("script", i, "send", "agent"), undefined_agent(send.agent))
                if send.room not in room_at:
                    issue(("script", i, "send", "room"), undefined_room(send.room))
                elif send.agent in agent_at and send.agent not in members[send.room]:
                    issue(
                        ("script", i, "send", "agent"),
                        f"agent {quote(send.agent)} is not a member of room {quote(send.room)}",
                    )
            case ActionStep(action=action):
                if action.agent not in agent_at:
                    issue(("script", i, "action", "agent"), undefined_agent(action.agent))
                if action.room is not None and action.room not in room_at:
                    issue(("script", i, "action", "room"), undefined_room(action.room))
            case SetStateStep(set_state=set_state):
                if set_state.agent not in agent_at:
                    issue(("script", i, "set_state", "agent"), undefined_agent(set_state.agent))
            case WaitForStep(wait_for=WaitForArgs(action=ActionMatch() as wanted_action)):
                if wanted_action.agent not in agent_at:
                    issue(
                        ("script", i, "wait_for", "action", "agent"),
                        undefined_agent(wanted_action.agent),
                    )
            case WaitForStep(wait_for=WaitForArgs(state=StateCheck() as wanted_state)):
                if wanted_state.agent not in agent_at:
                    issue(
                        ("script", i, "wait_for", "state", "agent"),
                        undefined_agent(wanted_state.agent),
                    )
            case WaitForStep(wait_for=WaitForArgs(message=MessageMatch() as wanted)):
                loc: Loc = ("script", i, "wait_for", "message")
                if wanted.from_ is not None and wanted.from_ not in agent_at:
                    issue((*loc, "from"), undefined_agent(wanted.from_))
                if wanted.room is not None and wanted.room not in room_at:
                    issue((*loc, "room"), undefined_room(wanted.room))
                elif (
                    wanted.room is not None
                    and wanted.from_ in agent_at
                    and wanted.from_ not in members[wanted.room]
                ):
                    # Such a message can never be sent, so the step could only time out.
                    issue(
                        (*loc, "from"),
                        f"agent {quote(wanted.from_)} is not a member of room "
                        f"{quote(wanted.room)}, so this wait could only time out",
                    )

    assertion_at: dict[str, int] = {}
    for i, assertion in assertions.items():
        if assertion.id is not None:
            if assertion.id in assertion_at:
                first = format_loc(("assertions", assertion_at[assertion.id]))
                issue(
                    ("assertions", i, "id"),
                    f"duplicate assertion id {quote(assertion.id)} (first at {first})",
                )
            else:
                assertion_at[assertion.id] = i
        match assertion:
            case MessageAssertion(message=args):
                if args.from_ not in agent_at:
                    issue(("assertions", i, "message", "from"), undefined_agent(args.from_))
                if args.room is not None and args.room not in room_at:
                    issue(("assertions", i, "message", "room"), undefined_room(args.room))
            case ActionAssertion(action=a) | StateAssertion(state=a):
                key = "action" if isinstance(assertion, ActionAssertion) else "state"
                if a.agent not in agent_at:
                    issue(("assertions", i, key, "agent"), undefined_agent(a.agent))

    return issues
