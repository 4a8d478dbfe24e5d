"""Where an agent's memory goes: tracemalloc, on the coordinator's request (`CmdTrace`).

`start` begins tracing with a number of frames per allocation; `mark` takes the baseline
snapshot (a soak marks it at the end of its warm-up); `report` compares a new snapshot with the
baseline and returns the allocation sites that grew most, each with its size and count growth
and its traceback, plus what tracing itself costs in memory and the garbage collector's object
counts. The sites are grouped by traceback, and each names its most recent frame in code that
is not Python's own or the agent runtime's (the plugin line that allocated), so a report says
which line of which plugin leaks.
"""

from __future__ import annotations

import gc
import os
import sys
import sysconfig
import tracemalloc

from pydantic import JsonValue

from protocol import CmdTrace

_STDLIB = os.path.normcase(sysconfig.get_paths()["stdlib"])
_RUNTIME = os.path.normcase(os.path.dirname(os.path.abspath(__file__)))
_IGNORED = (
    tracemalloc.Filter(False, tracemalloc.__file__, all_frames=True),  # the snapshots' own
    tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
    tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
    tracemalloc.Filter(False, "<unknown>"),
)


def _own(filename: str) -> bool:
    """Code of the agent's own (a plugin, the scenario's), not Python's or the runtime's."""
    path = os.path.normcase(os.path.abspath(filename))
    return not (path.startswith(_STDLIB) or path.startswith(_RUNTIME) or filename.startswith("<"))


class Tracer:
    def __init__(self) -> None:
        self._baseline: tracemalloc.Snapshot | None = None

    def run(self, command: CmdTrace) -> JsonValue:
        if command.step == "start":
            if not tracemalloc.is_tracing():
                tracemalloc.start(command.frames)
            return self._memory()
        if command.step == "stats":
            # Cheap and allocation-free, so that asking does not move what is measured
            # (gc.get_objects builds a list of every object: a soak asking each second grew
            # its clean agents by it).
            return {"allocated_blocks": sys.getallocatedblocks()}
        if not tracemalloc.is_tracing():
            raise RuntimeError("tracing was not started (CmdTrace step 'start')")
        if command.step == "mark":
            self._baseline = tracemalloc.take_snapshot().filter_traces(_IGNORED)
            return self._memory()
        return self._report(command.top)

    def _memory(self) -> dict[str, JsonValue]:
        current, peak = tracemalloc.get_traced_memory()
        return {
            "traced_bytes": current,
            "traced_peak_bytes": peak,
            "tracing_overhead_bytes": tracemalloc.get_tracemalloc_memory(),
            "gc_objects": [len(gc.get_objects(generation)) for generation in range(3)],
        }

    def _report(self, top: int) -> dict[str, JsonValue]:
        if self._baseline is None:
            raise RuntimeError("no baseline: CmdTrace step 'mark' comes before 'report'")
        snapshot = tracemalloc.take_snapshot().filter_traces(_IGNORED)
        grown = [s for s in snapshot.compare_to(self._baseline, "traceback") if s.size_diff > 0]
        sites: list[JsonValue] = []
        for stat in grown[:top]:
            # tracemalloc keeps a traceback oldest first: from the allocation outwards instead.
            frames = list(reversed(stat.traceback))
            mine = next((f for f in frames if _own(f.filename)), frames[0])
            sites.append(
                {
                    "file": mine.filename,
                    "line": mine.lineno,
                    "size_diff_bytes": stat.size_diff,
                    "count_diff": stat.count_diff,
                    "size_bytes": stat.size,
                    "count": stat.count,
                    "traceback": [f"{f.filename}:{f.lineno}" for f in frames],
                }
            )
        return {**self._memory(), "sites": sites}
