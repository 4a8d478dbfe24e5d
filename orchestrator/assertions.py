"""The assertion engine: each assertion is judged against the run's event log.

Assertions are evaluated after teardown, over the whole log (streamed from events.jsonl, so
memory stays bounded). Every result carries what was expected, what was found, a one-line
message and the ids of the events that are its evidence. There is no way for an assertion to
pass without looking: a `message` assertion counts real `message.sent` events.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pydantic import JsonValue

from orchestrator.events import Event, EventKind
from orchestrator.matching import MessageFilter
from orchestrator.scenario import (
    ActionAssertion,
    Assertion,
    CountRange,
    MessageAssertion,
    StateAssertion,
    StateCheck,
)
from protocol.statepath import StatePathError, get_path

EVIDENCE_LIMIT = 20


@dataclass(slots=True)
class AssertionResult:
    id: str
    type: str
    passed: bool
    expected: str
    actual: str
    message: str
    evidence: list[int] = field(default_factory=list)


class _MessageJudge:
    def __init__(self, ident: str, assertion: MessageAssertion) -> None:
        a = assertion.message
        self.id = ident
        self.args = a
        self.filter = MessageFilter.build(a.from_, a.room, a.contains, a.regex)
        self.matched: list[int] = []
        self.violations: list[tuple[int, str]] = []

    def observe(self, event: Event) -> None:
        if not self.filter(event):
            return
        self.matched.append(event.id)
        forbidden = self.args.not_contains
        text = event.data.get("text")
        if forbidden is not None and isinstance(text, str) and forbidden in text:
            self.violations.append((event.id, text))

    def result(self) -> AssertionResult:
        count = self.args.count
        n = len(self.matched)
        what = self.filter.describe()
        bounds = []
        if count.min is not None:
            bounds.append(f">= {count.min}")
        if count.max is not None:
            bounds.append(f"<= {count.max}")
        expected = f"{' and '.join(bounds) or 'any number of'} x {what}"
        if self.args.not_contains is not None:
            expected += f", none containing {self.args.not_contains!r}"
        ok_count = (count.min is None or n >= count.min) and (count.max is None or n <= count.max)
        if self.violations:
            first_id, text = self.violations[0]
            return AssertionResult(
                self.id,
                "message",
                False,
                expected,
                f"{len(self.violations)} of {n} contain {self.args.not_contains!r}",
                f"{what} contains forbidden {self.args.not_contains!r}: {text[:120]!r}"
                f" (event {first_id})",
                [i for i, _ in self.violations][:EVIDENCE_LIMIT],
            )
        actual = f"{n} found"
        if ok_count:
            message = f"{n} x {what}"
        else:
            message = f"expected {' and '.join(bounds)} x {what}, found {n}"
        return AssertionResult(
            self.id, "message", ok_count, expected, actual, message, self.matched[:EVIDENCE_LIMIT]
        )


def _bounds(count: CountRange) -> str:
    parts = []
    if count.min is not None:
        parts.append(f">= {count.min}")
    if count.max is not None:
        parts.append(f"<= {count.max}")
    return " and ".join(parts) or "any number of"


def _in_range(n: int, count: CountRange) -> bool:
    return (count.min is None or n >= count.min) and (count.max is None or n <= count.max)


def params_include(params: object, wanted: dict[str, JsonValue]) -> bool:
    """Every key of `wanted` is in `params` with an equal value."""
    return isinstance(params, dict) and all(
        k in params and params[k] == v for k, v in wanted.items()
    )


def action_status(event: Event) -> str | None:
    """The status of an action run from its completion event; None for other events."""
    if event.kind is EventKind.ACTION_COMPLETED:
        return "succeeded"
    if event.kind is EventKind.ACTION_FAILED:
        status = event.data.get("status")
        return status if isinstance(status, str) else "failed"
    return None


class _ActionJudge:
    def __init__(self, ident: str, assertion: ActionAssertion) -> None:
        self.id = ident
        self.args = assertion.action
        self.matched: list[int] = []
        self.other: Counter[str] = Counter()

    def observe(self, event: Event) -> None:
        a = self.args
        status = action_status(event)
        if status is None or event.agent != a.agent or event.data.get("action") != a.name:
            return
        if not params_include(event.data.get("params"), a.params):
            self.other["other parameters"] += 1
        elif a.status is not None and status != a.status:
            self.other[status] += 1
        else:
            self.matched.append(event.id)

    def result(self) -> AssertionResult:
        a = self.args
        what = f"{a.name} run by {a.agent}"
        if a.status is not None:
            what += f" that {a.status}"
        if a.params:
            what += f" with params including {json.dumps(a.params, sort_keys=True)}"
        n = len(self.matched)
        others = ", ".join(f"{k}: {v}" for k, v in sorted(self.other.items()))
        actual = f"{n} found" + (f" (other runs: {others})" if others else "")
        ok = _in_range(n, a.count)
        expected = f"{_bounds(a.count)} x {what}"
        message = f"{n} x {what}" if ok else f"expected {expected}, found {actual}"
        return AssertionResult(
            self.id, "action", ok, expected, actual, message, self.matched[:EVIDENCE_LIMIT]
        )


_COMPARE = {"lt": "<", "le": "<=", "gt": ">", "ge": ">="}


def describe_state_check(check: StateCheck) -> str:
    """`check` in words, e.g. "bob's state at 'todos.open' == 2" (without "final")."""
    where = f"{check.agent}'s state at {check.path!r}"
    if check.exists:
        return f"{where} exists"
    if check.absent:
        return f"{where} is absent"
    if "equals" in check.model_fields_set:
        return f"{where} == {_json(check.equals)}"
    if "not_equals" in check.model_fields_set:
        return f"{where} != {_json(check.not_equals)}"
    limits = {k: getattr(check, k) for k in _COMPARE}
    bounds = [f"{_COMPARE[k]} {_number(v)}" for k, v in limits.items() if v is not None]
    return f"{where} {' and '.join(bounds)}"


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() else str(value)


def _json(value: JsonValue) -> str:
    return json.dumps(value, sort_keys=True)[:200]


def check_state(check: StateCheck, state: Mapping[str, JsonValue]) -> tuple[bool, str]:
    """Whether `state` meets `check`, and what was found at its path ("absent" or the JSON)."""
    try:
        node, found = get_path(dict(state), check.path), True
    except (KeyError, StatePathError):
        node, found = None, False
    return check_value(check, found, node)


def check_value(check: StateCheck, found: bool, node: JsonValue) -> tuple[bool, str]:
    """Whether the value at `check.path` (`node`, when `found`) meets `check`, and the value
    as the report shows it."""
    actual = _json(node) if found else "absent"
    if check.exists:
        return found, actual
    if check.absent:
        return not found, actual
    if "equals" in check.model_fields_set:
        return found and node == check.equals, actual
    if "not_equals" in check.model_fields_set:
        return found and node != check.not_equals, actual
    if not found:
        return False, actual
    if isinstance(node, bool) or not isinstance(node, int | float):
        return False, f"{actual} (not a number)"
    ok = (
        (check.lt is None or node < check.lt)
        and (check.le is None or node <= check.le)
        and (check.gt is None or node > check.gt)
        and (check.ge is None or node >= check.ge)
    )
    return ok, actual


def _state_result(
    ident: str, assertion: StateAssertion, final_states: Mapping[str, dict[str, JsonValue]]
) -> AssertionResult:
    a = assertion.state
    expected = describe_state_check(a).replace("'s state", "'s final state", 1)
    state = final_states.get(a.agent)
    if state is None:
        return AssertionResult(
            ident, "state", False, expected, "no final state",
            f"{a.agent} sent no final state (it did not stop cleanly)",
        )  # fmt: skip
    ok, actual = check_state(a, state)
    message = f"{expected}: {'yes' if ok else 'no'}, found {actual}"
    return AssertionResult(ident, "state", ok, expected, actual, message)


def assertion_id(index: int, assertion: Assertion) -> str:
    return assertion.id if assertion.id is not None else f"assertions[{index}]"


def evaluate(
    assertions: list[Assertion],
    events: Iterable[Event],
    final_states: Mapping[str, dict[str, JsonValue]] | None = None,
) -> list[AssertionResult]:
    """Judge every assertion: event-based ones in one pass over the events, state ones on the
    agents' final states (sent with BYE)."""
    judges: dict[int, _MessageJudge | _ActionJudge] = {}
    for i, a in enumerate(assertions):
        if isinstance(a, MessageAssertion):
            judges[i] = _MessageJudge(assertion_id(i, a), a)
        elif isinstance(a, ActionAssertion):
            judges[i] = _ActionJudge(assertion_id(i, a), a)
    for event in events:
        for judge in judges.values():
            judge.observe(event)
    results = []
    for i, a in enumerate(assertions):
        if isinstance(a, StateAssertion):
            results.append(_state_result(assertion_id(i, a), a, final_states or {}))
        else:
            results.append(judges[i].result())
    return results
