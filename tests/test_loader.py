"""The scenario file format: loading, every kind of invalid file, and durations.

Each invalid case pins the line, the field path and a keyword of the message, because a problem
report that points at the wrong line is a bug even when its message is right.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from orchestrator.scenario.assertions import MessageAssertion
from orchestrator.scenario.durations import Duration
from orchestrator.scenario.loader import (
    Problem,
    ScenarioError,
    load_scenario,
    load_scenario_text,
    validate_files,
)
from orchestrator.scenario.spec import Scenario, channel_type
from orchestrator.scenario.steps import WaitForStep

DATA = Path(__file__).parent / "data"
HELLO_ROOM = DATA / "valid" / "hello-room.yaml"


def problems_of(text: str) -> list[Problem]:
    with pytest.raises(ScenarioError) as caught:
        load_scenario_text(textwrap.dedent(text), "case.yaml")
    return caught.value.problems


# --- the example -----------------------------------------------------------------------------


def test_example_scenario_loads() -> None:
    scenario = load_scenario(HELLO_ROOM)

    assert scenario.name == "hello-room"
    assert scenario.timeout == Duration(20.0)
    assert [agent.id for agent in scenario.agents] == ["greeter", "alice", "bob"]
    assert scenario.agents[0].model is not None
    assert scenario.agents[0].model.rules[0].reply == "hello {sender}, welcome"
    assert [type(step).__name__ for step in scenario.script] == [
        "SendStep",
        "WaitForStep",
        "SendStep",
        "WaitForStep",
    ]
    wait = scenario.script[1]
    assert isinstance(wait, WaitForStep)
    assert wait.wait_for.message.from_ == "greeter"
    assert wait.wait_for.timeout == Duration(2.0)
    assertion = scenario.assertions[0]
    assert isinstance(assertion, MessageAssertion)
    assert assertion.message.count.min == 2
    assert assertion.message.count.max is None


def test_example_round_trips_through_its_dump() -> None:
    scenario = load_scenario(HELLO_ROOM)

    dumped = scenario.model_dump(by_alias=True)

    assert dumped["timeout"] == "20s"
    assert dumped["script"][1]["wait_for"]["message"]["from"] == "greeter"
    assert dumped["assertions"][0]["message"]["from"] == "greeter"
    assert "from_" not in str(dumped)
    assert Scenario.model_validate(dumped) == scenario


def test_defaults() -> None:
    scenario = load_scenario_text(
        textwrap.dedent(
            """\
            name: minimal
            agents: [{id: a}]
            assertions:
              - message: {from: a}
            """
        ),
        "minimal.yaml",
    )

    assert scenario.timeout == Duration(60.0)
    assert scenario.description == ""
    assert scenario.rooms == [] and scenario.script == []
    assert scenario.assertions[0].message.count.min == 1


def test_rooms_default_to_group() -> None:
    scenario = load_scenario_text(
        textwrap.dedent(
            """\
            name: rooms
            agents: [{id: a}, {id: b}]
            rooms:
              - {id: r, members: [a, b]}
              - {id: d, type: dm, members: [a, b]}
            assertions: [{message: {from: a}}]
            """
        ),
        "rooms.yaml",
    )

    assert [room.type for room in scenario.rooms] == ["group", "dm"]
    assert [channel_type(room.type) for room in scenario.rooms] == ["GROUP", "DM"]


# --- invalid files: one problem each, at an exact line and path -------------------------------

INVALID = [
    pytest.param(
        """\
        name: t
        agents:
          - id: alice
           - id: bob
        assertions: []
        """,
        4,
        "",
        "invalid YAML",
        id="yaml-syntax",
    ),
    pytest.param(
        """\
        name: t
        agents: [{id: a}]
        assertions: [{message: {from: a}}]
        asertion_timeout: 2s
        """,
        4,
        "asertion_timeout",
        "unknown key 'asertion_timeout'",
        id="unknown-top-level-key",
    ),
    pytest.param(
        """\
        name: t
        agents: [{id: a}]
        rooms:
          - id: r
            members: [a]
            topic: chat
        assertions: [{message: {from: a}}]
        """,
        6,
        "rooms[0].topic",
        "unknown key 'topic'",
        id="unknown-nested-key",
    ),
    pytest.param(
        """\
        name: t
        timeout: [1]
        agents: [{id: a}]
        assertions: [{message: {from: a}}]
        """,
        2,
        "timeout",
        "bad duration [1]",
        id="wrong-type",
    ),
    pytest.param(
        """\
        name: t
        agents: [{id: a}]
        rooms: {id: r}
        assertions: [{message: {from: a}}]
        """,
        3,
        "rooms",
        "expected a list, got a mapping",
        id="mapping-for-list",
    ),
    pytest.param(
        """\
        name: t
        timeout: 2 parsecs
        agents: [{id: a}]
        assertions: [{message: {from: a}}]
        """,
        2,
        "timeout",
        "bad duration '2 parsecs'",
        id="bad-duration",
    ),
    pytest.param(
        """\
        name: t
        agents:
          - id: a
            model:
              rules:
                - when: {regex: "a[b"}
                  reply: hi
        assertions: [{message: {from: a}}]
        """,
        6,
        "agents[0].model.rules[0].when.regex",
        "unterminated character set",
        id="bad-regex-in-rule",
    ),
    pytest.param(
        """\
        name: t
        agents: [{id: a}]
        rooms: [{id: r, members: [a]}]
        script:
          - send: {agent: a, room: r, text: hi}
          - wait_for:
              message: {from: a, regex: "(x"}
        assertions: [{message: {from: a}}]
        """,
        7,
        "script[1].wait_for.message.regex",
        "bad regex '(x'",
        id="bad-regex-in-wait-for",
    ),
    pytest.param(
        """\
        name: t
        agents: [{id: alice}, {id: bob}]
        rooms: [{id: r, members: [alice, bob]}]
        script:
          - send: {agent: alice, room: r, text: hi}
          - wait_for:
              message: {from: bobby, room: r}
        assertions: [{message: {from: alice}}]
        """,
        7,
        "script[1].wait_for.message.from",
        "undefined agent 'bobby' (did you mean 'bob'?)",
        id="wait-for-from-undefined-agent",
    ),
    pytest.param(
        """\
        name: t
        agents: [{id: alice}, {id: bob}, {id: carol}]
        rooms: [{id: r, members: [alice, bob]}]
        script:
          - send: {agent: alice, room: r, text: hi}
          - send: {agent: carol, room: r, text: hi}
        assertions: [{message: {from: alice}}]
        """,
        6,
        "script[1].send.agent",
        "not a member of room 'r'",
        id="send-by-non-member",
    ),
    pytest.param(
        """\
        name: t
        agents: [{id: alice}, {id: bob}]
        rooms:
          - id: r
            members:
              - alice
              - carol
        assertions: [{message: {from: alice}}]
        """,
        7,
        "rooms[0].members[1]",
        "undefined agent 'carol'",
        id="undefined-room-member",
    ),
    pytest.param(
        """\
        name: t
        agents:
          - id: alice
          - id: bob
          - id: alice
        assertions: [{message: {from: alice}}]
        """,
        5,
        "agents[2].id",
        "duplicate agent id 'alice'",
        id="duplicate-agent-id",
    ),
    pytest.param(
        """\
        name: t
        agents: [{id: a}]
        assertions: []
        """,
        3,
        "assertions",
        "no assertion",
        id="no-assertions",
    ),
    pytest.param(
        """\
        name: t
        agents: [{id: a}]
        """,
        1,
        "assertions",
        "a scenario with no assertion is invalid",
        id="assertions-missing",
    ),
    pytest.param(
        "",
        1,
        "",
        "empty file",
        id="empty-file",
    ),
    pytest.param(
        """\
        - name: t
        """,
        1,
        "",
        "must be a mapping",
        id="top-level-not-mapping",
    ),
    pytest.param(
        """\
        name: t
        agents: [{id: a}, {id: b}, {id: c}]
        rooms:
          - {id: r, type: dm, members: [a, b, c]}
        assertions: [{message: {from: a}}]
        """,
        4,
        "rooms[0].members",
        "exactly 2 members",
        id="dm-with-three-members",
    ),
    pytest.param(
        """\
        name: t
        agents:
          - id: a
            model: {rules: []}
            id: b
        assertions: [{message: {from: b}}]
        """,
        5,
        "agents[0].id",
        "duplicate key 'id' (first at line 3)",
        id="duplicate-yaml-key",
    ),
    pytest.param(
        """\
        name: t
        agents:
          - id: a
            model:
              rules:
                - when: {contains: hi}
                  reply: "hello {sender}, {foo}"
        assertions: [{message: {from: a}}]
        """,
        7,
        "agents[0].model.rules[0].reply",
        "unknown placeholder {foo}",
        id="unknown-reply-placeholder",
    ),
    pytest.param(
        """\
        name: t
        agents:
          - id: a
            model:
              rules:
                - when: {contains: hi}
                  reply: "hello {sender"
        assertions: [{message: {from: a}}]
        """,
        7,
        "agents[0].model.rules[0].reply",
        "bad reply template",
        id="malformed-reply-braces",
    ),
    pytest.param(
        """\
        name: t
        agents: [{id: a}]
        rooms: [{id: r, members: [a]}]
        script:
          - send: {agent: a, room: r, text: hi}
          - sleep: 1s
        assertions: [{message: {from: a}}]
        """,
        6,
        "script[1]",
        "unknown step type 'sleep'; known step types: send, wait_for",
        id="unknown-step-type",
    ),
    pytest.param(
        """\
        name: t
        agents: [{id: a}]
        script:
          - wait-for: {message: {from: a}}
        assertions: [{message: {from: a}}]
        """,
        4,
        "script[0]",
        "did you mean 'wait_for'?",
        id="misspelt-step-type",
    ),
    pytest.param(
        """\
        name: t
        agents: [{id: a}]
        rooms: [{id: r, members: [a]}]
        script:
          - send: {agent: a, room: r, text: hi}
            wait_for: {message: {from: a}}
        assertions: [{message: {from: a}}]
        """,
        5,
        "script[0]",
        "exactly one of the keys send, wait_for",
        id="step-with-two-types",
    ),
    pytest.param(
        """\
        name: t
        agents: [{id: a}]
        rooms: [{id: r, members: [a]}]
        script:
          - send:
              agent: a
              room: r
              txt: hi
        assertions: [{message: {from: a}}]
        """,
        8,
        "script[0].send.txt",
        "unknown key 'txt' (did you mean 'text'?)",
        id="unknown-key-in-step-no-union-tag",
    ),
    pytest.param(
        """\
        name: t
        agents: [{id: coordinator}]
        assertions: [{message: {from: coordinator}}]
        """,
        2,
        "agents[0].id",
        "reserved",
        id="reserved-agent-id",
    ),
    pytest.param(
        """\
        name: t
        agents: [{id: a}]
        assertions:
          - message: {from: a, count: {min: 3, max: 1}}
        """,
        4,
        "assertions[0].message.count",
        "greater than max",
        id="count-min-above-max",
    ),
    pytest.param(
        """\
        name: t
        agents: [{id: a}]
        assertions:
          - message: {room: r}
        """,
        4,
        "assertions[0].message",
        "missing required field 'from'",
        id="assertion-without-from",
    ),
    pytest.param(
        """\
        name: t
        agents: [{id: a}]
        rooms: [{id: r, members: [a]}]
        script:
          - wait_for: {message: {}}
        assertions: [{message: {from: a}}]
        """,
        5,
        "script[0].wait_for.message",
        "at least one of from, to, room, contains, regex, equals",
        id="empty-message-match",
    ),
    pytest.param(
        """\
        name: t
        agents: [{id: a}]
        rooms: [{id: a, members: [a]}]
        assertions: [{message: {from: a}}]
        """,
        3,
        "rooms[0].id",
        "also an agent id",
        id="room-id-equals-agent-id",
    ),
    pytest.param(
        """\
        name: t
        agents: [{id: a}]
        on: true
        assertions: [{message: {from: a}}]
        """,
        3,
        "",
        "quote it",
        id="yaml-boolean-key",
    ),
    pytest.param(
        """\
        name: t
        agents: [{id: a}]
        assertions:
          - state: {agent: a, path: x, equals: 1, gt: 0}
        """,
        4,
        "assertions[0].state",
        "exactly one of equals, not_equals, exists, absent, or a comparison",
        id="state-two-tests",
    ),
    pytest.param(
        """\
        name: t
        agents: [{id: a}]
        assertions:
          - state: {agent: a, path: x, lt: 5, le: 4}
        """,
        4,
        "assertions[0].state",
        "at most one upper",
        id="state-two-upper-bounds",
    ),
    pytest.param(
        """\
        name: t
        agents: [{id: a}]
        assertions:
          - state: {agent: a, path: x, gt: "3"}
        """,
        4,
        "assertions[0].state.gt",
        "number",
        id="state-compare-with-a-string",
    ),
    pytest.param(
        """\
        name: t
        agents: [{id: a}]
        assertions:
          - state: {agent: a, path: "x..y", exists: true}
        """,
        4,
        "assertions[0].state.path",
        "empty segment",
        id="state-bad-path",
    ),
    pytest.param(
        """\
        name: t
        agents: [{id: a}]
        script:
          - wait_for: {state: {agent: b, path: x, exists: true}}
        assertions: [{message: {from: a}}]
        """,
        4,
        "script[0].wait_for.state.agent",
        "undefined agent 'b'",
        id="wait-for-state-undefined-agent",
    ),
    pytest.param(
        """\
        name: t
        agents: [{id: a}]
        script:
          - wait_for: {state: {agent: a, path: x, exists: true}, action: {agent: a}}
        assertions: [{message: {from: a}}]
        """,
        4,
        "script[0].wait_for",
        "this one has action and state",
        id="wait-for-two-kinds",
    ),
]


@pytest.mark.parametrize(("text", "line", "path", "keyword"), INVALID)
def test_invalid_file_reports_one_located_problem(
    text: str, line: int, path: str, keyword: str
) -> None:
    problems = problems_of(text)

    assert len(problems) == 1, "\n".join(map(str, problems))
    problem = problems[0]
    assert (problem.file, problem.line, problem.path) == ("case.yaml", line, path)
    assert keyword in problem.message
    assert problem.column is not None


def test_misspelt_top_level_key_suggests_the_right_one() -> None:
    problems = problems_of(
        """\
        name: t
        agents: [{id: a}]
        asertions:
          - message: {from: a}
        """
    )

    # Not also "missing required field 'assertions'": the suggestion already says so.
    assert problems == [
        Problem(
            "case.yaml",
            3,
            1,
            "asertions",
            "unknown key 'asertions' (did you mean 'assertions'?)",
        )
    ]


def test_several_problems_in_one_file_are_all_reported() -> None:
    problems = problems_of(
        """\
        name: t
        timeout: soon
        agents:
          - id: alice
          - id: bob
        rooms:
          - {id: lobby, members: [alice, bob, carol]}
        script:
          - send: {agent: alice, room: lobby, text: hi, colour: red}
          - send: {agent: bob, room: lobbby, text: hi}
          - wait_for: {message: {from: dave, room: lobby}}
        assertions:
          - message: {from: alice, regex: "*"}
        """
    )

    found = {(problem.line, problem.path) for problem in problems}
    assert found == {
        (2, "timeout"),
        (7, "rooms[0].members[2]"),
        (9, "script[0].send.colour"),
        (10, "script[1].send.room"),
        (11, "script[2].wait_for.message.from"),
        (13, "assertions[0].message.regex"),
    }
    # In file order, so that the report reads top to bottom.
    lines = [problem.line or 0 for problem in problems]
    assert lines == sorted(lines)


def test_reference_problems_are_all_reported_at_once() -> None:
    problems = problems_of(
        """\
        name: t
        agents: [{id: a}, {id: a}]
        rooms: [{id: r, members: [a, x]}, {id: r, members: [a]}]
        script:
          - {id: s, send: {agent: y, room: r, text: hi}}
          - {id: s, send: {agent: a, room: z, text: hi}}
        assertions:
          - message: {from: w, room: v}
        """
    )

    assert [(problem.line, problem.path) for problem in problems] == [
        (2, "agents[1].id"),
        (3, "rooms[0].members[1]"),
        (3, "rooms[1].id"),
        (5, "script[0].send.agent"),
        (6, "script[1].id"),
        (6, "script[1].send.room"),
        (8, "assertions[0].message.from"),
        (8, "assertions[0].message.room"),
    ]


def test_problem_paths_never_show_pydantic_internals() -> None:
    problems = problems_of(
        """\
        name: t
        agents: [{id: a}]
        script:
          - send: {agent: a, room: r, text: 5}
          - wait_for: {message: {from: a}, timeout: -1s}
          - send: {agent: a, text: hi}
        assertions: [{message: {from: a, count: {min: x}}}]
        """
    )

    assert [problem.path for problem in problems] == [
        "script[0].send.text",
        "script[1].wait_for.timeout",
        "script[2].send",
        "assertions[0].message.count.min",
    ]
    assert problems[2].message == "missing required field 'room'"
    for problem in problems:
        assert "Step" not in str(problem) and "function" not in str(problem)
        assert "Value error" not in problem.message and "http" not in problem.message


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"

    with pytest.raises(ScenarioError) as caught:
        load_scenario(missing)

    [problem] = caught.value.problems
    assert problem == Problem(str(missing), None, None, "", "no such file")
    assert str(caught.value) == f"{missing}: no such file"


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: t\ndescription: caf\xe9\n")

    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)

    [problem] = caught.value.problems
    assert problem.line == 2
    assert "not UTF-8" in problem.message


def test_recursive_alias_is_a_problem_not_a_crash() -> None:
    problems = problems_of(
        """\
        name: t
        agents: &a [*a]
        assertions: [{message: {from: a}}]
        """
    )

    assert any("alias to itself" in problem.message for problem in problems)


def test_problem_renders_as_one_line() -> None:
    located = Problem("s.yaml", 7, 3, "script[2].wait_for.message.from", "undefined agent 'x'")
    unlocated = Problem("s.yaml", None, None, "", "no such file")
    multiline = Problem("s.yaml", 1, None, "name", "a\nb")

    assert str(located) == "s.yaml:7:3: script[2].wait_for.message.from: undefined agent 'x'"
    assert str(unlocated) == "s.yaml: no such file"
    assert str(multiline) == "s.yaml:1: name: a\\nb"
    error = ScenarioError([located, unlocated])
    assert str(error).splitlines() == [str(located), str(unlocated)]


def test_validate_files_collects_problems_of_every_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: t\nagents: [{id: a}]\nassertions: []\n")
    missing = tmp_path / "missing.yaml"

    scenarios, problems = validate_files([HELLO_ROOM, bad, missing])

    assert [scenario.name for _, scenario in scenarios] == ["hello-room"]
    assert [(problem.file, problem.line) for problem in problems] == [
        (str(bad), 3),
        (str(missing), None),
    ]


def test_scenario_built_in_code_checks_references_too() -> None:
    data = {
        "name": "t",
        "agents": [{"id": "a"}],
        "script": [{"send": {"agent": "b", "room": "r", "text": "hi"}}],
        "assertions": [{"message": {"from": "a"}}],
    }

    with pytest.raises(ValidationError, match=r"script\[0\]\.send\.agent: undefined agent 'b'"):
        Scenario.model_validate(data)


# --- durations -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds", "rendered"),
    [
        ("250ms", 0.25, "250ms"),
        ("2s", 2.0, "2s"),
        ("1.5s", 1.5, "1.5s"),
        ("5m", 300.0, "5m"),
        ("1h", 3600.0, "1h"),
        ("100us", 0.0001, "100us"),
        ("90s", 90.0, "90s"),
        ("1.5ms", 0.0015, "1.5ms"),
        ("0", 0.0, "0s"),
        ("3", 3.0, "3s"),
        (" 2 s ", 2.0, "2s"),
        ("5min", 300.0, "5m"),
        ("1h30m", 5400.0, "90m"),
        ("1h 30min 15s", 5415.0, "5415s"),
        ("2m500ms", 120.5, "120.5s"),
        (2, 2.0, "2s"),
        (0.5, 0.5, "500ms"),
    ],
)
def test_duration_parse_and_render(text: str | float, seconds: float, rendered: str) -> None:
    duration = Duration.parse(text)

    assert duration.seconds == seconds
    assert str(duration) == rendered
    assert Duration.parse(str(duration)) == duration


@pytest.mark.parametrize(
    "text",
    ["", "-1s", "-1", "2 parsecs", "1d", "s", "nan", "inf", "1e999s", "1.2.3s", "2 s s",
     "30m1h", "1m1m", "1m1min", "1h30", "1h-30m", "1 h x"],
)
def test_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"bad duration .*: expected a number with a unit"):
        Duration.parse(text)


@pytest.mark.parametrize("value", [True, False, -1, -0.5, math.nan, math.inf])
def test_duration_rejects_non_durations(value: float) -> None:
    with pytest.raises(ValueError, match="bad duration"):
        Duration.parse(value)


def test_duration_is_an_ordered_value() -> None:
    assert Duration.parse("500ms") < Duration.parse("1s") < Duration.parse("1m")
    assert Duration(2) == Duration(2.0) and hash(Duration(2)) == hash(Duration(2.0))
    assert Duration.parse("1.5s").ms == 1500.0
    with pytest.raises(ValueError):
        Duration(-1.0)


def test_duration_as_a_pydantic_field() -> None:
    class Timed(BaseModel):
        after: Duration

    assert Timed.model_validate({"after": "2s"}).after == Duration(2.0)
    assert Timed.model_validate({"after": 2}).after == Duration(2.0)
    assert Timed.model_validate({"after": Duration(3.0)}).after == Duration(3.0)
    assert Timed(after=Duration(0.25)).model_dump() == {"after": "250ms"}
    assert Timed(after=Duration(0.25)).model_dump_json() == '{"after":"250ms"}'
    with pytest.raises(ValidationError, match="bad duration 'soon'"):
        Timed.model_validate({"after": "soon"})
    schema = Timed.model_json_schema()["properties"]["after"]
    assert {"type": "number", "minimum": 0} in schema["anyOf"]


def test_references_are_checked_even_when_an_agent_has_errors_of_its_own() -> None:
    text = """\
name: all-at-once
agents:
  - id: a
    model:
      rules:
        - {when: {regex: "(unclosed"}, reply: hi, chance: 2}
  - id: a
  - id: b
rooms:
  - {id: r, members: [a, ghost]}
  - {id: s, members: [b]}
script:
  - send: {agent: a, room: s, text: hi}
  - send: {agent: a, room: nowhere, text: x}
assertions:
  - timing: {step: missing-step, max: 1s}
"""
    with pytest.raises(ScenarioError) as caught:
        load_scenario_text(text, "x.yaml")
    assert [str(p) for p in caught.value.problems] == [
        "x.yaml:6:26: agents[0].model.rules[0].when.regex: bad regex '(unclosed': missing ),"
        " unterminated subpattern at position 0",
        "x.yaml:6:59: agents[0].model.rules[0].chance: must be at most 1.0, got a number (2)",
        "x.yaml:7:9: agents[1].id: duplicate agent id 'a' (first defined at agents[0])",
        "x.yaml:10:26: rooms[0].members[1]: undefined agent 'ghost'",
        "x.yaml:13:19: script[0].send.agent: agent 'a' is not a member of room 's'",
        "x.yaml:14:28: script[1].send.room: undefined room 'nowhere'",
        "x.yaml:16:20: assertions[0].timing.step: undefined step id 'missing-step'",
    ]
