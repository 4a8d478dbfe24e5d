"""The model-provider interface: given a message and its composed state, decide the reply and the
actions (with parameters). Every provider (`rules`, `fixtures`, `openai`) sits behind it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from pydantic import JsonValue

from protocol import ActionInfo, Msg


@dataclass(frozen=True, slots=True)
class ActionCall:
    name: str
    params: dict[str, JsonValue] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ModelRequest:
    """One call: everything a provider may use to decide."""

    agent_id: str
    agent_name: str
    system: str
    """The character (name and bio) followed by the providers' composed state text."""
    message: Msg
    actions: tuple[ActionInfo, ...]
    """The actions the model may select (built-ins included), with their parameter schemas."""

    @property
    def prompt(self) -> str:
        """The request as one text (what fixtures match on): system text, then the message."""
        return (
            f"{self.system}\n\n# Message from {self.message.sender} in {self.message.room}\n"
            f"{self.message.text}"
        )


@dataclass(slots=True)
class ModelDecision:
    reply: str | None = None
    actions: list[ActionCall] = field(default_factory=list)


class ModelError(Exception):
    """A call the provider could not answer (no fixture matched, the endpoint failed). The
    message is recorded as an agent error, so the run cannot pass."""


class ModelProvider(Protocol):
    async def decide(self, request: ModelRequest) -> ModelDecision:
        """The reply and the actions for `request`; ModelError when there is no answer."""
        ...

    def problems_at_end(self) -> list[str]:
        """What is wrong at the end of the run (fixtures never used); empty when nothing."""
        ...

    async def close(self) -> None: ...
