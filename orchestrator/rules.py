"""Custom rules: Python callables named by import path in a scenario (`custom` assertions and
`stop_when: {custom: ...}`), and the read-only view of the run they receive.

A rule is `def rule(view: RunView, **params) -> RuleResult` (or `async def`). It runs in the
coordinator with a timeout. A rule that cannot be imported, raises, times out or returns
anything but a `RuleResult` is an *error* of the run, never a pass. Rules are code the scenario
names, trusted like a test file.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from pydantic import JsonValue

from orchestrator.events import ActionEnded, Event, MessageSent


@dataclass(frozen=True, slots=True)
class RuleResult:
    """What a rule decided: `passed`, a one-line `message`, and optionally what it expected,
    what it found and the ids of the events that are its evidence."""

    passed: bool
    message: str
    expected: str = ""
    actual: str = ""
    evidence: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class MessageView:
    event_id: int
    t: float
    sender: str
    room: str
    text: str
    origin: str
    in_reply_to: str | None
    msg_id: str


@dataclass(frozen=True, slots=True)
class ActionView:
    event_id: int
    t: float
    agent: str
    action: str
    status: str
    params: Mapping[str, object]
    """As the handler received them (JSON values)."""
    error: str | None


@dataclass(frozen=True)
class RunView:
    """A read-only view of a run, given to custom rules.

    For a `custom` assertion (at the end of the run), `events()` streams the whole event log
    from events.jsonl, so a rule over a long run holds nothing in memory unless it collects it
    itself (run sync rules, the default, which are called in a thread: reading the file never
    blocks the coordinator's loop).

    For a `stop_when: {custom: ...}` rule, asked again after each message, action and state
    change, the view is *incremental*: `events()`, `messages()` and `actions()` yield what
    happened since the rule's previous call, and `memo` is a dict the rule keeps between
    calls (for its running counts). Re-reading the whole run at every cue would make a soak
    quadratic."""

    scenario: str
    _events: Callable[[], Iterator[Event]]
    final_states: Mapping[str, Mapping[str, JsonValue]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    """Each agent's state as it sent it at BYE (empty before the end of the run)."""
    metrics: Mapping[str, Mapping[str, JsonValue]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    """Per agent, the numbers of its report entry (see docs/reports.md): messages_in/out,
    retries, dead_letters, handler_errors, store_rows, memory.peak_rss_bytes,
    delivery_latency.p99_ms... Empty before the end (inline asserts, stop conditions)."""
    agents: tuple[str, ...] = ()
    """Every agent of the scenario (`count` expanded), in file order."""
    incremental: bool = False
    """True for a stop rule's view: the iterators yield only what is new since its last call."""
    memo: dict[str, object] = field(default_factory=dict)
    """A stop rule's own state between calls (empty for an assertion's rule)."""

    def events(self) -> Iterator[Event]:
        return self._events()

    def messages(self) -> Iterator[MessageView]:
        for e in self._events():
            if isinstance(e, MessageSent):
                yield MessageView(
                    e.id, e.t, e.agent or "", e.room, e.text, e.origin, e.in_reply_to, e.msg_id
                )

    def actions(self) -> Iterator[ActionView]:
        for e in self._events():
            if isinstance(e, ActionEnded):
                yield ActionView(
                    e.id, e.t, e.agent or "", e.action, e.status,
                    MappingProxyType(e.params), e.error,
                )  # fmt: skip


class RuleError(Exception):
    """The rule could not give a result; the message says why (one line)."""


Rule = Callable[..., object]


def load_rule(path: str) -> Rule:
    """The callable at `package.module:name`; RuleError when it cannot be imported."""
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise RuleError(f"rule {path!r} failed to import: {type(exc).__name__}: {exc}") from None
    rule: object = getattr(module, attribute, None)
    if not callable(rule):
        raise RuleError(f"rule {path!r}: {module_name} has no callable {attribute!r}")
    return rule


async def call_rule(
    path: str, view: RunView, params: Mapping[str, JsonValue], timeout_s: float
) -> RuleResult:
    """Run the rule with a timeout (sync rules in a thread); RuleError for anything but a
    RuleResult."""
    rule = load_rule(path)
    try:
        if inspect.iscoroutinefunction(rule):
            outcome = await asyncio.wait_for(rule(view, **params), timeout_s)
        else:
            outcome = await asyncio.wait_for(asyncio.to_thread(rule, view, **params), timeout_s)
    except TimeoutError:
        raise RuleError(f"rule {path!r} timed out after {timeout_s:g}s") from None
    except Exception as exc:
        last = traceback.extract_tb(exc.__traceback__)[-1:]
        where = f" ({last[0].filename}:{last[0].lineno})" if last else ""
        raise RuleError(f"rule {path!r} raised {type(exc).__name__}: {exc}{where}") from None
    if not isinstance(outcome, RuleResult):
        raise RuleError(
            f"rule {path!r} returned {type(outcome).__name__}, not RuleResult "
            "(from orchestrator.rules)"
        )
    problem = _ill_typed(outcome)
    if problem is not None:
        raise RuleError(f"rule {path!r} returned a RuleResult whose {problem}")
    return outcome


def _ill_typed(result: RuleResult) -> str | None:
    """What is wrong with a RuleResult's field types, if anything (a dataclass does not check
    them, and a report cannot carry an int where it says text)."""
    if not isinstance(result.passed, bool):
        return f"passed is {type(result.passed).__name__}, not bool"
    for name in ("message", "expected", "actual"):
        value = getattr(result, name)
        if not isinstance(value, str):
            return f"{name} is {type(value).__name__}, not str"
    evidence = result.evidence
    if not isinstance(evidence, tuple | list) or not all(
        type(i) is int for i in evidence
    ):
        return "evidence is not a sequence of event ids (int)"
    return None
