"""`python -m benchmarks.scenario`: real scenarios through the installed runner, at two sizes.

Two scenarios, each run by the installed `scenario-runner` command (a child process, with real
agent processes: rules model, SQLite store), at every size in `--sizes` (messages):

- *ping/pong*: 32 agents in 16 rooms of two, 32 actor timelines at once; each sends `ping` to
  its room and waits for its partner's `pong`, round after round.
- *burst*: 32 agents, 16 senders and 16 echoes in rooms of two; each sender's timeline sends
  all its pings without waiting, then one `wait_for` with `count` collects every `pong`. That
  wait starts far back in the log, which is what stalled the loop before the event core was
  indexed.

Each run ends with a `message` assertion that counts every pong, so a lost message is a FAIL.

Figures per scenario and size (`--json` for one JSON object):

- *messages/s*: messages routed (every `message.sent`) over the script's time.
- *CPU per message, whole tree*: user + system CPU of the runner and every agent it reaped
  (`wait4`'s rusage of the runner covers its waited-for descendants), over the messages.
  **Target: <= 300 us.** Start-up is in it; *script only* leaves it out (each agent's CPU
  from its `ready` sample to its `before-stop` one, and the coordinator's script phase), which
  is the message path's cost.
- *coordinator CPU per message*, *coordinator peak RSS*, *event loop lag p99 / max*: from the
  run's report (`coordinator` block: the runner's own rusage, VmHWM and a probe timer in its
  loop). **Targets: lag <= 50 ms; peak RSS at the largest size within 10% of the smallest.**
- *cost ratio*: CPU per message at the largest size over the smallest. **Target: <= 1.2.**
- ping/pong throughput. **Target: >= 5,000 messages/s.**

A run that does not PASS makes the benchmark exit 1: its figures would measure a broken run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._common import Row, print_table, verdict

PAIRS = 16
TARGET_CPU_US = 300.0
TARGET_RATIO = 1.2
TARGET_LAG_MS = 50.0
TARGET_RSS_GROWTH = 1.10
TARGET_PINGPONG_RATE = 5000.0


def _agents_and_rooms(left: str, right: str, right_replies: bool, left_replies: bool) -> list[str]:
    lines = ["agents:"]
    for i in range(PAIRS):
        for name, replies in ((f"{left}{i}", left_replies), (f"{right}{i}", right_replies)):
            if replies:
                lines.append(f"  - id: {name}")
                lines.append('    model: {rules: [{when: {regex: "^ping$"}, reply: pong}]}')
            else:
                lines.append(f"  - id: {name}")
    lines.append("rooms:")
    lines += [f"  - {{id: r{i}, members: [{left}{i}, {right}{i}]}}" for i in range(PAIRS)]
    return lines


def pingpong_scenario(messages: int) -> str:
    """32 timelines; each round is a ping and a pong."""
    rounds = max(1, messages // (2 * 2 * PAIRS))
    lines = ["name: bench-pingpong", "timeout: 1h", *_agents_and_rooms("a", "b", True, True)]
    lines.append("actors:")
    for i in range(PAIRS):
        for me, other in ((f"a{i}", f"b{i}"), (f"b{i}", f"a{i}")):
            lines += [
                f"  - agent: {me}",
                "    script:",
                f"      - repeat: {{count: {rounds}, steps: [",
                f"          {{send: {{room: r{i}, text: ping}}}},",
                f"          {{wait_for: {{message: {{from: {other}, equals: pong}},",
                "                        timeout: 60s}}]}",
            ]
    lines.append("assertions:")
    lines += [
        f"  - message: {{from: {who}{i}, equals: pong, count: {{exactly: {rounds}}}}}"
        for i in range(PAIRS)
        for who in ("a", "b")
    ]
    return "\n".join(lines) + "\n"


def burst_scenario(messages: int) -> str:
    """16 senders send all their pings, then wait for every pong with one counted wait."""
    per_sender = max(1, messages // (2 * PAIRS))
    lines = ["name: bench-burst", "timeout: 1h", *_agents_and_rooms("s", "e", True, False)]
    lines.append("actors:")
    for i in range(PAIRS):
        lines += [
            f"  - agent: s{i}",
            "    script:",
            f"      - repeat: {{count: {per_sender},",
            f"                  steps: [{{send: {{room: r{i}, text: ping}}}}]}}",
            f"      - wait_for: {{message: {{from: e{i}, equals: pong}}, count: {per_sender},"
            " timeout: 10m}",
        ]
    lines.append("assertions:")
    lines += [
        f"  - message: {{from: e{i}, equals: pong, count: {{exactly: {per_sender}}}}}"
        for i in range(PAIRS)
    ]
    return "\n".join(lines) + "\n"


SCENARIOS = {"pingpong": pingpong_scenario, "burst": burst_scenario}


def _runner() -> str:
    beside = Path(sys.executable).parent / "scenario-runner"
    found = str(beside) if beside.exists() else shutil.which("scenario-runner")
    if found is None:
        raise SystemExit("scenario-runner is not installed (pip install -e .)")
    return found


def run_one(name: str, messages: int, folder: Path) -> dict[str, Any]:
    source = folder / f"{name}-{messages}.yaml"
    source.write_text(SCENARIOS[name](messages), encoding="utf-8")
    report_dir = folder / f"{name}-{messages}"
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [_runner(), "run", str(source), "--report-dir", str(report_dir), "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, rusage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    report_file = report_dir / "report.json"
    if not report_file.exists():
        raise SystemExit(f"{name} at {messages} messages: no report (exit {proc.returncode})"
                         f"\n{stderr[-2000:]}")  # fmt: skip
    report = json.loads(report_file.read_text(encoding="utf-8"))
    if report["verdict"] != "PASS":
        reasons = report["verification"]["reasons"][:5]
        raise SystemExit(f"{name} at {messages} messages was {report['verdict']}: {reasons}"
                         f"\n{stderr[-2000:]}")  # fmt: skip
    routed = report["bus"]["messages_routed"]
    script_cpu = _script_cpu(report_dir / "events.jsonl", report.get("coordinator") or {})
    script_s = report["timings"]["script_s"]
    coordinator = report.get("coordinator") or {}
    lag = coordinator.get("loop_lag") or {}
    phases = coordinator.get("loop_lag_by_phase") or {}
    script_lag = phases.get("script") or {}
    tree_cpu = rusage.ru_utime + rusage.ru_stime
    coord_cpu = coordinator.get("cpu_user_s", 0.0) + coordinator.get("cpu_system_s", 0.0)
    return {
        "scenario": name,
        "messages": routed,
        "events": report["events"],
        "script_s": round(script_s, 3),
        "wall_s": round(wall, 3),
        "msgs_per_s": round(routed / script_s, 1) if script_s > 0 else 0.0,
        "cpu_us_per_msg": round(tree_cpu / routed * 1e6, 1),
        "script_cpu_us_per_msg": round(script_cpu / routed * 1e6, 1),
        "coordinator_cpu_us_per_msg": round(coord_cpu / routed * 1e6, 1),
        "coordinator_peak_rss_mib": round(coordinator.get("peak_rss_bytes", 0) / 2**20, 1),
        "loop_lag_p99_ms": lag.get("p99_ms"),
        "loop_lag_max_ms": lag.get("max_ms"),
        "script_loop_lag_p99_ms": script_lag.get("p99_ms"),
        "script_loop_lag_max_ms": script_lag.get("max_ms"),
    }


def _script_cpu(events_file: Path, coordinator: dict[str, Any]) -> float:
    """CPU seconds of the whole tree during the script alone (start-up and teardown left
    out): each agent's CPU from its `ready` sample to its `before-stop` one, plus the
    coordinator's script phase."""
    at: dict[tuple[str, str], float] = {}
    with events_file.open(encoding="utf-8") as lines:
        for line in lines:
            if '"kind":"sample"' not in line:
                continue
            event = json.loads(line)
            if event["reason"] in ("ready", "before-stop"):
                at[(event["agent"], event["reason"])] = event["cpu_s"]
    agents = {agent for agent, _ in at}
    total = sum(at.get((a, "before-stop"), 0.0) - at.get((a, "ready"), 0.0) for a in agents)
    return total + (coordinator.get("cpu_s_by_phase") or {}).get("script", 0.0)


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.scenario",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--sizes",
        default="20000,200000",
        help="messages per run, comma-separated; the first is the baseline",
    )
    p.add_argument("--scenarios", default="pingpong,burst", help="which scenarios")
    p.add_argument("--json", action="store_true", help="print one JSON object, no table")
    args = p.parse_args(argv)
    try:
        args.sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        p.error(f"--sizes takes numbers of messages, comma-separated, not {args.sizes!r}")
    if any(size < 4 * PAIRS for size in args.sizes):
        p.error(f"--sizes: each size must be at least {4 * PAIRS} (one round per timeline)")
    args.scenarios = args.scenarios.split(",")
    if unknown := set(args.scenarios) - set(SCENARIOS):
        p.error(f"unknown scenario(s) {sorted(unknown)}; known: {sorted(SCENARIOS)}")
    return args  # fmt: skip


def _checks(runs: list[dict[str, Any]]) -> dict[str, tuple[float, str, bool]]:
    """(value, target, met) per named target, for one scenario's runs (smallest first)."""
    first, last = runs[0], runs[-1]
    checks: dict[str, tuple[float, str, bool]] = {}
    worst_cpu = max(r["cpu_us_per_msg"] for r in runs)
    checks["cpu_us_per_msg"] = (worst_cpu, f"<= {TARGET_CPU_US:g} us", worst_cpu <= TARGET_CPU_US)
    lags = [r["loop_lag_max_ms"] for r in runs if r["loop_lag_max_ms"] is not None]
    worst_lag = max(lags) if lags else float("inf")
    checks["loop_lag_max_ms"] = (worst_lag, f"<= {TARGET_LAG_MS:g} ms", worst_lag <= TARGET_LAG_MS)
    if len(runs) > 1:
        ratio = last["cpu_us_per_msg"] / first["cpu_us_per_msg"]
        checks["cost_ratio"] = (round(ratio, 3), f"<= {TARGET_RATIO:g}", ratio <= TARGET_RATIO)
        base_rss = first["coordinator_peak_rss_mib"] or float("nan")
        rss = last["coordinator_peak_rss_mib"] / base_rss
        checks["rss_ratio"] = (round(rss, 3), f"<= {TARGET_RSS_GROWTH:g}", rss <= TARGET_RSS_GROWTH)
    if first["scenario"] == "pingpong":
        slowest = min(r["msgs_per_s"] for r in runs)
        checks["msgs_per_s"] = (slowest, f">= {TARGET_PINGPONG_RATE:g}",
                                slowest >= TARGET_PINGPONG_RATE)  # fmt: skip
    return checks


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    results: dict[str, Any] = {"benchmark": "scenario", "sizes": args.sizes, "scenarios": {}}
    missed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-scenario-") as tmp:
        for name in args.scenarios:
            runs = [run_one(name, size, Path(tmp)) for size in args.sizes]
            checks = _checks(runs)
            missed += [f"{name} {key}" for key, (_, _, met) in checks.items() if not met]
            results["scenarios"][name] = {
                "runs": runs,
                "targets": {k: {"value": v, "target": t, "met": m}
                            for k, (v, t, m) in checks.items()},
            }  # fmt: skip
    results["missed"] = missed
    if args.json:
        print(json.dumps(results))
        return 0
    for name, entry in results["scenarios"].items():
        runs = entry["runs"]
        base = runs[0]
        rows = []
        for r in runs:
            ratio = r["cpu_us_per_msg"] / base["cpu_us_per_msg"]
            rows += [
                Row(f"{r['messages']} msgs: messages/s", f"{r['msgs_per_s']:.0f}",
                    ratio=f"{r['msgs_per_s'] / base['msgs_per_s']:.2f}x"),
                Row(f"{r['messages']} msgs: CPU/msg, whole tree", f"{r['cpu_us_per_msg']:.0f} us",
                    target=f"<= {TARGET_CPU_US:g} us", ratio=f"{ratio:.2f}x",
                    status=verdict(r["cpu_us_per_msg"] <= TARGET_CPU_US)),
                Row(f"{r['messages']} msgs: CPU/msg, whole tree, script only",
                    f"{r['script_cpu_us_per_msg']:.0f} us"),
                Row(f"{r['messages']} msgs: coordinator CPU/msg",
                    f"{r['coordinator_cpu_us_per_msg']:.0f} us"),
                Row(f"{r['messages']} msgs: coordinator peak RSS",
                    f"{r['coordinator_peak_rss_mib']:.1f} MiB"),
                Row(f"{r['messages']} msgs: loop lag p99 / max, whole run",
                    f"{r['loop_lag_p99_ms']} / {r['loop_lag_max_ms']} ms",
                    target=f"max <= {TARGET_LAG_MS:g} ms"),
                Row(f"{r['messages']} msgs: loop lag p99 / max, script",
                    f"{r['script_loop_lag_p99_ms']} / {r['script_loop_lag_max_ms']} ms"),
            ]  # fmt: skip
        for key, target in entry["targets"].items():
            rows.append(Row(f"target {key}", str(target["value"]), target["target"],
                            status=verdict(target["met"])))  # fmt: skip
        print_table(f"scenario {name}: sizes {args.sizes}", rows)
        print()
    print(f"missed: {', '.join(missed) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
