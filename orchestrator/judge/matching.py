"""Event matching: the one definition of "this event is a message / an action run / an event
like that".

Used by `wait_for` steps, `stop_when`, and assertions, so a wait and an assertion written the
same way always agree. Each matcher says which (kind, agent) keys it needs (`keys()`), so the
event log offers it only the events that can match.

A message is a `message.sent` event: the bus accepted it from its sender, so it exists whoever
it reaches. A message *to* someone is different: it counts only once that agent has it, so a
match with `to` is the `message.delivered` event of that recipient, for a message whose
`message.sent` matched the rest of the filter.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

from orchestrator.events import (
    EVENT_KINDS,
    ActionCompleted,
    ActionEnded,
    ActionFailed,
    Event,
    Matcher,
    MessageDelivered,
    MessageSent,
)
from orchestrator.scenario.schema import ActionMatch, EventMatch, MessageMatch, quote

PENDING_LIMIT = 100_000
"""Messages a match or a judge remembers at once (a `to` match between sending and delivery;
reply latency, delivery tracking); beyond it the oldest are forgotten and counted, so a soak
run's judging memory stays bounded."""


@dataclass(slots=True)
class MessageFilter(Matcher):
    sender: str | None = None
    room: str | None = None
    contains: str | None = None
    regex: re.Pattern[str] | None = None
    equals: str | None = None
    to: str | None = None
    origin: str = "any"
    to_rooms: frozenset[str] | None = None
    """With `to`: the rooms that agent is in (None: not known, any room)."""
    _sent: OrderedDict[str, None] = field(default_factory=OrderedDict)
    """With `to`: the ids of matching messages sent to a room of that agent, not yet
    delivered to it."""
    forgotten: int = 0
    """Messages to `to` that were forgotten before their delivery (PENDING_LIMIT)."""

    @classmethod
    def of(
        cls, match: MessageMatch, members: Mapping[str, frozenset[str]] | None = None
    ) -> MessageFilter:
        """The filter for `match`; `members` (room -> its agents) lets a `to` filter ignore
        messages to rooms its agent is not in."""
        to_rooms = None
        if match.to is not None and members is not None:
            to_rooms = frozenset(room for room, ids in members.items() if match.to in ids)
        return cls(
            match.from_,
            match.room,
            match.contains,
            re.compile(match.regex) if match.regex is not None else None,
            match.equals,
            match.to,
            match.origin,
            to_rooms,
        )

    def index_keys(self) -> list[tuple[type[Event], str | None]]:
        keys: list[tuple[type[Event], str | None]] = [(MessageSent, self.sender)]
        if self.to is not None:
            keys.append((MessageDelivered, self.to))
        return keys

    def sent(self, event: MessageSent) -> bool:
        """Whether the message `event` accepted fits every test but `to`."""
        if self.sender is not None and event.agent != self.sender:
            return False
        if self.origin != "any" and event.origin != self.origin:
            return False
        if self.room is not None and event.room != self.room:
            return False
        text = event.text
        if self.equals is not None and text != self.equals:
            return False
        if self.contains is not None and self.contains not in text:
            return False
        return self.regex is None or self.regex.search(text) is not None

    def __call__(self, event: Event) -> bool:
        if self.to is None:
            return isinstance(event, MessageSent) and self.sent(event)
        if isinstance(event, MessageSent):
            in_reach = self.to_rooms is None or event.room in self.to_rooms
            if in_reach and event.agent != self.to and self.sent(event):
                self._sent[event.msg_id] = None
                if len(self._sent) > PENDING_LIMIT:
                    self._sent.popitem(last=False)
                    self.forgotten += 1
            return False
        if (
            isinstance(event, MessageDelivered)
            and event.agent == self.to
            and event.msg_id in self._sent
        ):
            del self._sent[event.msg_id]
            return True
        return False

    def describe(self) -> str:
        parts = []
        if self.sender is not None:
            parts.append(f"from {self.sender}")
        if self.to is not None:
            parts.append(f"received by {self.to}")
        if self.room is not None:
            parts.append(f"in {self.room}")
        if self.equals is not None:
            parts.append(f"equal to {quote(self.equals, 80)}")
        if self.contains is not None:
            parts.append(f"containing {quote(self.contains, 80)}")
        if self.regex is not None:
            parts.append(f"matching /{self.regex.pattern}/")
        if self.origin == "script":
            parts.append("(injected by the script)")
        return "a message " + " ".join(parts) if parts else "any message"


def action_status(event: Event) -> str | None:
    """The status of an action run from its completion event; None for other events."""
    return event.status if isinstance(event, ActionEnded) else None


@dataclass(frozen=True, slots=True)
class ActionMatcher(Matcher):
    match: ActionMatch

    def index_keys(self) -> list[tuple[type[Event], str | None]]:
        return [(ActionCompleted, self.match.agent), (ActionFailed, self.match.agent)]

    def __call__(self, event: Event) -> bool:
        m = self.match
        return (
            isinstance(event, ActionEnded)
            and event.agent == m.agent
            and (m.name is None or event.action == m.name)
            and (m.status is None or event.status == m.status)
        )

    def describe(self) -> str:
        return describe_action_match(self.match)


def describe_action_match(m: ActionMatch) -> str:
    text = f"an action of {m.agent}"
    if m.name is not None:
        text = f"{m.name} run by {m.agent}"
    return text + (f" that {m.status}" if m.status is not None else " to finish")


@dataclass(frozen=True, slots=True)
class EventMatcher(Matcher):
    match: EventMatch

    def index_keys(self) -> list[tuple[type[Event], str | None]]:
        return [(EVENT_KINDS[self.match.kind], self.match.agent)]

    def __call__(self, event: Event) -> bool:
        m = self.match
        return (
            m.kind == event.KIND
            and (m.agent is None or event.agent == m.agent)
            and all(getattr(event, k, _MISSING) == v for k, v in m.data.items())
        )

    def describe(self) -> str:
        return describe_event_match(self.match)


_MISSING = object()


def describe_event_match(m: EventMatch) -> str:
    text = f"{'an' if m.kind[0] in 'aeiou' else 'a'} {m.kind} event"
    if m.agent is not None:
        text += f" of {m.agent}"
    if m.data:
        text += " with " + ", ".join(f"{k}={v!r}" for k, v in sorted(m.data.items()))
    return text
