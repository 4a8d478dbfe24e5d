"""Custom rules for the tests: ones that pass, fail, raise and stop a run."""

from __future__ import annotations

import time

from orchestrator.rules import RuleResult, RunView


def pongs_at_least(view: RunView, n: int) -> RuleResult:
    pongs = [m for m in view.messages() if m.sender == "bot" and "pong" in m.text]
    return RuleResult(
        len(pongs) >= n,
        f"{len(pongs)} pongs (wanted at least {n})",
        expected=f">= {n} pongs",
        actual=str(len(pongs)),
        evidence=tuple(m.event_id for m in pongs[:5]),
    )


def explodes(view: RunView) -> RuleResult:
    raise ValueError("this rule always raises")


def not_a_result(view: RunView) -> bool:
    return True


def enough_messages(view: RunView, n: int) -> RuleResult:
    """A stop rule: its view yields the messages since its last call; `memo` keeps the count."""
    count = int(view.memo.get("count", 0)) + sum(1 for _ in view.messages())  # type: ignore[call-overload]
    view.memo["count"] = count
    return RuleResult(count >= n, f"{count} messages")


def counts_as_int(view: RunView) -> RuleResult:
    """A rule whose `actual` is not text: an error of its assertion, never a broken report."""
    return RuleResult(True, "fine", actual=3)  # type: ignore[arg-type]


def slow_to_explode(view: RunView) -> RuleResult:
    """A stop rule that is still running when a short script ends, then raises."""
    time.sleep(0.3)  # the rule's own slowness (what is tested), not a wait for something
    raise RuntimeError("this rule raises late")
