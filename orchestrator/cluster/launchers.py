"""How an agent process comes to exist: the Launcher interface and the `spawn` launcher.

A launcher starts one agent process in its own process group (so teardown can signal the
group) with the death pipe's read end inherited, and returns its pid. Watching, stopping and
reaping are the supervisor's job, the same for every launcher.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol


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
        ]  # fmt: skip


class Launched(Protocol):
    """What a launcher hands back: enough to signal and reap the process."""

    @property
    def pid(self) -> int: ...

    def mark_reaped(self, returncode: int) -> None:
        """The supervisor reaped the pid itself (wait4); the launcher must not wait on it."""


class Launcher(Protocol):
    name: str

    def launch(self, spec: LaunchSpec) -> Launched: ...


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
        try:
            popen = subprocess.Popen(
                [*spec.argv(self.module), *self.extra_args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(spec.death_fd,),
                process_group=0,
                env=env,
            )
        except BaseException:
            log.close()
            raise
        if spec.nice:
            # Set from here, before the agent starts its threads (they inherit it); a
            # preexec_fn would cost Popen its vfork fast path.
            with contextlib.suppress(OSError):
                mine = os.getpriority(os.PRIO_PROCESS, 0)
                os.setpriority(os.PRIO_PROCESS, popen.pid, min(19, mine + spec.nice))
        return _SpawnedProcess(popen, log)


LAUNCHERS: dict[str, Launcher] = {"spawn": SpawnLauncher()}
