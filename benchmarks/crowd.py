"""`python -m benchmarks.crowd`: many agents in one scenario, through the real runner.

For each count in `--counts` (default 256; `--counts 256,1000` for the 1,000-agent target), one
scenario (`crowd_scenario`) runs in this process through `run_scenario`, with the default
launcher:

- N agents (`agent-{i}`, the rules model), all in one group room `all`, and paired in N/2 dm
  rooms (`dm-1` holds agent-1 and agent-2, ...);
- agent-1 posts a roll call to `all` (N-1 deliveries), and the first of every pair sends `ping`
  in its dm room, whose partner answers `pong`: one wait counts all N/2 pongs;
- assertions: one pong from each pair (`count: exactly 1`), and `delivery` (every message
  reached every member of its room, exactly once).

Figures per count (`--json` for one JSON object): the verdict, launch -> all READY, the script,
teardown, processes left afterwards (psutil: this process's descendants), the median agent USS,
the coordinator's peak RSS, its event-loop lag in each phase, and the sampler's own cost.
Targets (issue 11, 2 cores): PASS with 0 processes left at every count; READY <= 4 s and
teardown <= 2 s for 256 agents; loop lag max <= 50 ms in the script phase.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from benchmarks._common import Row, print_table, verdict
from orchestrator.report.model import Verdict
from orchestrator.run.runner import RunOptions, run_scenario
from orchestrator.scenario.loader import load_scenario_text

TARGET_READY_S = {256: 4.0}
TARGET_TEARDOWN_S = {256: 2.0}
TARGET_LAG_MS = 50.0


def crowd_scenario(agents: int) -> str:
    """The scenario for `agents` agents (an even number, at least 2)."""
    if agents < 2 or agents % 2:
        raise ValueError(f"the crowd needs an even number of agents, at least 2, not {agents}")
    pairs = agents // 2
    lines = [
        f"name: crowd-{agents}",
        "description: a room of everyone, and everyone in a pair",
        "timeout: 10m",
        "agents:",
        '  - id: "agent-{i}"',
        f"    count: {agents}",
        '    model: {rules: [{when: {regex: "^ping$"}, reply: pong}]}',
        "rooms:",
        '  - {id: all, members: ["agent-*"]}',
    ]
    lines += [
        f"  - {{id: dm-{k}, type: dm, members: [agent-{2 * k - 1}, agent-{2 * k}]}}"
        for k in range(1, pairs + 1)
    ]
    lines += [
        "script:",
        "  - send: {agent: agent-1, room: all, text: roll call}",
        f"  - wait_for: {{message: {{equals: roll call, origin: script, to: agent-{agents}}},"
        " timeout: 2m}",
    ]
    lines += [
        f"  - send: {{agent: agent-{2 * k - 1}, room: dm-{k}, text: ping}}"
        for k in range(1, pairs + 1)
    ]
    lines += [
        f"  - wait_for: {{message: {{equals: pong}}, count: {pairs}, timeout: 5m}}",
        "assertions:",
        "  - {id: delivered, delivery: {}}",
    ]
    lines += [
        f"  - {{message: {{from: agent-{2 * k}, equals: pong, count: {{exactly: 1}}}}}}"
        for k in range(1, pairs + 1)
    ]
    return "\n".join(lines) + "\n"


def run_one(agents: int, directory: Path) -> dict[str, Any]:
    scenario = load_scenario_text(crowd_scenario(agents), f"crowd-{agents}.yaml")
    t0 = time.monotonic()
    report = asyncio.run(
        run_scenario(scenario, directory / "crowd.yaml", RunOptions(report_dir=directory))
    )
    wall = time.monotonic() - t0
    left = psutil.Process().children(recursive=True)
    uss = [a.memory.uss_peak_bytes for a in report.agents if a.memory.uss_peak_bytes]
    lag = report.coordinator.loop_lag_by_phase if report.coordinator else {}
    sampler = report.coordinator.sampler if report.coordinator else None
    return {
        "agents": agents,
        "verdict": report.verdict.value,
        "reasons": report.verification.reasons,
        "ready_s": round(report.timings.launch_s, 3),
        "script_s": round(report.timings.script_s, 3),
        "teardown_s": round(report.timings.teardown_s, 3),
        "wall_s": round(wall, 3),
        "processes_left": len(left),
        "messages_routed": report.bus.messages_routed,
        "uss_p50_mib": round(statistics.median(uss) / 2**20, 2) if uss else None,
        "coordinator_peak_rss_mib": round((report.coordinator.peak_rss_bytes or 0) / 2**20, 1)
        if report.coordinator
        else None,
        "loop_lag_max_ms": {phase: s.max_ms for phase, s in lag.items()},
        "sampler": sampler.model_dump() if sampler else None,
    }


def _checks(run: dict[str, Any]) -> dict[str, tuple[object, str, bool]]:
    n = run["agents"]
    checks: dict[str, tuple[object, str, bool]] = {
        "verdict": (run["verdict"], "PASS", run["verdict"] == Verdict.PASS.value),
        "processes_left": (run["processes_left"], "0", run["processes_left"] == 0),
    }
    script_lag = run["loop_lag_max_ms"].get("script")
    if script_lag is not None:
        checks["script_loop_lag_max_ms"] = (
            script_lag, f"<= {TARGET_LAG_MS:g} ms", script_lag <= TARGET_LAG_MS
        )  # fmt: skip
    if n in TARGET_READY_S:
        target = TARGET_READY_S[n]
        checks["ready_s"] = (run["ready_s"], f"<= {target:g} s", run["ready_s"] <= target)
    if n in TARGET_TEARDOWN_S:
        target = TARGET_TEARDOWN_S[n]
        checks["teardown_s"] = (run["teardown_s"], f"<= {target:g} s", run["teardown_s"] <= target)
    return checks


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.crowd",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--counts", default="256", help="agents per run, comma-separated (even)")
    p.add_argument("--json", action="store_true", help="print one JSON object, no table")
    args = p.parse_args(argv)
    try:
        args.counts = [int(c) for c in args.counts.split(",")]
    except ValueError:
        p.error(f"--counts takes numbers of agents, comma-separated, not {args.counts!r}")
    if any(c < 2 or c % 2 for c in args.counts):
        p.error("--counts: each count must be even and at least 2 (agents come in pairs)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    runs: list[dict[str, Any]] = []
    missed: list[str] = []
    for count in args.counts:
        with tempfile.TemporaryDirectory(prefix="bench-crowd-") as tmp:
            run = run_one(count, Path(tmp))
        checks = _checks(run)
        run["targets"] = {k: {"value": v, "target": t, "met": m} for k, (v, t, m) in checks.items()}
        missed += [f"{count} {k}" for k, (_, _, met) in checks.items() if not met]
        runs.append(run)
    if args.json:
        print(json.dumps({"benchmark": "crowd", "runs": runs, "missed": missed}))
        return 1 if any(r["verdict"] != Verdict.PASS.value for r in runs) else 0
    for run in runs:
        n = run["agents"]
        s = run["sampler"] or {}
        rows = [
            Row("verdict", run["verdict"], "PASS", status=verdict(run["verdict"] == "PASS")),
            Row("launch -> all READY", f"{run['ready_s']:.3f} s"),
            Row("script (roll call, pairs)", f"{run['script_s']:.3f} s"),
            Row("teardown", f"{run['teardown_s']:.3f} s"),
            Row("messages routed", str(run["messages_routed"])),
            Row("agent USS, median of peaks", f"{run['uss_p50_mib']} MiB"),
            Row("coordinator peak RSS", f"{run['coordinator_peak_rss_mib']} MiB"),
            Row("loop lag max by phase", ", ".join(
                f"{phase} {ms} ms" for phase, ms in run["loop_lag_max_ms"].items())),
            Row("sampler: rounds / CPU / longest round",
                f"{s.get('rounds')} / {s.get('cpu_s')} s / {s.get('max_round_s')} s"),
            Row("sampler: interval configured -> at end",
                f"{s.get('interval_s')} -> {s.get('final_interval_s')} s"),
            Row("processes left", str(run["processes_left"])),
        ]  # fmt: skip
        for key, target in run["targets"].items():
            rows.append(Row(f"target {key}", str(target["value"]), target["target"],
                            status=verdict(target["met"])))  # fmt: skip
        print_table(f"crowd of {n} agents", rows)
        print()
    print(f"missed: {', '.join(missed) or 'none'}")
    return 1 if any(r["verdict"] != Verdict.PASS.value for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
