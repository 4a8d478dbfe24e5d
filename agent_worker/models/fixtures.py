"""The `fixtures` model: strict recorded responses, for deterministic LLM-style agents in CI.

Each call takes the first unused fixture, in the order written, that matches it: by position
(the n-th call of this agent, from 1), by the prompt (`prompt_contains` / `prompt_regex`), or,
with neither, the next call whatever it is. A call no unused fixture matches is a ModelError;
a fixture never used by the end of the run is reported by `problems_at_end`. Either makes the
run an ERROR, with the fixture or the call named.
"""

from __future__ import annotations

import re

from agent_worker.models.base import ActionCall, ModelDecision, ModelError, ModelRequest
from agent_worker.models.rules import render
from protocol import FixtureConfig, FixturesModelConfig


class _Fixture:
    __slots__ = ("config", "label", "pattern", "used_by")

    def __init__(self, index: int, config: FixtureConfig) -> None:
        self.config = config
        self.label = config.label or f"fixtures[{index}]"
        self.pattern = re.compile(config.prompt_regex) if config.prompt_regex else None
        self.used_by: int | None = None

    def matches(self, call: int, prompt: str) -> bool:
        c = self.config
        if c.position is not None and c.position != call:
            return False
        if c.prompt_contains is not None and c.prompt_contains not in prompt:
            return False
        return self.pattern is None or self.pattern.search(prompt) is not None


def _excerpt(text: str, limit: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class FixturesModel:
    def __init__(self, config: FixturesModelConfig) -> None:
        self.fixtures = [_Fixture(i, f) for i, f in enumerate(config.fixtures)]
        self.calls = 0

    async def decide(self, request: ModelRequest) -> ModelDecision:
        self.calls += 1
        prompt = request.prompt
        for fixture in self.fixtures:
            if fixture.used_by is None and fixture.matches(self.calls, prompt):
                fixture.used_by = self.calls
                return self._decision(fixture, request)
        unused = [f.label for f in self.fixtures if f.used_by is None]
        msg = request.message
        raise ModelError(
            f"no fixture matches model call #{self.calls} (message from {msg.sender} in "
            f"{msg.room}: {_excerpt(msg.text)!r}); unused fixtures: "
            f"{', '.join(unused) if unused else 'none'}"
        )

    @staticmethod
    def _decision(fixture: _Fixture, request: ModelRequest) -> ModelDecision:
        msg = request.message
        fields = {"sender": msg.sender, "text": msg.text, "room": msg.room}
        c = fixture.config
        return ModelDecision(
            reply=c.reply.format_map(fields) if c.reply is not None else None,
            actions=[
                ActionCall(a.name, {k: render(v, fields) for k, v in a.params.items()})
                for a in c.actions
            ],
        )

    def problems_at_end(self) -> list[str]:
        return [
            f"fixture {f.label} was never used ({self.calls} model call(s) made)"
            for f in self.fixtures
            if f.used_by is None
        ]

    async def close(self) -> None:
        return None
