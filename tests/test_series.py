"""The bounded series the sampler keeps (orchestrator/metrics.py)."""

from __future__ import annotations

from orchestrator.metrics import Series


def test_a_series_stays_bounded_and_keeps_peaks_or_floors() -> None:
    peaks, floors = Series(limit=8), Series(limit=8, keep="min")
    for t in range(1000):
        value = 100 + (50 if t == 500 else 0) - (30 if t == 700 else 0)
        peaks.add(float(t), value)
        floors.add(float(t), value)
    assert len(peaks) <= 8 and len(floors) <= 8
    assert max(v for _, v in peaks.points) == 150  # the spike survives decimation
    assert min(v for _, v in floors.points) == 70  # and so does the dip, in a min series
    assert [t for t, _ in peaks.points] == sorted(t for t, _ in peaks.points)
    assert peaks.last() == 100 and Series().last() is None


def test_a_preallocated_series_keeps_the_same_points_and_does_not_grow() -> None:
    import tracemalloc

    values = [(float(t), 1000 + (t * 7919) % 97 - t // 10) for t in range(5000)]
    grown, fixed = Series(limit=512, keep="min"), None
    tracemalloc.start()
    try:
        fixed = Series(limit=512, keep="min", preallocate=True)
        before = tracemalloc.get_traced_memory()[0]
        for t, v in values:
            fixed.add(t, v)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    for t, v in values:
        grown.add(t, v)
    assert fixed.points == grown.points and fixed.last() == grown.last()
    assert len(fixed) <= 512
    assert after - before < 1024, f"a preallocated series grew by {after - before} bytes"
