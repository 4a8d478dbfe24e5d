"""Why a run does not move: its pending waits, what each agent is doing and last said and
heard, and a wait-for graph across timelines with its cycles (a deadlock).

`diagnose` is read by people: a hung agent's error carries the part about that agent, a wait
that times out can write the whole (`--diagnose-on-timeout`), and SIGUSR1 to the coordinator
writes it for every run under way while they go on (`diagnostics-N.txt` in each run's report
directory).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from orchestrator.cluster.cluster import AgentHandle, AgentState
from orchestrator.events import Event, MessageDelivered, MessageSent
from orchestrator.run.executor import PendingWait

LAST_MESSAGES = 3
"""Messages in and out shown per agent."""
MAX_AGENTS_LISTED = 50
"""Past this many agents, only those a wait is on, or that are not simply running, are shown."""


@dataclass(frozen=True, slots=True)
class WaitEdge:
    waiter: str
    """A timeline key."""
    on: str
    """The timeline key it waits for."""
    why: str


def wait_for_graph(pending: Iterable[PendingWait]) -> list[WaitEdge]:
    """Edges between timelines: T1 waits for something the script makes agent X do, and X's
    own timeline T2 is itself waiting (so T1 waits for T2)."""
    waits = list(pending)
    blocked: dict[str, list[PendingWait]] = {}
    for w in waits:
        blocked.setdefault(w.actor, []).append(w)
    edges = []
    for w in waits:
        if not w.from_script or w.agent is None:
            continue
        for other in blocked.get(w.agent, []):
            if other.timeline != w.timeline:
                edges.append(WaitEdge(w.timeline, other.timeline, f"{w.path}: {w.what}"))
    return edges


def cycles(edges: Sequence[WaitEdge]) -> list[list[str]]:
    """Each cycle once (as its timelines, starting from the smallest key)."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.waiter, set()).add(e.on)
    found: set[tuple[str, ...]] = set()

    def walk(node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                loop = path[path.index(nxt) :]
                start = loop.index(min(loop))
                found.add(tuple(loop[start:] + loop[:start]))
            elif len(path) < 64:
                walk(nxt, [*path, nxt])

    for node in sorted(graph):
        walk(node, [node])
    return [list(c) for c in sorted(found)]


def _ago(now: float, then: float) -> str:
    return f"{max(0.0, now - then):.1f}s ago"


def last_messages(ring: Iterable[Event], agent: str, limit: int = LAST_MESSAGES) -> list[str]:
    """The agent's last messages out and in, newest first, from the event log's ring."""
    out: list[str] = []
    in_: list[str] = []
    for event in reversed(list(ring)):
        if isinstance(event, MessageSent) and event.agent == agent and len(out) < limit:
            text = event.text if len(event.text) <= 80 else event.text[:77] + "..."
            out.append(f"out t={event.t:.2f}s {event.msg_id} to {event.room}: {text!r}")
        elif isinstance(event, MessageDelivered) and event.agent == agent and len(in_) < limit:
            in_.append(f"in  t={event.t:.2f}s {event.msg_id} from {event.sender}")
        if len(out) >= limit and len(in_) >= limit:
            break
    return out + in_


def agent_lines(handle: AgentHandle, ring: Iterable[Event], now: float) -> list[str]:
    """What one agent is doing, when it was last heard, and its last messages."""
    link = handle.link
    lines = [f"agent {handle.id} (pid {handle.pid}): {handle.state.value}"]
    if link.paused:
        lines[0] += " (stopped by a fault)"
    doing, for_s, said_at = link.doing
    if doing:
        lines.append(f"  busy with {doing} for {for_s + now - said_at:.1f}s")
    elif link.progress is not None:
        lines.append("  waiting for work")
    if link.last_heard:
        lines.append(f"  last heard {_ago(now, link.last_heard)}")
    if link.progress is not None:
        lines.append(f"  its event loop last moved {_ago(now, link.progress_at)}")
    lines += [f"  {m}" for m in last_messages(ring, handle.id)]
    return lines


def diagnose(
    pending: Iterable[PendingWait],
    handles: dict[str, AgentHandle],
    ring: Iterable[Event],
    *,
    now: float | None = None,
    title: str = "",
) -> str:
    now = time.monotonic() if now is None else now
    waits = sorted(pending, key=lambda w: w.since)
    ring = list(ring)
    lines = [title] if title else []
    lines.append(f"pending waits ({len(waits)}):")
    for w in waits:
        on = f" on {w.agent}" if w.agent else ""
        lines.append(
            f"  {w.actor} [{w.timeline}] {w.path}: {w.what}{on}, since {_ago(now, w.since)},"
            f" {max(0.0, w.deadline - now):.1f}s left"
        )
    if not waits:
        lines.append("  none")
    edges = wait_for_graph(waits)
    lines.append("wait-for graph (timeline -> timeline it waits for):")
    drawn = [f"  {e.waiter} -> {e.on}: {e.why}" for e in edges]
    lines += drawn or ["  no timeline waits for another"]
    for loop in cycles(edges):
        lines.append("DEADLOCK: " + " -> ".join([*loop, loop[0]]) + " wait for each other")
    waited_on = {w.agent for w in waits if w.agent}
    shown = [
        h for h in handles.values()
        if len(handles) <= MAX_AGENTS_LISTED or h.id in waited_on or h.link.paused
        or h.state is not AgentState.READY
    ]  # fmt: skip
    lines.append(f"agents ({len(shown)} of {len(handles)}):")
    for handle in shown:
        lines += ["  " + line for line in agent_lines(handle, ring, now)]
    return "\n".join(lines) + "\n"
