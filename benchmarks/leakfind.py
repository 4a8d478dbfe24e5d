"""`python -m benchmarks.leakfind`: does the soak's leak verdict find known leaks, and only them?

`--soaks N` soaks (default 1; `--duration`, default 90 s, warm-up a third of it) of a driver
and, each in its own dm room, one agent per rate in `--rates` (bytes kept per message by
examples/plugins/leaky.py), `--clean` agents that keep nothing, and `--warming` agents that
fill an 8 MiB cache in their first 5 seconds and then keep it (examples/plugins/warming.py).
Every pass the driver messages each agent once and waits for its answer, then pauses 100 ms.
Per agent and soak (`--json` for one JSON object):

- the injected rate: bytes per message times messages per hour (passes over the soak's time);
- the USS verdict, the Theil-Sen slope and its 95% interval, and `detectable_per_h`;
- found: LEAK for a leaky agent whose injected rate is above what the run could detect, with
  the locating pass naming leaky.py's `_HOARD.append` line as the top site; for a clean or
  warming agent, anything but LEAK. **Target: every leak above the detectable rate found at
  its line, no clean or warming agent LEAK over all the soaks.**

Over several soaks the table sums up per agent: how many soaks found it, and the verdicts.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._common import REPO_ROOT, Row, print_table, verdict
from orchestrator.scenario.durations import Duration

MIB = 1024 * 1024


LEAKY = REPO_ROOT / "examples" / "plugins" / "leaky.py"
HOARD_LINE = next(
    i for i, line in enumerate(LEAKY.read_text().splitlines(), 1) if "_HOARD.append" in line
)
WARMING = "{warm.blocks: 32, warm.block_bytes: 262144, warm.seconds: 5}"


def scenario(rates: Sequence[int], clean: int, warming: int = 0) -> str:
    agents = [(f"leak{i}", str(rate)) for i, rate in enumerate(rates)]
    agents += [(f"clean{i}", "") for i in range(clean)]
    agents += [(f"warming{i}", "warming") for i in range(warming)]
    lines = ["name: leakfind", "timeout: 30s", "agents:", "  - id: driver"]
    for name, kind in agents:
        lines += [f"  - id: {name}", "    memory: {max_per_room: 32}"]
        if kind:
            if kind == "warming":
                lines += ["    plugins: [plugins.warming:plugin]", f"    settings: {WARMING}"]
            else:
                lines += ["    plugins: [plugins.leaky:plugin]",
                          f"    settings: {{leak.bytes_per_message: {kind}}}"]  # fmt: skip
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


def soak_once(
    rates: Sequence[int], clean: int, warming: int, duration: float
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One soak: its `soak` report section and a result per agent (the driver left out)."""
    with tempfile.TemporaryDirectory(prefix="bench-leakfind-") as tmp:
        folder = Path(tmp)
        (folder / "plugins").symlink_to(REPO_ROOT / "examples" / "plugins")
        path = folder / "leakfind.yaml"
        path.write_text(scenario(rates, clean, warming), encoding="utf-8")
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
        sites = (agent["memory"].get("trace") or {}).get("sites") or []
        site = f"{Path(sites[0]['file']).name}:{sites[0]['line']}" if sites else None
        if rate == 0:
            found: bool | None = uss["verdict"] != "leak"
        elif detectable is not None and injected > detectable:
            found = uss["verdict"] == "leak" and site == f"leaky.py:{HOARD_LINE}"
        else:
            found = None  # below what this run could detect: not a test of it
        results.append({
            "agent": agent["id"], "injected_per_h": injected, "verdict": uss["verdict"],
            "slope_per_h": uss["slope_per_h"], "low_per_h": uss["slope_low_per_h"],
            "high_per_h": uss["slope_high_per_h"], "detectable_per_h": detectable,
            "site": site, "found": found,
        })  # fmt: skip
    return soak, results


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.leakfind", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--rates", default="1024,4096,16384,65536",
                   help="bytes leaked per message, one leaky agent each")  # fmt: skip
    p.add_argument("--clean", type=int, default=2, help="agents that leak nothing")
    p.add_argument("--warming", type=int, default=1,
                   help="agents that fill 8 MiB in the warm-up, then stay flat")  # fmt: skip
    p.add_argument("--duration", default="90s")
    p.add_argument("--soaks", type=int, default=1, help="soaks to run, one after another")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    rates = [int(r) for r in args.rates.split(",") if r]
    duration = Duration.parse(args.duration).seconds
    runs = [soak_once(rates, args.clean, args.warming, duration) for _ in range(args.soaks)]
    missed = sorted({r["agent"] for _, results in runs for r in results if r["found"] is False})
    if args.json:
        print(json.dumps({"benchmark": "leakfind", "soaks": [
            {"passes": soak["iterations"], "agents": results} for soak, results in runs
        ], "missed": missed}))  # fmt: skip
        return 0

    def mib(x: float | None) -> str:
        return "-" if x is None else f"{x / MIB:,.1f}"

    if len(runs) == 1:
        soak, results = runs[0]
        rows = [
            Row(f"{r['agent']}: injected {mib(r['injected_per_h'])} MiB/h",
                f"{r['verdict']}; slope {mib(r['slope_per_h'])} [{mib(r['low_per_h'])},"
                f" {mib(r['high_per_h'])}]; detectable {mib(r['detectable_per_h'])} MiB/h;"
                f" site {r['site'] or '-'}",
                f"LEAK at leaky.py:{HOARD_LINE}" if r["injected_per_h"] else "not LEAK",
                status="" if r["found"] is None else verdict(r["found"]))
            for r in results
        ]  # fmt: skip
        print_table(f"leakfind: {soak['iterations']} passes in {soak['elapsed_s']:.0f}s", rows)
    else:
        by_agent: dict[str, list[dict[str, Any]]] = {}
        for _, results in runs:
            for r in results:
                by_agent.setdefault(r["agent"], []).append(r)
        rows = []
        for agent, seen in by_agent.items():
            tested = [r for r in seen if r["found"] is not None]
            verdicts = Counter(r["verdict"] for r in seen)
            injected = sum(r["injected_per_h"] for r in seen) / len(seen)
            detectable = [r["detectable_per_h"] for r in seen if r["detectable_per_h"]]
            leaky = agent.startswith("leak")
            rows.append(Row(
                f"{agent}: injected {mib(injected)} MiB/h" if leaky else agent,
                f"{sum(1 for r in tested if r['found'])}/{len(tested)} soaks right "
                f"({', '.join(f'{v} {n}' for v, n in verdicts.items())}); detectable "
                f"{mib(min(detectable, default=None))}..{mib(max(detectable, default=None))}"
                " MiB/h",
                f"LEAK at leaky.py:{HOARD_LINE}" if leaky else "not LEAK",
                status=verdict(all(r["found"] for r in tested)) if tested else "",
            ))  # fmt: skip
        passes = [soak["iterations"] for soak, _ in runs]
        print_table(f"leakfind: {len(runs)} soaks of {duration:.0f}s, {min(passes)}.."
                    f"{max(passes)} passes each", rows)  # fmt: skip
    print(f"missed: {', '.join(missed) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
