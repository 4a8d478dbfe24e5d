"""The coordinator watching itself: event-loop lag, CPU time and memory.

Everything a run does happens on one asyncio loop, so a callback that blocks it delays every
ack, heartbeat and wait of every agent. `LoopWatch` measures that directly: a probe timer is
scheduled every `interval_s` and records how late it ran, per phase of the run (launch,
script, end), since they fail for different reasons: launching agents competes with dozens
of interpreters starting at once, the script is the message path, the end judges and
writes. The report's `coordinator` block carries the lag with the coordinator's own CPU time
and peak RSS, so a run (or `python -m benchmarks.scenario`) shows whether the runner itself
kept up.
"""

from __future__ import annotations

import asyncio
import os
import resource
import time
from enum import StrEnum

from orchestrator.cluster.sampler import vm_hwm_bytes
from orchestrator.metrics import LatencyHistogram

PROBE_INTERVAL_S = 0.05


class Phase(StrEnum):
    LAUNCH = "launch"
    """From the first launch to every agent READY."""
    SCRIPT = "script"
    """The script: the message path."""
    END = "end"
    """Teardown, judging, reporting."""


class LoopWatch:
    def __init__(self, interval_s: float = PROBE_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.lag = {phase: LatencyHistogram() for phase in Phase}
        self.phase = Phase.LAUNCH
        self.cpu_by_phase = dict.fromkeys(Phase, 0.0)
        """CPU seconds (user + system) of this process in each phase."""
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._cpu0 = 0.0, 0.0
        self._phase_cpu0 = 0.0

    def start(self) -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self._cpu0 = usage.ru_utime, usage.ru_stime
        self._phase_cpu0 = usage.ru_utime + usage.ru_stime
        self._arm()

    def enter(self, phase: Phase) -> None:
        """The run moves on to `phase`: the CPU used so far is the previous phase's."""
        self._close_phase()
        self.phase = phase

    def _close_phase(self) -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        now = usage.ru_utime + usage.ru_stime
        self.cpu_by_phase[self.phase] += now - self._phase_cpu0
        self._phase_cpu0 = now

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._due = time.monotonic() + self.interval_s
        self._handle = loop.call_at(self._due, self._probe)  # the loop's clock is monotonic

    def _probe(self) -> None:
        self.lag[self.phase].add(max(0.0, time.monotonic() - self._due))
        self._arm()

    def stop(self) -> None:
        self._close_phase()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def whole(self) -> LatencyHistogram:
        merged = LatencyHistogram()
        for hist in self.lag.values():
            merged.merge(hist)
        return merged

    def cpu_s(self) -> tuple[float, float]:
        """User and system CPU seconds of this process since `start`."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime - self._cpu0[0], usage.ru_stime - self._cpu0[1]

    @staticmethod
    def peak_rss() -> int | None:
        """This process's own high-water RSS (shared by `--parallel` runs in one process)."""
        return vm_hwm_bytes(os.getpid())
