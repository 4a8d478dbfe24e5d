"""Room delivery: every other member gets each message exactly once, in order, acknowledged.

The lossy variant turns on the transport's test-only drop hook (SCENARIO_RUNNER_TEST_DROP_RATE)
in the coordinator and in every agent, so data frames, acks, heartbeats and handshakes are all
lost at that rate, and the protocol still has to deliver each message to each handler once.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from pathlib import Path

import pytest
from conftest import agent, cluster, room

from orchestrator.cluster.faults import TEST_LOSS_ENV as DROP_RATE_ENV
from orchestrator.cluster.faults import TEST_LOSS_SEED_ENV as DROP_SEED_ENV
from orchestrator.events import MessageDelivered
from protocol import CmdSend

MESSAGES = 150
MEMBERS = ["sender", "m1", "m2", "m3"]


async def _burst(
    run_dir: Path, inbox_capacity: int = 1024
) -> tuple[dict[str, list[str]], Counter[tuple[str, str]], int]:
    rooms = [room("hall", MEMBERS)]
    configs = [agent(i, run_dir, rooms) for i in MEMBERS]
    stores: dict[str, str] = {}
    delivered: Counter[tuple[str, str]] = Counter()

    def count(event: MessageDelivered) -> None:
        delivered[(str(event.agent), event.msg_id)] += 1

    async with cluster(run_dir, configs, rooms, inbox_capacity=inbox_capacity) as c:
        c.events.subscribe(count, (MessageDelivered,))
        stores = {i: c.handles[i].ready_info.store_path for i in MEMBERS}  # type: ignore[union-attr]
        # Commands are pipelined; the agent runs them in order, so msg n is posted n-th.
        results = await asyncio.gather(
            *(
                c.command("sender", CmdSend(room="hall", text=f"msg {n}"), 30)
                for n in range(MESSAGES)
            )
        )
        assert all(r.ok for r in results)
        expected = MESSAGES * (len(MEMBERS) - 1)

        await c.events.until(
            lambda: c.events.counts["message.delivered"] >= expected, (MessageDelivered,), 30
        )
        retries = sum(link.stats.retries for link in c.bus.links.values())
    received: dict[str, list[str]] = {}
    for member in MEMBERS:
        with sqlite3.connect(stores[member]) as db:
            rows = db.execute(
                "SELECT id FROM memories WHERE direction = 'in' ORDER BY rowid"
            ).fetchall()
        received[member] = [r[0] for r in rows]
    return received, delivered, retries


def _check(received: dict[str, list[str]], delivered: Counter[tuple[str, str]]) -> None:
    expected_ids = [f"sender:1:{n}" for n in range(1, MESSAGES + 1)]
    assert received["sender"] == []  # a sender does not get its own message back
    for member in MEMBERS[1:]:
        # exactly once and in the sender's order (the store's primary key would also reject a
        # second insert of the same id, which would show up as a handler error)
        assert received[member] == expected_ids, member
        for msg_id in expected_ids:
            assert delivered[(member, msg_id)] == 1, (member, msg_id)


def test_room_message_reaches_every_other_member_once_in_order(private_tmp: Path) -> None:
    received, delivered, _ = asyncio.run(_burst(private_tmp))
    _check(received, delivered)


def test_exactly_once_with_frames_dropped_on_every_hop(
    private_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DROP_RATE_ENV, "0.2")
    monkeypatch.setenv(DROP_SEED_ENV, "7")
    received, delivered, retries = asyncio.run(_burst(private_tmp))
    _check(received, delivered)
    assert retries > 0  # the loss was real and recovered by retransmission


@pytest.mark.parametrize("drop_rate", ["0", "0.2"])
def test_exactly_once_with_a_tiny_inbox(
    private_tmp: Path, monkeypatch: pytest.MonkeyPatch, drop_rate: str
) -> None:
    """Credit runs out again and again: neither a window update raced by the runtime nor a
    lost one may stall the link."""
    monkeypatch.setenv(DROP_RATE_ENV, drop_rate)
    monkeypatch.setenv(DROP_SEED_ENV, "11")
    received, delivered, _ = asyncio.run(_burst(private_tmp, inbox_capacity=4))
    _check(received, delivered)
