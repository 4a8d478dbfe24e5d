"""The private run directory of one run (the bus socket, the agents' stores and logs), and
the sweep of those a killed coordinator left behind.

A run directory is `sr-*` in the temporary folder (mode 0700, short enough for ipc paths)
with an `owner.json` naming the coordinator's pid and that process's start time. A
coordinator that ends normally removes its directory; one that was SIGKILLed cannot, so each
new run sweeps the `sr-*` directories whose owner is no longer running (the start time tells
a reused pid apart). A directory without the marker, or one that cannot be read, is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import psutil

PREFIX = "sr-"
OWNER = "owner.json"


def _me() -> dict[str, float | int]:
    return {"pid": os.getpid(), "started": psutil.Process().create_time()}


def make_run_dir() -> Path:
    """A new private run directory, marked as this process's."""
    path = Path(tempfile.mkdtemp(prefix=PREFIX))
    (path / OWNER).write_text(json.dumps(_me()), encoding="utf-8")
    return path


def _owner_alive(owner: dict[str, float | int]) -> bool:
    try:
        process = psutil.Process(int(owner["pid"]))
        return abs(process.create_time() - float(owner["started"])) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied, KeyError, ValueError, TypeError):
        return False


def sweep_stale(folder: Path | None = None) -> list[Path]:
    """Remove the run directories in `folder` (the temporary folder) whose coordinator is
    gone; returns them."""
    root = Path(folder or tempfile.gettempdir())
    swept: list[Path] = []
    for path in root.glob(PREFIX + "*"):
        marker = path / OWNER
        try:
            owner = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # not ours to judge
        if not isinstance(owner, dict) or _owner_alive(owner):
            continue
        with contextlib.suppress(OSError):
            shutil.rmtree(path)
            swept.append(path)
    return swept
