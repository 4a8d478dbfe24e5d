"""The scenario file format, top level: agents (with `count` for many alike), rooms (members
by id or pattern), the script and actors' timelines, assertions, defaults, stop conditions and
verification, as pydantic models.

This module knows nothing of files or YAML; `loader.py` reads a file, validates it against
`Scenario` and turns every error into a located `Problem`. Steps are in `steps.py`, assertions
in `assertions.py`, the shared field types in `schema.py`, and the checks that tie the parts
together in `references.py` (all in this package).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from functools import cached_property
from typing import Annotated, Literal, Self

from pydantic import (
    AfterValidator,
    ByteSize,
    Field,
    JsonValue,
    PrivateAttr,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from orchestrator.scenario.assertions import ASSERTION_TYPES, Assertion, Size
from orchestrator.scenario.durations import Duration
from orchestrator.scenario.references import Parts, ReferenceIssue, find_reference_issues
from orchestrator.scenario.schema import (
    CHECK_REFERENCES,
    REPLY_PLACEHOLDERS,
    Count,
    Id,
    ImportPath,
    Name,
    PositiveDuration,
    Regex,
    SpecModel,
    Template,
    check_id,
    check_template,
    is_pattern,
    match_agents,
    spec_error,
)
from orchestrator.scenario.steps import (
    STEP_TYPES,
    Actor,
    AssertStep,
    Step,
    StopCondition,
    walk_steps,
)

# --- agents and rooms ------------------------------------------------------------------------

MIB = 1 << 20
GIB = 1 << 30
MIN_DATA = 128 * MIB
"""The smallest `limits.memory`: an agent's interpreter, libzmq's threads (8 MiB of stack
each) and its handler pool count against RLIMIT_DATA before any plugin allocates."""
MIN_RSS = 64 * MIB
"""The smallest watchdog limit on RSS."""


class MatchRule(SpecModel):
    """What a rule reacts to: exactly one of a substring or a regular expression."""

    contains: str | None = None
    regex: Regex | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.contains is None) == (self.regex is None):
            raise spec_error("match_rule", "set exactly one of 'contains' or 'regex'")
        return self


class ActionCallSpec(SpecModel):
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


class Rule(SpecModel):
    """When a message matches, answer with `reply` (a template over {sender}, {text}, {room})
    and/or run `actions`."""

    when: MatchRule
    reply: str | None = None
    actions: list[ActionCallSpec] = []
    chance: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    """The probability that a matching rule fires; otherwise the next rule is tried. Drawn
    from the agent's seeded generator, so `--seed` reproduces every draw."""

    @field_validator("reply")
    @classmethod
    def _reply_template(cls, reply: str | None, info: ValidationInfo) -> str | None:
        # `when` is declared first, so it is in info.data when it was valid.
        when = info.data.get("when")
        if reply is not None:
            check_template(reply, _rule_placeholders(when))
        return reply

    @model_validator(mode="after")
    def _does_something(self) -> Self:
        if self.reply is None and not self.actions:
            raise spec_error("rule", "a rule needs a 'reply', 'actions', or both")
        allowed = _rule_placeholders(self.when)
        for call in self.actions:
            for text in _strings(call.params):
                check_template(text, allowed, f"the parameters of {call.name}")
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


class FixtureMatch(SpecModel):
    """Which model call a fixture answers: the n-th (`position`, from 1) and/or one whose
    prompt contains a text or matches a regex."""

    position: Annotated[int, Field(strict=True, ge=1)] | None = None
    prompt_contains: str | None = None
    prompt_regex: Regex | None = None


class Fixture(SpecModel):
    """A recorded model response: the reply and the actions (with parameters)."""

    match: FixtureMatch | None = None
    reply: Template | None = None
    actions: list[ActionCallSpec] = []

    @model_validator(mode="after")
    def _templates(self) -> Self:
        for call in self.actions:
            for text in _strings(call.params):
                check_template(text, REPLY_PLACEHOLDERS, f"the parameters of {call.name}")
        return self


class OpenAISpec(SpecModel):
    base_url: Annotated[str, Field(min_length=1)]
    model: Annotated[str, Field(min_length=1)]
    api_key_env: str | None = None
    timeout: Duration = Duration(30.0)
    max_retries: Annotated[int, Field(strict=True, ge=0, le=10)] = 2
    temperature: float | None = None
    system_prompt: str | None = None


class ModelSpec(SpecModel):
    """Exactly one model provider: `rules`, `fixtures` or `openai`."""

    rules: list[Rule] | None = None
    fixtures: list[Fixture] | None = None
    openai: OpenAISpec | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        chosen = [k for k in ("rules", "fixtures", "openai") if getattr(self, k) is not None]
        if len(chosen) != 1:
            raise spec_error(
                "model",
                "a model is exactly one of rules, fixtures, openai"
                + (f"; this one has {' and '.join(chosen)}" if chosen else ""),
            )
        return self


class MemorySpec(SpecModel):
    """Retention of the agent's memory store: at most `max_per_room` memories per room (the
    oldest go first) and none older than `max_age`."""

    max_per_room: Annotated[int, Field(strict=True, ge=1, le=1_000_000_000)] | None = None
    max_age: PositiveDuration | None = None


class RestartSpec(SpecModel):
    """A supervisor for the agent: when it crashes or hangs, start it again (a new incarnation
    under the same id, its store kept), after a backoff that doubles with each restart in the
    window, and give up (an ERROR) once `max` restarts fall within `within`."""

    on: Annotated[list[Literal["crash", "hang"]], Field(min_length=1)] = ["crash", "hang"]
    max: Annotated[int, Field(strict=True, ge=1, le=1000)] = 3
    within: PositiveDuration = Duration(60.0)
    backoff: Duration = Duration(0.5)
    """Before the first restart; doubled for each restart already in the window, at most
    10 s."""


class LimitsSpec(SpecModel):
    """What one agent may use. `memory` is set inside the agent (RLIMIT_DATA): an allocation
    past it fails there as a MemoryError that the failing handler can catch. The coordinator's
    watchdog reads the agent's RSS with every sample: past `memory_soft` it stops the agent,
    past `memory_hard` it kills it. `cpu` is RLIMIT_CPU (SIGXCPU, then SIGKILL 5 s later) and
    `open_files` RLIMIT_NOFILE. A limit that fires is an error of kind `limit`, which an
    `errors` assertion may allow (a limit the scenario planned)."""

    memory: Size | None = ByteSize(2 * GIB)
    """In the agent: its data segment (heap and private mappings); null for none."""
    memory_soft: Size | None = None
    """Watchdog: RSS past it stops the agent. Default: 3/4 of `memory`."""
    memory_hard: Size | None = None
    """Watchdog: RSS past it kills the agent. Default: `memory` and a quarter."""
    cpu: PositiveDuration | None = None
    """CPU time (user and system) over the agent's life; default none."""
    open_files: Annotated[int, Field(strict=True, ge=64, le=1_048_576)] = 4096

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        soft, hard = self.soft_bytes, self.hard_bytes
        if soft is not None and hard is not None and soft >= hard:
            raise spec_error(
                "limits", f"memory_soft ({soft} bytes) must be under memory_hard ({hard} bytes)"
            )
        if self.memory is not None and self.memory < MIN_DATA:
            raise spec_error(
                "limits", f"memory under {MIN_DATA >> 20} MiB: the agent's own threads and"
                " libraries need about that much before any plugin runs"
            )  # fmt: skip
        for name in ("memory_soft", "memory_hard"):
            value = getattr(self, name)
            if value is not None and value < MIN_RSS:
                raise spec_error(
                    "limits", f"{name} under {MIN_RSS >> 20} MiB: an idle agent's RSS is about"
                    " half that, so the watchdog would end it for nothing"
                )  # fmt: skip
        return self

    @property
    def soft_bytes(self) -> int | None:
        if self.memory_soft is not None:
            return int(self.memory_soft)
        if self.memory is None:
            return None
        soft = int(self.memory) * 3 // 4
        if self.memory_hard is not None:  # a hard limit given alone keeps the soft one under it
            soft = min(soft, int(self.memory_hard) * 3 // 4)
        return soft

    @property
    def hard_bytes(self) -> int | None:
        if self.memory_hard is not None:
            return int(self.memory_hard)
        return None if self.memory is None else int(self.memory) * 5 // 4


INDEX = "{i}"
"""In the id of an agent with `count`, replaced by 1, 2, ... N."""


def _check_agent_id(value: str) -> str:
    # An id with {i} is a template: what must be a valid id is each id it expands to (the
    # longest is checked once `count` is known, in AgentSpec).
    check_id(value.replace(INDEX, "1"))
    return value


class AgentSpec(SpecModel):
    id: Annotated[
        str,
        AfterValidator(_check_agent_id),
        WithJsonSchema({"type": "string", "pattern": r"^([A-Za-z0-9_.-]|\{i\}){1,64}$"}),
    ]
    """The agent's id; with `count`, a template that contains `{i}` (`worker-{i}`)."""
    count: Annotated[int, Field(strict=True, ge=1, le=10_000)] | None = None
    """Start this many agents alike, with ids from the `id` template."""
    name: str | None = None
    bio: str = ""
    model: ModelSpec | None = None
    plugins: list[ImportPath] = []
    settings: dict[str, JsonValue] = {}
    memory: MemorySpec = MemorySpec()
    action_timeout: PositiveDuration = Duration(10.0)
    handler_threads: Annotated[int, Field(strict=True, ge=1, le=256)] = 4
    """Threads that run the agent's sync plugin functions (handlers, providers, evaluators)."""
    restart: RestartSpec | None = None
    """Restart the agent when it crashes or hangs (default: never; a crash is an ERROR)."""
    limits: LimitsSpec = LimitsSpec()
    """Memory, CPU time and open files the agent may use."""

    @model_validator(mode="after")
    def _template(self) -> Self:
        if self.count is not None and INDEX not in self.id:
            raise spec_error(
                "agent_count", f"with count, the id needs {INDEX} (e.g. {self.id}-{INDEX})"
            )
        if self.count is None and INDEX in self.id:
            raise spec_error("agent_count", f"an id with {INDEX} needs a count")
        if self.count is not None:
            check_id(self.id.replace(INDEX, str(self.count)))  # the longest id fits too
        return self

    @property
    def ids(self) -> list[str]:
        """The agents this spec starts, in order."""
        if self.count is None:
            return [self.id]
        return [self.id.replace(INDEX, str(n)) for n in range(1, self.count + 1)]


class RoomSpec(SpecModel):
    id: Id
    type: Literal["dm", "group"] = "group"
    members: Annotated[
        list[str],
        WithJsonSchema({"type": "array", "items": {"type": "string"}, "minItems": 1}),
    ]
    """Agent ids, or shell-style patterns over them (`worker-*`)."""

    @field_validator("members")
    @classmethod
    def _member_count(cls, members: list[str], info: ValidationInfo) -> list[str]:
        # Checked here rather than with min_length so that the message speaks of rooms and
        # members; `type` is declared first, so it is in info.data when it was valid.
        if not members:
            raise spec_error("room_members", "a room needs at least one member")
        if info.data.get("type") == "dm" and (
            len(members) != 2 or any(is_pattern(m) for m in members)
        ):
            raise spec_error(
                "room_members",
                f"a dm room has exactly 2 members, named by id; this one has {len(members)}"
                if not any(is_pattern(m) for m in members)
                else "a dm room names its 2 members by id, not by pattern",
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


# --- the scenario ----------------------------------------------------------------------------


class Defaults(SpecModel):
    """What every step gets unless it says otherwise."""

    timeout: Duration | None = None
    retries: Count = 0


class Verification(SpecModel):
    """The pass threshold on the weighted score (passed weight / total weight, from 0 to 1).

    With the default 1.0 every assertion must pass; lower it to tolerate failures of
    assertions marked `required: false` (a required assertion that fails is a FAIL anyway)."""

    threshold: Annotated[float, Field(strict=True, ge=0.0, le=1.0)] = 1.0


def _check_agents(agents: list[AgentSpec]) -> list[AgentSpec]:
    if not agents:
        raise spec_error("no_agents", "a scenario needs at least one agent")
    return agents


MATRIX_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.([A-Za-z_][A-Za-z0-9_-]*|[0-9]+))*$")

MatrixPath = Annotated[
    str,
    Field(
        pattern=MATRIX_PATH.pattern,
        description="a dotted path into the scenario: `defaults.retries`,"
        " `agents.0.model.rules.1.chance` (numbers index lists)",
    ),
]

Matrix = Annotated[
    dict[MatrixPath, Annotated[list[JsonValue], Field(min_length=1)]]
    | Annotated[
        list[Annotated[dict[MatrixPath, JsonValue], Field(min_length=1)]], Field(min_length=1)
    ]
    | str,
    Field(
        description="values by dotted path (every combination runs), or a list of"
        " combinations (path -> value; exactly those run), or the name of a YAML file beside"
        " the scenario that holds either"
    ),
]


def short_paths(paths: list[str]) -> dict[str, str]:
    """Each dotted path -> its shortest tail of segments that no other path ends with and that
    does not start with a list index (`agents.0.model.rules.0.chance` -> `chance`, unless
    another path also ends in `chance`; then `rules.0.chance`)."""
    split = {p: p.split(".") for p in paths}
    short: dict[str, str] = {}
    for path, segments in split.items():
        for n in range(1, len(segments) + 1):
            tail = segments[-n:]
            if tail[0].isdigit():
                continue
            if not any(o != path and other[-n:] == tail for o, other in split.items()):
                break
        short[path] = ".".join(tail)
    return short


def _show(value: JsonValue) -> str:
    """A matrix value in a label: text as is, unless it would read as another value (`true`,
    `1`, `[1]`, `"x"`, or with the label's own `,` `=` `[` `]`); then, and for every other
    value, its compact JSON. So different values never share a label."""
    if isinstance(value, str) and value and not any(c in value for c in ',=[]"'):
        try:
            json.loads(value)
        except ValueError:
            return value
    return json.dumps(value, separators=(",", ":"))


class Scenario(SpecModel):
    name: Name
    description: str = ""
    tags: list[Annotated[str, Field(min_length=1)]] = []
    timeout: Duration = Duration(60.0)
    """Deadline for the whole script (every timeline)."""
    defaults: Defaults = Defaults()
    agents: Annotated[list[AgentSpec], AfterValidator(_check_agents)]
    rooms: list[RoomSpec] = []
    script: list[Step] = []
    actors: list[Actor] = []
    stop_when: list[StopCondition] = []
    assertions: Annotated[list[Assertion], Field(validate_default=True)] = []
    verification: Verification = Verification()
    matrix: Matrix | None = None
    """Parameter values by dotted path into this file; it runs once per combination."""

    _parameters: dict[str, JsonValue] = PrivateAttr(default_factory=dict)

    @property
    def parameters(self) -> dict[str, JsonValue]:
        """The matrix values this scenario was expanded with (empty without a matrix)."""
        return self._parameters

    @property
    def label(self) -> str:
        """The name, with the matrix values when there are any, each path shortened to the
        fewest last segments that tell it from the others: `chat[retries=2,chance=0.5]`."""
        return self._label(short_paths(list(self._parameters)))

    @property
    def full_label(self) -> str:
        """The label with each matrix path in full: `chat[defaults.retries=2]`."""
        return self._label({k: k for k in self._parameters})

    def _label(self, keys: dict[str, str]) -> str:
        if not self._parameters:
            return self.name
        values = ",".join(f"{keys[k]}={_show(v)}" for k, v in self._parameters.items())
        return f"{self.name}[{values}]"

    @field_validator("assertions")
    @classmethod
    def _something_asserted(
        cls, assertions: list[Assertion], info: ValidationInfo
    ) -> list[Assertion]:
        # A scenario that asserts nothing can only pass, which makes it no test at all. The
        # script and actors are declared before, so they are in info.data when they were valid.
        if assertions:
            return assertions
        timelines = [info.data.get("script") or []] + [
            actor.script for actor in info.data.get("actors") or []
        ]
        if any(
            isinstance(step, AssertStep) for steps in timelines for _, step in walk_steps(steps, ())
        ):
            return assertions
        raise spec_error(
            "no_assertions",
            "a scenario with no assertion is invalid: add one under 'assertions' "
            "(or an 'assert' step)",
        )

    @model_validator(mode="after")
    def _checks(self, info: ValidationInfo) -> Self:
        if isinstance(info.context, dict) and info.context.get(CHECK_REFERENCES) is False:
            return self
        issues = self.reference_issues()
        if issues:
            raise spec_error("references", "; ".join(str(issue) for issue in issues))
        return self

    def reference_issues(self) -> list[ReferenceIssue]:
        return find_reference_issues(
            Parts(
                agents=dict(enumerate(self.agents)),
                rooms=dict(enumerate(self.rooms)),
                script=dict(enumerate(self.script)),
                actors=dict(enumerate(self.actors)),
                assertions=dict(enumerate(self.assertions)),
                stop_when=dict(enumerate(self.stop_when)),
            )
        )

    @cached_property
    def agent_ids(self) -> list[str]:
        """Every agent the scenario starts, `count` expanded, in file order."""
        return [i for spec in self.agents for i in spec.ids]

    @cached_property
    def _spec_by_agent(self) -> dict[str, AgentSpec]:
        # Built once: looking each agent up by scanning every spec's expanded ids made
        # building the agents' configurations quadratic (minutes for 10,000 agents).
        by_agent: dict[str, AgentSpec] = {}
        for spec in self.agents:
            for agent_id in spec.ids:
                by_agent.setdefault(agent_id, spec)  # the first spec that names it, as before
        return by_agent

    def agent_spec(self, agent_id: str) -> AgentSpec:
        try:
            return self._spec_by_agent[agent_id]
        except KeyError:
            raise KeyError(agent_id) from None

    def room_members(self, room: RoomSpec) -> list[str]:
        """The room's members, patterns expanded, each once, in the order first named."""
        ids = self.agent_ids
        return list(
            dict.fromkeys(m for pattern in room.members for m in match_agents(pattern, ids))
        )


def all_steps(scenario: Scenario) -> Iterator[tuple[tuple[str | int, ...], Step]]:
    """Every step of every timeline, with its path, blocks included."""
    yield from walk_steps(scenario.script, ("script",))
    for i, actor in enumerate(scenario.actors):
        yield from walk_steps(actor.script, ("actors", i, "script"))


# The tags pydantic puts into an error's location for a keyed union member; they are not part of
# the data, and the loader drops them when it turns a location into a path in the file.
UNION_TAGS: frozenset[str] = frozenset(
    model.__name__ for kinds in (STEP_TYPES, ASSERTION_TYPES) for model in kinds.values()
)
