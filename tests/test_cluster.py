"""The cluster's typed agent handles: every way an agent can end is one typed transition."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from conftest import agent, cluster, room

from orchestrator.cluster.bus import AgentGone
from orchestrator.cluster.cluster import _MOVES, AgentState, StartupError, ensure_fd_budget
from orchestrator.events import AgentCrashed, AgentExited, AgentHung
from protocol import CmdGetState


def test_ended_states_are_final_and_a_stopping_agent_can_only_exit() -> None:
    for state in AgentState:
        if state.ended:
            assert _MOVES[state] == frozenset(), state
    assert _MOVES[AgentState.STOPPING] == {AgentState.EXITED}
    assert AgentState.LAUNCHED not in set().union(*_MOVES.values())


def test_an_agent_launched_after_the_first_wait_ready_starts_and_stops(private_tmp: Path) -> None:
    lobby = room("lobby", ["first", "late"])

    async def scenario() -> None:
        async with cluster(private_tmp, [agent("first", private_tmp, [lobby])], [lobby]) as c:
            c.launch_one(agent("late", private_tmp, [lobby]))
            await c.wait_ready(20)
            states = {a: h.state for a, h in c.handles.items()}
            assert states == {"first": AgentState.READY, "late": AgentState.READY}
            handles = dict(c.handles)
        assert {a: h.state for a, h in handles.items()} == {
            "first": AgentState.EXITED,
            "late": AgentState.EXITED,
        }
        assert all(h.exit is not None and h.exit.returncode == 0 for h in handles.values())

    asyncio.run(scenario())


def test_crash_hang_and_planned_kill_are_three_different_ends(private_tmp: Path) -> None:
    ids = ["crasher", "sleeper", "victim", "bystander"]
    lobby = room("lobby", ids)

    async def scenario() -> None:
        configs = [agent(i, private_tmp, [lobby]) for i in ids]
        async with cluster(private_tmp, configs, [lobby], hung_after_s=1.5) as c:
            lost: list[str] = []
            c.on_lost = lambda h: lost.append(h.id)
            os.kill(c.handles["crasher"].pid, signal.SIGKILL)
            os.kill(c.handles["sleeper"].pid, signal.SIGSTOP)
            c.kill("victim", signal.SIGTERM, planned=True)
            await c.events.until(
                lambda: all(c.handles[i].exit is not None for i in ids[:3]),
                (AgentCrashed, AgentExited, AgentHung),
                10,
            )
            assert c.handles["crasher"].state is AgentState.CRASHED
            assert c.handles["sleeper"].state is AgentState.HUNG
            assert "the process is stopped" in (c.handles["sleeper"].diagnosis or "")
            assert c.handles["victim"].state is AgentState.EXITED
            assert c.handles["bystander"].state is AgentState.READY
            assert sorted(lost) == ["crasher", "sleeper"]
            assert dict(c.crashes).keys() == {"crasher", "sleeper"}
            # A command to a lost agent fails at once, saying how it ended.
            t0 = time.monotonic()
            with pytest.raises(AgentGone, match="killed by SIGKILL"):
                await c.command("crasher", CmdGetState(path="x"), 30)
            with pytest.raises(AgentGone, match="hung"):
                await c.command("sleeper", CmdGetState(path="x"), 30)
            assert time.monotonic() - t0 < 1.0
            handles = dict(c.handles)
        # Leaving the block stopped the bystander; nothing moved the others again.
        assert handles["bystander"].state is AgentState.EXITED
        assert handles["sleeper"].state is AgentState.HUNG

    asyncio.run(scenario())


DROPPED = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from orchestrator.cluster.cluster import Cluster
    from orchestrator.cluster.launchers import LAUNCHERS, default_launcher
    from orchestrator.events import EventLog
    from protocol import AgentConfig, RulesModelConfig

    async def main() -> None:
        run_dir = Path(sys.argv[1])
        events = EventLog(run_dir / "events.jsonl")
        c = Cluster(run_dir, events, LAUNCHERS[default_launcher()](()))
        await c.__aenter__()
        config = AgentConfig(agent_id="a", agent_dir=str(run_dir / "a"),
                             model=RulesModelConfig(rules=[]), rooms=[])
        await c.launch([config], 20)
        print(c.handles["a"].pid, flush=True)
        # Never closed: the finalizer at interpreter exit is the last resort.

    asyncio.run(main())
    """
)


def test_a_cluster_never_closed_still_kills_its_agents_at_exit(private_tmp: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", DROPPED, str(private_tmp)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    pid = int(out.stdout.split()[0])
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_the_descriptor_limit_is_raised_for_many_agents_or_refused_clearly() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))
        ensure_fd_budget(1_000)
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= 256 + 3 * 1_000
        if hard != resource.RLIM_INFINITY:
            with pytest.raises(StartupError, match=r"hard\s+limit is \d+"):
                ensure_fd_budget(hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
