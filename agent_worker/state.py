"""The agent's state: a JSON-serialisable nested dict read and written by dotted path.

Reading and the path syntax are shared with the coordinator (`protocol.statepath`).
"""

from __future__ import annotations

from pydantic import JsonValue

from protocol.statepath import StatePathError, get_path, path_parts

__all__ = ["StatePathError", "get_path", "set_path"]


def set_path(state: dict[str, JsonValue], path: str, value: JsonValue) -> JsonValue:
    """Set `path` to `value`, creating intermediate dicts; returns the previous value or None."""
    parts = path_parts(path)
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
