"""The resource sampler: per-agent RSS, CPU time, threads and open descriptors via psutil.

Runs on the coordinator's loop from a timer (about once a second), plus on demand at READY and
before STOP. Each agent's RSS curve is a bounded Series, so a soak run's report stays small.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import psutil

from orchestrator.events import EventLog, Sample
from orchestrator.metrics import Series


def vm_hwm_bytes(pid: int) -> int | None:
    """The process's peak RSS since its exec (VmHWM in /proc/PID/status), None if unreadable.

    The reaped process's `ru_maxrss` is not used: Linux carries it across exec, so for a
    spawned agent it is at least the coordinator's RSS at the moment of the fork.
    """
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


USS_EVERY = 10
"""Periodic samples between two USS readings (about every 10 s at the default interval);
USS is also read at READY and before STOP."""


@dataclass(slots=True)
class AgentSamples:
    pid: int
    process: psutil.Process
    rss: Series = field(default_factory=Series)
    count: int = 0
    peak_rss: int = 0
    hwm: int = 0
    uss_peak: int = 0
    """The largest USS seen (sampled every USS_EVERY samples: it costs a walk of smaps)."""
    """The highest VmHWM read: the kernel's own peak, which sees between samples."""
    first_rss: int | None = None
    last_rss: int | None = None
    num_fds: int | None = None
    num_threads: int | None = None
    cpu_user_s: float = 0.0
    cpu_system_s: float = 0.0


class Sampler:
    def __init__(self, events: EventLog, interval_s: float = 1.0) -> None:
        self.events = events
        self.interval_s = interval_s
        self.agents: dict[str, AgentSamples] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._running = False

    def track(self, agent: str, pid: int) -> None:
        with contextlib.suppress(psutil.Error):
            self.agents[agent] = AgentSamples(pid, psutil.Process(pid))

    def start(self) -> None:
        self._running = True
        self._schedule()

    def stop(self) -> None:
        self._running = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self) -> None:
        if self._running:
            self._timer = asyncio.get_running_loop().call_later(self.interval_s, self._tick)

    def _tick(self) -> None:
        self.sample_all("periodic")
        self._schedule()

    def sample_all(self, reason: str) -> None:
        for agent in list(self.agents):
            self.sample(agent, reason)

    def sample(self, agent: str, reason: str) -> None:
        s = self.agents.get(agent)
        if s is None:
            return
        try:
            with s.process.oneshot():
                rss = s.process.memory_info().rss
                cpu = s.process.cpu_times()
                s.num_threads = s.process.num_threads()
                s.num_fds = s.process.num_fds()
        except psutil.Error:
            return  # gone: its exit (and peak RSS from wait4) is the cluster's record
        s.hwm = max(s.hwm, vm_hwm_bytes(s.pid) or 0)
        if s.count % USS_EVERY == 0 or reason != "periodic":
            with contextlib.suppress(psutil.Error):
                s.uss_peak = max(s.uss_peak, s.process.memory_full_info().uss)
        t = self.events.now()
        s.count += 1
        s.rss.add(t, rss)
        s.peak_rss = max(s.peak_rss, rss)
        if s.first_rss is None:
            s.first_rss = rss
        s.last_rss = rss
        s.cpu_user_s, s.cpu_system_s = cpu.user, cpu.system
        self.events.emit(
            Sample(agent=agent, reason=reason, rss=rss, cpu_s=round(cpu.user + cpu.system, 4),
                   fds=s.num_fds, threads=s.num_threads)
        )  # fmt: skip
