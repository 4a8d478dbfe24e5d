"""Example plugin whose memory grows while the agent warms up and then stays flat: a control
for the leak verdict, which must not call a warm-up a leak.

Its service fills a cache of `warm.blocks` blocks of `warm.block_bytes` (settings; default 32
of 256 KiB, 8 MiB) over `warm.seconds` (default 5) after the agent starts, then keeps it and
does nothing more. Nothing runs per message, so after the warm-up the agent is exactly as
flat as one without the plugin.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from agent_worker.plugins import Plugin

if TYPE_CHECKING:
    from agent_worker.runtime import AgentRuntime


class Cache:
    name = "warm-cache"

    def __init__(self) -> None:
        self.blocks: list[bytearray] = []
        self._filling: asyncio.Task[None] | None = None

    async def start(self, runtime: AgentRuntime) -> None:
        self._filling = asyncio.get_running_loop().create_task(self._fill(runtime))

    async def _fill(self, runtime: AgentRuntime) -> None:
        count = runtime.get_setting("warm.blocks", 32)
        size = runtime.get_setting("warm.block_bytes", 256 * 1024)
        seconds = runtime.get_setting("warm.seconds", 5)
        count = count if isinstance(count, int) else 32
        size = size if isinstance(size, int) else 256 * 1024
        pause = (seconds if isinstance(seconds, int | float) else 5) / max(1, count)
        for _ in range(count):
            self.blocks.append(bytearray(size))
            await asyncio.sleep(pause)  # spread over the warm-up, by design
        runtime.set_state("warm.blocks", len(self.blocks))

    async def stop(self) -> None:
        if self._filling is not None:
            self._filling.cancel()


plugin = Plugin(
    name="warming",
    description="Fills a cache while warming up, then stays flat (a control for leak verdicts).",
    services=[Cache],
)
