"""`python -m benchmarks.startup`: launch N real agents, time launch -> all READY and teardown.

For each launcher (`--launchers`, default `fork,spawn`) and each count, in a fresh run
directory: the real EventLog and Cluster (bus, launcher, handles) start that many agents (the
rules model, one room with everyone in it), and the clock runs from just before the first launch
(for `fork`, before its template starts) until the last agent's READY has reached the
coordinator. Each agent's USS (private memory, from psutil) is read once all are READY: the
median is reported. Teardown is `Cluster.stop` (STOP with a deadline -> BYE -> exit -> reap,
escalating to SIGTERM / SIGKILL on stragglers); afterwards psutil must find none of the agents'
pids.

It prints a table or, with --json, one JSON object. Targets (DESIGN.md and issue 11, 2
cores): all READY within 1 s for 64 agents and 4 s for 256 with `fork` (4 s for 64 with
`spawn`), an idle forked agent's USS within 10 MiB, teardown of 64 within 2 s, zero left.

The baseline, measured in the same run for each count, is the floor of the `spawn` approach:
that many fresh interpreters started at once that only import the agent's modules and exit
(no sockets, no handshake, no store). launch -> all READY divided by it is the cost of
everything else. Above FLOOR_MAX (256) interpreters, the floor is measured with 256 and scaled
by the count (1,000 interpreters importing at once take minutes on 2 cores and would measure
the machine's swap of work, not a floor); the table says so.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import psutil
from pydantic import JsonValue

from benchmarks._common import (
    STOP_DEADLINE_S,
    coordinator,
    print_table,
    processes_left,
    run_dir,
    verdict,
)
from benchmarks._common import Row as TableRow
from orchestrator.cluster.cluster import AgentState
from orchestrator.cluster.launchers import LAUNCHERS
from protocol import AgentConfig, ChannelType, RoomConfig

TARGET_COUNT = 64
TARGETS_READY_S: dict[str, dict[int, float]] = {"fork": {64: 1.0, 256: 4.0}, "spawn": {64: 4.0}}
"""launch -> all READY targets (DESIGN.md and issue 11, 2 cores), by launcher and count."""
TARGET_TEARDOWN_S = 2.0
TARGET_USS_MIB = 10.0


@dataclass(frozen=True, slots=True)
class Options:
    counts: list[int]
    launchers: list[str]
    spawn_max: int
    ready_timeout: float
    json: bool


def parse_args(argv: Sequence[str]) -> Options:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.startup",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--counts", default="1,8,64,256", help="comma-separated agent counts")
    p.add_argument("--launchers", default="fork,spawn", help="comma-separated launchers")
    p.add_argument(
        "--spawn-max", type=int, default=64,
        help="largest count measured with spawn: 256 fresh interpreters take about 26 s to"
        " start on 2 cores, and the first to be ready give up on a coordinator that the"
        " others starve (its 10 s silence deadline)",
    )  # fmt: skip
    p.add_argument(
        "--ready-timeout", type=float, default=60.0, help="seconds to wait for all READY"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object, no table")
    ns = p.parse_args(list(argv))
    try:
        counts = [int(c) for c in ns.counts.split(",") if c.strip()]
    except ValueError:
        p.error(f"--counts must be comma-separated integers, got {ns.counts!r}")
    if not counts or min(counts) < 1:
        p.error("--counts needs at least one count, each at least 1")
    launchers = [name for name in ns.launchers.split(",") if name.strip()]
    if not launchers or any(name not in LAUNCHERS for name in launchers):
        p.error(f"--launchers takes some of {sorted(LAUNCHERS)}, got {ns.launchers!r}")
    return Options(counts, launchers, ns.spawn_max, ns.ready_timeout, ns.json)


IMPORT_ONLY = "import os, agent_worker.runtime, agent_worker.transport; os._exit(0)"
"""What the baseline interpreters run: the agent's imports, then the same abrupt exit."""


FLOOR_MAX = 256
"""The most import-only interpreters the baseline starts at once (see the module's doc)."""


def import_floor(count: int, timeout: float) -> float:
    """Seconds for `count` interpreters, started at once, to import the agent and exit."""
    procs: list[subprocess.Popen[bytes]] = []
    t0 = time.monotonic()
    try:
        for _ in range(count):
            procs.append(
                subprocess.Popen([sys.executable, "-c", IMPORT_ONLY], stdin=subprocess.DEVNULL)
            )
        deadline = t0 + timeout
        for proc in procs:
            code = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            if code != 0:
                raise RuntimeError(f"import-only interpreter exited with {code}")
        return time.monotonic() - t0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@dataclass(frozen=True, slots=True)
class StartupRun:
    launcher: str
    count: int
    import_floor_s: float
    """Baseline: `count` interpreters that only import the agent's modules, started at once."""
    launch_calls_s: float
    """From just before the first launch until the last agent was launched (batches of forks
    or spawns in a worker thread, the loop serving the agents already up meanwhile)."""
    ready_s: float
    """From just before the first launch until every agent is READY."""
    startup_p50_s: float
    startup_max_s: float
    """Per agent: its own launch to its READY."""
    teardown_s: float
    processes_left: int
    clean_exits: int
    """Agents that said BYE and exited 0 without being signalled."""
    escalations: int
    uss_p50_mib: float
    """Median private memory (USS) of an idle agent, just after all are READY."""

    @property
    def ready_target_s(self) -> float | None:
        return TARGETS_READY_S.get(self.launcher, {}).get(self.count)

    @property
    def ready_met(self) -> bool | None:
        target = self.ready_target_s
        return None if target is None else self.ready_s <= target

    @property
    def teardown_met(self) -> bool | None:
        return self.teardown_s <= TARGET_TEARDOWN_S if self.count == TARGET_COUNT else None

    def to_json(self) -> dict[str, JsonValue]:
        return {
            "launcher": self.launcher,
            "count": self.count,
            "import_floor_s": round(self.import_floor_s, 4),
            "ready_vs_floor": round(self.ready_s / self.import_floor_s, 3),
            "launch_calls_s": round(self.launch_calls_s, 4),
            "ready_s": round(self.ready_s, 4),
            "startup_p50_s": round(self.startup_p50_s, 4),
            "startup_max_s": round(self.startup_max_s, 4),
            "teardown_s": round(self.teardown_s, 4),
            "processes_left": self.processes_left,
            "clean_exits": self.clean_exits,
            "escalations": self.escalations,
            "uss_p50_mib": round(self.uss_p50_mib, 2),
            "ready_target_s": self.ready_target_s,
            "ready_met": self.ready_met,
            "teardown_target_s": TARGET_TEARDOWN_S if self.count == TARGET_COUNT else None,
            "teardown_met": self.teardown_met,
        }


async def measure(launcher_name: str, count: int, ready_timeout: float) -> StartupRun:
    # Blocking, but nothing else runs yet. Past FLOOR_MAX, measured there and scaled.
    floor = import_floor(min(count, FLOOR_MAX), ready_timeout) * max(1.0, count / FLOOR_MAX)
    launcher = LAUNCHERS[launcher_name](())
    with run_dir("sr-bench-startup-") as directory:
        async with coordinator(directory, launcher, None) as c:
            ids = [f"agent-{i:03d}" for i in range(count)]
            room = RoomConfig(id="lobby", channel=ChannelType.GROUP, members=ids)
            c.set_rooms([("lobby", tuple(ids))])
            configs = [
                AgentConfig(agent_id=agent, agent_dir=str(directory / agent), rooms=[room])
                for agent in ids
            ]
            t0 = time.monotonic()
            # As the runner does: batches forked off the loop, so the loop serves the agents
            # that are already up (a loop that forks 1,000 agents itself starves the first
            # ones past their hung deadline). A template starts first.
            await c.launch(configs, ready_timeout)
            ready = time.monotonic()
            launched = max(h.launched_at for h in c.handles.values())

            procs = list(c.handles.values())
            startups = [p.startup_s for p in procs if p.startup_s is not None]
            uss = []
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    uss.append(psutil.Process(p.pid).memory_full_info().uss / 2**20)
            t1 = time.monotonic()
            await c.stop(STOP_DEADLINE_S)
            teardown = time.monotonic() - t1
            left = processes_left([p.pid for p in procs])
            clean = sum(
                1
                for p in procs
                if p.state is AgentState.EXITED
                and p.exit is not None
                and p.exit.returncode == 0
                and p.escalation is None
                and p.bye is not None
            )
            return StartupRun(
                launcher=launcher_name,
                count=count,
                import_floor_s=floor,
                launch_calls_s=launched - t0,
                ready_s=ready - t0,
                startup_p50_s=statistics.median(startups),
                startup_max_s=max(startups),
                teardown_s=teardown,
                processes_left=len(left),
                clean_exits=clean,
                escalations=sum(1 for p in procs if p.escalation is not None),
                uss_p50_mib=statistics.median(uss) if uss else 0.0,
            )


async def measure_all(opts: Options) -> list[StartupRun]:
    import_floor(1, opts.ready_timeout)  # warm the page cache, as any earlier run would have
    return [
        await measure(launcher, count, opts.ready_timeout)
        for launcher in opts.launchers
        for count in opts.counts
        if launcher != "spawn" or count <= opts.spawn_max
    ]


def missed(runs: Sequence[StartupRun]) -> list[str]:
    out: list[str] = []
    for r in runs:
        if r.ready_met is False:
            out.append(f"{r.launcher}_ready_{r.count}")
        if r.teardown_met is False:
            out.append(f"{r.launcher}_teardown_{r.count}")
        if r.processes_left:
            out.append(f"{r.launcher}_processes_left_{r.count}")
        if r.launcher == "fork" and r.uss_p50_mib > TARGET_USS_MIB:
            out.append(f"fork_uss_{r.count}")
    return out


def figures_json(runs: Sequence[StartupRun]) -> dict[str, JsonValue]:
    return {
        "benchmark": "startup",
        "launchers": sorted({r.launcher for r in runs}),
        "cpus": os.cpu_count(),
        "counts": sorted({r.count for r in runs}),
        "runs": [r.to_json() for r in runs],
        "missed": list(missed(runs)),
    }


def print_report(runs: Sequence[StartupRun]) -> None:
    rows: list[TableRow] = []
    spawn = {r.count: r for r in runs if r.launcher == "spawn"}
    for r in runs:
        at_target = r.count == TARGET_COUNT
        versus = spawn.get(r.count) if r.launcher != "spawn" else None
        rows += [
            TableRow(
                f"{r.launcher}, {r.count} agents: launch -> all READY",
                f"{r.ready_s:.3f} s",
                f"<= {r.ready_target_s:g} s" if r.ready_target_s is not None else "-",
                f"{r.ready_s / versus.ready_s:.2f}x spawn" if versus
                else f"{r.ready_s / r.import_floor_s:.2f}x floor",
                verdict(r.ready_met),
            ),
            TableRow(
                "  idle agent USS (median)",
                f"{r.uss_p50_mib:.1f} MiB",
                f"<= {TARGET_USS_MIB:g} MiB" if r.launcher == "fork" else "-",
                f"{r.uss_p50_mib / versus.uss_p50_mib:.2f}x spawn" if versus else "-",
                verdict(r.uss_p50_mib <= TARGET_USS_MIB) if r.launcher == "fork" else "",
            ),
            TableRow(
                f"  baseline: {r.count} import-only interpreters"
                + (f" (scaled from {FLOOR_MAX})" if r.count > FLOOR_MAX else ""),
                f"{r.import_floor_s:.3f} s",
                ratio="floor",
            ),
            TableRow(
                "  all launched; per-agent READY p50 / max",
                f"{r.launch_calls_s:.3f} s; {r.startup_p50_s:.3f} / {r.startup_max_s:.3f} s",
            ),
            TableRow(
                f"{r.count} agents: teardown (Cluster.stop)",
                f"{r.teardown_s:.3f} s",
                f"<= {TARGET_TEARDOWN_S:g} s" if at_target else "-",
                f"{r.teardown_s / r.count * 1000:.1f} ms/agent",
                verdict(r.teardown_met),
            ),
            TableRow(
                "  clean exits (BYE, code 0) / escalations / left",
                f"{r.clean_exits}/{r.count} / {r.escalations} / {r.processes_left}",
                "0 left",
                status=verdict(r.processes_left == 0),
            ),
        ]
    print_table(f"startup benchmark: {os.cpu_count()} CPUs", rows)
    gone = missed(runs)
    print("targets missed: " + (", ".join(gone) if gone else "none"))


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    runs = asyncio.run(measure_all(opts))
    if opts.json:
        print(json.dumps(figures_json(runs)))
    else:
        print_report(runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
