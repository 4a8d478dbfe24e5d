"""Soak runs end to end: the same agents, the script on repeat, a leak verdict per series.

The CI version runs examples/soak.yaml with its header's arguments (70 s and a locating pass,
once for the session: conftest's `soaked_example`); the statistics themselves are tested on
synthetic series in test_leak.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner
from conftest import SoakedExample

from orchestrator.cli import main
from orchestrator.report.model import EXIT_INVALID, ScenarioReport, Verdict
from orchestrator.scenario.assertions import MemoryAssertion
from orchestrator.scenario.loader import ScenarioError, load_scenario_text

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "soak.yaml"
LEAKY = EXAMPLE.parent / "plugins" / "leaky.py"


@pytest.mark.timeout(150)
def test_the_leaky_agent_leaks_and_the_clean_one_does_not(soaked_example: SoakedExample) -> None:
    report_dir = soaked_example.report_dir
    report = ScenarioReport.model_validate_json((report_dir / "report.json").read_text())
    assert report.verdict is Verdict.PASS, report.verification.reasons
    assert soaked_example.code == 0, soaked_example.output
    assert soaked_example.leftovers == []
    assert report.soak is not None and report.soak.iterations > 50
    # The same processes throughout: one launch per agent, each exited at the end.
    events = (report_dir / "events.jsonl").read_text().splitlines()
    launched = [json.loads(e) for e in events if '"kind":"agent.launched"' in e]
    assert sorted(e["agent"] for e in launched) == ["clean", "driver", "leaky", "warming"]
    verdicts = {
        a.id: {leak.series: leak.verdict for leak in a.memory.leak} for a in report.agents
    }
    assert verdicts["leaky"]["uss"] == "leak" and verdicts["leaky"]["rss"] == "leak"
    assert verdicts["leaky"]["pss"] == "leak"
    judged = ("uss", "pss", "rss", "fds", "threads", "store")
    assert {k: verdicts["clean"][k] for k in judged} == dict.fromkeys(judged, "no leak")
    # `blocks` has one point a progress interval (a minute): one point is too few to judge.
    assert verdicts["clean"].get("blocks", "inconclusive") == "inconclusive"
    # 8 MiB kept in the warm-up, then flat: not a leak.
    assert verdicts["warming"]["uss"] == verdicts["warming"]["rss"] == "no leak"
    warming = next(a for a in report.agents if a.id == "warming")
    assert warming.final_state == {"warm": {"blocks": 32}}
    leaky = next(a for a in report.agents if a.id == "leaky")
    leaky_uss = next(x for x in leaky.memory.leak if x.series == "uss")
    assert leaky_uss.slope_low_per_h is not None
    # What the HTML report charts: every judged series, bounded, with its fitted line rising.
    assert set(leaky.memory.series) == set(verdicts["leaky"])
    assert all(0 < len(points) <= 120 for points in leaky.memory.series.values())
    assert leaky_uss.trend_line is not None
    (t0, v0), (t1, v1) = leaky_uss.trend_line
    assert t1 > t0 and v1 > v0
    # 64 KiB a message, one message a pass: the rate found brackets the rate leaked.
    per_h = 64 * 1024 * report.soak.iterations / report.soak.elapsed_s * 3600
    assert leaky_uss.slope_low_per_h * 0.8 <= per_h <= (leaky_uss.slope_high_per_h or 0) * 1.25
    # The locating pass traced the leaking agent only, after the verdicts, and named the line.
    located = report.soak.locate
    assert located is not None and located.agents == ["leaky"] and located.passes > 20
    assert all(a.memory.trace is None for a in report.agents if a.id != "leaky")
    trace = leaky.memory.trace
    assert trace is not None and trace.sites
    hoard = next(i for i, line in enumerate(LEAKY.read_text().splitlines(), 1)
                 if "_HOARD.append" in line)  # fmt: skip
    assert (Path(trace.sites[0].file).resolve(), trace.sites[0].line) == (LEAKY.resolve(), hoard)
    # The verdicts and the charts end where the soak proper did.
    assert all(t <= located.from_s for t, _ in leaky.memory.series["uss"])
    assert leaky_uss.trend_line is not None and leaky_uss.trend_line[1][0] <= located.from_s
    page = (report_dir / "report.html").read_text()
    assert f"leaky.py:{hoard}" in page


def test_a_soak_refuses_a_warm_up_as_long_as_itself(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["soak", str(EXAMPLE), "--duration", "10s", "--warmup", "10s"]
    )
    assert result.exit_code == EXIT_INVALID
    assert "--warmup" in result.output and "shorter than the duration" in result.output
    short = CliRunner().invoke(
        main, ["soak", str(EXAMPLE), "--duration", "10s", "--locate-for", "500ms"]
    )
    assert short.exit_code == EXIT_INVALID and "--locate-for" in short.output


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


@pytest.mark.timeout(120)
def test_a_soak_killed_midway_leaves_a_readable_checkpoint(
    tmp_path: Path, private_tmp: Path
) -> None:
    report_dir = tmp_path / "killed"
    script = Path(sys.executable).parent / "scenario-runner"
    command = [
        str(script), "soak", str(EXAMPLE), "--duration", "60s", "--warmup", "4s",
        "--sample-interval", "250ms", "--progress-every", "2s", "--report-dir", str(report_dir),
    ]  # fmt: skip
    env = {**os.environ, "TMPDIR": str(private_tmp)}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        # Wait for a checkpoint written after the warm-up (progress lines say when).
        assert process.stdout is not None
        deadline = time.monotonic() + 60
        for line in process.stdout:
            if line.startswith(b"soak soak-controls") and b"warming up" not in line:
                break
            assert time.monotonic() < deadline, "no progress line after the warm-up"
        deadline = time.monotonic() + 10
        while not (report_dir / "report.json").exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)  # polling for a file another process writes
        process.kill()  # SIGKILL: no teardown, no final report
        process.wait(timeout=10)
    finally:
        process.kill()
    report = ScenarioReport.model_validate_json((report_dir / "report.json").read_text())
    assert report.verdict is Verdict.ERROR
    assert report.soak is not None and not report.soak.complete
    assert report.soak.iterations > 0 and report.soak.elapsed_s < 60
    assert any("checkpoint" in r for r in report.verification.reasons)
    leaky = next(a for a in report.agents if a.id == "leaky")
    assert {x.series for x in leaky.memory.leak} >= {"uss", "rss"}
    assert leaky.memory.samples > 0
    # The agents went with the coordinator (the death pipe, PR_SET_PDEATHSIG).
    deadline = time.monotonic() + 10
    while [p for p in psutil.process_iter(["environ"]) if _ran_in(p, private_tmp)]:
        assert time.monotonic() < deadline, "agents outlived a SIGKILLed soak"
        time.sleep(0.05)  # polling for processes to be gone


def _ran_in(process: psutil.Process, tmp: Path) -> bool:
    with contextlib.suppress(psutil.Error):
        return (process.info.get("environ") or {}).get("TMPDIR") == str(tmp)
    return False


@pytest.mark.timeout(60)
def test_the_coordinator_and_the_stores_are_measured_like_the_agents(
    tmp_path: Path, private_tmp: Path
) -> None:
    # Too short for verdicts worth asserting: this checks that the rows are there.
    report_dir = tmp_path / "short"
    CliRunner().invoke(main, [
        "soak", str(EXAMPLE), "--duration", "8s", "--warmup", "3s", "--no-locate",
        "--sample-interval", "250ms", "--progress-every", "2s", "--report-dir", str(report_dir),
        "-q",
    ])  # fmt: skip
    report = ScenarioReport.model_validate_json((report_dir / "report.json").read_text())
    assert report.coordinator is not None
    assert {x.series for x in report.coordinator.leak} == {"uss", "pss", "rss", "fds", "threads"}
    assert len(report.coordinator.rss_series) > 10
    for agent in report.agents:
        # The store on disk, and from inside the agent its allocated blocks (asked at each
        # progress interval).
        assert {"store", "blocks"} <= {x.series for x in agent.memory.leak}, agent.id


@pytest.mark.parametrize(
    ("rate", "problem"),
    [
        ("1MiB/day", r"one of s, m \(or min\), h"),
        ("lots/h", "is not a size"),
        ("1MiB", "size per time"),
        ("0MiB/h", "more than nothing"),
    ],
)
def test_a_growth_limit_is_a_size_per_time(rate: str, problem: str) -> None:
    text = EXAMPLE.read_text().replace("growth: {max: 1MiB/h}", f"growth: {{max: {rate}}}")
    with pytest.raises(ScenarioError, match=problem):
        load_scenario_text(text, "soak.yaml")
    ok = load_scenario_text(EXAMPLE.read_text(), "soak.yaml")
    limit = next(a for a in ok.assertions if a.id == "clean-stays-flat")
    assert isinstance(limit, MemoryAssertion) and limit.memory.growth is not None
    assert limit.memory.growth.max == 1024 * 1024  # bytes per hour


def test_the_locating_pass_is_announced_on_the_console() -> None:
    from orchestrator.events import SoakLocating
    from orchestrator.report.console import PROGRESS_AGENTS, soak_locating_line

    one = soak_locating_line("soak-controls", SoakLocating(agents=["leaky"], duration_s=10.0))
    assert one == ("soak soak-controls: leaks found in leaky; locating pass of 10s with"
                   " tracemalloc in those agents only")  # fmt: skip
    many = [f"a{i}" for i in range(PROGRESS_AGENTS + 2)]
    line = soak_locating_line("x", SoakLocating(agents=many, duration_s=300.0))
    assert "and 2 more" in line and "of 5m" in line
