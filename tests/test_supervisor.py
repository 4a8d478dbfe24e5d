"""Supervisor life cycle beyond the first launch: agents launched after the first READY."""

from __future__ import annotations

import asyncio
from pathlib import Path

from conftest import agent, cluster, room

from orchestrator.cluster.launchers import LaunchSpec
from orchestrator.cluster.supervisor import ProcessStatus


def test_an_agent_launched_after_the_first_wait_ready_starts_and_stops(private_tmp: Path) -> None:
    lobby = room("lobby", ["first", "late"])

    async def scenario() -> None:
        async with cluster(private_tmp, [agent("first", private_tmp, [lobby])], [lobby]) as c:
            late = agent("late", private_tmp, [lobby])
            spec = LaunchSpec("late", c.bus.endpoint, 1, Path(late.agent_dir), -1, 0.5, 10.0, 1024)
            c.supervisor.launch(spec, late)
            await c.supervisor.wait_ready(20)
            statuses = {a: p.status for a, p in c.supervisor.processes.items()}
            assert statuses == {"first": ProcessStatus.READY, "late": ProcessStatus.READY}

    asyncio.run(scenario())
