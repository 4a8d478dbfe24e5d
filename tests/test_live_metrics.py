"""`--metrics-port`: Prometheus metrics served on 127.0.0.1 while a run goes on."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from orchestrator.metrics import LatencyHistogram

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "soak.yaml"


def test_latency_buckets_are_cumulative_and_end_at_the_count() -> None:
    h = LatencyHistogram()
    for seconds in (0.0002, 0.0008, 0.003, 0.003, 0.2):
        h.add(seconds)
    buckets = dict(h.cumulative((0.001, 0.005, 0.1, 1.0)))
    assert buckets == {0.001: 2, 0.005: 4, 0.1: 4, 1.0: 5}


@pytest.mark.timeout(60)
def test_a_soak_serves_its_agents_and_messages_while_it_runs(
    tmp_path: Path, private_tmp: Path
) -> None:
    script = Path(sys.executable).parent / "scenario-runner"
    command = [
        str(script), "soak", str(EXAMPLE), "--duration", "6s", "--warmup", "2s", "--no-locate",
        "--sample-interval", "250ms", "--metrics-port", "0", "--report-dir", str(tmp_path),
    ]  # fmt: skip
    env = {**os.environ, "TMPDIR": str(private_tmp), "COLUMNS": "200"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        assert process.stdout is not None
        first = process.stdout.readline().decode()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", first)
        assert match, first
        url = match.group(0)
        deadline = time.monotonic() + 30
        while True:  # until the agents have been sampled and messages routed
            text = urllib.request.urlopen(url, timeout=5).read().decode()
            if 'scenario_runner_agent_rss_bytes{agent="leaky"' in text.replace(
                'scenario="soak-controls",', ""
            ) and "scenario_runner_messages_routed_total" in text:
                break
            assert time.monotonic() < deadline, text[:2000]
            time.sleep(0.2)  # polling a scrape endpoint, as Prometheus would
        assert "scenario_runner_delivery_latency_seconds_bucket" in text
        assert 'le="+Inf"' in text and "scenario_runner_coordinator_rss_bytes" in text
        # 10 s is too short to clear the clean agent (INCONCLUSIVE: FAIL, 1); it ends, though.
        assert process.wait(timeout=60) in (0, 1)
    finally:
        process.kill()
