"""Latency statistics shared by the benchmark driver and the benchmark agent.

Kept apart from `_common` so the agent side (`_worker`) imports nothing of the coordinator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import JsonValue


@dataclass(frozen=True, slots=True)
class LatencyStats:
    """Exact order statistics of a sample of durations, in milliseconds."""

    count: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float

    @classmethod
    def of_ns(cls, samples_ns: Sequence[int]) -> LatencyStats:
        if not samples_ns:
            raise ValueError("no latency samples")
        ordered = sorted(samples_ns)
        return cls(
            count=len(ordered),
            p50_ms=_rank(ordered, 0.50) / 1e6,
            p99_ms=_rank(ordered, 0.99) / 1e6,
            max_ms=ordered[-1] / 1e6,
            mean_ms=sum(ordered) / len(ordered) / 1e6,
        )

    @classmethod
    def from_json(cls, raw: JsonValue) -> LatencyStats:
        if not isinstance(raw, dict):
            raise TypeError(f"latency stats must be an object, got {raw!r}")
        count, p50, p99, top, mean = (
            raw.get(k) for k in ("count", "p50_ms", "p99_ms", "max_ms", "mean_ms")
        )
        if not isinstance(count, int):
            raise TypeError(f"bad latency count in {raw!r}")
        values = [v for v in (p50, p99, top, mean) if isinstance(v, int | float)]
        if len(values) != 4:
            raise TypeError(f"bad latency stats {raw!r}")
        return cls(count, *(float(v) for v in values))

    def to_json(self) -> dict[str, JsonValue]:
        return {
            "count": self.count,
            "p50_ms": round(self.p50_ms, 4),
            "p99_ms": round(self.p99_ms, 4),
            "max_ms": round(self.max_ms, 4),
            "mean_ms": round(self.mean_ms, 4),
        }


def _rank(ordered: Sequence[int], q: float) -> int:
    """Nearest-rank q-quantile of an ascending sequence."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]
