"""The agent's state: a JSON-serialisable nested dict read and written by dotted path."""

from __future__ import annotations

from pydantic import JsonValue


class StatePathError(ValueError):
    pass


def _parts(path: str) -> list[str]:
    parts = path.split(".") if path else []
    if any(not p for p in parts):
        raise StatePathError(f"bad state path {path!r}: empty segment")
    return parts


def get_path(state: dict[str, JsonValue], path: str) -> JsonValue:
    """The value at `path` ('' is the whole state); raises KeyError when absent."""
    node: JsonValue = state
    for part in _parts(path):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(path)
        node = node[part]
    return node


def set_path(state: dict[str, JsonValue], path: str, value: JsonValue) -> JsonValue:
    """Set `path` to `value`, creating intermediate dicts; returns the previous value or None."""
    parts = _parts(path)
    if not parts:
        raise StatePathError("cannot replace the whole state; name a path")
    node: dict[str, JsonValue] = state
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            if child is not None:
                raise StatePathError(f"state path {path!r}: {part!r} is not an object")
            child = {}
            node[part] = child
        node = child
    previous = node.get(parts[-1])
    node[parts[-1]] = value
    return previous
