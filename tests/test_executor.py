"""The executor against a synthetic event log (no agents, no bus): how waits consume, retry,
share nothing across timelines, and let go of what they no longer need."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from orchestrator.events import EventLog, MessageSent, StepFinished
from orchestrator.run.executor import Executor, StepResult
from orchestrator.scenario.loader import load_scenario_text

HEAD = """
name: synthetic
timeout: 10s
agents: [{id: bot}, {id: user}]
rooms: [{id: lobby, members: [bot, user]}]
assertions: [{errors: {}}]
"""


def say(log: EventLog, agent: str, text: str) -> None:
    log.emit(
        MessageSent(agent=agent, msg_id=f"{agent}:{log.last_id + 1}", room="lobby", text=text,
                    origin="agent")
    )  # fmt: skip


async def _never(*_: object) -> object:
    raise AssertionError("no assert step here")


def run(
    body: str, tmp: Path, feed: list[tuple[float, str, str]]
) -> tuple[Executor, dict[str, StepResult]]:
    """Run the scenario's timelines while `feed` emits (delay, sender, text) messages."""
    scenario = load_scenario_text(HEAD + body, "synthetic.yaml")

    async def main() -> tuple[Executor, dict[str, StepResult]]:
        log = EventLog(tmp / "events.jsonl", capacity=1)
        executor = Executor(scenario, None, log, _never)  # type: ignore[arg-type]

        async def emit_all() -> None:
            for delay, sender, text in feed:
                await asyncio.sleep(delay)  # the test's own pacing of synthetic events
                say(log, sender, text)

        feeder = asyncio.get_running_loop().create_task(emit_all())
        results = await executor.run(time.monotonic() + 10)
        await feeder
        return executor, {r.path: r for r in results}

    return asyncio.run(main())


def test_a_retried_counted_wait_finds_its_first_attempts_matches_again(tmp_path: Path) -> None:
    _, results = run(
        """
script:
  - wait_for: {message: {from: user}, count: 2, timeout: 200ms}
    retries: 1
""",
        tmp_path,
        [(0.05, "user", "one"), (0.25, "user", "two")],  # the second during the retry
    )
    wait = results["script[0]"]
    assert wait.status.value == "passed" and wait.retries == 1, wait


def test_two_actors_of_one_agent_are_two_timelines(tmp_path: Path) -> None:
    _, results = run(
        """
actors:
  - agent: bot
    script:
      - wait_for: {message: {from: user, contains: B}, timeout: 1s}
  - agent: bot
    script:
      - pause: 300ms
      - wait_for: {message: {from: user, contains: A}, timeout: 1s}
""",
        tmp_path,
        [(0.05, "user", "A"), (0.0, "user", "B")],
    )
    assert {p: r.status.value for p, r in results.items()} == {
        "actors[0].script[0]": "passed",
        "actors[1].script[0]": "passed",
        "actors[1].script[1]": "passed",
    }


def test_a_wait_that_cannot_run_again_stops_collecting(tmp_path: Path) -> None:
    scenario = load_scenario_text(
        HEAD
        + """
script:
  - wait_for: {message: {from: bot}, timeout: 1s}
  - pause: 1s
  - repeat:
      count: 2
      steps:
        - wait_for: {message: {from: bot, contains: again}, timeout: 1s}
""",
        "synthetic.yaml",
    )

    async def main() -> None:
        log = EventLog(tmp_path / "events.jsonl", capacity=1)
        executor = Executor(scenario, None, log, _never)  # type: ignore[arg-type]
        first = executor.taps["script[0]"]
        task = asyncio.get_running_loop().create_task(executor.run(time.monotonic() + 10))
        say(log, "bot", "hello")
        await log.until(lambda: "script[0]" not in executor.taps, (StepFinished,), 1)
        for _ in range(10_000):  # the first wait is done: none of these are kept for it
            say(log, "bot", "chatter")
        assert first.held == 0
        say(log, "bot", "again")
        say(log, "bot", "again")
        results = {r.path: r for r in await task}
        assert results["script[2]"].status.value == "passed"
        assert executor.taps == {}  # every tap closed at the end

    asyncio.run(main())
