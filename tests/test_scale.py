"""Runs bigger than the event ring: waits that start far back, judges over every message.

The short versions run in CI; the `slow` ones are the sizes users run (select with
`-m slow`). They assert behaviour (PASS, every message counted, nothing lost); the speed is
the benchmark's (`python -m benchmarks.scenario`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_yaml

from benchmarks.scenario import burst_scenario, pingpong_scenario
from orchestrator.report.model import Verdict

RING = 2_000
"""The event log's default ring (orchestrator.events.EventLog): every case goes past it."""


def _check(text: str, report_dir: Path, messages: int) -> None:
    report = run_yaml(text, report_dir)
    assert report.verdict is Verdict.PASS, report.verification.reasons
    assert report.bus.messages_routed == messages
    assert report.events > RING
    assert all(a.passed for a in report.assertions)
    # Nothing on the way was lost (a retransmitted frame is dropped as a duplicate by its
    # receiver, so the exact counts above also say nothing was handled twice).
    assert report.bus.dead_letters == 0 and report.bus.refused == 0


@pytest.mark.timeout(120)
def test_a_counted_wait_that_starts_far_back_in_the_log(private_tmp: Path) -> None:
    # 16 senders each send 128 pings without waiting, then wait for all 128 pongs at once:
    # the wait's first match is thousands of events back.
    _check(burst_scenario(4_096), private_tmp / "report", 4_096)


@pytest.mark.timeout(120)
def test_concurrent_timelines_consume_their_own_replies(private_tmp: Path) -> None:
    _check(pingpong_scenario(4_096), private_tmp / "report", 4_096)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("scenario", [burst_scenario, pingpong_scenario])
def test_two_hundred_thousand_messages(private_tmp: Path, scenario: object) -> None:
    assert callable(scenario)
    _check(scenario(200_000), private_tmp / "report", 200_000)
