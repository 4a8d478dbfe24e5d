"""`python -m benchmarks.steps`: the runner's cost per script step, and whether it stays flat.

One real scenario run (`run_scenario`: real agent processes, the bus, the event log) with two
blocks, one after the other:

1. *baseline*: `--rounds` `action` steps running the built-in NONE on an agent: a round trip
   through the bus to another process and back, the cheapest step that crosses a process.
2. *measured*: `--rounds` rounds of send -> wait_for the reply -> an inline `assert` on every
   reply so far (message count and content). The event log grows by about a dozen events per
   round, so an assert that re-read the log would get slower round by round.

Figures, from the steps' durations in the report (`--json` for one JSON object):

- per-step p50 of the `action`, `send`, `wait_for` and `assert` steps. **Target (DESIGN.md):
  runner overhead per step <= 2 ms**, checked on the `assert` step, the one step that is all
  runner (no round trip). Ratio: to the `action` baseline.
- the `assert` step's mean duration in the last tenth of the rounds over the first tenth (from
  the `step.finished` events). Flat is 1; an assert that re-reads the log grows with it.
  **Target: <= 2.**
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from benchmarks._common import Row, print_table, verdict
from orchestrator.report.model import Verdict
from orchestrator.run.runner import RunOptions, run_scenario
from orchestrator.scenario.loader import load_scenario_text

TARGET_STEP_MS = 2.0
TARGET_GROWTH = 2.0

SCENARIO = """\
name: bench-steps
timeout: 1h
agents:
  - id: bot
    model:
      rules:
        - when: {{contains: ping}}
          reply: pong
  - id: user
rooms:
  - {{id: r, members: [bot, user]}}
script:
  - id: baseline
    repeat:
      count: {rounds}
      steps:
        - id: action
          action: {{agent: bot, name: NONE}}
  - id: measured
    repeat:
      count: {rounds}
      steps:
        - id: send
          send: {{agent: user, room: r, text: ping}}
        - id: wait
          wait_for: {{message: {{from: bot, room: r}}, timeout: 10s}}
        - id: assert
          assert: {{id: every-reply-so-far, message: {{from: bot, room: r, equals: pong}}}}
assertions:
  - {{message: {{from: bot, room: r, equals: pong, count: {{exactly: {rounds}}}}}}}
"""


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.steps",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--rounds", type=int, default=2000, help="rounds of each block")
    p.add_argument("--json", action="store_true", help="print one JSON object, no table")
    args = p.parse_args(argv)
    if args.rounds < 10:
        p.error(f"--rounds must be at least 10 (a tenth of them is compared), got {args.rounds}")
    return args


def _assert_durations(events_file: Path) -> list[float]:
    durations = []
    with events_file.open(encoding="utf-8") as lines:
        for line in lines:
            event = json.loads(line)
            if event["kind"] == "step.finished" and event.get("step_id") == "assert":
                durations.append(float(event["duration_s"]))
    return durations


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    scenario = load_scenario_text(SCENARIO.format(rounds=args.rounds), "bench-steps.yaml")
    with tempfile.TemporaryDirectory(prefix="bench-steps-") as folder:
        report = asyncio.run(
            run_scenario(scenario, Path(folder) / "bench-steps.yaml",
                         RunOptions(report_dir=Path(folder) / "report"))
        )  # fmt: skip
        if report.verdict is not Verdict.PASS:
            print(f"the benchmark's run was {report.verdict.value}: "
                  f"{report.verification.reasons}", file=sys.stderr)  # fmt: skip
            return 1
        asserts = _assert_durations(Path(report.events_file))
    p50_ms = {s.id: (s.p50_duration_s or 0.0) * 1000 for s in report.steps if s.id}
    tenth = max(1, len(asserts) // 10)
    first = statistics.mean(asserts[:tenth]) * 1000
    last = statistics.mean(asserts[-tenth:]) * 1000
    growth = last / first if first > 0 else float("inf")
    baseline = p50_ms["action"]
    result = {
        "benchmark": "steps",
        "rounds": args.rounds,
        "events": report.events,
        "step_p50_ms": {k: round(p50_ms[k], 4) for k in ("action", "send", "wait", "assert")},
        "assert_first_tenth_mean_ms": round(first, 4),
        "assert_last_tenth_mean_ms": round(last, 4),
        "assert_growth": round(growth, 3),
        "missed": [
            name
            for name, met in (
                ("assert step p50", p50_ms["assert"] <= TARGET_STEP_MS),
                ("assert growth", growth <= TARGET_GROWTH),
            )
            if not met
        ],
    }
    if args.json:
        print(json.dumps(result))
        return 0
    rows = [
        Row("action step p50 (baseline: a round trip)", f"{baseline:.3f} ms"),
        Row("send step p50", f"{p50_ms['send']:.3f} ms", ratio=f"{p50_ms['send'] / baseline:.2f}x"),
        Row("wait_for step p50", f"{p50_ms['wait']:.3f} ms",
            ratio=f"{p50_ms['wait'] / baseline:.2f}x"),
        Row("assert step p50 (all runner)", f"{p50_ms['assert']:.3f} ms",
            target=f"<= {TARGET_STEP_MS:g} ms", ratio=f"{p50_ms['assert'] / baseline:.2f}x",
            status=verdict(p50_ms["assert"] <= TARGET_STEP_MS)),
        Row("assert mean, last tenth / first tenth", f"{growth:.2f}",
            target=f"<= {TARGET_GROWTH:g}", ratio=f"{first:.3f} -> {last:.3f} ms",
            status=verdict(growth <= TARGET_GROWTH)),
    ]  # fmt: skip
    print_table(f"runner cost per step: {args.rounds} rounds, {report.events} events", rows)
    print(f"missed: {', '.join(result['missed']) or 'none'}")  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
