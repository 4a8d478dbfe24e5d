"""The coordinator's event log: every observable thing that happens in a run, in order, typed.

One struct per event kind, all members of the tagged union `AnyEvent` (the tag is `kind`). The
bus, the cluster, the executor and the judges emit and read these structs, `events.jsonl`
holds one per line, and `scenario-runner schema --events` exports their JSON Schema. They are
`msgspec` structs rather than pydantic models because two of them are built for every message
on the hot path: measured on the development machine, a struct is built in 0.09 us and
encoded to JSON in 0.14 us, a pydantic model is built in 1.0 us.

Cost per event is constant, whatever the run's length:

- Listeners subscribe to the kinds they read (and optionally one agent); `emit` hands an event
  only to the listeners indexed under its kind and agent. Nothing scans the history.
- The ring keeps the latest events for a person to inspect (the console, a failure's context);
  nothing correct depends on its size.
- The spill to `events.jsonl` is encoded into a buffer and written in large blocks. Its size is
  bounded by the storage mode (`EventStorage`) and by a byte cap; what was left out is counted
  per kind, and frequent noise (`wire.rejected`) is rate-limited where it is emitted (a flood of
  garbage frames costs a counter per frame, not an event) and counted exactly.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import time
from array import array
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, ClassVar, Literal, TypeVar, cast

import msgspec

from protocol import AgentErrorKind

# --- the vocabulary ---------------------------------------------------------------------------


class ErrorKind(StrEnum):
    """The one vocabulary of errors: what an `errors` assertion filters on, what the verdict
    classifies and what the report shows. Every value is produced by something."""

    # Reported by agents (AgentErrorKind): not fatal; an `errors` assertion may allow them.
    HANDLER = "handler"
    MODEL = "model"
    SERVICE = "service"
    AGENT = "agent"
    POOL = "pool"
    # The run's own: always an ERROR verdict.
    CRASH = "crash"
    """An agent process exited when nobody asked it to."""
    HUNG = "hung"
    """An agent stopped answering (no traffic past the hung deadline) and was killed."""
    STEP = "step"
    """A script step failed or never ran."""
    RULE = "rule"
    """A custom stop rule could not decide."""
    INIT = "init"
    """An agent could not initialise (a plugin failed to load): invalid input."""
    STARTUP = "startup"
    """An agent did not reach READY in time."""
    RUNNER = "runner"
    """The runner itself broke."""
    LIMIT = "limit"
    """An agent went past a limit (`limits:`): stopped or killed by the watchdog, killed at its
    CPU limit, or a MemoryError at its data limit. Not fatal: an `errors` assertion that covers
    it makes it a planned limit."""

    @property
    def fatal(self) -> bool:
        return self not in _AGENT_KINDS


_AGENT_KINDS = frozenset(
    {ErrorKind.HANDLER, ErrorKind.MODEL, ErrorKind.SERVICE, ErrorKind.AGENT, ErrorKind.POOL,
     ErrorKind.LIMIT}
)  # fmt: skip


def error_kind_of(kind: AgentErrorKind) -> ErrorKind:
    return ErrorKind(kind.value)


Json = Annotated[object, msgspec.Meta(extra_json_schema={"description": "any JSON value"})]
"""A value an agent or a plugin put in an event (state, parameters, results): whatever JSON
carries. Readers compare it or hand it on; they do not rely on its shape."""


class Event(msgspec.Struct, tag_field="kind"):
    """What every event has: its position in the log, its time and the agent it is about.

    Each kind is a subclass with its `tag` and keyword-only fields, which follow id, t and
    agent: a line of events.jsonl reads kind, id, t, agent, then the kind's own fields."""

    id: int = 0
    """Position in the log, from 1 (set by `EventLog.emit`)."""
    t: float = 0.0
    """Seconds since the log was opened (monotonic clock; set by `EventLog.emit`)."""
    agent: str | None = None
    """The agent the event is about (the sender, for a message), or null."""

    KIND: ClassVar[str]
    NOISY: ClassVar[bool] = False
    """Per-message events: left out of `events.jsonl` in `summary` storage."""

    @property
    def kind(self) -> str:
        """The event's kind, as in events.jsonl (`message.sent`)."""
        return self.KIND


class RunStarted(Event, tag="run.started", kw_only=True):
    scenario: str
    file: str
    endpoint: str


class RunFinished(Event, tag="run.finished", kw_only=True):
    pass


class AgentLaunched(Event, tag="agent.launched", kw_only=True):
    pid: int
    launcher: str
    incarnation: int


class AgentHello(Event, tag="agent.hello", kw_only=True):
    pid: int
    python: str
    pyzmq: str


class AgentReady(Event, tag="agent.ready", kw_only=True):
    pid: int
    store_path: str
    startup_s: float
    """From launch to READY."""


class AgentStopping(Event, tag="agent.stopping", kw_only=True):
    deadline_s: float


class AgentBye(Event, tag="agent.bye", kw_only=True):
    undelivered: int
    messages_in: int
    messages_out: int
    handler_errors: int
    store_rows: int


class AgentExited(Event, tag="agent.exited", kw_only=True):
    """An agent process ended as asked (STOP, or the escalation after it)."""

    pid: int
    returncode: int | None
    signal: str | None
    escalation: str | None


class AgentCrashed(Event, tag="agent.crashed", kw_only=True):
    """An agent process ended when nobody asked it to."""

    pid: int
    returncode: int | None
    signal: str | None
    escalation: str | None


class AgentHung(Event, tag="agent.hung", kw_only=True):
    """An agent stopped answering, or its runtime stopped making progress, past the hung
    deadline: it is killed (after its stacks are taken) and reported as hung."""

    silent_s: float
    """How long it was silent, or its runtime stuck."""
    reason: str = ""


class AgentRestarting(Event, tag="agent.restarting", kw_only=True):
    """The agent's restart policy starts it again after `backoff_s` (or, with `gave_up`, does
    not: too many restarts in its window)."""

    cause: str
    attempt: int
    """Restarts in the policy's window, this one included (0 when giving up)."""
    backoff_s: float
    gave_up: str | None = None


class AgentError(Event, tag="agent.error", kw_only=True):
    """An error an agent reported (a handler that raised, a model that failed...)."""

    error_kind: ErrorKind
    where: str
    error: str


class PluginEventRecord(Event, tag="agent.event", kw_only=True):
    """An event of a plugin's own (`runtime.emit(name, data)`): free-form by design."""

    name: str
    data: Mapping[str, Json]


class StateChanged(Event, tag="state.changed", kw_only=True):
    path: str
    value: Json
    previous: Json


class ActionStarted(Event, tag="action.started", kw_only=True):
    action: str
    call_id: str
    params: Mapping[str, Json]
    """As the handler receives them (validated by the action's parameter model)."""
    origin: Literal["script", "model"]
    msg_id: str
    room: str


class ActionEnded(Event, kw_only=True):
    action: str
    call_id: str
    params: Mapping[str, Json]
    origin: Literal["script", "model"]
    msg_id: str
    room: str
    status: Literal["succeeded", "failed", "error", "invalid", "timeout"]
    error: str | None = None
    duration_ms: float = 0.0
    result: Mapping[str, Json] | None = None


class ActionCompleted(ActionEnded, tag="action.completed", kw_only=True):
    pass


class ActionFailed(ActionEnded, tag="action.failed", kw_only=True):
    """`status` says how: failed (the handler said so), error (it raised), invalid, timeout."""


class MessageSent(Event, tag="message.sent", kw_only=True):
    """The bus accepted a message from its sender (`agent`) for a room."""

    NOISY = True
    msg_id: str
    room: str
    text: str
    origin: Literal["script", "agent"]
    in_reply_to: str | None = None


class MessageRefused(Event, tag="message.refused", kw_only=True):
    """The bus refused a message (an unknown room, a room its sender is not in): nobody
    receives it, so no assertion counts it as received."""

    msg_id: str
    room: str
    text: str
    origin: Literal["script", "agent"]
    reason: str


class MessageDelivered(Event, tag="message.delivered", kw_only=True):
    """A recipient (`agent`) acknowledged a message: it is in that agent's inbox."""

    NOISY = True
    msg_id: str
    sender: str
    room: str
    attempts: int
    latency_ms: float
    """From the bus's acceptance to the recipient's ack."""


class MessageRetry(Event, tag="message.retry", kw_only=True):
    NOISY = True
    msg_id: str
    attempt: int


class MessageDeadLetter(Event, tag="message.dead_letter", kw_only=True):
    """A frame for `recipient` that can never be delivered; `agent` is its sender, if any."""

    msg_id: str | None
    frame: str
    """The frame's kind: MSG, CMD, STOP..."""
    recipient: str
    attempts: int
    reason: str


class CommandSent(Event, tag="command.sent", kw_only=True):
    NOISY = True
    corr: int
    command: Mapping[str, Json]


class CommandResult(Event, tag="command.result", kw_only=True):
    NOISY = True
    corr: int
    ok: bool
    value: Json
    error: str | None


class WireRejected(Event, tag="wire.rejected", kw_only=True):
    """A frame was rejected as bad input (`by` the coordinator, or by an agent, which said so
    with ERR). In the file at most one a second per reason and side; `suppressed` counts
    those left out since the last one written. The report's counts are exact."""

    reason: str
    detail: str
    by: Literal["coordinator", "agent"]
    suppressed: int = 0
    summary: bool = False
    """A line that only counts the rejections held back (at the end of the run)."""


class Sample(Event, tag="sample", kw_only=True):
    reason: str
    rss: int
    cpu_s: float
    fds: int | None
    threads: int | None
    uss: int | None = None
    """Read at READY, before STOP, and for a rotating slice of the agents each round."""


class StepStarted(Event, tag="step.started", kw_only=True):
    NOISY = True
    timeline: str
    path: str
    step_id: str | None
    step_kind: str
    description: str


class StepFinished(Event, tag="step.finished", kw_only=True):
    NOISY = True
    timeline: str
    path: str
    step_id: str | None
    step_kind: str
    status: Literal["passed", "failed"]
    duration_s: float
    error: str | None


class StopConditionMet(Event, tag="run.stopping", kw_only=True):
    """A `stop_when` condition held: every timeline stops, what is unfinished is skipped."""

    reason: str


class AssertionEvaluated(Event, tag="assertion.evaluated", kw_only=True):
    assertion: str
    type: str
    passed: bool
    inline: bool
    message: str


class SoakIteration(Event, tag="soak.iteration", kw_only=True):
    """A soak run starts another pass of its script on the same agents."""

    iteration: int
    elapsed_s: float
    remaining_s: float


class AgentMemoryNow(msgspec.Struct, frozen=True, kw_only=True):
    """One agent in a soak's progress line."""

    agent: str
    rss: int | None
    uss: int | None
    uss_per_h: float | None
    """The Theil-Sen growth of its USS so far (after the warm-up once it is over)."""
    verdict: str
    """The leak verdict on its USS so far."""


class SoakProgress(Event, tag="soak.progress", kw_only=True):
    """A soak's periodic progress (every minute by default), also checkpointed to report.json."""

    iteration: int
    elapsed_s: float
    remaining_s: float
    agents: list[AgentMemoryNow]


class SoakLocating(Event, tag="soak.locating", kw_only=True):
    """A soak found leaks: its verdicts are made, and a locating pass begins, with
    tracemalloc in the leaking agents only, to name the lines."""

    agents: list[str]
    duration_s: float


class FaultInjected(Event, tag="fault.injected", kw_only=True):
    """The script made something go wrong on purpose (a `fault` step): `agent` is its target."""

    fault: str
    """kill, stop, cont, restart."""
    detail: str
    """What was done: "SIGKILL to pid 1234", "incarnation 2 (pid 1240), store kept"."""


class LimitFired(Event, tag="limit.fired", kw_only=True):
    """An agent went past one of its limits (`limits:`) and was stopped or killed."""

    limit: str
    """memory_soft, memory_hard (the watchdog, on RSS), cpu (RLIMIT_CPU)."""
    value: float
    """What the agent was at: bytes of RSS, or CPU seconds."""
    threshold: float
    action: str
    """stopped, killed."""


class FaultEnded(Event, tag="fault.ended", kw_only=True):
    """A bus fault's window (time or message count) is over; `detail` says what it did."""

    fault: str
    detail: str


class RunError(Event, tag="error", kw_only=True):
    """An error of the run (a crash, a failed step, the runner breaking...), as collected."""

    error_kind: ErrorKind
    message: str


EVENT_TYPES: tuple[type[Event], ...] = (
    RunStarted, RunFinished, AgentLaunched, AgentHello, AgentReady, AgentStopping, AgentBye,
    AgentExited, AgentCrashed, AgentHung, AgentError, PluginEventRecord, StateChanged,
    ActionStarted, ActionCompleted, ActionFailed, MessageSent, MessageRefused, MessageDelivered,
    MessageRetry, MessageDeadLetter, CommandSent, CommandResult, WireRejected, Sample,
    StepStarted, StepFinished, StopConditionMet, AssertionEvaluated, RunError, SoakIteration,
    SoakProgress, SoakLocating, FaultInjected, FaultEnded, AgentRestarting, LimitFired,
)  # fmt: skip

for _cls in EVENT_TYPES:
    _cls.KIND = str(_cls.__struct_config__.tag)
del _cls

EVENT_KINDS: dict[str, type[Event]] = {cls.KIND: cls for cls in EVENT_TYPES}
"""Kind name -> its struct: what `wait_for: {event: {kind: ...}}` accepts."""

AnyEvent = (
    RunStarted | RunFinished | AgentLaunched | AgentHello | AgentReady | AgentStopping | AgentBye
    | AgentExited | AgentCrashed | AgentHung | AgentError | PluginEventRecord | StateChanged
    | ActionStarted | ActionCompleted | ActionFailed | MessageSent | MessageRefused
    | MessageDelivered | MessageRetry | MessageDeadLetter | CommandSent | CommandResult
    | WireRejected | Sample | StepStarted | StepFinished | StopConditionMet | AssertionEvaluated
    | RunError | SoakIteration | SoakProgress | SoakLocating | FaultInjected | FaultEnded
    | AgentRestarting | LimitFired
)  # fmt: skip
"""One line of events.jsonl."""


def event_fields(cls: type[Event]) -> tuple[str, ...]:
    """The kind's own fields (besides id, t and agent), as a `wait_for: {event}` data key."""
    return tuple(f for f in cls.__struct_fields__ if f not in ("id", "t", "agent"))


def events_schema() -> dict[str, object]:
    """The JSON Schema of one line of events.jsonl."""
    schema: dict[str, object] = msgspec.json.schema(AnyEvent)
    schema["title"] = "scenario-runner event (one line of events.jsonl)"
    return schema


_decoder = msgspec.json.Decoder(AnyEvent)


def decode_event(line: bytes) -> Event:
    """One line of events.jsonl (msgspec.DecodeError or ValidationError if it is not one)."""
    event: Event = _decoder.decode(line)
    return event


def read_events(path: Path, upto: int | None = None) -> Iterator[Event]:
    """Every event of an `events.jsonl` file, in order (streamed: bounded memory); with
    `upto`, only its first `upto` bytes (what was written when a reader started, while the
    run goes on writing)."""
    with path.open("rb") as f:
        read = 0
        for line in f:
            read += len(line)
            if upto is not None and read > upto:
                return
            yield decode_event(line)


# --- the log ----------------------------------------------------------------------------------


class EventStorage(StrEnum):
    """What goes to events.jsonl (the in-memory stream, waits and judges are always whole)."""

    FULL = "full"
    """Every event, until the size cap; then as `summary`, and the report says from when."""
    SUMMARY = "summary"
    """Everything but the per-message events (`NOISY`: message sent / delivered / retry,
    command sent / result, step started / finished); those are counted per kind."""
    OFF = "off"
    """No events.jsonl at all; every event is counted."""


DEFAULT_MAX_BYTES = 1 << 30
"""The size cap of events.jsonl (1 GiB). In `full` storage, at SUMMARY_AT of the cap the file
keeps only the summary; at the cap, nothing more is written. Either way every event is
counted, and the report says from which event the file was cut."""

SUMMARY_AT = 0.9
"""The share of the size cap after which a `full` log keeps only the summary, so the run's
end (its crashes, errors and verdict events) still fits."""

SPILL_BLOCK = 1 << 20
"""Encoded events are written in blocks of about this many bytes..."""

FLUSH_EVERY_S = 1.0
"""... or at least this often during a run, whichever comes first."""

REJECTED_EVERY_S = 1.0
"""At most one `wire.rejected` event per (reason, side) per this many seconds; the others are
counted, and the next one (or a summary at the end) says how many."""

LISTENER_ERRORS_KEPT = 20

E = TypeVar("E", bound=Event)
Listener = Callable[[Event], None]


class Subscription:
    """A listener registered under some kinds (and optionally one agent); `close` removes it."""

    __slots__ = ("_keys", "_listener", "_log")

    def __init__(self, log: EventLog, listener: Listener, keys: list[tuple[type, str | None]]):
        self._log, self._listener, self._keys = log, listener, keys

    def close(self) -> None:
        for key in self._keys:
            bucket = self._log._index.get(key)
            if bucket is not None and self._listener in bucket:
                bucket.remove(self._listener)
                if not bucket:
                    del self._log._index[key]
        self._keys = []


class EventLog:
    def __init__(
        self,
        spill_path: Path,
        capacity: int = 2_000,
        storage: EventStorage = EventStorage.FULL,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.spill_path = spill_path
        self.storage = storage
        self.max_bytes = max_bytes
        self.ring: deque[Event] = deque(maxlen=capacity)
        """The latest events, for a person to look at; nothing correct depends on it."""
        self._fd: int | None = None
        if storage is not EventStorage.OFF:
            self._fd = os.open(spill_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._buffer = bytearray()
        self._encoder = msgspec.json.Encoder()
        self._index: dict[tuple[type, str | None], list[Listener]] = {}
        self._everything: list[Listener] = []
        self._t0 = time.monotonic()
        self.last_id = 0
        self.counts: Counter[str] = Counter()
        """Every event emitted, by kind (exact, whatever was written)."""
        self.omitted: Counter[str] = Counter()
        """Events left out of events.jsonl, by kind."""
        self.bytes_written = 0
        self.summary_from: int | None = None
        """In `full` storage, the event id from which the size cap turned it to `summary`."""
        self.full_from: int | None = None
        """The first event id left out because the file was at its size cap (none after it is
        in the file either)."""
        self._rejected_at: dict[tuple[str, str], float] = {}
        self._rejected_held: Counter[tuple[str, str]] = Counter()
        self._dispatching = False
        self._pending: deque[Event] = deque()
        self._flusher: asyncio.TimerHandle | None = None
        self.listener_errors: list[str] = []
        """Listeners that raised (a bug of the runner's): each is reported as an error."""

    @property
    def t0(self) -> float:
        return self._t0

    def now(self) -> float:
        return time.monotonic() - self._t0

    def emit(self, event: E) -> E:
        """Number, time, keep, spill and hand `event` to its listeners; returns it.

        An event emitted by a listener (a stop condition that stops the run) is handed out
        after the one being handed out, so every listener sees events in id order, each once
        per key it subscribed to.

        A `wire.rejected` event within REJECTED_EVERY_S of the last one of its reason and side
        is only counted (and said later, in the next one's `suppressed`): a flood of garbage
        frames costs a counter each, not an event each."""
        t = round(time.monotonic() - self._t0, 6)
        if isinstance(event, WireRejected) and not self._rejected_due(event, t):
            self.counts[event.KIND] += 1
            self.omitted[event.KIND] += 1
            return event
        self.last_id += 1
        event.id = self.last_id
        event.t = t
        self.ring.append(event)
        self.counts[event.KIND] += 1
        if self._fd is not None:
            self._spill(event)
        else:
            self.omitted[event.KIND] += 1
        if self._dispatching:
            self._pending.append(event)
            return event
        self._dispatching = True
        try:
            self._dispatch(event)
            while self._pending:
                self._dispatch(self._pending.popleft())
        finally:
            self._dispatching = False
        return event

    def _dispatch(self, event: Event) -> None:
        cls = type(event)
        buckets = [self._everything, self._index.get((cls, None))]
        if event.agent is not None:
            buckets.append(self._index.get((cls, event.agent)))
        for bucket in buckets:
            if not bucket:
                continue
            for listener in tuple(bucket):
                try:
                    listener(event)
                except Exception as exc:  # one broken listener must not cost the others
                    if len(self.listener_errors) < LISTENER_ERRORS_KEPT:
                        self.listener_errors.append(
                            f"{getattr(listener, '__qualname__', listener)} failed on "
                            f"{event.KIND} event {event.id}: {type(exc).__name__}: {exc}"
                        )

    def _spill(self, event: Event) -> None:
        kind = event.KIND
        if (event.NOISY and self.storage is EventStorage.SUMMARY) or self.full_from is not None:
            self.omitted[kind] += 1
            return
        buffer = self._buffer
        self._encoder.encode_into(event, buffer, len(buffer))
        buffer += b"\n"
        size = self.bytes_written + len(buffer)
        if size > self.max_bytes * SUMMARY_AT and self.storage is EventStorage.FULL:
            self.storage = EventStorage.SUMMARY
            self.summary_from = event.id + 1  # this one is written whole; the next is not
        if size >= self.max_bytes:
            self.full_from = event.id + 1
            self._write()
        elif len(buffer) >= SPILL_BLOCK:
            self._write()

    def _rejected_due(self, event: WireRejected, t: float) -> bool:
        key = (event.reason, event.by)
        last = self._rejected_at.get(key)
        if last is not None and t - last < REJECTED_EVERY_S and not event.summary:
            self._rejected_held[key] += 1
            return False
        self._rejected_at[key] = t
        event.suppressed += self._rejected_held.pop(key, 0)
        return True

    def tell_held_rejections(self) -> None:
        """Emit, per (reason, side), one `wire.rejected` line that counts the rejections
        held back since its last line (the run's end calls this before `run.finished`)."""
        for (reason, by), held in sorted(self._rejected_held.items()):
            self._rejected_held[(reason, by)] = 0
            self.emit(
                WireRejected(reason=reason, by=by, suppressed=held, summary=True,  # type: ignore[arg-type]
                             detail="rejections left out of this file since the last line")
            )  # fmt: skip
        self._rejected_held.clear()

    def _write(self) -> None:
        if self._fd is None or not self._buffer:
            return
        data = bytes(self._buffer)
        self._buffer.clear()
        os.write(self._fd, data)
        self.bytes_written += len(data)

    def flush(self) -> None:
        """Write what is buffered (a report checkpoint, a reader of the file, the end)."""
        self._write()

    def flush_every(self, interval_s: float = FLUSH_EVERY_S) -> None:
        """Write the buffer out at least this often from now on (on the running loop), so a
        coordinator killed without warning leaves a file complete to within `interval_s`."""

        def tick() -> None:
            self._write()
            self._flusher = loop.call_later(interval_s, tick)

        loop = asyncio.get_running_loop()
        self._flusher = loop.call_later(interval_s, tick)

    # -- subscriptions ------------------------------------------------------------------------
    def subscribe(
        self,
        listener: Callable[[E], None],
        kinds: Iterable[type[E]] | None = None,
        agent: str | None = None,
    ) -> Subscription:
        """Call `listener(event)` for every event of `kinds` (all kinds when None) about
        `agent` (any agent when None), synchronously as each is emitted: keep it cheap.

        A listener may take the kind it subscribed to (or their union)."""
        # It is only ever handed events of `kinds`: what its parameter says it takes.
        stored = cast(Listener, listener)
        if kinds is None:
            self._everything.append(stored)
            return _EverythingSubscription(self, stored, [])
        keys = [(cls, agent) for cls in kinds]
        for key in keys:
            self._index.setdefault(key, []).append(stored)
        return Subscription(self, stored, keys)

    async def until(
        self, condition: Callable[[], bool], kinds: Iterable[type[Event]], timeout: float | None
    ) -> None:
        """Level-triggered: return once `condition()` holds, asking again after each event
        of `kinds`. Watching starts before the first question, so nothing slips between."""
        changed = asyncio.Event()
        subscription = self.subscribe(lambda _: changed.set(), kinds)
        try:
            # Not asyncio.wait_for: on Python 3.11 it returns the result and swallows a
            # cancellation that arrives as the future completes (CPython gh-86296), which is
            # exactly when a stop_when keyword is in the message a wait is waiting for.
            async with asyncio.timeout(timeout):
                while not condition():
                    changed.clear()
                    await changed.wait()
        finally:
            subscription.close()

    def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        if self._fd is not None:
            self.tell_held_rejections()
            self._write()
            os.close(self._fd)
            self._fd = None
        self._everything.clear()
        self._index.clear()


class _EverythingSubscription(Subscription):
    def close(self) -> None:
        if self._listener in self._log._everything:
            self._log._everything.remove(self._listener)


# --- standing waits ---------------------------------------------------------------------------


IndexKey = tuple[type[Event], str | None]
"""(kind, agent or None for any agent): where the log files a listener."""


class Matcher:
    """What a wait or a judge looks for: the (kind, agent) keys it is offered, and a test.

    `__call__` may keep state (a message `to` someone remembers the messages it saw sent until
    their delivery), so one matcher instance serves one subscriber."""

    def index_keys(self) -> list[IndexKey]:
        raise NotImplementedError

    def __call__(self, event: Event) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


def subscribe_keys(
    log: EventLog, keys: Iterable[IndexKey], listener: Listener
) -> list[Subscription]:
    """Subscribe `listener` under every key (grouped by agent). An event filed under two of
    them (any agent, and its agent) reaches the listener twice: see `once`."""
    by_agent: dict[str | None, list[type[Event]]] = {}
    for cls, agent in keys:
        kinds = by_agent.setdefault(agent, [])
        if cls not in kinds:
            kinds.append(cls)
    return [log.subscribe(listener, kinds, agent) for agent, kinds in by_agent.items()]


def once(listener: Listener) -> Listener:
    """`listener`, called once per event however many of its keys the event is filed under."""
    last = 0

    def deduplicated(event: Event) -> None:
        nonlocal last
        if event.id != last:
            last = event.id
            listener(event)

    return deduplicated


class Tap:
    """A standing wait: every event a wait step could match, kept from the moment the run
    starts until the step has looked past it.

    A timeline's waits consume events in order: each looks after the event the previous wait
    of its timeline matched (its cursor), so a reply that came before the wait began is found.
    A tap is registered before anything happens, so nothing is missed, and it keeps only the
    matches after the lowest cursor that can still ask (`floor()`), so its memory is what the
    step may still need, never the log's history; the executor closes it once its step cannot
    run again. It keeps their ids, 8 bytes each, not the events: a wait needs only where its
    match is (measured: a burst of 200,000 messages whose replies waited in taps grew the
    coordinator by 37 MiB when the taps held the events). Asking never consumes, so a step
    that is retried from its timeline's cursor finds the same matches again."""

    COMPACT_AT = 4096

    def __init__(self, log: EventLog, matcher: Matcher, floor: Callable[[], int]) -> None:
        self.matcher = matcher
        self.floor = floor
        self._ids = array("q")
        self._head = 0
        """Ids before this index are at or below the floor: no longer needed."""
        self.failure: Exception | None = None
        """Set when no further match can come (the agent it waits on is gone)."""
        self._waiter: asyncio.Future[None] | None = None
        self._subscriptions = subscribe_keys(log, matcher.index_keys(), once(self._on_event))

    @property
    def held(self) -> int:
        """How many matches it keeps."""
        return len(self._ids) - self._head

    def _on_event(self, event: Event) -> None:
        if not self.matcher(event):
            return
        ids = self._ids
        ids.append(event.id)
        floor = self.floor()
        head = self._head
        while head < len(ids) and ids[head] <= floor:
            head += 1
        if head >= self.COMPACT_AT and head * 2 >= len(ids):
            del ids[:head]
            head = 0
        self._head = head
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _first_after(self, cursor: int) -> int | None:
        ids = self._ids
        i = bisect.bisect_right(ids, cursor, self._head)
        return ids[i] if i < len(ids) else None

    async def next_after(self, cursor: int, timeout: float) -> int:
        """The id of the first match after `cursor`, now or when it comes; TimeoutError after
        `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            found = self._first_after(cursor)
            if found is not None:
                return found
            if self.failure is not None:
                raise self.failure
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                # The loop's clock is time.monotonic(); not wait_for: see EventLog.until.
                async with asyncio.timeout_at(deadline):
                    await self._waiter
            finally:
                self._waiter = None

    def fail(self, failure: Exception) -> None:
        """No further match can come: a wait that finds none raises `failure` now (a match
        that came before still counts)."""
        if self.failure is None:
            self.failure = failure
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)  # wakes the wait, which looks once more, then raises

    def recover(self) -> None:
        """Matches can come again (the lost agent is being restarted): later waits wait."""
        self.failure = None

    def close(self) -> None:
        for subscription in self._subscriptions:
            subscription.close()
        self._subscriptions = []
        self._ids = array("q")
        self._head = 0
