"""A plugin whose evaluator ends the agent's process (exit code 3) on a message containing
"crash": an agent that dies for the restart policy to bring back."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from agent_worker.plugins import Evaluator, Message, Plugin, State

if TYPE_CHECKING:
    from agent_worker.runtime import AgentRuntime


def die(runtime: AgentRuntime, message: Message, state: State) -> None:
    if "crash" in message.text:
        os._exit(3)  # no cleanup, no BYE: a crash


plugin = Plugin(
    name="crashy",
    description="Dies on a message containing 'crash'.",
    evaluators=[Evaluator("die", die, "Exit at once on 'crash'.")],
)
