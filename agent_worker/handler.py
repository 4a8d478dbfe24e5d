"""The message-handler interface, and the deterministic `rules` model behind it.

The runtime asks its handler what to say in answer to each delivered message. The plugin and
action runtime of a later version plugs in behind this same interface.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from protocol import Msg, RulesModelConfig


@dataclass(frozen=True, slots=True)
class Reply:
    room: str
    text: str


class MessageHandler(Protocol):
    def handle(self, msg: Msg) -> list[Reply]:
        """Replies to `msg`, in order; an empty list means the agent only listens."""
        ...


class _Rule:
    __slots__ = ("contains", "pattern", "reply")

    def __init__(self, contains: str | None, regex: str | None, reply: str) -> None:
        self.contains = contains
        self.pattern = re.compile(regex) if regex is not None else None
        self.reply = reply

    def matches(self, text: str) -> bool:
        if self.contains is not None and self.contains not in text:
            return False
        return self.pattern is None or self.pattern.search(text) is not None


class RulesModel:
    """First matching rule wins; its reply template sees {sender}, {text} and {room}."""

    def __init__(self, config: RulesModelConfig) -> None:
        self.rules = [_Rule(r.contains, r.regex, r.reply) for r in config.rules]

    def handle(self, msg: Msg) -> list[Reply]:
        for rule in self.rules:
            if rule.matches(msg.text):
                text = rule.reply.format_map(
                    {"sender": msg.sender, "text": msg.text, "room": msg.room}
                )
                return [Reply(msg.room, text)]
        return []
