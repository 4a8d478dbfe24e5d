"""Invocations of `scenario-runner run` with several runs: --repeat (FLAKY and its rate),
--seed (the same seed replays the same outcomes), matrix expansion, --filter, --parallel, the
summary and junit.xml (read back with junitparser, a real JUnit XML parser from PyPI), --quiet,
and `scenario-runner schema` (checked with jsonschema against every example)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import jsonschema
import psutil
import pytest
from click.testing import CliRunner
from junitparser import Error, Failure, JUnitXml

from orchestrator.cli import main
from orchestrator.report.junit import write_junit
from orchestrator.report.model import ScenarioReport, Verdict
from orchestrator.run import session
from orchestrator.run.reporting import broken_report
from orchestrator.run.runner import RunOptions
from orchestrator.run.session import matches
from orchestrator.run.wire import agent_seed
from orchestrator.scenario.loader import ScenarioError, load_variants_text
from orchestrator.scenario.spec import Scenario

TESTS = Path(__file__).resolve().parent
DATA = TESTS / "data" / "runs"
ROOT = TESTS.parent


@pytest.fixture()
def files(tmp_path: Path) -> Path:
    """The data files with the test plugins beside them (custom rules import from there)."""
    folder = tmp_path / "scenarios"
    shutil.copytree(DATA, folder)
    shutil.copytree(TESTS / "plugins", folder / "plugins")
    return folder


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["run", *args])
    return result.exit_code, result.output


def _summary(report_dir: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((report_dir / "summary.json").read_text())  # type: ignore[no-any-return]


def _predicted(seed: int, runs: int | None) -> list[str]:
    """What the coin scenario's verdicts must be, for `runs` repeats (None: not repeated): the
    bot's rules model draws once from random.Random("rules-model:<agent seed>"), and heads (a
    PASS) is a draw under 0.5."""
    scenario = Scenario.model_validate_json(
        json.dumps({"name": "coin", "agents": [{"id": "bot"}], "assertions": [_ANY]})
    )
    verdicts = []
    for k in range(1, runs + 1) if runs is not None else [None]:
        draw = random.Random(f"rules-model:{agent_seed(seed, scenario, k, 'bot')}").random()
        verdicts.append("PASS" if draw < 0.5 else "FAIL")
    return verdicts


_ANY = {"state": {"agent": "bot", "path": "x", "absent": True}}


def test_seeded_coin_is_flaky_with_the_right_rate_and_the_seed_replays_it(
    files: Path, tmp_path: Path, private_tmp: Path
) -> None:
    runs = 12
    expected = _predicted(7, runs)
    assert "PASS" in expected and "FAIL" in expected  # the seed was chosen to be flaky
    first, second = tmp_path / "first", tmp_path / "second"
    code, output = _invoke(
        str(files / "coin.yaml"), "--repeat", str(runs), "--seed", "7", "--parallel", "2",
        "--report-dir", str(first),
    )  # fmt: skip
    assert code == 1, output  # FLAKY is not a pass
    summary = _summary(first)
    (coin,) = summary["scenarios"]
    passes = expected.count("PASS")
    assert coin["outcome"] == "FLAKY"
    assert coin["verdicts"] == expected
    assert coin["runs"] == runs and coin["passed"] == passes
    assert coin["pass_rate"] == round(passes / runs, 6)
    # Each run has its own report, with its repeat number and the seed.
    for k, verdict in enumerate(expected, start=1):
        report = json.loads((first / "coin" / f"run-{k}" / "report.json").read_text())
        assert (report["repeat"], report["seed"], report["verdict"]) == (k, 7, verdict)
    assert summary["outcomes"] == {"PASS": 0, "FAIL": 0, "ERROR": 0, "FLAKY": 1}

    # The same seed, one at a time instead of two: the same outcomes, run for run.
    code, _ = _invoke(
        str(files / "coin.yaml"), "--repeat", str(runs), "--seed", "7", "-q",
        "--report-dir", str(second),
    )  # fmt: skip
    assert code == 1
    assert _summary(second)["scenarios"][0]["verdicts"] == expected

    # Another seed draws differently, as predicted.
    other = _predicted(8, runs)
    assert other != expected
    code, _ = _invoke(
        str(files / "coin.yaml"), "--repeat", str(runs), "--seed", "8", "-q",
        "--report-dir", str(tmp_path / "third"),
    )  # fmt: skip
    assert _summary(tmp_path / "third")["scenarios"][0]["verdicts"] == other


def test_quiet_prints_the_outcomes_only(files: Path, tmp_path: Path, private_tmp: Path) -> None:
    runs = 4
    expected = _predicted(11, runs)
    code, output = _invoke(
        str(files / "coin.yaml"), "--repeat", str(runs), "--seed", "11", "--quiet",
        "--report-dir", str(tmp_path / "r"),
    )  # fmt: skip
    passes = expected.count("PASS")
    outcome = {0: "FAIL", runs: "PASS"}.get(passes, "FLAKY")
    assert output.splitlines() == [f"{outcome} coin {passes}/{runs} ({passes / runs:.0%})"]
    assert code == {"PASS": 0, "FAIL": 1, "FLAKY": 1}[outcome]


def test_without_seed_one_is_chosen_and_recorded(
    files: Path, tmp_path: Path, private_tmp: Path
) -> None:
    code, output = _invoke(str(files / "coin.yaml"), "--report-dir", str(tmp_path / "r"))
    seed = _summary(tmp_path / "r")["seed"]
    assert json.loads((tmp_path / "r" / "report.json").read_text())["seed"] == seed
    assert f"--seed {seed}" in output
    assert code == (0 if _predicted(seed, None) == ["PASS"] else 1)


MATRIX = """\
name: coin-matrix
agents:
  - id: bot
    model:
      rules:
        - when: {contains: flip}
          reply: heads
          chance: 0.5
        - when: {contains: flip}
          reply: tails
  - id: user
rooms:
  - {id: table, members: [bot, user]}
script:
  - send: {agent: user, room: table, text: flip}
  - wait_for: {message: {from: bot, room: table}, timeout: 5s}
assertions:
  - id: heads
    message: {from: bot, room: table, equals: heads}
matrix:
  agents.0.model.rules.0.chance: [0.0, 1.0]
  defaults.retries: [0, 1]
"""


def test_matrix_runs_every_combination_and_reports_them_together(
    tmp_path: Path, private_tmp: Path
) -> None:
    path = tmp_path / "matrix.yaml"
    path.write_text(MATRIX)
    report_dir = tmp_path / "r"
    code, output = _invoke(str(path), "--report-dir", str(report_dir), "--parallel", "2")
    assert code == 1, output
    scenarios = _summary(report_dir)["scenarios"]
    assert [(s["variant"], s["outcome"]) for s in scenarios] == [
        ("coin-matrix[chance=0.0,retries=0]", "FAIL"),
        ("coin-matrix[chance=0.0,retries=1]", "FAIL"),
        ("coin-matrix[chance=1.0,retries=0]", "PASS"),
        ("coin-matrix[chance=1.0,retries=1]", "PASS"),
    ]
    report = json.loads(Path(scenarios[3]["reports"][0]).read_text())
    assert report["parameters"] == {"agents.0.model.rules.0.chance": 1.0, "defaults.retries": 1}
    assert report["scenario"] == "coin-matrix"
    suites = list(JUnitXml.fromfile(str(report_dir / "junit.xml")))
    assert [s.name for s in suites] == [s["variant"] for s in scenarios]


def test_matrix_problems_are_located(tmp_path: Path) -> None:
    def problems(matrix: str) -> list[str]:
        text = MATRIX.split("matrix:\n")[0] + matrix
        with pytest.raises(ScenarioError) as caught:
            load_variants_text(text, "m.yaml")
        return [str(p) for p in caught.value.problems]

    assert problems("matrix:\n  agents.5.model: [1]\n") == [
        "m.yaml:21:3: matrix.agents.5.model: agents has 2 item(s); there is no item 5"
    ]
    assert problems("matrix:\n  defautls.retries: [1]\n") == [
        "m.yaml:21:3: defautls: unknown key 'defautls' (did you mean 'defaults'?)"
    ]
    assert problems("matrix:\n  timeout: 3s\n") == [
        "m.yaml:21:12: matrix.timeout: the values must be a non-empty list, got a string ('3s')"
    ]
    (bad_value,) = problems("matrix:\n  timeout: [1s, soon]\n")
    assert bad_value.startswith("m.yaml:21:3: timeout: bad duration 'soon'")
    assert bad_value.endswith('(with matrix timeout="soon")')
    (too_many,) = problems(
        "matrix:\n" + "".join(f"  agents.1.settings.x{i}: [a, b, c, d]\n" for i in range(6))
    )
    assert "4096 combinations" in too_many
    (missing,) = problems("matrix: nope.yaml\n")
    assert missing == "m.yaml:20:9: matrix: matrix file 'nope.yaml': no such file"


def test_matrix_odd_values_and_overlaps_are_problems_not_crashes(tmp_path: Path) -> None:
    head = MATRIX.split("matrix:\n")[0]

    def problems(matrix: str) -> list[str]:
        with pytest.raises(ScenarioError) as caught:
            load_variants_text(head + matrix, str(tmp_path / "m.yaml"))
        return [str(p).replace(f"{tmp_path}/", "") for p in caught.value.problems]

    # YAML reads an unquoted date as a date, which no scenario field takes.
    assert problems("matrix:\n  description: [2024-01-01]\n") == [
        "m.yaml:21:17: matrix.description[0]: a matrix value is text, a number, a boolean,"
        " null, or a list or mapping of those; got a date"
    ]
    assert problems("matrix:\n  defaults: [5]\n  defaults.retries: [2]\n") == [
        "m.yaml:22:3: defaults.retries: overlaps the matrix's 'defaults': set one or the other"
    ]
    assert problems("matrix:\n  - {agents: [], agents.0.id: x}\n") == [
        "m.yaml:21:18: agents.0.id: overlaps the matrix's 'agents': set one or the other"
    ]
    # In the list form, a bad value is reported at the entry that holds it.
    (bad,) = problems("matrix:\n  - {timeout: 1s}\n  - {timeout: soon}\n")
    assert bad.startswith("m.yaml:22:6: timeout: bad duration 'soon'")
    # A matrix file is read like a scenario file: its own problems, at its own lines.
    (tmp_path / "values.yaml").write_text("timeout: [1s]\ntimeout: [2s]\n")
    (duplicate,) = problems("matrix: values.yaml\n")
    assert duplicate.startswith("values.yaml:2:1: ") and "duplicate key 'timeout'" in duplicate
    (tmp_path / "values.yaml").write_text("timeout: [1s, soon]\n")
    (bad,) = problems("matrix: values.yaml\n")
    assert bad.startswith("values.yaml:1:1: timeout: bad duration 'soon'")
    assert problems("matrix: {}\n")[0].endswith("got an empty one")


def test_matrix_from_a_file_beside_the_scenario(tmp_path: Path) -> None:
    (tmp_path / "values.yaml").write_text("defaults.retries: [0, 2]\ntimeout: [5s]\n")
    text = MATRIX.split("matrix:\n")[0] + "matrix: values.yaml\n"
    variants = load_variants_text(text, str(tmp_path / "m.yaml"))
    assert [(v.defaults.retries, v.timeout.seconds) for v in variants] == [(0, 5.0), (2, 5.0)]
    assert [v.label for v in variants] == [
        "coin-matrix[retries=0,timeout=5s]",
        "coin-matrix[retries=2,timeout=5s]",
    ]


def test_filter_selects_by_name_or_tag(files: Path, tmp_path: Path, private_tmp: Path) -> None:
    every = [str(files / name) for name in ("coin.yaml", "junit-mix.yaml", "junit-timeout.yaml")]
    code, _ = _invoke(*every, "--filter", "report", "--report-dir", str(tmp_path / "tag"))
    assert code == 3  # both report scenarios ERROR by design
    assert [s["scenario"] for s in _summary(tmp_path / "tag")["scenarios"]] == [
        "junit-mix",
        "junit-timeout",
    ]
    code, _ = _invoke(*every, "--filter", "*-timeout", "--report-dir", str(tmp_path / "name"))
    assert [s["scenario"] for s in _summary(tmp_path / "name")["scenarios"]] == ["junit-timeout"]
    result = CliRunner().invoke(main, ["run", *every, "--filter", "nothing-like-it"])
    assert result.exit_code == 2
    assert "no scenario matches --filter nothing-like-it" in result.output


PAUSED = """\
name: {name}
agents:
  - id: a
rooms:
  - {{id: r, members: [a]}}
script:
  - send: {{agent: a, room: r, text: hi}}
  - pause: 1s
assertions:
  - message: {{from: a, room: r, origin: script, equals: hi}}
"""


def test_parallel_runs_overlap_with_their_own_agents(tmp_path: Path, private_tmp: Path) -> None:
    paths = []
    for name in ("left", "right"):
        paths.append(tmp_path / f"{name}.yaml")
        paths[-1].write_text(PAUSED.format(name=name))
    report_dir = tmp_path / "r"
    code, output = _invoke(*map(str, paths), "--parallel", "2", "--report-dir", str(report_dir))
    assert code == 0, output
    left, right = (
        json.loads((report_dir / name / "report.json").read_text()) for name in ("left", "right")
    )
    assert left["agents"][0]["pid"] != right["agents"][0]["pid"]
    assert left["events_file"] != right["events_file"]

    def span(report: dict) -> tuple[float, float]:  # type: ignore[type-arg]
        start = datetime.fromisoformat(report["started_at"]).timestamp()
        return start, start + report["duration_s"]

    (a0, a1), (b0, b1) = span(left), span(right)
    assert a0 < b1 and b0 < a1  # each paused a second while the other ran
    assert list(private_tmp.glob("sr-*")) == []  # both run directories are gone


def test_junit_counts_match_the_reports(files: Path, tmp_path: Path, private_tmp: Path) -> None:
    report_dir = tmp_path / "r"
    code, output = _invoke(
        str(files / "junit-mix.yaml"),
        str(files / "junit-timeout.yaml"),
        str(files / "coin.yaml"),
        "--seed", "7", "--report-dir", str(report_dir),
    )  # fmt: skip
    assert code == 3, output
    xml = JUnitXml.fromfile(str(report_dir / "junit.xml"))
    suites = {suite.name: suite for suite in xml}
    assert list(suites) == ["junit-mix", "junit-timeout", "coin"]
    total = {"tests": 0, "failures": 0, "errors": 0}
    for name, suite in suites.items():
        report = json.loads((report_dir / name / "report.json").read_text())
        by_id = {a["id"]: a for a in report["assertions"]}
        cases = {case.name: case for case in suite}
        run_case = 1 if report["verification"]["run_errors"] else 0
        assert set(cases) == set(by_id) | ({"(run)"} if run_case else set())
        failures = [a for a in report["assertions"] if not a["passed"] and a["error"] is None]
        errors = [a for a in report["assertions"] if a["error"] is not None]
        assert suite.tests == len(by_id) + run_case
        assert suite.failures == len(failures)
        assert suite.errors == len(errors) + run_case
        for case_id, case in cases.items():
            kinds = [type(r) for r in case.result]
            if case_id == "(run)":
                assert kinds == [Error]
                continue
            a = by_id[case_id]
            if a["error"] is not None:
                assert kinds == [Error] and case.result[0].message == a["error"]
            elif not a["passed"]:
                assert kinds == [Failure] and case.result[0].message == a["message"]
                assert a["expected"] in case.result[0].text
            else:
                assert kinds == []
        for key in total:
            total[key] += getattr(suite, key)
    # The mix: a pass, an optional failure, a rule that raised; the timeout: its run error.
    assert [type(r) for r in suites["junit-mix"]] and suites["junit-mix"].errors == 1
    assert suites["junit-mix"].failures == 1
    assert {c.name for c in suites["junit-timeout"]} == {"user-spoke", "(run)"}
    (run_case,) = [c for c in suites["junit-timeout"] if c.name == "(run)"]
    assert run_case.result[0].message == (
        "step script[1] failed: no message from bot in r within 300ms"
    )
    xml.update_statistics()  # recomputed by the parser from the cases themselves
    assert (xml.tests, xml.failures, xml.errors) == (
        total["tests"],
        total["failures"],
        total["errors"],
    )


def test_schema_accepts_every_example_and_rejects_mistakes(tmp_path: Path) -> None:
    import yaml

    result = CliRunner().invoke(main, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.output)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    examples = sorted((ROOT / "examples").glob("*.yaml")) + sorted(DATA.glob("*.yaml"))
    for path in examples:
        errors = list(validator.iter_errors(yaml.safe_load(path.read_text())))
        assert errors == [], f"{path}: {errors[0].message}"
    data = yaml.safe_load((DATA / "coin.yaml").read_text())
    data["asertions"] = data.pop("assertions")
    assert any("asertions" in e.message for e in validator.iter_errors(data))
    data = yaml.safe_load((DATA / "coin.yaml").read_text())
    data["script"][1]["wait_for"]["timeout"] = "soon"
    assert list(validator.iter_errors(data))
    data["script"][1]["wait_for"]["timeout"] = "5s"
    assert not list(validator.iter_errors(data))


def test_report_schema_describes_a_real_report(
    files: Path, tmp_path: Path, private_tmp: Path
) -> None:
    out = tmp_path / "report.schema.json"
    result = CliRunner().invoke(main, ["schema", "--report", "-o", str(out)])
    assert result.exit_code == 0 and result.output == ""
    schema = json.loads(out.read_text())
    _invoke(str(files / "junit-mix.yaml"), "--report-dir", str(tmp_path / "r"))
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(report)
    report["verdict"] = "MAYBE"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(report)


def test_matrix_listing_its_combinations(tmp_path: Path) -> None:
    text = MATRIX.split("matrix:\n")[0] + (
        "matrix:\n"
        "  - {agents.0.model.rules.0.chance: 0.0, timeout: 5s}\n"
        "  - {agents.0.model.rules.0.chance: 1.0}\n"
    )
    variants = load_variants_text(text, "m.yaml")
    assert [v.label for v in variants] == [
        "coin-matrix[chance=0.0,timeout=5s]",
        "coin-matrix[chance=1.0]",
    ]
    assert [v.agents[0].model.rules[0].chance for v in variants] == [0.0, 1.0]  # type: ignore[union-attr,index]
    with pytest.raises(ScenarioError) as caught:
        load_variants_text(MATRIX.split("matrix:\n")[0] + "matrix:\n  - {}\n  - 3\n", "m.yaml")
    assert [str(p) for p in caught.value.problems] == [
        "m.yaml:21:5: matrix[0]: a combination maps dotted paths to values, got an empty mapping",
        "m.yaml:22:5: matrix[1]: a combination maps dotted paths to values, got a number (3)",
    ]


def test_junit_carries_text_xml_cannot(files: Path, tmp_path: Path, private_tmp: Path) -> None:
    _invoke(str(files / "junit-mix.yaml"), "--report-dir", str(tmp_path / "r"))
    report = ScenarioReport.model_validate_json((tmp_path / "r" / "report.json").read_text())
    failed = next(a for a in report.assertions if not a.passed and a.error is None)
    failed.message = "agent said \x1b[31mred\x1b[0m and \x00"
    path = write_junit(tmp_path / "junit.xml", [report])
    (suite,) = JUnitXml.fromfile(str(path))
    (case,) = [c for c in suite if c.name == failed.id]
    assert case.result[0].message == "agent said \\x1b[31mred\\x1b[0m and \\x00"


def test_progress_bar_on_a_terminal_only(files: Path, tmp_path: Path, private_tmp: Path) -> None:
    script = Path(sys.executable).parent / "scenario-runner"
    terminal = {**os.environ, "TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1"}  # rich's switches
    args = [str(script), "run", str(files / "coin.yaml"), "--repeat", "3", "--seed", "1"]

    def run(*extra: str, env: dict[str, str]) -> str:
        done = subprocess.run(
            [*args, *extra, "--report-dir", str(tmp_path / str(len(extra)))],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
        return done.stdout

    live = "\x1b[?25l"  # rich hides the cursor while it draws a live display
    bar = run(env=terminal)
    assert live in bar and re.search(r"coin.*\d/3", bar)  # what runs, and runs done of 3
    piped = run("--verbose", env=dict(os.environ))
    assert "\x1b[" not in piped and "coin (run 3)" in piped  # a log gets results, no codes
    quiet = run("-q", env=terminal)
    assert live not in quiet and len(quiet.splitlines()) == 1


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_sigterm_tears_down_and_reports_what_finished(
    files: Path, tmp_path: Path, private_tmp: Path, sig: signal.Signals, code: int
) -> None:
    slow = tmp_path / "slow.yaml"
    slow.write_text(PAUSED.format(name="slow").replace("pause: 1s", "pause: 30s"))
    report_dir = tmp_path / "r"
    script = Path(sys.executable).parent / "scenario-runner"
    # PYTHONFAULTHANDLER: should it not end, SIGABRT makes it print every thread's stack.
    env = {**os.environ, "TMPDIR": str(private_tmp), "PYTHONFAULTHANDLER": "1"}
    command = [str(script), "run", str(files / "coin.yaml"), str(slow), "--report-dir",
               str(report_dir), "--seed", "1"]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        # As a command in a terminal's foreground has it: a test run started in the
        # background of a non-interactive shell inherits SIGINT ignored (POSIX), and so would
        # this coordinator, which would then never see the Ctrl-C.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        # Coin runs first; once its report is written, the slow run has its run directory
        # (and agents on the way) when the signal lands.
        deadline = time.monotonic() + 30
        while not (
            (report_dir / "coin" / "report.json").exists() and list(private_tmp.glob("sr-*"))
        ):
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.02)
        process.send_signal(sig)
        try:
            _, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGABRT)
            _, err = process.communicate(timeout=10)
            raise AssertionError(f"no end 30 s after {sig.name}:\n{err.decode()[-8000:]}") from None
    finally:
        process.kill()
    assert process.returncode == code
    assert b"interrupted: 1 of 2 runs finished" in err
    assert b"Traceback" not in err and b"never retrieved" not in err, err.decode()
    summary = _summary(report_dir)
    assert summary["interrupted"] is True and summary["exit_code"] == code
    assert [s["scenario"] for s in summary["scenarios"]] == ["coin"]
    assert len(JUnitXml.fromfile(str(report_dir / "junit.xml"))) == 1
    assert list(private_tmp.glob("sr-*")) == []  # the slow run's directory went with it
    leftovers = [p.pid for p in psutil.process_iter(["environ"]) if _ran_in(p, private_tmp)]
    assert leftovers == []


def _ran_in(process: psutil.Process, folder: Path) -> bool:
    with contextlib.suppress(psutil.Error):
        return (process.info.get("environ") or {}).get("TMPDIR") == str(folder)
    return False


def test_a_run_the_runner_cannot_carry_out_is_an_error_and_the_others_are_reported(
    files: Path, tmp_path: Path, private_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = session.run_scenario

    async def breaks_on_coin(
        scenario: Scenario, source: Path, options: RunOptions, on_event: object = None
    ) -> object:
        if scenario.name == "coin":
            raise RuntimeError("a bug in the runner")
        return await real(scenario, source, options, on_event)  # type: ignore[arg-type]

    monkeypatch.setattr(session, "run_scenario", breaks_on_coin)
    report_dir = tmp_path / "r"
    code, output = _invoke(
        str(files / "coin.yaml"), str(files / "junit-mix.yaml"), "--report-dir", str(report_dir)
    )
    assert code == 3, output
    summary = _summary(report_dir)
    assert [(s["scenario"], s["outcome"]) for s in summary["scenarios"]] == [
        ("coin", "ERROR"),
        ("junit-mix", "ERROR"),  # by design (its custom rule raises), and judged
    ]
    broken = json.loads((report_dir / "coin" / "report.json").read_text())
    assert broken["errors"][0]["message"] == "the runner broke: RuntimeError: a bug in the runner"
    suites = {s.name: s for s in JUnitXml.fromfile(str(report_dir / "junit.xml"))}
    assert suites["coin"].errors == 1 and suites["junit-mix"].tests == 3


def test_report_directories_are_checked_before_anything_runs(
    files: Path, tmp_path: Path, private_tmp: Path
) -> None:
    report_dir = tmp_path / "r"
    report_dir.mkdir()
    (report_dir / "coin").write_text("a file where a run's directory must go")
    result = CliRunner().invoke(
        main, ["run", str(files / "coin.yaml"), str(files / "junit-mix.yaml"),
               "--report-dir", str(report_dir)],
    )  # fmt: skip
    assert result.exit_code == 2
    assert f"{report_dir / 'coin'}: cannot create the report directory: File exists" in (
        result.output
    )
    assert sorted(p.name for p in report_dir.iterdir()) == ["coin"]  # nothing ran


def test_labels_never_collide_and_filter_takes_them_as_written(tmp_path: Path) -> None:
    text = MATRIX.split("matrix:\n")[0] + (
        "matrix:\n  agents.1.settings.x: [true, 'true', 1, '1', [1], '[1]', plain]\n"
    )
    variants = load_variants_text(text, "m.yaml")
    labels = [v.label for v in variants]
    assert len(set(labels)) == 7
    assert labels[:2] == ["coin-matrix[x=true]", 'coin-matrix[x="true"]']
    assert labels[-1] == "coin-matrix[x=plain]"
    assert matches(variants[1], ['coin-matrix[x="true"]'])
    assert matches(variants[1], ['coin-matrix[agents.1.settings.x="true"]'])
    assert not matches(variants[0], ['coin-matrix[x="true"]'])
    assert matches(variants[0], ["coin-*"])


def test_an_error_among_repeats_is_flaky_but_exits_3_and_dirs_avoid_reserved_names(
    tmp_path: Path,
) -> None:
    base = load_variants_text((DATA / "coin.yaml").read_text(), "coin.yaml")[0]
    error = broken_report(base, Path("coin.yaml"), None, None, 0, RuntimeError("boom"))
    passed = error.model_copy(update={"verdict": Verdict.PASS, "exit_code": 0})
    planned = session.plan([(Path("coin.yaml"), base)], 2, tmp_path)
    results = session.outcomes(planned, [passed, error])
    assert [(o.outcome, o.pass_rate) for o in results] == [(session.Outcome.FLAKY, 0.5)]
    assert session.exit_code(results, [passed, error]) == 3  # a broken run is never just flaky
    assert session.exit_code(results[:0], [passed]) == 0

    named = base.model_copy(update={"name": "junit.xml"})
    dirs = [p.report_dir.name for p in session.plan([(Path("a"), named), (Path("b"), base)], 1,
                                                     tmp_path)]  # fmt: skip
    assert dirs == ["junit.xml-2", "coin"]


def test_sigterm_while_agents_start_stops_launching_at_once(
    tmp_path: Path, private_tmp: Path
) -> None:
    many = tmp_path / "many.yaml"
    agents = "\n".join(f"  - id: a{i}" for i in range(32))
    many.write_text(
        f"name: many\nagents:\n{agents}\nrooms:\n  - {{id: r, members: ['a*']}}\n"
        "script:\n  - send: {agent: a0, room: r, text: hi}\n"
        "assertions:\n  - message: {from: a0, origin: script}\n"
    )
    script = Path(sys.executable).parent / "scenario-runner"
    env = {**os.environ, "TMPDIR": str(private_tmp)}
    command = [str(script), "run", str(many), "--report-dir", str(tmp_path / "r")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 30
        while len(list(private_tmp.glob("sr-*/agents/*"))) < 32:  # all launched, not READY
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.01)
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        process.kill()
    assert process.returncode == 143, err.decode()
    assert b"Traceback" not in err and b"never retrieved" not in err, err.decode()
    assert took < 5.0  # not the time to launch the 31 others and wait for them
    assert list(private_tmp.glob("sr-*")) == []
    leftovers = [p.pid for p in psutil.process_iter(["environ"]) if _ran_in(p, private_tmp)]
    assert leftovers == []
