"""Runs bigger than the event ring: waits that start far back, judges over every message.

The short versions run in CI; the `slow` ones are the sizes users run (select with
`-m slow`). They assert behaviour (PASS, every message counted, nothing lost); the speed is
the benchmark's (`python -m benchmarks.scenario`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_yaml

from benchmarks.crowd import crowd_scenario
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


def _crowd(agents: int, report_dir: Path) -> None:
    """`agents` agents in one room and in dm pairs (benchmarks.crowd): every delivery made,
    every pair answered, every agent exited, nothing left."""
    report = run_yaml(crowd_scenario(agents), report_dir)
    assert report.verdict is Verdict.PASS, report.verification.reasons[:5]
    assert len(report.agents) == agents
    assert all(a.status == "exited" for a in report.agents), {
        a.id: a.status for a in report.agents if a.status != "exited"
    }
    # The roll call, then a ping and a pong per pair.
    assert report.bus.messages_routed == 1 + agents
    assert report.bus.dead_letters == 0 and report.bus.refused == 0
    assert report.coordinator is not None and report.coordinator.sampler is not None
    assert report.coordinator.sampler.agents == agents
    # The processes themselves are checked by the autouse no_leftover_processes fixture.


@pytest.mark.timeout(180)
def test_256_agents_in_one_room_and_in_dm_pairs(private_tmp: Path) -> None:
    _crowd(256, private_tmp / "report")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_1000_agents_in_one_room_and_in_dm_pairs(private_tmp: Path) -> None:
    _crowd(1000, private_tmp / "report")
