"""Limits (issue 13): memory, CPU time and open files per agent. A data limit inside the agent
makes an allocation fail as a MemoryError; the coordinator's watchdog stops an agent past its
soft RSS limit and kills one past its hard limit; RLIMIT_CPU ends a spinning agent. Each is a
`limit` error that names the agent, the limit and the value, and an `errors` assertion that
covers it makes it a planned one."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.report.model import AgentReport, ScenarioReport, Verdict
from orchestrator.scenario.loader import ScenarioError, load_scenario_text

TESTS = Path(__file__).resolve().parent

SCENARIO = """\
name: limited
timeout: 30s
agents:
  - {{id: a, plugins: [plugins.hog:plugin], limits: {limits}}}
  - id: b
rooms:
  - {{id: r, members: [a, b]}}
script:
{script}
assertions:
{assertions}
"""


UNRELATED = "  - message: {from: b, count: {max: 9}}"
"""An assertion that holds, and covers no error."""


def _run(tmp_path: Path, limits: str, script: str, assertions: str) -> tuple[int, ScenarioReport]:
    (tmp_path / "plugins").symlink_to(TESTS / "plugins")  # plugins.hog
    path = tmp_path / "limited.yaml"
    path.write_text(SCENARIO.format(limits=limits, script=script, assertions=assertions))
    args = ["run", str(path), "--report-dir", str(tmp_path / "r"), "-q"]
    result = CliRunner().invoke(main, args)
    report = ScenarioReport.model_validate_json((tmp_path / "r" / "report.json").read_text())
    return result.exit_code, report


def _agent(report: ScenarioReport, agent: str = "a") -> AgentReport:
    return next(x for x in report.agents if x.id == agent)


@pytest.mark.timeout(60)
def test_an_allocation_past_the_data_limit_is_a_memory_error_the_run_can_plan_for(
    tmp_path: Path, private_tmp: Path
) -> None:
    script = (
        "  - action: {agent: a, name: ALLOC, params: {mib: 256}, expect: error}\n"
        "  - action: {agent: a, name: ALLOC, params: {mib: 1}}  # it goes on serving"
    )
    planned = "  - errors: {kind: [limit], agent: a, max: 1}"
    code, report = _run(tmp_path, "{memory: 128MiB}", script, planned)
    assert report.verdict is Verdict.PASS and code == 0, report.verification.reasons
    (error,) = [e for e in report.errors if e.source == "limit"]
    assert error.agent == "a" and "MemoryError" in error.message
    assert "memory" in error.message and "128 MiB" in error.message


@pytest.mark.timeout(60)
def test_an_unplanned_limit_is_an_error(tmp_path: Path, private_tmp: Path) -> None:
    script = "  - action: {agent: a, name: ALLOC, params: {mib: 256}, expect: error}"
    code, report = _run(tmp_path, "{memory: 128MiB}", script, UNRELATED)
    assert report.verdict is Verdict.ERROR and code == 3
    reasons = report.verification.reasons
    assert any("no 'errors' assertion covers it" in r for r in reasons), reasons


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("limits", "name", "action", "status"),
    [
        ("{memory: null, memory_soft: 96MiB}", "memory_soft", "stopped", "exited"),
        ("{memory: null, memory_hard: 96MiB}", "memory_hard", "killed", "exited"),
    ],
)
def test_the_watchdog_stops_or_kills_an_agent_past_its_rss_limit(
    tmp_path: Path, private_tmp: Path, limits: str, name: str, action: str, status: str
) -> None:
    script = (
        "  - action: {agent: a, name: ALLOC, params: {mib: 160}}\n"
        "  - wait_for: {event: {kind: limit.fired, agent: a}, timeout: 15s}"
    )
    code, report = _run(tmp_path, limits, script, UNRELATED)
    assert report.verdict is Verdict.ERROR and code == 3
    (error,) = [e for e in report.errors if e.source == "limit"]
    assert f"over {name} (96.0 MiB); it was {action}" in error.message
    agent = _agent(report)
    assert agent.status == status, "a limit is a planned end, not a crash"
    assert f"it was {action}" in (agent.limit or "")
    assert not [e for e in report.errors if e.source == "crash"]


@pytest.mark.timeout(60)
def test_the_cpu_limit_ends_a_spinning_agent(tmp_path: Path, private_tmp: Path) -> None:
    script = "  - action: {agent: a, name: SPIN, params: {seconds: 20}, timeout: 25s}"
    code, report = _run(tmp_path, "{cpu: 1s}", script, UNRELATED)
    assert report.verdict is Verdict.ERROR and code == 3
    (error,) = [e for e in report.errors if e.source == "limit"]
    assert "cpu:" in error.message and "its limit 1s" in error.message
    assert _agent(report).status == "exited"


@pytest.mark.timeout(60)
def test_running_out_of_descriptors_is_the_open_files_limit(
    tmp_path: Path, private_tmp: Path
) -> None:
    script = "  - action: {agent: a, name: OPEN_FILES, expect: error}"
    planned = "  - errors: {kind: [limit], agent: a, max: 1}"
    code, report = _run(tmp_path, "{open_files: 128}", script, planned)
    assert report.verdict is Verdict.PASS and code == 0, report.verification.reasons
    (error,) = [e for e in report.errors if e.source == "limit"]
    assert "open_files" in error.message and "its limit 128" in error.message


@pytest.mark.parametrize(
    ("limits", "problem"),
    [
        ("{memory_soft: 200MiB, memory_hard: 100MiB}", "must be under memory_hard"),
        ("{memory: 64MiB}", "memory under 128 MiB"),
        ("{memory_hard: 32MiB}", "memory_hard under 64 MiB"),
        ("{cpu: 0s}", "give a positive duration"),
        ("{open_files: 3}", "must be at least 64"),
        ("{memory: lots}", "memory"),
    ],
)
def test_limits_are_validated_where_they_are_written(limits: str, problem: str) -> None:
    text = SCENARIO.format(
        limits=limits, script="  - send: {agent: b, room: r, text: hi}",
        assertions=UNRELATED,
    )  # fmt: skip
    with pytest.raises(ScenarioError) as caught:
        load_scenario_text(text, "limited.yaml")
    message = str(caught.value)
    assert "limited.yaml:4" in message and problem in message, message


def test_a_hard_limit_alone_keeps_the_soft_one_under_it() -> None:
    from orchestrator.scenario.spec import LimitsSpec

    limits = LimitsSpec.model_validate({"memory_hard": "1GiB"})
    assert limits.hard_bytes == 1 << 30
    assert limits.soft_bytes is not None and limits.soft_bytes < limits.hard_bytes


@pytest.mark.timeout(60)
def test_the_watchdog_reports_an_agent_once_and_ignores_other_processes(
    private_tmp: Path,
) -> None:
    import asyncio
    import os
    import signal

    from conftest import agent, cluster, room

    from orchestrator.cluster.launchers import AgentLimits
    from orchestrator.events import AgentCrashed, AgentExited, LimitFired

    async def scenario() -> None:
        rooms = [room("lobby", ["a", "b"])]
        configs = [agent("a", private_tmp, rooms), agent("b", private_tmp, rooms)]
        async with cluster(private_tmp, configs, rooms) as c:
            # (The cluster fixture launched them without limits; the watchdog reads them
            # from each handle's launch spec.)
            for x in ("a", "b"):
                h = c.handles[x]
                object.__setattr__(h.spec, "limits", AgentLimits(rss_soft=100, rss_hard=200))
            a, b = c.handles["a"], c.handles["b"]
            c.check_memory("a", a.pid + 1, 10_000)  # another process's reading: ignored
            assert a.limit is None
            c.check_memory("a", a.pid, 150)  # past soft: stopped...
            c.check_memory("a", a.pid, 250)  # ...and past hard while stopping: killed
            await c.events.until(lambda: a.exit is not None, (AgentExited, AgentCrashed), 10)
            fired = [e for e in c.events.ring if isinstance(e, LimitFired)]
            assert [(e.agent, e.limit) for e in fired] == [("a", "memory_soft")]
            assert a.state.value == "exited" and (a.limit or "").endswith("it was stopped")
            # SIGXCPU with no cpu limit (a ulimit of the user's, a plugin's own rlimit): a
            # crash like any, not a limit, and not a TypeError in the exit handler.
            os.kill(b.pid, signal.SIGXCPU)
            await c.events.until(lambda: b.exit is not None, (AgentCrashed,), 10)
            assert b.limit is None and b.state.value == "crashed"

    asyncio.run(scenario())
