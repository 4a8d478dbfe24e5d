"""What an assertion counts, pinned by tests: each case was found wrong by acceptance testing
(a new user's scenario) and fixed; each test fails when its fix is taken out.

One run of real agents serves the run-time cases (they are independent assertions of it);
the last case is `validate`'s.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import TESTS_DIR

from orchestrator.cli import main
from orchestrator.events import ActionEnded, Event, MessageRefused, MessageSent
from orchestrator.report.model import ScenarioReport
from orchestrator.run.runner import RunOptions, run_scenario
from orchestrator.scenario.loader import load_scenario_text

SCENARIO = """
name: semantics
timeout: 20s
agents:
  - id: bot
    plugins: [examples.plugins.faults:plugin, plugins.poster:plugin]
    model:
      rules:
        - when: {regex: "^divide (?P<a>\\\\d+) by (?P<b>\\\\d+)$"}
          actions: [{name: DIVIDE, params: {a: "{a}", b: "{b}"}}]
  - id: user
  - id: outsider
rooms:
  - {id: lobby, members: [bot, user]}
  - {id: side, members: [user, outsider]}
script:
  # Words the script puts in the bot's mouth, through REPLY's callback and through a plugin
  # that calls runtime.send.
  - action: {agent: bot, name: REPLY, params: {text: "scripted words"}, room: lobby}
  - action: {agent: bot, name: POST, params: {room: lobby, text: "scripted post"}}
  # The bot is not in `side`: the bus refuses this post.
  - action: {agent: bot, name: POST, params: {room: side, text: "sneaky"}}
  - send: {agent: user, room: lobby, text: "divide 20 by 4"}
  - wait_for: {action: {agent: bot, name: DIVIDE, status: succeeded}, timeout: 5s}
  - action: {agent: bot, name: EXPLODE, expect: error}
assertions:
  - id: bot-never-said-the-scripted-words
    message: {from: bot, contains: scripted, count: {exactly: 0}}
  - id: the-script-said-them
    message: {from: bot, origin: script, contains: scripted, count: {exactly: 2}}
  - id: user-received-nothing-sneaky
    message: {from: bot, to: user, origin: any, contains: sneaky, count: {exactly: 0}}
  - id: typo-in-an-action-name
    action: {agent: bot, name: WITHDRAWL, count: {max: 0}}
  - id: validated-params
    action: {agent: bot, name: DIVIDE, params: {a: 20, b: 4}}
  - id: raising-handler-is-an-error
    errors: {kind: [handler], agent: bot, max: 1}
"""


@pytest.fixture(scope="module")
def run() -> Iterator[tuple[ScenarioReport, list[Event]]]:
    root = Path(tempfile.mkdtemp(prefix="srt-", dir="/tmp"))
    seen: list[Event] = []

    def probe(event: Event) -> None:
        if isinstance(event, MessageSent | MessageRefused | ActionEnded):
            seen.append(event)

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(tempfile, "tempdir", str(root))
            scenario = load_scenario_text(SCENARIO, "semantics.yaml")
            report = asyncio.run(
                run_scenario(
                    scenario, TESTS_DIR / "semantics.yaml", RunOptions(report_dir=root / "r"),
                    probe,
                )
            )  # fmt: skip
        yield report, seen
    finally:
        shutil.rmtree(root, ignore_errors=True)  # it was left in /tmp after every suite


def _assertion(report: ScenarioReport, ident: str) -> tuple[bool, str]:
    found = next(a for a in report.assertions if a.id == ident)
    return found.passed, found.message


def test_text_a_script_action_posts_is_the_scripts_not_the_agents(
    run: tuple[ScenarioReport, list[Event]],
) -> None:
    report, seen = run
    said = {e.text: e.origin for e in seen if isinstance(e, MessageSent)}
    assert said["scripted words"] == "script" and said["scripted post"] == "script"
    assert _assertion(report, "bot-never-said-the-scripted-words")[0]
    assert _assertion(report, "the-script-said-them")[0]


def test_a_refused_message_is_received_by_nobody(
    run: tuple[ScenarioReport, list[Event]],
) -> None:
    report, seen = run
    refused = [e for e in seen if isinstance(e, MessageRefused)]
    assert [(e.agent, e.room, e.text) for e in refused] == [("bot", "side", "sneaky")]
    assert "not a member of room 'side'" in refused[0].reason
    assert not any(isinstance(e, MessageSent) and e.text == "sneaky" for e in seen)
    assert report.bus.refused == 1
    assert _assertion(report, "user-received-nothing-sneaky")[0]


def test_an_action_no_agent_announced_fails_with_the_agents_actions(
    run: tuple[ScenarioReport, list[Event]],
) -> None:
    report, _ = run
    passed, message = _assertion(report, "typo-in-an-action-name")
    assert not passed
    assert "bot has no action 'WITHDRAWL'" in message
    assert "DIVIDE" in message and "POST" in message and "REPLY" in message
    assert report.verdict.value == "FAIL"  # that one failed assertion, and nothing else
    assert [a.id for a in report.assertions if not a.passed] == ["typo-in-an-action-name"]


def test_action_events_carry_the_parameters_the_handler_received(
    run: tuple[ScenarioReport, list[Event]],
) -> None:
    report, seen = run
    divides = [e for e in seen if isinstance(e, ActionEnded) and e.action == "DIVIDE"]
    assert [e.params for e in divides] == [{"a": 20.0, "b": 4.0}]  # templated "20", "4"
    assert _assertion(report, "validated-params")[0]


def test_a_raising_action_handler_is_an_error_of_the_agent(
    run: tuple[ScenarioReport, list[Event]],
) -> None:
    report, _ = run
    bot = next(a for a in report.agents if a.id == "bot")
    assert bot.handler_errors == 1
    errors = [(e.source.value, e.agent) for e in report.errors]
    assert errors == [("handler", "bot")], report.errors
    assert "action EXPLODE" in report.errors[0].message
    assert _assertion(report, "raising-handler-is-an-error")[0]


def test_validate_reports_every_problem_of_a_step_at_once(tmp_path: Path) -> None:
    path = tmp_path / "both.yaml"
    path.write_text(
        """\
name: both
agents: [{id: bot}]
script:
  - wait_for: {message: {from: ghost, regex: "(unclosed"}}
assertions:
  - message: {from: bot}
""",
        encoding="utf-8",
    )
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2
    assert "script[0].wait_for.message.from: undefined agent 'ghost'" in result.output
    assert "script[0].wait_for.message.regex: bad regex" in result.output
    assert "2 problem(s) found" in result.output
