"""`python -m benchmarks.soak`: what a soak costs and whether it stays bounded.

For each duration in `--durations` (default `2m`), one soak of a paced scenario
(`paced_scenario`: a driver pings each of N-1 echo agents in its own dm room, waits for each
pong, pauses 500 ms, over and over), run by the installed `scenario-runner soak` in a child
process. Figures per soak (`--json` for one JSON object):

- the sampler's own CPU as a share of one core over the soak (`coordinator.sampler.cpu_s` over
  the script's time). **Target: <= 2% with 64 agents** (`--agents 64`);
- the size of report.json and of events.jsonl, and their ratio to the first duration's.
  **Target: report.json at the longest duration within 2x of the shortest**;
- the coordinator's RSS at the end of the warm-up and at the end, and its leak verdict.
  **Target: flat (its RSS verdict not LEAK)**;
- the echo agents' verdicts (they are clean: any LEAK is a false one).

`--durations 10m,60m` is the issue's comparison (70 minutes); the default is a quick look.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._common import Row, print_table, verdict
from orchestrator.scenario.durations import Duration

TARGET_SAMPLER_SHARE = 0.02
TARGET_REPORT_RATIO = 2.0


def paced_scenario(agents: int) -> str:
    echoes = range(1, agents)
    lines = ["name: soak-paced", "timeout: 30s", "agents:", "  - id: driver"]
    for i in echoes:
        lines += [f"  - id: echo{i}", '    model: {rules: [{when: {regex: "^ping"}, reply: pong}]}']
    lines += ["rooms:"] + [
        f"  - {{id: r{i}, type: dm, members: [driver, echo{i}]}}" for i in echoes
    ]
    lines += ["script:"]
    for i in echoes:
        lines += [
            f"  - send: {{agent: driver, room: r{i}, text: ping}}",
            f"  - wait_for: {{message: {{from: echo{i}, equals: pong}}, timeout: 5s}}",
        ]
    lines += ["  - pause: 500ms", "assertions:", '  - {memory: {agent: "echo*", leak: none}}']
    return "\n".join(lines) + "\n"


def run_one(
    scenario: Path, duration_s: float, sample_interval: str, directory: Path
) -> dict[str, Any]:
    warmup_s = min(300.0, duration_s / 5)
    report_dir = directory / f"soak-{int(duration_s)}s"
    command = [
        str(Path(sys.executable).parent / "scenario-runner"), "soak", str(scenario),
        "--duration", f"{duration_s}s", "--warmup", f"{warmup_s}s",
        "--sample-interval", sample_interval, "--report-dir", str(report_dir), "-q",
    ]  # fmt: skip
    t0 = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.monotonic() - t0
    report_file = report_dir / "report.json"
    if not report_file.exists():
        raise SystemExit(f"soak of {duration_s:g}s left no report:\n{done.stderr[-2000:]}")
    return figures(report_dir, duration_s, wall)


def figures(report_dir: Path, duration_s: float, wall: float | None = None) -> dict[str, Any]:
    """The figures of a finished soak's report directory (also for soaks run by hand)."""
    report = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
    events = report_dir / "events.jsonl"
    coordinator = report.get("coordinator") or {}
    sampler = coordinator.get("sampler") or {}
    script_s = report["timings"]["script_s"] or 1.0
    warmup_s = (report.get("soak") or {}).get("warmup_s", 0.0)
    series = coordinator.get("rss_series") or []
    t0 = series[0][0] if series else 0.0
    after = [v for t, v in series if t - t0 >= warmup_s]
    rss_verdict = next(
        (x["verdict"] for x in coordinator.get("leak", []) if x["series"] == "rss"), None
    )
    echoes: Counter[str] = Counter(
        x["verdict"]
        for a in report["agents"]
        if a["id"].startswith("echo")
        for x in a["memory"]["leak"]
        if x["series"] in ("uss", "rss", "fds", "threads")
    )
    return {
        "duration_s": duration_s,
        "agents": len(report["agents"]),
        "verdict": report["verdict"],
        "iterations": (report.get("soak") or {}).get("iterations"),
        "wall_s": round(wall, 1) if wall is not None else None,
        "sampler_cpu_s": sampler.get("cpu_s"),
        "sampler_share": round(sampler.get("cpu_s", 0.0) / script_s, 4),
        "sampler_final_interval_s": sampler.get("final_interval_s"),
        "report_bytes": (report_dir / "report.json").stat().st_size,
        "events_bytes": events.stat().st_size if events.exists() else 0,
        "coordinator_rss_after_warmup_mib": round(after[0] / 2**20, 1) if after else None,
        "coordinator_rss_end_mib": round(after[-1] / 2**20, 1) if after else None,
        "coordinator_rss_verdict": rss_verdict,
        "echo_verdicts": dict(echoes),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--durations", default="2m", help="soak durations, comma-separated")
    p.add_argument("--agents", type=int, default=8, help="agents: a driver and N-1 echoes")
    p.add_argument("--sample-interval", default="1s")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    try:
        durations = [Duration.parse(d).seconds for d in args.durations.split(",")]
    except ValueError as exc:
        p.error(f"--durations: {exc}")
    if args.agents < 2:
        p.error("--agents: at least 2 (a driver and an echo)")
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        scenario = Path(tmp) / "paced.yaml"
        scenario.write_text(paced_scenario(args.agents), encoding="utf-8")
        runs = [run_one(scenario, d, args.sample_interval, Path(tmp)) for d in durations]
    base = runs[0]
    missed: list[str] = []
    for r in runs:
        if args.agents >= 64 and r["sampler_share"] > TARGET_SAMPLER_SHARE:
            missed.append(f"{r['duration_s']:g}s sampler_share")
        if r["coordinator_rss_verdict"] == "leak":
            missed.append(f"{r['duration_s']:g}s coordinator_rss")
    ratio = runs[-1]["report_bytes"] / base["report_bytes"]
    if len(runs) > 1 and ratio > TARGET_REPORT_RATIO:
        missed.append("report_ratio")
    if args.json:
        print(json.dumps({"benchmark": "soak", "runs": runs, "report_ratio": ratio,
                          "missed": missed}))  # fmt: skip
        return 0
    for r in runs:
        rows = [
            Row("verdict; passes", f"{r['verdict']}; {r['iterations']}"),
            Row("sampler CPU share of a core", f"{r['sampler_share']:.2%}",
                f"<= {TARGET_SAMPLER_SHARE:.0%} (64 agents)",
                status=verdict(r["sampler_share"] <= TARGET_SAMPLER_SHARE)
                if args.agents >= 64 else ""),
            Row("report.json / events.jsonl", f"{r['report_bytes']:,} / {r['events_bytes']:,} B",
                ratio=f"{r['report_bytes'] / base['report_bytes']:.2f}x"),
            Row("coordinator RSS after warm-up -> end",
                f"{r['coordinator_rss_after_warmup_mib']} -> {r['coordinator_rss_end_mib']} MiB"),
            Row("coordinator RSS verdict", str(r["coordinator_rss_verdict"]), "not leak",
                status=verdict(r["coordinator_rss_verdict"] != "leak")),
            Row("echo agents' verdicts", json.dumps(r["echo_verdicts"])),
        ]  # fmt: skip
        print_table(f"soak of {r['duration_s']:g}s, {r['agents']} agents", rows)
        print()
    print(f"missed: {', '.join(missed) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
