"""The leak verdict: does a series (an agent's USS, RSS, descriptors, threads) grow, how fast,
and can this run tell?

The method, for the points after the warm-up:

1. **Window minima.** The run is cut into equal windows of time and each keeps its smallest
   value. Allocators, garbage collection and caches add short upward spikes; what a leak
   adds is a floor that rises, and the minima follow the floor.
2. **Theil-Sen slope** of the minima over time, with its 95% confidence interval
   (`scipy.stats.theilslopes`): the median of pairwise slopes, robust to a few outlying
   windows. Reported per hour.
3. **Mann-Kendall trend**: Kendall's tau between time and the minima, with its p-value
   (`scipy.stats.kendalltau`), to require a trend that holds through the run, not a step.
4. **Thirds**: the median minimum of the last third exceeds that of the first, and the middle
   third lies between them (the growth is sustained, not a step at one moment).

Memory series (bytes): LEAK when the slope's lower bound clears the floor (the smallest growth
worth calling a leak, `floor_per_h`), the trend and the thirds agree, and the growth over the
analysed time, at that lower bound, is at least MIN_GROWTH (1 MiB); NO LEAK when the slope's
upper bound is under the floor (the run can exclude a leak that large); otherwise INCONCLUSIVE.
`detectable_per_h` says what the run could resolve: the floor plus the half-width of the slope's
interval (a slower leak's lower bound would not clear the floor). A run too short (fewer than
MIN_WINDOWS windows) or too noisy for its floor is INCONCLUSIVE, never NO LEAK.

Count series (descriptors, threads) follow CPython's refleak rule: steady growth of any size
is a leak. LEAK when the minima rise in at least COUNT_STEPS separate steps, across the thirds,
with a significant trend; NO LEAK when the last third's minima are no higher than the first's;
otherwise INCONCLUSIVE (a step or two up, such as a thread pool starting one more thread, is
not steady growth).

This module is pure: it takes points and returns a verdict (`tests/test_leak.py`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

MIN_WINDOWS = 6
"""Fewer windows than this after the warm-up: INCONCLUSIVE (too short to say)."""
MAX_WINDOWS = 30
POINTS_PER_WINDOW = 3
"""At least this many samples per window, so that a window's minimum means something."""
COUNT_STEPS = 3
"""A count series must rise in at least this many separate steps to be a leak."""
TREND_P = 0.05
"""The Mann-Kendall trend must be significant at this level."""

MIB = 1024 * 1024
MIN_GROWTH = 1.0 * MIB
"""A memory LEAK must also have grown this much over the analysed part of the run (at its
slope's lower bound). A clean agent settling in its first minute (SQLite and allocator pools
filling: about 30 KiB) grows steadily enough, over 25 s, to extrapolate to 5 MiB/h; that is
not a leak a run of seconds can establish."""
MEMORY_FLOOR_PER_H = 1.0 * MIB
"""The default floor for memory series: growth under 1 MiB an hour is not called a leak."""


class LeakVerdict(StrEnum):
    LEAK = "leak"
    NO_LEAK = "no leak"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True, slots=True)
class TrendFit:
    """What the window minima say, when there were enough of them."""

    slope_per_h: float
    """Theil-Sen growth per hour of the window minima (units of the series)."""
    slope_low_per_h: float
    slope_high_per_h: float
    """The slope's 95% confidence interval."""
    tau: float
    p: float
    """Mann-Kendall: Kendall's tau of time against the minima, and its p-value."""
    detectable_per_h: float
    """The smallest growth this run could have called a leak: the floor plus the half-width
    of the slope's interval (a slope must clear the floor by that much for its lower bound
    to)."""
    first: float
    middle: float
    last: float
    """The median window minimum of each third."""
    line: tuple[tuple[float, float], tuple[float, float]]
    """The fitted line at the first and last analysed sample: ((t, value), (t, value))."""


@dataclass(frozen=True, slots=True)
class LeakAnalysis:
    series: str
    verdict: LeakVerdict
    reason: str
    """Why this verdict, in a sentence."""
    floor_per_h: float
    """The smallest growth called a leak (0 for counts: any steady growth is)."""
    windows: int
    analysed_s: float
    """Seconds of samples after the warm-up."""
    fit: TrendFit | None = None
    """None when the run was too short to fit anything."""


def window_minima(points: Sequence[tuple[float, float]], windows: int) -> list[tuple[float, float]]:
    """(mid time, minimum value) of each of `windows` equal slices of the points' time span;
    empty slices are skipped."""
    if not points or windows < 1:
        return []
    t0, t1 = points[0][0], points[-1][0]
    span = (t1 - t0) or 1e-9
    width = span / windows
    mins: list[float | None] = [None] * windows
    for t, v in points:
        i = min(windows - 1, int((t - t0) / width))
        current = mins[i]
        mins[i] = v if current is None else min(current, v)
    return [(t0 + (i + 0.5) * width, m) for i, m in enumerate(mins) if m is not None]


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def analyse(
    series: str,
    points: Sequence[tuple[float, float]],
    *,
    warmup_s: float = 0.0,
    floor_per_h: float = MEMORY_FLOOR_PER_H,
    counts: bool = False,
) -> LeakAnalysis:
    """The verdict on `points` ((seconds, value), in time order) after `warmup_s` from the
    first point. `counts`: a count series (descriptors, threads), judged by the refleak rule."""
    if counts:
        floor_per_h = 0.0
    if points:
        start = points[0][0] + warmup_s
        points = [p for p in points if p[0] >= start]
    analysed = points[-1][0] - points[0][0] if len(points) > 1 else 0.0
    windows = min(MAX_WINDOWS, len(points) // POINTS_PER_WINDOW)
    minima = window_minima(points, windows)

    def result(verdict: LeakVerdict, reason: str, fit: TrendFit | None = None) -> LeakAnalysis:
        return LeakAnalysis(
            series, verdict, reason, floor_per_h, len(minima), round(analysed, 3), fit
        )

    if len(minima) < MIN_WINDOWS:
        return result(
            LeakVerdict.INCONCLUSIVE,
            f"too short to tell: {len(minima)} window(s) of samples"
            + (" after the warm-up" if warmup_s else "")
            + ", "
            f"{MIN_WINDOWS} needed ({len(points)} samples over {analysed:.0f}s)",
        )
    from scipy import stats  # imported here: only a soak's judging needs it (0.2 s)

    ts = [t for t, _ in minima]
    vs = [v for _, v in minima]
    fit = stats.theilslopes(vs, ts, alpha=0.95)
    slope, low, high = (float(x) * 3600 for x in (fit.slope, fit.low_slope, fit.high_slope))
    if len(set(vs)) == 1:
        tau, p = 0.0, 1.0  # a flat series: no trend (kendalltau is undefined on it)
    else:
        trend = stats.kendalltau(ts, vs)
        tau, p = float(trend.statistic), float(trend.pvalue)
        if math.isnan(tau):
            tau, p = 0.0, 1.0
    third = max(1, len(vs) // 3)
    first, middle, last = _median(vs[:third]), _median(vs[third:-third] or vs), _median(vs[-third:])
    rising = last > first and first <= middle <= last
    detectable = floor_per_h + (high - low) / 2
    if not counts and analysed > 0:
        detectable = max(detectable, MIN_GROWTH * 3600 / analysed)
    t_from, t_to = points[0][0], points[-1][0]
    icept, per_s = float(fit.intercept), float(fit.slope)
    line = ((t_from, icept + per_s * t_from), (t_to, icept + per_s * t_to))
    fields = TrendFit(slope, low, high, tau, p, detectable, first, middle, last, line)
    trending = tau > 0 and p < TREND_P
    if counts:
        # Steady growth rises again and again; a step or two (a pool starting one more thread
        # when it first needs it) is not a leak.
        ups = sum(1 for a, b in itertools.pairwise(vs) if b > a)
        if ups >= COUNT_STEPS and rising and trending:
            return result(LeakVerdict.LEAK, f"{series} rose steadily from {first:g} to "
                          f"{last:g} after the warm-up", fields)  # fmt: skip
        if last <= first:
            return result(LeakVerdict.NO_LEAK, f"{series} did not grow after the warm-up "
                          f"({first:g} -> {last:g})", fields)  # fmt: skip
        return result(LeakVerdict.INCONCLUSIVE, f"{series} grew ({first:g} -> {last:g}) but "
                      "not steadily", fields)  # fmt: skip
    grown = low * analysed / 3600
    if low > floor_per_h and trending and rising and grown < MIN_GROWTH:
        why = (
            f"grows {_rate(slope)} (95% CI {_rate(low)} to {_rate(high)}), but only "
            f"{grown / 1024:.0f} KiB over the {analysed:.0f}s analysed, under the "
            f"{MIN_GROWTH / MIB:g} MiB a leak must show: run longer to tell a leak from "
            "settling"
        )
        return result(LeakVerdict.INCONCLUSIVE, why, fields)
    if low > floor_per_h and trending and rising:
        why = (
            f"grows {_rate(slope)} (95% CI {_rate(low)} to {_rate(high)}), above the floor "
            f"of {_rate(floor_per_h)}"
        )
        return result(LeakVerdict.LEAK, why, fields)
    if high < floor_per_h:
        return result(LeakVerdict.NO_LEAK, f"growth under {_rate(high)} at 95% confidence, "
                      f"below the floor of {_rate(floor_per_h)}", fields)  # fmt: skip
    why = (
        f"the slope's interval ({_rate(low)} to {_rate(high)}) straddles the floor of "
        f"{_rate(floor_per_h)}: too short or too noisy to tell"
        if low <= floor_per_h
        else "the slope clears the floor but the trend does not hold through the run "
        f"(tau {tau:.2f}, p {p:.3f}; thirds {first:g}, {middle:g}, {last:g})"
    )
    return result(LeakVerdict.INCONCLUSIVE, why, fields)


def _rate(bytes_per_h: float) -> str:
    return f"{bytes_per_h / MIB:+.2f} MiB/h"
