"""A plugin whose action posts anywhere it is told, even to a room its agent is not in (the
bus must refuse that), and through `runtime.send` rather than the action's callback."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from agent_worker.plugins import Action, ActionResult, Callback, Message, Plugin, State

if TYPE_CHECKING:
    from agent_worker.runtime import AgentRuntime


class PostParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    room: str
    text: str


def post(
    runtime: AgentRuntime, message: Message, state: State, params: BaseModel | None,
    callback: Callback,
) -> ActionResult:  # fmt: skip
    assert isinstance(params, PostParams)
    runtime.send(params.room, params.text)
    return ActionResult(text=params.text)


plugin = Plugin(
    name="poster",
    actions=[Action("POST", post, description="Post text to a room.", parameters=PostParams)],
)
