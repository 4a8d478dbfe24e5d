"""Hangs seen and explained (issue 13): a runtime whose event loop a handler blocks is hung
although its transport thread still heartbeats, and a hung agent's report carries every
thread's stack, taken before it was killed (faulthandler, on SIGUSR1)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.report.model import ScenarioReport, Verdict

TESTS = Path(__file__).resolve().parent

SCENARIO = """\
name: {name}
timeout: 30s
agents:
  - {{id: a, plugins: [plugins.hog:plugin], action_timeout: 60s}}
  - id: b
rooms:
  - {{id: r, members: [a, b]}}
script:
  - action: {{agent: a, name: {action}, timeout: 25s}}
assertions:
  - message: {{from: b, room: r, count: {{max: 0}}}}
"""


def _run(tmp_path: Path, name: str, action: str) -> tuple[int, ScenarioReport]:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "plugins").symlink_to(TESTS / "plugins")  # plugins.hog
    path = folder / f"{name}.yaml"
    path.write_text(SCENARIO.format(name=name, action=action))
    result = CliRunner().invoke(main, ["run", str(path), "--report-dir", str(folder / "r"), "-q"])
    report = ScenarioReport.model_validate_json((folder / "r" / "report.json").read_text())
    return result.exit_code, report


@pytest.mark.timeout(60)
def test_a_handler_blocking_the_event_loop_is_a_hang_with_its_stack(
    tmp_path: Path, private_tmp: Path
) -> None:
    # WEDGE is an async action that calls time.sleep(20): the agent's loop serves nothing,
    # while its transport thread goes on heartbeating. Before, the step simply waited 20 s and
    # the run passed.
    code, report = _run(tmp_path, "wedged", 'WEDGE, params: {seconds: 20}')
    assert report.verdict is Verdict.ERROR and code == 3
    assert report.duration_s < 15
    a = next(x for x in report.agents if x.id == "a")
    assert a.status == "hung"
    (error,) = [e for e in report.errors if e.source == "hung"]
    assert "event loop made no progress" in error.message
    assert "while running action WEDGE" in error.message and "it was killed" in error.message
    assert error.detail is not None and "every thread's stack" in error.detail
    assert "hog.py" in error.detail and "in wedge" in error.detail


@pytest.mark.timeout(60)
def test_c_code_holding_the_gil_is_a_silent_hang_with_its_stack(
    tmp_path: Path, private_tmp: Path
) -> None:
    # HOG holds the GIL in one regex match: no thread of the agent runs, not even the
    # transport's, yet faulthandler (C, in a signal handler) still dumps the stacks.
    code, report = _run(tmp_path, "hog", "HOG")
    assert report.verdict is Verdict.ERROR and code == 3
    (error,) = [e for e in report.errors if e.source == "hung"]
    assert "not even its transport thread answered" in error.message
    assert error.detail is not None and "in hog" in error.detail and "in match" in error.detail
    assert next(x for x in report.agents if x.id == "a").status == "hung"
