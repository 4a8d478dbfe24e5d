"""Agents cannot impersonate each other (issue 13, part 6). Every connection to the bus is a
CURVE handshake with keys the coordinator issued to one agent process; a stranger (other keys,
or none) is refused and counted, and an agent's key speaks for that agent only. Before, any
process of the user could connect with another agent's routing id, take over its traffic
(ROUTER_HANDOVER) and have its forged messages counted by the assertions."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

import msgpack
import pytest
import zmq
from click.testing import CliRunner
from conftest import agent, cluster, room

from orchestrator.cli import main
from orchestrator.cluster.cluster import Cluster
from orchestrator.events import CommandSent, MessageDelivered, WireRejected
from protocol import PROTOCOL_VERSION, CmdGetState, CmdSend, Kind, Msg, Result, encode_body
from protocol.auth import Credentials, CredentialsError, hand_over, read_credentials


def _msg_frames(src: str, seq: int) -> list[bytes]:
    header = msgpack.packb([PROTOCOL_VERSION, Kind.MSG, src, "lobby", 1, seq, 0, 0, 0])
    body = Msg(msg_id=f"forged-{seq}", room="lobby", sender=src, text="forged", origin="agent")
    return [header, encode_body(body)]


Raw = tuple["zmq.Context[zmq.Socket[bytes]]", "zmq.Socket[bytes]"]


def _connect(endpoint: str, keys: Credentials | None) -> Raw:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    if keys is not None:
        keys.apply(sock)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return ctx, sock


async def _refused(c: Cluster, keys: Credentials | None, src: str) -> list[str]:
    """Connect with `keys`, write a message as `src`, and wait until the bus refuses the
    connection; the details of what it rejected."""
    ctx, sock = _connect(c.bus.endpoint, keys)
    try:
        sock.send_multipart(_msg_frames(src, 1))
        await c.events.until(lambda: c.bus.rejected["unauthenticated"] >= 1, (WireRejected,), 10)
    finally:
        sock.close(0)
        ctx.term()
    return [e.detail for e in c.events.ring if isinstance(e, WireRejected)]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("keyed", "detail"),
    [(True, "a key this run did not issue"), (False, "did not complete a CURVE handshake")],
)
def test_a_stranger_is_refused_and_counted(private_tmp: Path, keyed: bool, detail: str) -> None:
    async def scenario() -> None:
        rooms = [room("lobby", ["a", "b"])]
        configs = [agent("a", private_tmp, rooms), agent("b", private_tmp, rooms)]
        async with cluster(private_tmp, configs, rooms) as c:
            delivered = c.events.counts["message.delivered"]
            server = c.handles["a"].link.credentials.server_public
            details = await _refused(c, Credentials.issue(server) if keyed else None, "a")
            assert any(detail in d for d in details), details
            assert c.events.counts["message.delivered"] == delivered, "a forged message arrived"
            assert c.bus.rejected["unknown_sender"] == 0  # refused before any frame

    asyncio.run(scenario())


@pytest.mark.timeout(60)
def test_a_copy_of_an_agents_key_cannot_connect_nor_cut_it_off(private_tmp: Path) -> None:
    async def scenario() -> None:
        rooms = [room("lobby", ["a", "b"])]
        configs = [agent("a", private_tmp, rooms), agent("b", private_tmp, rooms)]
        async with cluster(private_tmp, configs, rooms) as c:
            # A process holding a copy of a's keys connects and writes as b: a key admits one
            # connection, and a's is taken by a.
            details = await _refused(c, c.handles["a"].link.credentials, "b")
            assert any("a second connection" in d and "a's key" in d for d in details), details
            delivered = [e for e in c.events.ring if isinstance(e, MessageDelivered)]
            assert not any(e.msg_id.startswith("forged") for e in delivered)
            # Neither a nor b was cut off: both still send and receive.
            for who in ("a", "b"):
                before = c.events.counts["message.delivered"]
                assert (await c.command(who, CmdSend(room="lobby", text="still me"), 10)).ok
                await c.events.until(
                    lambda n=before: c.events.counts["message.delivered"] > n,  # type: ignore[misc]
                    (MessageDelivered,), 10,
                )  # fmt: skip
            assert c.crashes == [] and all(h.hung is None for h in c.handles.values())

    asyncio.run(scenario())


@pytest.mark.timeout(60)
def test_an_agent_cannot_speak_as_another_nor_answer_its_commands(private_tmp: Path) -> None:
    async def scenario() -> None:
        rooms = [room("lobby", ["b", "ghost"])]
        async with cluster(private_tmp, [agent("b", private_tmp, rooms)], rooms) as c:
            # ghost is an agent of the run (its own keys) that writes as b, and answers a
            # command the bus sent b (correlation ids are sequential, easy to guess).
            ghost = c.bus.add_agent(agent("ghost", private_tmp, rooms))
            ctx, sock = _connect(c.bus.endpoint, ghost.credentials)
            try:
                sock.send_multipart(_msg_frames("b", 1))
                await c.fault("stop", "b")  # b cannot answer first: its command stays pending
                pending = asyncio.ensure_future(c.command("b", CmdGetState(path="x"), 10))
                await c.events.until(
                    lambda: c.events.counts["command.sent"] > 0, (CommandSent,), 10
                )
                corr = next(e.corr for e in c.events.ring if isinstance(e, CommandSent))
                header = msgpack.packb(
                    [PROTOCOL_VERSION, Kind.RESULT, "ghost", "coordinator", 1, 1, 0, corr, 0]
                )
                sock.send_multipart([header, encode_body(Result(ok=True, value="forged"))])
                await c.events.until(
                    lambda: c.bus.rejected["unexpected_kind"] >= 1, (WireRejected,), 10
                )
                await c.fault("cont", "b")
                answer = await pending
            finally:
                sock.close(0)
                ctx.term()
            assert c.bus.rejected["src_mismatch"] >= 1
            assert answer.value != "forged", "ghost answered b's command"

    asyncio.run(scenario())


@pytest.mark.timeout(60)
def test_the_bus_socket_and_its_directory_are_private(private_tmp: Path) -> None:
    async def scenario() -> None:
        rooms = [room("lobby", ["a"])]
        async with cluster(private_tmp, [agent("a", private_tmp, rooms)], rooms) as c:
            path = Path(c.bus.endpoint.removeprefix("ipc://"))
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700

    asyncio.run(scenario())


def test_credentials_travel_in_a_pipe_and_are_checked() -> None:
    keys = Credentials.issue(zmq.curve_keypair()[0])
    assert read_credentials(hand_over(keys)) == keys
    # Not a pipe: another process of the user could open /proc/PID/fd/N of a pipe and read it.
    fd = hand_over(keys)
    try:
        assert stat.S_ISSOCK(os.fstat(fd).st_mode)
        with pytest.raises(OSError):
            os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
    finally:
        os.close(fd)
    assert keys.secret.decode() not in repr(keys)
    for bad in (b"", b"one two", b"x" * 40 + b" " + b"y" * 40 + b" short"):
        with pytest.raises(CredentialsError):
            Credentials.decode(bad)
    read_end, write_end = os.pipe()
    os.close(write_end)
    with pytest.raises(CredentialsError):
        read_credentials(read_end)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("bind", ["tcp", "tcp://[::1]"])
def test_bind_tcp_listens_on_loopback_and_agents_still_authenticate(
    tmp_path: Path, private_tmp: Path, bind: str
) -> None:
    path = tmp_path / "tcp.yaml"
    path.write_text(TCP_SCENARIO)
    result = CliRunner().invoke(
        main, ["run", str(path), "--bind", bind, "--report-dir", str(tmp_path / "r"), "-q"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    endpoint = report["bus"]["endpoint"]
    host = "[::1]" if "::1" in bind else "127.0.0.1"
    assert endpoint.startswith(f"tcp://{host}:") and not endpoint.endswith(":*"), endpoint


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--bind", "udp://x"], "give tcp, tcp://HOST[:PORT] or ipc://PATH"),
        (["--bind", "tcp://example.org:80"], "is not an IP address"),
        (["--bind", "tcp://127.0.0.1:70000"], "is not a port"),
        (["--bind", "tcp://127.0.0.1:5555", "--parallel", "2"], "cannot share one address"),
        (["--bind", "ipc:///dev/null"], "the file exists"),
    ],
)
def test_a_bad_bind_is_invalid_input(tmp_path: Path, args: list[str], problem: str) -> None:
    path = tmp_path / "tcp.yaml"
    path.write_text(TCP_SCENARIO)
    result = CliRunner().invoke(main, ["run", str(path), *args])
    assert result.exit_code == 2 and problem in result.output, result.output


TCP_SCENARIO = """\
name: tcp
agents:
  - {id: bot, model: {rules: [{when: {contains: hi}, reply: "hello {sender}"}]}}
  - id: user
rooms: [{id: lobby, members: [bot, user]}]
script:
  - send: {agent: user, room: lobby, text: hi}
  - wait_for: {message: {from: bot, contains: hello}, timeout: 10s}
assertions:
  - message: {from: bot, count: {min: 1}}
"""


def _memory_holds(pid: int, needle: bytes) -> bool:
    """Whether the process's writable memory holds `needle` (read through /proc/PID/mem)."""
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            span, perms = line.split()[:2]
            if not perms.startswith("rw"):
                continue
            start, end = (int(x, 16) for x in span.split("-"))
            try:
                mem.seek(start)
                if needle in mem.read(end - start):
                    return True
            except OSError:
                continue
    return False


@pytest.mark.timeout(60)
def test_no_agent_holds_another_agents_secret_key(private_tmp: Path) -> None:
    # Forked agents come from one template: before, a batch's requests (every agent's keys)
    # sat in the template's memory at the fork, and so in every agent of the batch.
    async def scenario() -> None:
        rooms = [room("lobby", ["a", "b", "c"])]
        configs = [agent(x, private_tmp, rooms) for x in ("a", "b", "c")]
        async with cluster(private_tmp, configs, rooms) as c:
            secrets = {x: c.handles[x].link.credentials.secret for x in ("a", "b", "c")}
            try:
                found = {
                    (holder, owner)
                    for holder in secrets for owner in secrets
                    if _memory_holds(c.handles[holder].pid, secrets[owner])
                }  # fmt: skip
            except PermissionError:
                pytest.skip("this system does not let us read an agent's memory")
            assert {(x, x) for x in secrets} <= found, "the search found not even the own key"
            assert found == {(x, x) for x in secrets}, sorted(found)

    asyncio.run(scenario())
