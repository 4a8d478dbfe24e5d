"""The leak verdict as an instrument (orchestrator/leak.py): synthetic series with a known
truth. No processes: this is the statistics alone; tests/test_soak.py runs real agents."""

from __future__ import annotations

import random

import pytest

from orchestrator.leak import MIB, MIN_WINDOWS, LeakVerdict, analyse, window_minima

BASE = 60 * MIB


def _series(
    seconds: float, every: float, *, per_h: float = 0.0, noise: float = 256 * 1024,
    seed: int = 0, warmup: tuple[float, float] = (0.0, 0.0),
) -> list[tuple[float, float]]:
    """Memory sampled every `every` s: a base, growth of `per_h` bytes an hour, upward noise
    (allocator and GC spikes: memory is never below its floor), and optionally a warm-up
    growth of `warmup[1]` bytes spread over the first `warmup[0]` seconds."""
    rng = random.Random(seed)
    points = []
    t = 0.0
    while t <= seconds:
        warm = warmup[1] * min(1.0, t / warmup[0]) if warmup[0] else 0.0
        points.append((t, BASE + per_h * t / 3600 + warm + abs(rng.gauss(0, noise))))
        t += every
    return points


def test_window_minima_keep_the_floor_of_each_slice() -> None:
    points = [(0.0, 5.0), (1.0, 3.0), (2.0, 9.0), (3.0, 4.0)]
    assert window_minima(points, 2) == [(0.75, 3.0), (2.25, 4.0)]
    assert window_minima([], 3) == []


@pytest.mark.parametrize("seed", range(20))
def test_a_clean_series_is_never_a_leak(seed: int) -> None:
    # 20 short soaks of a flat agent: 10 minutes, a sample a second, noise up to ~1 MiB.
    result = analyse("uss", _series(600, 1.0, seed=seed))
    assert result.verdict is not LeakVerdict.LEAK, result.reason


def test_a_long_clean_series_is_no_leak() -> None:
    # An hour at a sample every 5 s resolves growth well under the 1 MiB/h floor.
    result = analyse("uss", _series(3600, 5.0, noise=64 * 1024, seed=3))
    assert result.verdict is LeakVerdict.NO_LEAK, result.reason
    assert result.fit is not None and result.fit.detectable_per_h <= 1.5 * MIB


@pytest.mark.parametrize("per_h", [20 * MIB, 100 * MIB, 1024 * MIB])
def test_a_steady_leak_is_found_with_its_rate(per_h: float) -> None:
    result = analyse("uss", _series(600, 1.0, per_h=per_h, seed=int(per_h) % 97))
    assert result.verdict is LeakVerdict.LEAK, result.reason
    fit = result.fit
    assert fit is not None
    assert fit.slope_low_per_h <= per_h * 1.1 and fit.slope_high_per_h >= per_h * 0.9
    assert fit.slope_low_per_h > result.floor_per_h


def test_a_leak_under_what_the_run_can_resolve_is_inconclusive_not_no_leak() -> None:
    # 2 MiB/h over 5 minutes with ~1 MiB of noise: the run cannot tell.
    result = analyse("uss", _series(300, 1.0, per_h=2 * MIB, noise=1 * MIB, seed=5))
    assert result.verdict is LeakVerdict.INCONCLUSIVE, result.reason
    assert result.fit is not None and result.fit.detectable_per_h > 2 * MIB


def test_growth_during_the_warm_up_then_flat_is_no_leak() -> None:
    # 40 MiB of warm-up over the first 5 minutes, then an hour flat.
    points = _series(3900, 5.0, noise=64 * 1024, seed=7, warmup=(300, 40 * MIB))
    result = analyse("uss", points, warmup_s=300)
    assert result.verdict is LeakVerdict.NO_LEAK, result.reason
    # Judged from the start, a warm-up that is half the run is growth, not flatness.
    half = _series(600, 2.0, noise=64 * 1024, seed=7, warmup=(300, 40 * MIB))
    assert analyse("uss", half).verdict is not LeakVerdict.NO_LEAK
    assert analyse("uss", half, warmup_s=300).verdict is not LeakVerdict.LEAK


def test_settling_for_seconds_is_not_a_leak() -> None:
    # 30 KiB of steady growth over 30 s (an agent's pools filling): 3.5 MiB/h by its slope,
    # but a run of seconds cannot call that a leak.
    points = [(t / 4, BASE + 1024.0 * t / 4) for t in range(120)]
    result = analyse("uss", points)
    assert result.verdict is LeakVerdict.INCONCLUSIVE, result.reason
    assert "run longer" in result.reason
    assert result.fit is not None and result.fit.detectable_per_h > 100 * MIB


def test_too_few_samples_after_the_warm_up_is_inconclusive() -> None:
    points = _series(30, 1.0, per_h=1024 * MIB)
    result = analyse("uss", points, warmup_s=20)
    assert result.verdict is LeakVerdict.INCONCLUSIVE
    assert f"{MIN_WINDOWS} needed" in result.reason and result.fit is None


def test_counts_follow_the_refleak_rule() -> None:
    steady = [(float(t), 12.0) for t in range(600)]
    assert analyse("fds", steady, counts=True).verdict is LeakVerdict.NO_LEAK
    # One more descriptor a minute, however small, is a leak.
    growing = [(float(t), 12.0 + t // 60) for t in range(600)]
    result = analyse("fds", growing, counts=True)
    assert result.verdict is LeakVerdict.LEAK, result.reason
    assert result.floor_per_h == 0.0
    # One step up (a pool starting another thread the first time it is busy) is not steady.
    step = [(float(t), 5.0 + (t >= 300)) for t in range(600)]
    assert analyse("threads", step, counts=True).verdict is LeakVerdict.INCONCLUSIVE
    # Flapping between 12 and 13 (a descriptor opened and closed) is not growth.
    flapping = [(float(t), 12.0 + (t // 7) % 2) for t in range(600)]
    assert analyse("fds", flapping, counts=True).verdict is not LeakVerdict.LEAK
