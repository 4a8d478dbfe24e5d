"""Bus faults on purpose: what a `fault: {drop | delay | duplicate | reorder | partition}` step
does to the message transmissions the bus makes to agents.

Faults act below delivery, on transmissions (the first send and each retransmission of a MSG
frame): a dropped transmission is retried by the link, a duplicate is de-duplicated by the
receiver, a held one is resequenced, so exactly-once delivery still holds, which is what a
scenario can check with a `delivery` assertion. A partition withholds every transmission
between its groups until it ends (past the retry budget, those messages are dead letters).

Each fault draws from its own `random.Random`, seeded by the run's seed and the fault step's
path and run, so a faulty run replays with `--seed`.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from dataclasses import dataclass, field

TEST_LOSS_ENV = "SCENARIO_RUNNER_TEST_DROP_RATE"
TEST_LOSS_SEED_ENV = "SCENARIO_RUNNER_TEST_DROP_SEED"


@dataclass(slots=True)
class WireFault:
    kind: str
    """drop, delay, duplicate, reorder or partition."""
    description: str
    rate: float = 1.0
    """drop, duplicate, reorder: the share of matching transmissions affected."""
    delay_s: float = 0.0
    jitter_s: float = 0.0
    within_s: float = 0.2
    """reorder: the longest hold."""
    senders: frozenset[str] | None = None
    recipients: frozenset[str] | None = None
    rooms: frozenset[str] | None = None
    groups: tuple[frozenset[str], ...] = ()
    until: float | None = None
    """Monotonic time it ends (`for`)."""
    messages: int | None = None
    """Matching transmissions it may still see (`messages`)."""
    frames: str = "messages"
    """drop: `messages` (the bus's MSG transmissions to agents), or `all`: every frame of
    the links in scope, both ways (acks, heartbeats, commands, the handshake), as a lossy wire
    would lose them. Every frame passes through the bus, so losing it there is losing it on
    the wire."""
    lasting: bool = False
    """Not ended when the script ends (the test hook's loss, which covers teardown too)."""
    rng: random.Random = field(default_factory=random.Random)
    seen: int = 0
    """Matching transmissions seen."""
    done: Counter[str] = field(default_factory=Counter)
    """What it did: dropped, delayed, duplicated, held, cut."""

    def over(self, now: float) -> bool:
        return (self.until is not None and now >= self.until) or self.messages == 0

    def matches(self, sender: str | None, recipient: str, room: str) -> bool:
        if self.senders is not None and sender not in self.senders:
            return False
        if self.recipients is not None and recipient not in self.recipients:
            return False
        if self.rooms is not None and room not in self.rooms:
            return False
        if self.groups:
            return self._cut(sender, recipient)
        return True

    def _cut(self, sender: str | None, recipient: str) -> bool:
        """Whether a partition separates sender and recipient (both in groups, not the same)."""
        side = {agent: i for i, group in enumerate(self.groups) for agent in group}
        a, b = side.get(sender or ""), side.get(recipient)
        return a is not None and b is not None and a != b

    def touches(self, agent: str) -> bool:
        """`frames: all`: whether this fault acts on `agent`'s link (`from` or `to` names it,
        or neither is given)."""
        if self.senders is None and self.recipients is None:
            return True
        return agent in (self.senders or frozenset()) or agent in (self.recipients or ())

    def loses(self) -> bool:
        """`frames: all`: whether the frame at hand (on a link it touches) is lost."""
        self.seen += 1
        if self.messages is not None:
            self.messages -= 1
        if self.rng.random() < self.rate:
            self.done["lost"] += 1
            return True
        return False

    def apply(self, plan: Transmission) -> None:
        """Change `plan` (one matching transmission) as this fault says."""
        self.seen += 1
        if self.messages is not None:
            self.messages -= 1
        if self.kind == "partition":
            plan.copies = 0
            self.done["cut"] += 1
        elif self.kind == "drop":
            if self.rng.random() < self.rate:
                plan.copies = 0
                self.done["dropped"] += 1
        elif self.kind == "delay":
            plan.delay_s += max(0.0, self.delay_s + self.rng.uniform(-self.jitter_s, self.jitter_s))
            self.done["delayed"] += 1
        elif self.kind == "duplicate":
            if self.rng.random() < self.rate and plan.copies:
                plan.copies += 1
                self.done["duplicated"] += 1
        elif self.kind == "reorder" and self.rng.random() < self.rate:
            plan.delay_s += self.rng.uniform(0.0, self.within_s)
            self.done["held"] += 1

    def summary(self) -> str:
        did = ", ".join(f"{what} {n}" for what, n in sorted(self.done.items())) or "nothing"
        return f"{self.description}: {did} of {self.seen} matching transmissions"


@dataclass(slots=True)
class Transmission:
    """What the bus does with one MSG transmission: how many copies (0: none), how late."""

    copies: int = 1
    delay_s: float = 0.0


def test_loss_from_env() -> WireFault | None:
    """The protocol's own test of recovery: with SCENARIO_RUNNER_TEST_DROP_RATE set to a
    fraction in [0, 1) (and SCENARIO_RUNNER_TEST_DROP_SEED to replay it), every frame of every
    link, both ways, is lost at that rate from the start of the run to its end: the handshake,
    acks, heartbeats, commands, STOP and BYE too. It is a `drop` with `frames: all` on every
    link that lasts the whole run, made by the same machinery as a scenario's faults. Never
    set it outside tests: it exists to prove that delivery is exactly-once under loss."""
    text = os.environ.get(TEST_LOSS_ENV, "").strip()
    if not text:
        return None
    rate = float(text)
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"{TEST_LOSS_ENV} must be in [0, 1), got {rate}")
    seed = os.environ.get(TEST_LOSS_SEED_ENV, "").strip() or None
    if rate == 0.0:
        return None
    return WireFault(
        "drop", f"lose {rate:.0%} of every frame, both ways ({TEST_LOSS_ENV})", rate=rate,
        frames="all", lasting=True, rng=random.Random(f"{seed}:test-loss" if seed else None),
    )  # fmt: skip
