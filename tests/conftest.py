"""Shared test fixtures: real agent processes on a real bus, and a no-leftovers check."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import psutil
import pytest
from fakechat import FakeChatServer

from orchestrator.cluster.cluster import Cluster, ClusterSettings
from orchestrator.cluster.launchers import LAUNCHERS, default_launcher
from orchestrator.events import Event, EventLog
from orchestrator.report.model import ScenarioReport
from orchestrator.run.runner import RunOptions, run_scenario
from orchestrator.scenario.loader import load_scenario_text
from protocol import AgentConfig, ChannelType, RoomConfig, RuleConfig, RulesModelConfig
from protocol.liveness import Liveness


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """Every test must end with no child process of ours alive (agents included)."""
    yield
    children = psutil.Process().children(recursive=True)
    _, alive = psutil.wait_procs(children, timeout=3)
    for proc in alive:
        proc.kill()
    assert not alive, f"processes left behind: {[(p.pid, p.name()) for p in alive]}"


@pytest.fixture()
def private_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Run directories go here (short path: ipc socket paths are limited to ~107 bytes)."""
    root = Path(tempfile.mkdtemp(prefix="srt-", dir="/tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture()
def server() -> Iterator[FakeChatServer]:
    """A scripted chat-completions endpoint on 127.0.0.1 (tests/fakechat.py)."""
    fake = FakeChatServer()
    fake.thread.start()
    try:
        yield fake
    finally:
        fake.close()


def run_yaml(
    text: str,
    report_dir: Path,
    on_event: Callable[[Event], None] | None = None,
    **options: object,
) -> ScenarioReport:
    scenario = load_scenario_text(text, "test.yaml")
    opts = RunOptions(report_dir=report_dir, **options)  # type: ignore[arg-type]
    # As if the file were in tests/: its plugins (`plugins.x:plugin`) come from tests/plugins/.
    source = TESTS_DIR / "test.yaml"
    return asyncio.run(run_scenario(scenario, source, opts, on_event))


TESTS_DIR = Path(__file__).resolve().parent


def room(room_id: str, members: list[str]) -> RoomConfig:
    return RoomConfig(id=room_id, channel=ChannelType.GROUP, members=members)


def agent(
    agent_id: str, run_dir: Path, rooms: list[RoomConfig], rules: list[RuleConfig] | None = None
) -> AgentConfig:
    return AgentConfig(
        agent_id=agent_id,
        agent_dir=str(run_dir / agent_id),
        model=RulesModelConfig(rules=rules or []),
        rooms=rooms,
    )


@asynccontextmanager
async def cluster(
    run_dir: Path,
    configs: list[AgentConfig],
    rooms: list[RoomConfig],
    *,
    coordinator_timeout_s: float = 10.0,
    hung_after_s: float = 3.0,
    inbox_capacity: int = 1024,
) -> AsyncIterator[Cluster]:
    """Real agents (the default launcher) on a real bus, READY; stopped and closed on exit."""
    events = EventLog(run_dir / "events.jsonl")
    settings = ClusterSettings(
        liveness=Liveness(0.5, hung_after_s, coordinator_timeout_s),
        inbox_capacity=inbox_capacity,
    )
    launcher = LAUNCHERS[default_launcher()](())
    try:
        async with Cluster(run_dir, events, launcher, settings, stop_deadline_s=3.0) as c:
            c.set_rooms((r.id, tuple(r.members)) for r in rooms)
            await c.launch(configs, 20)
            yield c
    finally:
        events.close()
