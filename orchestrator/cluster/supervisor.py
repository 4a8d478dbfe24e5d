"""The supervisor: launches every agent, watches each process, and tears them all down.

Each agent process is a small typed handle (`AgentProcess`) that moves through an explicit
status. Exits are seen through a pidfd registered with the event loop (a thread waiting in
wait4 where pidfd is missing), reaped with wait4 so the report gets the process's peak RSS and
CPU time. An exit nobody asked for is a crash. Teardown escalates: STOP with a deadline ->
SIGTERM to the agent's process group -> SIGKILL -> reap; a death pipe makes every agent leave
by itself if the coordinator dies first.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import resource
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum

from orchestrator import events as ev
from orchestrator.cluster.bus import AgentGone, Bus
from orchestrator.cluster.launchers import Launched, Launcher, LaunchSpec
from orchestrator.events import EventLog
from protocol import AgentConfig, Bye

TERM_GRACE_S = 1.0
"""How long SIGTERM gets before SIGKILL."""


class ProcessStatus(Enum):
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    EXITED = "exited"
    """Exited after being asked to stop (or by a planned kill)."""
    CRASHED = "crashed"
    """Exited without being asked to."""
    HUNG = "hung"
    """Stopped answering, was declared hung and killed."""


@dataclass(frozen=True, slots=True)
class ExitInfo:
    returncode: int | None
    signal: int | None
    cpu_user_s: float
    cpu_system_s: float
    at: float
    """Monotonic time the exit was seen."""

    def describe(self) -> str:
        if self.signal is not None:
            return f"killed by {signal.Signals(self.signal).name}"
        return f"exit code {self.returncode}"


@dataclass(slots=True)
class AgentProcess:
    agent_id: str
    spec: LaunchSpec
    handle: Launched
    launched_at: float
    status: ProcessStatus = ProcessStatus.STARTING
    ready_at: float | None = None
    exit: ExitInfo | None = None
    bye: Bye | None = None
    expected_exit: bool = False
    escalation: str | None = None
    """'term' or 'kill' when teardown had to signal the process."""
    hung: str | None = None
    """Why the bus declared the agent hung (it was then killed), if it did."""
    exited: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def pid(self) -> int:
        return self.handle.pid

    @property
    def startup_s(self) -> float | None:
        return None if self.ready_at is None else self.ready_at - self.launched_at


class AgentInitError(Exception):
    """Agents started but could not initialise (a plugin failed to import, its init raised, a
    service failed to start): invalid input, not a crash. One line per agent in `lines`."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("; ".join(lines))
        self.lines = lines


class StartupError(Exception):
    """Some agents did not reach READY; the message names them and why."""


class Supervisor:
    def __init__(self, launcher: Launcher, bus: Bus, events: EventLog) -> None:
        self.launcher = launcher
        self.bus = bus
        self.events = events
        self.processes: dict[str, AgentProcess] = {}
        self.crashes: list[tuple[str, str]] = []
        self.on_crash: Callable[[AgentProcess], None] | None = None
        self._loop = asyncio.get_running_loop()
        self._death_r, self._death_w = os.pipe()
        os.set_inheritable(self._death_w, False)
        self._pidfds: dict[int, int] = {}
        self._closed = False

    # -- launch ---------------------------------------------------------------------------
    def prepare(self, spec: LaunchSpec) -> None:
        """Let the launcher get ready for agents like `spec` (blocking: call it in a
        thread)."""
        self.launcher.prepare(dataclasses.replace(spec, death_fd=self._death_r))

    def launch(self, spec: LaunchSpec, config: AgentConfig) -> AgentProcess:
        self.bus.add_agent(config, spec.incarnation)
        spec = dataclasses.replace(spec, death_fd=self._death_r)
        handle = self.launcher.launch(spec)
        proc = AgentProcess(spec.agent_id, spec, handle, time.monotonic())
        self.processes[spec.agent_id] = proc
        self.events.emit(
            ev.AgentLaunched(agent=spec.agent_id, pid=handle.pid, launcher=self.launcher.name,
                             incarnation=spec.incarnation)
        )  # fmt: skip
        self._watch(proc)
        return proc

    async def wait_ready(self, timeout: float) -> None:
        """Wait until every launched agent is READY; StartupError names any that are not,
        AgentInitError any that are but could not initialise."""

        async def one(proc: AgentProcess) -> str | None:
            """Waits for READY; returns the agent's init error, if it had one."""
            ready = await self.bus.links[proc.agent_id].ready
            proc.ready_at = time.monotonic()
            proc.status = ProcessStatus.READY
            return ready.error

        tasks = {p.agent_id: asyncio.ensure_future(one(p)) for p in self.processes.values()}
        try:
            _, pending = await asyncio.wait(tasks.values(), timeout=timeout)
        except asyncio.CancelledError:
            # Interrupted (Ctrl-C, SIGTERM): the waits end here, and their outcomes (agents
            # torn down before READY) are nobody's news, not tracebacks at exit.
            for task in tasks.values():
                task.cancel()
                task.add_done_callback(_quietly)
            raise
        for task in pending:
            task.cancel()
        problems: list[str] = []
        init_errors: list[str] = []
        for agent, task in tasks.items():
            if task in pending:
                problems.append(f"{agent}: not READY within {timeout:g}s")
            elif task.exception() is not None:
                problems.append(f"{agent}: {task.exception()}")
            elif (error := task.result()) is not None:
                init_errors.append(error)
        if problems:
            raise StartupError("agents failed to start: " + "; ".join(problems))
        if init_errors:
            raise AgentInitError(init_errors)

    # -- watching -------------------------------------------------------------------------
    def _watch(self, proc: AgentProcess) -> None:
        try:
            pidfd = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            threading.Thread(target=self._wait_thread, args=(proc,), daemon=True).start()
            return
        self._pidfds[proc.pid] = pidfd
        self._loop.add_reader(pidfd, self._on_pidfd, proc)

    def _on_pidfd(self, proc: AgentProcess) -> None:
        pidfd = self._pidfds.pop(proc.pid, None)
        if pidfd is not None:
            self._loop.remove_reader(pidfd)
            os.close(pidfd)
        try:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:  # spurious readiness; watch again
            self._watch(proc)
            return
        self._on_exit(proc, status, usage)

    def _wait_thread(self, proc: AgentProcess) -> None:
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except ChildProcessError:
            return
        self._loop.call_soon_threadsafe(self._on_exit, proc, status, usage)

    def _on_exit(
        self, proc: AgentProcess, status: int, usage: resource.struct_rusage | object
    ) -> None:
        code = os.waitstatus_to_exitcode(status)
        rusage = usage if isinstance(usage, resource.struct_rusage) else None
        info = ExitInfo(
            returncode=code if code >= 0 else None,
            signal=-code if code < 0 else None,
            cpu_user_s=rusage.ru_utime if rusage else 0.0,
            cpu_system_s=rusage.ru_stime if rusage else 0.0,
            at=time.monotonic(),
        )
        proc.exit = info
        proc.handle.mark_reaped(code)
        planned = proc.expected_exit
        proc.status = (
            ProcessStatus.EXITED
            if planned
            else ProcessStatus.HUNG
            if proc.hung is not None
            else ProcessStatus.CRASHED
        )
        proc.exited.set()
        ended = ev.AgentExited if planned else ev.AgentCrashed
        self.events.emit(
            ended(agent=proc.agent_id, pid=proc.pid, returncode=info.returncode,
                  signal=signal.Signals(info.signal).name if info.signal else None,
                  escalation=proc.escalation)
        )  # fmt: skip
        self.bus.agent_gone(proc.agent_id, info.describe())
        if not planned:
            self.crashes.append((proc.agent_id, info.describe()))
            if self.on_crash is not None:
                self.on_crash(proc)

    # -- signalling -----------------------------------------------------------------------
    def kill(self, agent: str, sig: signal.Signals, *, planned: bool) -> None:
        proc = self.processes[agent]
        if proc.exit is not None:
            return
        proc.expected_exit = proc.expected_exit or planned
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)

    def on_hung(self, agent: str, reason: str) -> None:
        """The bus declared `agent` hung: it is killed, and its exit is reported as a hang."""
        self.processes[agent].hung = reason
        self.kill(agent, signal.SIGKILL, planned=False)

    # -- teardown -------------------------------------------------------------------------
    async def stop_all(self, deadline_s: float) -> None:
        """STOP every live agent, then escalate on whoever is still there. Reaps everyone."""
        live = [p for p in self.processes.values() if p.exit is None]
        for proc in live:
            if proc.hung is not None:
                continue  # already killed as hung; its exit (not yet reaped) stays a hang
            proc.expected_exit = True
            proc.status = ProcessStatus.STOPPING

        async def stop(proc: AgentProcess) -> None:
            with contextlib.suppress(AgentGone):
                proc.bye = await self.bus.stop_agent(proc.agent_id, deadline_s)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.05, deadline_s / 4)):
                    await proc.exited.wait()

        await asyncio.gather(*(stop(p) for p in live))
        await self._escalate([p for p in live if p.exit is None])

    async def _escalate(self, procs: Iterable[AgentProcess]) -> None:
        remaining = list(procs)
        for sig, tag, grace in (
            (signal.SIGTERM, "term", TERM_GRACE_S),
            (signal.SIGKILL, "kill", 5.0),
        ):
            remaining = [p for p in remaining if p.exit is None]
            if not remaining:
                return
            for proc in remaining:
                proc.escalation = tag
                self.kill(proc.agent_id, sig, planned=True)
            waits = [asyncio.ensure_future(p.exited.wait()) for p in remaining]
            _, pending = await asyncio.wait(waits, timeout=grace)
            for task in pending:
                task.cancel()

    def close(self) -> None:
        """Last resort: SIGKILL and reap anything still alive; close every descriptor."""
        if self._closed:
            return
        self._closed = True
        for proc in self.processes.values():
            if proc.exit is None:
                proc.expected_exit = True
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    _, status, usage = os.wait4(proc.pid, 0)
                    self._on_exit(proc, status, usage)
        for pid, pidfd in list(self._pidfds.items()):
            with contextlib.suppress(Exception):
                self._loop.remove_reader(pidfd)
            os.close(pidfd)
            del self._pidfds[pid]
        with contextlib.suppress(Exception):
            self.launcher.close()
        for fd in (self._death_r, self._death_w):
            if fd >= 0:
                os.close(fd)
        self._death_r = self._death_w = -1


def _quietly(task: asyncio.Task[str | None]) -> None:
    """Retrieve a finished task's outcome, so that asyncio does not report it as lost."""
    if not task.cancelled():
        task.exception()
