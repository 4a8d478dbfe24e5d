"""The agent's end of the bus: one DEALER socket, driven by its own thread.

The transport thread owns the socket, the reliable-delivery state for the link to the
coordinator (`Outbox` / `Inbound` from protocol.reliability), heartbeats, the HELLO handshake
retries, and the two orphan checks (the coordinator silent past its deadline; the death pipe
from our parent reaching EOF). The runtime thread never touches the socket: it hands frames
over through a thread-safe queue and a wake-up socket, so a handler that computes for a long
time never stalls acks or heartbeats.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import zmq

from agent_worker.inbox import Abandon, Command, Configured, Delivered, Inbox, Stopping
from protocol import (
    COORDINATOR_ID,
    PROTOCOL_VERSION,
    SEQUENCED_KINDS,
    SOCKET_MAX_MSG_BYTES,
    Ack,
    Cmd,
    Configure,
    DecodeError,
    Err,
    Header,
    Hello,
    Kind,
    Msg,
    Pong,
    RejectReason,
    Stop,
    WireModel,
    decode_body,
    encode_body,
    split_frames,
)
from protocol.auth import Credentials
from protocol.codec import kind_of
from protocol.frames_io import readable, recv_frames, send_frames
from protocol.reliability import Inbound, Outbox, RetryPolicy

HWM = 100_000
HELLO_RETRY_S = 0.1
HELLO_RETRY_MAX_S = 1.0


@dataclass(frozen=True, slots=True)
class Outgoing:
    kind: Kind
    dst: str
    body: bytes
    corr: int = 0


class TransportStats:
    __slots__ = ("dead_letters", "rejected", "sent_frames")

    def __init__(self) -> None:
        self.dead_letters = 0
        self.rejected = 0
        self.sent_frames = 0


SUSPENDED_AFTER_S = 1.0
"""A poll that returns this much later than its timeout means the process was suspended."""


class Transport:
    def __init__(
        self,
        agent_id: str,
        endpoint: str,
        incarnation: int,
        inbox: Inbox,
        *,
        death_fd: int | None,
        heartbeat_interval_s: float,
        coordinator_timeout_s: float,
        credentials: Credentials,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.agent_id = agent_id
        self.endpoint = endpoint
        self.incarnation = incarnation
        self.inbox = inbox
        self.death_fd = death_fd
        self.heartbeat_interval_s = heartbeat_interval_s
        self.coordinator_timeout_s = coordinator_timeout_s
        self.outbox: Outbox[Outgoing] = Outbox(policy or RetryPolicy())
        self.inbound: Inbound[tuple[Header, WireModel]] = Inbound()
        self.stats = TransportStats()

        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        # No routing id of its own choosing: the coordinator knows the agent by the key it
        # authenticates with (protocol/auth.py).
        credentials.apply(self._sock)
        if endpoint.startswith("tcp://["):
            self._sock.setsockopt(zmq.IPV6, 1)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, HWM)
        self._sock.setsockopt(zmq.RCVHWM, HWM)
        self._sock.setsockopt(zmq.MAXMSGSIZE, SOCKET_MAX_MSG_BYTES)
        self._wake_addr = f"inproc://wake-{id(self)}"
        self._wake_rx = self._ctx.socket(zmq.PAIR)
        self._wake_rx.bind(self._wake_addr)
        self._wake_tx = self._ctx.socket(zmq.PAIR)
        self._wake_tx.connect(self._wake_addr)
        self._wake_lock = threading.Lock()
        self._requests: deque[Outgoing] = deque()
        self._window_update = False
        self._stopping = False

        self.configured = False
        self.advertised_credit = inbox.capacity
        self._last_heard = time.monotonic()
        self._last_sent = 0.0
        self._last_ack = 0.0
        self._hello_next = 0.0
        self._hello_backoff = HELLO_RETRY_S
        self._idle = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="transport", daemon=True)
        self.exit_reason: str | None = None
        self.progress: Callable[[], tuple[int, str, float]] | None = None
        """Set by the runtime: (its event loop's ticks, what it is doing, since when), read
        for each ACK (from this thread: a snapshot of three fields)."""

    # -- runtime-thread API -------------------------------------------------------------
    def start(self) -> None:
        self._sock.connect(self.endpoint)
        self._thread.start()

    def send(self, body: WireModel, dst: str = COORDINATOR_ID, corr: int = 0) -> None:
        """Queue a frame for the coordinator (thread-safe; never blocks)."""
        self._requests.append(Outgoing(kind_of(body), dst, encode_body(body), corr))
        self._wake()

    def _ack(self, credit: int) -> Ack:
        """An ACK, carrying the runtime's progress and what it is doing (see Ack)."""
        progress = self.progress
        if progress is None:
            return Ack(credit=credit)
        ticks, doing, since = progress()
        busy_ms = int((time.monotonic() - since) * 1000) if doing else 0
        return Ack(credit=credit, progress=ticks, doing=doing[:200], doing_ms=busy_ms)

    def pending(self) -> int:
        """Frames asked to be sent or sent and not yet acknowledged (from any thread: a
        snapshot; lengths of a deque and a dict are read atomically)."""
        return len(self._requests) + self.outbox.in_flight + self.outbox.queued

    def request_window_update(self) -> None:
        """The runtime freed inbox slots; wake the transport if the credit it last announced
        was low (it decides, and re-checks after announcing, so no update is lost)."""
        if self.advertised_credit * 4 < self.inbox.capacity and not self._window_update:
            self._window_update = True
            self._wake()

    def flush(self, deadline: float) -> bool:
        """Wait until every queued and sequenced frame is acked, or `deadline` (monotonic)."""
        with self._idle:
            return self._idle.wait_for(
                lambda: not self._requests and self.outbox.idle,
                max(0.0, deadline - time.monotonic()),
            )

    def close(self) -> None:
        self._stopping = True
        self._wake()
        self._thread.join(timeout=2.0)
        with self._wake_lock:
            self._wake_tx.close(0)
        self._ctx.destroy(linger=0)

    def _wake(self) -> None:
        with self._wake_lock:
            if self._wake_tx.closed:
                return
            with contextlib.suppress(zmq.Again):
                self._wake_tx.send(b"", zmq.NOBLOCK)

    # -- transport thread ---------------------------------------------------------------
    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._wake_rx, zmq.POLLIN)
        if self.death_fd is not None:
            poller.register(self.death_fd, zmq.POLLIN)
        try:
            while not self._stopping:
                before = time.monotonic()
                timeout_ms = max(0, int((self._next_timer(before) - before) * 1000.0) + 1)
                events = dict(poller.poll(timeout_ms))
                now = time.monotonic()
                if now - before > timeout_ms / 1000.0 + SUSPENDED_AFTER_S:
                    # The poll overslept by far: the process was stopped (SIGSTOP, a `stop`
                    # fault, a debugger), not the coordinator silent. The clock ran on while
                    # it was; count silence from now.
                    self._last_heard = now
                if self.death_fd is not None and self.death_fd in events:
                    self._abandon("parent process is gone (death pipe closed)")
                    return
                if self._wake_rx in events:
                    self._drain_wake()
                if self._sock in events:
                    self._drain_socket(now)
                self._pump(now)
                if now - self._last_heard > self.coordinator_timeout_s:
                    self._abandon(
                        f"coordinator silent for {now - self._last_heard:.1f}s"
                        f" (deadline {self.coordinator_timeout_s:g}s)"
                    )
                    return
        finally:
            self._sock.close(0)
            self._wake_rx.close(0)
            with self._idle:
                self._idle.notify_all()

    def _abandon(self, reason: str) -> None:
        self.exit_reason = reason
        self.inbox.put_control(Abandon(reason))

    def _next_timer(self, now: float) -> float:
        deadlines = [self._last_heard + self.coordinator_timeout_s]
        if not self.configured:
            deadlines.append(self._hello_next)
        else:
            deadlines.append(self._last_ack + self.heartbeat_interval_s)
        retry = self.outbox.next_deadline()
        if retry is not None:
            deadlines.append(retry)
        return min(deadlines)

    def _drain_wake(self) -> None:
        wake = self._wake_rx
        while readable(wake):
            wake.recv(zmq.NOBLOCK)
        while self._requests:
            out = self._requests.popleft()
            if out.kind in SEQUENCED_KINDS:
                self.outbox.push(out)
            else:
                self._put(out.kind, out.dst, out.body, 0, out.corr)

    def _drain_socket(self, now: float) -> None:
        sock = self._sock
        for _ in range(4096):
            if not readable(sock):
                return
            self._on_frames(recv_frames(sock), now)

    def _on_frames(self, frames: list[bytes], now: float) -> None:
        try:
            header, body_frame = split_frames(frames)
            if header.src != COORDINATOR_ID:
                raise DecodeError(RejectReason.UNKNOWN_SENDER, f"src {header.src!r}")
            body = decode_body(header.kind, body_frame)
        except DecodeError as exc:
            self.stats.rejected += 1
            print(f"agent {self.agent_id}: rejected frame: {exc}", file=sys.stderr)
            err = Err(reason=exc.reason.value, detail=exc.detail[:300])
            self._put(Kind.ERR, COORDINATOR_ID, encode_body(err), 0)
            return
        self._last_heard = now
        outcome = self.outbox.on_ack(
            header.ack, body.credit if isinstance(body, Ack) else None, now
        )
        if outcome.acked and self.outbox.idle:
            with self._idle:
                self._idle.notify_all()
        kind = header.kind
        if kind in SEQUENCED_KINDS:
            acceptance = self.inbound.accept(header.incarnation, header.seq, (header, body))
            for h, b in acceptance.deliver:
                self._deliver(h, b)
        elif kind is Kind.PING:
            self._put(Kind.PONG, COORDINATOR_ID, encode_body(Pong(echo_ns=header.sent_ns)), 0)
        elif kind is Kind.ERR:
            print(f"agent {self.agent_id}: coordinator says: {body}", file=sys.stderr)

    def _deliver(self, header: Header, body: WireModel) -> None:
        if isinstance(body, Msg):
            self.inbox.put(Delivered(body))
        elif isinstance(body, Cmd):
            self.inbox.put(Command(header.corr, body))
        elif isinstance(body, Configure):
            self.configured = True
            self.inbox.put_control(Configured(body.config))
        elif isinstance(body, Stop):
            self.inbox.put(Stopping(body))

    def _pump(self, now: float) -> None:
        """Everything the timers and state say should go on the wire now."""
        if not self.configured and now >= self._hello_next:
            self._send_hello()
            self._hello_next = now + self._hello_backoff
            self._hello_backoff = min(self._hello_backoff * 2, HELLO_RETRY_MAX_S)
        due = self.outbox.due(now)
        for pending in due.retransmit:
            self._put_pending(pending.item, pending.seq)
        if due.expired:
            self.stats.dead_letters += len(due.expired)
            print(
                f"agent {self.agent_id}: {len(due.expired)} frame(s) to the coordinator were never"
                " acknowledged; giving them up",
                file=sys.stderr,
            )
        for pending in self.outbox.take_sendable(now):
            self._put_pending(pending.item, pending.seq)
        # The heartbeat is an ACK carrying the current credit, sent every interval whatever
        # else goes out: an ACK that reopened the window can be lost, and only a repeat of the
        # credit unblocks a coordinator that saw the window at zero.
        heartbeat = self.configured and now - self._last_ack >= self.heartbeat_interval_s
        self._window_update = False
        while True:
            credit = self._credit()
            low = self.advertised_credit * 4 < self.inbox.capacity
            if not (self.inbound.ack_due or heartbeat or (low and credit > self.advertised_credit)):
                break
            self._put(Kind.ACK, COORDINATOR_ID, encode_body(self._ack(credit)), 0)
            self.inbound.ack_due = False
            heartbeat = False
            self._last_ack = now
            self.advertised_credit = credit
            # Loop once more: slots the runtime freed between reading the credit and storing
            # it would otherwise go unannounced (its request_window_update read the old value).
        if self.outbox.idle and not self._requests:
            with self._idle:
                self._idle.notify_all()

    def _credit(self) -> int:
        return max(0, self.inbox.free() - self.inbound.buffered)

    def _send_hello(self) -> None:
        hello = Hello(
            agent_id=self.agent_id,
            pid=os.getpid(),
            protocol_version=PROTOCOL_VERSION,
            python=sys.version.split()[0],
            pyzmq=zmq.__version__,
            inbox_capacity=self.inbox.capacity,
        )
        self._put(Kind.HELLO, COORDINATOR_ID, encode_body(hello), 0)

    def _put_pending(self, out: Outgoing, seq: int) -> None:
        self._put(out.kind, out.dst, out.body, seq, out.corr)

    def _put(self, kind: Kind, dst: str, body: bytes, seq: int, corr: int = 0) -> None:
        now_ns = time.monotonic_ns()
        header = Header(
            PROTOCOL_VERSION,
            kind,
            self.agent_id,
            dst,
            self.incarnation,
            seq,
            self.inbound.contiguous,
            corr,
            now_ns,
        ).encode()
        try:
            send_frames(self._sock, (header, body))
        except zmq.Again:
            return  # backpressure: sequenced frames are retried by the outbox, the rest re-sent
        self.stats.sent_frames += 1
        self._last_sent = now_ns / 1e9
