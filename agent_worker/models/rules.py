"""The deterministic `rules` model: the first rule whose `contains` / `regex` matches decides.

Its reply template and the string parameters of its actions see {sender}, {text}, {room} and
the named groups of its regex.
"""

from __future__ import annotations

import random
import re

from pydantic import JsonValue

from agent_worker.models.base import ActionCall, ModelDecision, ModelRequest
from protocol import RuleConfig, RulesModelConfig


def render(value: JsonValue, fields: dict[str, str]) -> JsonValue:
    """`value` with every string in it formatted with `fields` (recursively)."""
    if isinstance(value, str):
        return value.format_map(fields)
    if isinstance(value, list):
        return [render(v, fields) for v in value]
    if isinstance(value, dict):
        return {k: render(v, fields) for k, v in value.items()}
    return value


class _Rule:
    __slots__ = ("config", "contains", "pattern")

    def __init__(self, config: RuleConfig) -> None:
        self.config = config
        self.contains = config.contains
        self.pattern = re.compile(config.regex) if config.regex is not None else None

    def match(self, text: str) -> dict[str, str] | None:
        """The template fields from the regex's named groups, or None when it does not match."""
        if self.contains is not None and self.contains not in text:
            return None
        if self.pattern is None:
            return {}
        found = self.pattern.search(text)
        if found is None:
            return None
        return {k: v for k, v in found.groupdict().items() if v is not None}


class RulesModel:
    def __init__(self, config: RulesModelConfig, seed: int = 0) -> None:
        self.rules = [_Rule(r) for r in config.rules]
        self.calls = 0
        # Its own stream, so what plugins draw from runtime.random cannot shift the model's.
        self._random = random.Random(f"rules-model:{seed}")

    async def decide(self, request: ModelRequest) -> ModelDecision:
        self.calls += 1
        msg = request.message
        for rule in self.rules:
            groups = rule.match(msg.text)
            if groups is None:
                continue
            # Drawn only for rules that leave something to chance, so adding `chance` to one
            # rule does not change the draws another rule sees.
            if rule.config.chance < 1.0 and self._random.random() >= rule.config.chance:
                continue
            fields = {**groups, "sender": msg.sender, "text": msg.text, "room": msg.room}
            config = rule.config
            return ModelDecision(
                reply=config.reply.format_map(fields) if config.reply is not None else None,
                actions=[
                    ActionCall(a.name, {k: render(v, fields) for k, v in a.params.items()})
                    for a in config.actions
                ],
            )
        return ModelDecision()

    def problems_at_end(self) -> list[str]:
        return []

    async def close(self) -> None:
        return None
