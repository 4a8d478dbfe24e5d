"""What the benchmarks share: a private run directory, the coordinator stack, tables, pids.

The coordinator stack (`coordinator()`) is the real one, the runner's: an EventLog and a Cluster
(bus, launcher, one handle per agent); its teardown is the cluster's STOP -> BYE -> escalate ->
reap, then its last-resort `close()`, whatever happened in between.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from orchestrator.cluster.cluster import Cluster, ClusterSettings
from orchestrator.cluster.launchers import Launcher
from orchestrator.events import EventLog
from protocol.reliability import RetryPolicy

REPO_ROOT = Path(__file__).resolve().parent.parent
"""benchmarks/ is not an installed package: child processes find it through PYTHONPATH."""

STOP_DEADLINE_S = 2.0
"""The STOP deadline handed to Cluster.stop (the teardown target is 2 s for 64 agents)."""


def child_env() -> dict[str, str]:
    """Environment additions that let a child interpreter import `benchmarks`."""
    parts = [str(REPO_ROOT)]
    if existing := os.environ.get("PYTHONPATH"):
        parts.append(existing)
    return {"PYTHONPATH": os.pathsep.join(parts)}


@contextlib.contextmanager
def run_dir(prefix: str) -> Iterator[Path]:
    """A private (0700) temporary directory, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        path.chmod(0o700)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# -- output ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    figure: str
    value: str
    target: str = "-"
    ratio: str = "-"
    """The figure relative to the baseline measured in the same run."""
    status: str = ""
    """'met', 'MISSED', or empty when the figure has no target."""


def verdict(met: bool | None) -> str:
    if met is None:
        return ""
    return "met" if met else "MISSED"


def print_table(title: str, rows: Sequence[Row]) -> None:
    header = Row("figure", "value", "target", "vs baseline", "status")
    table = [header, *rows]
    widths = [
        max(len(getattr(r, name)) for r in table)
        for name in ("figure", "value", "target", "ratio", "status")
    ]

    def line(r: Row) -> str:
        cells = (r.figure, r.value, r.target, r.ratio, r.status)
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    print(title)
    print(line(header))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))


# -- processes ---------------------------------------------------------------------------


def processes_left(pids: Sequence[int]) -> list[int]:
    """Pids that still exist as our children (alive or unreaped zombies)."""
    me = os.getpid()
    left: list[int] = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            if proc.ppid() == me or proc.status() == psutil.STATUS_ZOMBIE:
                left.append(pid)
        except psutil.NoSuchProcess:
            continue
    return left


@contextlib.asynccontextmanager
async def coordinator(
    directory: Path,
    launcher: Launcher,
    policy: RetryPolicy | None,
    env: dict[str, str] | None = None,
) -> AsyncIterator[Cluster]:
    """The coordinator's real parts for one run (the run's Cluster and its EventLog); leaving
    stops every agent (STOP -> BYE -> escalate -> reap) unless the benchmark already did."""
    events = EventLog(directory / "events.jsonl")
    try:
        async with Cluster(
            directory,
            events,
            launcher,
            ClusterSettings(policy=policy, env=env or {}),
            stop_deadline_s=STOP_DEADLINE_S,
        ) as cluster:
            yield cluster
    finally:
        events.close()
