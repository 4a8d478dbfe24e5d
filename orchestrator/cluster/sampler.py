"""The resource sampler: per-agent RSS, CPU time, threads, open descriptors and USS via psutil.

Reading a process's figures costs about 45 us (USS, a walk of its memory map, 100 us or more),
so with 1,000 agents one round is 45 ms of reads, and one with USS a few hundred: on the
coordinator's loop, every ack and heartbeat would wait behind it. The reads therefore run in a
thread of their own, and only their results come to the loop (one callback per round), where
they become `sample` events and each agent's series. USS is read for a slice of the agents each
round, so every agent gets one about every USS_EVERY rounds without any round paying for all.

The sampler keeps itself cheap: when a round's CPU exceeds BUDGET of the interval, the interval
grows to fit (and shrinks back toward the configured one when rounds get cheaper). Its own cost
(CPU, rounds, the longest round, the interval it ended at) is in the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import psutil

from orchestrator.events import EventLog, Sample
from orchestrator.metrics import Series


def _store_size(path: str | None) -> int | None:
    """The SQLite store's size on disk, its write-ahead log included; None if unreadable."""
    if path is None:
        return None
    try:
        size = os.stat(path).st_size
    except OSError:
        return None
    with contextlib.suppress(OSError):
        size += os.stat(path + "-wal").st_size
    return size


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
"""Each agent's USS is read about once every this many periodic rounds (and at READY and
before STOP)."""

COORDINATOR = "coordinator"
"""The coordinator's own row among the readings (`Sampler.coordinator`)."""

BUDGET = 0.02
"""The share of one core the periodic rounds may use; past it, the interval grows. (5% at
first: a 64-agent soak, reading every USS each second, then took 3.15% of a core against a
2% target.)"""


@dataclass(slots=True)
class AgentSamples:
    pid: int
    process: psutil.Process
    store_path: str | None = None
    """The agent's memory store (SQLite): its size, with the WAL, is the `store` series."""
    rss: Series = field(default_factory=Series)
    count: int = 0
    peak_rss: int = 0
    hwm: int = 0
    """The highest VmHWM read: the kernel's own peak, which sees between samples."""
    uss_peak: int = 0
    """The largest USS seen."""
    first_rss: int | None = None
    last_rss: int | None = None
    num_fds: int | None = None
    num_threads: int | None = None
    cpu_user_s: float = 0.0
    cpu_system_s: float = 0.0
    floors: dict[str, Series] = field(default_factory=dict)
    """Per series (FLOOR_SERIES): the points a leak verdict reads, decimated keeping minima,
    bounded (FLOOR_POINTS) however long the run."""
    preallocate: bool = False
    """Take every series' memory up front (a soak: see `Series`)."""

    def __post_init__(self) -> None:
        if self.preallocate:
            self.rss = Series(preallocate=True)
            for name in FLOOR_SERIES:
                self.floors[name] = Series(FLOOR_POINTS, keep="min", preallocate=True)

    def floor(self, name: str, t: float, value: int) -> None:
        series = self.floors.get(name)
        if series is None:
            series = self.floors[name] = Series(FLOOR_POINTS, keep="min")
        series.add(t, value)


FLOOR_POINTS = 256
"""Points kept per floor series. A verdict reads at most 30 window minima, and a window's
minimum over points decimated by minimum is the minimum over every sample, so more points buy
nothing (2048 were kept until a soak's coordinator was seen growing by them for 34 minutes)."""

FLOOR_SERIES = ("rss", "uss", "pss", "fds", "threads", "store", "blocks")
"""The floor series an agent can have: read from outside by the sampler, `blocks` from inside
(a soak's stats step). A series never measured stays empty."""


@dataclass(frozen=True, slots=True)
class Reading:
    """One agent's figures, read in the sampler's thread."""

    agent: str
    rss: int
    cpu_user_s: float
    cpu_system_s: float
    threads: int
    fds: int
    hwm: int | None
    uss: int | None
    pss: int | None = None
    store: int | None = None
    pid: int = 0
    """The process it was read from (an agent restarted meanwhile is another)."""


@dataclass(slots=True)
class SamplerCost:
    """What sampling cost the coordinator (its thread's CPU) and how often it sampled."""

    rounds: int = 0
    readings: int = 0
    cpu_s: float = 0.0
    max_round_s: float = 0.0
    interval_s: float = 0.0
    """The periodic interval in force at the end (the configured one, or longer if the
    rounds did not fit the budget)."""


class Sampler:
    def __init__(
        self,
        events: EventLog,
        interval_s: float = 1.0,
        uss_every: int = USS_EVERY,
        preallocate: bool = False,
    ) -> None:
        self.events = events
        self.preallocate = preallocate
        self.uss_every = uss_every
        self.base_interval_s = interval_s
        self.agents: dict[str, AgentSamples] = {}
        self.cost = SamplerCost(interval_s=interval_s)
        self._interval_s = interval_s
        self._read_lock = threading.Lock()
        """psutil's Process objects are not for two threads at once: the periodic thread and
        an on-demand round (`sample_now`, itself in a worker thread) take turns."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._uss_cursor = 0
        self.watch: Callable[[str, int, int], None] | None = None
        """Hears each agent's RSS as it is read, with the pid it was read from (the memory
        watchdog)."""
        self.coordinator = AgentSamples(os.getpid(), psutil.Process(), preallocate=preallocate)
        """The coordinator measured like an agent (a soak tool whose own memory grows would
        poison every verdict); read every round, reported as a row of its own."""

    def track(self, agent: str, pid: int, store_path: str | None = None) -> None:
        with contextlib.suppress(psutil.Error):
            self.agents[agent] = AgentSamples(
                pid, psutil.Process(pid), store_path, preallocate=self.preallocate
            )

    # -- periodic rounds, in a thread -----------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """No more periodic rounds. Does not wait: a round under way (a fraction of a second
        with 1,000 agents) finishes in its thread and is dropped, not published."""
        self._stop.set()
        self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):  # the pacing of the samples, by design
            agents = list(self.agents.items())
            uss_for = self._uss_slice([a for a, _ in agents]) | {COORDINATOR}
            agents.append((COORDINATOR, self.coordinator))
            t0, c0 = time.monotonic(), time.thread_time()
            readings = self._read(agents, uss_for)
            cpu = time.thread_time() - c0
            with self._read_lock:  # the on-demand rounds account too
                self._account(cpu, time.monotonic() - t0, len(readings))
            # The interval that keeps a round within the budget: grow at once when a round
            # does not fit, shrink back gently (never below the configured interval).
            fit = cpu / BUDGET
            self._interval_s = max(self.base_interval_s, fit, 0.8 * self._interval_s)
            self.cost.interval_s = round(self._interval_s, 3)
            loop = self._loop
            if loop is None or self._stop.is_set():
                return
            with contextlib.suppress(RuntimeError):  # the loop closed under us: run over
                loop.call_soon_threadsafe(self._publish, readings, "periodic")

    def _uss_slice(self, agents: list[str]) -> frozenset[str]:
        """The agents whose USS this round reads: the next 1/USS_EVERY of them, in turn."""
        if not agents:
            return frozenset()
        size = max(1, -(-len(agents) // self.uss_every))
        start = self._uss_cursor % len(agents)
        self._uss_cursor = start + size
        return frozenset((agents + agents)[start : start + size])

    def _account(self, cpu_s: float, wall_s: float, readings: int) -> None:
        self.cost.rounds += 1  # under _read_lock
        self.cost.readings += readings
        self.cost.cpu_s += cpu_s
        self.cost.max_round_s = max(self.cost.max_round_s, wall_s)

    def _read(
        self, agents: Iterable[tuple[str, AgentSamples]], uss_for: frozenset[str] | None
    ) -> list[Reading]:
        """Read each agent's figures (USS for those in `uss_for`; None: all). Blocking."""
        readings: list[Reading] = []
        with self._read_lock:
            for agent, s in agents:
                try:
                    with s.process.oneshot():
                        rss = s.process.memory_info().rss
                        cpu = s.process.cpu_times()
                        threads = s.process.num_threads()
                        fds = s.process.num_fds()
                except psutil.Error:
                    continue  # gone: its exit is the cluster's record
                uss = pss = None
                if uss_for is None or agent in uss_for:
                    # One walk of smaps gives both: USS (private) and PSS (private plus a
                    # fair share of what the agent shares with its siblings and the template).
                    with contextlib.suppress(psutil.Error):
                        full = s.process.memory_full_info()
                        uss, pss = full.uss, getattr(full, "pss", None)
                readings.append(
                    Reading(agent, rss, cpu.user, cpu.system, threads, fds,
                            vm_hwm_bytes(s.pid), uss, pss, _store_size(s.store_path), s.pid)
                )  # fmt: skip
        return readings

    # -- on demand (READY, before STOP) --------------------------------------------------
    async def sample_now(self, reason: str) -> None:
        """Sample every tracked agent and the coordinator, USS included, off the loop; the
        agents' `sample` events are emitted when this returns."""
        items = [*self.agents.items(), (COORDINATOR, self.coordinator)]
        if not items:
            return
        t0 = time.monotonic()
        readings = await asyncio.to_thread(self._timed_read, items)
        self.cost.max_round_s = max(self.cost.max_round_s, time.monotonic() - t0)
        self._publish(readings, reason)

    def _timed_read(self, items: list[tuple[str, AgentSamples]]) -> list[Reading]:
        c0 = time.thread_time()
        readings = self._read(items, None)
        cpu = time.thread_time() - c0
        with self._read_lock:
            self.cost.cpu_s += cpu
            self.cost.readings += len(readings)
        return readings

    # -- on the loop -----------------------------------------------------------------------
    def _publish(self, readings: list[Reading], reason: str) -> None:
        t = self.events.now()
        for r in readings:
            coordinator = r.agent == COORDINATOR
            s = self.coordinator if coordinator else self.agents.get(r.agent)
            if s is None or (r.pid and r.pid != s.pid):
                continue  # an agent no longer measured, or since restarted (another process)
            s.count += 1
            s.rss.add(t, r.rss)
            s.peak_rss = max(s.peak_rss, r.rss)
            s.hwm = max(s.hwm, r.hwm or 0)
            s.floor("rss", t, r.rss)
            s.floor("fds", t, r.fds)
            s.floor("threads", t, r.threads)
            if r.uss is not None:
                s.uss_peak = max(s.uss_peak, r.uss)
                s.floor("uss", t, r.uss)
            if r.pss is not None:
                s.floor("pss", t, r.pss)
            if r.store is not None:
                s.floor("store", t, r.store)
            if s.first_rss is None:
                s.first_rss = r.rss
            s.last_rss = r.rss
            s.num_fds, s.num_threads = r.fds, r.threads
            s.cpu_user_s, s.cpu_system_s = r.cpu_user_s, r.cpu_system_s
            if coordinator:
                continue  # a row of its own in the report, not an agent's sample event
            if self.watch is not None:
                self.watch(r.agent, r.pid, r.rss)
            self.events.emit(
                Sample(agent=r.agent, reason=reason, rss=r.rss,
                       cpu_s=round(r.cpu_user_s + r.cpu_system_s, 4), fds=r.fds,
                       threads=r.threads, uss=r.uss)
            )  # fmt: skip
