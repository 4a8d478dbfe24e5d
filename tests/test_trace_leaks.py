"""`soak --trace-leaks`: the report names the line that leaks, not only the agent."""

from __future__ import annotations

import inspect
import tracemalloc
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent_worker.tracer import Tracer
from orchestrator.cli import main
from orchestrator.report.model import ScenarioReport, Verdict
from protocol import CmdTrace

ROOT = Path(__file__).resolve().parent.parent
LEAKY = ROOT / "examples" / "plugins" / "leaky.py"

SCENARIO = """\
name: trace-leaks
timeout: 30s
agents:
  - id: leaky
    plugins: [plugins.leaky:plugin]
    settings: {leak.bytes_per_message: 65536}
    memory: {max_per_room: 32}
    model: {rules: [{when: {regex: "^tick"}, reply: tock}]}
  - id: driver
    memory: {max_per_room: 32}
rooms:
  - {id: lab, type: dm, members: [leaky, driver]}
script:
  - send: {agent: driver, room: lab, text: tick}
  - wait_for: {message: {from: leaky, equals: tock}, timeout: 5s}
  - pause: 50ms
assertions:
  - {id: caught, memory: {agent: leaky, leak: detected}}
"""


@pytest.mark.timeout(120)
def test_the_leaking_line_is_named_with_its_growth(tmp_path: Path, private_tmp: Path) -> None:
    # Plugins are imported relative to the scenario's folder: `plugins.leaky` is the example's.
    folder = tmp_path / "scenario"
    folder.mkdir()
    (folder / "plugins").symlink_to(ROOT / "examples" / "plugins")
    scenario = folder / "trace-leaks.yaml"
    scenario.write_text(SCENARIO)
    reports = tmp_path / "report"
    result = CliRunner().invoke(main, [
        "soak", str(scenario), "--duration", "20s", "--warmup", "10s",
        "--sample-interval", "250ms", "--trace-leaks", "--report-dir", str(reports), "-q",
    ])  # fmt: skip
    report = ScenarioReport.model_validate_json((reports / "report.json").read_text())
    assert report.verdict is Verdict.PASS, (result.output, report.verification.reasons)
    leaky = next(a for a in report.agents if a.id == "leaky")
    trace = leaky.memory.trace
    assert trace is not None and trace.sites
    top = trace.sites[0]
    hoard = next(i for i, line in enumerate(LEAKY.read_text().splitlines(), 1)
                 if "_HOARD.append" in line)  # fmt: skip
    assert (Path(top.file).resolve(), top.line) == (LEAKY.resolve(), hoard)
    assert report.soak is not None
    # 64 KiB a pass, about half of the passes after the warm-up's end (the mark).
    assert top.size_diff_bytes >= 64 * 1024 * report.soak.iterations // 4
    assert top.count_diff > 0 and top.traceback
    assert trace.tracing_overhead_bytes > 0 and len(trace.gc_objects) == 3
    # The others were traced too, and nothing of theirs grew like that.
    driver = next(a for a in report.agents if a.id == "driver").memory.trace
    assert driver is not None
    assert all(s.size_diff_bytes < 1024 * 1024 for s in driver.sites)


def test_the_tracer_reports_what_grew_since_the_mark_at_the_allocating_line() -> None:
    tracer = Tracer()
    with pytest.raises(RuntimeError, match="not started"):
        tracer.run(CmdTrace(step="mark"))
    tracer.run(CmdTrace(step="start"))
    try:
        with pytest.raises(RuntimeError, match="no baseline"):
            tracer.run(CmdTrace(step="report"))
        tracer.run(CmdTrace(step="mark"))
        line = inspect.currentframe().f_lineno + 1  # type: ignore[union-attr]
        hoard = [bytearray(100_000) for _ in range(20)]
        report = tracer.run(CmdTrace(step="report", top=3))
    finally:
        tracemalloc.stop()
    assert isinstance(report, dict) and isinstance(report["sites"], list)
    site = report["sites"][0]
    assert isinstance(site, dict)
    assert (site["file"], site["line"]) == (__file__, line)
    assert isinstance(site["size_diff_bytes"], int) and site["size_diff_bytes"] >= 2_000_000
    assert len(hoard) == 20
