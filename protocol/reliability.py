"""Hop-by-hop reliable delivery, without I/O: sequence numbers, windows, acks, retries, dedup.

Both ends of every link (agent -> coordinator and coordinator -> agent) run the same state
machines, so they live here beside the wire format instead of being written twice:

- `Outbox` numbers sequenced frames per sender incarnation, lets at most
  min(window, peer credit) of them be unacknowledged, retransmits on a timeout derived from
  measured round trips (Jacobson/Karels with Karn's rule and exponential backoff), and turns a
  frame that exhausts its attempts into a dead letter for its owner to report.
- `Inbound` tracks the highest contiguous seq per sender incarnation, buffers frames that
  arrive ahead of a gap (bounded), hands items over exactly once and in order, and tells the
  caller which frames were duplicates so they are re-acked but never redelivered.

Callers own the clock (`now` in seconds, monotonic) and the sockets.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    min_rto_s: float = 0.05
    max_rto_s: float = 2.0
    initial_rto_s: float = 0.2
    max_attempts: int = 10
    """Transmissions (first send included) before a frame becomes a dead letter."""
    window: int = 256
    """Most frames unacknowledged at once, whatever credit the peer offers."""

    @property
    def budget_s(self) -> float:
        """How long a frame is retried before it becomes a dead letter, at the initial RTO
        doubling to the largest (15 s by default): what a wait on a round trip over a lossy
        link should allow each way."""
        first, most = self.initial_rto_s, self.max_rto_s
        return float(sum(min(most, first * (1 << i)) for i in range(self.max_attempts)))


class RttEstimator:
    """Smoothed round trip and retransmission timeout (RFC 6298)."""

    __slots__ = ("policy", "rttvar", "samples", "srtt")

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.samples = 0

    def observe(self, rtt: float) -> None:
        self.samples += 1
        if self.srtt is None:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt

    def rto(self, attempt: int) -> float:
        """Timeout before transmission number `attempt + 1` (attempt counts from 1)."""
        p = self.policy
        base = p.initial_rto_s if self.srtt is None else self.srtt + 4 * self.rttvar
        base = min(max(base, p.min_rto_s), p.max_rto_s)
        return float(min(base * (1 << min(attempt - 1, 16)), p.max_rto_s))


@dataclass(slots=True)
class Pending(Generic[T]):
    """One sequenced frame owned by an Outbox, with whatever the owner tagged it with."""

    seq: int
    item: T
    attempts: int = 0
    first_sent: float = 0.0
    last_sent: float = 0.0
    deadline: float = 0.0


@dataclass(slots=True)
class AckOutcome(Generic[T]):
    acked: list[Pending[T]] = field(default_factory=list)
    rtt_samples: int = 0


@dataclass(slots=True)
class DueOutcome(Generic[T]):
    retransmit: list[Pending[T]] = field(default_factory=list)
    expired: list[Pending[T]] = field(default_factory=list)


class Outbox(Generic[T]):
    """Sender side of one link for one sender incarnation."""

    def __init__(self, policy: RetryPolicy, initial_credit: int | None = None) -> None:
        self.policy = policy
        self.rtt = RttEstimator(policy)
        self.next_seq = 1
        self.acked = 0
        self.credit = policy.window if initial_credit is None else initial_credit
        self._queued: deque[Pending[T]] = deque()
        self._inflight: dict[int, Pending[T]] = {}
        self._dead: list[Pending[T]] = []
        self.retransmissions = 0
        self.broken = False
        """Set once a frame has expired: the receiver can never fill that hole, so every frame
        pushed afterwards is a dead letter too, reported by the next `due` (never stuck)."""

    # -- producing --------------------------------------------------------------------
    def push(self, item: T) -> Pending[T]:
        """Number `item` and queue it; `take_sendable` says when it may go on the wire."""
        pending = Pending(self.next_seq, item)
        self.next_seq += 1
        if self.broken:
            self._dead.append(pending)
        else:
            self._queued.append(pending)
        return pending

    def take_sendable(self, now: float) -> list[Pending[T]]:
        """Queued frames the window and the peer's credit allow on the wire now."""
        limit = self.acked + min(self.policy.window, self.credit)
        out: list[Pending[T]] = []
        while self._queued and self._queued[0].seq <= limit:
            pending = self._queued.popleft()
            self._mark_sent(pending, now)
            self._inflight[pending.seq] = pending
            out.append(pending)
        return out

    def _mark_sent(self, pending: Pending[T], now: float) -> None:
        pending.attempts += 1
        if pending.attempts == 1:
            pending.first_sent = now
        pending.last_sent = now
        pending.deadline = now + self.rtt.rto(pending.attempts)

    # -- acknowledgements -------------------------------------------------------------
    def on_ack(self, ack: int, credit: int | None, now: float) -> AckOutcome[T]:
        """Apply a cumulative ack (and the peer's credit, when it sent one)."""
        outcome: AckOutcome[T] = AckOutcome()
        if credit is not None and ack >= self.acked:
            self.credit = credit
        if ack <= self.acked:
            return outcome
        # Never past the highest seq actually sent: a confused peer acking queued frames must
        # not make them count as delivered.
        ack = min(ack, self.next_seq - 1 - len(self._queued) - len(self._dead))
        if ack <= self.acked:
            return outcome
        for seq in range(self.acked + 1, ack + 1):
            pending = self._inflight.pop(seq, None)
            if pending is None:
                continue
            if pending.attempts == 1:  # Karn: a retransmitted frame's ack is ambiguous
                self.rtt.observe(now - pending.first_sent)
                outcome.rtt_samples += 1
            outcome.acked.append(pending)
        self.acked = max(self.acked, ack)
        return outcome

    # -- timers -----------------------------------------------------------------------
    def due(self, now: float) -> DueOutcome[T]:
        """Frames whose retry timer fired: to retransmit, or expired (dead letters).

        Decided before anything is mutated: if any fired frame is out of attempts, nothing is
        retransmitted and every frame is given up, in seq order (a dead letter leaves a hole the
        receiver can never fill, so the link is broken from here on)."""
        outcome: DueOutcome[T] = DueOutcome()
        if self._dead:
            outcome.expired, self._dead = self._dead, []
        fired = [p for p in self._inflight.values() if p.deadline <= now]
        if any(p.attempts >= self.policy.max_attempts for p in fired):
            self.broken = True
            outcome.expired.extend(self.fail_all())
            return outcome
        fired.sort(key=lambda p: p.seq)
        for pending in fired:
            self._mark_sent(pending, now)
            self.retransmissions += 1
        outcome.retransmit = fired
        return outcome

    def next_deadline(self) -> float | None:
        if self._dead:
            return 0.0  # dead letters waiting to be reported: due now
        if not self._inflight:
            return None
        return min(p.deadline for p in self._inflight.values())

    def fail_all(self) -> list[Pending[T]]:
        """Give up every frame, in flight or queued (the peer is gone); returns them in order."""
        out = sorted(self._inflight.values(), key=lambda p: p.seq)
        out.extend(self._queued)
        out.extend(self._dead)
        self._inflight.clear()
        self._queued.clear()
        self._dead.clear()
        return out

    # -- inspection -------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    @property
    def queued(self) -> int:
        return len(self._queued)

    @property
    def idle(self) -> bool:
        return not self._inflight and not self._queued and not self._dead

    def __iter__(self) -> Iterator[Pending[T]]:
        yield from sorted(self._inflight.values(), key=lambda p: p.seq)
        yield from self._queued


class Acceptance(Generic[T]):
    """What `Inbound.accept` decided about one frame."""

    __slots__ = ("deliver", "duplicate", "stale")

    def __init__(self, deliver: list[T], duplicate: bool, stale: bool) -> None:
        self.deliver = deliver
        self.duplicate = duplicate
        self.stale = stale


class Inbound(Generic[T]):
    """Receiver side of one link: exactly-once, in-order hand-over per sender incarnation."""

    def __init__(self, max_ahead: int = 4096) -> None:
        self.max_ahead = max_ahead
        self.incarnation: int | None = None
        self.contiguous = 0
        self._ahead: dict[int, T] = {}
        self.duplicates = 0
        self.ack_due = False

    def accept(self, incarnation: int, seq: int, item: T) -> Acceptance[T]:
        if self.incarnation is None or incarnation > self.incarnation:
            self.reset(incarnation)
        elif incarnation < self.incarnation:
            return Acceptance([], duplicate=False, stale=True)
        self.ack_due = True
        if seq <= self.contiguous or seq in self._ahead:
            self.duplicates += 1
            return Acceptance([], duplicate=True, stale=False)
        if seq != self.contiguous + 1:
            if seq - self.contiguous <= self.max_ahead:
                self._ahead[seq] = item
            # Past the buffer's reach: not kept and not acked, so the sender retries it later.
            return Acceptance([], duplicate=False, stale=False)
        deliver = [item]
        self.contiguous = seq
        while self.contiguous + 1 in self._ahead:
            self.contiguous += 1
            deliver.append(self._ahead.pop(self.contiguous))
        return Acceptance(deliver, duplicate=False, stale=False)

    def reset(self, incarnation: int) -> None:
        self.incarnation = incarnation
        self.contiguous = 0
        self._ahead.clear()

    @property
    def buffered(self) -> int:
        return len(self._ahead)
