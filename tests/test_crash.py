"""An agent killed mid-scenario: noticed with its signal, verdict ERROR, the script goes on."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from conftest import run_yaml

from orchestrator.events import ActionStarted, AgentLaunched, Event, MessageSent
from orchestrator.report.model import Verdict

SCENARIO = """
name: crash
timeout: 20s
agents:
  - id: greeter
    model:
      rules:
        - when: {contains: hello}
          reply: "hello {sender}"
  - id: victim
    model:
      rules:
        - when: {contains: ping}
          reply: "pong"
  - id: alice
rooms:
  - {id: lobby, type: group, members: [greeter, victim, alice]}
script:
  - send: {agent: alice, room: lobby, text: "hello"}
  - wait_for: {message: {from: greeter, contains: "hello alice"}, timeout: 2s}
  - send: {agent: alice, room: lobby, text: "ping"}
  - wait_for: {message: {from: victim, contains: "pong"}, timeout: 3s}
  - send: {agent: alice, room: lobby, text: "hello again"}
  - wait_for: {message: {from: greeter, contains: "hello alice"}, timeout: 2s}
assertions:
  - message: {from: greeter, room: lobby, count: {min: 2}}
"""


def test_kill_9_mid_scenario_is_an_error_naming_the_agent(private_tmp: Path) -> None:
    pids: dict[str, int] = {}

    def probe(event: Event) -> None:
        if isinstance(event, AgentLaunched) and event.agent is not None:
            pids[event.agent] = event.pid
        # kill the victim as soon as the bus has accepted alice's "ping", before it can answer
        if isinstance(event, MessageSent) and event.agent == "alice" and event.text == "ping":
            os.kill(pids["victim"], signal.SIGKILL)

    report = run_yaml(SCENARIO, private_tmp / "report", on_event=probe)

    assert report.verdict is Verdict.ERROR
    assert report.exit_code == 3
    crash = [e for e in report.errors if e.source == "crash" and e.agent == "victim"]
    assert len(crash) == 1 and "SIGKILL" in crash[0].message, report.errors
    victim = next(a for a in report.agents if a.id == "victim")
    assert victim.status == "crashed" and victim.signal == "SIGKILL"
    # the remaining steps ran: the wait on the dead agent failed, the rest passed
    statuses = [s.status for s in report.steps]
    assert statuses == ["passed", "passed", "passed", "failed", "passed", "passed"]
    # The wait on the dead agent failed the moment it died, with the cause, not at its 3 s.
    dead_wait = report.steps[3]
    assert dead_wait.error is not None and "victim is gone (killed by SIGKILL)" in dead_wait.error
    assert dead_wait.duration_s < 1.5, dead_wait
    assert report.assertions[0].passed  # judged anyway: the report says what did hold
    # the crash is in the event log with its signal
    lines = [json.loads(x) for x in (private_tmp / "report" / "events.jsonl").open()]
    crashed = [e for e in lines if e["kind"] == "agent.crashed"]
    assert [e["agent"] for e in crashed] == ["victim"] and crashed[0]["signal"] == "SIGKILL"
    # nothing left behind: other agents exited cleanly, the run directory is gone
    assert all(a.exit_code == 0 for a in report.agents if a.id != "victim")
    assert report.run_dir is None
    assert list(private_tmp.glob("sr-*")) == []


HANG = """
name: hang
timeout: 30s
agents:
  - id: sleeper
    model:
      rules:
        - when: {contains: ping}
          reply: "pong"
  - id: alice
rooms:
  - {id: lobby, members: [sleeper, alice]}
script:
  - send: {agent: alice, room: lobby, text: "ping"}
  - wait_for: {message: {from: sleeper, contains: pong}, timeout: 4s}
assertions:
  - message: {from: sleeper, count: {min: 1}}
"""


def test_a_frozen_agent_is_reported_hung_not_crashed(private_tmp: Path) -> None:
    pids: dict[str, int] = {}

    def probe(event: Event) -> None:
        if isinstance(event, AgentLaunched) and event.agent is not None:
            pids[event.agent] = event.pid
        if isinstance(event, MessageSent) and event.agent == "alice":
            os.kill(pids["sleeper"], signal.SIGSTOP)  # frozen before it can answer

    report = run_yaml(HANG, private_tmp / "report", on_event=probe, hung_after_s=1.5)

    assert report.verdict is Verdict.ERROR
    hung = [e for e in report.errors if e.agent == "sleeper"]
    assert [e.source for e in hung] == ["hung"], report.errors
    assert "hung: silent for" in hung[0].message
    sleeper = next(a for a in report.agents if a.id == "sleeper")
    assert sleeper.status == "hung" and sleeper.signal == "SIGKILL"
    lines = [json.loads(x) for x in (private_tmp / "report" / "events.jsonl").open()]
    assert [e["agent"] for e in lines if e["kind"] == "agent.hung"] == ["sleeper"]


STALLED = """
name: stalled
timeout: 30s
agents:
  - id: worker
    plugins: [examples.plugins.faults:plugin]
    action_timeout: 20s
  - id: alice
rooms:
  - {id: lobby, members: [worker, alice]}
script:
  - action: {agent: worker, name: STALL, params: {seconds: 15}}
  - send: {agent: alice, room: lobby, text: "still here"}
assertions:
  - message: {from: alice, origin: script, count: {min: 1}}
"""


def test_an_action_running_on_an_agent_that_dies_fails_at_once(private_tmp: Path) -> None:
    pids: dict[str, int] = {}

    def probe(event: Event) -> None:
        if isinstance(event, AgentLaunched) and event.agent is not None:
            pids[event.agent] = event.pid
        if isinstance(event, ActionStarted) and event.agent == "worker":
            os.kill(pids["worker"], signal.SIGKILL)  # mid-action

    report = run_yaml(STALLED, private_tmp / "report", on_event=probe)

    assert report.verdict is Verdict.ERROR
    action, send = report.steps
    assert action.status == "failed" and action.error is not None
    assert "worker is gone" in action.error and "SIGKILL" in action.error, action.error
    assert action.duration_s < 5.0, action  # not its 25 s budget
    assert send.status == "passed"  # the script went on
