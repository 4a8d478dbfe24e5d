"""The checks that tie a scenario's parts together: every agent, room and step id that a part
names is defined; ids are unique; an agent only speaks in rooms it belongs to.

Every problem is found, not just the first, each at the path of the field that is wrong, so
the loader can point at its line. The sections are keyed by their index in the file, so that
the loader can check the items that did validate while reporting the others' own errors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

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
from orchestrator.scenario.schema import (
    Loc,
    MessageMatch,
    format_loc,
    is_pattern,
    match_agents,
    quote,
    suggest,
)
from orchestrator.scenario.steps import (
    PROCESS_FAULTS,
    ActionStep,
    Actor,
    AssertStep,
    FaultStep,
    SendStep,
    SetStateStep,
    Step,
    StopCondition,
    WaitForStep,
    walk_step,
    walk_steps,
)

if TYPE_CHECKING:
    from orchestrator.scenario.spec import AgentSpec, RoomSpec


@dataclass(frozen=True)
class ReferenceIssue:
    """A problem between parts of a scenario, at the path of the field that is wrong."""

    loc: Loc
    message: str

    def __str__(self) -> str:
        return f"{format_loc(self.loc)}: {self.message}"


@dataclass
class Parts:
    """The parts of a scenario that validated on their own, by index in the file."""

    agents: Mapping[int, AgentSpec]
    rooms: Mapping[int, RoomSpec]
    script: Mapping[int, Step] = field(default_factory=dict)
    actors: Mapping[int, Actor] = field(default_factory=dict)
    assertions: Mapping[int, Assertion] = field(default_factory=dict)
    stop_when: Mapping[int, StopCondition] = field(default_factory=dict)


class _Checker:
    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        self.issues: list[ReferenceIssue] = []
        self.agent_at: dict[str, Loc] = {}
        self.room_at: dict[str, Loc] = {}
        self.members: dict[str, set[str]] = {}
        self.step_at: dict[str, Loc] = {}
        self.assertion_at: dict[str, Loc] = {}
        self.pending_steps: list[tuple[Loc, str]] = []

    def issue(self, loc: Loc, message: str) -> None:
        self.issues.append(ReferenceIssue(loc, message))

    # -- names ----------------------------------------------------------------------------
    def agent(self, loc: Loc, name: str | None) -> bool:
        """Report `name` if it is not a defined agent; True when it is defined."""
        if name is None:
            return False
        if name not in self.agent_at:
            self.issue(loc, f"undefined agent {quote(name)}{suggest(name, self.agent_at)}")
            return False
        return True

    def room(self, loc: Loc, name: str | None) -> bool:
        if name is None:
            return False
        if name not in self.room_at:
            self.issue(loc, f"undefined room {quote(name)}{suggest(name, self.room_at)}")
            return False
        return True

    def unique(self, seen: dict[str, Loc], item: Loc, ident: str, what: str) -> None:
        """Report a second `what` with id `ident`, at the `id` of `item` (its path)."""
        if ident in seen:
            first = format_loc(seen[ident])
            self.issue((*item, "id"), f"duplicate {what} id {quote(ident)} (first at {first})")
        else:
            seen[ident] = item

    # -- sections -------------------------------------------------------------------------
    def run(self) -> list[ReferenceIssue]:
        p = self.parts
        for i, agent in p.agents.items():
            for ident in agent.ids:
                if ident in self.agent_at:
                    first = format_loc(self.agent_at[ident])
                    self.issue(
                        ("agents", i, "id"),
                        f"duplicate agent id {quote(ident)} (first defined at {first})",
                    )
                else:
                    self.agent_at[ident] = ("agents", i)
        ids = list(self.agent_at)
        for i, room in p.rooms.items():
            self.unique(self.room_at, ("rooms", i), room.id, "room")
            # A message is addressed to a room or to an agent by id, so one id must not mean both.
            if room.id in self.agent_at:
                self.issue(("rooms", i, "id"), f"room id {quote(room.id)} is also an agent id")
            seen: set[str] = set()
            for j, member in enumerate(room.members):
                matched = match_agents(member, ids)
                if not matched:
                    if is_pattern(member):
                        self.issue(
                            ("rooms", i, "members", j), f"pattern {quote(member)} matches no agent"
                        )
                    else:
                        self.agent(("rooms", i, "members", j), member)
                elif not is_pattern(member) and member in seen:
                    self.issue(("rooms", i, "members", j), f"agent {quote(member)} is listed twice")
                seen.update(matched)
            self.members.setdefault(room.id, seen)
        for i, actor in p.actors.items():
            self.agent(("actors", i, "agent"), actor.agent)
        for i, top in p.script.items():
            for loc, step in walk_step(top, ("script", i)):
                self.step(loc, step)
        for i, actor in p.actors.items():
            for loc, step in walk_steps(actor.script, ("actors", i, "script")):
                self.step(loc, step)
        for i, assertion in p.assertions.items():
            self.assertion(("assertions", i), assertion, assertion.id)
        for i, cond in p.stop_when.items():
            self.agent(("stop_when", i, "from"), cond.from_)
        return self.issues

    def step(self, loc: Loc, step: Step) -> None:
        if step.id is not None:
            self.unique(self.step_at, loc, step.id, "step")
        match step:
            case SendStep(send=send):
                known = self.agent((*loc, "send", "agent"), send.agent)
                in_room = self.room((*loc, "send", "room"), send.room)
                if known and in_room and send.agent not in self.members[send.room]:
                    self.issue(
                        (*loc, "send", "agent"),
                        f"agent {quote(send.agent)} is not a member of room {quote(send.room)}",
                    )
            case ActionStep(action=action):
                self.agent((*loc, "action", "agent"), action.agent)
                self.room((*loc, "action", "room"), action.room)
            case FaultStep(fault=fault) if fault.op in PROCESS_FAULTS:
                self.agent((*loc, "fault", fault.op), fault.agent)
            case FaultStep(fault=fault):
                at = (*loc, "fault")
                for key, names in (("from", fault.from_), ("to", fault.to)):
                    for i, name in enumerate(names or ()):
                        self.agent((*at, key, i), name)
                for i, name in enumerate(fault.room or ()):
                    self.room((*at, "room", i), name)
                for g, group in enumerate(fault.partition or ()):
                    for i, name in enumerate(group):
                        self.agent((*at, "partition", g, i), name)
            case SetStateStep(set_state=set_state):
                self.agent((*loc, "set_state", "agent"), set_state.agent)
            case WaitForStep(wait_for=w):
                at = (*loc, "wait_for")
                if w.message is not None:
                    self.message_match((*at, "message"), w.message, wait=True)
                if w.action is not None:
                    self.agent((*at, "action", "agent"), w.action.agent)
                if w.state is not None:
                    self.agent((*at, "state", "agent"), w.state.agent)
                if w.event is not None:
                    self.agent((*at, "event", "agent"), w.event.agent)
            case AssertStep(assert_=assertion):
                self.assertion((*loc, "assert"), assertion, assertion.id or step.id)

    def message_match(self, loc: Loc, m: MessageMatch, wait: bool = False) -> None:
        sender_ok = self.agent((*loc, "from"), m.from_)
        self.agent((*loc, "to"), m.to)
        if self.room((*loc, "room"), m.room) and sender_ok:
            assert m.from_ is not None and m.room is not None
            if m.from_ not in self.members[m.room]:
                # Such a message can never be sent, so a wait could only time out.
                self.issue(
                    (*loc, "from"),
                    f"agent {quote(m.from_)} is not a member of room {quote(m.room)}"
                    + (", so this wait could only time out" if wait else ""),
                )

    def anchor(self, loc: Loc, anchor: Anchor) -> None:
        if anchor.message is not None:
            self.message_match((*loc, "message"), anchor.message)
        if anchor.action is not None:
            self.agent((*loc, "action", "agent"), anchor.action.agent)
        if anchor.event is not None:
            self.agent((*loc, "event", "agent"), anchor.event.agent)

    def assertion(self, loc: Loc, assertion: Assertion, ident: str | None) -> None:
        if ident is not None:
            self.unique(self.assertion_at, loc, ident, "assertion")
        at = (*loc, assertion_kind(assertion))
        match assertion:
            case MessageAssertion(message=a):
                self.message_match(at, a.match())
                for key in ("before", "after"):
                    other = getattr(a, key)
                    if other is not None:
                        self.message_match((*at, key), other)
                if a.within is not None:
                    self.anchor((*at, "within", "of"), a.within.of)
            case ActionAssertion(action=a):
                self.agent((*at, "agent"), a.agent)
            case StateAssertion(state=s):
                self.agent((*at, "agent"), s.agent)
            case TimingAssertion(timing=t):
                self.agent((*at, "agent"), t.agent)
                self.room((*at, "room"), t.room)
                # Steps are all checked first (see finish), so an id defined later counts.
                if t.step is not None:
                    self.pending_steps.append(((*at, "step"), t.step))
            case MemoryAssertion(memory=m):
                if m.agent is not None and not match_agents(m.agent, list(self.agent_at)):
                    if is_pattern(m.agent):
                        self.issue((*at, "agent"), f"pattern {quote(m.agent)} matches no agent")
                    else:
                        self.agent((*at, "agent"), m.agent)
            case ErrorsAssertion(errors=e):
                self.agent((*at, "agent"), e.agent)
            case DeliveryAssertion(delivery=d):
                self.agent((*at, "agent"), d.agent)
            case CustomAssertion():
                pass

    def finish(self) -> None:
        for loc, ident in self.pending_steps:
            if ident not in self.step_at:
                self.issue(loc, f"undefined step id {quote(ident)}{suggest(ident, self.step_at)}")


def find_reference_issues(parts: Parts) -> list[ReferenceIssue]:
    """Every reference problem in `parts`, not just the first."""
    checker = _Checker(parts)
    checker.run()
    checker.finish()
    return checker.issues
