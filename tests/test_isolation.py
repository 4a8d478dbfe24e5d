"""Each agent is its own OS process with its own store, state and memory."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

from conftest import agent, cluster, room

from orchestrator.events import MessageDelivered
from protocol import CmdGetState, CmdQueryMemory, CmdSend, CmdSetState


def test_agents_are_separate_processes_with_private_stores_and_state(private_tmp: Path) -> None:
    async def scenario() -> None:
        ids = ["a1", "a2", "a3"]
        rooms = [room("r12", ["a1", "a2"]), room("r3", ["a3"])]
        configs = [agent(i, private_tmp, [r for r in rooms if i in r.members]) for i in ids]
        async with cluster(private_tmp, configs, rooms) as c:
            pids = {h.id: h.pid for h in c.handles.values()}
            assert len(set(pids.values())) == 3
            assert os.getpid() not in pids.values()
            for agent_id, pid in pids.items():
                hello = c.handles[agent_id].link.hello
                assert hello is not None and hello.pid == pid  # the agent reports its own pid

            stores = {i: c.handles[i].ready_info.store_path for i in ids}  # type: ignore[union-attr]
            assert len(set(stores.values())) == 3
            for i, path in stores.items():
                assert Path(path).is_file() and Path(path).parent.name == i

            # state written in one agent is invisible in the others
            ok = await c.command("a1", CmdSetState(path="secret.value", value=42), 5)
            assert ok.ok
            mine = await c.command("a1", CmdGetState(path="secret.value"), 5)
            assert mine.ok and mine.value == 42
            for other in ("a2", "a3"):
                theirs = await c.command(other, CmdGetState(path="secret"), 5)
                assert not theirs.ok and "no state" in (theirs.error or "")

            # memory written by a1's room traffic is only in the stores of that room's members
            sent = await c.command("a1", CmdSend(room="r12", text="for a2 only"), 5)
            assert sent.ok
            await c.events.until(
                lambda: c.bus.links["a2"].stats.delivered == 1, (MessageDelivered,), 5
            )
            for i, expected in (("a1", 1), ("a2", 1), ("a3", 0)):
                mem = await c.command(i, CmdQueryMemory(), 5)
                assert isinstance(mem.value, list) and len(mem.value) == expected, (i, mem)
        # after teardown, read the files directly: a3's store never saw the message
        for i, expected in (("a1", 1), ("a2", 1), ("a3", 0)):
            with sqlite3.connect(stores[i]) as db:
                (n,) = db.execute("SELECT count(*) FROM memories").fetchone()
            assert n == expected

    asyncio.run(scenario())
