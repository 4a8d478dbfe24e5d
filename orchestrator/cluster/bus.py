"""The coordinator's bus: one ROUTER socket that every agent's DEALER connects to.

Every agent-to-agent message passes through here, so the bus is where delivery is made
reliable and observable. Per agent it keeps a link: an `Outbox` of frames to that agent (window,
peer credit, retries with backoff, dead letters) and an `Inbound` tracker of frames from it
(in order, exactly once). It fans room messages out to members, correlates commands with
results, answers heartbeats, notices hung agents, and records everything in the event log.

The socket is a plain (non-asyncio) pyzmq socket whose file descriptor is registered with the
event loop: on readiness the bus drains it without blocking. That is what zmq.asyncio does
inside, minus a Future per frame, which matters at tens of thousands of frames per second.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum

import zmq
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

from orchestrator import events as ev
from orchestrator.cluster.faults import Transmission, WireFault, test_loss_from_env
from orchestrator.events import EventLog
from orchestrator.metrics import LatencyHistogram
from protocol import (
    COORDINATOR_ID,
    PROTOCOL_VERSION,
    SEQUENCED_KINDS,
    SOCKET_MAX_MSG_BYTES,
    Ack,
    ActionFinished,
    ActionStarted,
    AgentConfig,
    AgentErrorEvent,
    Bye,
    Cmd,
    Configure,
    DecodeError,
    Err,
    Event,
    Header,
    Hello,
    Kind,
    Msg,
    PluginEvent,
    Pong,
    Ready,
    RejectReason,
    Result,
    StateChanged,
    Stop,
    WireModel,
    decode_body,
    encode_body,
    split_frames,
)
from protocol.auth import ZAP_DOMAIN, Credentials
from protocol.bodies import Command, Ping
from protocol.codec import kind_of
from protocol.frames_io import (
    readable,
    recv_frames,
    recv_part,
    recv_rest,
    recv_rest_with_user,
    send_frames,
)
from protocol.liveness import Liveness
from protocol.reliability import Inbound, Outbox, Pending, RetryPolicy

HWM = 100_000
BATCH = 64
"""Frames drained per readiness callback before yielding to other tasks."""
PAUSED_RECHECK_S = 0.5
"""How often the retransmission timer looks again at a stopped agent's link (it only holds)."""
TIMER_SLACK_S = 0.005
"""Retransmission deadlines this close together are served by one timer callback."""


class AgentGone(Exception):
    """The agent a command or stop was meant for has exited or was declared dead."""


class LinkState(Enum):
    EXPECTED = "expected"
    CONFIGURED = "configured"
    READY = "ready"
    STOPPING = "stopping"
    GONE = "gone"


@dataclass(slots=True)
class Outgoing:
    """A sequenced frame queued for one agent."""

    kind: Kind
    body: bytes
    corr: int = 0
    msg_id: str | None = None
    sender: str | None = None
    room: str = ""
    accepted_at: float = 0.0


@dataclass(slots=True)
class LinkStats:
    posted: int = 0
    """MSG frames this agent posted (accepted by the bus)."""
    delivered: int = 0
    """MSG frames delivered to this agent (acknowledged by it)."""
    retries: int = 0
    duplicates_dropped: int = 0
    dead_letters: int = 0
    refused: int = 0
    """Messages this agent posted that the bus refused."""
    rejected: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)


def _agent_event(agent: str, body: Event) -> ev.Event:
    """The coordinator's event for an agent's EVENT body (validated by the codec already)."""
    e = body.event
    if isinstance(e, StateChanged):
        return ev.StateChanged(agent=agent, path=e.path, value=e.value, previous=e.previous)
    if isinstance(e, ActionStarted):
        return ev.ActionStarted(
            agent=agent, action=e.action, call_id=e.call_id, params=e.params, origin=e.origin,
            msg_id=e.msg_id, room=e.room,
        )  # fmt: skip
    if isinstance(e, ActionFinished):
        ended = ev.ActionCompleted if e.type == "action.completed" else ev.ActionFailed
        return ended(
            agent=agent, action=e.action, call_id=e.call_id, params=e.params, origin=e.origin,
            msg_id=e.msg_id, room=e.room, status=e.status, error=e.error,
            duration_ms=e.duration_ms, result=e.result,
        )  # fmt: skip
    if isinstance(e, AgentErrorEvent):
        return ev.AgentError(
            agent=agent, error_kind=ev.error_kind_of(e.kind), where=e.where, error=e.error
        )
    assert isinstance(e, PluginEvent)
    return ev.PluginEventRecord(agent=agent, name=e.name, data=e.data)


_FAILED_HANDSHAKE = (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


def bind_endpoint(sock: zmq.Socket[bytes], endpoint: str) -> str:
    """Bind `sock` and return where it listens: an ipc socket file is made private (0600:
    only this user may connect; its run directory is 0700 too), and a tcp port of `*` is
    resolved to the port the system gave."""
    if endpoint.startswith("tcp://["):
        sock.setsockopt(zmq.IPV6, 1)
    sock.bind(endpoint)
    if endpoint.startswith("ipc://"):
        os.chmod(endpoint.removeprefix("ipc://"), 0o600)
        return endpoint
    last = sock.getsockopt(zmq.LAST_ENDPOINT)
    return last.decode() if isinstance(last, bytes) else endpoint


class Link:
    def __init__(
        self, config: AgentConfig, incarnation: int, policy: RetryPolicy, server_public: bytes
    ) -> None:
        self.config = config
        self.agent_id = config.agent_id
        self.credentials = Credentials.issue(server_public)
        """The keys this incarnation, and only it, connects with."""
        self.rid: bytes | None = None
        """The routing id the ROUTER gave its connection, learnt from its first frame (the
        peer does not choose it; see Bus._bind)."""
        self.admitted = False
        """Its key has been admitted (once: a key admits one connection)."""
        self.incarnation = incarnation
        self.policy = policy
        self.state = LinkState.EXPECTED
        self.outbox: Outbox[Outgoing] = Outbox(policy, initial_credit=1)
        """Credit 1 covers CONFIGURE; HELLO then says the agent's real inbox size."""
        self.inbound: Inbound[tuple[Header, WireModel, bytes]] = Inbound()
        self.stats = LinkStats()
        self.hello: Hello | None = None
        self.ready_info: Ready | None = None
        self.bye: Bye | None = None
        self.last_heard = 0.0
        self.last_sent = 0.0
        self.added_at = time.monotonic()
        self.check_at = float("inf")
        """When the bus's retransmission timer looks at this link next (see Bus._on_timer)."""
        self.commands: set[int] = set()
        """Correlation ids of commands sent to this agent and not yet answered."""
        self.paused = False
        """Stopped by the script (a `stop` fault): not hung, whatever its silence."""
        self.early: list[Outgoing] = []
        """Frames for it before its HELLO: sent after CONFIGURE."""
        self.progress: int | None = None
        """The agent runtime's event-loop ticks, from its ACKs (None: it sends none)."""
        self.progress_at = 0.0
        """When the tick count last moved."""
        self.doing: tuple[str, float, float] = ("", 0.0, 0.0)
        """What its runtime said it was busy with, for how long, and when it said so."""
        self.ready: asyncio.Future[Ready] = asyncio.get_running_loop().create_future()
        self.bye_future: asyncio.Future[Bye] = asyncio.get_running_loop().create_future()
        self.gone_reason: str | None = None


class Bus:
    def __init__(
        self,
        endpoint: str,
        events: EventLog,
        *,
        policy: RetryPolicy | None = None,
        liveness: Liveness | None = None,
        on_hung: Callable[[str, float, str], str] | None = None,
        on_ready: Callable[[str, Ready], None] | None = None,
    ) -> None:
        """`on_hung(agent, stuck_s, why)` hears of an agent silent past the hung deadline, or
        whose runtime made no progress that long (and returns the reason its pending
        deliveries fail with); `on_ready` of each READY."""
        self.endpoint = endpoint
        self.events = events
        self.policy = policy or RetryPolicy()
        liveness = liveness or Liveness()
        self.heartbeat_interval_s = liveness.heartbeat_interval_s
        self.ping_interval_s = liveness.ping_interval_s
        self.hung_after_s = liveness.hung_after_s
        self.on_hung = on_hung
        self.on_ready = on_ready
        self.incarnation = time.time_ns() & ((1 << 62) - 1)
        self.links: dict[str, Link] = {}
        self._by_rid: dict[bytes, Link] = {}
        self.rooms: dict[str, tuple[str, ...]] = {}
        self.rejected: Counter[str] = Counter()
        self.messages_routed = 0
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._monitor: zmq.Socket[bytes] | None = None
        self._accepted = 0
        """Connections the bus socket accepted."""
        self._incarnations = 0
        """Agent processes it expects to connect (one connection each)."""
        self.wire_faults: list[WireFault] = []
        """Bus faults in force (`fault` steps): they end by time or by count."""
        self.dead_letters = 0
        self.refused = 0
        """Messages the bus refused (an unknown room, a room the sender is not in)."""
        self._commands: dict[int, asyncio.Future[Result]] = {}
        self._next_corr = 1
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._sock: zmq.Socket[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._checks: list[tuple[float, int, Link]] = []
        """A heap of (when, tie-break, link): the links with frames awaiting an ack, by their
        next retransmission deadline, so that a timer visits only links with something due."""
        self._tiebreak = itertools.count()
        self._sweep: asyncio.TimerHandle | None = None
        self._touched: set[Link] = set()
        self._drain_scheduled = False
        self._frame_faults: list[WireFault] = []
        """The faults of `wire_faults` that lose whole frames (`frames: all`)."""
        self._next_fault_end = float("inf")
        """When the next fault in force ends (0: one ended by its count): before it, the faults
        are not looked over on every transmission."""
        hook = test_loss_from_env()
        if hook is not None:
            self.add_wire_fault(hook)
        self._server_public, self._server_secret = zmq.curve_keypair()
        self._keys: dict[bytes, Link] = {}
        """Public key -> the link (agent incarnation) it was issued to."""
        self._zap: zmq.Socket[bytes] | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._ctx = zmq.Context()
        # The ZAP handler must be bound before the first handshake, or libzmq admits anyone.
        self._zap = self._ctx.socket(zmq.REP)
        self._zap.setsockopt(zmq.LINGER, 0)
        self._zap.bind("inproc://zeromq.zap.01")
        self._loop.add_reader(self._zap.fileno(), self._on_zap)
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.curve_server = True
        sock.curve_secretkey = self._server_secret
        sock.curve_publickey = self._server_public
        sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, HWM)
        sock.setsockopt(zmq.RCVHWM, HWM)
        sock.setsockopt(zmq.MAXMSGSIZE, SOCKET_MAX_MSG_BYTES)
        self.endpoint = bind_endpoint(sock, self.endpoint)
        self._sock = sock
        # A frame over MAXMSGSIZE makes libzmq drop the connection, with the frame and all
        # queued behind it, and tell nobody; the agent's socket then reconnects. Counting the
        # connections authenticated against the incarnations launched makes that a counted,
        # reported rejection instead of a silent loss. (Strangers fail the handshake: the ZAP
        # handler counts those.)
        self._monitor = sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED
            | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
        )
        self._loop.add_reader(self._monitor.fileno(), self._on_monitor)
        self._loop.add_reader(sock.fileno(), self._on_readable)
        self._sweep = self._loop.call_later(self.heartbeat_interval_s, self._on_sweep)
        self._on_readable()  # the FD is edge-triggered: take anything already queued
        self._on_monitor()
        self._on_zap()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        if self._monitor is not None and self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._monitor.fileno())
            with contextlib.suppress(Exception):
                if self._sock is not None:
                    self._sock.disable_monitor()
            self._monitor.close(0)
            self._monitor = None
        if self._sock is not None and self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close(0)
            self._sock = None
        if self._zap is not None and self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._zap.fileno())
            self._zap.close(0)
            self._zap = None
        if self._ctx is not None:
            self._ctx.destroy(linger=0)
            self._ctx = None
        if self.endpoint.startswith("ipc://"):
            # libzmq leaves the socket file behind on close; the run must not.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.endpoint.removeprefix("ipc://"))
        for future in self._commands.values():
            if not future.done():
                future.set_exception(AgentGone("the bus closed"))
        self._commands.clear()

    # -- configuration --------------------------------------------------------------------
    def add_agent(self, config: AgentConfig, incarnation: int = 1) -> Link:
        if config.agent_id == COORDINATOR_ID:
            raise ValueError(f"agent id {COORDINATOR_ID!r} is reserved")
        link = Link(config, incarnation, self.policy, self._server_public)
        link.last_heard = time.monotonic()
        self._incarnations += 1
        self.links[config.agent_id] = link
        self._keys[link.credentials.public] = link
        return link

    def pause(self, agent: str, paused: bool) -> None:
        """A `stop` fault (paused) or its `cont`: a stopped agent is not declared hung, and
        its silence while stopped does not count once it runs again."""
        link = self.links[agent]
        link.paused = paused
        if not paused:
            link.last_heard = link.progress_at = time.monotonic()
            self._check_by(link, link.last_heard)  # what was held goes now

    def set_rooms(self, rooms: Iterable[tuple[str, tuple[str, ...]]]) -> None:
        self.rooms = dict(rooms)

    # -- API used by the cluster ---------------------------------------------------------
    async def command(
        self,
        agent: str,
        command: Command,
        timeout: float,
    ) -> Result:
        """Run a command in `agent` and return its RESULT; TimeoutError / AgentGone otherwise."""
        link = self.links[agent]
        if link.state is LinkState.GONE:
            raise AgentGone(f"agent {agent} is gone: {link.gone_reason}")
        corr = self._next_corr
        self._next_corr += 1
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._commands[corr] = future
        link.commands.add(corr)
        self.events.emit(
            ev.CommandSent(agent=agent, corr=corr, command=command.model_dump(mode="json"))
        )
        self._enqueue(link, Outgoing(Kind.CMD, encode_body(Cmd(command=command)), corr=corr))
        self._flush()
        try:
            async with asyncio.timeout(timeout):  # not wait_for: see EventLog.until
                return await future
        finally:
            self._commands.pop(corr, None)
            link.commands.discard(corr)

    async def wait_idle(self, deadline: float) -> bool:
        """Wait until no live link has a frame queued or unacknowledged (everything the bus
        was given is delivered), or `deadline` (monotonic): whether it got there."""
        loop = asyncio.get_running_loop()
        while True:
            if all(k.outbox.idle for k in self.links.values() if k.state is not LinkState.GONE):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            waiter: asyncio.Future[None] = loop.create_future()
            self._idle_waiters.append(waiter)
            try:
                async with asyncio.timeout(left):
                    await waiter
            except TimeoutError:
                return False
            finally:
                with contextlib.suppress(ValueError):
                    self._idle_waiters.remove(waiter)

    def _maybe_idle(self, link: Link) -> None:
        """A link's outbox may have emptied: let `wait_idle` look again."""
        if self._idle_waiters and (link.outbox.idle or link.state is LinkState.GONE):
            for waiter in self._idle_waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._idle_waiters.clear()

    async def stop_agent(self, agent: str, deadline_s: float) -> Bye | None:
        """Ask `agent` to stop; its BYE, or None if it did not say goodbye in time."""
        link = self.links[agent]
        if link.state is LinkState.GONE:
            return link.bye
        link.state = LinkState.STOPPING
        self.events.emit(ev.AgentStopping(agent=agent, deadline_s=deadline_s))
        stop = Stop(deadline_ms=int(deadline_s * 1000))
        self._enqueue(link, Outgoing(Kind.STOP, encode_body(stop)))
        self._flush()
        try:
            async with asyncio.timeout(deadline_s):  # not wait_for: see EventLog.until
                return await asyncio.shield(link.bye_future)
        except (TimeoutError, AgentGone):
            return link.bye

    def agent_gone(self, agent: str, reason: str, link: Link | None = None) -> None:
        """The agent's process ended (or was declared dead): fail everything bound for it.
        With `link`, only if that is still the agent's link (an older incarnation's end must
        not touch its successor's)."""
        current = self.links.get(agent)
        if link is not None and link is not current:
            link.state = LinkState.GONE
            self._keys.pop(link.credentials.public, None)
            return
        link = current
        if link is None or link.state is LinkState.GONE:
            return
        # It may not connect again; frames already queued from it still find its link (and
        # are ignored, GONE), not counted as a stranger's.
        self._keys.pop(link.credentials.public, None)
        link.state = LinkState.GONE
        link.gone_reason = reason
        early, link.early = link.early, []
        for pending in [*link.outbox.fail_all(), *(Pending(0, item) for item in early)]:
            self._dead_letter(link, pending, f"recipient {agent} is gone: {reason}")
        self._maybe_idle(link)
        if not link.ready.done():
            link.ready.set_exception(AgentGone(f"agent {agent} exited before READY: {reason}"))
            link.ready.exception()  # retrieved here so an unawaited future is not reported
        if not link.bye_future.done():
            link.bye_future.set_exception(AgentGone(reason))
            link.bye_future.exception()
        # Commands it had already taken (an action running in it) will never be answered:
        # their steps fail now, not at their timeout.
        for corr in list(link.commands):
            future = self._commands.pop(corr, None)
            if future is not None and not future.done():
                future.set_exception(AgentGone(f"agent {agent} is gone: {reason}"))
        link.commands.clear()

    # -- sending --------------------------------------------------------------------------
    def _enqueue(self, link: Link, item: Outgoing) -> None:
        if link.state is LinkState.EXPECTED and item.kind is not Kind.CONFIGURE:
            # Before its HELLO (a restarted agent that others go on talking to): held, so
            # that CONFIGURE is its first sequenced frame, as the agent requires.
            link.early.append(item)
            return
        link.outbox.push(item)
        self._touched.add(link)

    def _flush(self) -> None:
        """Send what windows allow and the acks that are due, for every link touched."""
        now = time.monotonic()
        touched, self._touched = self._touched, set()
        for link in touched:
            if link.state is LinkState.GONE:
                continue
            for pending in link.outbox.take_sendable(now):
                self._send_pending(link, pending)
            # Whatever the outbox now waits for: the frames just sent, and frames a broken
            # link refused on push (due at once, as dead letters: nothing else reports them).
            deadline = link.outbox.next_deadline()
            if deadline is not None:
                self._check_by(link, deadline)
            if link.inbound.ack_due:
                self._send(link, Kind.ACK, encode_body(Ack(credit=self.policy.window)), 0, 0)
                link.inbound.ack_due = False
        if self._sock is not None and readable(self._sock):
            self._schedule_drain()  # a send can consume the edge of the FD; look again

    def _send_pending(self, link: Link, pending: Pending[Outgoing]) -> None:
        item = pending.item
        if item.kind is Kind.MSG and len(self.wire_faults) > len(self._frame_faults):
            plan = self._faulted(link, item)
            if plan is None:  # no fault in force matches it
                self._send(link, item.kind, item.body, pending.seq, item.corr)
                return
            if plan.delay_s > 0 and plan.copies and self._loop is not None:
                self._loop.call_later(plan.delay_s, self._send_late, link, pending, plan.copies)
                return
            for _ in range(plan.copies):
                self._send(link, item.kind, item.body, pending.seq, item.corr)
            return
        self._send(link, item.kind, item.body, pending.seq, item.corr)

    # -- faults on purpose (orchestrator/cluster/faults.py) ------------------------------
    def add_wire_fault(self, fault: WireFault) -> None:
        self.wire_faults.append(fault)
        if fault.frames == "all":
            self._frame_faults.append(fault)
        if fault.until is not None:
            self._next_fault_end = min(self._next_fault_end, fault.until)

    def _loses(self, link: Link | None, now: float) -> bool:
        """Whether a frame to or from `link` is lost to a `frames: all` fault."""
        if link is None:
            return False
        if now >= self._next_fault_end:
            self._end_wire_faults(now)
        lost = False
        for fault in self._frame_faults:
            if fault.touches(link.agent_id) and fault.loses():
                lost = True
                break
        if any(f.messages == 0 for f in self._frame_faults):
            self._next_fault_end = 0.0  # a window by count is spent: ended at the next look
        return lost

    def _faulted(self, link: Link, item: Outgoing) -> Transmission | None:
        """What the faults in force do to this transmission; None when none matches it (the
        common case, kept cheap: one clock read and a scope check per fault)."""
        now = time.monotonic()
        if now >= self._next_fault_end:
            self._end_wire_faults(now)
        plan = None
        for fault in self.wire_faults:
            if fault.frames != "all" and fault.matches(item.sender, link.agent_id, item.room):
                plan = plan or Transmission()
                fault.apply(plan)
                if fault.messages == 0:
                    self._next_fault_end = 0.0  # its count is spent: ended at the next look
        return plan

    def _send_late(self, link: Link, pending: Pending[Outgoing], copies: int) -> None:
        if link.state is LinkState.GONE or self._sock is None:
            return  # (sent late after its ack: the receiver drops it as a duplicate)
        for _ in range(copies):
            self._send(link, Kind.MSG, pending.item.body, pending.seq, pending.item.corr)
        self._flush()

    def end_wire_faults(self, why: str) -> None:
        """End every bus fault now (before teardown: a fault must not outlive the script)."""
        for fault in self.wire_faults:
            if not fault.lasting:
                self.events.emit(
                    ev.FaultEnded(fault=fault.kind, detail=f"{fault.summary()} ({why})")
                )
        self.wire_faults = [f for f in self.wire_faults if f.lasting]
        self._frame_faults = [f for f in self._frame_faults if f.lasting]

    def _end_wire_faults(self, now: float) -> None:
        for fault in [f for f in self.wire_faults if f.over(now)]:
            self.wire_faults.remove(fault)
            if fault in self._frame_faults:
                self._frame_faults.remove(fault)
            self.events.emit(ev.FaultEnded(fault=fault.kind, detail=fault.summary()))
        ends = [f.until for f in self.wire_faults if f.until is not None]
        self._next_fault_end = min(ends, default=float("inf"))

    def _send(self, link: Link, kind: Kind, body: bytes, seq: int, corr: int) -> bool:
        sock = self._sock
        if sock is None or link.rid is None:
            return False  # not connected yet: the outbox retries
        now_ns = time.monotonic_ns()
        if self._frame_faults and self._loses(link, now_ns / 1e9):
            link.last_sent = now_ns / 1e9
            return True  # lost on the way (a `frames: all` fault): as if sent
        header = Header(
            PROTOCOL_VERSION,
            kind,
            COORDINATOR_ID,
            link.agent_id,
            self.incarnation,
            seq,
            link.inbound.contiguous,
            corr,
            now_ns,
        ).encode()
        try:
            send_frames(sock, (link.rid, header, body))
        except zmq.Again:
            return False  # backpressure: sequenced frames stay in the outbox and are retried
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                return False  # not connected (yet, or any more): the outbox retries
            raise
        link.last_sent = now_ns / 1e9
        return True

    # -- receiving ------------------------------------------------------------------------
    def _schedule_drain(self) -> None:
        if not self._drain_scheduled and self._loop is not None:
            self._drain_scheduled = True
            self._loop.call_soon(self._on_readable)

    def _on_monitor(self) -> None:
        monitor = self._monitor
        while monitor is not None and readable(monitor):
            event = recv_monitor_message(monitor, zmq.NOBLOCK)
            kind = event["event"]
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._accepted += 1
                if self._accepted > self._incarnations:
                    self._reject(
                        RejectReason.CONNECTION,
                        f"connection {self._accepted} for {self._incarnations} agent"
                        " process(es): a peer reconnected after libzmq cut its connection (a"
                        f" frame over the {SOCKET_MAX_MSG_BYTES >> 20} MiB socket limit is"
                        " lost with whatever followed it)",
                        None,
                    )
            elif kind in _FAILED_HANDSHAKE:
                # (A refused key is EVENT_HANDSHAKE_FAILED_AUTH, counted by the ZAP handler
                # with the key's detail.)
                self._reject(
                    RejectReason.UNAUTHENTICATED,
                    "a connection that did not complete a CURVE handshake: refused (no keys, not"
                    " ZeroMQ at all, or a process that ended while it connected)",
                    None,
                )

    def take_queued(self) -> None:
        """Handle what is waiting on the socket now: before an agent's exit is acted on, its
        last frames (its BYE) must be, or they would reach a link already gone and be dropped
        (the process exit and the socket can be ready in the same turn of the loop)."""
        self._on_readable()

    def _on_zap(self) -> None:
        """ZAP (RFC 27) requests from the ROUTER's CURVE handshakes: a key issued to a live
        agent incarnation is admitted once, with the key as its user id (the frames it then
        sends carry it: see _bind); any other, or the same key again, is refused, counted and
        reported. Every request is answered, whatever it holds: an unanswered one would leave
        the REP socket waiting to send, and libzmq waiting on it for every later handshake."""
        zap = self._zap
        while zap is not None and readable(zap):
            request = recv_frames(zap)
            try:
                status, user = self._admit(request)
            except Exception as exc:  # never leave a request unanswered
                status, user = b"500", b""
                self.events.emit(ev.WireRejected(
                    agent=None, reason=RejectReason.UNAUTHENTICATED.value,
                    detail=f"the ZAP handler failed: {type(exc).__name__}: {exc}"[:300],
                    by="coordinator",
                ))  # fmt: skip
            version = request[0] if request else b"1.0"
            request_id = request[1] if len(request) > 1 else b""
            send_frames(zap, (version, request_id, status, b"", user, b""))

    def _admit(self, request: list[bytes]) -> tuple[bytes, bytes]:
        if len(request) < 7 or request[5] != b"CURVE" or len(request[6]) != 32:
            self._reject(RejectReason.UNAUTHENTICATED, "a handshake without a CURVE key", None)
            return b"400", b""
        key = z85.encode(request[6])
        link = self._keys.get(key)
        who = request[3].decode(errors="replace") or "?"
        if link is None or link.state is LinkState.GONE:
            self._reject(
                RejectReason.UNAUTHENTICATED,
                f"a connection from {who} with a key this run did not issue, or issued to an"
                " agent that has ended: refused",
                None,
            )
            return b"400", b""
        if link.admitted:
            # One connection per key: a second one is a copy of the key in other hands, or the
            # agent reconnecting after libzmq cut its connection (a frame over the socket
            # limit, lost with whatever followed it), which is then reported here.
            self._reject(
                RejectReason.UNAUTHENTICATED,
                f"a second connection from {who} with {link.agent_id}'s key: refused, as a key"
                " admits one connection (its agent reconnecting after libzmq cut it for a frame"
                f" over the {SOCKET_MAX_MSG_BYTES >> 20} MiB socket limit, or a copy of the"
                " key)",
                link,
            )
            return b"400", b""
        link.admitted = True
        return b"200", key

    def _bind(self, rid: bytes, user: bytes | None) -> None:
        """A frame from a routing id not seen before: its connection authenticated with the
        key in `user` (ZAP put it there, once per key), which names the one link it may
        speak for."""
        link = self._keys.get(user) if user else None
        if link is None or self.links.get(link.agent_id) is not link or link.rid is not None:
            return  # _on_frames rejects it as an unknown sender
        link.rid = rid
        self._by_rid[rid] = link

    def _on_readable(self) -> None:
        self._drain_scheduled = False
        sock = self._sock
        if sock is None:
            return
        now = time.monotonic()
        for _ in range(BATCH):
            if not readable(sock):
                break
            rid = recv_part(sock)
            if rid in self._by_rid:
                frames = recv_rest(sock, [rid])
            else:  # a connection's first frame: whose key is it?
                rest, user = recv_rest_with_user(sock)
                frames = [rid, *rest]
                self._bind(rid, user)
            if self._frame_faults and (lost := self._by_rid.get(rid)) and self._loses(lost, now):
                lost.last_heard = now  # lost, but sent: the agent's transport is alive
                continue
            self._on_frames(frames, now)
        else:
            self._schedule_drain()  # more may be waiting; let other callbacks run first
        self._flush()

    def _reject(self, reason: RejectReason, detail: str, link: Link | None) -> None:
        self.rejected[reason.value] += 1
        if link is not None:
            link.stats.rejected += 1
        self.events.emit(
            ev.WireRejected(
                agent=link.agent_id if link else None,
                reason=reason.value,
                detail=detail[:300],
                by="coordinator",
            )
        )

    def _on_frames(self, frames: list[bytes], now: float) -> None:
        if not frames:
            return
        link = self._by_rid.get(frames[0])
        if link is None:
            self._reject(RejectReason.UNKNOWN_SENDER, f"routing id {frames[0][:64]!r}", None)
            return
        try:
            header, body_frame = split_frames(frames[1:])
            if header.src != link.agent_id:
                raise DecodeError(RejectReason.SRC_MISMATCH, f"src {header.src!r}")
            body = decode_body(header.kind, body_frame)
        except DecodeError as exc:
            self._reject(exc.reason, exc.detail, link)
            return
        if link.state is LinkState.GONE:
            return
        if header.incarnation < link.incarnation:
            return  # a frame from a previous life of this agent id
        link.last_heard = now
        if isinstance(body, Ack) and body.progress is not None:
            if body.progress != link.progress:
                link.progress, link.progress_at = body.progress, now
            link.doing = (body.doing, body.doing_ms / 1000, now)
        credit = body.credit if isinstance(body, Ack) else None
        acked = link.outbox.on_ack(header.ack, credit, now)
        for pending in acked.acked:
            self._on_acked(link, pending, now)
        if acked.acked:
            self._maybe_idle(link)
        if credit is not None or acked.acked:
            self._touched.add(link)
        kind = header.kind
        if kind in SEQUENCED_KINDS:
            acceptance = link.inbound.accept(
                header.incarnation, header.seq, (header, body, body_frame)
            )
            if acceptance.duplicate:
                link.stats.duplicates_dropped += 1
            self._touched.add(link)
            for h, b, raw in acceptance.deliver:
                self._dispatch(link, h, b, raw, now)
        elif isinstance(body, Hello):
            self._on_hello(link, header, body)
        elif isinstance(body, Ping):
            self._send(link, Kind.PONG, encode_body(Pong(echo_ns=header.sent_ns)), 0, 0)
        elif isinstance(body, Err):  # the agent rejected a frame of ours
            self.events.emit(
                ev.WireRejected(
                    agent=link.agent_id, reason=body.reason, detail=body.detail[:300], by="agent"
                )
            )

    def _on_hello(self, link: Link, header: Header, hello: Hello) -> None:
        if hello.agent_id != link.agent_id:
            self._reject(RejectReason.SRC_MISMATCH, f"HELLO names {hello.agent_id!r}", link)
            return
        if link.hello is not None:
            return  # HELLO repeats until CONFIGURE arrives; CONFIGURE itself is retried
        link.hello = hello
        link.outbox.credit = hello.inbox_capacity
        link.incarnation = header.incarnation
        link.state = LinkState.CONFIGURED
        self.events.emit(
            ev.AgentHello(agent=link.agent_id, pid=hello.pid, python=hello.python,
                          pyzmq=hello.pyzmq)
        )  # fmt: skip
        self._enqueue(link, Outgoing(Kind.CONFIGURE, encode_body(Configure(config=link.config))))
        early, link.early = link.early, []
        for item in early:
            self._enqueue(link, item)

    def _dispatch(
        self, link: Link, header: Header, body: WireModel, raw: bytes, now: float
    ) -> None:
        agent = link.agent_id
        if isinstance(body, Msg):
            self._route(link, body, raw, now)
        elif isinstance(body, Result):
            if header.corr in self._commands and header.corr not in link.commands:
                # Correlation ids are sequential: one agent must not answer another's pending
                # command (a late answer to one of its own that timed out is harmless).
                self._reject(
                    RejectReason.UNEXPECTED_KIND,
                    f"a result for command {header.corr}, which {agent} was not sent",
                    link,
                )
                return
            future = self._commands.pop(header.corr, None)
            self.events.emit(
                ev.CommandResult(
                    agent=agent, corr=header.corr, ok=body.ok, value=body.value, error=body.error
                )
            )
            if future is not None and not future.done():
                future.set_result(body)
        elif isinstance(body, Event):
            self.events.emit(_agent_event(agent, body))
        elif isinstance(body, Ready):
            link.state = LinkState.READY
            link.ready_info = body
            self.events.emit(
                ev.AgentReady(agent=agent, pid=body.pid, store_path=body.store_path,
                              startup_s=round(now - link.added_at, 6))
            )  # fmt: skip
            if self.on_ready is not None:
                self.on_ready(agent, body)
            if not link.ready.done():
                link.ready.set_result(body)
        elif isinstance(body, Bye):
            link.bye = body
            stats = body.stats
            self.events.emit(
                ev.AgentBye(
                    agent=agent, undelivered=body.undelivered, messages_in=stats.messages_in,
                    messages_out=stats.messages_out, handler_errors=stats.handler_errors,
                    store_rows=stats.store_rows,
                )
            )  # fmt: skip
            if not link.bye_future.done():
                link.bye_future.set_result(body)
        else:
            self._reject(RejectReason.UNEXPECTED_KIND, f"{kind_of(body).name} from an agent", link)

    def _route(self, link: Link, msg: Msg, raw: bytes, now: float) -> None:
        """Fan `msg` out to the room; `raw` is its validated body frame, forwarded as is."""
        sender = link.agent_id
        if msg.sender != sender:
            self._reject(RejectReason.SRC_MISMATCH, f"MSG claims sender {msg.sender!r}", link)
            return
        members = self.rooms.get(msg.room)
        if members is None or sender not in members:
            reason = (
                f"unknown room {msg.room!r}"
                if members is None
                else f"{sender} is not a member of room {msg.room!r}"
            )
            self.refused += 1
            link.stats.refused += 1
            self.events.emit(
                ev.MessageRefused(agent=sender, msg_id=msg.msg_id, room=msg.room, text=msg.text,
                                  origin=msg.origin.value, reason=reason)
            )  # fmt: skip
            return
        link.stats.posted += 1
        self.messages_routed += 1
        self.events.emit(
            ev.MessageSent(agent=sender, msg_id=msg.msg_id, room=msg.room, text=msg.text,
                           origin=msg.origin.value, in_reply_to=msg.in_reply_to)
        )  # fmt: skip
        for member in members:
            if member == sender:
                continue
            target = self.links.get(member)
            item = Outgoing(Kind.MSG, raw, msg_id=msg.msg_id, sender=sender, room=msg.room,
                            accepted_at=now)  # fmt: skip
            if target is None or target.state is LinkState.GONE:
                why = target.gone_reason if target is not None else "not an agent"
                self._dead_letter_item(member, item, f"recipient {member} is gone: {why}")
                continue
            self._enqueue(target, item)

    def _on_acked(self, link: Link, pending: Pending[Outgoing], now: float) -> None:
        item = pending.item
        if item.kind is not Kind.MSG:
            return
        latency = now - item.accepted_at
        link.stats.delivered += 1
        link.stats.latency.add(latency)
        self.events.emit(
            ev.MessageDelivered(agent=link.agent_id, msg_id=item.msg_id or "",
                                sender=item.sender or "", room=item.room,
                                attempts=pending.attempts,
                                latency_ms=round(latency * 1000.0, 4))
        )  # fmt: skip

    def _dead_letter(self, link: Link, pending: Pending[Outgoing], reason: str) -> None:
        self._dead_letter_item(link.agent_id, pending.item, reason, pending.attempts)

    def _dead_letter_item(
        self, recipient: str, item: Outgoing, reason: str, attempts: int = 0
    ) -> None:
        self.dead_letters += 1
        target = self.links.get(recipient)
        if target is not None:
            target.stats.dead_letters += 1
        if item.kind is Kind.CMD:
            future = self._commands.pop(item.corr, None)
            if future is not None and not future.done():
                future.set_exception(AgentGone(reason))
        self.events.emit(
            ev.MessageDeadLetter(agent=item.sender, msg_id=item.msg_id, frame=item.kind.name,
                                 recipient=recipient, attempts=attempts, reason=reason)
        )  # fmt: skip

    # -- timers ---------------------------------------------------------------------------
    def _check_by(self, link: Link, when: float) -> None:
        """Make sure the retransmission timer looks at `link` by `when`."""
        if when >= link.check_at:
            return
        link.check_at = when
        heapq.heappush(self._checks, (when, next(self._tiebreak), link))
        if when < self._timer_at - TIMER_SLACK_S:
            self._arm_timer(when)

    def _arm_timer(self, when: float) -> None:
        if self._loop is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        # call_at takes the loop's clock; asyncio's default loop clock is time.monotonic().
        self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        """Retransmissions and dead letters, for the links whose deadline has come (within
        TIMER_SLACK_S: deadlines that close together are served by one timer). A link whose
        frames were acked meanwhile costs one look and leaves the heap."""
        self._timer = None
        self._timer_at = float("inf")
        now = time.monotonic()
        horizon = now + TIMER_SLACK_S
        checks = self._checks
        while checks and checks[0][0] <= horizon:
            when, _, link = heapq.heappop(checks)
            if when != link.check_at:
                continue  # superseded by an earlier check of the same link
            link.check_at = float("inf")
            if link.state is LinkState.GONE:
                continue
            if link.paused:
                # A `stop` fault: what is bound for it is held, not retried into dead letters,
                # until its `cont` (pause(False) looks at it again at once).
                link.check_at = now + PAUSED_RECHECK_S
                heapq.heappush(checks, (link.check_at, next(self._tiebreak), link))
                continue
            # Up to the horizon, not `now`: a frame due within the slack is served now, or it
            # would be popped again at once, forever.
            due = link.outbox.due(horizon)
            for pending in due.retransmit:
                link.stats.retries += 1
                if pending.item.kind is Kind.MSG:
                    self.events.emit(
                        ev.MessageRetry(agent=link.agent_id, msg_id=pending.item.msg_id or "",
                                        attempt=pending.attempts)
                    )  # fmt: skip
                self._send_pending(link, pending)
            for pending in due.expired:
                self._dead_letter(
                    link,
                    pending,
                    f"not acknowledged by {link.agent_id} after {pending.attempts} attempts",
                )
            if due.expired:
                self._maybe_idle(link)
            deadline = link.outbox.next_deadline()
            if deadline is not None:
                deadline = max(deadline, horizon + TIMER_SLACK_S)  # never again in this pass
                link.check_at = deadline
                heapq.heappush(checks, (deadline, next(self._tiebreak), link))
        if checks:
            self._arm_timer(max(checks[0][0], now + TIMER_SLACK_S))
        self._flush()

    def _on_sweep(self) -> None:
        """Liveness, once per heartbeat interval: PING links the bus has said nothing to for
        a while (the agent's proof that the coordinator lives), and declare hung any agent
        silent past the deadline. One pass over the links per interval, whatever the
        traffic."""
        assert self._loop is not None
        now = time.monotonic()
        if self.wire_faults:
            self._end_wire_faults(now)
        for link in list(self.links.values()):
            if link.state in (LinkState.GONE, LinkState.EXPECTED) or link.paused:
                continue
            if now - link.last_sent >= self.ping_interval_s:
                self._send(link, Kind.PING, encode_body(Ping()), 0, 0)
            silent = now - link.last_heard
            if silent > self.hung_after_s and link.state in (
                LinkState.READY,
                LinkState.CONFIGURED,
            ):
                self._declare_hung(link, silent, self._silence(link, silent))
            elif (
                link.state is LinkState.READY
                and link.progress is not None
                and now - link.progress_at > self.hung_after_s
                and link.doing[0] != "command trace"  # a tracemalloc snapshot takes seconds
            ):
                # Heartbeats come from the transport thread, which lives on when a handler
                # blocks the runtime's event loop: only the loop's tick count shows that.
                stuck = now - link.progress_at
                self._declare_hung(link, stuck, self._no_progress(link, stuck, now))
        self._sweep = self._loop.call_later(self.heartbeat_interval_s, self._on_sweep)
        self._flush()

    def _silence(self, link: Link, silent: float) -> str:
        why = (
            f"silent for {silent:.2f}s (hung after {self.hung_after_s:g}s): not even its"
            " transport thread answered, so something held the whole process (C code holding"
            " the GIL, or the process stopped)"
        )
        doing, for_s, said_at = link.doing
        if doing:
            why += f"; last heard busy with {doing} for {for_s + (said_at - link.last_heard):.1f}s"
        return why

    def _no_progress(self, link: Link, stuck: float, now: float) -> str:
        doing, for_s, said_at = link.doing
        busy = f" while running {doing} (for {for_s + now - said_at:.1f}s)" if doing else ""
        return (
            f"its runtime's event loop made no progress for {stuck:.2f}s{busy} though its"
            f" transport still answered: something blocks the loop (a handler calling time.sleep"
            f" or computing in an async function?); hung after {self.hung_after_s:g}s"
        )

    def _declare_hung(self, link: Link, stuck: float, why: str) -> None:
        if self.on_hung is not None:
            reason = self.on_hung(link.agent_id, stuck, why)
        else:
            reason = why
            self.events.emit(
                ev.AgentHung(agent=link.agent_id, silent_s=round(stuck, 3), reason=why)
            )
        self.agent_gone(link.agent_id, reason)
