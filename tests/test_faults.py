"""Faults on purpose (issue 13): `fault` steps kill, stop, continue and restart agents; a
planned fault is recorded and reported, and is not an error, while the run goes on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import run_yaml

from orchestrator.cli import main
from orchestrator.report.model import EXIT_INVALID, ScenarioReport, Verdict

HEAD = """\
name: {name}
timeout: 40s
agents:
  - {{id: a, model: {{rules: [{{when: {{regex: "^ping"}}, reply: pong}}]}}}}
  - id: b
rooms:
  - {{id: r, members: [a, b]}}
script:
  - send: {{agent: b, room: r, text: ping 1}}
  - wait_for: {{message: {{from: a, contains: pong}}, timeout: 10s}}
"""


def _run(tmp_path: Path, name: str, script: str, assertions: str) -> tuple[int, ScenarioReport]:
    path = tmp_path / f"{name}.yaml"
    path.write_text(HEAD.format(name=name) + script + "assertions:\n" + assertions)
    out = tmp_path / name
    result = CliRunner().invoke(main, ["run", str(path), "--report-dir", str(out), "-q"])
    assert (out / "report.json").exists(), result.output
    return result.exit_code, ScenarioReport.model_validate_json((out / "report.json").read_text())


def _faults(report: ScenarioReport) -> list[dict[str, object]]:
    lines = Path(report.events_file).read_text().splitlines()
    return [json.loads(line) for line in lines if '"kind":"fault.injected"' in line]


@pytest.mark.timeout(60)
def test_a_killed_agent_is_a_planned_end_not_a_crash(tmp_path: Path, private_tmp: Path) -> None:
    code, report = _run(
        tmp_path, "kill",
        "  - fault: {kill: a, signal: SIGTERM}\n",
        "  - message: {from: a, room: r, contains: pong, count: {min: 1}}\n",
    )  # fmt: skip
    assert report.verdict is Verdict.PASS, report.verification.reasons
    assert code == 0 and report.errors == []
    a = next(x for x in report.agents if x.id == "a")
    assert a.status == "exited" and a.killed_by_script == "SIGTERM"
    (fault,) = _faults(report)
    assert fault["agent"] == "a" and fault["fault"] == "kill"
    assert str(fault["detail"]).startswith("SIGTERM to pid ")


@pytest.mark.timeout(60)
def test_a_stopped_agent_is_not_hung_and_answers_once_continued(
    tmp_path: Path, private_tmp: Path
) -> None:
    # Stopped past the 3 s hung deadline: the bus holds what is sent to it (and retries).
    code, report = _run(
        tmp_path, "stop",
        "  - fault: {stop: a}\n"
        "  - send: {agent: b, room: r, text: ping 2}\n"
        "  - pause: 4s\n"
        "  - fault: {cont: a}\n"
        "  - wait_for: {message: {from: a, contains: pong}, timeout: 20s}\n",
        "  - message: {from: a, room: r, contains: pong, count: {min: 2}}\n  - delivery: {}\n",
    )  # fmt: skip
    assert report.verdict is Verdict.PASS, report.verification.reasons
    assert code == 0 and report.errors == []
    assert next(x for x in report.agents if x.id == "a").status == "exited"
    assert [f["fault"] for f in _faults(report)] == ["stop", "cont"]


@pytest.mark.timeout(60)
def test_a_stop_never_continued_is_let_go_before_teardown(
    tmp_path: Path, private_tmp: Path
) -> None:
    code, report = _run(
        tmp_path, "stopped",
        "  - fault: {stop: a}\n",
        "  - message: {from: a, room: r, contains: pong, count: {min: 1}}\n",
    )  # fmt: skip
    assert report.verdict is Verdict.PASS, report.verification.reasons
    assert code == 0
    a = next(x for x in report.agents if x.id == "a")
    assert a.status == "exited" and a.escalation is None  # it said goodbye, unkilled
    assert [f["fault"] for f in _faults(report)] == ["stop", "cont"]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("keep", [True, False])
def test_a_restarted_agent_answers_again_with_or_without_its_store(
    tmp_path: Path, private_tmp: Path, keep: bool
) -> None:
    code, report = _run(
        tmp_path, f"restart-{keep}",
        f"  - fault: {{restart: a, keep_store: {str(keep).lower()}}}\n"
        "  - send: {agent: b, room: r, text: ping 2}\n"
        "  - wait_for: {message: {from: a, contains: pong}, timeout: 10s}\n",
        "  - message: {from: a, room: r, contains: pong, count: {min: 2}}\n",
    )  # fmt: skip
    assert report.verdict is Verdict.PASS, report.verification.reasons
    assert code == 0
    a = next(x for x in report.agents if x.id == "a")
    assert a.restarts == 1 and a.status == "exited"
    # Two pings and two pongs in all; the new incarnation kept the first two (the old one was
    # stopped in order, its store closed whole), or not.
    assert a.store_rows == (4 if keep else 2)
    (fault,) = _faults(report)
    assert fault["fault"] == "restart" and "incarnation 2" in str(fault["detail"])
    assert ("store kept" if keep else "store emptied") in str(fault["detail"])


def test_a_fault_names_one_known_agent_under_one_operation(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(HEAD.format(name="bad") + (
        "  - fault: {kill: a, stop: b}\n"
        "  - fault: {restart: ghost}\n"
        "  - fault: {stop: a, signal: SIGTERM}\n"
        "assertions:\n  - message: {from: a, contains: pong}\n"
    ))  # fmt: skip
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == EXIT_INVALID
    assert "script[2].fault: a fault has exactly one of kill, stop, cont, restart, drop," \
        " delay, duplicate, reorder, partition (got kill, stop)" in result.output
    assert "script[3].fault.restart: undefined agent 'ghost'" in result.output
    assert "script[4].fault: 'signal' goes with 'kill'" in result.output


def _pings(n: int, start: int = 2) -> str:
    lines = [f"  - send: {{agent: b, room: r, text: ping {i}}}\n" for i in range(start, start + n)]
    return "".join(lines) + (
        f"  - wait_for: {{message: {{from: a, contains: pong}}, count: {n}, timeout: 30s}}\n"
    )


def _ended(report: ScenarioReport) -> list[str]:
    lines = Path(report.events_file).read_text().splitlines()
    return [json.loads(x)["detail"] for x in lines if '"kind":"fault.ended"' in x]


@pytest.mark.timeout(90)
def test_drop_duplicate_and_reorder_keep_delivery_exactly_once(
    tmp_path: Path, private_tmp: Path
) -> None:
    script = (
        "  - fault: {drop: 0.5, to: a, messages: 10}\n" + _pings(10)
        + "  - fault: {duplicate: 0.5, from: b, messages: 10}\n" + _pings(10, 20)
        + "  - fault: {reorder: 0.5, within: 300ms, room: r, messages: 10}\n" + _pings(10, 40)
    )  # fmt: skip
    code, report = _run(
        tmp_path, "wire", script,
        "  - delivery: {}\n  - message: {from: a, room: r, contains: pong, count: {min: 31}}\n",
    )  # fmt: skip
    assert report.verdict is Verdict.PASS, report.verification.reasons
    assert code == 0
    ended = _ended(report)
    assert len(ended) == 3
    assert "drop 50% of the messages to a for 10 messages: dropped" in ended[0]
    assert "duplicated" in ended[1] and "held" in ended[2]
    a = next(x for x in report.agents if x.id == "a")
    assert a.retries > 0 and a.duplicates_dropped > 0  # lost ones retried, doubles dropped


@pytest.mark.timeout(90)
def test_losing_every_kind_of_frame_keeps_delivery_exactly_once(
    tmp_path: Path, private_tmp: Path
) -> None:
    # `frames: all` loses acks, heartbeats, commands and results too, both ways, as a lossy
    # wire does (it is also what SCENARIO_RUNNER_TEST_DROP_RATE makes, for the whole run).
    script = "  - fault: {drop: 0.3, frames: all, from: a, for: 20s}\n" + _pings(10)
    code, report = _run(
        tmp_path, "lossy", script,
        "  - delivery: {}\n  - message: {from: a, room: r, contains: pong, count: {min: 10}}\n",
    )  # fmt: skip
    assert report.verdict is Verdict.PASS and code == 0, report.verification.reasons
    (ended,) = _ended(report)
    assert ended.startswith("lose 30% of the frames on the links of a, both ways for 20s: lost ")
    assert "lost 0 " not in ended
    assert next(x for x in report.agents if x.id == "a").retries > 0


@pytest.mark.timeout(90)
def test_a_partition_holds_messages_until_it_heals(tmp_path: Path, private_tmp: Path) -> None:
    code, report = _run(
        tmp_path, "partition",
        "  - fault: {partition: [[a], [b]], for: 2s}\n"
        "  - send: {agent: b, room: r, text: ping 2}\n"
        "  - id: across\n"
        "    wait_for: {message: {from: a, contains: pong}, timeout: 20s}\n",
        "  - delivery: {}\n",
    )  # fmt: skip
    assert report.verdict is Verdict.PASS, report.verification.reasons
    assert code == 0
    across = next(s for s in report.steps if s.id == "across")
    assert across.duration_s >= 1.5  # the pong came once the partition healed
    (ended,) = _ended(report)
    assert ended.startswith("partition a | b: cut the messages for 2s: cut ")


def test_a_bus_fault_needs_a_window_and_known_names(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(HEAD.format(name="bad") + (
        "  - fault: {drop: 0.5}\n"
        "  - fault: {delay: 1s, for: 1s, messages: 3}\n"
        "  - fault: {drop: 1.5, for: 1s}\n"
        "  - fault: {partition: [[a], [a, b]], for: 1s}\n"
        "  - fault: {duplicate: 0.1, from: ghost, room: nowhere, for: 1s}\n"
        "  - fault: {kill: a, for: 1s}\n"
        "  - fault: {delay: 1s, frames: all, for: 1s}\n"
        "  - fault: {drop: 0.1, frames: all, room: r, for: 1s}\n"
        "  - fault: {drop: 1.0, frames: all, for: 1s}\n"
        "assertions:\n  - message: {from: a, contains: pong}\n"
    ))  # fmt: skip
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == EXIT_INVALID
    out = result.output
    assert "script[2].fault: a 'drop' fault lasts for a time" in out
    assert "script[3].fault: a 'delay' fault lasts for a time" in out
    assert "script[4].fault.drop:" in out
    assert "script[5].fault: agent 'a' is in two partition groups" in out
    assert "script[6].fault.from[0]: undefined agent 'ghost'" in out
    assert "script[6].fault.room[0]: undefined room 'nowhere'" in out
    assert "script[7].fault: 'for' goes with a bus fault, not 'kill'" in out
    assert "script[8].fault: 'frames' goes with 'drop'" in out
    assert "script[9].fault: 'frames: all' loses frames of agents' links" in out
    assert "script[10].fault: 'frames: all' with drop 1 cuts the agents off" in out


@pytest.mark.timeout(90)
def test_a_faulty_run_replays_with_its_seed(tmp_path: Path, private_tmp: Path) -> None:
    script = "  - fault: {drop: 0.5, messages: 20}\n" + _pings(10)
    details = []
    for name in ("one", "two"):
        path = tmp_path / f"{name}.yaml"
        path.write_text(HEAD.format(name=name) + script + "assertions:\n  - delivery: {}\n")
        out = tmp_path / name
        CliRunner().invoke(main, ["run", str(path), "--report-dir", str(out), "--seed", "42"])
        report = ScenarioReport.model_validate_json((out / "report.json").read_text())
        assert report.verdict is Verdict.PASS, report.verification.reasons
        details.append(_ended(report))
    assert details[0] == details[1] and "dropped" in details[0][0]


@pytest.mark.timeout(60)
def test_a_killed_agent_can_be_restarted(tmp_path: Path, private_tmp: Path) -> None:
    code, report = _run(
        tmp_path, "kill-restart",
        "  - fault: {kill: a}\n"
        "  - fault: {restart: a}\n"
        "  - send: {agent: b, room: r, text: ping 2}\n"
        "  - wait_for: {message: {from: a, contains: pong}, timeout: 10s}\n",
        "  - message: {from: a, room: r, contains: pong, count: {min: 2}}\n",
    )  # fmt: skip
    assert report.verdict is Verdict.PASS, report.verification.reasons
    assert code == 0 and report.errors == []
    assert [f["fault"] for f in _faults(report)] == ["kill", "restart"]


@pytest.mark.timeout(90)
def test_a_stop_longer_than_the_coordinator_timeout_is_survived(
    tmp_path: Path, private_tmp: Path
) -> None:
    # The agent's clock runs on while it is stopped: continued after 4 s (its coordinator
    # timeout is 3 s here), it must not take its own suspension for a silent coordinator and
    # leave.
    text = HEAD.format(name="long-stop") + (
        "  - fault: {stop: a}\n"
        "  - send: {agent: b, room: r, text: ping 2}\n"
        "  - pause: 4s\n"
        "  - fault: {cont: a}\n"
        "  - wait_for: {message: {from: a, contains: pong}, timeout: 20s}\n"
        "assertions:\n  - message: {from: a, room: r, contains: pong, count: {min: 2}}\n"
    )
    report = run_yaml(text, tmp_path / "r", coordinator_timeout_s=3.0)
    assert report.verdict is Verdict.PASS, report.verification.reasons
    assert report.errors == []
    assert next(x for x in report.agents if x.id == "a").status == "exited"


@pytest.mark.timeout(60)
def test_an_assert_on_a_stopped_agent_keeps_its_timeout_and_the_link(
    tmp_path: Path, private_tmp: Path
) -> None:
    # Before: the live state read waited 30 s (the send timeout, not the step's 500 ms), and
    # its retries past the retry budget broke the link ("not acknowledged by a after 10
    # attempts"); what was sent to the stopped agent was dead-lettered the same way.
    code, report = _run(
        tmp_path, "assert-stop",
        "  - fault: {stop: a}\n"
        "  - {id: probe, timeout: 500ms, assert: {state: {agent: a, path: x, absent: true}}}\n"
        "  - send: {agent: b, room: r, text: ping 2}\n"
        "  - fault: {cont: a}\n"
        "  - wait_for: {message: {from: a, contains: pong}, count: 1, timeout: 10s}\n",
        "  - delivery: {}\n",
    )  # fmt: skip
    assert report.verdict is Verdict.ERROR and code == 3  # the assertion could not be judged
    steps = {s.path: s for s in report.steps}
    assert steps["script[3]"].duration_s < 2.0, "the assert waited past its own timeout"
    assert "could not be judged: within 500ms" in (steps["script[3]"].error or "")
    assert all(s.status == "passed" for p, s in steps.items() if p != "script[3]")
    (delivery,) = [a for a in report.assertions if a.type == "delivery"]
    assert delivery.passed, delivery.message  # held while stopped, not dead letters


@pytest.mark.timeout(60)
def test_an_assert_that_cannot_be_judged_is_an_error_not_a_pass(
    tmp_path: Path, private_tmp: Path
) -> None:
    code, report = _run(
        tmp_path, "assert-kill",
        "  - fault: {kill: a}\n  - {id: probe, assert: {state: {agent: a, path: x, equals: 1}}}\n",
        "  - message: {from: a, contains: pong}\n",
    )  # fmt: skip
    assert report.verdict is Verdict.ERROR and code == 3, "before: PASS, exit 0"
    (probe,) = [a for a in report.assertions if a.id == "probe"]
    assert not probe.passed and "agent a is gone" in probe.message
