"""The agent's memory store: one SQLite file in the agent's private directory.

Owned by exactly one agent process; no other process opens it while the agent lives. Writes
are not fsynced (`synchronous=OFF`): the store serves the scenario, not crash durability, and
an fsync per message would dominate the message path.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import JsonValue

SCHEMA = """
CREATE TABLE IF NOT EXISTS memories (
    id          TEXT PRIMARY KEY,
    room        TEXT NOT NULL,
    entity      TEXT NOT NULL,
    direction   TEXT NOT NULL CHECK (direction IN ('in', 'out')),
    content     TEXT NOT NULL,
    created_at  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS memories_room ON memories (room, created_at);
"""


@dataclass(frozen=True, slots=True)
class Memory:
    id: str
    room: str
    entity: str
    direction: str
    content: dict[str, JsonValue]
    created_at: float


class MemoryStore:
    FILENAME = "memory.sqlite3"

    def __init__(self, agent_dir: Path) -> None:
        agent_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = agent_dir / self.FILENAME
        self._db: sqlite3.Connection | None = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.executescript(SCHEMA)
        self.rows = self._count()

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("memory store is closed")
        return self._db

    def _count(self) -> int:
        row = self._conn().execute("SELECT count(*) FROM memories").fetchone()
        return int(row[0])

    def add(
        self, memory_id: str, room: str, entity: str, direction: str, content: dict[str, JsonValue]
    ) -> None:
        """Insert one memory. A repeated id is an IntegrityError: exactly-once is checked here."""
        self._conn().execute(
            "INSERT INTO memories (id, room, entity, direction, content, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (memory_id, room, entity, direction, json.dumps(content), time.time()),
        )
        self.rows += 1

    def recent(self, room: str | None, limit: int) -> list[Memory]:
        sql = "SELECT id, room, entity, direction, content, created_at FROM memories"
        args: tuple[str | int, ...] = ()
        if room is not None:
            sql += " WHERE room = ?"
            args = (room,)
        sql += " ORDER BY rowid DESC LIMIT ?"
        rows = self._conn().execute(sql, (*args, limit)).fetchall()
        return [
            Memory(r[0], r[1], r[2], r[3], json.loads(r[4]), float(r[5])) for r in reversed(rows)
        ]

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
