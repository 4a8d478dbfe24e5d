"""The verdict: PASS, FAIL or ERROR for one run, from its assertion results, its steps and its
errors, with the weighted score.

- ERROR when the run could not be judged: a crash, a hang, the runner breaking, an agent that
  could not start, a step that failed or never ran (other than an `assert` step, whose failure
  is a failed assertion; and other than steps a stop condition skipped), an assertion that
  could not be evaluated, or an error that no `errors` assertion covers. An error is never a
  pass.
- FAIL when a required assertion failed, or the score is under the threshold.
- PASS otherwise.

The score is the passed weight over the total weight (1.0 when the total is zero).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from orchestrator.judge.judges import AssertionResult, ErrorFact, error_covered
from orchestrator.report.model import Verdict
from orchestrator.run.executor import StepResult, StepStatus
from orchestrator.scenario.assertions import ErrorsAssertion

FATAL_KINDS = frozenset({"crash", "hung", "runner", "init", "startup", "step", "rule"})
"""Errors that always make the run an ERROR, whatever an `errors` assertion allows."""


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    score: float
    threshold: float
    reasons: list[str]
    """Why the verdict is not PASS (empty for PASS)."""
    run_errors: list[str]
    """The reasons for an ERROR that are the run's rather than an assertion's: crashes,
    failed steps, uncovered agent errors, nothing judged."""


def decide(
    results: list[AssertionResult],
    steps: Iterable[StepResult],
    errors: list[ErrorFact],
    errors_assertions: list[ErrorsAssertion],
    threshold: float,
    stop_reason: str | None = None,
) -> Decision:
    total = sum(r.weight for r in results)
    passed = sum(r.weight for r in results if r.passed and r.error is None)
    score = passed / total if total > 0 else 1.0
    errors_reasons: list[str] = []
    for fact in errors:
        if fact.kind in FATAL_KINDS:
            errors_reasons.append(fact.message)
        elif not any(error_covered(a, fact) for a in errors_assertions):
            errors_reasons.append(f"{fact.message} (no 'errors' assertion covers it)")
    for step in steps:
        if step.kind == "assert":
            continue
        if step.status is StepStatus.FAILED:
            runs = f" (failed {step.failed} of {step.runs} runs)" if step.runs > 1 else ""
            errors_reasons.append(f"step {step.path} failed{runs}: {step.error}")
        elif step.status is StepStatus.SKIPPED and (
            stop_reason is None or step.skipped_reason != stop_reason
        ):
            errors_reasons.append(f"step {step.path} did not run: {step.skipped_reason}")
    if not results:
        errors_reasons.append("no assertion was judged")
    run_errors = list(errors_reasons)
    errors_reasons += [
        f"assertion {r.id} could not be judged: {r.error}" for r in results if r.error
    ]
    if errors_reasons:
        return Decision(Verdict.ERROR, score, threshold, errors_reasons, run_errors)
    failed = [r for r in results if r.required and not r.passed]
    reasons = [f"required assertion {r.id} failed: {r.message}" for r in failed]
    if score < threshold:
        reasons.append(f"score {score:.3f} is under the threshold {threshold:.3f}")
    return Decision(Verdict.FAIL if reasons else Verdict.PASS, score, threshold, reasons, [])
