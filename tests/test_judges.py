"""The judges alone, against synthetic event streams: fast, and exact about what counts.

Each judge subscribes to a log before the events are emitted (as in a run) and is asked for
its result afterwards; nothing is replayed. The same judges run through real agents in
test_language.py and test_semantics.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from orchestrator.events import (
    ActionCompleted,
    ActionFailed,
    AgentBye,
    AgentExited,
    ErrorKind,
    EventLog,
    MessageDeadLetter,
    MessageDelivered,
    MessageRefused,
    MessageSent,
)
from orchestrator.judge.judges import AssertionResult, ErrorFact, Facts, Judge, make_judge
from orchestrator.rules import RunView
from orchestrator.scenario.assertions import Assertion

ASSERTION: TypeAdapter[Assertion] = TypeAdapter(Assertion)
MEMBERS = {"r": frozenset({"bot", "user", "other"}), "dm": frozenset({"bot", "user"})}


@pytest.fixture()
def log(tmp_path: Path) -> EventLog:
    return EventLog(tmp_path / "events.jsonl", capacity=1)


def judge(log: EventLog, spec: dict[str, Any]) -> Judge:
    return make_judge("a", ASSERTION.validate_python(spec), log, MEMBERS)


def result(j: Judge, **facts: Any) -> AssertionResult:
    view = RunView("test", lambda: iter(()))
    return asyncio.run(j.result(Facts(view=view, **facts)))


def say(log: EventLog, agent: str, text: str, room: str = "r", **kw: Any) -> MessageSent:
    kw.setdefault("origin", "agent")
    kw.setdefault("msg_id", f"{agent}:{log.last_id + 1}")
    return log.emit(MessageSent(agent=agent, room=room, text=text, **kw))


def deliver(log: EventLog, to: str, msg: MessageSent, latency_ms: float = 1.0) -> None:
    log.emit(
        MessageDelivered(
            agent=to, msg_id=msg.msg_id, sender=msg.agent or "", room=msg.room, attempts=1,
            latency_ms=latency_ms,
        )
    )  # fmt: skip


def test_message_counts_only_what_matches_every_filter(log: EventLog) -> None:
    j = judge(log, {"message": {"from": "bot", "contains": "pong", "count": {"exactly": 2}}})
    say(log, "bot", "pong")
    say(log, "bot", "ping")
    say(log, "user", "pong")
    say(log, "bot", "pong", origin="script")  # the script's words, not the bot's
    assert not result(j).passed
    say(log, "bot", "pong again")
    r = result(j)
    assert r.passed and r.actual == "2 found" and r.evidence == [1, 5]


def test_message_rules_on_every_match(log: EventLog) -> None:
    j = judge(
        log,
        {"message": {"from": "bot", "not_contains": "secret",
                     "json_schema": {"type": "object", "required": ["ok"]}}},
    )  # fmt: skip
    say(log, "bot", '{"ok": true}')
    say(log, "bot", '{"ok": "the secret"}')
    say(log, "bot", '{"nope": 1}')
    r = result(j)
    assert not r.passed and r.actual == "2 of 3 break the rule"
    assert "contains 'secret'" in r.message and r.evidence == [2, 3]


def test_message_order_and_window(log: EventLog) -> None:
    before = judge(log, {"message": {"from": "bot", "contains": "alpha",
                                     "before": {"from": "bot", "contains": "beta"}}})
    within = judge(log, {"message": {"from": "bot", "contains": "tardy", "within": {
        "window": "1h", "of": {"message": {"from": "user", "contains": "go"}}}}})  # fmt: skip
    say(log, "bot", "tardy")  # before any anchor: outside every window
    say(log, "bot", "beta")
    say(log, "bot", "alpha")
    say(log, "user", "go")
    say(log, "bot", "tardy")
    r = result(before)
    assert not r.passed and "did not come before" in r.message
    r = result(within)
    assert r.passed and "1 more outside the window" in r.actual


def test_message_to_counts_deliveries_only(log: EventLog) -> None:
    j = judge(log, {"message": {"from": "bot", "to": "user", "count": {"exactly": 1}}})
    m = say(log, "bot", "hi all")
    deliver(log, "other", m)
    assert not result(j).passed  # sent to a room user is in, but not received yet
    deliver(log, "user", m)
    log.emit(
        MessageRefused(agent="bot", msg_id="x", room="nowhere", text="hi", origin="agent",
                       reason="unknown room 'nowhere'")
    )  # fmt: skip
    assert result(j).passed


def _ended(
    log: EventLog, status: str, params: dict[str, Any], name: str = "PAY", agent: str = "bot"
) -> None:
    cls = ActionCompleted if status == "succeeded" else ActionFailed
    log.emit(
        cls(agent=agent, action=name, call_id="c", params=params, origin="script", msg_id="m",
            room="r", status=status)  # type: ignore[arg-type]
    )  # fmt: skip


def test_action_matches_status_and_validated_params_and_says_what_it_saw(log: EventLog) -> None:
    j = judge(log, {"action": {"agent": "bot", "name": "PAY", "params": {"amount": 20}}})
    _ended(log, "succeeded", {"amount": 20.5})
    _ended(log, "failed", {"amount": 20})
    _ended(log, "succeeded", {"amount": 20}, agent="user")  # another agent: not offered
    r = result(j, actions={"bot": ("PAY", "REPLY")})
    assert not r.passed
    assert "other runs: failed: 1, other parameters: 1" in r.actual
    assert '{"amount": 20.5}' in r.actual
    _ended(log, "succeeded", {"amount": 20, "memo": "x"})
    assert result(j, actions={"bot": ("PAY",)}).passed


def test_action_an_agent_never_announced_fails_with_its_list(log: EventLog) -> None:
    j = judge(log, {"action": {"agent": "bot", "name": "WITHDRAWL", "count": {"max": 0}}})
    r = result(j, actions={"bot": ("WITHDRAW", "REPLY")})
    assert not r.passed
    assert r.message == "bot has no action 'WITHDRAWL'; it announced: REPLY, WITHDRAW"
    assert result(j).passed  # the agent never reached READY: nothing to compare with


def test_delivery_finds_the_unacked_the_dead_the_refused_and_the_duplicated(
    log: EventLog,
) -> None:
    j = judge(log, {"delivery": {}})
    m = say(log, "bot", "hello")  # to user and other
    deliver(log, "user", m)
    deliver(log, "other", m)
    assert result(j).passed
    deliver(log, "other", m)
    n = say(log, "user", "only half", room="r")
    deliver(log, "bot", n)
    log.emit(MessageDeadLetter(agent="user", msg_id="gone", frame="MSG", recipient="other",
                               attempts=10, reason="not acknowledged"))  # fmt: skip
    log.emit(MessageRefused(agent="bot", msg_id="z", room="dm2", text="x", origin="agent",
                            reason="unknown room"))  # fmt: skip
    r = result(j)
    assert not r.passed
    assert r.actual == "2 sent, 1 unacknowledged, 2 dead letters, 1 duplicates"


def test_delivery_is_not_confirmed_for_an_agent_that_left_frames_or_no_goodbye(
    log: EventLog,
) -> None:
    # Messages still in an agent's outbox when it stopped never reached the bus, so no other
    # check sees them: its BYE says how many, and without a BYE nobody knows.
    j = judge(log, {"delivery": {}})
    scoped = judge(log, {"delivery": {"agent": "bot"}})
    log.emit(AgentBye(agent="bot", undelivered=0, messages_in=1, messages_out=1,
                      handler_errors=0, store_rows=1))  # fmt: skip
    log.emit(AgentExited(agent="bot", pid=1, returncode=0, signal=None, escalation=None))
    assert result(j).passed
    log.emit(AgentBye(agent="user", undelivered=3, messages_in=1, messages_out=1,
                      handler_errors=0, store_rows=1))  # fmt: skip
    log.emit(AgentExited(agent="other", pid=2, returncode=0, signal=None, escalation=None))
    r = result(j)
    assert not r.passed
    assert "stopped with frames not yet delivered: user (3)" in r.message
    assert "exited without a goodbye reaching the runner" in r.message and "other" in r.message
    assert result(scoped).passed  # the others' troubles are not bot's


def test_a_goodbye_counts_for_one_incarnation_of_an_agent(log: EventLog) -> None:
    # bot is restarted (its first incarnation says goodbye), then killed (the second does not):
    # the first goodbye must not vouch for the second.
    j = judge(log, {"delivery": {}})
    bye = {"undelivered": 0, "messages_in": 1, "messages_out": 1, "handler_errors": 0,
           "store_rows": 1}  # fmt: skip
    log.emit(AgentBye(agent="bot", **bye))
    log.emit(AgentExited(agent="bot", pid=1, returncode=0, signal=None, escalation=None))
    assert result(j).passed
    log.emit(AgentExited(agent="bot", pid=2, returncode=None, signal="SIGKILL", escalation=None))
    assert "exited without a goodbye" in result(j).message
    # An exit handled before its goodbye (the pidfd first) is not a missing goodbye.
    late = judge(log, {"delivery": {}})
    log.emit(AgentExited(agent="bot", pid=3, returncode=0, signal=None, escalation=None))
    log.emit(AgentBye(agent="bot", **bye))
    assert result(late).passed


def test_latency_of_deliveries_and_of_replies(log: EventLog) -> None:
    delivery = judge(log, {"timing": {"latency": "delivery", "agent": "user", "p50": "2ms"}})
    reply = judge(log, {"timing": {"latency": "reply", "agent": "bot", "max": "1h"}})
    assert result(delivery).actual == "no measurements"
    m = say(log, "user", "question")
    deliver(log, "bot", m, latency_ms=1.0)
    r = say(log, "bot", "answer", in_reply_to=m.msg_id)
    deliver(log, "user", r, latency_ms=3.0)
    d = result(delivery)
    assert not d.passed and "p50 3ms > 2ms" in d.message
    rr = result(reply)
    assert rr.passed and rr.actual.endswith("over 1")


def test_errors_counts_by_kind_and_agent() -> None:
    errors = [
        ErrorFact(ErrorKind.HANDLER, "bot", "agent bot: action X: boom"),
        ErrorFact(ErrorKind.MODEL, "bot", "agent bot: model: down"),
        ErrorFact(ErrorKind.HANDLER, "user", "agent user: evaluator: boom"),
    ]
    log = EventLog(Path("/dev/null"), capacity=1)
    allowed = judge(log, {"errors": {"kind": ["handler"], "agent": "bot", "max": 1}})
    none = judge(log, {"errors": {}})
    assert result(allowed, errors=errors).passed
    r = result(none, errors=errors)
    assert not r.passed and r.actual == "3 (handler: 2, model: 1)"


def test_judges_are_offered_only_the_kinds_and_agents_they_read(log: EventLog) -> None:
    judge(log, {"action": {"agent": "bot", "name": "PAY", "count": {"min": 0}}})
    judge(log, {"message": {"from": "bot", "contains": "x"}})
    # White-box: where the log filed the judges' listeners (kind, agent).
    filed = {(cls.KIND, agent) for cls, agent in log._index}
    assert filed == {
        ("action.completed", "bot"), ("action.failed", "bot"), ("message.sent", "bot")
    }  # fmt: skip


def test_every_assertion_type_has_a_judge() -> None:
    from orchestrator.judge.judges import JUDGES
    from orchestrator.scenario.assertions import ASSERTION_TYPES

    assert set(JUDGES) == set(ASSERTION_TYPES.values())
