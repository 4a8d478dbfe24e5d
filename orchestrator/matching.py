"""Message matching: the one definition of "this event is a message like that".

Used by `wait_for` steps and by `message` assertions, so a wait and an assertion written the
same way always agree. A message is a `message.sent` event: the bus accepted it from its
sender, so it exists whoever it reaches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from orchestrator.events import Event, EventKind


@dataclass(frozen=True, slots=True)
class MessageFilter:
    sender: str | None = None
    room: str | None = None
    contains: str | None = None
    regex: re.Pattern[str] | None = None

    @classmethod
    def build(
        cls, sender: str | None, room: str | None, contains: str | None, regex: str | None
    ) -> MessageFilter:
        return cls(sender, room, contains, re.compile(regex) if regex is not None else None)

    def __call__(self, event: Event) -> bool:
        if event.kind is not EventKind.MESSAGE_SENT:
            return False
        if self.sender is not None and event.agent != self.sender:
            return False
        data = event.data
        if self.room is not None and data.get("room") != self.room:
            return False
        text = data.get("text")
        if not isinstance(text, str):
            return False
        if self.contains is not None and self.contains not in text:
            return False
        return self.regex is None or self.regex.search(text) is not None

    def describe(self) -> str:
        parts = []
        if self.sender is not None:
            parts.append(f"from {self.sender}")
        if self.room is not None:
            parts.append(f"in {self.room}")
        if self.contains is not None:
            parts.append(f"containing {self.contains!r}")
        if self.regex is not None:
            parts.append(f"matching /{self.regex.pattern}/")
        return "a message " + " ".join(parts) if parts else "any message"
