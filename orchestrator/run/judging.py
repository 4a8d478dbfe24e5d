"""A run's judgement: every assertion's judge, made when the run starts (subscribed before
anything happens, so the verdict is folded as the run goes and needs no replay), the errors
the agents report as they arrive, and what custom rules read of the log. The runner asks it at
each inline `assert` step and once at the end, with the facts that are not events."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from orchestrator.events import (
    AgentError,
    AssertionEvaluated,
    Event,
    EventLog,
    EventStorage,
    read_events,
)
from orchestrator.judge.judges import (
    AssertionResult,
    ErrorFact,
    Facts,
    Judge,
    Members,
    assertion_id,
    make_judge,
)
from orchestrator.rules import RuleError, RunView
from orchestrator.scenario.assertions import Assertion, CustomAssertion
from orchestrator.scenario.spec import Scenario, all_steps
from orchestrator.scenario.steps import AssertStep


class Judgement:
    def __init__(
        self, scenario: Scenario, events: EventLog, members: Members, storage: EventStorage
    ) -> None:
        self.scenario = scenario
        self.events = events
        self.storage = storage
        """What the user asked of events.jsonl (`--events`)."""
        self.judges: list[Judge] = [
            make_judge(assertion_id(i, a), a, events, members)
            for i, a in enumerate(scenario.assertions)
        ]
        """One per end-of-run assertion."""
        self.inline_judges: dict[int, Judge] = {
            id(step.assert_): make_judge(
                step.assert_.id or step.id or "assert", step.assert_, events, members
            )
            for _, step in all_steps(scenario)
            if isinstance(step, AssertStep)
        }
        """Per `assert` step, by the identity of its assertion."""
        self.agent_errors: list[ErrorFact] = []
        """What the agents reported (agent.error events), as they arrive."""
        events.subscribe(self._collect, (AgentError,))

    def _collect(self, event: AgentError) -> None:
        where = f"{event.where}: " if event.where else ""
        self.agent_errors.append(
            ErrorFact(event.error_kind, event.agent, f"agent {event.agent}: {where}{event.error}")
        )

    def log_so_far(self) -> Callable[[], Iterator[Event]]:
        """What a custom rule's `view.events()` streams: events.jsonl so far (written out
        now, and read up to here while the run goes on), read where the rule runs (sync rules
        run in a thread, so the loop never blocks on the file). A log that left events out
        (`--events summary` or `off`, or past its size cap) is refused: a rule must not judge
        a part of the run as if it were the whole."""
        events = self.events
        path = events.spill_path
        events.flush()
        upto = events.bytes_written

        def stream() -> Iterator[Event]:
            if events.storage is not EventStorage.FULL:
                why = (
                    f"--events {self.storage.value}; run with --events full"
                    if events.summary_from is None
                    else f"its size cap was reached at event {events.summary_from};"
                    " raise --events-max-size"
                )
                raise RuleError(
                    f"the event log is incomplete ({why}): this rule reads view.events()"
                )
            return read_events(path, upto)

        return stream

    async def inline(self, assertion: Assertion, ident: str, facts: Facts) -> AssertionResult:
        """An `assert` step: its judge's state now (a custom rule reads the log so far)."""
        if isinstance(assertion, CustomAssertion):
            facts.view = RunView(
                self.scenario.name, self.log_so_far(), agents=tuple(self.scenario.agent_ids)
            )
        result = await self.inline_judges[id(assertion)].result(facts)
        result.id = ident
        return result

    async def final(
        self, facts: Facts, inline: list[AssertionResult]
    ) -> list[AssertionResult]:
        """Every assertion's result at the end (the inline ones as their steps left them),
        each also put in the event stream."""
        for result in inline:
            result.inline = True
        results = inline + [await judge.result(facts) for judge in self.judges]
        for result in results:
            self.events.emit(
                AssertionEvaluated(assertion=result.id, type=result.type, passed=result.passed,
                                   inline=result.inline, message=result.message[:300])
            )  # fmt: skip
        return results


def no_events() -> Iterator[Event]:
    """What a view that may not read the log yields (facts for judges that read none)."""
    return iter(())
