"""The assertion engine: each assertion is judged against what the run did, as it happens.

Every assertion gets a judge when the run starts. A judge of events subscribes to the kinds of
event it reads and folds each one as it is emitted, so judging at the end (or at an inline
`assert` step, which reads the same judge's current state) costs nothing more and never replays
the log. Judges of facts that are not events (final states, step durations, memory figures,
collected errors, custom rules) read them when asked. Every result carries what was expected,
what was found, a one-line message and the ids of the events that are its evidence; a judge
that could not decide (a custom rule that raised) sets `error`, which makes the run an ERROR,
never a pass.

To add an assertion type: its model in `orchestrator/scenario/assertions.py` (and the
`Assertion` union there), its judge here, registered in `JUDGES`.
"""

from __future__ import annotations

import fnmatch
import json
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from pydantic import JsonValue

from orchestrator.events import (
    ActionCompleted,
    ActionEnded,
    ActionFailed,
    AgentBye,
    AgentExited,
    ErrorKind,
    Event,
    EventLog,
    IndexKey,
    Matcher,
    MessageDeadLetter,
    MessageDelivered,
    MessageRefused,
    MessageSent,
    once,
    subscribe_keys,
)
from orchestrator.judge.matching import (
    PENDING_LIMIT,
    ActionMatcher,
    EventMatcher,
    MessageFilter,
)
from orchestrator.judge.statecheck import check_state, describe_state_check
from orchestrator.leak import LeakAnalysis, LeakVerdict
from orchestrator.metrics import LatencyHistogram
from orchestrator.rules import RuleError, RunView, call_rule
from orchestrator.scenario.assertions import (
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
from orchestrator.scenario.jsonschema_lite import validate as validate_json
from orchestrator.scenario.schema import SpecModel, StateCheck, is_pattern, quote

EVIDENCE_LIMIT = 20
PROCESS_SERIES = frozenset({"uss", "rss", "fds", "threads"})
"""What a `leak` limit judges: the process, not its store on disk (reported beside it)."""
Members = Mapping[str, frozenset[str]]
"""Room id -> its agents."""



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
    kind: ErrorKind
    agent: str | None
    message: str


@dataclass(frozen=True, slots=True)
class MemoryFact:
    peak_rss: int | None
    uss_peak: int | None
    leaks: tuple[LeakAnalysis, ...] | None = None
    """The leak verdict of each series, when the run computed them (soak runs, or a `leak`
    limit anywhere in the scenario)."""
    top_site: str | None = None
    """With --trace-leaks: the allocation site that grew most after the warm-up."""


@dataclass
class Facts:
    """What the judges may look at besides the events they folded."""

    view: RunView
    final_states: Mapping[str, Mapping[str, JsonValue]] | None = None
    """At the end: each agent's state from BYE. Inline: None (state is read live)."""
    live_state: Callable[[StateCheck], Awaitable[tuple[bool, str]]] | None = None
    step_durations: Mapping[str, LatencyHistogram] = field(default_factory=dict)
    """By step id: the durations of the step's runs."""
    script_s: float | None = None
    memory: Mapping[str, MemoryFact] = field(default_factory=dict)
    errors: list[ErrorFact] = field(default_factory=list)
    actions: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Per agent that reached READY, the actions it announced."""


def _result(ident: str, a: Assertion, **fields: object) -> AssertionResult:
    return AssertionResult(
        id=ident,
        type=assertion_kind(a),
        weight=a.weight,
        required=a.required,
        **fields,  # type: ignore[arg-type]
    )


class Judge:
    """Judges one assertion. Event judges subscribe in their constructor; `result` says how
    the assertion stands now (inline) or finally (at the end)."""

    def __init__(self, ident: str, assertion: Assertion) -> None:
        self.id = ident
        self.assertion = assertion

    async def result(self, facts: Facts) -> AssertionResult:
        raise NotImplementedError

    def _listen(self, log: EventLog, keys: list[IndexKey]) -> None:
        subscribe_keys(log, keys, once(self.observe))

    def observe(self, event: Event) -> None:
        raise NotImplementedError


def _keys(*matchers: Matcher | None) -> list[IndexKey]:
    return [key for m in matchers if m is not None for key in m.index_keys()]


# --- event judges (folded as the run goes) ----------------------------------------------------


def _anchor_matcher(anchor: Anchor) -> Matcher:
    if anchor.message is not None:
        return MessageFilter.of(anchor.message)
    if anchor.action is not None:
        return ActionMatcher(anchor.action)
    assert anchor.event is not None
    return EventMatcher(anchor.event)


class _MessageJudge(Judge):
    def __init__(
        self, ident: str, assertion: MessageAssertion, log: EventLog, members: Members
    ) -> None:
        super().__init__(ident, assertion)
        a = assertion.message
        self.args = a
        self.filter = MessageFilter.of(a.match(), members)
        self.before = MessageFilter.of(a.before, members) if a.before else None
        self.after = MessageFilter.of(a.after, members) if a.after else None
        self.anchor = _anchor_matcher(a.within.of) if a.within else None
        self.anchor_t: float | None = None
        self.first: int | None = None
        self.first_other: int | None = None
        self.matched: list[int] = []
        self.n = 0
        self.outside_window = 0
        self.violations: list[tuple[int, str]] = []
        self.violation_count = 0
        self._listen(log, _keys(self.anchor, self.before or self.after, self.filter))

    def observe(self, event: Event) -> None:
        if self.anchor is not None and self.anchor(event):
            self.anchor_t = event.t
        other = self.before or self.after
        if other is not None and self.first_other is None and other(event):
            self.first_other = event.id
        if not self.filter(event):
            return
        if self.args.within is not None:
            start = self.anchor_t
            if start is None or event.t - start > self.args.within.window.seconds:
                self.outside_window += 1
                return
        self.n += 1
        if self.first is None:
            self.first = event.id
        if len(self.matched) < EVIDENCE_LIMIT:
            self.matched.append(event.id)
        a = self.args
        if not isinstance(event, MessageSent):
            return  # a delivery (`to`): its text was checked when it was sent
        problem: str | None = None
        if a.not_contains is not None and a.not_contains in event.text:
            problem = f"contains {quote(a.not_contains, 80)}: {quote(event.text, 80)}"
        elif a.json_schema is not None:
            problem = _json_problem(event.text, a.json_schema)
        if problem is not None:
            self.violation_count += 1
            if len(self.violations) < EVIDENCE_LIMIT:
                self.violations.append((event.id, problem))

    async def result(self, facts: Facts) -> AssertionResult:
        a = self.args
        what = self.filter.describe()
        if a.within is not None:
            what += f" within {a.within.window} of its anchor"
        expected = f"{a.count.describe()} x {what}"
        if a.not_contains is not None:
            expected += f", none containing {quote(a.not_contains, 80)}"
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
        if self.filter.forgotten:
            actual += f" ({self.filter.forgotten} sent too long before delivery to track)"
        if self.violations:
            first_id, problem = self.violations[0]
            return _result(
                self.id, self.assertion, passed=False, expected=expected,
                actual=f"{self.violation_count} of {self.n} break the rule",
                message=f"{what}: {problem} (event {first_id})",
                evidence=[i for i, _ in self.violations],
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
        return f"not JSON ({exc.msg}): {quote(text)}"
    except (RecursionError, ValueError) as exc:  # nested too deep; a number too long
        return f"not JSON the judge can read ({type(exc).__name__}): {quote(text)}"
    try:
        problems = validate_json(value, schema)
    except RecursionError:
        return f"nested too deep to check against json_schema: {quote(text)}"
    return f"breaks json_schema: {problems[0]}" if problems else None


def params_include(params: Mapping[str, object], wanted: Mapping[str, JsonValue]) -> bool:
    """Every key of `wanted` is in `params` with an equal value."""
    return all(k in params and params[k] == v for k, v in wanted.items())


SEEN_PARAMS_LIMIT = 3
"""Distinct parameter sets of non-matching runs quoted in a failure."""


class _ActionJudge(Judge):
    def __init__(self, ident: str, assertion: ActionAssertion, log: EventLog) -> None:
        super().__init__(ident, assertion)
        self.args = assertion.action
        self.matched: list[int] = []
        self.n = 0
        self.other: Counter[str] = Counter()
        self.seen_params: list[str] = []
        agent = self.args.agent
        self._listen(log, [(ActionCompleted, agent), (ActionFailed, agent)])

    def observe(self, event: Event) -> None:
        a = self.args
        if not isinstance(event, ActionEnded) or event.action != a.name:
            return
        if not params_include(event.params, a.params):
            self.other["other parameters"] += 1
            text = json.dumps(event.params, sort_keys=True)[:120]
            if len(self.seen_params) < SEEN_PARAMS_LIMIT and text not in self.seen_params:
                self.seen_params.append(text)
        elif a.status is not None and event.status != a.status:
            self.other[event.status] += 1
        else:
            self.n += 1
            if len(self.matched) < EVIDENCE_LIMIT:
                self.matched.append(event.id)

    async def result(self, facts: Facts) -> AssertionResult:
        a = self.args
        what = f"{a.name} run by {a.agent}"
        if a.status is not None:
            what += f" that {a.status}"
        if a.params:
            what += f" with params including {json.dumps(a.params, sort_keys=True)}"
        expected = f"{a.count.describe()} x {what}"
        announced = facts.actions.get(a.agent)
        if announced is not None and a.name not in announced:
            return _result(
                self.id, self.assertion, passed=False, expected=expected,
                actual=f"{a.agent} has no action {a.name}",
                message=f"{a.agent} has no action {a.name!r}; it announced: "
                + (", ".join(sorted(announced)) or "none"),
            )  # fmt: skip
        others = ", ".join(f"{k}: {v}" for k, v in sorted(self.other.items()))
        actual = f"{self.n} found" + (f" (other runs: {others})" if others else "")
        if self.seen_params:
            actual += f"; parameters seen: {'; '.join(self.seen_params)}"
        ok = a.count.holds(self.n)
        message = f"{self.n} x {what}" if ok else f"expected {expected}; {actual}"
        return _result(
            self.id, self.assertion, passed=ok, expected=expected, actual=actual,
            message=message, evidence=list(self.matched),
        )  # fmt: skip


class _LatencyJudge(Judge):
    """Delivery or reply latency percentiles, per agent and/or room."""

    def __init__(self, ident: str, assertion: TimingAssertion, log: EventLog) -> None:
        super().__init__(ident, assertion)
        t = self.args = assertion.timing
        self.hist = LatencyHistogram()
        self.delivered: OrderedDict[tuple[str, str], float] = OrderedDict()
        self.dropped = 0
        keys: list[IndexKey] = [(MessageDelivered, t.agent)]
        if t.latency == "reply":
            keys.append((MessageSent, t.agent))
        self._listen(log, keys)

    def observe(self, event: Event) -> None:
        t = self.args
        if isinstance(event, MessageDelivered):
            if t.room is not None and event.room != t.room:
                return
            if t.latency == "reply":
                assert event.agent is not None
                self.delivered[(event.agent, event.msg_id)] = event.t
                if len(self.delivered) > PENDING_LIMIT:
                    self.delivered.popitem(last=False)
                    self.dropped += 1
            else:
                self.hist.add(event.latency_ms / 1000.0)
        elif isinstance(event, MessageSent) and event.in_reply_to is not None:
            if t.room is not None and event.room != t.room:
                return
            start = self.delivered.pop((event.agent or "", event.in_reply_to), None)
            if start is not None:
                self.hist.add(event.t - start)

    async def result(self, facts: Facts) -> AssertionResult:
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
        assert isinstance(self.assertion, TimingAssertion)
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


class _DeliveryJudge(Judge):
    def __init__(
        self,
        ident: str,
        assertion: DeliveryAssertion,
        log: EventLog,
        members: Mapping[str, frozenset[str]],
    ) -> None:
        super().__init__(ident, assertion)
        self.agent = assertion.delivery.agent
        self.members = members
        self.waiting: OrderedDict[str, set[str]] = OrderedDict()
        self.done: OrderedDict[str, None] = OrderedDict()
        self.sent = 0
        self.dead: list[int] = []
        self.dead_count = 0
        self.duplicates: list[int] = []
        self.duplicate_count = 0
        self.forgotten = 0
        self.said_bye: set[str] = set()
        self.undelivered: dict[str, int] = {}
        """Agents that stopped with frames they could not deliver (their BYE says how many)."""
        self.no_bye: list[str] = []
        """Agents that exited without a BYE reaching the coordinator: what they had not yet
        delivered is unknown, so delivery cannot be confirmed."""
        kinds = (
            MessageSent, MessageDelivered, MessageDeadLetter, MessageRefused, AgentBye, AgentExited
        )  # fmt: skip
        self._listen(log, [(k, None) for k in kinds])

    def _mine(self, sender: str | None, recipient: str | None) -> bool:
        return self.agent is None or self.agent in (sender, recipient)

    def observe(self, event: Event) -> None:
        if isinstance(event, MessageSent):
            recipients = set(self.members.get(event.room, frozenset())) - {event.agent or ""}
            recipients = {r for r in recipients if self._mine(event.agent, r)}
            if recipients:
                self.sent += 1
                self.waiting[event.msg_id] = recipients
                if len(self.waiting) > PENDING_LIMIT:
                    self.waiting.popitem(last=False)
                    self.forgotten += 1
        elif isinstance(event, MessageDelivered):
            if not self._mine(event.sender, event.agent):
                return
            msg_id = event.msg_id
            left = self.waiting.get(msg_id)
            if left is not None and event.agent in left:
                left.discard(event.agent or "")
                if not left:
                    del self.waiting[msg_id]
                    self.done[msg_id] = None
                    if len(self.done) > PENDING_LIMIT:
                        self.done.popitem(last=False)
            elif msg_id in self.done or left is not None:
                self.duplicate_count += 1
                if len(self.duplicates) < EVIDENCE_LIMIT:
                    self.duplicates.append(event.id)
        elif isinstance(event, AgentBye):
            agent = event.agent or ""
            if agent in self.no_bye:  # its exit was seen before its goodbye was handled
                self.no_bye.remove(agent)
            else:
                self.said_bye.add(agent)
            if event.undelivered and self._mine(event.agent, None):
                self.undelivered[agent] = event.undelivered
        elif isinstance(event, AgentExited):
            # A goodbye counts for the one exit after it: an agent restarted under its id says
            # goodbye (or not) once per incarnation.
            agent = event.agent or ""
            if agent in self.said_bye:
                self.said_bye.discard(agent)
            elif self._mine(event.agent, None):
                self.no_bye.append(agent)
        elif (
            isinstance(event, MessageDeadLetter)
            and event.msg_id is not None
            and self._mine(event.agent, event.recipient)
        ) or (isinstance(event, MessageRefused) and self._mine(event.agent, None)):
            self.dead_count += 1
            if len(self.dead) < EVIDENCE_LIMIT:
                self.dead.append(event.id)

    async def result(self, facts: Facts) -> AssertionResult:
        scope = f" to or from {self.agent}" if self.agent else ""
        expected = (
            f"every message{scope} acknowledged by each recipient, no dead letter, no duplicate"
        )
        unacked = sum(len(v) for v in self.waiting.values())
        actual = (
            f"{self.sent} sent, {unacked} unacknowledged, {self.dead_count} dead letters, "
            f"{self.duplicate_count} duplicates"
        )
        if self.forgotten:
            actual += f" ({self.forgotten} too old to track)"
        problems = []
        if unacked:
            first = next(iter(self.waiting))
            problems.append(f"{unacked} deliveries never acknowledged (first: {first})")
        if self.dead:
            problems.append(
                f"{self.dead_count} dead letters or refused (first: event {self.dead[0]})"
            )
        if self.duplicates:
            problems.append(
                f"{self.duplicate_count} duplicate deliveries (first: event {self.duplicates[0]})"
            )
        if self.undelivered:
            who = ", ".join(f"{a} ({n})" for a, n in sorted(self.undelivered.items())[:5])
            problems.append(f"stopped with frames not yet delivered: {who}")
        if self.no_bye:
            problems.append(
                f"exited without a goodbye reaching the runner, so what they had not delivered"
                f" is unknown: {', '.join(sorted(self.no_bye)[:5])}"
                + (f" and {len(self.no_bye) - 5} more" if len(self.no_bye) > 5 else "")
            )
        return _result(
            self.id, self.assertion, passed=not problems, expected=expected, actual=actual,
            message="; ".join(problems) or f"{self.sent} messages{scope} all delivered once",
            evidence=(self.dead + self.duplicates)[:EVIDENCE_LIMIT],
        )  # fmt: skip


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


async def _timing_facts(ident: str, a: TimingAssertion, facts: Facts) -> AssertionResult:
    t = a.timing
    if t.step is not None:
        hist = facts.step_durations.get(t.step, LatencyHistogram())
        return _limits_result(ident, a, f"duration of step {t.step}", hist)
    hist = LatencyHistogram()
    if facts.script_s is not None:
        hist.add(facts.script_s)
    return _limits_result(ident, a, "the scenario's duration", hist)


async def _memory(ident: str, a: MemoryAssertion, facts: Facts) -> AssertionResult:
    m = a.memory
    selector = m.agent or "*"
    agents = sorted(
        agent
        for agent in facts.memory
        if (fnmatch.fnmatchcase(agent, selector) if is_pattern(selector) else agent == selector)
    )
    limits = {k: v for k, v in (("peak_rss", m.peak_rss), ("uss", m.uss)) if v is not None}
    expected = f"{'every agent' if m.agent is None else m.agent}: " + ", ".join(
        [f"{k} <= {v.human_readable(decimal=False)}" for k, v in limits.items()]
        + (["no leak in any series"] if m.leak == "none" else [])
        + (["a leak in some series"] if m.leak == "detected" else [])
        + ([f"USS and RSS growth under {m.growth.max / 2**20:g} MiB/h"] if m.growth else [])
    )
    over: list[str] = []
    unmeasured: list[str] = []
    worst: dict[str, tuple[int, str]] = {}
    verdicts: Counter[str] = Counter()
    fastest: tuple[float, str] | None = None
    """The largest 95% upper bound of USS/RSS growth seen (for a `growth` limit's actual)."""
    for agent in agents:
        fact = facts.memory[agent]
        if m.growth is not None:
            if fact.leaks is None:
                unmeasured.append(f"{agent} growth")
            for leak in fact.leaks or ():
                if leak.series not in ("uss", "rss"):
                    continue
                if leak.fit is None:
                    over.append(f"{agent} {leak.series}: growth unknown ({leak.reason})")
                    continue
                if fastest is None or leak.fit.slope_high_per_h > fastest[0]:
                    fastest = (leak.fit.slope_high_per_h, f"{agent} {leak.series}")
                if leak.fit.slope_high_per_h > m.growth.max:
                    over.append(
                        f"{agent} {leak.series} grows up to "
                        f"{leak.fit.slope_high_per_h / 2**20:.2f} MiB/h at 95% confidence"
                        f" (slope {leak.fit.slope_per_h / 2**20:.2f} MiB/h), over"
                        f" {m.growth.max / 2**20:g} MiB/h"
                    )
        if m.leak is not None:
            if fact.leaks is None:
                unmeasured.append(f"{agent} leak verdict")
            for leak in fact.leaks or ():
                if leak.series not in PROCESS_SERIES:
                    continue  # the store on disk is reported, not the process's leak
                verdicts[leak.verdict.value] += 1
                if m.leak == "none" and leak.verdict is not LeakVerdict.NO_LEAK:
                    verdict = leak.verdict.value.upper()
                    where = f"; grew most at {fact.top_site}" if fact.top_site else ""
                    over.append(f"{agent} {leak.series}: {verdict}, {leak.reason}{where}")
            found = [
                x
                for x in fact.leaks or ()
                if x.verdict is LeakVerdict.LEAK and x.series in PROCESS_SERIES
            ]
            if m.leak == "detected" and fact.leaks is not None and not found:
                over.append(f"{agent}: no series judged LEAK")
        for key, limit in limits.items():
            value = fact.peak_rss if key == "peak_rss" else fact.uss_peak
            if value is None:
                unmeasured.append(f"{agent} {key}")
                continue
            if key not in worst or value > worst[key][0]:
                worst[key] = (value, agent)
            if value > limit:
                over.append(f"{agent} {key} {_mib(value)} > {_mib(limit)}")
    actual = ", ".join(
        [f"max {k} {_mib(v)} ({who})" for k, (v, who) in worst.items()]
        + [f"{n} series {verdict}" for verdict, n in sorted(verdicts.items())]
        + (
            [f"growth up to {fastest[0] / 2**20:.2f} MiB/h at 95% ({fastest[1]})"]
            if fastest is not None
            else []
        )
    ) or "nothing"
    if not agents:
        return _result(
            ident, a, passed=False, expected=expected, actual="no agent measured",
            message=f"no agent matching {selector!r} was measured",
        )  # fmt: skip
    problems = over + [f"{u} was not measured" for u in unmeasured]
    more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
    shown = "; ".join(problems[:5]) + more
    return _result(
        ident, a, passed=not problems, expected=expected, actual=actual,
        message=shown or f"{len(agents)} agent(s) as expected: {actual}",
    )  # fmt: skip


def _mib(n: int) -> str:
    return f"{n / 1048576:.1f} MiB"


def error_covered(a: ErrorsAssertion, fact: ErrorFact) -> bool:
    e = a.errors
    return (e.kind is None or fact.kind in e.kind) and (e.agent is None or fact.agent == e.agent)


async def _errors(ident: str, a: ErrorsAssertion, facts: Facts) -> AssertionResult:
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


A = TypeVar("A", StateAssertion, TimingAssertion, MemoryAssertion, ErrorsAssertion,
            CustomAssertion)  # fmt: skip


class _FactJudge(Judge, Generic[A]):
    """A judge of facts that are not events: it reads them when asked."""

    def __init__(
        self,
        ident: str,
        assertion: A,
        judge: Callable[[str, A, Facts], Awaitable[AssertionResult]],
    ) -> None:
        super().__init__(ident, assertion)
        self._assertion: A = assertion
        self._judge: Callable[[str, A, Facts], Awaitable[AssertionResult]] = judge

    async def result(self, facts: Facts) -> AssertionResult:
        return await self._judge(self.id, self._assertion, facts)


JudgeFactory = Callable[[str, Assertion, EventLog, Members], Judge]
M = TypeVar("M", bound=SpecModel)


def _for(model: type[M], make: Callable[[str, M, EventLog, Members], Judge]) -> JudgeFactory:
    """A factory for `model`'s judge (the table below holds one per assertion model)."""

    def factory(ident: str, a: Assertion, log: EventLog, members: Members) -> Judge:
        assert isinstance(a, model)  # the table is keyed by the assertion's own type
        return make(ident, a, log, members)

    return factory


def _timing(ident: str, a: TimingAssertion, log: EventLog, members: Members) -> Judge:
    if a.timing.latency is not None:
        return _LatencyJudge(ident, a, log)
    return _FactJudge(ident, a, _timing_facts)


JUDGES: dict[type[SpecModel], JudgeFactory] = {
    MessageAssertion: _for(MessageAssertion, lambda i, a, log, m: _MessageJudge(i, a, log, m)),
    ActionAssertion: _for(ActionAssertion, lambda i, a, log, m: _ActionJudge(i, a, log)),
    TimingAssertion: _for(TimingAssertion, _timing),
    DeliveryAssertion: _for(DeliveryAssertion, lambda i, a, log, m: _DeliveryJudge(i, a, log, m)),
    StateAssertion: _for(StateAssertion, lambda i, a, log, m: _FactJudge(i, a, _state)),
    MemoryAssertion: _for(MemoryAssertion, lambda i, a, log, m: _FactJudge(i, a, _memory)),
    ErrorsAssertion: _for(ErrorsAssertion, lambda i, a, log, m: _FactJudge(i, a, _errors)),
    CustomAssertion: _for(CustomAssertion, lambda i, a, log, m: _FactJudge(i, a, _custom)),
}
"""Each assertion model's judge factory (every type of `ASSERTION_TYPES` has one)."""


def make_judge(ident: str, a: Assertion, log: EventLog, members: Members) -> Judge:
    """The judge of `a`, subscribed to `log` from now on when it judges events."""
    return JUDGES[type(a)](ident, a, log, members)
