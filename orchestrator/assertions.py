"""The assertion engine: each assertion is judged against what the run did.

At the end, assertions are judged over the whole event log (streamed from events.jsonl, so
memory stays bounded) in one pass, plus the facts that are not events: final states, step
durations, memory figures, collected errors, and custom rules. Inline (`assert` steps), the same
judges run over the events so far, with the live state. Every result carries what was expected,
what was found, a one-line message and the ids of the events that are its evidence; a judge
that could not decide (a custom rule that raised) sets `error`, which makes the run an ERROR,
never a pass.
"""

from __future__ import annotations

import fnmatch
import json
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from pydantic import JsonValue

from orchestrator.events import Event, EventKind
from orchestrator.jsonschema_lite import validate as validate_json
from orchestrator.matching import (
    MessageFilter,
    Predicate,
    action_predicate,
    action_status,
    event_predicate,
)
from orchestrator.metrics import LatencyHistogram
from orchestrator.rules import RuleError, RunView, call_rule
from orchestrator.scenario_assertions import (
    ActionAssertion,
    Anchor,
    Assertion,
    CustomAssertion,
    DeliveryAssertion,
    ErrorsAssertion,
    MemoryAssertion,
    MessageAssertion,
    StateAssertion,
    TimingAssertion,
    assertion_kind,
)
from orchestrator.schema import StateCheck, is_pattern
from orchestrator.statecheck import check_state, describe_state_check

EVIDENCE_LIMIT = 20
PENDING_LIMIT = 100_000
"""Messages tracked for reply latency and delivery at once; beyond it the oldest are dropped
(and said so), so a soak run's judging memory stays bounded."""


@dataclass(slots=True)
class AssertionResult:
    id: str
    type: str
    passed: bool
    expected: str
    actual: str
    message: str
    evidence: list[int] = field(default_factory=list)
    weight: float = 1.0
    required: bool = True
    error: str | None = None
    """Set when the assertion could not be judged (the run is then an ERROR)."""
    inline: bool = False
    """Judged by an `assert` step during the run rather than at the end."""


@dataclass(frozen=True, slots=True)
class ErrorFact:
    kind: str
    agent: str | None
    message: str


@dataclass(frozen=True, slots=True)
class MemoryFact:
    peak_rss: int | None
    uss_peak: int | None


@dataclass
class Facts:
    """What the judges may look at."""

    events: Callable[[], Iterator[Event]]
    members: Mapping[str, frozenset[str]]
    view: RunView
    final_states: Mapping[str, Mapping[str, JsonValue]] | None = None
    """At the end: each agent's state from BYE. Inline: None (state is read live)."""
    live_state: Callable[[StateCheck], Awaitable[tuple[bool, str]]] | None = None
    step_durations: Mapping[str, LatencyHistogram] = field(default_factory=dict)
    """By step id: the durations of the step's runs."""
    script_s: float | None = None
    memory: Mapping[str, MemoryFact] = field(default_factory=dict)
    errors: list[ErrorFact] = field(default_factory=list)


def _result(ident: str, a: Assertion, **fields: object) -> AssertionResult:
    return AssertionResult(
        id=ident,
        type=assertion_kind(a),
        weight=a.weight,
        required=a.required,
        **fields,  # type: ignore[arg-type]
    )


# --- event judges (one pass over the log) ----------------------------------------------------


class _AnchorWatch:
    """The time of the latest event matching an anchor."""

    def __init__(self, anchor: Anchor, members: Mapping[str, frozenset[str]]) -> None:
        self.predicate: Predicate
        if anchor.message is not None:
            self.predicate = MessageFilter.of(anchor.message, members)
        elif anchor.action is not None:
            self.predicate = action_predicate(anchor.action)
        else:
            assert anchor.event is not None
            self.predicate = event_predicate(anchor.event)
        self.last_t: float | None = None

    def observe(self, event: Event) -> None:
        if self.predicate(event):
            self.last_t = event.t


class _MessageJudge:
    def __init__(self, ident: str, assertion: MessageAssertion, facts: Facts) -> None:
        a = assertion.message
        self.id, self.assertion, self.args = ident, assertion, a
        self.filter = MessageFilter.of(a.match(), facts.members)
        self.before = MessageFilter.of(a.before, facts.members) if a.before else None
        self.after = MessageFilter.of(a.after, facts.members) if a.after else None
        self.within = _AnchorWatch(a.within.of, facts.members) if a.within else None
        self.first: int | None = None
        self.first_other: int | None = None
        self.matched: list[int] = []
        self.n = 0
        self.outside_window = 0
        self.violations: list[tuple[int, str]] = []

    def observe(self, event: Event) -> None:
        if self.within is not None:
            self.within.observe(event)
        other = self.before or self.after
        if other is not None and self.first_other is None and other(event):
            self.first_other = event.id
        if not self.filter(event):
            return
        if self.within is not None:
            assert self.args.within is not None
            start = self.within.last_t
            if start is None or event.t - start > self.args.within.window.seconds:
                self.outside_window += 1
                return
        self.n += 1
        if self.first is None:
            self.first = event.id
        if len(self.matched) < EVIDENCE_LIMIT:
            self.matched.append(event.id)
        text = event.data.get("text")
        assert isinstance(text, str)  # the filter checked it
        a = self.args
        if a.not_contains is not None and a.not_contains in text:
            self.violations.append((event.id, f"contains {a.not_contains!r}: {text[:80]!r}"))
        if a.json_schema is not None:
            problem = _json_problem(text, a.json_schema)
            if problem is not None:
                self.violations.append((event.id, problem))

    def result(self) -> AssertionResult:
        a = self.args
        what = self.filter.describe()
        if self.within is not None and a.within is not None:
            what += f" within {a.within.window} of its anchor"
        expected = f"{a.count.describe()} x {what}"
        if a.not_contains is not None:
            expected += f", none containing {a.not_contains!r}"
        if a.json_schema is not None:
            expected += ", each valid against json_schema"
        order = "before" if a.before is not None else "after" if a.after is not None else None
        if order is not None:
            other = self.before or self.after
            assert other is not None
            expected += f", the first {order} the first {other.describe()}"
        actual = f"{self.n} found"
        if self.outside_window:
            actual += f" ({self.outside_window} more outside the window)"
        if self.violations:
            first_id, problem = self.violations[0]
            return _result(
                self.id, self.assertion, passed=False, expected=expected,
                actual=f"{len(self.violations)} of {self.n} break the rule",
                message=f"{what}: {problem} (event {first_id})",
                evidence=[i for i, _ in self.violations][:EVIDENCE_LIMIT],
            )  # fmt: skip
        if not a.count.holds(self.n):
            return _result(
                self.id, self.assertion, passed=False, expected=expected, actual=actual,
                message=f"expected {a.count.describe()} x {what}, found {self.n}",
                evidence=list(self.matched),
            )  # fmt: skip
        if order is not None and self.first is not None:
            ok = self.first_other is not None and (
                self.first < self.first_other
                if order == "before"
                else self.first > self.first_other
            )
            if not ok:
                found = "never sent" if self.first_other is None else f"event {self.first_other}"
                return _result(
                    self.id, self.assertion, passed=False, expected=expected,
                    actual=f"first match at event {self.first}, other: {found}",
                    message=f"{what} did not come {order} the other message ({found})",
                    evidence=[i for i in (self.first, self.first_other) if i is not None],
                )  # fmt: skip
        return _result(
            self.id, self.assertion, passed=True, expected=expected, actual=actual,
            message=f"{self.n} x {what}", evidence=list(self.matched),
        )  # fmt: skip


def _json_problem(text: str, schema: dict[str, JsonValue]) -> str | None:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"not JSON ({exc.msg}): {text[:60]!r}"
    problems = validate_json(value, schema)
    return f"breaks json_schema: {problems[0]}" if problems else None


def params_include(params: object, wanted: Mapping[str, JsonValue]) -> bool:
    """Every key of `wanted` is in `params` with an equal value."""
    return isinstance(params, dict) and all(
        k in params and params[k] == v for k, v in wanted.items()
    )


class _ActionJudge:
    def __init__(self, ident: str, assertion: ActionAssertion, facts: Facts) -> None:
        self.id, self.assertion, self.args = ident, assertion, assertion.action
        self.matched: list[int] = []
        self.n = 0
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
            self.n += 1
            if len(self.matched) < EVIDENCE_LIMIT:
                self.matched.append(event.id)

    def result(self) -> AssertionResult:
        a = self.args
        what = f"{a.name} run by {a.agent}"
        if a.status is not None:
            what += f" that {a.status}"
        if a.params:
            what += f" with params including {json.dumps(a.params, sort_keys=True)}"
        others = ", ".join(f"{k}: {v}" for k, v in sorted(self.other.items()))
        actual = f"{self.n} found" + (f" (other runs: {others})" if others else "")
        ok = a.count.holds(self.n)
        expected = f"{a.count.describe()} x {what}"
        message = f"{self.n} x {what}" if ok else f"expected {expected}; {actual}"
        return _result(
            self.id, self.assertion, passed=ok, expected=expected, actual=actual,
            message=message, evidence=list(self.matched),
        )  # fmt: skip


class _LatencyJudge:
    """Delivery or reply latency percentiles, per agent and/or room."""

    def __init__(self, ident: str, assertion: TimingAssertion, facts: Facts) -> None:
        self.id, self.assertion, self.args = ident, assertion, assertion.timing
        self.hist = LatencyHistogram()
        self.rooms: OrderedDict[str, str] = OrderedDict()
        self.delivered: OrderedDict[tuple[str, str], float] = OrderedDict()
        self.dropped = 0

    def _remember(self, table: OrderedDict[object, object], key: object, value: object) -> None:
        table[key] = value
        if len(table) > PENDING_LIMIT:
            table.popitem(last=False)
            self.dropped += 1

    def observe(self, event: Event) -> None:
        t = self.args
        if event.kind is EventKind.MESSAGE_SENT:
            msg_id, room = event.data.get("msg_id"), event.data.get("room")
            if t.room is not None and isinstance(msg_id, str) and isinstance(room, str):
                self._remember(self.rooms, msg_id, room)  # type: ignore[arg-type]
            if t.latency == "reply":
                reply_to = event.data.get("in_reply_to")
                if not isinstance(reply_to, str) or event.agent is None:
                    return
                if t.agent is not None and event.agent != t.agent:
                    return
                if t.room is not None and room != t.room:
                    return
                start = self.delivered.pop((event.agent, reply_to), None)
                if start is not None:
                    self.hist.add(event.t - start)
        elif event.kind is EventKind.MESSAGE_DELIVERED and event.agent is not None:
            msg_id = event.data.get("msg_id")
            if not isinstance(msg_id, str):
                return
            if t.latency == "reply":
                self._remember(self.delivered, (event.agent, msg_id), event.t)  # type: ignore[arg-type]
                return
            if t.agent is not None and event.agent != t.agent:
                return
            if t.room is not None and self.rooms.get(msg_id) != t.room:
                return
            latency_ms = event.data.get("latency_ms")
            if isinstance(latency_ms, int | float):
                self.hist.add(latency_ms / 1000.0)

    def result(self) -> AssertionResult:
        t = self.args
        scope = " ".join(
            part
            for part in (
                f"of {t.agent}" if t.agent else "",
                f"in {t.room}" if t.room else "",
            )
            if part
        )
        what = f"{t.latency} latency" + (f" {scope}" if scope else "")
        return _limits_result(self.id, self.assertion, what, self.hist, self.dropped)


def _limits_result(
    ident: str, assertion: TimingAssertion, what: str, hist: LatencyHistogram, dropped: int = 0
) -> AssertionResult:
    limits = assertion.timing.limits()
    expected = f"{what}: " + ", ".join(f"{k} <= {v}" for k, v in limits.items())
    if hist.count == 0:
        return _result(
            ident, assertion, passed=False, expected=expected, actual="no measurements",
            message=f"{what}: nothing was measured, so nothing can be judged",
        )  # fmt: skip
    found: dict[str, float] = {}
    for key in limits:
        value = hist.max_s if key == "max" else hist.percentile(int(key[1:]) / 100.0)
        found[key] = value if value is not None else float("inf")
    bad = [k for k, limit in limits.items() if found[k] > limit.seconds]
    actual = ", ".join(f"{k} {_seconds(found[k])}" for k in limits) + f" over {hist.count}"
    if dropped:
        actual += f" ({dropped} too old to track)"
    message = (
        f"{what}: {actual}"
        if not bad
        else f"{what}: {', '.join(f'{k} {_seconds(found[k])} > {limits[k]}' for k in bad)}"
    )
    return _result(
        ident, assertion, passed=not bad, expected=expected, actual=actual, message=message
    )


def _seconds(value: float) -> str:
    """A measured time, to 3 significant-ish digits: 3.41ms, 812us, 2.05s."""
    if value >= 1.0:
        return f"{value:.3g}s"
    if value >= 1e-3:
        return f"{value * 1e3:.3g}ms"
    return f"{value * 1e6:.3g}us"


class _DeliveryJudge:
    def __init__(self, ident: str, assertion: DeliveryAssertion, facts: Facts) -> None:
        self.id, self.assertion, self.agent = ident, assertion, assertion.delivery.agent
        self.members = facts.members
        self.waiting: OrderedDict[str, set[str]] = OrderedDict()
        self.done: OrderedDict[str, None] = OrderedDict()
        self.sent = 0
        self.dead: list[int] = []
        self.duplicates: list[int] = []
        self.forgotten = 0

    def _mine(self, sender: str | None, recipient: str | None) -> bool:
        return self.agent is None or self.agent in (sender, recipient)

    def observe(self, event: Event) -> None:
        d = event.data
        msg_id = d.get("msg_id")
        if not isinstance(msg_id, str):
            return
        if event.kind is EventKind.MESSAGE_SENT:
            room = _str(d.get("room")) or ""
            recipients = set(self.members.get(room, frozenset())) - {event.agent or ""}
            recipients = {r for r in recipients if self._mine(event.agent, r)}
            if recipients:
                self.sent += 1
                self.waiting[msg_id] = recipients
                if len(self.waiting) > PENDING_LIMIT:
                    self.waiting.popitem(last=False)
                    self.forgotten += 1
        elif event.kind is EventKind.MESSAGE_DELIVERED:
            if not self._mine(_str(d.get("sender")), event.agent):
                return
            left = self.waiting.get(msg_id)
            if left is not None and event.agent in left:
                left.discard(event.agent or "")
                if not left:
                    del self.waiting[msg_id]
                    self.done[msg_id] = None
                    if len(self.done) > PENDING_LIMIT:
                        self.done.popitem(last=False)
            elif msg_id in self.done or left is not None:
                self.duplicates.append(event.id)
        elif event.kind is EventKind.MESSAGE_DEAD_LETTER and self._mine(
            event.agent, _str(d.get("recipient"))
        ):
            self.dead.append(event.id)

    def result(self) -> AssertionResult:
        scope = f" to or from {self.agent}" if self.agent else ""
        expected = (
            f"every message{scope} acknowledged by each recipient, no dead letter, no duplicate"
        )
        unacked = sum(len(v) for v in self.waiting.values())
        actual = (
            f"{self.sent} sent, {unacked} unacknowledged, {len(self.dead)} dead letters, "
            f"{len(self.duplicates)} duplicates"
        )
        if self.forgotten:
            actual += f" ({self.forgotten} too old to track)"
        problems = []
        if unacked:
            first = next(iter(self.waiting))
            problems.append(f"{unacked} deliveries never acknowledged (first: {first})")
        if self.dead:
            problems.append(f"{len(self.dead)} dead letters (first: event {self.dead[0]})")
        if self.duplicates:
            problems.append(
                f"{len(self.duplicates)} duplicate deliveries (first: event {self.duplicates[0]})"
            )
        return _result(
            self.id, self.assertion, passed=not problems, expected=expected, actual=actual,
            message="; ".join(problems) or f"{self.sent} messages{scope} all delivered once",
            evidence=(self.dead + self.duplicates)[:EVIDENCE_LIMIT],
        )  # fmt: skip


def _str(value: JsonValue) -> str | None:
    return value if isinstance(value, str) else None


_EventJudge = _MessageJudge | _ActionJudge | _LatencyJudge | _DeliveryJudge


# --- judges of facts ---------------------------------------------------------------------------


async def _state(ident: str, a: StateAssertion, facts: Facts) -> AssertionResult:
    check = a.state
    if facts.final_states is None:
        assert facts.live_state is not None
        expected = describe_state_check(check)
        ok, actual = await facts.live_state(check)
    else:
        expected = describe_state_check(check).replace("'s state", "'s final state", 1)
        state = facts.final_states.get(check.agent)
        if state is None:
            return _result(
                ident, a, passed=False, expected=expected, actual="no final state",
                message=f"{check.agent} sent no final state (it did not stop cleanly)",
            )  # fmt: skip
        ok, actual = check_state(check, state)
    message = f"{expected}: {'yes' if ok else 'no'}, found {actual}"
    return _result(ident, a, passed=ok, expected=expected, actual=actual, message=message)


def _timing_facts(ident: str, a: TimingAssertion, facts: Facts) -> AssertionResult:
    t = a.timing
    if t.step is not None:
        hist = facts.step_durations.get(t.step, LatencyHistogram())
        return _limits_result(ident, a, f"duration of step {t.step}", hist)
    hist = LatencyHistogram()
    if facts.script_s is not None:
        hist.add(facts.script_s)
    return _limits_result(ident, a, "the scenario's duration", hist)


def _memory(ident: str, a: MemoryAssertion, facts: Facts) -> AssertionResult:
    m = a.memory
    selector = m.agent or "*"
    agents = sorted(
        agent
        for agent in facts.memory
        if (fnmatch.fnmatchcase(agent, selector) if is_pattern(selector) else agent == selector)
    )
    limits = {k: v for k, v in (("peak_rss", m.peak_rss), ("uss", m.uss)) if v is not None}
    expected = f"{'every agent' if m.agent is None else m.agent}: " + ", ".join(
        f"{k} <= {v.human_readable(decimal=False)}" for k, v in limits.items()
    )
    over: list[str] = []
    unmeasured: list[str] = []
    worst: dict[str, tuple[int, str]] = {}
    for agent in agents:
        fact = facts.memory[agent]
        for key, limit in limits.items():
            value = fact.peak_rss if key == "peak_rss" else fact.uss_peak
            if value is None:
                unmeasured.append(f"{agent} {key}")
                continue
            if key not in worst or value > worst[key][0]:
                worst[key] = (value, agent)
            if value > limit:
                over.append(f"{agent} {key} {_mib(value)} > {_mib(limit)}")
    actual = ", ".join(f"max {k} {_mib(v)} ({who})" for k, (v, who) in worst.items()) or "nothing"
    if not agents:
        return _result(
            ident, a, passed=False, expected=expected, actual="no agent measured",
            message=f"no agent matching {selector!r} was measured",
        )  # fmt: skip
    problems = over + [f"{u} was not measured" for u in unmeasured]
    return _result(
        ident, a, passed=not problems, expected=expected, actual=actual,
        message="; ".join(problems[:5]) or f"{len(agents)} agent(s) within limits: {actual}",
    )  # fmt: skip


def _mib(n: int) -> str:
    return f"{n / 1048576:.1f} MiB"


def error_covered(a: ErrorsAssertion, fact: ErrorFact) -> bool:
    e = a.errors
    return (e.kind is None or fact.kind in e.kind) and (e.agent is None or fact.agent == e.agent)


def _errors(ident: str, a: ErrorsAssertion, facts: Facts) -> AssertionResult:
    e = a.errors
    matched = [f for f in facts.errors if error_covered(a, f)]
    scope = ("errors" if e.kind is None else f"errors of kind {', '.join(e.kind)}") + (
        f" from {e.agent}" if e.agent else ""
    )
    expected = f"at most {e.max} {scope}" if e.max else f"no {scope}"
    actual = f"{len(matched)}" + (
        " (" + ", ".join(f"{k}: {n}" for k, n in Counter(f.kind for f in matched).items()) + ")"
        if matched
        else ""
    )
    ok = len(matched) <= e.max
    message = f"{len(matched)} {scope}" if ok else f"{len(matched)} {scope}: {matched[0].message}"
    return _result(ident, a, passed=ok, expected=expected, actual=actual, message=message[:300])


async def _custom(ident: str, a: CustomAssertion, facts: Facts) -> AssertionResult:
    c = a.custom
    expected = f"rule {c.rule} passes"
    try:
        outcome = await call_rule(c.rule, facts.view, c.params, c.timeout.seconds)
    except RuleError as exc:
        return _result(
            ident, a, passed=False, expected=expected, actual="no result", message=str(exc),
            error=str(exc),
        )  # fmt: skip
    return _result(
        ident, a, passed=outcome.passed, expected=outcome.expected or expected,
        actual=outcome.actual or ("passed" if outcome.passed else "failed"),
        message=outcome.message.splitlines()[0][:300] if outcome.message else "",
        evidence=list(outcome.evidence)[:EVIDENCE_LIMIT],
    )  # fmt: skip


# --- judging ----------------------------------------------------------------------------------


def assertion_id(index: int, assertion: Assertion) -> str:
    return assertion.id if assertion.id is not None else f"assertions[{index}]"


def _event_judge(ident: str, a: Assertion, facts: Facts) -> _EventJudge | None:
    if isinstance(a, MessageAssertion):
        return _MessageJudge(ident, a, facts)
    if isinstance(a, ActionAssertion):
        return _ActionJudge(ident, a, facts)
    if isinstance(a, TimingAssertion) and a.timing.latency is not None:
        return _LatencyJudge(ident, a, facts)
    if isinstance(a, DeliveryAssertion):
        return _DeliveryJudge(ident, a, facts)
    return None


class JudgeMemo:
    """Event judges kept between runs of the same inline `assert` step (one in a `repeat`).

    A judge keeps what it has seen, so judging again reads only the events since its last
    run: each run of the step costs the new events, not the whole log, and a soak with an
    `assert` in its loop stays linear. `since(id)` yields the events after `id`."""

    def __init__(self, since: Callable[[int], Iterator[Event]]) -> None:
        self.since = since
        self._judges: dict[str, tuple[_EventJudge, int]] = {}

    def catch_up(self, ident: str, a: Assertion, facts: Facts) -> _EventJudge | None:
        kept = self._judges.get(ident)
        judge_ = kept[0] if kept else _event_judge(ident, a, facts)
        if judge_ is None:
            return None
        last = kept[1] if kept else 0
        for event in self.since(last):
            judge_.observe(event)
            last = event.id
        self._judges[ident] = (judge_, last)
        return judge_


async def judge(
    items: Iterable[tuple[str, Assertion]], facts: Facts, memo: JudgeMemo | None = None
) -> list[AssertionResult]:
    """Judge each (id, assertion): the event-based ones in one pass over `facts.events()`, or,
    with a `memo`, over the events their kept judges have not seen yet."""
    pairs = list(items)
    judges: dict[int, _EventJudge] = {}
    fresh: list[_EventJudge] = []
    for i, (ident, a) in enumerate(pairs):
        found = memo.catch_up(ident, a, facts) if memo else _event_judge(ident, a, facts)
        if found is not None:
            judges[i] = found
            if memo is None:
                fresh.append(found)
    if fresh:
        observers = [j.observe for j in fresh]
        for event in facts.events():
            for observe in observers:
                observe(event)
    results: list[AssertionResult] = []
    for i, (ident, a) in enumerate(pairs):
        if i in judges:
            results.append(judges[i].result())
        elif isinstance(a, StateAssertion):
            results.append(await _state(ident, a, facts))
        elif isinstance(a, TimingAssertion):
            results.append(_timing_facts(ident, a, facts))
        elif isinstance(a, MemoryAssertion):
            results.append(_memory(ident, a, facts))
        elif isinstance(a, ErrorsAssertion):
            results.append(_errors(ident, a, facts))
        elif isinstance(a, CustomAssertion):
            results.append(await _custom(ident, a, facts))
        else:  # pragma: no cover - every assertion type is handled above
            raise AssertionError(f"no judge for {a!r}")
    return results
