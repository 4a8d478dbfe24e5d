"""Dotted state paths, as CMD `set_state` / `get_state` and state assertions use them.

Both sides must read `a.b.c` the same way, so the rule lives here beside the wire format.
"""

from __future__ import annotations

from pydantic import JsonValue

NO_STATE_AT = "no state at "
"""How an agent's failed `get_state` RESULT error begins when nothing is at the path (the
coordinator reads that as "absent", any other error as a failure)."""


class StatePathError(ValueError):
    pass


def path_parts(path: str) -> list[str]:
    """The segments of `path` ('' is the root); StatePathError on an empty segment."""
    parts = path.split(".") if path else []
    if any(not p for p in parts):
        raise StatePathError(f"bad state path {path!r}: empty segment")
    return parts


def get_path(state: dict[str, JsonValue], path: str) -> JsonValue:
    """The value at `path` ('' is the whole state); raises KeyError when absent."""
    node: JsonValue = state
    for part in path_parts(path):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(path)
        node = node[part]
    return node
