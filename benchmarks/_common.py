"""What the benchmarks share: a private run directory, the coordinator stack, tables, pids.

The coordinator stack (`Coordinator`) is the real one: EventLog, Bus (ROUTER), Supervisor; its
teardown is the Supervisor's STOP -> BYE -> escalate -> reap, followed by the last-resort
`close()` of each part, in that order, whatever happened in between.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import psutil

from orchestrator.cluster.bus import Bus
from orchestrator.cluster.launchers import Launcher
from orchestrator.cluster.supervisor import Supervisor
from orchestrator.events import EventLog
from protocol.reliability import RetryPolicy

REPO_ROOT = Path(__file__).resolve().parent.parent
"""benchmarks/ is not an installed package: child processes find it through PYTHONPATH."""

STOP_DEADLINE_S = 2.0
"""The STOP deadline handed to Supervisor.stop_all (the teardown target is 2 s for 64 agents)."""


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


class Coordinator:
    """The coordinator's real parts for one run, torn down in the right order on exit.

    Must be entered inside a running event loop (the Bus and Supervisor bind to it).
    """

    def __init__(self, directory: Path, launcher: Launcher, policy: RetryPolicy | None) -> None:
        self.directory = directory
        self.events = EventLog(directory / "events.jsonl")
        self.bus = Bus(f"ipc://{directory}/bus.sock", self.events, policy=policy)
        self.supervisor: Supervisor | None = None
        self._launcher = launcher
        self.stopped = False

    async def __aenter__(self) -> Coordinator:
        try:
            self.bus.start()
            self.supervisor = Supervisor(self._launcher, self.bus, self.events)
            self.bus.on_hung = self.supervisor.on_hung
        except BaseException:
            self._close()
            raise
        return self

    @property
    def sup(self) -> Supervisor:
        if self.supervisor is None:
            raise RuntimeError("the coordinator is not started")
        return self.supervisor

    async def stop(self) -> None:
        """The real teardown: STOP every agent, escalate on stragglers, reap everyone."""
        if not self.stopped and self.supervisor is not None:
            self.stopped = True
            await self.supervisor.stop_all(STOP_DEADLINE_S)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.stop()
        finally:
            self._close()

    def _close(self) -> None:
        if self.supervisor is not None:
            self.supervisor.close()
        self.bus.close()
        self.events.close()
