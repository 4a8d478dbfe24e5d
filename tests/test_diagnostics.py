"""Why a run does not move (issue 13): pending waits, a wait-for graph whose cycles are
deadlocks, and what each agent is doing; written when a wait times out
(`--diagnose-on-timeout`) and on SIGUSR1 to the runner while the run goes on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.run.diagnostics import cycles, wait_for_graph
from orchestrator.run.executor import PendingWait

SCRIPT = Path(sys.executable).parent / "scenario-runner"


def _wait(timeline: str, actor: str, agent: str, from_script: bool = True) -> PendingWait:
    return PendingWait(timeline, actor, f"{timeline}[0]", f"a message from {agent}", agent,
                       from_script, 0.0, 10.0)  # fmt: skip


def test_timelines_waiting_on_each_others_scripts_are_a_deadlock() -> None:
    waits = [
        _wait("actors[0].script", "a", "b"),
        _wait("actors[1].script", "b", "c"),
        _wait("actors[2].script", "c", "a"),
        _wait("script", "script", "a"),
        _wait("actors[3].script", "d", "a", from_script=False),  # a's runtime, not its script
    ]
    edges = wait_for_graph(waits)
    assert {(e.waiter, e.on) for e in edges} == {
        ("actors[0].script", "actors[1].script"),
        ("actors[1].script", "actors[2].script"),
        ("actors[2].script", "actors[0].script"),
        ("script", "actors[0].script"),
    }
    assert cycles(edges) == [["actors[0].script", "actors[1].script", "actors[2].script"]]
    assert cycles(wait_for_graph(waits[:2])) == []


DEADLOCK = """\
name: deadlock
timeout: 20s
agents:
  - id: a
  - id: b
rooms:
  - {id: r, members: [a, b]}
script:
  - pause: 100ms
actors:
  - agent: a
    script:
      - wait_for: {message: {from: b, contains: go, origin: script}, timeout: 1s}
      - send: {room: r, text: go}
  - agent: b
    script:
      - wait_for: {message: {from: a, contains: go, origin: script}, timeout: 4s}
      - send: {room: r, text: go}
assertions:
  - message: {from: a, contains: go, origin: script}
"""


@pytest.mark.timeout(60)
def test_a_wait_that_times_out_writes_diagnostics_naming_the_deadlock(
    tmp_path: Path, private_tmp: Path
) -> None:
    path = tmp_path / "deadlock.yaml"
    path.write_text(DEADLOCK)
    out = tmp_path / "r"
    CliRunner().invoke(main, ["run", str(path), "--report-dir", str(out), "-q",
                              "--diagnose-on-timeout"])  # fmt: skip
    first = (out / "diagnostics-1.txt").read_text()
    assert "actors[0].script[0] (a) failed: no message from b containing 'go'" in first
    assert "a [actors[0].script] actors[0].script[0]: wait for a message from b" in first
    assert "DEADLOCK: actors[0].script -> actors[1].script -> actors[0].script" in first
    assert "agent a (pid " in first and "agent b (pid " in first


PAUSED = """\
name: paused
timeout: 60s
agents:
  - id: a
  - id: b
rooms:
  - {id: r, members: [a, b]}
script:
  - send: {agent: b, room: r, text: hello there}
  - wait_for: {message: {from: a, contains: never}, timeout: 30s}
assertions:
  - message: {from: b, contains: hello, origin: script}
"""


@pytest.mark.timeout(90)
def test_sigusr1_to_the_runner_writes_diagnostics_and_the_run_goes_on(
    tmp_path: Path, private_tmp: Path
) -> None:
    path = tmp_path / "paused.yaml"
    path.write_text(PAUSED)
    out = tmp_path / "r"
    env = {**os.environ, "TMPDIR": str(private_tmp)}
    process = subprocess.Popen([str(SCRIPT), "run", str(path), "--report-dir", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not (out / "events.jsonl").exists() or b'"wait_for' not in (
            out / "events.jsonl"
        ).read_bytes():  # the wait has started (its step.started is in the file)
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)  # deadline poll on a file another process writes
        process.send_signal(signal.SIGUSR1)
        while not (out / "diagnostics-1.txt").exists():
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)  # deadline poll, as above
        text = (out / "diagnostics-1.txt").read_text()
        assert "paused at " in text and ": SIGUSR1" in text
        assert "script [script] script[1]: wait for a message from a containing 'never'" in text
        assert "out t=" in text and "'hello there'" in text  # b's last message
        assert process.poll() is None  # the run goes on
        process.send_signal(signal.SIGINT)
        stdout, _ = process.communicate(timeout=30)
    finally:
        process.kill()
    assert b"diagnostics: " in stdout
