"""Bounded-memory measurements: a log-bucketed latency histogram and a decimating series.

Both keep their size fixed however long a run lasts, which is what lets a soak run report
percentiles and memory curves without its own memory growing.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel


class LatencySummary(BaseModel):
    count: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    mean_ms: float | None


class LatencyHistogram:
    """Log-spaced buckets from 1 us to about 100 s; relative error of a percentile <= ~2%."""

    MIN_S = 1e-6
    GROWTH = 1.04
    BUCKETS = int(math.log(1e8) / math.log(GROWTH)) + 2

    __slots__ = ("_counts", "count", "max_s", "total_s")

    def __init__(self) -> None:
        self._counts = [0] * self.BUCKETS
        self.count = 0
        self.max_s = 0.0
        self.total_s = 0.0

    def add(self, seconds: float) -> None:
        seconds = max(seconds, 0.0)
        if seconds <= self.MIN_S:
            index = 0
        else:
            index = min(self.BUCKETS - 1, 1 + int(math.log(seconds / self.MIN_S, self.GROWTH)))
        self._counts[index] += 1
        self.count += 1
        self.total_s += seconds
        self.max_s = max(self.max_s, seconds)

    def merge(self, other: LatencyHistogram) -> None:
        for i, n in enumerate(other._counts):
            self._counts[i] += n
        self.count += other.count
        self.total_s += other.total_s
        self.max_s = max(self.max_s, other.max_s)

    def cumulative(self, bounds: Sequence[float]) -> list[tuple[float, int]]:
        """(bound, how many were at most about `bound`) for each bound, in order: a
        Prometheus histogram's buckets (each of ours counted under the first bound at or
        above its upper edge)."""
        out: list[tuple[float, int]] = []
        seen = 0
        index = 0
        for bound in bounds:
            while index < self.BUCKETS and self.MIN_S * self.GROWTH**index <= bound:
                seen += self._counts[index]
                index += 1
            out.append((bound, seen))
        return out

    def percentile(self, q: float) -> float | None:
        """Upper edge of the bucket holding the q-quantile (capped at the exact max)."""
        if self.count == 0:
            return None
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for index, n in enumerate(self._counts):
            seen += n
            if seen >= rank:
                upper = self.MIN_S * self.GROWTH**index
                return min(upper, self.max_s)
        return self.max_s

    def summary(self) -> LatencySummary:
        def ms(v: float | None) -> float | None:
            return None if v is None else round(v * 1000.0, 4)

        return LatencySummary(
            count=self.count,
            p50_ms=ms(self.percentile(0.50)),
            p95_ms=ms(self.percentile(0.95)),
            p99_ms=ms(self.percentile(0.99)),
            max_ms=ms(self.max_s) if self.count else None,
            mean_ms=ms(self.total_s / self.count) if self.count else None,
        )


class Series:
    """(t, value) points, at most `limit`: when full, adjacent pairs merge keeping the max
    (`keep="max"`: a memory peak is never averaged away) or the min (`keep="min"`: the floor a
    leak verdict reads is never raised by a spike).

    `preallocate`: take the memory of all `limit` points at once, so that the series filling
    up is not growth of its owner (a soak's coordinator judges its own memory, and measured
    how its series filling up over the first half hour looked like a leak)."""

    __slots__ = ("_n", "_t", "_v", "keep_max", "limit", "preallocated")

    def __init__(
        self, limit: int = 512, keep: Literal["max", "min"] = "max", preallocate: bool = False
    ) -> None:
        self.limit = limit
        self.keep_max = keep == "max"
        self.preallocated = preallocate
        # Two flat arrays, 16 bytes a point: a list of tuples took about 65, and a soak keeps
        # five series per agent (measured: at 64 agents the coordinator grew by the series
        # filling up, and its own leak verdict saw it).
        capacity = limit + 1 if preallocate else 0
        self._t = array("d", bytes(8 * capacity))
        self._v = array("q", bytes(8 * capacity))
        self._n = 0

    @property
    def points(self) -> list[tuple[float, int]]:
        n = self._n
        return list(zip(self._t[:n], self._v[:n], strict=True))

    def __len__(self) -> int:
        return self._n

    def last(self) -> int | None:
        return self._v[self._n - 1] if self._n else None

    def add(self, t: float, value: int) -> None:
        n = self._n
        if n < len(self._t):
            self._t[n], self._v[n] = t, value
        else:
            self._t.append(t)
            self._v.append(value)
        n += 1
        if n > self.limit:
            # Merge adjacent pairs in place: point k takes the kept one of 2k and 2k+1.
            ts, vs, keep_max = self._t, self._v, self.keep_max
            k = 0
            for i in range(0, n - 1, 2):
                j = i if (vs[i] >= vs[i + 1]) == keep_max else i + 1
                ts[k], vs[k] = ts[j], vs[j]
                k += 1
            if n % 2:
                ts[k], vs[k] = ts[n - 1], vs[n - 1]
                k += 1
            n = k
            if not self.preallocated:
                del ts[n:], vs[n:]
        self._n = n
