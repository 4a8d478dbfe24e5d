"""Per-agent memory figures are the agent's own, not the coordinator's."""

from __future__ import annotations

from pathlib import Path

from conftest import run_yaml

from orchestrator.report.model import Verdict

MIB = 1024 * 1024


def test_peak_rss_is_the_agents_own_even_when_the_coordinator_is_large(
    private_tmp: Path,
) -> None:
    # The coordinator runs in this process. Make it large: an agent spawned from it must not
    # report this as its own peak (ru_maxrss would: Linux carries it across exec).
    ballast = bytearray(300 * MIB)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    report = run_yaml(
        """
name: memory-figures
agents:
  - id: leaky
    plugins: [examples.plugins.leaky:plugin]
    settings: {leak.bytes_per_message: 8388608}
  - id: user
rooms:
  - {id: r, type: dm, members: [leaky, user]}
script:
  - send: {agent: user, room: r, text: one}
  - send: {agent: user, room: r, text: two}
  - send: {agent: user, room: r, text: three}
  - wait_for: {state: {agent: leaky, path: leak.blocks, equals: 3}, timeout: 5s}
assertions:
  - state: {agent: leaky, path: leak.blocks, equals: 3}
""",
        private_tmp / "report",
    )
    del ballast
    assert report.verdict is Verdict.PASS, report.model_dump_json(indent=1)
    mem = {a.id: a.memory for a in report.agents}
    for agent_id, m in mem.items():
        assert m.peak_rss_bytes is not None and m.rss_last_bytes is not None
        assert m.peak_rss_bytes >= m.rss_last_bytes, agent_id
        assert m.peak_rss_bytes < 200 * MIB, (agent_id, m.peak_rss_bytes)
    # The leaky agent kept 3 x 8 MiB: its peak shows it; the idle user's does not.
    leaky, user = mem["leaky"].peak_rss_bytes, mem["user"].peak_rss_bytes
    assert leaky is not None and user is not None
    assert leaky - user >= 20 * MIB, (leaky, user)
