"""The coordinator's event log: every observable thing that happens in a run, in order.

Events live in a bounded ring in memory and are appended to `events.jsonl` as they happen, so
a long run's memory does not grow with its length. Waits are futures on predicates: a waiter
is checked against each new event the instant it is emitted (and against what already
happened after its cursor), never by polling.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO

from pydantic import JsonValue


class EventKind(StrEnum):
    RUN_STARTED = "run.started"
    RUN_FINISHED = "run.finished"
    AGENT_LAUNCHED = "agent.launched"
    AGENT_HELLO = "agent.hello"
    AGENT_READY = "agent.ready"
    AGENT_STOPPING = "agent.stopping"
    AGENT_BYE = "agent.bye"
    AGENT_EXITED = "agent.exited"
    AGENT_CRASHED = "agent.crashed"
    AGENT_HUNG = "agent.hung"
    AGENT_EVENT = "agent.event"
    AGENT_ERROR = "agent.error"
    STATE_CHANGED = "state.changed"
    ACTION_STARTED = "action.started"
    ACTION_COMPLETED = "action.completed"
    ACTION_FAILED = "action.failed"
    MESSAGE_SENT = "message.sent"
    MESSAGE_DELIVERED = "message.delivered"
    MESSAGE_RETRY = "message.retry"
    MESSAGE_DEAD_LETTER = "message.dead_letter"
    COMMAND_SENT = "command.sent"
    COMMAND_RESULT = "command.result"
    WIRE_REJECTED = "wire.rejected"
    SAMPLE = "sample"
    STEP_STARTED = "step.started"
    STEP_FINISHED = "step.finished"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    """Position in the log, from 1."""
    t: float
    """Seconds since the log was opened (monotonic clock)."""
    kind: EventKind
    agent: str | None
    data: dict[str, JsonValue]

    def to_json(self) -> dict[str, JsonValue]:
        return {
            "id": self.id,
            "t": round(self.t, 6),
            "kind": self.kind.value,
            "agent": self.agent,
            "data": self.data,
        }

    @classmethod
    def from_json(cls, raw: dict[str, JsonValue]) -> Event:
        data = raw["data"]
        agent = raw["agent"]
        ident, t = raw["id"], raw["t"]
        if not isinstance(data, dict) or not isinstance(ident, int):
            raise ValueError(f"bad event line: {raw!r}")
        if not isinstance(t, int | float):
            raise ValueError(f"bad event time: {raw!r}")
        return cls(
            ident,
            float(t),
            EventKind(str(raw["kind"])),
            agent if isinstance(agent, str) else None,
            data,
        )


Predicate = Callable[[Event], bool]

_encode = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode
"""One encoder for every line: `json.dumps` with options builds a new encoder per call, and the
spill is on the path of every message (two events each)."""


def _line(event: Event) -> str:
    """`event.to_json()` as one JSON line, without building the intermediate dict."""
    agent = "null" if event.agent is None else _encode(event.agent)
    return (
        f'{{"id":{event.id},"t":{round(event.t, 6)!r},"kind":"{event.kind.value}",'
        f'"agent":{agent},"data":{_encode(event.data)}}}\n'
    )


class _Waiter:
    __slots__ = ("future", "predicate")

    def __init__(self, predicate: Predicate, future: asyncio.Future[Event]) -> None:
        self.predicate = predicate
        self.future = future


class EventLog:
    def __init__(self, spill_path: Path, capacity: int = 20_000) -> None:
        self.spill_path = spill_path
        self.capacity = capacity
        self._ring: deque[Event] = deque(maxlen=capacity)
        self._spill: IO[str] | None = spill_path.open("w", encoding="utf-8")
        self._waiters: list[_Waiter] = []
        self._listeners: list[Callable[[Event], None]] = []
        self._t0 = time.monotonic()
        self.last_id = 0
        self.counts: Counter[EventKind] = Counter()

    @property
    def t0(self) -> float:
        return self._t0

    def now(self) -> float:
        return time.monotonic() - self._t0

    def emit(self, kind: EventKind, agent: str | None = None, /, **data: JsonValue) -> Event:
        self.last_id += 1
        event = Event(self.last_id, time.monotonic() - self._t0, kind, agent, data)
        self._ring.append(event)
        self.counts[kind] += 1
        if self._spill is not None:
            self._spill.write(_line(event))
        for listener in self._listeners:
            listener(event)
        if self._waiters:
            self._wake(event)
        return event

    def subscribe(self, listener: Callable[[Event], None]) -> None:
        """Call `listener` synchronously for every event from now on (keep it cheap)."""
        self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[Event], None]) -> None:
        self._listeners.remove(listener)

    def _wake(self, event: Event) -> None:
        still: list[_Waiter] = []
        for waiter in self._waiters:
            if waiter.future.done():
                continue
            if waiter.predicate(event):
                waiter.future.set_result(event)
            else:
                still.append(waiter)
        self._waiters = still

    async def wait_for(self, predicate: Predicate, timeout: float | None, after: int = 0) -> Event:
        """The first event with id > `after` that satisfies `predicate`.

        Events already in the log count, so a reply that arrived before the wait began is
        found. Raises TimeoutError when `timeout` seconds pass first.
        """
        for event in self.since(after):
            if predicate(event):
                return event
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(predicate, future)
        self._waiters.append(waiter)
        try:
            # Not asyncio.wait_for: on Python 3.11 it returns the result and swallows a
            # cancellation that arrives as the future completes (CPython gh-86296), which is
            # exactly when a stop_when keyword is in the message a wait is waiting for.
            async with asyncio.timeout(timeout):
                return await future
        finally:
            if not future.done():
                future.cancel()
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def since(self, after: int) -> Iterator[Event]:
        """Events with id > `after`, oldest first, from memory or, when evicted, the spill."""
        if self._ring and after + 1 < self._ring[0].id:
            first_in_ring = self._ring[0].id
            for event in self._replay_spill():
                if event.id >= first_in_ring:
                    break
                if event.id > after:
                    yield event
        for event in list(self._ring):
            if event.id > after:
                yield event

    def replay(self) -> Iterator[Event]:
        """Every event of the run, oldest first (streams the spill file; bounded memory)."""
        return self.since(0)

    def _replay_spill(self) -> Iterator[Event]:
        if self._spill is not None:
            self._spill.flush()
        with self.spill_path.open(encoding="utf-8") as f:
            for line in f:
                yield Event.from_json(json.loads(line))

    def flush(self) -> None:
        if self._spill is not None:
            self._spill.flush()

    def close(self) -> None:
        for waiter in self._waiters:
            if not waiter.future.done():
                waiter.future.cancel()
        self._waiters.clear()
        if self._spill is not None:
            self._spill.close()
            self._spill = None
