"""`python -m agent_worker.forkserver`: a template that forks agents on request.

Starting an interpreter and importing pydantic, zmq and the runtime costs every spawned agent
about 0.3 s of CPU and most of its private memory. The template pays it once: it imports the
agent's modules (and the scenario's plugins, when named) before any ZeroMQ context or thread
exists, freezes what it has (`gc.freeze()`, so collections in the children do not touch the
shared pages), and forks an agent for each request. Each agent then creates its own context,
socket, store and state, exactly as a spawned one does.

Every agent is forked twice: the first child forks the agent and exits at once, so the agent
is reparented to the nearest subreaper, the coordinator (which sets PR_SET_CHILD_SUBREAPER).
The coordinator therefore watches and reaps a forked agent as its own child, with its exit
status and CPU time, as it does a spawned one. The agent waits for its first parent to be
gone before it runs, so it is the coordinator's child by then.

Requests and answers are JSON lines on the control socket (fd `--control-fd`):
`ForkRequest` (argv, log, env, priority, keys; the keys themselves come as a descriptor with
the request, which the template passes on unread) -> `{"pid": n}` or
`{"error": "..."}`. The template leaves when the control socket closes or the death pipe
(`--death-fd`) reaches EOF (its coordinator is gone), and, like every agent, when its parent
dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import importlib
import json
import os
import select
import socket
import sys
import traceback
from typing import TypedDict

import agent_worker.__main__ as agent_main


class ForkRequest(TypedDict):
    """One line on the control socket: the agent to fork."""

    argv: list[str]
    """`python -m agent_worker`'s arguments."""
    log: str
    """Its log file (stdout and stderr)."""
    env: dict[str, str]
    """Added to the environment (PYTHONPATH for the scenario's plugins)."""
    priority: int
    """Its niceness."""
    keys: bool
    """Its CURVE keys come with the request, as a descriptor (SCM_RIGHTS) that only the
    forked agent reads (protocol.auth.hand_over)."""


def _become_agent(
    request: ForkRequest, control_fd: int, first_parent: int, keys: int | None, others: list[int]
) -> None:
    """In the forked agent: wait to be reparented, take the agent's place, run it, exit.

    `first_parent` is passed in, not read with getppid(): by the time this runs, the first
    child may already be gone and getppid() already the coordinator's pid."""
    code = 1
    try:
        with contextlib.suppress(ProcessLookupError, OSError):
            parent_fd = os.pidfd_open(first_parent)
            select.select([parent_fd], [], [])  # readable once that parent has exited
            os.close(parent_fd)
        os.setpgid(0, 0)
        os.close(control_fd)
        for fd in others:  # the keys of requests after this one: theirs, not this agent's
            os.close(fd)
        _name_process(request["argv"])
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.close(devnull)
        env = request["env"]
        os.environ.update(env)
        for folder in reversed(env.get("PYTHONPATH", "").split(os.pathsep)):
            if folder and folder not in sys.path:
                sys.path.insert(0, folder)
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, request["priority"])
        argv = list(request["argv"])
        if keys is not None:
            argv += ["--credentials-fd", str(keys)]
        code = agent_main.main(argv)
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


PR_SET_NAME = 15  # <linux/prctl.h>


def _name_process(argv: list[str]) -> None:
    """Name the forked agent after its id in `ps` and psutil (its command line stays the
    template's: a fork keeps it)."""
    agent_id = argv[argv.index("--agent-id") + 1] if "--agent-id" in argv else "agent"
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(PR_SET_NAME, f"sr:{agent_id}"[:15].encode(), 0, 0, 0)


def fork_agent(
    request: ForkRequest, control_fd: int, keys: int | None = None, others: list[int] | None = None
) -> int:
    """Fork an agent (twice, see the module's docstring); its pid. `keys`: the descriptor its
    keys come in (closed here once it is forked); `others`: descriptors the agent must not
    keep (other agents' keys)."""
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    first = os.fork()
    if first == 0:  # the first child: fork the agent, say its pid, leave
        os.close(read_end)
        try:
            me = os.getpid()
            agent = os.fork()
            if agent == 0:
                os.close(write_end)
                _become_agent(request, control_fd, me, keys, others or [])
            os.write(write_end, str(agent).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    if keys is not None:
        os.close(keys)  # the agent has it
    with os.fdopen(read_end, "rb") as answer:
        text = answer.read()
    os.waitpid(first, 0)
    return int(text)


def _request(line: bytes) -> ForkRequest:
    """A request line, checked (the coordinator writes it; a bad one is answered an error)."""
    raw = json.loads(line)
    if not isinstance(raw, dict):
        raise ValueError("a request is a JSON object")
    argv, log, env, priority = raw.get("argv"), raw.get("log"), raw.get("env"), raw.get("priority")
    keys = raw.get("keys", False)
    if not (isinstance(argv, list) and all(isinstance(a, str) for a in argv)):
        raise ValueError("argv must be a list of strings")
    if not isinstance(log, str) or not isinstance(priority, int):
        raise ValueError("log must be a path and priority an int")
    if not (isinstance(env, dict) and all(isinstance(v, str) for v in env.values())):
        raise ValueError("env must map names to strings")
    if not isinstance(keys, bool):
        raise ValueError("keys must be true or false")
    return ForkRequest(argv=argv, log=log, env=env, priority=priority, keys=keys)


def serve(control_fd: int, death_fd: int | None) -> int:
    watched = [control_fd] + ([death_fd] if death_fd is not None else [])
    control = socket.socket(fileno=control_fd)  # detached at the end: main owns the fd
    pending = b""
    keys: list[int] = []
    """Descriptors received with requests (their agents' keys), in the requests' order."""
    try:
        while True:
            ready, _, _ = select.select(watched, [], [])
            if death_fd is not None and death_fd in ready:
                return 0  # the coordinator is gone
            chunk, fds, _, _ = socket.recv_fds(control, 65536, 16)
            keys += fds
            if not chunk:
                return 0  # the coordinator closed the control socket: the run is over
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                answer: dict[str, int | str]
                try:
                    request = _request(line)
                    mine = keys.pop(0) if request["keys"] and keys else None
                    if request["keys"] and mine is None:
                        raise ValueError("the request's keys did not come with it")
                    answer = {"pid": fork_agent(request, control_fd, mine, keys)}
                except Exception as exc:
                    answer = {"error": f"{type(exc).__name__}: {exc}"}
                os.write(control_fd, json.dumps(answer).encode() + b"\n")
    finally:
        control.detach()
        for fd in keys:
            os.close(fd)


def main(argv: list[str] | None = None) -> int:
    agent_main.die_with_parent()
    p = argparse.ArgumentParser(prog="python -m agent_worker.forkserver", description=__doc__)
    p.add_argument("--control-fd", type=int, required=True)
    p.add_argument("--death-fd", type=int, default=None)
    p.add_argument("--preload", action="append", default=[],
                   help="a plugin module to import before forking (package.module)")  # fmt: skip
    args = p.parse_args(argv)
    for module in args.preload:
        # A plugin that fails to import here fails in the agent too, where it is reported.
        with contextlib.suppress(Exception):
            importlib.import_module(module)
    gc.collect()
    gc.freeze()
    os.write(args.control_fd, b'{"ready": true}\n')  # the imports are done: fork from here
    return serve(args.control_fd, args.death_fd)


if __name__ == "__main__":
    sys.exit(main())
