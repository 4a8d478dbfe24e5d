"""`python -m agent_worker`: one agent process.

Started by the coordinator's launcher with the bus endpoint and the agent id; everything else
arrives in CONFIGURE. Exit codes: 0 after a clean STOP, 4 when the coordinator went away
(silent past its deadline, or the death pipe closed), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import ctypes
import faulthandler
import os
import resource
import signal
import sys
from collections.abc import Callable

from agent_worker.inbox import Abandon, Configured, Inbox
from agent_worker.runtime import EXIT_ABANDONED, AgentRuntime
from agent_worker.transport import Transport
from protocol import AgentConfig
from protocol.auth import read_credentials
from protocol.reliability import RetryPolicy

DEFAULT_INBOX = 1024
EXIT_USAGE = 2

Serve = Callable[[AgentConfig, Transport, Inbox], int]
"""What runs the agent once configured; returns the process's exit code."""


def build_parser(prog: str = "python -m agent_worker") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__)
    p.add_argument("--agent-id", required=True)
    p.add_argument("--endpoint", required=True, help="the coordinator's ROUTER endpoint")
    p.add_argument("--incarnation", type=int, default=1)
    p.add_argument("--death-fd", type=int, default=None, help="read end of the death pipe")
    p.add_argument("--heartbeat-interval", type=float, default=0.5, help="seconds")
    p.add_argument("--coordinator-timeout", type=float, default=10.0, help="seconds")
    p.add_argument("--inbox-capacity", type=int, default=DEFAULT_INBOX)
    p.add_argument("--credentials-fd", type=int, default=None,
                   help="a pipe holding the agent's CURVE keys (protocol.auth)")  # fmt: skip
    p.add_argument("--limit-data", type=int, default=None, help="bytes (RLIMIT_DATA)")
    p.add_argument("--limit-cpu", type=int, default=None, help="CPU seconds (RLIMIT_CPU)")
    p.add_argument("--limit-files", type=int, default=None, help="open files (RLIMIT_NOFILE)")
    return p


CPU_GRACE_S = 5
"""Between SIGXCPU (the soft CPU limit) and SIGKILL (the hard one)."""


def set_limits(args: argparse.Namespace) -> None:
    """Hold this process to its limits, before it starts anything. A data limit makes an
    allocation past it fail as a MemoryError (in the handler that asked for it) instead of the
    machine swapping; the kernel sends SIGXCPU at the CPU limit, whose default action ends the
    process (the coordinator reports it as the limit), and SIGKILL CPU_GRACE_S later. A limit
    above what this process may raise to is capped there."""
    wanted = [
        (resource.RLIMIT_DATA, args.limit_data, 0),
        (resource.RLIMIT_CPU, args.limit_cpu, CPU_GRACE_S),
        (resource.RLIMIT_NOFILE, args.limit_files, 0),
    ]
    for which, soft, grace in wanted:
        if soft is None:
            continue
        _, ceiling = resource.getrlimit(which)
        hard = soft + grace
        if ceiling != resource.RLIM_INFINITY:
            soft, hard = min(soft, ceiling), min(hard, ceiling)
        resource.setrlimit(which, (soft, hard))


def run_agent(args: argparse.Namespace, serve: Serve, policy: RetryPolicy | None = None) -> int:
    """Connect, wait for CONFIGURE, then hand over to `serve`; the transport is always closed."""
    # SIGUSR1 writes every thread's stack to stderr (the agent's log): the coordinator asks
    # for it before killing a hung agent. faulthandler writes from its C signal handler, so it
    # works while a handler blocks the event loop and while C code holds the GIL.
    faulthandler.register(signal.SIGUSR1, all_threads=True, chain=False)
    if args.credentials_fd is None:
        print(f"agent {args.agent_id}: no --credentials-fd: the bus admits no agent without"
              " its keys", file=sys.stderr)  # fmt: skip
        return EXIT_USAGE
    credentials = read_credentials(args.credentials_fd)
    inbox = Inbox(args.inbox_capacity)
    transport = Transport(
        args.agent_id,
        args.endpoint,
        args.incarnation,
        inbox,
        death_fd=args.death_fd,
        heartbeat_interval_s=args.heartbeat_interval,
        coordinator_timeout_s=args.coordinator_timeout,
        credentials=credentials,
        policy=policy,
    )
    transport.start()
    try:
        first = inbox.get()
        if isinstance(first, Abandon):
            print(
                f"agent {args.agent_id}: leaving before configuration: {first.reason}",
                file=sys.stderr,
            )
            return EXIT_ABANDONED
        if not isinstance(first, Configured):
            raise RuntimeError(f"expected CONFIGURE first, got {first!r}")
        return serve(first.config, transport, inbox)
    finally:
        transport.close()


def _serve_runtime(config: AgentConfig, transport: Transport, inbox: Inbox) -> int:
    return AgentRuntime(config, transport, inbox).serve()


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent (the coordinator) dies.

    The death pipe covers an agent that can still read it; this covers one that cannot: a
    frozen (SIGSTOPped) agent, an event loop that is blocked, a C call that holds the GIL.
    The parent is checked again after setting it, since it may have died just before."""
    parent = os.getppid()
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return  # no prctl: the death pipe and the silence deadline still apply
    if os.getppid() != parent:
        os._exit(EXIT_ABANDONED)


def main(argv: list[str] | None = None) -> int:
    die_with_parent()
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    set_limits(args)
    return run_agent(args, _serve_runtime)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
