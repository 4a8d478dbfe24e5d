"""Example plugin that leaks memory on purpose: a control for the leak benchmarks.

Its evaluator keeps `leak.bytes_per_message` bytes (a setting, default 64 KiB) for every
message the agent handles, in a module-level list that is never cleared. A leak detector that
does not flag an agent running this plugin is broken.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent_worker.plugins import Evaluator, Message, Plugin, State

if TYPE_CHECKING:
    from agent_worker.runtime import AgentRuntime

_HOARD: list[bytearray] = []


def hoard(runtime: AgentRuntime, message: Message, state: State) -> None:
    size = runtime.get_setting("leak.bytes_per_message", 64 * 1024)
    _HOARD.append(bytearray(size if isinstance(size, int) else 64 * 1024))
    runtime.set_state("leak.blocks", len(_HOARD))


plugin = Plugin(
    name="leaky",
    description="Leaks memory on every message (a control for leak detection).",
    evaluators=[Evaluator("hoard", hoard, "Keep a block of memory forever.")],
)
