"""Soak runs end to end: the same agents, the script on repeat, a leak verdict per series.

The CI version runs examples/soak.yaml with its header's arguments (40 s); the statistics
themselves are tested on synthetic series in test_leak.py.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.report.model import EXIT_INVALID, ScenarioReport, Verdict

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "soak.yaml"


def _example_args() -> list[str]:
    """The soak arguments in the example's header (`# args: ...`)."""
    for line in EXAMPLE.read_text().splitlines():
        if line.startswith("# args:"):
            return shlex.split(line.removeprefix("# args:"))
    raise AssertionError(f"{EXAMPLE}: no '# args:' line")


def _soak(report_dir: Path, *extra: str) -> tuple[int, ScenarioReport]:
    args = ["soak", str(EXAMPLE), "--report-dir", str(report_dir), "-q", *extra]
    result = CliRunner().invoke(main, args)
    report = ScenarioReport.model_validate_json((report_dir / "report.json").read_text())
    return result.exit_code, report


@pytest.mark.timeout(120)
def test_the_leaky_agent_leaks_and_the_clean_one_does_not(
    tmp_path: Path, private_tmp: Path
) -> None:
    code, report = _soak(tmp_path / "soak", *_example_args())
    assert report.verdict is Verdict.PASS, report.verification.reasons
    assert code == 0
    assert report.soak is not None and report.soak.iterations > 50
    # The same processes throughout: one launch per agent, each exited at the end.
    events = (tmp_path / "soak" / "events.jsonl").read_text().splitlines()
    launched = [json.loads(e) for e in events if '"kind":"agent.launched"' in e]
    assert sorted(e["agent"] for e in launched) == ["clean", "driver", "leaky"]
    verdicts = {
        a.id: {leak.series: leak.verdict for leak in a.memory.leak} for a in report.agents
    }
    assert verdicts["leaky"]["uss"] == "leak" and verdicts["leaky"]["rss"] == "leak"
    assert verdicts["clean"] == dict.fromkeys(("uss", "rss", "fds", "threads"), "no leak")
    leaky_uss = next(x for x in report.agents[0].memory.leak if x.series == "uss")
    assert leaky_uss.slope_low_per_h is not None
    # 64 KiB a message, one message a pass: the rate found brackets the rate leaked.
    per_h = 64 * 1024 * report.soak.iterations / report.soak.elapsed_s * 3600
    assert leaky_uss.slope_low_per_h * 0.8 <= per_h <= (leaky_uss.slope_high_per_h or 0) * 1.25


def test_a_soak_refuses_a_warm_up_as_long_as_itself(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["soak", str(EXAMPLE), "--duration", "10s", "--warmup", "10s"]
    )
    assert result.exit_code == EXIT_INVALID
    assert "--warmup" in result.output and "shorter than the duration" in result.output


def test_a_leak_assertion_in_a_short_ordinary_run_cannot_pass(
    tmp_path: Path, private_tmp: Path
) -> None:
    # `run`, not `soak`: one pass of the script is far too short to clear anyone of leaking.
    report_dir = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", str(EXAMPLE), "--report-dir", str(report_dir)])
    report = ScenarioReport.model_validate_json((report_dir / "report.json").read_text())
    assert result.exit_code == 1 and report.verdict is Verdict.FAIL
    clean = next(a for a in report.assertions if a.id == "clean-is-clean")
    assert not clean.passed and "INCONCLUSIVE" in clean.message
