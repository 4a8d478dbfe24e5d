"""The assertion engine: each assertion is judged against the run's event log.

Assertions are evaluated after teardown, over the whole log (streamed from events.jsonl, so
memory stays bounded). Every result carries what was expected, what was found, a one-line
message and the ids of the events that are its evidence. There is no way for an assertion to
pass without looking: a `message` assertion counts real `message.sent` events.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from orchestrator.events import Event
from orchestrator.matching import MessageFilter
from orchestrator.scenario import Assertion, MessageAssertion

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


def assertion_id(index: int, assertion: Assertion) -> str:
    return assertion.id if assertion.id is not None else f"assertions[{index}]"


def evaluate(assertions: list[Assertion], events: Iterable[Event]) -> list[AssertionResult]:
    """Judge every assertion in one pass over the events."""
    judges = [_MessageJudge(assertion_id(i, a), a) for i, a in enumerate(assertions)]
    for event in events:
        for judge in judges:
            judge.observe(event)
    return [judge.result() for judge in judges]
