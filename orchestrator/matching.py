"""Event matching: the one definition of "this event is a message / an action run / an event
like that".

Used by `wait_for` steps, `stop_when`, and assertions, so a wait and an assertion written the
same way always agree. A message is a `message.sent` event: the bus accepted it from its
sender, so it exists whoever it reaches.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from orchestrator.events import Event, EventKind
from orchestrator.schema import ActionMatch, EventMatch, MessageMatch

Predicate = Callable[[Event], bool]


@dataclass(frozen=True, slots=True)
class MessageFilter:
    sender: str | None = None
    room: str | None = None
    contains: str | None = None
    regex: re.Pattern[str] | None = None
    equals: str | None = None
    to: str | None = None
    origin: str = "any"
    rooms_of: Mapping[str, frozenset[str]] | None = None
    """For `to`: the rooms each agent is a member of."""

    @classmethod
    def build(
        cls, sender: str | None, room: str | None, contains: str | None, regex: str | None
    ) -> MessageFilter:
        return cls(sender, room, contains, re.compile(regex) if regex is not None else None)

    @classmethod
    def of(
        cls, match: MessageMatch, members: Mapping[str, frozenset[str]] | None = None
    ) -> MessageFilter:
        """The filter for `match`; `members` (room -> member ids) is needed when it has `to`."""
        rooms_of: dict[str, frozenset[str]] | None = None
        if match.to is not None:
            rooms_of = {
                match.to: frozenset(r for r, ids in (members or {}).items() if match.to in ids)
            }
        return cls(
            match.from_,
            match.room,
            match.contains,
            re.compile(match.regex) if match.regex is not None else None,
            match.equals,
            match.to,
            match.origin,
            rooms_of,
        )

    def __call__(self, event: Event) -> bool:
        if event.kind is not EventKind.MESSAGE_SENT:
            return False
        if self.sender is not None and event.agent != self.sender:
            return False
        data = event.data
        if self.origin != "any" and data.get("origin") != self.origin:
            return False
        if self.room is not None and data.get("room") != self.room:
            return False
        if self.to is not None:
            if event.agent == self.to or self.rooms_of is None:
                return False
            if data.get("room") not in self.rooms_of.get(self.to, frozenset()):
                return False
        text = data.get("text")
        if not isinstance(text, str):
            return False
        if self.equals is not None and text != self.equals:
            return False
        if self.contains is not None and self.contains not in text:
            return False
        return self.regex is None or self.regex.search(text) is not None

    def describe(self) -> str:
        parts = []
        if self.sender is not None:
            parts.append(f"from {self.sender}")
        if self.to is not None:
            parts.append(f"to {self.to}")
        if self.room is not None:
            parts.append(f"in {self.room}")
        if self.equals is not None:
            parts.append(f"equal to {self.equals!r}")
        if self.contains is not None:
            parts.append(f"containing {self.contains!r}")
        if self.regex is not None:
            parts.append(f"matching /{self.regex.pattern}/")
        if self.origin == "script":
            parts.append("(injected by the script)")
        return "a message " + " ".join(parts) if parts else "any message"


def action_status(event: Event) -> str | None:
    """The status of an action run from its completion event; None for other events."""
    if event.kind is EventKind.ACTION_COMPLETED:
        return "succeeded"
    if event.kind is EventKind.ACTION_FAILED:
        status = event.data.get("status")
        return status if isinstance(status, str) else "failed"
    return None


def action_predicate(m: ActionMatch) -> Predicate:
    def matches(event: Event) -> bool:
        status = action_status(event)
        return (
            status is not None
            and event.agent == m.agent
            and (m.name is None or event.data.get("action") == m.name)
            and (m.status is None or status == m.status)
        )

    return matches


def describe_action_match(m: ActionMatch) -> str:
    text = f"an action of {m.agent}"
    if m.name is not None:
        text = f"{m.name} run by {m.agent}"
    return text + (f" that {m.status}" if m.status is not None else " to finish")


def event_predicate(m: EventMatch) -> Predicate:
    kind = EventKind(m.kind)

    def matches(event: Event) -> bool:
        return (
            event.kind is kind
            and (m.agent is None or event.agent == m.agent)
            and all(k in event.data and event.data[k] == v for k, v in m.data.items())
        )

    return matches


def describe_event_match(m: EventMatch) -> str:
    text = f"a {m.kind} event"
    if m.agent is not None:
        text += f" of {m.agent}"
    if m.data:
        text += " with " + ", ".join(f"{k}={v!r}" for k, v in sorted(m.data.items()))
    return text
