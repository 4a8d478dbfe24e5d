"""Body models: one pydantic model per message kind, and the wire shapes they embed.

Bodies travel as msgpack maps of these models (never pickle). Models are strict and forbid
unknown fields, so a body that does not match its kind is a BAD_BODY rejection.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, JsonValue

from protocol.constants import MAX_ID_BYTES
from protocol.kinds import Kind

Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_BYTES, pattern=r"^[A-Za-z0-9_.:@-]+$")]


class WireModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ChannelType(StrEnum):
    DM = "DM"
    GROUP = "GROUP"


class Origin(StrEnum):
    """Where a message came from: the scenario script (injected), or the agent's own model."""

    SCRIPT = "script"
    AGENT = "agent"


E = TypeVar("E", bound=StrEnum)


def _from_wire_str(enum: type[E]) -> BeforeValidator:
    """Enum values travel as msgpack str; strict mode would refuse the str, lax mode would also
    take bytes (msgpack bin), so convert exactly a str (or a member) and nothing else."""

    def convert(value: object) -> object:
        if isinstance(value, enum):
            return value
        if type(value) is not str:
            raise ValueError(f"expected a {enum.__name__} value as a string")
        return enum(value)

    return BeforeValidator(convert)


WireChannelType = Annotated[ChannelType, _from_wire_str(ChannelType)]
WireOrigin = Annotated[Origin, _from_wire_str(Origin)]


# --- configuration shapes carried by CONFIGURE -------------------------------------------


class ActionCallConfig(WireModel):
    """An action a model selects, with parameters; strings in `params` are templates that
    see {sender}, {text}, {room} and the regex's named groups."""

    name: str = Field(min_length=1)
    params: dict[str, JsonValue] = Field(default_factory=dict)


class RuleConfig(WireModel):
    """One rule of the deterministic `rules` model: match, then reply and/or select actions."""

    contains: str | None = None
    regex: str | None = None
    reply: str | None = None
    actions: list[ActionCallConfig] = Field(default_factory=list)
    chance: float = Field(default=1.0, ge=0.0, le=1.0)
    """The probability that the rule fires when it matches (drawn from the agent's seed)."""


class RulesModelConfig(WireModel):
    kind: Literal["rules"] = "rules"
    rules: list[RuleConfig] = Field(default_factory=list)


class FixtureConfig(WireModel):
    """One recorded model response. Matched by position (the n-th call, from 1) or by the
    prompt (`prompt_contains` / `prompt_regex`); with neither, it matches the next call."""

    position: int | None = Field(default=None, ge=1)
    prompt_contains: str | None = None
    prompt_regex: str | None = None
    reply: str | None = None
    actions: list[ActionCallConfig] = Field(default_factory=list)
    label: str = ""
    """How errors name this fixture (the scenario's path to it)."""


class FixturesModelConfig(WireModel):
    kind: Literal["fixtures"] = "fixtures"
    fixtures: list[FixtureConfig] = Field(default_factory=list)


class OpenAIModelConfig(WireModel):
    """Any OpenAI-compatible chat-completions endpoint."""

    kind: Literal["openai"] = "openai"
    base_url: str
    model: str
    api_key_env: str | None = None
    """Name of the environment variable holding the API key (read in the agent process)."""
    timeout_s: float = Field(default=30.0, gt=0)
    max_retries: int = Field(default=2, ge=0, le=10)
    temperature: float | None = None
    system_prompt: str | None = None


ModelConfig = Annotated[
    RulesModelConfig | FixturesModelConfig | OpenAIModelConfig, Field(discriminator="kind")
]


class RetentionConfig(WireModel):
    """Bounds on the memory store, so a soak run's store does not grow without bound."""

    max_per_room: int | None = Field(default=None, ge=1)
    max_age_s: float | None = Field(default=None, gt=0)


class RoomConfig(WireModel):
    id: Id
    channel: WireChannelType
    members: list[Id]


class AgentConfig(WireModel):
    """Everything an agent needs to become itself; the body of CONFIGURE."""

    agent_id: Id
    agent_dir: str
    name: str | None = None
    """The character's display name (defaults to the id)."""
    bio: str = ""
    """The character's description, given to the model as its system text."""
    model: ModelConfig = RulesModelConfig()
    rooms: list[RoomConfig] = Field(default_factory=list)
    plugins: list[str] = Field(default_factory=list)
    """Import paths `package.module:attribute`, imported in the agent's process only."""
    settings: dict[str, JsonValue] = Field(default_factory=dict)
    """Free-form settings plugins read with `runtime.get_setting`."""
    retention: RetentionConfig = RetentionConfig()
    action_timeout_s: float = Field(default=10.0, gt=0)
    handler_threads: int = Field(default=4, ge=1, le=256)
    """Threads for sync plugin functions; when all are busy, calls wait (and that is said)."""
    seed: int = Field(default=0, ge=0, lt=1 << 63)
    """Seeds every random choice the agent makes (the model's draws, `runtime.random`); the
    coordinator derives it from the run's seed, the agent's id and the repeat number."""
    # Transport settings (heartbeat, coordinator deadline, inbox size) are not here: the
    # transport runs from launch, before CONFIGURE, so they come on the command line, and the
    # inbox size reaches the coordinator in HELLO.


# --- bodies ------------------------------------------------------------------------------


class Hello(WireModel):
    agent_id: Id
    pid: int
    protocol_version: int
    python: str
    pyzmq: str
    inbox_capacity: int = Field(ge=1, le=1 << 20)
    """The agent's inbox size: the coordinator's credit for it until its first ACK."""


class Configure(WireModel):
    config: AgentConfig


class ActionInfo(WireModel):
    name: str
    description: str = ""
    similes: list[str] = Field(default_factory=list)
    parameters: dict[str, JsonValue] | None = None
    """The JSON Schema of the action's parameters model, if it has one."""


class Ready(WireModel):
    pid: int
    store_path: str
    actions: list[ActionInfo] = Field(default_factory=list)
    services: list[str] = Field(default_factory=list)
    """Started, in order."""
    error: str | None = None
    """Set when the agent could not initialise (a plugin failed to import, init raised, a
    service failed to start): the agent serves nothing and waits for STOP."""


class Msg(WireModel):
    msg_id: str
    sender: Id
    room: Id
    text: str
    origin: WireOrigin
    in_reply_to: str | None = None


class CmdSend(WireModel):
    op: Literal["send"] = "send"
    room: Id
    text: str
    key: str | None = Field(default=None, max_length=256)
    """The same key on a send asked again (a step retried after its timeout, while the first
    ask was still on its way): the agent posts once and answers both with that message's id."""


class CmdSetState(WireModel):
    op: Literal["set_state"] = "set_state"
    path: str
    value: JsonValue


class CmdGetState(WireModel):
    op: Literal["get_state"] = "get_state"
    path: str = ""


class CmdQueryMemory(WireModel):
    op: Literal["query_memory"] = "query_memory"
    room: Id | None = None
    limit: int = Field(default=100, ge=1, le=10_000)


class CmdAction(WireModel):
    """Run an action in the agent's runtime: validate, then the handler."""

    op: Literal["action"] = "action"
    name: str = Field(min_length=1)
    params: dict[str, JsonValue] = Field(default_factory=dict)
    room: Id | None = None
    """The room the action runs for (its callback posts there); the agent's first if unset."""


class CmdTrace(WireModel):
    """Where an agent's memory goes (tracemalloc): `start` tracing, `mark` the baseline (the
    end of a soak's warm-up), `report` the allocation sites that grew since the mark; `stats`
    (no tracing needed): the interpreter's allocated memory blocks (`sys.getallocatedblocks`),
    cheap enough to ask every minute."""

    op: Literal["trace"] = "trace"
    step: Literal["start", "mark", "report", "stats"]
    frames: int = Field(default=16, ge=1, le=100)
    """Frames kept per allocation (`start`)."""
    top: int = Field(default=10, ge=1, le=100)
    """Sites reported (`report`)."""


class CmdPending(WireModel):
    """What of the agent's traffic is still on its way, asked before STOP so that teardown
    stops nothing in flight. Commands run in order after every message delivered before
    them, so the answer counts the replies those messages caused: `{"outbox": n}`, the
    agent's frames not yet acknowledged by the coordinator (this answer excluded)."""

    op: Literal["pending"] = "pending"


Command = Annotated[
    CmdSend | CmdSetState | CmdGetState | CmdQueryMemory | CmdAction | CmdTrace | CmdPending,
    Field(discriminator="op"),
]


class Cmd(WireModel):
    command: Command


class Result(WireModel):
    ok: bool
    value: JsonValue = None
    error: str | None = None


class AgentErrorKind(StrEnum):
    """Where in an agent an error happened; the agent says so, nobody parses its text."""

    HANDLER = "handler"
    """A provider, an evaluator, or handling / replying to a message."""
    MODEL = "model"
    """The agent's model provider (e.g. an openai-compatible endpoint that failed)."""
    SERVICE = "service"
    """A service failed to stop."""
    AGENT = "agent"
    """Anything else in the agent's runtime."""
    POOL = "pool"
    """Every thread for sync plugin functions was busy (some may be stuck past their
    timeout: Python cannot stop a thread), so calls had to wait."""
    LIMIT = "limit"
    """An allocation failed at the agent's data limit (a MemoryError)."""


WireAgentErrorKind = Annotated[AgentErrorKind, _from_wire_str(AgentErrorKind)]


class StateChanged(WireModel):
    type: Literal["state.changed"] = "state.changed"
    path: str
    value: JsonValue = None
    previous: JsonValue = None


class ActionStarted(WireModel):
    type: Literal["action.started"] = "action.started"
    action: str
    call_id: str
    params: dict[str, JsonValue] = Field(default_factory=dict)
    """The parameters as the handler received them: validated by the action's model (so a
    templated "20" that the model reads as an int is recorded as 20), else as given."""
    origin: Literal["script", "model"]
    """Who asked for the run: a script step, or the agent's model."""
    msg_id: str
    room: str


class ActionFinished(WireModel):
    """An action run ended: `completed` when it succeeded, `failed` otherwise (`status` says
    how: failed, error, invalid, timeout)."""

    type: Literal["action.completed", "action.failed"]
    action: str
    call_id: str
    params: dict[str, JsonValue] = Field(default_factory=dict)
    origin: Literal["script", "model"]
    msg_id: str
    room: str
    status: Literal["succeeded", "failed", "error", "invalid", "timeout"]
    error: str | None = None
    duration_ms: float = 0.0
    result: dict[str, JsonValue] | None = None


class AgentErrorEvent(WireModel):
    type: Literal["error"] = "error"
    kind: WireAgentErrorKind
    where: str
    error: str


class PluginEvent(WireModel):
    """An event of a plugin's own (`runtime.emit`): its name and free-form data."""

    type: Literal["plugin"] = "plugin"
    name: str = Field(min_length=1, max_length=200)
    data: dict[str, JsonValue] = Field(default_factory=dict)


AgentEvent = Annotated[
    StateChanged | ActionStarted | ActionFinished | AgentErrorEvent | PluginEvent,
    Field(discriminator="type"),
]


class Event(WireModel):
    """Something that happened inside an agent, one typed body per kind of event."""

    event: AgentEvent


class Ack(WireModel):
    credit: int = Field(ge=0)
    """How many more sequenced frames past the header's ack the receiver can take now."""
    progress: int | None = Field(default=None, ge=0)
    """From an agent: how many times its runtime's event loop has ticked (every 100 ms while it
    runs). The heartbeat comes from the transport thread, which lives on when a handler blocks
    the loop; a count that stops moving is how the coordinator sees a wedged runtime."""
    doing: str = Field(default="", max_length=200)
    """From an agent: what its runtime is busy with ("action WEDGE", "message a:1:2"), or
    empty when it waits for work."""
    doing_ms: int = Field(default=0, ge=0)
    """For how long, when the ACK was sent."""


class Ping(WireModel):
    pass


class Pong(WireModel):
    echo_ns: int
    """The PING's sent_ns, so the PING's sender gets a round trip on its own clock."""


class Stop(WireModel):
    deadline_ms: int = Field(ge=0)
    reason: str = "scenario finished"


class AgentStats(WireModel):
    messages_in: int = 0
    messages_out: int = 0
    commands: int = 0
    handler_errors: int = 0
    duplicates_dropped: int = 0
    retries: int = 0
    dead_letters: int = 0
    rejected_frames: int = 0
    store_rows: int = 0
    store_evicted: int = 0
    store_rows_by_room: dict[str, int] = Field(default_factory=dict)
    inbox_peak: int = 0
    actions_run: int = 0
    actions_failed: int = 0
    model_calls: int = 0
    peak_rss_bytes: int | None = None
    """The agent's own high-water RSS (VmHWM) when it stopped."""
    state: dict[str, JsonValue] = Field(default_factory=dict)


class Bye(WireModel):
    stats: AgentStats
    undelivered: int = 0
    """Sequenced frames the agent still held unacked when it gave up draining."""


class Err(WireModel):
    reason: str
    detail: str


Body = Hello | Configure | Ready | Msg | Cmd | Result | Event | Ack | Ping | Pong | Stop | Bye | Err

BODY_MODELS: dict[Kind, type[WireModel]] = {
    Kind.HELLO: Hello,
    Kind.CONFIGURE: Configure,
    Kind.READY: Ready,
    Kind.MSG: Msg,
    Kind.CMD: Cmd,
    Kind.RESULT: Result,
    Kind.EVENT: Event,
    Kind.ACK: Ack,
    Kind.PING: Ping,
    Kind.PONG: Pong,
    Kind.STOP: Stop,
    Kind.BYE: Bye,
    Kind.ERR: Err,
}
KIND_OF: dict[type[WireModel], Kind] = {model: kind for kind, model in BODY_MODELS.items()}
