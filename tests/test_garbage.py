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
from protocol.auth import Credentials


def _header(kind: int = Kind.MSG, version: int = PROTOCOL_VERSION, src: str = "ghost") -> bytes:
    return msgpack.packb([version, kind, src, "lobby", 1, 1, 0, 0, 0])


def _send_garbage(endpoint: str, ghost_keys: Credentials, stranger_keys: Credentials) -> None:
    """From raw sockets: a stranger (keys the bus never issued), then an expected agent's
    keys in a process that sends junk."""
    ctx = zmq.Context()
    try:
        stranger = ctx.socket(zmq.DEALER)
        stranger_keys.apply(stranger)
        stranger.setsockopt(zmq.LINGER, 0)
        stranger.connect(endpoint)
        stranger.send_multipart([_header(src="stranger"), b"\x80"])
        ghost = ctx.socket(zmq.DEALER)
        ghost_keys.apply(ghost)
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
    "unauthenticated",
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
            # "ghost" is an agent the bus expects but that never started: a raw socket with
            # its keys sends junk as it.
            ghost = c.bus.add_agent(agent("ghost", private_tmp, rooms))
            stranger = Credentials.issue(ghost.credentials.server_public)
            await asyncio.to_thread(_send_garbage, c.bus.endpoint, ghost.credentials, stranger)
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
            s = ctx.socket(zmq.DEALER)  # no keys at all: a plain connection
            s.setsockopt(zmq.LINGER, 2000)
            s.connect(endpoint[0])
            s.send_multipart([b"\x00garbage", os.urandom(32)])
            s.close()
            ctx.term()

    report = run_yaml(text, private_tmp / "report", on_event=probe)
    assert report.verdict is Verdict.PASS, report.errors
    assert report.bus.rejected_frames.get("unauthenticated", 0) >= 1
