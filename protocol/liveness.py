"""How each side of a link knows the other is alive: every liveness timing in one place, with
the relations between them checked when they are set.

- An agent sends an ACK carrying its credit every `heartbeat_interval_s` (whatever else it
  sends); any frame counts.
- The coordinator PINGs an agent it has sent nothing to for `ping_interval_s`, a quarter of
  the agent's `coordinator_timeout_s`: often enough that a healthy coordinator is never
  abandoned, rarely enough that 1,000 idle agents do not cost it 2,000 PINGs and PONGs a
  second (at the heartbeat interval, they were most of its traffic).
- The coordinator declares an agent hung after `hung_after_s` without a frame from it.
- An agent leaves by itself (exit 4) after `coordinator_timeout_s` without a frame from the
  coordinator (and at once when its death pipe closes).
"""

from __future__ import annotations

from dataclasses import dataclass

HEARTBEATS_BEFORE_HUNG = 2
"""A silence must outlast this many heartbeat intervals before it means anything: one late
heartbeat (a busy loop, a scheduling delay) is not a hang."""


PINGS_PER_TIMEOUT = 4
"""An idle agent hears a PING this many times within its coordinator timeout."""


@dataclass(frozen=True, slots=True)
class Liveness:
    heartbeat_interval_s: float = 0.5
    hung_after_s: float = 3.0
    coordinator_timeout_s: float = 10.0

    @property
    def ping_interval_s(self) -> float:
        """How long the coordinator stays silent to an agent before it PINGs."""
        return self.coordinator_timeout_s / PINGS_PER_TIMEOUT

    def __post_init__(self) -> None:
        for name in ("heartbeat_interval_s", "hung_after_s", "coordinator_timeout_s"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name} must be positive, not {value!r}")
        floor = HEARTBEATS_BEFORE_HUNG * self.heartbeat_interval_s
        if not self.hung_after_s > floor:
            raise ValueError(
                f"hung_after_s ({self.hung_after_s:g}s) must exceed {HEARTBEATS_BEFORE_HUNG}"
                f" heartbeat intervals ({floor:g}s): a healthy agent would be declared hung"
            )
        if not self.coordinator_timeout_s > floor:
            raise ValueError(
                f"coordinator_timeout_s ({self.coordinator_timeout_s:g}s) must exceed"
                f" {HEARTBEATS_BEFORE_HUNG} heartbeat intervals ({floor:g}s): a healthy"
                " coordinator would be abandoned"
            )
