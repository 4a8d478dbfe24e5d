"""The agent runtime with real plugins, in real agent processes."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_yaml

from orchestrator.events import ActionEnded, Event
from orchestrator.report.model import Verdict


def _actions_ended() -> tuple[list[ActionEnded], object]:
    seen: list[ActionEnded] = []

    def probe(event: Event) -> None:
        if isinstance(event, ActionEnded):
            seen.append(event)

    return seen, probe


@pytest.mark.parametrize("launcher", ["spawn", "fork"])
def test_two_agents_with_the_same_plugin_share_nothing(private_tmp: Path, launcher: str) -> None:
    # With `fork`, the plugin module was imported once in the template before both agents
    # were forked: its module global (COUNTER) is still each agent's own.
    log = private_tmp / "services.log"
    report = run_yaml(
        f"""
name: isolation
agents:
  - {{id: a, plugins: [plugins.lifecycle:plugin], settings: {{log_path: "{log}"}}}}
  - {{id: b, plugins: [plugins.lifecycle:plugin], settings: {{log_path: "{log}"}}}}
script:
  - action: {{agent: a, name: BUMP}}
  - action: {{agent: a, name: BUMP}}
  - action: {{agent: a, name: BUMP}}
  - action: {{agent: b, name: BUMP}}
assertions:
  - state: {{agent: a, path: counter, equals: 3}}
  - state: {{agent: b, path: counter, equals: 1}}
""",
        private_tmp / "report",
        launcher=launcher,
    )
    assert report.verdict is Verdict.PASS, report.model_dump_json(indent=1)
    assert {a.launcher for a in report.agents} == {launcher}
    assert [a.services for a in report.agents] == [["first", "second"]] * 2
    lines = log.read_text().splitlines()
    # one service instance per agent, each started once and stopped once, newest first
    for agent in ("a", "b"):
        mine = [line.split(" ", 1)[1] for line in lines if line.startswith(agent + " ")]
        assert mine == ["start first", "start second", "stop second", "stop first"], lines


ACTIONS = """
name: actions
agents:
  - id: worker
    plugins: [examples.plugins.faults:plugin]
    action_timeout: 300ms
    model:
      rules:
        - when: {regex: "^divide (?P<a>\\\\d+) by (?P<b>\\\\d+)$"}
          actions: [{name: DIVIDE, params: {a: "{a}", b: "{b}"}}]
          reply: "dividing"
        - when: {contains: ping}
          reply: pong
  - id: admin
rooms:
  - {id: ops, members: [worker, admin]}
script:
  - send: {agent: admin, room: ops, text: "divide 6 by 3"}
  - wait_for: {action: {agent: worker, name: DIVIDE, status: succeeded}, timeout: 3s}
  - action: {agent: worker, name: DIVIDE, params: {a: 1, b: 0}, expect: failed}
  - action: {agent: worker, name: DIVIDE, params: {a: one}, expect: invalid}
  - action: {agent: worker, name: ONLY_ADMIN, expect: invalid}
  - action: {agent: worker, name: EXPLODE, expect: error}
  - action: {agent: worker, name: STALL, params: {seconds: 5}, expect: timeout}
  - action: {agent: worker, name: NO_SUCH_THING, expect: invalid}
  - send: {agent: admin, room: ops, text: "ping"}
  - wait_for: {message: {from: worker, contains: pong}, timeout: 3s}
assertions:
  # Recorded as the handler received them: the templated "6" and "3", validated as floats.
  - action: {agent: worker, name: DIVIDE, params: {a: 6, b: 3}, count: {min: 1, max: 1}}
  - state: {agent: worker, path: last_quotient, equals: 2.0}
  - errors: {kind: [handler], agent: worker, max: 1}
"""


def test_actions_from_messages_and_steps_are_recorded_with_their_outcome(
    private_tmp: Path,
) -> None:
    seen, probe = _actions_ended()
    report = run_yaml(ACTIONS, private_tmp / "report", on_event=probe)  # type: ignore[arg-type]
    assert report.verdict is Verdict.PASS, report.model_dump_json(indent=1)
    # READY announced the agent's actions with their parameter schemas; the report keeps them.
    offered = {a.name: a for a in report.agents[0].actions}
    assert {"DIVIDE", "EXPLODE", "STALL", "ONLY_ADMIN", "REPLY", "IGNORE", "NONE"} <= set(offered)
    schema = offered["DIVIDE"].parameters
    assert schema is not None and set(schema["properties"]) == {"a", "b"}  # type: ignore[arg-type]
    by_status = {(e.action, e.status): e for e in seen}
    assert set(by_status) == {
        ("DIVIDE", "succeeded"),
        ("DIVIDE", "failed"),
        ("DIVIDE", "invalid"),
        ("ONLY_ADMIN", "invalid"),
        ("EXPLODE", "error"),
        ("STALL", "timeout"),
        ("NO_SUCH_THING", "invalid"),
    }
    ok = by_status[("DIVIDE", "succeeded")]
    assert ok.origin == "model" and ok.params == {"a": 6.0, "b": 3.0}
    assert isinstance(ok.duration_ms, float) and ok.duration_ms >= 0
    assert ok.result == {
        "success": True, "text": "2.0", "values": {"quotient": 2.0}, "data": {}, "error": None
    }  # fmt: skip
    assert by_status[("DIVIDE", "failed")].error == "division by zero"
    assert "RuntimeError: EXPLODE always raises" in str(by_status[("EXPLODE", "error")].error)
    assert "timed out after 0.3s" in str(by_status[("STALL", "timeout")].error)
    unknown = str(by_status[("NO_SUCH_THING", "invalid")].error)
    assert "DIVIDE" in unknown and "EXPLODE" in unknown and "REPLY" in unknown
    invalid = str(by_status[("DIVIDE", "invalid")].error)
    assert "a:" in invalid and "b:" in invalid
    # Invalid parameters are recorded as given: nothing was validated.
    assert by_status[("DIVIDE", "invalid")].params == {"a": "one"}
    # A handler that raised is an error of the agent, like a raising evaluator's.
    worker = report.agents[0]
    assert worker.handler_errors == 1
    raised = [e for e in report.errors if e.source == "handler"]
    assert len(raised) == 1 and "action EXPLODE" in raised[0].message, report.errors


def test_a_failing_action_step_fails_the_run_with_its_reason(private_tmp: Path) -> None:
    report = run_yaml(
        """
name: failing-step
agents:
  - {id: worker, plugins: [examples.plugins.faults:plugin]}
script:
  - action: {agent: worker, name: DIVIDE, params: {a: 1, b: 0}}
assertions:
  - action: {agent: worker, name: DIVIDE, status: failed}
""",
        private_tmp / "report",
    )
    assert report.verdict is Verdict.ERROR
    assert report.steps[0].error == "DIVIDE in worker failed (expected succeeded): division by zero"


def test_services_stop_in_reverse_order_when_the_scenario_fails(private_tmp: Path) -> None:
    log = private_tmp / "services.log"
    report = run_yaml(
        f"""
name: failing
agents:
  - {{id: a, plugins: [plugins.lifecycle:plugin], settings: {{log_path: "{log}"}}}}
assertions:
  - state: {{agent: a, path: counter, equals: 99}}
""",
        private_tmp / "report",
    )
    assert report.verdict is Verdict.FAIL
    assert log.read_text().splitlines() == [
        "a start first", "a start second", "a stop second", "a stop first"
    ]  # fmt: skip


def test_fixtures_unmatched_call_and_unused_fixture_are_errors(private_tmp: Path) -> None:
    report = run_yaml(
        """
name: fixtures
agents:
  - id: bot
    model:
      fixtures:
        - match: {prompt_contains: "hello"}
          reply: "hi there"
        - match: {prompt_contains: "never said"}
          reply: "unused"
  - id: user
rooms:
  - {id: chat, members: [bot, user]}
script:
  - send: {agent: user, room: chat, text: "hello"}
  - wait_for: {message: {from: bot, contains: "hi there"}, timeout: 3s}
  - send: {agent: user, room: chat, text: "something else"}
assertions:
  - message: {from: bot, contains: "hi there"}
""",
        private_tmp / "report",
    )
    assert report.verdict is Verdict.ERROR
    messages = " | ".join(e.message for e in report.errors)
    assert "no fixture matches model call #2" in messages
    assert "'something else'" in messages
    assert "fixture model.fixtures[1] was never used" in messages


def test_plugin_that_fails_to_import_is_invalid_input(private_tmp: Path) -> None:
    report = run_yaml(
        """
name: bad-plugin
agents:
  - {id: good}
  - {id: broken, plugins: ["plugins.does_not_exist:plugin"]}
script:
  - action: {agent: good, name: NONE}
assertions:
  - action: {agent: good, name: NONE}
""",
        private_tmp / "report",
    )
    assert report.exit_code == 2
    assert report.steps == []  # stopped before any step
    init = [e.message for e in report.errors if e.source == "init"]
    assert init == [
        "agent broken: plugin 'plugins.does_not_exist:plugin' failed to import: "
        "ModuleNotFoundError: No module named 'plugins.does_not_exist'"
    ]


def _sends(agent: str, room: str, n: int, prefix: str) -> str:
    return "".join(
        f"  - send: {{agent: {agent}, room: {room}, text: '{prefix} {i}'}}\n" for i in range(n)
    )


def test_memory_retention_holds_per_room_and_evaluators_run(private_tmp: Path) -> None:
    """Many more messages than the bound: the store keeps the newest `max_per_room` per room
    (counted by SQLite at shutdown), and the evaluator ran once per message."""
    log = private_tmp / "services.log"
    text = f"""
name: retention
agents:
  - id: keeper
    plugins: [plugins.lifecycle:plugin]
    settings: {{log_path: "{log}"}}
    memory: {{max_per_room: 10}}
  - id: user
rooms:
  - {{id: big, members: [keeper, user]}}
  - {{id: small, members: [keeper, user]}}
script:
{_sends("user", "big", 40, "big")}{_sends("user", "small", 15, "small")}
  - wait_for: {{state: {{agent: keeper, path: evaluated, equals: 55}}, timeout: 10s}}
assertions:
  - state: {{agent: keeper, path: evaluated, ge: 55, lt: 56}}
  - state: {{agent: keeper, path: last_evaluated, equals: small 14}}
"""
    report = run_yaml(text, private_tmp / "report")
    assert report.verdict is Verdict.PASS, report.model_dump_json(indent=1)
    keeper, user = (next(a for a in report.agents if a.id == i) for i in ("keeper", "user"))
    # Each message is two memories in the keeper (the message and the evaluator's note).
    assert keeper.store_rows_by_room == {"big": 10, "small": 10}
    assert keeper.store_rows == 20
    assert keeper.store_evicted == (80 - 10) + (30 - 10)
    # The sender has no bound: it keeps every message it sent.
    assert user.store_rows_by_room == {"big": 40, "small": 15}
    assert user.store_evicted == 0


STATE_CHECKS = """
name: state-checks
agents:
  - id: a
    plugins: [plugins.lifecycle:plugin]
    settings: {log_path: "LOG"}
script:
  - action: {agent: a, name: BUMP}
  - wait_for: {state: {agent: a, path: counter, equals: 1}, timeout: 2s}
  - wait_for: {state: {agent: a, path: counter, gt: 1}, timeout: 300ms}
  - wait_for: {state: {agent: a, path: nothing.here, absent: true}, timeout: 1s}
assertions:
  - id: eq
    state: {agent: a, path: counter, equals: 1}
  - id: ne
    state: {agent: a, path: counter, not_equals: 2}
  - id: range
    state: {agent: a, path: counter, gt: 0, le: 1}
  - id: absent
    state: {agent: a, path: nothing, exists: false}
  - id: exists
    state: {agent: a, path: service_id, exists: true}
  - id: too-low
    state: {agent: a, path: counter, ge: 2}
  - id: not-a-number
    state: {agent: a, path: counter.deeper, lt: 5}
"""


def test_state_waits_and_checks_pass_and_fail(private_tmp: Path) -> None:
    log = private_tmp / "services.log"
    report = run_yaml(STATE_CHECKS.replace("LOG", str(log)), private_tmp / "report")
    assert [s.status for s in report.steps] == ["passed", "passed", "failed", "passed"]
    assert report.steps[2].error == (
        "a's state at 'counter' > 1 did not hold within 300ms (last found: 1)"
    )
    results = {a.id: a for a in report.assertions}
    assert {k for k, a in results.items() if a.passed} == {"eq", "ne", "range", "absent", "exists"}
    assert results["too-low"].message == "a's final state at 'counter' >= 2: no, found 1"
    assert results["not-a-number"].actual == "absent"
    assert report.verdict is Verdict.ERROR  # a step failed


def test_a_full_handler_pool_is_an_error_of_its_own(private_tmp: Path) -> None:
    report = run_yaml(
        """
name: pool
agents:
  - id: worker
    plugins: [plugins.hog:plugin]
    handler_threads: 1
    action_timeout: 300ms
script:
  - action: {agent: worker, name: BLOCK, params: {seconds: 1.5}, expect: timeout}
  - action: {agent: worker, name: BLOCK, params: {seconds: 0}, expect: timeout}
assertions:
  - {id: one-pool-error, errors: {kind: [pool], agent: worker, max: 1}}
""",
        private_tmp / "report",
    )
    assert report.verdict is Verdict.PASS, report.verification.reasons
    pool = [e for e in report.errors if e.source == "pool"]
    assert len(pool) == 1 and "all 1 threads for sync plugin functions are busy" in pool[0].message
