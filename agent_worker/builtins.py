"""Built-in actions every agent has: REPLY, IGNORE and NONE."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from agent_worker.plugins import Action, ActionResult, Callback, Message, State

if TYPE_CHECKING:
    from agent_worker.runtime import AgentRuntime

REPLY, IGNORE, NONE = "REPLY", "IGNORE", "NONE"


class ReplyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str


def _reply(
    _runtime: AgentRuntime,
    _message: Message,
    _state: State,
    params: BaseModel | None,
    callback: Callback,
) -> ActionResult:
    assert isinstance(params, ReplyParams)  # the runtime validated them against ReplyParams
    callback(params.text)
    return ActionResult(text=params.text)


def _nothing(
    _runtime: AgentRuntime,
    _message: Message,
    _state: State,
    _params: BaseModel | None,
    _callback: Callback,
) -> ActionResult:
    return ActionResult()


BUILTIN_ACTIONS = (
    Action(
        REPLY,
        _reply,
        description="Post a message to the room the current message came from.",
        similes=("RESPOND", "ANSWER"),
        parameters=ReplyParams,
    ),
    Action(
        IGNORE,
        _nothing,
        description="Say nothing in answer to this message (the model's reply is dropped).",
        similes=("STOP", "SILENCE"),
    ),
    Action(NONE, _nothing, description="Do nothing beyond the reply, if any."),
)
