"""Test-only plugin: services that log their start and stop to a file, a module global that
counts, an evaluator that notes every message it sees, and an init that can be told to fail."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

from agent_worker.plugins import (
    Action,
    ActionResult,
    Callback,
    Evaluator,
    Message,
    Plugin,
    State,
)

if TYPE_CHECKING:
    from agent_worker.runtime import AgentRuntime

COUNTER = {"value": 0}
"""A module global: each agent process has its own."""


def _log(runtime: AgentRuntime, line: str) -> None:
    path = runtime.get_setting("log_path")
    assert isinstance(path, str)
    with Path(path).open("a") as f:
        f.write(f"{runtime.agent_id} {line}\n")


class _Logged:
    name = "base"

    def __init__(self) -> None:
        self.runtime: AgentRuntime | None = None

    async def start(self, runtime: AgentRuntime) -> None:
        self.runtime = runtime
        _log(runtime, f"start {self.name}")

    async def stop(self) -> None:
        assert self.runtime is not None
        _log(self.runtime, f"stop {self.name}")


class First(_Logged):
    name = "first"


class Second(_Logged):
    name = "second"


def bump(
    runtime: AgentRuntime, message: Message, state: State, params: BaseModel | None,
    callback: Callback,
) -> ActionResult:  # fmt: skip
    COUNTER["value"] += 1
    runtime.set_state("counter", COUNTER["value"])
    runtime.set_state("service_id", id(runtime.get_service("first")))
    return ActionResult(values={"counter": COUNTER["value"]})


def not_from_self(runtime: AgentRuntime, message: Message, state: State) -> bool:
    return message.sender != runtime.agent_id


def note(runtime: AgentRuntime, message: Message, state: State) -> None:
    """Count the messages evaluated and remember each one as a note in its room."""
    seen = runtime.get_state("evaluated") if "evaluated" in runtime.state else 0
    assert isinstance(seen, int)
    runtime.set_state("evaluated", seen + 1)
    runtime.set_state("last_evaluated", message.text)
    runtime.memory.add(
        f"note-{message.msg_id}", message.room, runtime.agent_id, "note", {"saw": message.text}
    )


def init(runtime: AgentRuntime) -> None:
    if runtime.get_setting("fail_init"):
        raise ValueError("init was told to fail")


plugin = Plugin(
    name="lifecycle",
    actions=[Action("BUMP", bump, "Count, in a module global.")],
    services=[First, Second],
    evaluators=[Evaluator("note", note, "Note every message from others.", not_from_self)],
    init=init,
)
