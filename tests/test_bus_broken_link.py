"""A link whose frames ran out of attempts is broken: what is sent to it afterwards is
dead-lettered at once, never left unreported until the agent exits."""

from __future__ import annotations

import asyncio
import os
import platform
import time
from pathlib import Path

import pytest
import zmq

from orchestrator.cluster.bus import AgentGone, Bus
from orchestrator.events import EventLog, MessageDeadLetter
from protocol import (
    PROTOCOL_VERSION,
    AgentConfig,
    CmdGetState,
    Header,
    Hello,
    Kind,
    RulesModelConfig,
    encode_body,
)
from protocol.liveness import Liveness
from protocol.reliability import RetryPolicy


def _hello(agent: str) -> list[bytes]:
    header = Header(PROTOCOL_VERSION, Kind.HELLO, agent, "coordinator", 1, 0, 0, 0,
                    time.monotonic_ns())  # fmt: skip
    body = Hello(agent_id=agent, pid=os.getpid(), protocol_version=PROTOCOL_VERSION,
                 python=platform.python_version(), pyzmq=zmq.__version__, inbox_capacity=8)
    return [header.encode(), encode_body(body)]


@pytest.mark.timeout(30)
def test_a_command_to_a_broken_link_fails_at_once(private_tmp: Path) -> None:
    async def scenario() -> None:
        events = EventLog(private_tmp / "events.jsonl")
        policy = RetryPolicy(min_rto_s=0.01, max_rto_s=0.02, initial_rto_s=0.01, max_attempts=2)
        # Never declared hung in this test: the link breaks, the agent stays.
        bus = Bus(f"ipc://{private_tmp}/bus.sock", events, policy=policy,
                  liveness=Liveness(0.5, 60.0, 120.0))  # fmt: skip
        ctx = zmq.Context()
        mute = ctx.socket(zmq.DEALER)
        mute.setsockopt(zmq.LINGER, 0)
        try:
            bus.start()
            config = AgentConfig(agent_id="mute", agent_dir=str(private_tmp / "mute"),
                                 model=RulesModelConfig(rules=[]), rooms=[])  # fmt: skip
            link = bus.add_agent(config)
            link.credentials.apply(mute)
            mute.connect(bus.endpoint)
            mute.send_multipart(_hello("mute"))
            # The agent never acknowledges CONFIGURE: after 2 attempts it is a dead letter,
            # and the link is broken.
            await events.until(lambda: events.counts["message.dead_letter"] >= 1,
                               (MessageDeadLetter,), 5)  # fmt: skip
            t0 = time.monotonic()
            with pytest.raises(AgentGone):
                await bus.command("mute", CmdGetState(path="x"), 10)
            assert time.monotonic() - t0 < 2.0, "the command waited for its timeout"
            assert events.counts["message.dead_letter"] == 2
        finally:
            mute.close()
            ctx.term()
            bus.close()
            events.close()

    asyncio.run(scenario())
