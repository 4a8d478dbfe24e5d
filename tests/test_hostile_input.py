"""Hostile and invalid input, found by probing (issue 13): `validate` refuses, with its place
in the file, whatever `run` could not carry out, and `run` refuses it the same way (exit 2,
nothing started); a file that is not a file does not block."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import agent, cluster, room

from orchestrator.cli import main
from orchestrator.cluster.cluster import StartupError
from orchestrator.report.model import EXIT_INVALID, ScenarioReport

SCRIPT = Path(sys.executable).parent / "scenario-runner"

BODY = """\
rooms:
  - {id: r, members: [a, b]}
script:
  - send: {agent: b, room: r, text: TEXT}
assertions:
  - message: {from: b, room: r, contains: hi}
"""


def _file(tmp_path: Path, agents: str, text: str = "hi", name: str = "probe") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\ntimeout: 5s\nagents:\n{agents}" + BODY.replace("TEXT", text))
    return path


def _refused(path: Path) -> list[str]:
    """validate's and run's output for `path`: both exit 2, saying the same things."""
    checked = CliRunner().invoke(main, ["validate", str(path)])
    assert checked.exit_code == EXIT_INVALID, checked.output
    t0 = time.monotonic()
    ran = CliRunner().invoke(main, ["run", str(path), "--report-dir", str(path.parent / "r")])
    assert ran.exit_code == EXIT_INVALID, ran.output
    assert time.monotonic() - t0 < 5  # refused up front, not after a start-up timeout
    assert "nothing was run" in ran.output and not (path.parent / "r" / "report.json").exists()
    problems = [line for line in checked.output.splitlines() if line.startswith(str(path))]
    assert problems == [line for line in ran.output.splitlines() if line.startswith(str(path))]
    return problems


@pytest.mark.parametrize(
    ("agents", "where"),
    [
        ("  - {id: a, settings: {x: 123456789012345678901234567890}}\n  - id: b\n",
         ":4:27: agents[0].settings.x: the integer 1234567890...567890 does not fit in 64 bits"),
        ("  - {id: a, settings: {x: -9223372036854775809}}\n  - id: b\n",
         ":4:27: agents[0].settings.x: the integer -9223372036854775809 does not fit"),
        ("  - {id: a, memory: {max_per_room: 18446744073709551616}}\n  - id: b\n",
         ":4:36: agents[0].memory.max_per_room: the integer 18446744073709551616 does not fit"),
        ("  - {id: a, memory: {max_per_room: 99999999999}}\n  - id: b\n",
         ":4:36: agents[0].memory.max_per_room: must be at most 1000000000"),
        ("  - {id: a, action_timeout: 0s}\n  - id: b\n",
         ":4:29: agents[0].action_timeout: 0s is no time at all"),
        ("  - {id: a, memory: {max_age: 0s}}\n  - id: b\n",
         ":4:31: agents[0].memory.max_age: 0s is no time at all"),
    ],
)  # fmt: skip
def test_what_an_agent_cannot_be_sent_is_refused_where_it_is_written(
    tmp_path: Path, agents: str, where: str
) -> None:
    (problem,) = _refused(_file(tmp_path, agents))
    assert problem.startswith(str(tmp_path / "probe.yaml") + where), problem


def test_a_configuration_over_a_frame_is_refused_even_when_built_from_aliases(
    tmp_path: Path,
) -> None:
    big = "a" * 300_000  # 300 KB written once, 1.5 MB once the aliases are expanded
    agents = (
        f'  - id: a\n    bio: &big "{big}"\n'
        "    settings: {one: *big, two: *big, three: *big, four: *big}\n  - id: b\n"
    )
    (problem,) = _refused(_file(tmp_path, agents))
    assert ":6:15: agents[0].settings: the agent's configuration is 1.43 MiB" in problem
    assert "its settings alone is 1.14 MiB" in problem
    bio = f'  - id: a\n    bio: "{"b" * 1_100_000}"\n  - id: b\n'
    (problem,) = _refused(_file(tmp_path, bio, name="bio"))
    assert ":5:10: agents[0].bio: the agent's configuration is 1.05 MiB" in problem


def test_a_text_too_big_for_a_message_is_refused_with_its_size_not_echoed(tmp_path: Path) -> None:
    (problem,) = _refused(_file(tmp_path, "  - id: a\n  - id: b\n", text="x" * (2 << 20)))
    assert ":9:37: script[0].send.text: the text is 2,048 KiB: a message carries at most" in problem
    assert len(problem) < 500  # the text itself is not printed


@pytest.mark.timeout(30)
def test_validate_on_a_fifo_or_a_device_answers_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    for path, what in ((fifo, "is a FIFO"), (Path("/dev/zero"), "is not a regular file")):
        # A subprocess: a blocked read would hang the test runner itself, not just fail.
        done = subprocess.run([str(SCRIPT), "validate", str(path)], capture_output=True,
                              timeout=20, text=True)  # fmt: skip
        assert done.returncode == EXIT_INVALID
        assert f"{path}: {what}, not a scenario file" in done.stderr


def test_the_cluster_refuses_an_unsendable_configuration_before_launching(
    private_tmp: Path,
) -> None:
    # What validate checks is also refused below it, by name, without a start-up timeout.
    bad = agent("a", private_tmp, [])
    bad.settings["x"] = 1 << 70

    async def scenario() -> None:
        t0 = time.monotonic()
        with pytest.raises(StartupError, match=r"1 agent configuration\(s\) cannot be sent: a: "):
            async with cluster(private_tmp, [bad, agent("b", private_tmp, [])], []):
                pass
        assert time.monotonic() - t0 < 5

    asyncio.run(scenario())


def test_a_frame_over_the_socket_limit_is_counted_not_lost_silently(private_tmp: Path) -> None:
    # libzmq drops the connection of a peer that sends more than MAXMSGSIZE (16 MiB), with
    # the frame and whatever followed it, and says nothing; the peer reconnects. A key admits
    # one connection, so the bus refuses the second and counts it, with an event that says
    # what it means.
    import zmq

    from orchestrator.events import WireRejected
    from protocol import SOCKET_MAX_MSG_BYTES

    async def scenario() -> None:
        rooms = [room("lobby", ["real", "ghost"])]
        async with cluster(private_tmp, [agent("real", private_tmp, rooms)], rooms) as c:
            ghost = c.bus.add_agent(agent("ghost", private_tmp, rooms))  # never launched
            ctx = zmq.Context()
            raw = ctx.socket(zmq.DEALER)
            ghost.credentials.apply(raw)  # it authenticates as ghost
            raw.setsockopt(zmq.LINGER, 0)
            raw.connect(c.bus.endpoint)
            try:
                raw.send(b"x" * (SOCKET_MAX_MSG_BYTES + 1))
                await c.events.until(
                    lambda: c.bus.rejected["unauthenticated"] > 0, (WireRejected,), 10
                )
            finally:
                raw.close(0)
                ctx.term()
            rejected = [e for e in c.events.ring if isinstance(e, WireRejected)]
            assert any(
                "a second connection" in e.detail and "over the 16 MiB socket limit" in e.detail
                for e in rejected
            ), [e.detail for e in rejected]

    asyncio.run(scenario())


@pytest.mark.timeout(60)
def test_big_texts_are_cut_with_their_size_in_every_output(
    tmp_path: Path, private_tmp: Path
) -> None:
    big = "x" * 500_000  # under the frame limit: it travels, and must not flood the outputs
    path = tmp_path / "big.yaml"
    path.write_text(
        "name: big\n"
        "agents: [{id: bot}, {id: user}]\n"
        "rooms: [{id: lobby, members: [bot, user]}]\n"
        f"script:\n  - send: {{agent: user, room: lobby, text: \"{big}\"}}\n"
        "assertions:\n"
        f"  - message: {{from: bot, equals: \"{big[:1000]}\"}}\n"
        f"  - state: {{agent: bot, path: x, equals: \"{big[:1000]}\"}}\n"
    )
    report_dir = tmp_path / "r"
    result = CliRunner().invoke(main, ["run", str(path), "--report-dir", str(report_dir), "-v"])
    assert result.exit_code == 1, result.output
    assert max(len(line) for line in result.output.splitlines()) < 400
    assert "(1,000 characters)" in result.output
    report = ScenarioReport.model_validate_json((report_dir / "report.json").read_text())
    assert (report_dir / "report.json").stat().st_size < 50_000
    assert "(500,000 characters)" in (report.steps[0].description or "")
