"""Shared test fixtures: real agent processes on a real bus, and a no-leftovers check."""

from __future__ import annotations

import asyncio
import shlex
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner
from fakechat import FakeChatServer

from orchestrator.cli import main
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


SOAK_EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "soak.yaml"


@dataclass(frozen=True)
class SoakedExample:
    code: int
    output: str
    report_dir: Path
    leftovers: list[Path]
    """Run directories left in its private TMPDIR after it ended (none, or a bug)."""


@pytest.fixture(scope="session")
def soaked_example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoakedExample]:
    """examples/soak.yaml soaked once, with its header's arguments, through the command line,
    for every test that reads what it leaves (tests/test_soak.py's verdicts, the HTML report's
    browser test): it is the longest run of the suite (about 90 s), so it runs once."""
    args: list[str] = []
    for line in SOAK_EXAMPLE.read_text().splitlines():
        if line.startswith("# args:"):
            args = shlex.split(line.removeprefix("# args:"))
    root = Path(tempfile.mkdtemp(prefix="srt-", dir="/tmp"))
    report_dir = tmp_path_factory.mktemp("soak-example") / "soak"
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(tempfile, "tempdir", str(root))
            result = CliRunner().invoke(
                main, ["soak", str(SOAK_EXAMPLE), "--report-dir", str(report_dir), "-q", *args]
            )
        yield SoakedExample(result.exit_code, result.output, report_dir, list(root.glob("sr-*")))
    finally:
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
