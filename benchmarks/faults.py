"""`python -m benchmarks.faults`: what faults cost and how fast they are seen.

Three figures, each measured in this run (issue 13's):

1. **kill -> failure**: a timeline runs a 20 s action in agent `a` (examples/plugins/faults.py
   STALL) while the script kills `a` (`fault: {kill: a}`); the figure is the time from the
   `fault.injected` event to that step failing. No target; it must fail at once, not at its
   timeout. (A `wait_for` a message from a killed agent is different: it goes on waiting, since
   a `restart` fault may bring the agent back; a crash or a hang fails it at once.)
2. **SIGSTOP -> hung**: with the default liveness settings (heartbeat 0.5 s, hung after 3.0 s),
   this process sends SIGSTOP to agent `a` (an outside stop, not a `stop` fault, which is planned
   and never hung) and times the `agent.hung` event. **Target: <= 4 s.**
3. **a bus fault that never fires**: the bus benchmark's agent-to-agent throughput with a drop
   fault in force that matches no message, against the same without it, alternating runs. The
   ratio is the cost of checking transmissions against a fault. No target.

Each of 1 and 2 is repeated `--runs` times (one full scenario run each, real processes); their
median and worst are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from pydantic import JsonValue

from benchmarks import bus
from benchmarks._common import REPO_ROOT, Row, print_table, verdict
from orchestrator.events import (
    AgentHung,
    AgentLaunched,
    Event,
    FaultInjected,
    StepFinished,
    StepStarted,
)
from orchestrator.run.runner import RunOptions, run_scenario
from orchestrator.scenario.loader import load_scenario_text

TARGET_HUNG_S = 4.0

KILL = """
name: kill-to-failure
timeout: 60s
agents: [{id: a, plugins: ["plugins.faults:plugin"], action_timeout: 30s}, {id: b}]
rooms: [{id: r, members: [a, b]}]
actors:
  - agent: b
    script:
      - {id: wait, action: {agent: a, name: STALL, params: {seconds: 20}, timeout: 25s}}
script:
  - wait_for: {event: {kind: action.started, agent: a}}
  - fault: {kill: a}
assertions:
  - message: {from: b, count: {max: 0}}
"""

STOPPED = """
name: sigstop-to-hung
timeout: 60s
agents: [{id: a}, {id: b}]
rooms: [{id: r, members: [a, b]}]
script:
  - {id: wait, wait_for: {message: {from: a, contains: never}, timeout: 30s}}
assertions:
  - message: {from: b, count: {max: 0}}
"""


async def _one(text: str, directory: Path, stop_agent: bool) -> float:
    """One run: seconds from the fault (the kill step's event, or our SIGSTOP) to what it
    must cause (the wait failing, or agent.hung)."""
    marks: dict[str, float] = {}
    pids: dict[str, int] = {}

    def probe(event: Event) -> None:
        now = time.monotonic()
        if isinstance(event, AgentLaunched):
            pids[event.agent or ""] = event.pid
        elif isinstance(event, FaultInjected) and event.fault == "kill":
            marks.setdefault("fault", now)
        elif isinstance(event, StepFinished) and event.step_id == "wait":
            marks.setdefault("failed", now)
        elif isinstance(event, AgentHung):
            marks.setdefault("hung", now)
        if stop_agent and "fault" not in marks and isinstance(event, StepStarted):
            os.kill(pids["a"], signal.SIGSTOP)
            marks["fault"] = time.monotonic()

    scenario = load_scenario_text(text, "bench.yaml")
    source = REPO_ROOT / "examples" / "bench-faults.yaml"  # plugins.faults from examples/
    await run_scenario(scenario, source, RunOptions(report_dir=directory), probe)
    end = marks.get("hung" if stop_agent else "failed")
    if end is None or "fault" not in marks:
        raise RuntimeError(f"the run did not show what it should: {marks}")
    return end - marks["fault"]


def measure(text: str, runs: int, stop_agent: bool) -> list[float]:
    out = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="sr-bench-faults-") as folder:
            out.append(asyncio.run(_one(text, Path(folder), stop_agent)))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.faults", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--runs", type=int, default=5, help="scenario runs for each of 1 and 2")
    p.add_argument("--messages", type=int, default=20_000, help="per throughput run (3)")
    p.add_argument("--pairs", type=int, default=2, help="throughput measurements with and without")
    p.add_argument("--json", action="store_true", help="print one JSON object, no table")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.runs < 1 or args.pairs < 1 or args.messages < 1:
        p.error("--runs, --pairs and --messages must be at least 1")
    kill = measure(KILL, args.runs, stop_agent=False)
    hung = measure(STOPPED, args.runs, stop_agent=True)
    opts = bus.parse_args(["--messages", str(args.messages), "--repeat", "3"])
    plain, faulted = [], []
    for _ in range(args.pairs):  # alternating, so that drift of the machine hits both alike
        plain.append(asyncio.run(bus.measure_agents(opts)).throughput)
        faulted.append(asyncio.run(bus.measure_agents(opts, idle_fault=True)).throughput)
    ratio = statistics.median(faulted) / statistics.median(plain)
    figures: dict[str, JsonValue] = {
        "benchmark": "faults",
        "runs": args.runs,
        "kill_to_failure_s": [round(x, 4) for x in kill],
        "sigstop_to_hung_s": [round(x, 4) for x in hung],
        "throughput_no_fault_msgs_per_s": [round(x, 1) for x in plain],
        "throughput_idle_fault_msgs_per_s": [round(x, 1) for x in faulted],
        "idle_fault_throughput_ratio": round(ratio, 4),
        "missed": [] if max(hung) <= TARGET_HUNG_S else ["sigstop_to_hung_s"],
    }
    if args.json:
        print(json.dumps(figures))
        return 0
    print_table(
        f"faults ({args.runs} runs each; throughput: {args.pairs} pairs of 3 runs)",
        [
            Row("kill -> the action on it fails, median", f"{statistics.median(kill):.3f} s"),
            Row("kill -> the action on it fails, worst", f"{max(kill):.3f} s"),
            Row("SIGSTOP -> hung, median", f"{statistics.median(hung):.3f} s",
                f"<= {TARGET_HUNG_S:g} s", "-", verdict(statistics.median(hung) <= TARGET_HUNG_S)),
            Row("SIGSTOP -> hung, worst", f"{max(hung):.3f} s", f"<= {TARGET_HUNG_S:g} s", "-",
                verdict(max(hung) <= TARGET_HUNG_S)),
            Row("throughput, no fault (baseline)", f"{statistics.median(plain):,.0f} msg/s"),
            Row("throughput, a fault that never fires", f"{statistics.median(faulted):,.0f} msg/s",
                "-", f"{ratio:.3f}x"),
        ],
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
