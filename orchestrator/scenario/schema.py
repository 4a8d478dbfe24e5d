"""The building blocks of the scenario format: field types (ids, regexes, templates, counts),
the error helpers that make every validation problem one clear line, the keyed-union machinery
that lets a step or an assertion be "a mapping with one kind key", and the match models that
waits and assertions share (messages, actions, events, state).

The parts of a scenario are in `spec.py` (agents, rooms, the whole file and the references
between its parts), `steps.py` and `assertions.py`.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
import string
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Literal, Self

import msgspec
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from orchestrator.events import EVENT_KINDS, event_fields
from orchestrator.scenario.durations import Duration
from protocol import MAX_TEXT_BYTES

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
    """repr() of a user's value, cut short (with its size) so that a problem still fits on one
    line."""
    text = repr(value)
    size = len(value) if isinstance(value, str | bytes) else len(text)
    return clip(text, limit, size, "bytes" if isinstance(value, bytes) else "characters")


def clip(text: str, limit: int = 200, size: int | None = None, unit: str = "characters") -> str:
    """`text`, or its start and last character and its size (`size`, default its length) when
    it is longer than `limit`: a big text is never printed or reported whole."""
    if len(text) <= limit:
        return text
    return f"{text[: max(1, limit - 4)]}...{text[-1]} ({size or len(text):,} {unit})"


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The one of `choices` that `word` is a near miss of, if any."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


def suggest(word: str, choices: Iterable[str]) -> str:
    """A " (did you mean 'x'?)" suffix when `word` is a near miss of one of `choices`, else ""."""
    guess = closest(word, choices)
    return f" (did you mean {guess!r}?)" if guess is not None else ""


def spec_error(kind: str, message: str) -> PydanticCustomError:
    # The message travels as context so that braces in user text (a regex, a reply template) are
    # never read as template fields; a custom error also keeps pydantic's "Value error, " prefix
    # out of what the user sees.
    return PydanticCustomError(kind, "{message}", {"message": message})


# --- field types -----------------------------------------------------------------------------


def check_id(value: str) -> str:
    if re.fullmatch(ID_PATTERN, value) is None:
        raise spec_error(
            "id", f"bad id {quote(value)}: use 1 to 64 letters, digits, '_', '.' or '-'"
        )
    if value in RESERVED_IDS:
        raise spec_error("reserved_id", f"the id {quote(value)} is reserved for the runner itself")
    return value


def check_text(value: str) -> str:
    """A message's text: it must fit in one frame (MAX_TEXT_BYTES)."""
    size = len(value.encode("utf-8", errors="surrogatepass"))
    if size > MAX_TEXT_BYTES:
        raise spec_error(
            "text_size",
            f"the text is {size / 1024:,.0f} KiB: a message carries at most"
            f" {MAX_TEXT_BYTES // 1024:,} KiB",
        )
    return value


MessageText = Annotated[str, AfterValidator(check_text)]
"""A text an agent is made to say (a `send` step's)."""


def check_positive(value: Duration) -> Duration:
    if value.seconds <= 0:
        raise spec_error("duration_zero", f"{value} is no time at all: give a positive duration")
    return value


PositiveDuration = Annotated[Duration, AfterValidator(check_positive)]


def _check_name(value: str) -> str:
    # A scenario's name names its run directory and its junit suite: the id alphabet keeps both
    # safe, but "coordinator" is harmless here.
    if re.fullmatch(ID_PATTERN, value) is None:
        raise spec_error(
            "name", f"bad name {quote(value)}: use 1 to 64 letters, digits, '_', '.' or '-'"
        )
    return value


def _check_regex(value: str) -> str:
    try:
        re.compile(value)
    except (re.error, OverflowError, RecursionError) as exc:
        # The last two come from pathological patterns (huge repeat counts, deep nesting).
        raise spec_error(
            "regex", f"bad regex {quote(value)}: {exc or type(exc).__name__}"
        ) from None
    return value


def check_reply(template: str) -> str:
    return check_template(template, REPLY_PLACEHOLDERS)


def check_template(template: str, placeholders: Iterable[str], what: str = "reply") -> str:
    allowed_names = tuple(placeholders)
    try:
        fields = [
            (name, spec, conversion)
            for _, name, spec, conversion in string.Formatter().parse(template)
            if name is not None
        ]
    except ValueError as exc:
        raise spec_error(
            "reply_template",
            f"bad reply template {quote(template)}: {exc} (write {{{{ or }}}} for a literal brace)",
        ) from None
    allowed = ", ".join(f"{{{name}}}" for name in allowed_names)
    unknown = [name for name, _, _ in fields if name not in allowed_names]
    if unknown:
        names = ", ".join(f"{{{name}}}" for name in unknown)
        raise spec_error(
            "reply_template", f"unknown placeholder {names} in {what}; allowed: {allowed}"
        )
    # The agent substitutes plain text; a format spec or conversion would be a second template
    # language that nobody documents.
    fancy = [name for name, spec, conversion in fields if spec or conversion]
    if fancy:
        raise spec_error(
            "reply_template",
            f"placeholder {{{fancy[0]}}} in {what} takes no '!' conversion or ':' format spec",
        )
    return template


Id = Annotated[
    str,
    AfterValidator(check_id),
    WithJsonSchema({"type": "string", "pattern": ID_PATTERN, "not": {"const": "coordinator"}}),
]
Name = Annotated[
    str, AfterValidator(_check_name), WithJsonSchema({"type": "string", "pattern": ID_PATTERN})
]
Regex = Annotated[str, AfterValidator(_check_regex)]


def _check_import_path(value: str) -> str:
    module, sep, attribute = value.partition(":")
    if (
        not sep
        or not all(part.isidentifier() for part in module.split("."))
        or not attribute.isidentifier()
    ):
        raise spec_error(
            "import_path", f"{quote(value)} is not an import path 'package.module:name'"
        )
    return value


ImportPath = Annotated[str, AfterValidator(_check_import_path)]
"""A Python object by import path, `package.module:name` (plugins, custom rules)."""
Template = Annotated[str, AfterValidator(check_reply)]
# Strict so that YAML's `min: yes` is an error rather than a count of one.
Count = Annotated[int, Field(strict=True, ge=0)]


class SpecModel(BaseModel):
    """Every part of a scenario: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def is_pattern(member: str) -> bool:
    """A room member or memory-assertion agent written as a shell-style pattern."""
    return any(c in member for c in "*?[")


def match_agents(pattern: str, ids: list[str]) -> list[str]:
    """The ids a member or agent selector stands for: itself, or every id its pattern matches."""
    if not is_pattern(pattern):
        return [pattern] if pattern in ids else []
    return [i for i in ids if fnmatch.fnmatchcase(i, pattern)]


# --- keyed unions: a step or an assertion is a mapping whose one kind key picks its model ------


def kind_key_check(
    what: str, kinds: Mapping[str, type[SpecModel]], shared: frozenset[str]
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
            raise spec_error(
                f"{what}_type",
                f"a {what} must be a mapping with one of the keys {known}, "
                f"got {describe_value(value)}",
            )
        present = [key for key in kinds if key in value]
        if len(present) == 1:
            return value
        if present:
            raise spec_error(
                f"{what}_type",
                f"a {what} has exactly one of the keys {known}; this one has "
                + " and ".join(present),
            )
        unknown = [key for key in value if key not in shared]
        if unknown:
            first = str(unknown[0])
            raise spec_error(
                f"{what}_type",
                f"unknown {what} type {quote(first)}{suggest(first, kinds)}; "
                f"known {what} types: {known}",
            )
        raise spec_error(f"{what}_type", f"a {what} needs one of the keys {known}")

    return BeforeValidator(check)


def kind_tag(kinds: Mapping[str, type[SpecModel]]) -> Callable[[object], str | None]:
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


# --- what steps wait for and assertions judge ------------------------------------------------


class CountRange(SpecModel):
    """How many are acceptable: `exactly`, or `min` and/or `max` (an unset bound is unbounded)."""

    min: Count | None = None
    max: Count | None = None
    exactly: Count | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.exactly is not None and (self.min is not None or self.max is not None):
            raise spec_error("count_range", "count takes 'exactly' or 'min'/'max', not both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise spec_error(
                "count_range", f"count min ({self.min}) is greater than max ({self.max})"
            )
        return self

    @property
    def low(self) -> int | None:
        return self.exactly if self.exactly is not None else self.min

    @property
    def high(self) -> int | None:
        return self.exactly if self.exactly is not None else self.max

    def holds(self, n: int) -> bool:
        return (self.low is None or n >= self.low) and (self.high is None or n <= self.high)

    def describe(self) -> str:
        """ "exactly 2", ">= 1 and <= 3", "any number of"."""
        if self.exactly is not None:
            return f"exactly {self.exactly}"
        parts = []
        if self.min is not None:
            parts.append(f">= {self.min}")
        if self.max is not None:
            parts.append(f"<= {self.max}")
        return " and ".join(parts) or "any number of"


Origin = Literal["agent", "script", "any"]
"""Who wrote a message: the agent's own runtime (`agent`), the scenario's `send` steps
(`script`), or either. Matches default to `agent`, so that text the script injected as an
agent is never taken for something the agent said."""

MESSAGE_TESTS = ("from", "to", "room", "contains", "regex", "equals")


class MessageMatch(SpecModel):
    """A message seen on the bus (`message.sent`), matched on every field that is set."""

    from_: str | None = Field(None, alias="from")
    to: str | None = None
    """A recipient: a member of the message's room other than its sender."""
    room: str | None = None
    contains: str | None = None
    regex: Regex | None = None
    equals: str | None = None
    origin: Origin = "agent"

    @model_validator(mode="after")
    def _at_least_one(self) -> Self:
        if not any(getattr(self, f) is not None for f in ("from_", *MESSAGE_TESTS[1:])):
            raise spec_error(
                "message_match",
                "a message match needs at least one of " + ", ".join(MESSAGE_TESTS),
            )
        return self


ActionStatus = Literal["succeeded", "failed", "invalid", "error", "timeout"]


class ActionMatch(SpecModel):
    """An action run (`action.completed` or `action.failed`), matched on every field set."""

    agent: str
    name: str | None = None
    status: ActionStatus | None = None


# Strict: a quoted "3" or a YAML boolean is not a number. Ints arrive as floats.
Number = Annotated[float, Field(strict=True)]

STATE_TESTS: tuple[str, ...] = ("equals", "not_equals", "exists", "absent", "lt", "le", "gt", "ge")


class StateCheck(SpecModel):
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
            raise spec_error("state_path", f"bad state path {quote(path)}: empty segment")
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
                raise spec_error(
                    "state_check", "set at most one upper (lt, le) and one lower (gt, ge)"
                )
            return self
        raise spec_error(
            "state_check",
            "a state check needs exactly one of equals, not_equals, exists, absent, or a "
            "comparison (lt, le, gt, ge)"
            + (f"; this one has {' and '.join(chosen)}" if chosen else ""),
        )


def _check_event_kind(value: str) -> str:
    known = list(EVENT_KINDS)
    if value not in known:
        raise spec_error("event_kind", f"unknown event kind {quote(value)}{suggest(value, known)}")
    return value


EventKindName = Annotated[str, AfterValidator(_check_event_kind)]


class EventMatch(SpecModel):
    """Any event of the run's log: its `kind` (e.g. `agent.crashed`, `state.changed`), and
    optionally its agent and a subset of its data (each key present with an equal value)."""

    kind: EventKindName
    agent: str | None = None
    data: dict[str, JsonValue] = {}
    """Fields of that kind of event (see `scenario-runner schema --events`), each equal."""

    @field_validator("data")
    @classmethod
    def _known_fields(
        cls, data: dict[str, JsonValue], info: ValidationInfo
    ) -> dict[str, JsonValue]:
        kind = info.data.get("kind")  # declared first: present when it was valid
        if kind is None:
            return data
        event_type = EVENT_KINDS[kind]
        fields = event_fields(event_type)
        types = {f.name: f.type for f in msgspec.structs.fields(event_type)}
        for key, value in data.items():
            if key not in fields:
                raise spec_error(
                    "event_field",
                    f"a {kind} event has no field {quote(key)}{suggest(key, list(fields))}"
                    f" (it has: {', '.join(fields) or 'none'})",
                )
            try:
                msgspec.convert(value, types[key])
            except msgspec.ValidationError as exc:
                raise spec_error(
                    "event_field",
                    f"{kind} field {key!r} can never be {quote(value)}: {exc}",
                ) from None
        return data
