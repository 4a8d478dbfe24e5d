"""Example plugin with actions that go wrong on purpose, to show how failures are recorded.

- DIVIDE {a, b}: fails (success=False) when b is 0; succeeds otherwise.
- EXPLODE {}: its handler raises; the action is recorded as `error`, the agent keeps serving.
- STALL {seconds}: an async handler that takes `seconds`; past the agent's action timeout it
  is recorded as `timeout`.
- ONLY_ADMIN {}: its `validate` refuses any message not from `admin`; recorded as `invalid`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from agent_worker.plugins import Action, ActionResult, Callback, Message, Plugin, State

if TYPE_CHECKING:
    from agent_worker.runtime import AgentRuntime


class DivideParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    a: float
    b: float


class StallParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seconds: float


def divide(
    runtime: AgentRuntime, message: Message, state: State, params: BaseModel | None,
    callback: Callback,
) -> ActionResult:  # fmt: skip
    assert isinstance(params, DivideParams)
    if params.b == 0:
        return ActionResult(success=False, error="division by zero")
    quotient = params.a / params.b
    runtime.set_state("last_quotient", quotient)
    return ActionResult(text=str(quotient), values={"quotient": quotient})


def explode(
    runtime: AgentRuntime, message: Message, state: State, params: BaseModel | None,
    callback: Callback,
) -> ActionResult:  # fmt: skip
    raise RuntimeError("EXPLODE always raises")


async def stall(
    runtime: AgentRuntime, message: Message, state: State, params: BaseModel | None,
    callback: Callback,
) -> ActionResult:  # fmt: skip
    assert isinstance(params, StallParams)
    await asyncio.sleep(params.seconds)  # the point of this action: a handler that takes long
    return ActionResult(text=f"stalled {params.seconds}s")


def from_admin(runtime: AgentRuntime, message: Message, state: State) -> bool:
    return message.sender == "admin"


def admin_only(
    runtime: AgentRuntime, message: Message, state: State, params: BaseModel | None,
    callback: Callback,
) -> ActionResult:  # fmt: skip
    return ActionResult(text="admin action done")


plugin = Plugin(
    name="faults",
    actions=[
        Action("DIVIDE", divide, "Divide a by b.", (), DivideParams),
        Action("EXPLODE", explode, "Always raises."),
        Action("STALL", stall, "Take a while.", (), StallParams),
        Action("ONLY_ADMIN", admin_only, "Only for admin's messages.", validate=from_admin),
    ],
)
