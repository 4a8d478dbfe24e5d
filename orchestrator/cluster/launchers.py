"""How an agent process comes to exist: the Launcher interface, `spawn` and `fork`.

A launcher starts one agent process in its own process group (so teardown can signal the
group) with the death pipe's read end inherited, and returns its pid. Watching, stopping and
reaping are the cluster's job, the same for every launcher: a forked agent is made the
coordinator's own child (see agent_worker/forkserver.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from protocol.auth import Credentials, hand_over


@dataclass(frozen=True, slots=True)
class AgentLimits:
    """What an agent may use (the scenario's `limits:`). The agent sets `data_bytes`, `cpu_s`
    and `open_files` on itself (rlimits, before anything else runs); the coordinator's
    watchdog holds it to `rss_soft` (stopped) and `rss_hard` (killed)."""

    data_bytes: int | None = None
    rss_soft: int | None = None
    rss_hard: int | None = None
    cpu_s: float | None = None
    open_files: int | None = None

    def argv(self) -> list[str]:
        args = []
        if self.data_bytes is not None:
            args += ["--limit-data", str(self.data_bytes)]
        if self.cpu_s is not None:
            args += ["--limit-cpu", str(max(1, round(self.cpu_s)))]
        if self.open_files is not None:
            args += ["--limit-files", str(self.open_files)]
        return args


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    agent_id: str
    endpoint: str
    incarnation: int
    agent_dir: Path
    death_fd: int
    heartbeat_interval_s: float
    coordinator_timeout_s: float
    inbox_capacity: int
    env: dict[str, str] = field(default_factory=dict)
    nice: int = 0
    """Added to the agent's scheduling niceness (the runner uses AGENT_NICE)."""
    limits: AgentLimits = AgentLimits()
    credentials: Credentials | None = None
    """The agent's CURVE keys, handed over through a pipe it inherits (`--credentials-fd`),
    never on its command line."""

    @property
    def log_path(self) -> Path:
        return self.agent_dir / "agent.log"

    def argv(self, module: str = "agent_worker") -> list[str]:
        return [
            sys.executable, "-m", module,
            "--agent-id", self.agent_id,
            "--endpoint", self.endpoint,
            "--incarnation", str(self.incarnation),
            "--death-fd", str(self.death_fd),
            "--heartbeat-interval", repr(self.heartbeat_interval_s),
            "--coordinator-timeout", repr(self.coordinator_timeout_s),
            "--inbox-capacity", str(self.inbox_capacity),
            *self.limits.argv(),
        ]  # fmt: skip


Landed = Callable[[int, "Launched | OSError"], None]
"""How a batch launch reports each agent: its index in the batch, and its process or why it
could not be launched."""


class Launched(Protocol):
    """What a launcher hands back: enough to signal and reap the process."""

    @property
    def pid(self) -> int: ...

    def mark_reaped(self, returncode: int) -> None:
        """The cluster reaped the pid itself (wait4); the launcher must not wait on it."""


class Launcher(Protocol):
    name: str

    def launch(self, spec: LaunchSpec) -> Launched: ...

    def launch_many(self, specs: list[LaunchSpec], landed: Landed) -> None:
        """Launch each of `specs`, in order, calling `landed(i, process or error)` as each is
        known. Blocking, and called from a worker thread: the cluster launches in batches off
        the event loop."""

    def prepare(self, spec: LaunchSpec) -> None:
        """Get ready to launch agents like `spec` (start a template); blocking, so the
        runner calls it in a thread, off the event loop."""

    def close(self) -> None:
        """Release what the launcher holds (a template process), once its agents are gone."""


class _SpawnedProcess:
    def __init__(self, popen: subprocess.Popen[bytes], log: IO[bytes]) -> None:
        self._popen = popen
        self._log = log

    @property
    def pid(self) -> int:
        return self._popen.pid

    def mark_reaped(self, returncode: int) -> None:
        # Popen would otherwise try to waitpid() a pid that may already belong to someone else.
        self._popen.returncode = returncode
        self._log.close()


class SpawnLauncher:
    """A fresh interpreter per agent: `python -m agent_worker ...`, in its own process group,
    with the death pipe's read end and its output in the agent's log. `module` and
    `extra_args` let a benchmark run its own worker the same way.

    A process group, not a session: teardown signals the group, and a terminal's Ctrl-C
    (sent to the foreground group) does not reach the agents, as with a session. But Linux
    schedules each session as its own group (autogroup, on by default), so 32 agents in 32
    sessions took 32 shares of the CPU against the coordinator's one, while every message
    waits on the coordinator; in the coordinator's session, the agents' niceness is what
    decides (see AGENT_NICE in run/runner.py)."""

    def __init__(
        self, module: str = "agent_worker", extra_args: tuple[str, ...] = (), name: str = "spawn"
    ) -> None:
        self.module = module
        self.extra_args = extra_args
        self.name = name

    def launch(self, spec: LaunchSpec) -> Launched:
        spec.agent_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        log = spec.log_path.open("ab")
        env = {**os.environ, **spec.env}
        argv = [*spec.argv(self.module), *self.extra_args]
        keys = None
        try:
            if spec.credentials is not None:
                keys = hand_over(spec.credentials)
                argv += ["--credentials-fd", str(keys)]
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(spec.death_fd,) + ((keys,) if keys is not None else ()),
                process_group=0,
                env=env,
            )
        except BaseException:
            log.close()
            raise
        finally:
            if keys is not None:
                os.close(keys)  # the agent has its copy
        if spec.nice:
            # Set from here, before the agent starts its threads (they inherit it); a
            # preexec_fn would cost Popen its vfork fast path.
            with contextlib.suppress(OSError):
                mine = os.getpriority(os.PRIO_PROCESS, 0)
                os.setpriority(os.PRIO_PROCESS, popen.pid, min(19, mine + spec.nice))
        return _SpawnedProcess(popen, log)

    def launch_many(self, specs: list[LaunchSpec], landed: Landed) -> None:
        for i, spec in enumerate(specs):
            try:
                process = self.launch(spec)
            except OSError as exc:
                landed(i, exc)
            else:
                landed(i, process)

    def prepare(self, spec: LaunchSpec) -> None:
        pass

    def close(self) -> None:
        pass


class _ForkedProcess:
    def __init__(self, pid: int) -> None:
        self._pid = pid

    @property
    def pid(self) -> int:
        return self._pid

    def mark_reaped(self, returncode: int) -> None:
        pass  # the cluster reaped it: it is this process's child (a subreaper's orphan)


PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>


def become_subreaper() -> bool:
    """Make orphaned descendants this process's children (so forked agents can be reaped
    here); False where the kernel cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


class ForkServerLauncher:
    """Agents forked from a template that has already imported the agent's modules (and the
    scenario's plugins, `preload`): an agent is ready in milliseconds and shares the
    template's pages until it writes to them. One template per run, started at the first
    launch, in the run's directory; `close` ends it."""

    name = "fork"

    def __init__(self, preload: tuple[str, ...] = ()) -> None:
        self.preload = preload
        self._template: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._answers: IO[bytes] | None = None
        self._lock = threading.Lock()
        """One batch at a time on the control socket: a restart (on the loop) may launch
        while a batch is under way in a worker thread, and their answers must not cross."""

    def _start(self, spec: LaunchSpec) -> socket.socket:
        if not become_subreaper():
            raise OSError("this system cannot adopt forked agents (no PR_SET_CHILD_SUBREAPER)")
        ours, theirs = socket.socketpair()
        spec.agent_dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        log = (spec.agent_dir.parent / "forkserver.log").open("ab")
        try:
            command = [
                sys.executable, "-m", "agent_worker.forkserver",
                "--control-fd", str(theirs.fileno()), "--death-fd", str(spec.death_fd),
            ]  # fmt: skip
            for module in self.preload:
                command += ["--preload", module]
            self._template = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(theirs.fileno(), spec.death_fd),
                process_group=0,
                env={**os.environ, **spec.env},
            )
        finally:
            theirs.close()
            log.close()
        self._control = ours
        self._answers = ours.makefile("rb")
        ready = self._answers.readline()  # the template has imported everything
        if not ready:
            raise OSError(f"the fork server did not start (see {log.name})")
        return ours

    def prepare(self, spec: LaunchSpec) -> None:
        """Start the template and wait until it has imported everything (about 0.2 s, which
        is why the runner does this in a thread)."""
        if self._control is None:
            self._start(spec)

    def launch(self, spec: LaunchSpec) -> Launched:
        results: list[Launched | OSError] = []
        self.launch_many([spec], lambda _, result: results.append(result))
        if isinstance(results[0], OSError):
            raise results[0]
        return results[0]

    def launch_many(self, specs: list[LaunchSpec], landed: Landed) -> None:
        """Every request is written at once and the template answers them in order: one
        round trip per batch, not per agent (the coordinator's wait for each answer was 8 ms
        of a blocked loop per agent with 512 agents starting on 2 cores)."""
        if not specs:
            return
        control = self._control or self._start(specs[0])
        with self._lock:
            self._launch_many(control, specs, landed)

    def _launch_many(
        self, control: socket.socket, specs: list[LaunchSpec], landed: Landed
    ) -> None:
        assert self._answers is not None
        mine = os.getpriority(os.PRIO_PROCESS, 0)
        for spec in specs:
            spec.agent_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            request = {
                "argv": spec.argv()[3:],  # without `python -m agent_worker`
                "log": str(spec.log_path),
                "env": spec.env,
                "priority": min(19, mine + spec.nice),
                "keys": spec.credentials is not None,
            }
            line = json.dumps(request).encode() + b"\n"
            if spec.credentials is None:
                control.sendall(line)
                continue
            # The keys go with the request as a descriptor (SCM_RIGHTS) that only the forked
            # agent reads: the template never holds them, so no agent inherits another's.
            keys = hand_over(spec.credentials)
            try:
                socket.send_fds(control, [line], [keys])
            finally:
                os.close(keys)
        for i, spec in enumerate(specs):
            line = self._answers.readline()
            if not line:
                where = f"{spec.agent_dir.parent}/forkserver.log"
                landed(i, OSError(f"the fork server ended (see {where})"))
                continue
            answer = json.loads(line)
            if "pid" in answer:
                landed(i, _ForkedProcess(int(answer["pid"])))
            else:
                error = answer.get("error")
                landed(i, OSError(f"the fork server could not fork {spec.agent_id}: {error}"))

    def close(self) -> None:
        if self._answers is not None:
            self._answers.close()
            self._answers = None
        if self._control is not None:
            self._control.close()  # the template reads EOF and leaves
            self._control = None
        if self._template is not None:
            try:
                self._template.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                self._template.kill()
                self._template.wait()
            self._template = None


def default_launcher() -> str:
    """`fork` on Linux (where forked agents can be adopted by the coordinator), else
    `spawn`."""
    return "fork" if sys.platform.startswith("linux") and hasattr(os, "fork") else "spawn"


LAUNCHERS: dict[str, Callable[[tuple[str, ...]], Launcher]] = {
    "spawn": lambda preload: SpawnLauncher(),
    "fork": lambda preload: ForkServerLauncher(preload),
}
"""Launcher name -> a new launcher for one run (given the plugin modules it may preload)."""
