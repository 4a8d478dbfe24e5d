"""State checks in words and in judgement: the one place that decides whether a value found at
a state path meets a `StateCheck` (used by `wait_for: {state}`, inline and final `state`
assertions)."""

from __future__ import annotations

import json
from collections.abc import Mapping

from pydantic import JsonValue

from orchestrator.scenario.schema import StateCheck, clip
from protocol.statepath import StatePathError, get_path

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
    return clip(json.dumps(value, sort_keys=True))


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
