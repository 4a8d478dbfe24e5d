"""`scenario-runner compare`: before and after, with a verdict that accounts for noise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.report.model import EXIT_INVALID

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "two-agents.yaml"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two repeats of a real scenario, copied as base and new."""
    root = tmp_path_factory.mktemp("compare")
    result = CliRunner().invoke(
        main, ["run", str(EXAMPLE), "--repeat", "2", "--report-dir", str(root / "base"), "-q"]
    )
    assert result.exit_code == 0, result.output
    return root


def _copy(src: Path, dst: Path) -> list[Path]:
    reports = []
    for path in src.rglob("report.json"):
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text())
        reports.append(target)
    return sorted(reports)


def test_the_same_runs_are_no_regression(runs: Path, tmp_path: Path) -> None:
    _copy(runs / "base", tmp_path / "new")
    result = CliRunner().invoke(main, ["compare", str(runs / "base"), str(tmp_path / "new")])
    assert result.exit_code == 0, result.output
    assert "0 regression(s)" in result.output and "peak RSS" in result.output


def test_memory_over_the_threshold_in_every_new_run_is_a_regression(
    runs: Path, tmp_path: Path
) -> None:
    for path in _copy(runs / "base", tmp_path / "new"):
        report = json.loads(path.read_text())
        agent = report["agents"][0]
        agent["memory"]["peak_rss_bytes"] = int(agent["memory"]["peak_rss_bytes"] * 1.5)
        path.write_text(json.dumps(report))
    result = CliRunner().invoke(main, ["compare", str(runs / "base"), str(tmp_path / "new")])
    assert result.exit_code == 1, result.output
    assert "REGRESSION" in result.output and "peak RSS" in result.output
    # A looser threshold lets it through.
    loose = CliRunner().invoke(
        main, ["compare", str(runs / "base"), str(tmp_path / "new"), "--max-memory", "60"]
    )
    assert loose.exit_code == 0, loose.output


def test_one_noisy_new_run_among_good_ones_is_not_a_regression(
    runs: Path, tmp_path: Path
) -> None:
    # Only one of the two new runs is worse: the best new run is still within the base's.
    first, _ = _copy(runs / "base", tmp_path / "new")
    report = json.loads(first.read_text())
    report["agents"][0]["memory"]["peak_rss_bytes"] *= 3
    first.write_text(json.dumps(report))
    result = CliRunner().invoke(main, ["compare", str(runs / "base"), str(tmp_path / "new")])
    assert result.exit_code == 0, result.output


def test_a_directory_without_reports_is_invalid_input(runs: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["compare", str(runs / "base"), str(tmp_path)])
    assert result.exit_code == EXIT_INVALID
    assert "no report.json" in result.output


def _growth(low: float, mid: float, high: float) -> dict[str, object]:
    mib = 1024 * 1024
    return {
        "series": "uss", "verdict": "leak", "reason": "test", "unit": "bytes",
        "slope_per_h": mid * mib, "slope_low_per_h": low * mib, "slope_high_per_h": high * mib,
        "trend_tau": 0.9, "trend_p": 0.001, "floor_per_h": mib, "detectable_per_h": mib,
        "windows": 30, "analysed_s": 600.0,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("new", "regression"),
    [
        ((5.0, 6.0, 7.0), True),
        ((0.5, 1.0, 1.5), False),
        ((1.0, 1.5, 2.0), False),
        ((1.3, 1.5, 2.0), True),
    ],
)
def test_a_soak_growth_rate_regresses_beyond_both_intervals(
    runs: Path, tmp_path: Path, new: tuple[float, float, float], regression: bool
) -> None:
    # Base grows 0-0.2 MiB/h; the limit allows 1 MiB/h beyond its upper bound (1.2).
    base = _copy(runs / "base", tmp_path / "base")
    after = _copy(runs / "base", tmp_path / "new")
    for paths, fit in ((base, (0.0, 0.1, 0.2)), (after, new)):
        for path in paths:
            report = json.loads(path.read_text())
            report["agents"][0]["memory"]["leak"] = [_growth(*fit)]
            path.write_text(json.dumps(report))
    result = CliRunner().invoke(main, ["compare", str(tmp_path / "base"), str(tmp_path / "new")])
    assert result.exit_code == (1 if regression else 0), result.output
    assert "USS growth" in result.output


def test_two_sides_with_no_scenario_in_common_are_invalid_input(
    runs: Path, tmp_path: Path
) -> None:
    for path in _copy(runs / "base", tmp_path / "other"):
        report = json.loads(path.read_text())
        report["scenario"] = report["variant"] = "renamed"
        path.write_text(json.dumps(report))
    result = CliRunner().invoke(main, ["compare", str(runs / "base"), str(tmp_path / "other")])
    assert result.exit_code == EXIT_INVALID
    assert "nothing to compare" in result.output and "only in new: renamed" in result.output
