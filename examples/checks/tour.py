"""A custom assertion rule for examples/every-assertion.yaml.

A rule gets a read-only view of the run and returns a RuleResult; raising (or returning
anything else) makes the assertion an error, and the run an ERROR, never a pass.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from orchestrator.rules import RuleResult, RunView


def every_question_answered(view: RunView, prefix: str) -> RuleResult:
    """Every message from the script that starts with `prefix` has a reply from another agent
    in the same room that names the item asked about."""
    asked = [m for m in view.messages() if m.origin == "script" and m.text.startswith(prefix)]
    replies = [m for m in view.messages() if m.origin == "agent"]
    missing = [
        q
        for q in asked
        if not any(r.room == q.room and q.text[len(prefix) :] in r.text for r in replies)
    ]
    return RuleResult(
        bool(asked) and not missing,
        f"{len(asked) - len(missing)} of {len(asked)} questions answered",
        expected=f"a reply to every message starting {prefix!r}",
        actual=", ".join(m.text for m in missing) or "all answered",
        evidence=tuple(m.event_id for m in missing or asked),
    )


def every_agent_said(view: RunView, pattern: str, text: str) -> RuleResult:
    """Every agent whose id matches the glob `pattern` sent `text` (as itself, not through the
    script)."""
    agents = [a for a in view.agents if fnmatchcase(a, pattern)]
    said = {m.sender for m in view.messages() if m.origin == "agent" and m.text == text}
    silent = [a for a in agents if a not in said]
    return RuleResult(
        bool(agents) and not silent,
        f"{len(agents) - len(silent)} of {len(agents)} agents matching {pattern!r} said {text!r}",
        expected=f"every agent matching {pattern!r} says {text!r}",
        actual=", ".join(silent) or "all did",
    )
