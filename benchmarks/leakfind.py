"""`python -m benchmarks.leakfind`: does the soak's leak verdict find known leaks, and only them?

One soak (`--duration`, default 90 s, warm-up a third of it) of a driver and, each in its own dm
room, one agent per rate in `--rates` (bytes kept per message by examples/plugins/leaky.py) and
`--clean` agents that keep nothing. Every pass the driver messages each agent once and waits for
its answer, then pauses 100 ms. Per agent (`--json` for one JSON object):

- the injected rate: bytes per message times messages per hour (passes over the soak's time);
- the USS verdict, the Theil-Sen slope and its 95% interval, and `detectable_per_h`;
- found: LEAK for a leaky agent whose injected rate is above what the run could detect; for a
  clean agent, anything but LEAK. **Target: every leak above the detectable rate found, no
  clean agent LEAK.**
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._common import REPO_ROOT, Row, print_table, verdict
from orchestrator.scenario.durations import Duration

MIB = 1024 * 1024


def scenario(rates: Sequence[int], clean: int) -> str:
    agents = [(f"leak{i}", rate) for i, rate in enumerate(rates)]
    agents += [(f"clean{i}", 0) for i in range(clean)]
    lines = ["name: leakfind", "timeout: 30s", "agents:", "  - id: driver"]
    for name, rate in agents:
        lines += [f"  - id: {name}", "    memory: {max_per_room: 32}"]
        if rate:
            lines += ["    plugins: [plugins.leaky:plugin]",
                      f"    settings: {{leak.bytes_per_message: {rate}}}"]  # fmt: skip
        lines += ['    model: {rules: [{when: {regex: "^tick"}, reply: tock}]}']
    lines += ["rooms:"]
    lines += [f"  - {{id: r-{name}, type: dm, members: [driver, {name}]}}" for name, _ in agents]
    lines += ["script:"]
    for name, _ in agents:
        lines += [
            f"  - send: {{agent: driver, room: r-{name}, text: tick}}",
            f"  - wait_for: {{message: {{from: {name}, equals: tock}}, timeout: 5s}}",
        ]
    lines += ["  - pause: 100ms", "assertions:", "  - {memory: {agent: driver, peak_rss: 1GiB}}"]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.leakfind", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--rates", default="1024,4096,16384,65536",
                   help="bytes leaked per message, one leaky agent each")  # fmt: skip
    p.add_argument("--clean", type=int, default=2, help="agents that leak nothing")
    p.add_argument("--duration", default="90s")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    rates = [int(r) for r in args.rates.split(",")]
    duration = Duration.parse(args.duration).seconds
    with tempfile.TemporaryDirectory(prefix="bench-leakfind-") as tmp:
        folder = Path(tmp)
        (folder / "plugins").symlink_to(REPO_ROOT / "examples" / "plugins")
        path = folder / "leakfind.yaml"
        path.write_text(scenario(rates, args.clean), encoding="utf-8")
        report_dir = folder / "report"
        command = [
            str(Path(sys.executable).parent / "scenario-runner"), "soak", str(path),
            "--duration", f"{duration}s", "--warmup", f"{duration / 3}s",
            "--sample-interval", "250ms", "--report-dir", str(report_dir), "-q",
        ]  # fmt: skip
        subprocess.run(command, capture_output=True, check=False)
        report = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
    soak = report["soak"]
    per_h = soak["iterations"] / soak["elapsed_s"] * 3600  # messages an hour, per agent
    results: list[dict[str, Any]] = []
    for agent in report["agents"]:
        if agent["id"] == "driver":
            continue
        uss = next(x for x in agent["memory"]["leak"] if x["series"] == "uss")
        rate = rates[int(agent["id"][4:])] if agent["id"].startswith("leak") else 0
        injected = rate * per_h
        detectable = uss["detectable_per_h"]
        leaky = rate > 0
        found = (
            uss["verdict"] == "leak"
            if leaky and detectable is not None and injected > detectable
            else (uss["verdict"] != "leak" if not leaky else None)
        )
        results.append({
            "agent": agent["id"], "injected_per_h": injected, "verdict": uss["verdict"],
            "slope_per_h": uss["slope_per_h"], "low_per_h": uss["slope_low_per_h"],
            "high_per_h": uss["slope_high_per_h"], "detectable_per_h": detectable,
            "found": found,
        })  # fmt: skip
    missed = [r["agent"] for r in results if r["found"] is False]
    if args.json:
        print(json.dumps({"benchmark": "leakfind", "passes": soak["iterations"],
                          "agents": results, "missed": missed}))  # fmt: skip
        return 0

    def mib(x: float | None) -> str:
        return "-" if x is None else f"{x / MIB:,.1f}"

    rows = [
        Row(f"{r['agent']}: injected {mib(r['injected_per_h'])} MiB/h",
            f"{r['verdict']}; slope {mib(r['slope_per_h'])} [{mib(r['low_per_h'])},"
            f" {mib(r['high_per_h'])}]; detectable {mib(r['detectable_per_h'])} MiB/h",
            "LEAK" if r["injected_per_h"] else "not LEAK",
            status="" if r["found"] is None else verdict(r["found"]))
        for r in results
    ]  # fmt: skip
    print_table(f"leakfind: {soak['iterations']} passes in {soak['elapsed_s']:.0f}s", rows)
    print(f"missed: {', '.join(missed) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
