"""The restart policy (issue 13): an agent that crashes is started again under its id, after
a backoff, each restart reported with its cause; past `max` restarts within `within` the
policy gives up, and that is an ERROR that says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.report.model import ScenarioReport, Verdict

TESTS = Path(__file__).resolve().parent

SCENARIO = """\
name: {name}
timeout: 60s
agents:
  - id: a
    plugins: [plugins.crashy:plugin]
    model: {{rules: [{{when: {{regex: "^ping"}}, reply: pong}}]}}
    restart: {{max: {most}, within: 60s, backoff: 100ms}}
  - id: b
rooms:
  - {{id: r, members: [a, b]}}
script:
{script}assertions:
  - message: {{from: a, room: r, contains: pong, count: {{min: 1}}}}
"""

CRASH = """\
  - send: {agent: b, room: r, text: crash now}
  - wait_for: {event: {kind: agent.restarting, agent: a}, timeout: 10s}
  - wait_for: {event: {kind: agent.ready, agent: a}, timeout: 10s}
"""
PING = """\
  - send: {agent: b, room: r, text: ping}
  - wait_for: {message: {from: a, contains: pong}, timeout: 10s}
"""


def _run(tmp_path: Path, name: str, most: int, script: str) -> tuple[int, ScenarioReport]:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "plugins").symlink_to(TESTS / "plugins")
    path = folder / f"{name}.yaml"
    path.write_text(SCENARIO.format(name=name, most=most, script=script))
    result = CliRunner().invoke(main, ["run", str(path), "--report-dir", str(folder / "r"), "-q"])
    assert (folder / "r" / "report.json").exists(), result.output
    report = ScenarioReport.model_validate_json((folder / "r" / "report.json").read_text())
    return result.exit_code, report


@pytest.mark.timeout(90)
def test_a_crashed_agent_is_restarted_and_answers_again(
    tmp_path: Path, private_tmp: Path
) -> None:
    code, report = _run(tmp_path, "once", 2, CRASH + PING)
    assert report.verdict is Verdict.PASS, report.verification.reasons
    assert code == 0 and report.errors == []
    a = next(x for x in report.agents if x.id == "a")
    assert a.restarts == 1 and a.restart_causes == ["crash: exit code 3"]
    lines = Path(report.events_file).read_text().splitlines()
    restarting = [json.loads(x) for x in lines if '"kind":"agent.restarting"' in x]
    assert [(e["attempt"], e["backoff_s"], e["gave_up"]) for e in restarting] == [(1, 0.1, None)]


@pytest.mark.timeout(90)
def test_a_flapping_agent_is_given_up_on_and_that_is_an_error(
    tmp_path: Path, private_tmp: Path
) -> None:
    # Three crashes with max 2: restarted after 100 ms, then 200 ms, then given up.
    flapping = CRASH + CRASH + "  - send: {agent: b, room: r, text: crash again}\n" + (
        "  - wait_for: {event: {kind: agent.restarting, agent: a}, timeout: 10s}\n"
    )
    code, report = _run(tmp_path, "flap", 2, flapping)
    assert report.verdict is Verdict.ERROR and code == 3
    (error,) = [e for e in report.errors if e.source == "crash"]
    assert "gave up restarting it: 2 restart(s) within 60s already (max 2)" in error.message
    a = next(x for x in report.agents if x.id == "a")
    assert a.restarts == 2 and a.status == "crashed"
    lines = Path(report.events_file).read_text().splitlines()
    restarting = [json.loads(x) for x in lines if '"kind":"agent.restarting"' in x]
    assert [e["backoff_s"] for e in restarting] == [0.1, 0.2, 0.0]
    assert restarting[-1]["gave_up"] is not None


@pytest.mark.timeout(90)
def test_messages_to_an_agent_being_restarted_wait_for_its_configuration(
    tmp_path: Path, private_tmp: Path
) -> None:
    # The ping goes out while `a` is restarting: it must reach the new incarnation after its
    # CONFIGURE (an agent whose first frame is anything else cannot start).
    script = (
        "  - send: {agent: b, room: r, text: crash now}\n"
        "  - wait_for: {event: {kind: agent.restarting, agent: a}, timeout: 10s}\n" + PING
    )
    code, report = _run(tmp_path, "early", 2, script)
    assert report.verdict is Verdict.PASS, report.verification.reasons
    assert code == 0
    assert next(x for x in report.agents if x.id == "a").restarts == 1


@pytest.mark.timeout(90)
def test_a_crash_the_run_ends_before_restarting_is_still_reported(
    tmp_path: Path, private_tmp: Path
) -> None:
    folder = tmp_path / "late"
    folder.mkdir()
    (folder / "plugins").symlink_to(TESTS / "plugins")
    path = folder / "late.yaml"
    text = SCENARIO.format(name="late", most=2, script=PING + (
        "  - send: {agent: b, room: r, text: crash now}\n"
        "  - wait_for: {event: {kind: agent.restarting, agent: a}, timeout: 10s}\n"
    )).replace("backoff: 100ms", "backoff: 10s")  # fmt: skip
    path.write_text(text)
    result = CliRunner().invoke(main, ["run", str(path), "--report-dir", str(folder / "r"), "-q"])
    report = ScenarioReport.model_validate_json((folder / "r" / "report.json").read_text())
    assert report.verdict is Verdict.ERROR and result.exit_code == 3
    (error,) = [e for e in report.errors if e.source == "crash"]
    assert "the run ended before the policy could restart it" in error.message
