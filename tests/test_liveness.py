"""The liveness timings and the relations between them (pure logic)."""

from __future__ import annotations

import pytest

from protocol.liveness import Liveness


def test_the_defaults_hold_together() -> None:
    live = Liveness()
    assert live.hung_after_s > 2 * live.heartbeat_interval_s
    assert live.coordinator_timeout_s > 2 * live.heartbeat_interval_s


@pytest.mark.parametrize(
    ("timings", "fragment"),
    [
        ((0.5, 1.0, 10.0), "hung_after_s (1s) must exceed 2 heartbeat intervals (1s)"),
        ((0.5, 3.0, 0.9), "coordinator_timeout_s (0.9s) must exceed 2 heartbeat intervals"),
        ((0.0, 3.0, 10.0), "heartbeat_interval_s must be positive"),
        ((0.5, -1.0, 10.0), "hung_after_s must be positive"),
    ],
)
def test_timings_that_would_misjudge_a_healthy_peer_are_refused(
    timings: tuple[float, float, float], fragment: str
) -> None:
    with pytest.raises(ValueError, match="must") as exc:
        Liveness(*timings)
    assert fragment in str(exc.value)
