"""Every step type and every assertion type, passing and failing, with real agents."""

from __future__ import annotations

from pathlib import Path

from conftest import run_yaml

from orchestrator.events import EventStorage
from orchestrator.report.model import ScenarioReport, Verdict

BOT = """
  - id: bot
    model:
      rules:
        - when: {regex: "^ping$"}
          reply: "pong {sender}"
          actions: [{name: NONE}]
        - when: {regex: "^json$"}
          reply: '{{"ok": true, "n": 1}}'
"""


ONE_PING = f"""
agents:
{BOT}
  - id: alice
rooms:
  - {{id: lobby, members: [bot, alice]}}
script:
  - send: {{agent: alice, room: lobby, text: ping}}
  - wait_for: {{message: {{from: bot, contains: pong}}}}
"""
"""Two agents and one ping answered: the body of the scenarios that test what comes after."""


def _by_id(report: ScenarioReport) -> dict[str, bool]:
    return {a.id: a.passed for a in report.assertions}


DATA = Path(__file__).parent / "data" / "language"
ASSERTIONS = (DATA / "assertion-types.yaml").read_text()


def test_every_assertion_type_passes_and_fails(private_tmp: Path) -> None:
    report = run_yaml(ASSERTIONS, private_tmp / "report")
    results = _by_id(report)
    failing = {k for k in results if k.endswith("-fail")}
    assert {k for k, ok in results.items() if not ok} == failing, [
        (a.id, a.message) for a in report.assertions
    ]
    # Only optional assertions failed and the score clears the threshold: PASS.
    assert report.verdict is Verdict.PASS, report.verification
    n = len(results)
    assert report.verification.score == round((n - len(failing)) / n, 6)
    # The agents of `count: 3` exist, and a pattern made them members of the crowd room.
    assert {a.id for a in report.agents} >= {"worker-1", "worker-2", "worker-3"}
    memory = next(a for a in report.assertions if a.id == "memory-fail")
    assert "worker-1 peak_rss" in memory.message


def test_a_failed_required_assertion_fails_and_a_low_score_fails(private_tmp: Path) -> None:
    base = f"""
name: verdicts
agents:
{BOT}
  - id: alice
rooms:
  - {{id: lobby, members: [bot, alice]}}
script:
  - send: {{agent: alice, room: lobby, text: ping}}
  - wait_for: {{message: {{from: bot, contains: pong}}, timeout: 3s}}
"""
    required = run_yaml(
        base + "assertions:\n  - message: {from: bot, contains: nope}\n", private_tmp / "a"
    )
    assert required.verdict is Verdict.FAIL
    assert required.verification.reasons[0].startswith("required assertion assertions[0] failed")
    scored = run_yaml(
        base
        + "assertions:\n"
        + "  - {message: {from: bot, contains: pong}, weight: 1}\n"
        + "  - {message: {from: bot, contains: nope}, weight: 3, required: false}\n"
        + "verification: {threshold: 0.5}\n",
        private_tmp / "b",
    )
    assert scored.verdict is Verdict.FAIL
    assert scored.verification.score == 0.25
    assert scored.verification.reasons == ["score 0.250 is under the threshold 0.500"]


def test_echo_integrity_script_text_is_not_the_agents_own(private_tmp: Path) -> None:
    """The script makes `bot` say the magic words; the bot itself never does."""
    report = run_yaml(
        """
name: echo
agents:
  - id: bot
  - id: user
rooms:
  - {id: r, members: [bot, user]}
script:
  - send: {agent: bot, room: r, text: "the password is swordfish"}
assertions:
  - {id: agent-said-it, message: {from: bot, contains: swordfish}}
  - {id: script-said-it, message: {from: bot, contains: swordfish, origin: script}}
""",
        private_tmp / "report",
    )
    assert _by_id(report) == {"agent-said-it": False, "script-said-it": True}
    assert report.verdict is Verdict.FAIL


def test_custom_rule_errors_are_errors_never_passes(private_tmp: Path) -> None:
    report = run_yaml(
        """
name: bad-rules
agents:
  - id: bot
assertions:
  - {id: raises, custom: {rule: "plugins.rules:explodes"}}
  - {id: wrong-type, custom: {rule: "plugins.rules:not_a_result"}}
  - {id: missing, custom: {rule: "plugins.no_such_module:rule"}}
  - {id: ill-typed, custom: {rule: "plugins.rules:counts_as_int"}}
""",
        private_tmp / "report",
    )
    assert report.verdict is Verdict.ERROR
    errors = {a.id: a.error or "" for a in report.assertions}
    assert not any(a.passed for a in report.assertions)
    assert "raised ValueError: this rule always raises" in errors["raises"]
    assert "returned bool, not RuleResult" in errors["wrong-type"]
    assert "failed to import" in errors["missing"]
    assert "returned a RuleResult whose actual is int, not str" in errors["ill-typed"]
    assert report.agents, "the report is whole: the run was judged, not broken"


def test_a_custom_rule_over_an_incomplete_event_log_is_an_error(private_tmp: Path) -> None:
    text = f"""
name: summary-rule
{ONE_PING.lstrip()}assertions:
  - {{id: pongs, custom: {{rule: "plugins.rules:pongs_at_least", params: {{n: 1}}}}}}
"""
    full = run_yaml(text, private_tmp / "full")
    assert full.verdict is Verdict.PASS, full.verification.reasons
    for storage in (EventStorage.SUMMARY, EventStorage.OFF):
        report = run_yaml(text, private_tmp / storage.value, events=storage)
        assert report.verdict is Verdict.ERROR
        (pongs,) = report.assertions
        assert not pongs.passed
        assert f"the event log is incomplete (--events {storage.value};" in (pongs.error or "")


STEPS = (DATA / "step-types.yaml").read_text()


def test_every_step_type_with_retries_and_critical(private_tmp: Path) -> None:
    report = run_yaml(STEPS, private_tmp / "report")
    steps = {s.path: s for s in report.steps}
    loop = steps["script[0]"]
    assert (loop.status, loop.runs) == ("passed", 1)
    inner = steps["script[0].repeat.steps[1]"]
    assert (inner.runs, inner.passed) == (3, 3) and inner.p50_duration_s is not None
    assert steps["script[1]"].status == "passed"
    assert steps["script[1].parallel[1]"].status == "passed"
    assert steps["script[3]"].status == "passed"  # live state read by the inline assert
    assert steps["script[4]"].status == "failed"  # an inline assertion that failed...
    assert steps["script[5]"].status == "passed"
    assert steps["script[6]"].status == "passed"  # pause
    timed_out = steps["script[7]"]
    assert timed_out.status == "failed" and timed_out.retries == 1
    assert timed_out.error == "no message from bot containing 'never' within 100ms"
    assert steps["script[8]"].status == "failed"
    never = steps["script[9]"]
    assert never.status == "skipped" and never.runs == 0
    assert never.skipped_reason == "not run: critical step script[8] failed"
    inline = {a.id: a for a in report.assertions if a.inline}
    assert inline["live-phase"].passed and not inline["inline-fail"].passed
    # ...is a failed assertion, not an error; the failed waits are what make this an ERROR.
    assert report.verdict is Verdict.ERROR
    reasons = " | ".join(report.verification.reasons)
    assert "script[7] failed" in reasons and "script[8] failed" in reasons
    assert "script[9] did not run" in reasons and "script[4]" not in reasons


def test_actor_timelines_interleave(private_tmp: Path) -> None:
    """alice waits on bob, bob waits on carol: if timelines ran one after another, alice's wait
    would block the others and the run would time out. carol also goes on to say "carol done"
    without waiting for anyone."""
    report = run_yaml(
        """
name: actors
timeout: 10s
agents:
  - id: alice
  - id: bob
  - id: carol
rooms:
  - {id: hall, members: [alice, bob, carol]}
actors:
  - agent: alice
    script:
      - wait_for: {message: {from: bob, contains: go, origin: script}, timeout: 5s}
      - send: {room: hall, text: "alice done"}
  - agent: bob
    script:
      - wait_for: {message: {from: carol, contains: ready, origin: script}, timeout: 5s}
      - send: {room: hall, text: go}
  - agent: carol
    script:
      - send: {room: hall, text: ready}
      - send: {room: hall, text: "carol done"}
script:
  - wait_for: {message: {from: alice, contains: "alice done", origin: script}, timeout: 5s}
assertions:
  # The causal chain, carol -> bob -> alice, although alice's timeline is listed first.
  - message:
      from: bob
      contains: go
      origin: script
      after: {from: carol, contains: ready, origin: script}
  - message:
      from: alice
      contains: "alice done"
      origin: script
      after: {from: bob, contains: go, origin: script}
""",
        private_tmp / "report",
    )
    assert report.verdict is Verdict.PASS, report.verification
    assert {s.timeline for s in report.steps} == {"script", "alice", "bob", "carol"}
    assert all(s.status == "passed" for s in report.steps)


def test_stop_when_skips_the_rest_without_an_error(private_tmp: Path) -> None:
    report = run_yaml(
        f"""
name: soak-until
timeout: 30s
agents:
{BOT}
  - id: alice
rooms:
  - {{id: lobby, members: [bot, alice]}}
script:
  - repeat:
      duration: 20s
      steps:
        - send: {{agent: alice, room: lobby, text: ping}}
        - wait_for: {{message: {{from: bot, contains: pong}}, timeout: 3s}}
stop_when:
  - {{custom: "plugins.rules:enough_messages", params: {{n: 10}}}}
  - {{messages: 1000}}
assertions:
  - message: {{from: bot, contains: pong, count: {{min: 4}}}}
""",
        private_tmp / "report",
    )
    assert report.verdict is Verdict.PASS, report.verification
    assert report.stop_reason is not None and "enough_messages" in report.stop_reason
    repeat = next(s for s in report.steps if s.path == "script[0]")
    assert (repeat.status, repeat.skipped_reason) == ("skipped", report.stop_reason)


def test_a_stop_keyword_in_the_awaited_message_stops_the_run(private_tmp: Path) -> None:
    # The stop and the wait it ends are resolved by one and the same message. On Python 3.11,
    # asyncio.wait_for swallowed the stop's cancellation in that case, and the repeat went on
    # for its whole 20 s.
    report = run_yaml(
        f"""
name: stop-on-the-awaited-message
timeout: 30s
agents:
{BOT}
  - id: alice
rooms:
  - {{id: lobby, members: [bot, alice]}}
script:
  - repeat:
      duration: 20s
      steps:
        - send: {{agent: alice, room: lobby, text: ping}}
        - wait_for: {{message: {{from: bot, contains: pong}}, timeout: 3s}}
stop_when:
  - {{keyword: pong, from: bot}}
assertions:
  - message: {{from: bot, contains: pong, count: {{exactly: 1}}}}
""",
        private_tmp / "report",
    )
    assert report.stop_reason == "stopped: a message from bot contained 'pong'"
    assert report.verdict is Verdict.PASS, report.verification
    send = next(s for s in report.steps if s.path == "script[0].repeat.steps[0]")
    assert send.runs == 1


def test_wait_for_count_waits_for_that_many(private_tmp: Path) -> None:
    report = run_yaml(
        f"""
name: wait-count
timeout: 20s
agents:
{BOT}
  - id: alice
rooms:
  - {{id: lobby, members: [bot, alice]}}
script:
  - send: {{agent: alice, room: lobby, text: ping}}
  - send: {{agent: alice, room: lobby, text: ping}}
  - id: two
    wait_for: {{message: {{from: bot, contains: pong}}, count: 2, timeout: 3s}}
  - id: a-third
    wait_for: {{message: {{from: bot, contains: pong}}, count: 2, timeout: 300ms}}
assertions:
  - message: {{from: bot, contains: pong, count: {{exactly: 2}}}}
""",
        private_tmp / "report",
    )
    steps = {s.id: s for s in report.steps}
    assert steps["two"].status == "passed"
    # Both pongs were consumed by the first wait; there is no third.
    assert steps["a-third"].status == "failed"
    assert steps["a-third"].error == (
        "no message from bot containing 'pong' within 300ms (wanted 2, saw 0)"
    )
    assert report.verdict is Verdict.ERROR


def test_an_assert_in_a_repeat_judges_everything_so_far_each_time(private_tmp: Path) -> None:
    # The step's judge is kept between runs and reads only the new events; it must still count
    # every pong so far: at most 2 holds in the first two rounds and not in the next two.
    report = run_yaml(
        f"""
name: inline-in-a-loop
timeout: 20s
agents:
{BOT}
  - id: alice
rooms:
  - {{id: lobby, members: [bot, alice]}}
script:
  - repeat:
      count: 4
      steps:
        - send: {{agent: alice, room: lobby, text: ping}}
        - wait_for: {{message: {{from: bot, contains: pong}}, timeout: 3s}}
        - id: at-most-two
          assert:
            id: at-most-two-pongs
            required: false
            message: {{from: bot, contains: pong, count: {{max: 2}}}}
assertions:
  - message: {{from: bot, contains: pong, count: {{exactly: 4}}}}
verification: {{threshold: 0.5}}
""",
        private_tmp / "report",
    )
    step = next(s for s in report.steps if s.id == "at-most-two")
    assert (step.runs, step.passed, step.failed) == (4, 2, 2)
    inline = next(a for a in report.assertions if a.id == "at-most-two-pongs")
    # The report keeps an inline assertion's first failure: round 3, which had seen three.
    assert not inline.passed and inline.actual == "3 found" and len(inline.evidence) == 3


def test_an_errors_assertion_counts_failed_steps(private_tmp: Path) -> None:
    report = run_yaml(
        """
name: step-errors
agents: [{id: bot}, {id: user}]
rooms: [{id: r, members: [bot, user]}]
script:
  - wait_for: {message: {from: bot}, timeout: 100ms}
assertions:
  - {id: no-step-errors, errors: {kind: [step]}}
""",
        private_tmp / "report",
    )
    assert report.verdict is Verdict.ERROR  # a failed step is the run's error in any case
    (counted,) = report.assertions
    assert not counted.passed and counted.actual == "1 (step: 1)", counted


def test_a_stop_rule_that_raises_is_an_error_even_when_the_script_ends_first(
    private_tmp: Path,
) -> None:
    report = run_yaml(
        f"""
name: raising-stop-rule
{ONE_PING.lstrip()}stop_when:
  - {{custom: "plugins.rules:slow_to_explode"}}
assertions:
  - message: {{from: bot, contains: pong}}
""",
        private_tmp / "report",
    )
    assert report.verdict is Verdict.ERROR, report.verification
    rule_errors = [e for e in report.errors if e.source == "rule"]
    assert rule_errors and "raised RuntimeError: this rule raises late" in rule_errors[0].message


def test_an_inline_custom_assert_sees_what_happened_so_far(private_tmp: Path) -> None:
    report = run_yaml(
        f"""
name: inline-custom
{ONE_PING.lstrip()}  - assert:
      id: one-pong-so-far
      custom: {{rule: "plugins.rules:pongs_at_least", params: {{n: 1}}}}
assertions:
  - message: {{from: bot, contains: pong}}
""",
        private_tmp / "report",
    )
    assert report.verdict is Verdict.PASS, report.verification.reasons
    inline = next(a for a in report.assertions if a.id == "one-pong-so-far")
    assert inline.passed and inline.inline
