"""The chaos and hang examples, run for real through the installed command (instead of
tests/test_cli.py's check of every example's verdict), with their outcomes checked beyond it:
examples/chaos.yaml kills, restarts, drops and partitions and still passes, with each fault in
its report; examples/hang.yaml ends in ERROR with the stuck handler's line in the hung agent's
stacks and a wait-for graph naming the deadlock in diagnostics-1.txt."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from orchestrator.report.model import ScenarioReport, Verdict

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
SCRIPT = Path(sys.executable).parent / "scenario-runner"


def _run(example: Path, report_dir: Path, private_tmp: Path) -> tuple[int, str, ScenarioReport]:
    """`scenario-runner run` on the example, with the arguments its `# args:` line gives."""
    args: list[str] = []
    for line in example.read_text().splitlines():
        if not line.startswith("#"):
            break
        if line.startswith("# args:"):
            args = shlex.split(line.removeprefix("# args:"))
    done = subprocess.run(
        [str(SCRIPT), "run", str(example), "--report-dir", str(report_dir), *args],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "TMPDIR": str(private_tmp)},  # where its run directory goes
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert (report_dir / "report.json").exists(), output
    report = ScenarioReport.model_validate_json((report_dir / "report.json").read_text())
    assert list(private_tmp.glob("sr-*")) == []  # the run directory was removed
    return done.returncode, output, report


def _events(report: ScenarioReport) -> list[dict[str, Any]]:
    lines = Path(report.events_file).read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.timeout(90)
def test_chaos_example_passes_with_every_fault_recorded(tmp_path: Path, private_tmp: Path) -> None:
    code, output, report = _run(EXAMPLES / "chaos.yaml", tmp_path / "r", private_tmp)
    assert code == 0, output
    assert report.verdict is Verdict.PASS, report.verification.reasons
    assert report.errors == []
    assert all(a.passed for a in report.assertions)
    assert {a.id for a in report.assertions} >= {
        "healed-first", "alpha-before-beta", "delivered-alpha", "delivered-beta",
        "delivered-gamma", "delivered-ops", "phoenix-answered-both-lives",
    }  # fmt: skip
    assert all(s.status == "passed" for s in report.steps), [s.error for s in report.steps]

    events = _events(report)
    injected = [e for e in events if e["kind"] == "fault.injected"]
    assert [e["fault"] for e in injected] == ["kill", "restart", "drop", "partition"]
    kill, restart, drop, partition = injected
    # The kill is a planned end: phoenix exited (not crashed), and came back as incarnation 2.
    assert kill["agent"] == "phoenix" and kill["detail"].startswith("SIGKILL to pid ")
    killed_pid = int(kill["detail"].removeprefix("SIGKILL to pid "))
    (exit_,) = [e for e in events if e["kind"] == "agent.exited" and e["pid"] == killed_pid]
    assert exit_["signal"] == "SIGKILL"
    assert not [e for e in events if e["kind"] == "agent.crashed"]
    assert restart["agent"] == "phoenix" and "incarnation 2" in restart["detail"]
    assert f"replaced pid {killed_pid}" in restart["detail"] and "store kept" in restart["detail"]
    phoenix = next(a for a in report.agents if a.id == "phoenix")
    assert phoenix.restarts == 1 and phoenix.restart_causes == ["restart fault"]
    assert phoenix.status == "exited" and phoenix.pid != killed_pid
    # Answered in both lives, to ops.
    pongs = [e for e in events if e["kind"] == "message.sent" and e["agent"] == "phoenix"]
    assert [e["text"] for e in pongs] == ["pong 1", "pong 2", "pong 7"]
    assert pongs[0]["t"] < kill["t"] < restart["t"] < pongs[1]["t"]

    # Each bus fault ended, having done something, and in order (never overlapping).
    ended = {e["fault"]: e for e in events if e["kind"] == "fault.ended"}
    assert set(ended) == {"drop", "partition"}
    assert drop["detail"] == "drop 40% of the messages in mesh for 1.5s"
    assert "dropped " in ended["drop"]["detail"] and "dropped 0 " not in ended["drop"]["detail"]
    assert ended["partition"]["detail"].startswith("partition ops, alpha | beta, gamma: cut")
    assert "cut 0 " not in ended["partition"]["detail"]
    assert drop["t"] < ended["drop"]["t"] < partition["t"] < ended["partition"]["t"]
    # Lost transmissions were retried, within the drop window.
    retries = [e for e in events if e["kind"] == "message.retry"]
    assert any(drop["t"] < e["t"] < ended["drop"]["t"] for e in retries)
    assert sum(a.retries for a in report.agents) > 0

    # The ping sent during the partition reached alpha at once, beta and gamma once it healed.
    (ping6,) = [e for e in events if e["kind"] == "message.sent" and e["text"] == "ping 6"]
    reached = {
        e["agent"]: e["t"]
        for e in events
        if e["kind"] == "message.delivered" and e["msg_id"] == ping6["msg_id"]
    }
    assert set(reached) == {"alpha", "beta", "gamma"}
    assert reached["alpha"] < ended["partition"]["t"]
    assert reached["beta"] > ended["partition"]["t"] and reached["gamma"] > ended["partition"]["t"]
    # Nothing was lost for good (the delivery assertions also rule out duplicates).
    assert not [e for e in events if e["kind"] in ("message.dead_letter", "message.refused")]
    assert report.duration_s < 30


def _line_of(path: Path, fragment: str) -> int:
    (number,) = [i for i, line in enumerate(path.read_text().splitlines(), 1) if fragment in line]
    return number


@pytest.mark.timeout(90)
def test_hang_example_reports_the_stuck_line_and_the_deadlock(
    tmp_path: Path, private_tmp: Path
) -> None:
    out = tmp_path / "r"
    code, output, report = _run(EXAMPLES / "hang.yaml", out, private_tmp)
    assert code == 3, output
    assert report.verdict is Verdict.ERROR

    statuses = {a.id: a.status for a in report.agents}
    assert statuses == {"frozen": "hung", "user": "exited", "alice": "exited", "bob": "exited"}
    (hung,) = [e for e in report.errors if e.source == "hung"]
    assert hung.agent == "frozen"
    assert "event loop made no progress" in hung.message
    assert "while running action FREEZE" in hung.message and "it was killed" in hung.message
    # The stuck handler's file and line, in the stack of the thread that runs the loop.
    plugin = EXAMPLES / "plugins" / "stuck.py"
    line = _line_of(plugin, "time.sleep(")
    assert hung.detail is not None and "every thread's stack" in hung.detail
    assert f'/plugins/stuck.py", line {line} in freeze' in hung.detail, hung.detail
    assert "busy with action FREEZE" in hung.detail
    # The script's wait on it, noted when it was declared hung (the wait fails at that moment,
    # before the agent's stacks are taken and its exit reported).
    assert "waits on it:\n  script script[1]: " in hung.detail, hung.detail

    # The wait on frozen failed as soon as it was declared hung, long before its 10 s timeout;
    # alice's wait timed out (the deadlock), after which alice spoke and bob went on.
    steps = {s.path: s for s in report.steps}
    answer = steps["script[1]"]
    assert answer.status == "failed" and "hung" in (answer.error or "")
    assert answer.duration_s < 9
    assert steps["actors[0].script[0]"].status == "failed"
    assert "within 1.5s" in (steps["actors[0].script[0]"].error or "")
    assert steps["actors[1].script[0]"].status == "passed"
    assert [a.passed for a in report.assertions] == [True]  # ERROR all the same

    # --diagnose-on-timeout: alice's wait timing out wrote the wait-for graph.
    diagnostics = sorted(p.name for p in out.glob("diagnostics-*.txt"))
    assert diagnostics[:1] == ["diagnostics-1.txt"], output
    text = (out / "diagnostics-1.txt").read_text()
    assert "actors[0].script[0] (alice) failed: no message from bob" in text
    assert "wait-for graph (timeline -> timeline it waits for):" in text
    assert "  actors[0].script -> actors[1].script: actors[0].script[0]" in text
    assert "  actors[1].script -> actors[0].script: actors[1].script[0]" in text
    assert "DEADLOCK: actors[0].script -> actors[1].script -> actors[0].script" in text
    assert (
        "script [script] script[1]: wait for a message from frozen containing 'thawed' on frozen"
        in text
    )
    # frozen, not yet declared hung: busy with the action, its loop still.
    frozen = text[text.index("agent frozen (pid") :].split("\n  agent ")[0]
    assert "busy with action FREEZE" in frozen and "its event loop last moved" in frozen
    assert report.duration_s < 15
