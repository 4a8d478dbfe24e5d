"""The cluster: every agent of a run, one typed handle each, and the one monitor that moves them.

An `AgentHandle` is the single record of one agent: its launch spec and configuration, its
process, its bus link, and its state, which moves only through `Cluster._move`:

    launched -> ready -> stopping -> exited
        \\          \\--------------> exited   (a planned kill)
         \\----------+-------------> crashed  (an exit nobody asked for)
                     \\------------> hung     (silent past the deadline; then killed)

Three things end or advance an agent, and all of them arrive here: the process's exit (a pidfd
registered with the event loop, a thread in wait4 where pidfd is missing), the bus's link
(READY, BYE, silence) and the cluster's own requests (stop, kill). Process exits are reaped
with wait4 so the report gets each agent's CPU time. Teardown escalates: STOP with a deadline
-> SIGTERM to the agent's process group -> SIGKILL -> reap; a death pipe and PR_SET_PDEATHSIG
make every agent leave by itself if the coordinator dies first, and a finalizer kills what is
left if the cluster is dropped without being closed.

Users of the cluster (the executor, the judges) see `AgentControl`: send a command, read the
events. The bus is the cluster's part, not theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Protocol

from orchestrator import events as ev
from orchestrator.cluster.bus import AgentGone, Bus, Link
from orchestrator.cluster.faults import WireFault
from orchestrator.cluster.launchers import AgentLimits, Launched, Launcher, LaunchSpec
from orchestrator.events import EventLog
from protocol import (
    AgentConfig,
    Bye,
    CmdPending,
    Configure,
    EncodeError,
    Ready,
    Result,
    encode_body,
)
from protocol.bodies import Command
from protocol.liveness import Liveness
from protocol.reliability import RetryPolicy

TERM_GRACE_S = 1.0
"""How long SIGTERM gets before SIGKILL."""

STOP_CPU_S_PER_AGENT = 0.01
"""CPU an agent's shutdown may take (drain, close the store, BYE): measured about 5.5 ms on
the 2-core machine (256 agents stopped in 0.7 s); twice that, for a loaded machine."""

MAX_LISTED = 10
"""Agents named in a start-up error; the rest are counted (1,000 lines help nobody)."""

LAUNCH_BATCH = 16
"""Agents launched per worker-thread call: one fork-server round trip each."""


def _over(what: str, value: int, name: str, threshold: int, action: str) -> str:
    return (
        f"{what}: RSS {value / MIB:.1f} MiB over {name} ({threshold / MIB:.1f} MiB);"
        f" it was {action}"
    )


MIB = 1 << 20


class AgentState(Enum):
    LAUNCHED = "launched"
    """The process exists; it has not said READY yet."""
    READY = "ready"
    STOPPING = "stopping"
    EXITED = "exited"
    """Exited after being asked to stop (or by a planned kill)."""
    CRASHED = "crashed"
    """Exited without being asked to."""
    HUNG = "hung"
    """Stopped answering, was declared hung and killed."""

    @property
    def ended(self) -> bool:
        return self in _ENDED


_ENDED = frozenset({AgentState.EXITED, AgentState.CRASHED, AgentState.HUNG})
_MOVES: dict[AgentState, frozenset[AgentState]] = {
    AgentState.LAUNCHED: frozenset(AgentState) - {AgentState.LAUNCHED},
    AgentState.READY: frozenset(AgentState) - {AgentState.LAUNCHED, AgentState.READY},
    AgentState.STOPPING: frozenset({AgentState.EXITED}),
    AgentState.EXITED: frozenset(),
    AgentState.CRASHED: frozenset(),
    AgentState.HUNG: frozenset(),
}
"""Every legal transition. A stopping agent that exits, by whatever means, has exited: it was
asked to."""


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


@dataclass(slots=True, eq=False)
class AgentHandle:
    """One agent of the cluster. Read it freely; only the cluster changes it."""

    spec: LaunchSpec
    config: AgentConfig
    process: Launched
    link: Link
    launched_at: float
    state: AgentState = AgentState.LAUNCHED
    ready_at: float | None = None
    exit: ExitInfo | None = None
    planned_exit: bool = False
    """Someone asked this agent to go (STOP, or a planned kill): its exit is not a crash."""
    escalation: str | None = None
    """'term' or 'kill' when teardown had to signal the process."""
    hung: str | None = None
    """Why the agent was declared hung (it was then killed), if it was."""
    diagnosis: str | None = None
    """A hung agent's stacks (every thread, taken before it was killed), or why there are
    none (a stopped process)."""
    restarts: int = 0
    """Incarnations before this one (`restart` faults and the restart policy)."""
    restart_history: list[tuple[float, str]] = field(default_factory=list)
    """(monotonic time, cause) of each restart so far, carried from incarnation to
    incarnation: "restart fault", "crash: killed by SIGSEGV", "hang: silent for 3.2s"."""
    gave_up: str | None = None
    """Why the restart policy stopped restarting this agent."""
    killed_by_script: str | None = None
    """The signal of a `kill` fault that ended it."""
    limit: str | None = None
    """The limit that ended it and how: "memory: RSS 612.0 MiB over memory_hard (600.0
    MiB); it was killed"."""
    exited: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def id(self) -> str:
        return self.spec.agent_id

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def ready_info(self) -> Ready | None:
        return self.link.ready_info

    @property
    def bye(self) -> Bye | None:
        return self.link.bye

    @property
    def startup_s(self) -> float | None:
        return None if self.ready_at is None else self.ready_at - self.launched_at

    def describe_end(self) -> str:
        """How the agent ended, for an error message: 'hung: ...', 'killed by SIGKILL'..."""
        if self.limit is not None:
            return f"over its limit ({self.limit})"
        if self.hung is not None:
            return f"hung ({self.hung})"
        if self.exit is not None:
            return self.exit.describe()
        return self.state.value


class AgentControl(Protocol):
    """What the executor needs from the agents: commands, answered or failed with AgentGone
    (the agent ended) or TimeoutError; and faults on purpose (FaultError if impossible)."""

    async def command(self, agent: str, command: Command, timeout: float) -> Result: ...

    async def fault(
        self, op: str, agent: str, *, signal: str, keep_store: bool, timeout: float
    ) -> None: ...

    def wire_fault(self, fault: WireFault) -> None: ...


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """When a crashed or hung agent is started again (the scenario's `restart:`)."""

    on: frozenset[str]
    """"crash", "hang"."""
    max: int
    within_s: float
    backoff_s: float

    MAX_BACKOFF_S: ClassVar[float] = 10.0


class FaultError(Exception):
    """A fault step could not be carried out: the agent had already ended, a killed agent
    did not end, a restarted one did not come up."""


class AgentInitError(Exception):
    """Agents started but could not initialise (a plugin failed to import, its init raised, a
    service failed to start): invalid input, not a crash. One line per agent in `lines`."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("; ".join(lines))
        self.lines = lines


class StartupError(Exception):
    """Some agents did not reach READY; the message names them and why."""


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """What every agent of a cluster shares."""

    liveness: Liveness = field(default_factory=Liveness)
    policy: RetryPolicy | None = None
    inbox_capacity: int = 1024
    env: dict[str, str] = field(default_factory=dict)
    nice: int = 0
    """Added to each agent's niceness (the runner's AGENT_NICE)."""
    endpoint: str | None = None
    """Where the bus listens (tcp://HOST:PORT, `*` for a free port); default an ipc socket in
    the run directory."""


class Cluster:
    """The agents of one run. Use it as an async context manager inside a running loop:

        async with Cluster(run_dir, events, launcher) as cluster:
            cluster.set_rooms(...)
            await cluster.launch(configs, ready_timeout=30)
            ...                                  # cluster.command(...), cluster.handles
            await cluster.stop(2.0)              # optional: leaving the block stops them too

    Leaving the block stops every agent (STOP, escalation, reap) and releases everything:
    the socket and its file, the launcher's template, the pidfds, the death pipe.
    """

    def __init__(
        self,
        run_dir: Path,
        events: EventLog,
        launcher: Launcher,
        settings: ClusterSettings | None = None,
        *,
        on_lost: Callable[[AgentHandle], None] | None = None,
        stop_deadline_s: float = 2.0,
    ) -> None:
        """`on_lost` hears of every agent that crashed or hung, once, after its exit."""
        self.run_dir = run_dir
        self.events = events
        self.launcher = launcher
        self.settings = settings or ClusterSettings()
        self.on_lost = on_lost
        self.on_restarted: Callable[[AgentHandle], None] | None = None
        """Hears of each agent started again (a `restart` fault, the policy), once READY."""
        self.restart_policies: dict[str, RestartPolicy] = {}
        """Agents to start again when they crash or hang, and how."""
        self.limits: dict[str, AgentLimits] = {}
        """What each agent may use (default: no limit)."""
        self.on_hung: Callable[[AgentHandle], None] | None = None
        """Hears of an agent declared hung at that moment, before anything waiting on it is
        failed (the runner notes the waits for the hang's report)."""
        self.drain_outcome: str | None = None
        """How the drain before STOP went: "quiet in 0.01s", or why it gave up."""
        self.on_limit: Callable[[AgentHandle], None] | None = None
        """Hears of each agent a limit ended (`handle.limit` says which and how), once."""
        self.stop_deadline_s = stop_deadline_s
        self.bus = Bus(
            self.settings.endpoint or f"ipc://{run_dir}/bus.sock",
            events,
            policy=self.settings.policy,
            liveness=self.settings.liveness,
            on_hung=self._on_silent,
            on_ready=self._on_ready,
        )
        self.handles: dict[str, AgentHandle] = {}
        self.crashes: list[tuple[str, str]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._death_r = self._death_w = -1
        self._pidfds: dict[int, int] = {}
        self._prepared = False
        self._stopped = False
        self._tasks: set[asyncio.Task[None]] = set()
        """Hung agents being diagnosed (their stacks taken) before they are killed."""
        self._restarting: dict[str, tuple[asyncio.Task[None], AgentHandle, Link]] = {}
        """Agents the restart policy will start again after its backoff."""
        self._closed = False
        self._pids: set[int] = set()
        """Live agent pids, shared with the last-resort finalizer."""
        self._finalizer = weakref.finalize(self, _kill_groups, self._pids)

    # -- context -------------------------------------------------------------------------
    async def __aenter__(self) -> Cluster:
        self._loop = asyncio.get_running_loop()
        try:
            self._death_r, self._death_w = os.pipe()
            os.set_inheritable(self._death_w, False)
            self.bus.start()
        except BaseException:
            self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if not self._stopped and exc_type is None:
                await self.stop(self.stop_deadline_s)
        finally:
            self.close()  # interrupted or broken: no ceremony, kill and reap

    @property
    def endpoint(self) -> str:
        return self.bus.endpoint

    def set_rooms(self, rooms: Iterable[tuple[str, tuple[str, ...]]]) -> None:
        self.bus.set_rooms(rooms)

    # -- launch --------------------------------------------------------------------------
    def spec_for(
        self, config: AgentConfig, incarnation: int = 1, link: Link | None = None
    ) -> LaunchSpec:
        """How to launch `config`'s agent; with `link`, the keys it was issued (without, a
        spec that launches nothing, for a launcher to prepare with)."""
        s = self.settings
        return LaunchSpec(
            agent_id=config.agent_id,
            endpoint=self.bus.endpoint,
            incarnation=incarnation,
            agent_dir=Path(config.agent_dir),
            death_fd=self._death_r,
            heartbeat_interval_s=s.liveness.heartbeat_interval_s,
            coordinator_timeout_s=s.liveness.coordinator_timeout_s,
            inbox_capacity=s.inbox_capacity,
            env=dict(s.env),
            nice=s.nice,
            limits=self.limits.get(config.agent_id, AgentLimits()),
            credentials=link.credentials if link is not None else None,
        )

    async def launch(self, configs: Iterable[AgentConfig], ready_timeout: float) -> None:
        """Launch every agent and wait until all are READY (StartupError / AgentInitError
        otherwise). Cancelling it stops launching at once."""
        configs = list(configs)
        ensure_fd_budget(len(self.handles) + len(configs))
        for start in range(0, len(configs), LAUNCH_BATCH):
            batch = configs[start : start + LAUNCH_BATCH]
            await self.prepare(batch[0])
            await self._launch_batch(batch)
        await self.wait_ready(ready_timeout)

    async def _launch_batch(self, configs: list[AgentConfig]) -> None:
        """Launch `configs` in a worker thread (a fork or a spawn blocks for milliseconds,
        and the loop must go on serving acks and heartbeats meanwhile), then register them.
        Interrupted, the launches under way still finish and are registered, so that
        teardown knows every process there is; then the interruption goes on."""
        if self._closed or self._loop is None:
            raise RuntimeError("the cluster is not running")
        loop = self._loop
        # What cannot be sent fails here, naming the agents, rather than in the bus's callback
        # when the agent says HELLO (an asyncio traceback, then the start-up timeout).
        unsendable = []
        for config in configs:
            try:
                encode_body(Configure(config=config))
            except EncodeError as exc:
                unsendable.append(f"{config.agent_id}: {exc}")
        if unsendable:
            raise StartupError(
                f"{len(unsendable)} agent configuration(s) cannot be sent: "
                + "; ".join(unsendable[:10])
                + (f" (and {len(unsendable) - 10} more)" if len(unsendable) > 10 else "")
            )
        links = [self.bus.add_agent(c, 1) for c in configs]
        specs = [self.spec_for(c, 1, link) for c, link in zip(configs, links, strict=True)]
        failed: list[OSError] = []

        def on_loop(i: int, result: Launched | OSError) -> None:
            if self._closed and not isinstance(result, OSError):
                _kill_and_reap(result.pid)  # landed after teardown: nobody would stop it
                return
            if isinstance(result, OSError):
                failed.append(result)
                self.bus.agent_gone(specs[i].agent_id, f"not launched: {result}")
            else:
                self._adopt(configs[i], specs[i], links[i], result)

        def landed(i: int, result: Launched | OSError) -> None:  # in the worker thread
            # Each agent is adopted as soon as its pid is known: before its HELLO can be
            # handled (that takes the loop), so `agent.launched` comes before `agent.ready`.
            loop.call_soon_threadsafe(on_loop, i, result)

        work = asyncio.ensure_future(asyncio.to_thread(self.launcher.launch_many, specs, landed))
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            # Every launch under way lands, and is adopted, before we go (however often we
            # are cancelled meanwhile); its own failure does not replace the interruption.
            while not work.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(work)
            if not work.cancelled():
                work.exception()
            raise
        if failed:
            raise StartupError(f"could not launch every agent: {failed[0]}")

    def _adopt(
        self, config: AgentConfig, spec: LaunchSpec, link: Link, process: Launched
    ) -> AgentHandle:
        now = time.monotonic()
        handle = AgentHandle(spec, config, process, link, now)
        self.handles[handle.id] = handle
        self._pids.add(process.pid)
        self.events.emit(
            ev.AgentLaunched(agent=handle.id, pid=process.pid, launcher=self.launcher.name,
                             incarnation=spec.incarnation)
        )  # fmt: skip
        if link.ready_info is not None and self._move(handle, AgentState.READY):
            handle.ready_at = now  # its READY was handled before its pid landed (rare)
        self._watch(handle)
        return handle

    async def prepare(self, config: AgentConfig) -> None:
        """Let the launcher get ready for agents like `config` (a fork server starts its
        template, about 0.2 s: in a thread, not on the loop). Once per cluster."""
        if not self._prepared:
            await asyncio.to_thread(self.launcher.prepare, self.spec_for(config))
            self._prepared = True

    def launch_one(
        self, config: AgentConfig, incarnation: int = 1, link: Link | None = None
    ) -> AgentHandle:
        """Start one agent (blocking for the fork); `wait_ready` waits for it. `link`: one
        added for it already (a restart holds what is sent to the agent meanwhile)."""
        if self._closed or self._loop is None:
            raise RuntimeError("the cluster is not running")
        link = link or self.bus.add_agent(config, incarnation)
        spec = self.spec_for(config, incarnation, link)
        return self._adopt(config, spec, link, self.launcher.launch(spec))

    async def wait_ready(self, timeout: float) -> None:
        """Wait until every launched agent is READY; StartupError names any that are not,
        AgentInitError any that are but could not initialise."""
        tasks = {agent: h.link.ready for agent, h in self.handles.items()}
        try:
            _, pending = await asyncio.wait(tasks.values(), timeout=timeout)
        except asyncio.CancelledError:
            # Interrupted (Ctrl-C, SIGTERM): the waits end here, and their outcomes (agents
            # torn down before READY) are nobody's news, not tracebacks at exit.
            for task in tasks.values():
                task.add_done_callback(_quietly)
            raise
        problems: list[str] = []
        init_errors: list[str] = []
        for agent, task in tasks.items():
            if task in pending:
                problems.append(f"{agent}: not READY within {timeout:g}s")
            elif task.exception() is not None:
                problems.append(f"{agent}: {task.exception()}")
            elif (error := task.result().error) is not None:
                init_errors.append(error)
        if problems:
            shown = problems[:MAX_LISTED]
            if len(problems) > len(shown):
                shown.append(f"and {len(problems) - len(shown)} more")
            raise StartupError(
                f"{len(problems)} of {len(tasks)} agents failed to start: " + "; ".join(shown)
            )
        if init_errors:
            raise AgentInitError(init_errors)

    # -- the monitor: every transition comes through here ------------------------------
    def _move(self, handle: AgentHandle, to: AgentState) -> bool:
        """Move `handle` to `to` if that is a legal step from where it is; False if not (an
        event that arrived after a more decisive one: a BYE after a kill, an exit after a
        hang)."""
        if to not in _MOVES[handle.state]:
            return False
        handle.state = to
        return True

    def _on_ready(self, agent: str, ready: Ready) -> None:
        handle = self.handles.get(agent)
        if handle is not None and self._move(handle, AgentState.READY):
            handle.ready_at = time.monotonic()

    def _on_silent(self, agent: str, stuck_s: float, why: str) -> str:
        """The bus heard nothing from `agent`, or saw its runtime make no progress, past the
        hung deadline: it is hung, its stacks are taken, and it is killed. Returns the reason,
        which the bus gives to whatever was bound for the agent."""
        handle = self.handles.get(agent)
        if handle is not None and self._move(handle, AgentState.HUNG):
            handle.hung = why
            if self.on_hung is not None:
                self.on_hung(handle)
            self.events.emit(ev.AgentHung(agent=agent, silent_s=round(stuck_s, 3), reason=why))
            task = asyncio.get_running_loop().create_task(self._diagnose_and_kill(handle))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return why

    async def _diagnose_and_kill(self, handle: AgentHandle) -> None:
        """Take a hung agent's stacks (faulthandler, on SIGUSR1), then SIGKILL it."""
        # The pidfd is taken here, on the loop, while the process is unreaped (the loop is
        # what reaps it): in the worker thread the pid could already name another process.
        pidfd = None
        if handle.exit is None:
            with contextlib.suppress(OSError):
                pidfd = os.pidfd_open(handle.pid)
        try:
            if pidfd is None:
                handle.diagnosis = "no stacks: the process had already gone"
            else:
                handle.diagnosis = await asyncio.to_thread(
                    take_stacks, pidfd, handle.pid, handle.spec.log_path
                )
        finally:
            if pidfd is not None:
                os.close(pidfd)
            self._signal(handle, signal.SIGKILL)

    def _on_exit(self, handle: AgentHandle, status: int, usage: object) -> None:
        code = os.waitstatus_to_exitcode(status)
        rusage = usage if isinstance(usage, resource.struct_rusage) else None
        info = ExitInfo(
            returncode=code if code >= 0 else None,
            signal=-code if code < 0 else None,
            cpu_user_s=rusage.ru_utime if rusage else 0.0,
            cpu_system_s=rusage.ru_stime if rusage else 0.0,
            at=time.monotonic(),
        )
        handle.exit = info
        handle.process.mark_reaped(code)
        self._pids.discard(handle.pid)
        cpu_limit = handle.spec.limits.cpu_s
        if (
            info.signal == signal.SIGXCPU and cpu_limit is not None and handle.limit is None
            and handle.state is not AgentState.HUNG  # a hang already explains its end
        ):  # fmt: skip
            cpu = info.cpu_user_s + info.cpu_system_s
            handle.limit = f"cpu: {cpu:.1f}s of CPU time, its limit {cpu_limit:g}s"
            handle.planned_exit = True
            self._limit_fired(handle, "cpu", cpu, cpu_limit, "killed")
        if handle.state is not AgentState.HUNG:
            self._move(handle, AgentState.EXITED if handle.planned_exit else AgentState.CRASHED)
        handle.exited.set()
        self.bus.take_queued()  # its BYE, if it is waiting, before its link is gone
        lost = handle.state is not AgentState.EXITED
        ended = ev.AgentCrashed if lost else ev.AgentExited
        self.events.emit(
            ended(agent=handle.id, pid=handle.pid, returncode=info.returncode,
                  signal=signal.Signals(info.signal).name if info.signal else None,
                  escalation=handle.escalation)
        )  # fmt: skip
        self.bus.agent_gone(handle.id, handle.hung or info.describe(), handle.link)
        if lost:
            self.crashes.append((handle.id, handle.describe_end()))
            if self._restarts_after(handle):
                return  # the policy takes it from here; a give-up comes back to on_lost
            if self.on_lost is not None:
                self.on_lost(handle)

    # -- limits ---------------------------------------------------------------------------
    def check_memory(self, agent: str, pid: int, rss: int) -> None:
        """The watchdog, with each sample of an agent's RSS (read from process `pid`): past its
        soft limit the agent is stopped in order (STOP, then SIGKILL past the STOP deadline),
        past its hard limit killed at once. Either is a planned end (not a crash) reported as
        the limit, once (an agent stopped at its soft limit that passes the hard one while it
        stops is killed, not reported again)."""
        handle = self.handles.get(agent)
        if (
            handle is None or handle.pid != pid  # a reading of an earlier incarnation
            or handle.exit is not None or handle.state.ended or self._stopped or self._closed
        ):  # fmt: skip
            return
        limits = handle.spec.limits
        if limits.rss_hard is not None and rss > limits.rss_hard:
            if handle.limit is None:
                handle.limit = _over("memory", rss, "memory_hard", limits.rss_hard, "killed")
                self._limit_fired(handle, "memory_hard", rss, limits.rss_hard, "killed")
            self.kill(agent, _SIGNALS["SIGKILL"], planned=True)
        elif limits.rss_soft is not None and rss > limits.rss_soft and handle.limit is None:
            handle.limit = _over("memory", rss, "memory_soft", limits.rss_soft, "stopped")
            self._limit_fired(handle, "memory_soft", rss, limits.rss_soft, "stopped")
            handle.planned_exit = True
            if handle.state is not AgentState.HUNG:
                self._move(handle, AgentState.STOPPING)
            task = asyncio.get_running_loop().create_task(self._stop_one(handle))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _stop_one(self, handle: AgentHandle) -> None:
        with contextlib.suppress(AgentGone):
            await self.bus.stop_agent(handle.id, self.stop_deadline_s)
        self.kill(handle.id, _SIGNALS["SIGKILL"], planned=True)  # a no-op once it has exited

    def _limit_fired(
        self, handle: AgentHandle, limit: str, value: float, threshold: float, action: str
    ) -> None:
        self.events.emit(ev.LimitFired(
            agent=handle.id, limit=limit, value=value, threshold=threshold, action=action
        ))  # fmt: skip
        if self.on_limit is not None:
            self.on_limit(handle)

    # -- the restart policy --------------------------------------------------------------
    def _restarts_after(self, handle: AgentHandle) -> bool:
        """Whether the policy starts `handle`'s agent again (scheduled), or gives up (then
        `gave_up` says why and the loss is reported as usual)."""
        policy = self.restart_policies.get(handle.id)
        cause = "hang" if handle.state is AgentState.HUNG else "crash"
        if policy is None or cause not in policy.on or self._stopped or self._closed:
            return False
        if self.handles.get(handle.id) is not handle:
            return False  # an older incarnation
        now = time.monotonic()
        recent = [t for t, _ in handle.restart_history if now - t <= policy.within_s]
        if len(recent) >= policy.max:
            handle.gave_up = (
                f"gave up restarting it: {len(recent)} restart(s) within"
                f" {policy.within_s:g}s already (max {policy.max})"
            )
            self.events.emit(ev.AgentRestarting(
                agent=handle.id, cause=f"{cause}: {handle.describe_end()}", attempt=0,
                backoff_s=0.0, gave_up=handle.gave_up,
            ))  # fmt: skip
            return False
        backoff = min(policy.MAX_BACKOFF_S, policy.backoff_s * 2 ** len(recent))
        why = f"{cause}: {handle.describe_end()}"
        self.events.emit(ev.AgentRestarting(
            agent=handle.id, cause=why, attempt=len(recent) + 1, backoff_s=round(backoff, 3)
        ))  # fmt: skip
        # The next incarnation's link exists from now: messages sent to the agent during the
        # backoff are held for it (and sent after its CONFIGURE), not dead letters.
        link = self.bus.add_agent(handle.config, handle.spec.incarnation + 1)
        task = asyncio.get_running_loop().create_task(
            self._restart_later(handle, why, backoff, link)
        )
        self._restarting[handle.id] = (task, handle, link)
        return True

    def _lost_anyway(self, old: AgentHandle, why: str) -> None:
        """A loss the policy took on and cannot carry through: reported after all."""
        old.gave_up = why
        if self.on_lost is not None:
            self.on_lost(old)

    async def _restart_later(
        self, old: AgentHandle, why: str, backoff_s: float, link: Link
    ) -> None:
        try:
            await asyncio.sleep(backoff_s)  # the policy's backoff, by design
        finally:
            self._restarting.pop(old.id, None)
        if self.handles.get(old.id) is not old:
            return  # replaced meanwhile (a `restart` fault)
        try:
            new = self.launch_one(old.config, old.spec.incarnation + 1, link)
        except Exception as exc:  # the fork server, descriptors: reported, never lost
            self.bus.agent_gone(old.id, f"restarting it failed: {exc}", link)
            self._lost_anyway(old, f"restarting it failed: {exc}")
            return
        new.restarts = old.restarts + 1
        new.restart_history = [*old.restart_history, (time.monotonic(), why)]
        try:
            async with asyncio.timeout(RESTART_READY_S):
                ready = await asyncio.shield(new.link.ready)
        except TimeoutError:
            # Not up in time: ended like a crash, which the policy judges again (another
            # restart, or giving up and reporting it).
            self._signal(new, signal.SIGKILL)
            return
        except AgentGone:
            return  # it ended already: its exit went through the policy
        if ready.error is not None:
            self._lost_anyway(old, f"its restart could not initialise: {ready.error}")
        elif self.on_restarted is not None:
            self.on_restarted(new)

    def _cancel_restarts(self) -> None:
        """Teardown: restarts the policy had scheduled will not happen; their losses are
        reported now (a crash just before the end must not vanish from the verdict)."""
        pending, self._restarting = self._restarting, {}
        for task, old, link in pending.values():
            task.cancel()
            self.bus.agent_gone(old.id, "the run ended before it was restarted", link)
            self._lost_anyway(old, "the run ended before the policy could restart it")

    # -- watching processes ------------------------------------------------------------
    def _watch(self, handle: AgentHandle) -> None:
        assert self._loop is not None
        try:
            pidfd = os.pidfd_open(handle.pid)
        except (AttributeError, OSError):
            threading.Thread(target=self._wait_thread, args=(handle,), daemon=True).start()
            return
        self._pidfds[handle.pid] = pidfd
        self._loop.add_reader(pidfd, self._on_pidfd, handle)

    def _on_pidfd(self, handle: AgentHandle) -> None:
        assert self._loop is not None
        pidfd = self._pidfds.pop(handle.pid, None)
        if pidfd is not None:
            self._loop.remove_reader(pidfd)
            os.close(pidfd)
        try:
            pid, status, usage = os.wait4(handle.pid, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:  # spurious readiness; watch again
            self._watch(handle)
            return
        self._on_exit(handle, status, usage)

    def _wait_thread(self, handle: AgentHandle) -> None:
        assert self._loop is not None
        try:
            _, status, usage = os.wait4(handle.pid, 0)
        except ChildProcessError:
            return
        self._loop.call_soon_threadsafe(self._on_exit, handle, status, usage)

    # -- acting on agents ----------------------------------------------------------------
    async def command(self, agent: str, command: Command, timeout: float) -> Result:
        """Run `command` in `agent`: its RESULT, or AgentGone / TimeoutError."""
        handle = self.handles.get(agent)
        if handle is None:
            raise AgentGone(f"agent {agent} was never launched")
        if handle.state.ended:
            raise AgentGone(f"agent {agent} is gone: {handle.describe_end()}")
        return await self.bus.command(agent, command, timeout)

    async def fault(
        self, op: str, agent: str, *, signal: str = "SIGKILL", keep_store: bool = True,
        timeout: float = 30.0,
    ) -> None:  # fmt: skip
        """A fault on purpose (`kill`, `stop`, `cont`, `restart`), recorded as an event. A
        killed agent's exit is planned (not a crash); a stopped one is not declared hung."""
        handle = self.handles.get(agent)
        if handle is None:
            raise FaultError(f"no agent {agent!r}")
        ended = handle.exit is not None or handle.state in (AgentState.HUNG, AgentState.CRASHED)
        if ended and op != "restart":
            raise FaultError(f"{agent} has already ended ({handle.describe_end()})")
        if op == "kill":
            sig = _SIGNALS[signal]
            self._fault_event(agent, "kill", f"{sig.name} to pid {handle.pid}")
            handle.killed_by_script = sig.name
            self.kill(agent, sig, planned=True)
            await self._ended(handle, timeout)
        elif op == "stop":
            self.bus.pause(agent, True)
            self._fault_event(agent, "stop", f"SIGSTOP to pid {handle.pid}")
            self._signal(handle, _SIGNALS["SIGSTOP"])
        elif op == "cont":
            self._signal(handle, _SIGNALS["SIGCONT"])
            if handle.link.paused:  # continuing a running agent must not reset its clocks
                self.bus.pause(agent, False)
            self._fault_event(agent, "cont", f"SIGCONT to pid {handle.pid}")
        elif op == "restart":
            await self._restart(handle, keep_store, timeout)
        else:
            raise FaultError(f"unknown fault {op!r}")

    def wire_fault(self, fault: WireFault) -> None:
        """A bus fault on purpose, from now until its window ends (see faults.py)."""
        self.bus.add_wire_fault(fault)
        self.events.emit(ev.FaultInjected(fault=fault.kind, detail=fault.description))

    def _fault_event(self, agent: str, fault: str, detail: str) -> None:
        self.events.emit(ev.FaultInjected(agent=agent, fault=fault, detail=detail))

    async def _ended(self, handle: AgentHandle, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                await handle.exited.wait()
        except TimeoutError:
            raise FaultError(
                f"{handle.id} (pid {handle.pid}) did not end within {timeout:g}s"
            ) from None

    async def _restart(self, old: AgentHandle, keep_store: bool, timeout: float) -> None:
        pending = self._restarting.pop(old.id, None)
        link = None
        if pending is not None:  # the fault restarts it now, not the policy later
            pending[0].cancel()
            link = pending[2]  # with what was held for it
        await self._replace(old, keep_store, timeout, link)

    async def _replace(
        self, old: AgentHandle, keep_store: bool, timeout: float, link: Link | None = None
    ) -> None:
        """Stop `old` in order (STOP, so its store is closed whole; SIGKILL past the STOP
        deadline), or take it as it ended (after a `kill`, a crash), and start its next
        incarnation under the same id; return at its READY."""
        t0 = time.monotonic()
        store = old.ready_info.store_path if old.ready_info else None
        if old.exit is None:
            old.planned_exit = True
            if old.state is not AgentState.HUNG:
                self._move(old, AgentState.STOPPING)
            with contextlib.suppress(AgentGone):
                await self.bus.stop_agent(old.id, self.stop_deadline_s)
            self.kill(old.id, _SIGNALS["SIGKILL"], planned=True)  # a no-op once it has exited
        await self._ended(old, timeout)
        if not keep_store and store:
            for path in (store, store + "-wal", store + "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        new = self.launch_one(old.config, old.spec.incarnation + 1, link)
        new.restarts = old.restarts + 1
        new.restart_history = [*old.restart_history, (time.monotonic(), "restart fault")]
        left = max(0.1, timeout - (time.monotonic() - t0))
        try:
            async with asyncio.timeout(left):
                ready = await asyncio.shield(new.link.ready)
        except (TimeoutError, AgentGone) as exc:
            raise FaultError(
                f"the restarted {old.id} did not come up: {exc or 'timeout'}"
            ) from None
        if ready.error is not None:
            raise FaultError(f"the restarted {old.id} could not initialise: {ready.error}")
        self._fault_event(
            old.id, "restart",
            f"incarnation {new.spec.incarnation} (pid {new.pid}) replaced pid {old.pid};"
            f" store {'kept' if keep_store else 'emptied'}; READY in"
            f" {time.monotonic() - t0:.2f}s",
        )  # fmt: skip
        if self.on_restarted is not None:
            self.on_restarted(new)

    def kill(self, agent: str, sig: signal.Signals, *, planned: bool) -> None:
        """Signal `agent`'s process group; a planned kill's exit is not a crash."""
        handle = self.handles[agent]
        handle.planned_exit = handle.planned_exit or planned
        self._signal(handle, sig)

    def _signal(self, handle: AgentHandle, sig: signal.Signals) -> None:
        if handle.exit is None:
            signal_agent(handle.pid, sig)

    @property
    def retry_budget_s(self) -> float:
        """How long the bus retries a frame before it is a dead letter (RetryPolicy)."""
        return (self.settings.policy or RetryPolicy()).budget_s

    async def drain(self, deadline_s: float) -> bool:
        """Before STOP: wait until nothing is on its way, or `deadline_s` passes. Quiet means
        the bus has every frame it was given acknowledged, every live agent says it has none
        unacknowledged (its replies to what it was delivered are counted: commands run after
        the messages before them), and no message was routed meanwhile. Without this, under
        frame loss, messages still being retried when the script ended were dead-lettered by
        teardown. Whether it got quiet."""
        end = time.monotonic() + deadline_s
        self.bus.end_wire_faults("the script ended")
        for handle in self.handles.values():
            if handle.link.paused and handle.exit is None:  # a `stop` never continued
                self._signal(handle, _SIGNALS["SIGCONT"])
                self.bus.pause(handle.id, False)
                self._fault_event(handle.id, "cont", "SIGCONT before teardown (it was stopped)")
        start = time.monotonic()
        busy = "the bus had frames unacknowledged"
        while True:
            routed = self.bus.messages_routed
            if not await self.bus.wait_idle(end):
                return self._drained(False, start, busy)
            live = [h.id for h in self.handles.values() if h.state is AgentState.READY]
            left = end - time.monotonic()
            if left <= 0:
                return self._drained(False, start, busy)
            answers = await asyncio.gather(
                *(self.command(agent, CmdPending(), left) for agent in live),
                return_exceptions=True,
            )
            # Holding: it says so, or it did not answer in the time left. One that cannot be
            # asked (its link broke: AgentGone at once) or cannot tell holds nothing the drain
            # could wait for; counting it spun this loop at full CPU until the deadline.
            holding = [
                agent for agent, a in zip(live, answers, strict=True)
                if isinstance(a, TimeoutError)
                or (isinstance(a, Result) and a.ok and isinstance(a.value, dict)
                    and a.value.get("outbox") != 0)
            ]  # fmt: skip
            if not holding and self.bus.messages_routed == routed:
                return self._drained(True, start, "")
            busy = (
                f"{', '.join(holding[:5])}{' and more' if len(holding) > 5 else ''} still had"
                " frames unacknowledged" if holding else "messages were still being routed"
            )

    def _drained(self, quiet: bool, start: float, busy: str) -> bool:
        took = time.monotonic() - start
        self.drain_outcome = (
            f"quiet in {took:.2f}s" if quiet
            else f"gave up after {took:.1f}s: {busy}; what was in flight was lost at STOP"
        )  # fmt: skip
        return quiet

    async def stop(self, deadline_s: float) -> None:
        """STOP every live agent, then escalate on whoever is still there. Reaps everyone.

        The deadline is each agent's patience, but a thousand agents stopping at once share
        the machine's cores: it is stretched to what their shutdowns need in CPU
        (STOP_CPU_S_PER_AGENT each, over the cores), so a busy machine is not mistaken for
        stuck agents and escalated."""
        self._stopped = True
        self._cancel_restarts()
        live = [h for h in self.handles.values() if h.exit is None]
        deadline_s = max(deadline_s, len(live) * STOP_CPU_S_PER_AGENT / (os.cpu_count() or 1))
        for handle in live:
            if handle.state is AgentState.HUNG:
                continue  # already killed as hung; its exit (not yet reaped) stays a hang
            handle.planned_exit = True
            self._move(handle, AgentState.STOPPING)

        async def stop(handle: AgentHandle) -> None:
            with contextlib.suppress(AgentGone):
                await self.bus.stop_agent(handle.id, deadline_s)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.05, deadline_s / 4)):
                    await handle.exited.wait()

        await asyncio.gather(*(stop(h) for h in live))
        await self._escalate([h for h in live if h.exit is None])

    async def _escalate(self, handles: list[AgentHandle]) -> None:
        for sig, tag, grace in (
            (signal.SIGTERM, "term", TERM_GRACE_S),
            (signal.SIGKILL, "kill", 5.0),
        ):
            handles = [h for h in handles if h.exit is None]
            if not handles:
                return
            for handle in handles:
                handle.escalation = tag
                handle.planned_exit = True
                self._signal(handle, sig)
            waits = [asyncio.ensure_future(h.exited.wait()) for h in handles]
            _, pending = await asyncio.wait(waits, timeout=grace)
            for task in pending:
                task.cancel()

    def close(self) -> None:
        """Last resort, and always last: SIGKILL and reap anything still alive, then release
        every descriptor, the bus and the launcher's template. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._cancel_restarts()
        for task in self._tasks:
            task.cancel()  # a hung agent's stacks: it is killed below anyway
        live = [h for h in self.handles.values() if h.exit is None]
        for handle in live:  # every signal first, then the reaping: they die in parallel
            handle.planned_exit = True
            self._signal(handle, signal.SIGKILL)
        for handle in live:
            with contextlib.suppress(ChildProcessError):
                _, status, usage = os.wait4(handle.pid, 0)
                self._on_exit(handle, status, usage)
        for pid, pidfd in list(self._pidfds.items()):
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(pidfd)
            os.close(pidfd)
            del self._pidfds[pid]
        self.bus.close()
        with contextlib.suppress(Exception):
            self.launcher.close()
        for fd in (self._death_r, self._death_w):
            if fd >= 0:
                os.close(fd)
        self._death_r = self._death_w = -1
        self._finalizer.detach()


FDS_PER_AGENT = 3
"""Descriptors the coordinator holds per agent: its pidfd, the bus's ipc connection, and one
spare (a log, a launch pipe)."""
FDS_BASE = 256
"""Descriptors the coordinator needs whatever the number of agents (zmq's own, the event
log, the report, Python's)."""


def ensure_fd_budget(agents: int) -> None:
    """Make sure the coordinator may open enough descriptors for `agents`: raise the soft
    RLIMIT_NOFILE toward the hard one if needed (a common soft default is 1,024, which 1,000
    agents exceed), or fail with StartupError saying what to change."""
    need = FDS_BASE + FDS_PER_AGENT * agents
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        raise StartupError(
            f"{agents} agents need about {need} open files in the coordinator, and the hard"
            f" limit is {hard}: raise it (`ulimit -Hn`, or LimitNOFILE in a service)"
        )
    # Generously (agents launched later need room too), never past the hard limit.
    raised = need if hard == resource.RLIM_INFINITY else max(need, min(hard, 65536))
    resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))


def signal_agent(pid: int, sig: signal.Signals) -> None:
    """Signal an agent's process group (it and whatever it started), or the agent alone while
    it has no group yet: a forked agent makes its own group first thing, and a signal sent
    before that found no group and was lost (a teardown then waited 10 s in wait4 for an
    agent nobody had killed)."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
    except PermissionError:
        pass


_SIGNALS = {name: signal.Signals[name] for name in (
    "SIGKILL", "SIGTERM", "SIGINT", "SIGQUIT", "SIGABRT", "SIGSEGV", "SIGUSR2", "SIGSTOP",
    "SIGCONT",
)}  # fmt: skip

RESTART_READY_S = 30.0
"""How long an agent the restart policy started again has to reach READY."""

STACKS_TIMEOUT_S = 1.0
"""How long a hung agent gets to write its stacks before it is killed anyway."""
STACKS_MAX_BYTES = 64 * 1024


def take_stacks(pidfd: int, pid: int, log: Path, timeout_s: float = STACKS_TIMEOUT_S) -> str:
    """Every thread's stack of a live agent: SIGUSR1 makes its faulthandler write them to its
    log, read back from where the log ended. Blocking (up to `timeout_s`); run in a thread.
    The process is named by `pidfd` (opened while it was unreaped: a signal by pid could reach
    whatever process reuses the pid); `pid` finds its state in /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return "no stacks: the process had already gone"
    if state in ("T", "t"):
        return (
            "no stacks: the process is stopped (SIGSTOP, or a debugger holds it), so it can run"
            " nothing, not even a signal handler"
        )
    try:
        start = log.stat().st_size
        signal.pidfd_send_signal(pidfd, signal.SIGUSR1)
    except OSError as exc:
        return f"no stacks: {exc.strerror or exc}"
    # The agent writes from its signal handler; nothing says when it is done but the file
    # itself: wait for it to grow, then to stop growing (a deadline poll, by design).
    deadline, size, steady = time.monotonic() + timeout_s, start, 0
    while time.monotonic() < deadline and steady < 3:
        time.sleep(0.02)  # deadline poll of a file another process writes: no event exists
        try:
            now = log.stat().st_size
        except OSError:
            break  # the log went (the run directory is being removed): no stacks to read
        steady = steady + 1 if now == size and now > start else 0
        size = now
    if size <= start:
        return f"no stacks: the agent wrote none within {timeout_s:g}s of SIGUSR1"
    try:
        with log.open("rb") as f:
            f.seek(start)
            text = f.read(STACKS_MAX_BYTES).decode("utf-8", errors="replace")
    except OSError as exc:
        return f"no stacks: {exc.strerror or exc}"
    return "every thread's stack when it was declared hung (most recent call first):\n" + text


def _kill_and_reap(pid: int) -> None:
    signal_agent(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _kill_groups(pids: set[int]) -> None:
    """The finalizer of a cluster dropped without `close` (or alive at interpreter exit):
    its agents' process groups get SIGKILL, so none outlives the coordinator."""
    for pid in list(pids):
        signal_agent(pid, signal.SIGKILL)


def _quietly(task: asyncio.Future[Ready]) -> None:
    """Retrieve a finished task's outcome, so that asyncio does not report it as lost."""
    if not task.cancelled():
        task.exception()


__all__ = [
    "AgentControl",
    "AgentHandle",
    "AgentInitError",
    "AgentState",
    "Cluster",
    "ClusterSettings",
    "ExitInfo",
    "StartupError",
]
