"""Killing (or freezing) the coordinator: every agent leaves by itself within its deadline."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from conftest import run_yaml

from orchestrator.run.rundir import make_run_dir, sweep_stale

COORDINATOR = r"""
import asyncio, json, sys
from pathlib import Path
from orchestrator.events import AgentLaunched, StepStarted
from orchestrator.scenario.loader import load_scenario_text
from orchestrator.run.runner import RunOptions, run_scenario

TEXT = '''
name: orphan
timeout: 120s
agents: [{id: a}, {id: b}, {id: c}]
rooms: [{id: r, members: [a, b, c]}]
script:
  - wait_for: {message: {from: a, contains: never}, timeout: 100s}
assertions:
  - message: {from: a, count: {min: 1}}
'''
pids = {}
def probe(event):
    if isinstance(event, AgentLaunched):
        pids[event.agent] = event.pid
    if isinstance(event, StepStarted):
        print(json.dumps(pids), flush=True)
opts = RunOptions(report_dir=Path(sys.argv[1]), coordinator_timeout_s=float(sys.argv[2]),
                  hung_after_s=60)
asyncio.run(run_scenario(load_scenario_text(TEXT, "orphan.yaml"), Path("orphan.yaml"), opts, probe))
"""


def _start(tmp: Path, coordinator_timeout: float) -> tuple[subprocess.Popen[str], list[int]]:
    env = {**os.environ, "TMPDIR": str(tmp)}
    proc = subprocess.Popen(
        [sys.executable, "-c", COORDINATOR, str(tmp / "report"), str(coordinator_timeout)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the script is running (or the process dies)
    assert line, "coordinator exited before its agents were ready"
    return proc, list(json.loads(line).values())


def _agent_exits(pids: list[int], within: float) -> list[int]:
    """Pids still running after `within` seconds (those are killed).

    Waits on pidfds, which become readable when the process exits, zombie or not: the agents
    are the coordinator's children, and a frozen coordinator cannot reap them.
    """
    fds: dict[int, int] = {}
    for pid in pids:
        try:
            fds[os.pidfd_open(pid)] = pid
        except ProcessLookupError:
            continue
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + within
    running = set(fds)
    try:
        while running and (left := deadline - time.monotonic()) > 0:
            for fd, _ in poller.poll(left * 1000):
                running.discard(fd)
                poller.unregister(fd)
        for fd in running:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        return sorted(fds[fd] for fd in running)
    finally:
        for fd in fds:
            os.close(fd)


def test_agents_exit_when_the_coordinator_is_killed(private_tmp: Path) -> None:
    coordinator, pids = _start(private_tmp, coordinator_timeout=30.0)
    assert len(pids) == 3
    # events.jsonl is written out at least every second, so what happened is on disk
    # before the coordinator dies (a 1 MiB buffer would otherwise hold it all).
    events = private_tmp / "report" / "events.jsonl"
    deadline = time.monotonic() + 5
    try:
        while '"step.started"' not in (events.read_text() if events.exists() else ""):
            assert time.monotonic() < deadline, "events.jsonl was not written out within 5 s"
            time.sleep(0.05)
    finally:
        coordinator.kill()  # SIGKILL: no teardown runs; only the death pipe tells the agents
        coordinator.wait()
    # Only the death pipe can tell the agents this fast: their silence deadline is 30 s.
    assert _agent_exits(pids, within=5.0) == []
    kinds = [json.loads(line)["kind"] for line in events.read_text().splitlines()]
    assert kinds[0] == "run.started" and "agent.ready" in kinds
    # Its run directory stays (nobody could remove it) until the next run sweeps it.
    stale = list(private_tmp.glob("sr-*"))
    assert len(stale) == 1
    report = run_yaml(
        "name: next\nagents: [{id: a}]\nassertions: [{errors: {}}]\n", private_tmp / "next"
    )
    assert report.verdict.value == "PASS"
    assert not stale[0].exists() and list(private_tmp.glob("sr-*")) == []


def test_the_sweep_removes_only_directories_of_coordinators_that_are_gone(
    tmp_path: Path,
) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = tmp_path / "sr-dead"
    dead.mkdir()
    (dead / "owner.json").write_text(json.dumps({"pid": gone.pid, "started": 0.0}))
    mine = make_run_dir_in(tmp_path)
    reused = tmp_path / "sr-reused"  # our pid, but another start time: a reused pid
    reused.mkdir()
    (reused / "owner.json").write_text(json.dumps({"pid": os.getpid(), "started": 1.0}))
    unmarked = tmp_path / "sr-unmarked"
    unmarked.mkdir()
    assert sorted(p.name for p in sweep_stale(tmp_path)) == ["sr-dead", "sr-reused"]
    assert mine.exists() and unmarked.exists()


def make_run_dir_in(folder: Path) -> Path:
    original = tempfile.tempdir
    tempfile.tempdir = str(folder)
    try:
        return make_run_dir()
    finally:
        tempfile.tempdir = original


def test_agents_exit_when_the_coordinator_goes_silent(private_tmp: Path) -> None:
    coordinator, pids = _start(private_tmp, coordinator_timeout=1.5)
    coordinator.send_signal(signal.SIGSTOP)  # alive (death pipe open) but silent
    try:
        assert _agent_exits(pids, within=6.0) == []
    finally:
        coordinator.kill()
        coordinator.wait()


HOGGED = r"""
import asyncio, json, sys
from pathlib import Path
from orchestrator.events import AgentLaunched, StepStarted
from orchestrator.scenario.loader import load_scenario_text
from orchestrator.run.runner import RunOptions, run_scenario

TEXT = '''
name: hogged
timeout: 120s
agents: [{id: a, plugins: [plugins.hog:plugin], action_timeout: 100s}]
script:
  - action: {agent: a, name: HOG}
assertions:
  - errors: {}
'''
pids = {}
def probe(event):
    if isinstance(event, AgentLaunched):
        pids[event.agent] = event.pid
    if isinstance(event, StepStarted):
        print(json.dumps(pids), flush=True)
opts = RunOptions(report_dir=Path(sys.argv[1]), coordinator_timeout_s=60, hung_after_s=60)
source = Path(sys.argv[2]) / "hogged.yaml"
asyncio.run(run_scenario(load_scenario_text(TEXT, "hogged.yaml"), source, opts, probe))
"""


def test_an_agent_that_holds_the_gil_dies_with_its_coordinator(private_tmp: Path) -> None:
    env = {**os.environ, "TMPDIR": str(private_tmp)}
    tests = Path(__file__).resolve().parent  # plugins.hog is imported from the tests folder
    coordinator = subprocess.Popen(
        [sys.executable, "-c", HOGGED, str(private_tmp / "report"), str(tests)],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert coordinator.stdout is not None
    line = coordinator.stdout.readline()  # the step has started
    assert line, "coordinator exited before the step started"
    pids = list(json.loads(line).values())
    # The agent's action.started event cannot be waited for: the transport thread that would
    # send it may never get the GIL again. An idle agent burns next to no CPU; one that has
    # burnt half a second since the step began is inside the regex.
    agent = psutil.Process(pids[0])
    start = agent.cpu_times().user
    deadline = time.monotonic() + 30.0
    while agent.cpu_times().user - start < 0.5:
        assert time.monotonic() < deadline, "the agent never started its action"
        time.sleep(0.05)  # deadline poll on the agent's CPU time
    coordinator.kill()
    coordinator.wait()
    # Neither its death pipe nor its silence deadline can reach it: the kernel must
    # (PR_SET_PDEATHSIG).
    assert _agent_exits(pids, within=5.0) == []


def _forkservers_of(folder: Path) -> list[int]:
    """Fork-server templates started by coordinators that ran with TMPDIR=folder."""
    found = []
    for process in psutil.process_iter(["cmdline", "environ"]):
        with contextlib.suppress(psutil.Error):
            cmdline = process.info.get("cmdline") or []
            env = process.info.get("environ") or {}
            if "agent_worker.forkserver" in cmdline and env.get("TMPDIR") == str(folder):
                found.append(process.pid)
    return found


def test_the_fork_server_leaves_with_its_coordinator(private_tmp: Path) -> None:
    coordinator, pids = _start(private_tmp, coordinator_timeout=30.0)
    # Forked agents keep the template's command line; the template is the one not an agent.
    templates = [pid for pid in _forkservers_of(private_tmp) if pid not in pids]
    assert len(templates) == 1, "the default launcher on Linux is the fork server"
    coordinator.kill()
    coordinator.wait()
    assert _agent_exits(pids + templates, within=5.0) == []
