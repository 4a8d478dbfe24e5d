"""Test-only fault hook in the transport: drop a fraction of incoming frames.

Off unless the environment variable SCENARIO_RUNNER_TEST_DROP_RATE is set to a fraction in
[0, 1). SCENARIO_RUNNER_TEST_DROP_SEED makes the drops reproducible. Both the coordinator's bus
and every agent's transport consult it on receive, so every kind of frame (data, acks,
heartbeats, handshake) is lost at that rate and the protocol has to recover. Never set it in
production: it exists to prove that delivery is exactly-once under loss.
"""

from __future__ import annotations

import os
import random

DROP_RATE_ENV = "SCENARIO_RUNNER_TEST_DROP_RATE"
DROP_SEED_ENV = "SCENARIO_RUNNER_TEST_DROP_SEED"


class DropHook:
    __slots__ = ("_rng", "dropped", "rate")

    def __init__(self, rate: float, seed: int | None, salt: str) -> None:
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"{DROP_RATE_ENV} must be in [0, 1), got {rate}")
        self.rate = rate
        self._rng = random.Random(f"{seed}:{salt}" if seed is not None else None)
        self.dropped = 0

    @classmethod
    def from_env(cls, salt: str) -> DropHook | None:
        text = os.environ.get(DROP_RATE_ENV, "").strip()
        if not text:
            return None
        seed_text = os.environ.get(DROP_SEED_ENV, "").strip()
        hook = cls(float(text), int(seed_text) if seed_text else None, salt)
        return hook if hook.rate > 0 else None

    def drop(self) -> bool:
        if self._rng.random() < self.rate:
            self.dropped += 1
            return True
        return False
