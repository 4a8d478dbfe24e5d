"""Garbage sent to the coordinator's ROUTER is counted and reported, never fatal."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import msgpack
import zmq
from conftest import agent, cluster, room, run_yaml

from orchestrator.events import AgentReady, Event, MessageDelivered, RunStarted, WireRejected
from orchestrator.report.model import Verdict
from protocol import MAX_FRAME_BYTES, PROTOCOL_VERSION, CmdSend, Kind


def _header(kind: int = Kind.MSG, version: int = PROTOCOL_VERSION, src: str = "ghost") -> bytes:
    return msgpack.packb([version, kind, src, "lobby", 1, 1, 0, 0, 0])


def _send_garbage(endpoint: str) -> None:
    """From raw sockets: an unknown sender, then a registered-but-absent id sending junk."""
    ctx = zmq.Context()
    try:
        stranger = ctx.socket(zmq.DEALER)
        stranger.setsockopt(zmq.IDENTITY, b"stranger")
        stranger.setsockopt(zmq.LINGER, 2000)
        stranger.connect(endpoint)
        stranger.send_multipart([_header(src="stranger"), b"\x80"])
        ghost = ctx.socket(zmq.DEALER)
        ghost.setsockopt(zmq.IDENTITY, b"ghost")
        ghost.setsockopt(zmq.LINGER, 2000)
        ghost.connect(endpoint)
        ghost.send_multipart([os.urandom(64)])  # one frame: FRAME_COUNT
        ghost.send_multipart([os.urandom(64), os.urandom(64)])  # MALFORMED / BAD_HEADER
        ghost.send_multipart([_header(version=PROTOCOL_VERSION + 7), b"\x80"])  # BAD_VERSION
        ghost.send_multipart([_header(kind=99), b"\x80"])  # UNKNOWN_KIND
        ghost.send_multipart([_header(), b"x" * (MAX_FRAME_BYTES + 1)])  # OVERSIZE
        ghost.send_multipart([_header(), msgpack.packb({"nonsense": True})])  # BAD_BODY
        ghost.send_multipart([_header(src="someone-else"), b"\x80"])  # SRC_MISMATCH
        stranger.close()
        ghost.close()
    finally:
        ctx.term()  # waits (LINGER) until the frames are handed to the coordinator


EXPECTED = {
    "unknown_sender",
    "frame_count",
    "bad_version",
    "unknown_kind",
    "oversize",
    "bad_body",
    "src_mismatch",
}


def test_garbage_does_not_crash_the_bus(private_tmp: Path) -> None:
    async def scenario() -> None:
        rooms = [room("lobby", ["real", "ghost", "other"])]
        configs = [agent("real", private_tmp, rooms), agent("other", private_tmp, rooms)]
        async with cluster(private_tmp, configs, rooms) as c:
            # "ghost" is an agent the bus expects but that never started: a raw socket takes
            # its routing id and sends junk under it.
            c.bus.add_agent(agent("ghost", private_tmp, rooms))
            await asyncio.get_running_loop().run_in_executor(None, _send_garbage, c.bus.endpoint)
            await c.events.until(lambda: c.bus.rejected["src_mismatch"] > 0, (WireRejected,), 10)
            assert set(c.bus.rejected) >= EXPECTED, dict(c.bus.rejected)
            assert sum(c.bus.rejected.values()) >= 8
            # the bus still routes real traffic
            delivered = c.events.counts["message.delivered"]
            result = await c.command("real", CmdSend(room="lobby", text="still here"), 5)
            assert result.ok
            await c.events.until(
                lambda: c.events.counts["message.delivered"] > delivered, (MessageDelivered,), 5
            )
            assert c.crashes == []

    asyncio.run(scenario())


def test_garbage_is_counted_in_the_report(private_tmp: Path) -> None:
    text = """
name: garbage
agents: [{id: a, model: {rules: [{when: {contains: hi}, reply: "hi {sender}"}]}}, {id: b}]
rooms: [{id: lobby, members: [a, b]}]
script:
  - send: {agent: b, room: lobby, text: "hi"}
  - wait_for: {message: {from: a, contains: "hi b"}, timeout: 2s}
assertions:
  - message: {from: a, count: {min: 1}}
"""
    endpoint: list[str] = []

    def probe(event: Event) -> None:
        if isinstance(event, RunStarted):
            endpoint.append(event.endpoint)
        if isinstance(event, AgentReady) and event.agent == "a":
            ctx = zmq.Context()
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 2000)
            s.connect(endpoint[0])
            s.send_multipart([b"\x00garbage", os.urandom(32)])
            s.close()
            ctx.term()

    report = run_yaml(text, private_tmp / "report", on_event=probe)
    assert report.verdict is Verdict.PASS, report.errors
    assert report.bus.rejected_frames.get("unknown_sender", 0) >= 1
