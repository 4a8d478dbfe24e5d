"""Example plugin with a bug on purpose: an action whose handler never comes back, for
examples/hang.yaml.

- FREEZE {}: an *async* handler that calls the blocking `time.sleep` instead of awaiting
  `asyncio.sleep`. It holds the agent's event loop for `stuck.seconds` (a setting, default an
  hour): the agent serves nothing else, its action timeout cannot fire (a timeout needs the loop
  to run), and only its transport thread still heartbeats. The runner sees that the loop makes
  no progress, declares the agent hung, takes every thread's stack (where this handler's
  `time.sleep` line is) and kills it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from pydantic import BaseModel

from agent_worker.plugins import Action, ActionResult, Callback, Message, Plugin, State

if TYPE_CHECKING:
    from agent_worker.runtime import AgentRuntime


async def freeze(
    runtime: AgentRuntime, message: Message, state: State, params: BaseModel | None,
    callback: Callback,
) -> ActionResult:  # fmt: skip
    seconds = runtime.get_setting("stuck.seconds", 3600)
    seconds = seconds if isinstance(seconds, int | float) else 3600
    time.sleep(seconds)  # the bug on purpose: a blocking sleep inside a coroutine stops the loop
    return ActionResult(text="thawed")


plugin = Plugin(
    name="stuck",
    description="An action that blocks the agent's event loop (a hang on purpose).",
    actions=[Action("FREEZE", freeze, "Block the event loop (a bug on purpose).")],
)
