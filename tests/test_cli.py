"""The command line: exit codes, validation messages with locations, the report on disk."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli import main

ROOT = Path(__file__).resolve().parent.parent
CHECKED_ELSEWHERE = {"chaos", "hang"}
"""Examples that a test of their own runs through the installed command and checks in detail
(tests/test_examples_chaos.py): running them here too would be the same run twice."""
EXAMPLES = sorted(
    p for p in (ROOT / "examples").glob("*.yaml")
    if "# command: soak" not in p.read_text() and p.stem not in CHECKED_ELSEWHERE
)
"""Every example but the soaks and those above: tests/test_soak.py runs the soaks (with their
header's arguments) and checks each agent's verdicts, not only the outcome."""

GOOD = """\
name: cli-good
agents:
  - id: bot
    model:
      rules:
        - when: {contains: hi}
          reply: "hi {sender}"
  - id: user
rooms:
  - {id: lobby, members: [bot, user]}
script:
  - send: {agent: user, room: lobby, text: "hi there"}
  - wait_for: {message: {from: bot, contains: "hi user"}, timeout: 2s}
assertions:
  - message: {from: bot, room: lobby, count: {min: 1}}
"""

# (name, text, line expected in the message, fragment expected in the message)
INVALID = [
    ("bad-yaml", GOOD.replace("rooms:\n", "rooms: [\n"), None, "yaml"),
    (
        "unknown-key",
        GOOD.replace("name: cli-good\n", "name: cli-good\nasertions: []\n"),
        2,
        "asertions",
    ),
    ("wrong-type", GOOD.replace("agents:\n", "timeout: [1]\nagents:\n"), 2, "timeout"),
    (
        "undefined-agent",
        GOOD.replace("from: bot, contains", "from: nobody, contains"),
        13,
        "nobody",
    ),
    ("bad-duration", GOOD.replace("timeout: 2s", "timeout: 2 parsecs"), 13, "duration"),
    ("bad-regex", GOOD.replace("{contains: hi}", "{regex: '(unclosed'}"), 6, "regex"),
]


def _write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("name", "text", "line", "fragment"), INVALID, ids=[case[0] for case in INVALID]
)
def test_invalid_scenarios_exit_2_with_location(
    tmp_path: Path, name: str, text: str, line: int | None, fragment: str
) -> None:
    path = _write(tmp_path, name, text)
    for command in ("validate", "run"):
        args = [command, str(path)]
        if command == "run":
            args += ["--report-dir", str(tmp_path / "report")]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        assert str(path) in result.output
        if line is not None:
            assert f"{path}:{line}:" in result.output, result.output
        assert fragment in result.output.lower(), result.output
    assert not (tmp_path / "report").exists()  # nothing was started, nothing was written


def test_validate_ok_and_missing_file(tmp_path: Path) -> None:
    good = _write(tmp_path, "good", GOOD)
    ok = CliRunner().invoke(main, ["validate", str(good)])
    assert ok.exit_code == 0 and "ok" in ok.output
    missing = CliRunner().invoke(main, ["validate", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "nope.yaml" in missing.output


def test_bad_command_line_is_exit_2(tmp_path: Path) -> None:
    good = _write(tmp_path, "good", GOOD)
    result = CliRunner().invoke(main, ["run", str(good), "--timeout", "soon"])
    assert result.exit_code == 2 and "duration" in result.output


def test_run_pass_writes_a_complete_report(tmp_path: Path, private_tmp: Path) -> None:
    path = _write(tmp_path, "good", GOOD)
    report_dir = tmp_path / "report"
    result = CliRunner().invoke(main, ["run", str(path), "--report-dir", str(report_dir), "-v"])
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output
    report = json.loads((report_dir / "report.json").read_text())
    assert report["schema_version"] == 3 and report["verdict"] == "PASS"
    assert (report_dir / "events.jsonl").stat().st_size > 0
    assert [s["status"] for s in report["steps"]] == ["passed", "passed"]
    by_id = {a["id"]: a for a in report["agents"]}
    assert set(by_id) == {"bot", "user"}
    for agent in by_id.values():
        assert agent["pid"] > 0 and agent["exit_code"] == 0 and agent["startup_s"] > 0
        assert agent["memory"]["peak_rss_bytes"] > 0 and agent["memory"]["samples"] >= 1
        assert agent["cpu_user_s"] is not None
    assert by_id["bot"]["messages_in"] == 1 and by_id["bot"]["messages_out"] == 1
    assert by_id["user"]["delivery_latency"]["count"] == 1
    assert by_id["user"]["delivery_latency"]["p99_ms"] > 0
    assert report["assertions"][0]["passed"] and report["assertions"][0]["evidence"]
    assert list(private_tmp.glob("sr-*")) == []  # the private run directory is gone


def test_keep_run_dir_keeps_stores_and_logs(tmp_path: Path, private_tmp: Path) -> None:
    path = _write(tmp_path, "good", GOOD)
    result = CliRunner().invoke(
        main, ["run", str(path), "--report-dir", str(tmp_path / "r"), "--keep-run-dir"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    run_dir = Path(report["run_dir"])
    assert (run_dir / "agents" / "bot" / "memory.sqlite3").is_file()
    assert (run_dir / "agents" / "bot" / "agent.log").is_file()
    assert not (run_dir / "bus.sock").exists()  # the socket is closed and unlinked regardless


def test_failed_assertion_exits_1(tmp_path: Path, private_tmp: Path) -> None:
    text = GOOD.replace("count: {min: 1}", "count: {min: 2}")
    result = CliRunner().invoke(
        main, ["run", str(_write(tmp_path, "f", text)), "--report-dir", str(tmp_path / "r")]
    )
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output and "found 1" in result.output


def test_timed_out_wait_is_an_error_exit_3(tmp_path: Path, private_tmp: Path) -> None:
    text = GOOD.replace('contains: "hi user"}, timeout: 2s', 'contains: "never"}, timeout: 300ms')
    result = CliRunner().invoke(
        main, ["run", str(_write(tmp_path, "e", text)), "--report-dir", str(tmp_path / "r")]
    )
    assert result.exit_code == 3, result.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["verdict"] == "ERROR"
    assert report["steps"][1]["status"] == "failed" and "300ms" in report["steps"][1]["error"]


def _header(example: Path) -> tuple[str, list[str], str]:
    """An example's expected outcome (`# expect: PASS`), extra arguments (`# args: ...`) and
    command (`# command: soak`; default `run`), from the comment lines at its top."""
    expect, args, command = None, [], "run"
    for line in example.read_text().splitlines():
        if not line.startswith("#"):
            break
        key, _, value = line.lstrip("# ").partition(":")
        if key == "expect":
            expect = value.strip()
        elif key == "args":
            args = shlex.split(value)
        elif key == "command":
            command = value.strip()
    assert expect in ("PASS", "FAIL", "ERROR", "FLAKY"), f"{example}: no '# expect:' line"
    return expect, args, command


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_examples_give_their_expected_verdict_through_the_installed_command(
    example: Path, tmp_path: Path, private_tmp: Path
) -> None:
    expect, args, command = _header(example)
    script = Path(sys.executable).parent / "scenario-runner"
    done = subprocess.run(
        [str(script), command, str(example), "--report-dir", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TMPDIR": str(private_tmp)},  # where its run directories go
    )
    output = done.stdout + done.stderr
    assert done.returncode == {"PASS": 0, "FAIL": 1, "FLAKY": 1, "ERROR": 3}[expect], output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [s["outcome"] for s in summary["scenarios"]] == [expect] * len(summary["scenarios"])
    assert f"{expect} " in output
    assert list(private_tmp.glob("sr-*")) == []  # every run directory was removed


def test_plugin_that_fails_to_import_exits_2_with_one_line(
    tmp_path: Path, private_tmp: Path
) -> None:
    path = _write(
        tmp_path,
        "bad-plugin",
        """\
name: bad-plugin
agents:
  - {id: fine}
  - {id: broken, plugins: ["plugins.missing:plugin"]}
assertions:
  - state: {agent: fine, path: x, exists: false}
""",
    )
    result = CliRunner().invoke(main, ["run", str(path), "--report-dir", str(tmp_path / "r")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if "failed to import" in line]
    assert lines == [
        f"{path}: agent broken: plugin 'plugins.missing:plugin' failed to import: "
        "ModuleNotFoundError: No module named 'plugins'"
    ]
    assert list(private_tmp.glob("sr-*")) == []  # stopped and cleaned up


def test_schema_of_events_validates_a_real_events_file(tmp_path: Path, private_tmp: Path) -> None:
    import jsonschema

    result = CliRunner().invoke(main, ["schema", "--events"])
    assert result.exit_code == 0, result.output
    schema = json.loads(result.output)
    path = _write(tmp_path, "good", GOOD)
    report_dir = tmp_path / "report"
    ran = CliRunner().invoke(main, ["run", str(path), "--report-dir", str(report_dir)])
    assert ran.exit_code == 0, ran.output
    lines = (report_dir / "events.jsonl").read_text().splitlines()
    kinds = set()
    for line in lines:
        event = json.loads(line)
        jsonschema.validate(event, schema)
        kinds.add(event["kind"])
    assert {"run.started", "agent.ready", "message.sent", "message.delivered",
            "assertion.evaluated", "run.finished"} <= kinds  # fmt: skip
    both = CliRunner().invoke(main, ["schema", "--events", "--report"])
    assert both.exit_code == 2 and "choose one" in both.output


@pytest.mark.parametrize(
    ("storage", "written"),
    [("full", {"message.sent", "agent.ready"}), ("summary", {"agent.ready"}), ("off", None)],
)
def test_events_option_bounds_what_is_written_and_the_report_counts_the_rest(
    tmp_path: Path, private_tmp: Path, storage: str, written: set[str] | None
) -> None:
    path = _write(tmp_path, "good", GOOD)
    report_dir = tmp_path / "report"
    args = ["run", str(path), "--report-dir", str(report_dir), "--events", storage]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads((report_dir / "report.json").read_text())
    log = report["event_log"]
    assert log["storage"] == storage
    events_file = report_dir / "events.jsonl"
    if written is None:
        assert not events_file.exists() and log["file"] is None
        assert sum(log["omitted"].values()) == report["events"]
        return
    kinds = {json.loads(line)["kind"] for line in events_file.open()}
    assert written <= kinds
    if storage == "summary":
        assert "message.sent" not in kinds and log["omitted"]["message.sent"] == 2
    assert log["emitted"]["message.sent"] == 2
    assert log["bytes_written"] == events_file.stat().st_size


def test_events_max_size_is_checked(tmp_path: Path) -> None:
    path = _write(tmp_path, "good", GOOD)
    result = CliRunner().invoke(main, ["run", str(path), "--events-max-size", "lots"])
    assert result.exit_code == 2 and "is not a size" in result.output
    result = CliRunner().invoke(main, ["run", str(path), "--events", "some"])
    assert result.exit_code == 2 and "'some' is not one of" in result.output


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--timeout", "0"], "no time at all"),
        (["-q", "-v"], "choose one"),
        (["--events", "off", "--events-max-size", "2MiB"], "which --events off omits"),
    ],
)
def test_contradictory_or_empty_options_exit_2(
    tmp_path: Path, args: list[str], fragment: str
) -> None:
    path = _write(tmp_path, "good", GOOD)
    result = CliRunner().invoke(main, ["run", str(path), *args])
    assert result.exit_code == 2 and fragment in result.output


def test_schema_to_a_path_that_cannot_be_written_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["schema", "-o", str(tmp_path / "no" / "such" / "x.json")])
    assert result.exit_code == 2 and "cannot write" in result.output
