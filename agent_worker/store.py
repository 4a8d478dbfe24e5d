"""The agent's memory store: one SQLite file in the agent's private directory.

Owned by exactly one agent process; no other process opens it while the agent lives. Writes
are not fsynced (`synchronous=OFF`): the store serves the scenario, not crash durability, and
an fsync per message would dominate the message path. Within the process the store may be used
from several threads (sync plugin code runs in an executor); an internal lock serialises it.

Tables: `memories` (chat messages in/out and plugin notes), `rooms`, `entities` and
`participants` (which entities are members of which room).

Retention (`RetentionConfig`) keeps a soak run's store bounded:

* `max_per_room`: a ring buffer per room. After an insert takes a room over the bound, that
  room's oldest rows are deleted so exactly the bound remain. Per-room counts are kept in
  memory (read from the database on open), so an insert runs no COUNT query.
* `max_age_s`: rows older than `now - max_age_s` are deleted. On the insert path this is a
  sweep run only when the oldest row may be past the cutoff, and at most once per sweep
  interval (`min(1 s, max_age_s / 4)` of the injected clock), so a row can outlive its age by at
  most that interval before an insert removes it. Reads (`recent`, `search`, `count`) sweep
  first whenever the oldest row is past the cutoff, so they never return expired rows.

`created_at` comes from the injected clock but never decreases within one store (a wall clock
stepping back would otherwise make the newest row the "oldest" one and evict it first), so
insertion order, rowid order and `created_at` order agree.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from pydantic import JsonValue

from protocol import RetentionConfig

DIRECTIONS = frozenset({"in", "out", "note"})
"""'in'/'out': chat messages received/sent; 'note': memories written by evaluators/actions."""

_MEMORIES_TABLE = """
CREATE TABLE IF NOT EXISTS memories (
    id          TEXT PRIMARY KEY,
    room        TEXT NOT NULL,
    entity      TEXT NOT NULL,
    direction   TEXT NOT NULL CHECK (direction = 'in' OR direction = 'out' OR direction = 'note'),
    content     TEXT NOT NULL,
    created_at  REAL NOT NULL
);
"""
_MEMORIES_INDEX = """
CREATE INDEX IF NOT EXISTS memories_room ON memories (room, created_at);
"""

SCHEMA = (
    _MEMORIES_TABLE
    + _MEMORIES_INDEX
    + """
CREATE TABLE IF NOT EXISTS rooms (
    id          TEXT PRIMARY KEY,
    channel     TEXT NOT NULL,
    created_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS entities (
    id          TEXT PRIMARY KEY,
    name        TEXT,
    created_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS participants (
    room        TEXT NOT NULL,
    entity      TEXT NOT NULL,
    PRIMARY KEY (room, entity)
) WITHOUT ROWID;
"""
)

_COLUMNS = "id, room, entity, direction, content, created_at"
_INSERT = f"INSERT INTO memories ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
_TRIM_ROOM = (
    "DELETE FROM memories WHERE rowid IN"
    " (SELECT rowid FROM memories WHERE room = ? ORDER BY created_at, rowid LIMIT ?)"
)
_DELETE_ROWID = "DELETE FROM memories WHERE rowid = ?"
_EXPIRE_ROOM = "DELETE FROM memories WHERE room = ? AND created_at < ?"
_OLDEST_IN_ROOM = "SELECT min(created_at) FROM memories WHERE room = ?"
_SWEEP_INTERVAL_MAX_S = 1.0

_Row = tuple[str, str, str, str, str, float]


@dataclass(frozen=True, slots=True)
class Memory:
    id: str
    room: str
    entity: str
    direction: str
    content: dict[str, JsonValue]
    created_at: float


class StoreClosedError(RuntimeError):
    """The memory store was used after `close()`."""


def _memory(row: _Row) -> Memory:
    content = json.loads(row[4])
    if not isinstance(content, dict):
        raise ValueError(f"memory {row[0]!r}: content is not a JSON object")
    return Memory(row[0], row[1], row[2], row[3], content, float(row[5]))


class MemoryStore:
    FILENAME = "memory.sqlite3"

    def __init__(
        self,
        agent_dir: Path,
        retention: RetentionConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        agent_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = agent_dir / self.FILENAME
        self.retention = retention if retention is not None else RetentionConfig()
        self._max_per_room = self.retention.max_per_room
        self._max_age = self.retention.max_age_s
        self._sweep_interval = (
            min(_SWEEP_INTERVAL_MAX_S, self._max_age / 4) if self._max_age is not None else 0.0
        )
        self._clock = clock
        self._lock = threading.Lock()
        self._rows = 0
        self._evicted = 0
        self._counts: dict[str, int] = {}  # rooms with at least one memory -> rows
        self._room_oldest: dict[str, float] = {}  # lower bound of each room's oldest created_at
        # With max_per_room: each room's rowids, oldest first (the eviction order: created_at,
        # then rowid), so the insert path evicts by rowid, without a query to find the victim.
        self._ring: dict[str, deque[int]] = {}
        self._oldest = math.inf  # lower bound of the whole store's oldest created_at
        self._last_created = -math.inf
        self._last_sweep = -math.inf
        self._next_sweep = math.inf  # clock time at which an insert runs the age sweep
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db: sqlite3.Connection | None = db
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=OFF")
            self._migrate(db)
            db.executescript(SCHEMA)
            self._load(db)
            self._enforce(db)
            self._load_ring(db)
        except BaseException:
            self._db = None
            db.close()
            raise

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def rows(self) -> int:
        """Rows in `memories` right now (exact; readable after close)."""
        return self._rows

    @property
    def evicted(self) -> int:
        """Rows removed by retention since this store was opened (readable after close)."""
        return self._evicted

    @property
    def closed(self) -> bool:
        return self._db is None

    def close(self) -> None:
        """Close the database. Closing again is a no-op; any other use raises StoreClosedError."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreClosedError(f"memory store {self.path} is closed")
        return self._db

    @contextmanager
    def _transaction(self, db: sqlite3.Connection) -> Iterator[None]:
        db.execute("BEGIN")
        try:
            yield
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # some errors roll back by themselves
                db.execute("ROLLBACK")
            raise

    def _migrate(self, db: sqlite3.Connection) -> None:
        """Rebuild a `memories` table from before 'note' existed (SQLite cannot alter a CHECK)."""
        row = db.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'memories'"
        ).fetchone()
        if row is None or "'note'" in row[0]:
            return
        with self._transaction(db):
            db.execute("ALTER TABLE memories RENAME TO memories_old")
            db.execute(_MEMORIES_TABLE)
            db.execute(
                f"INSERT INTO memories (rowid, {_COLUMNS}) SELECT rowid, {_COLUMNS}"
                " FROM memories_old"
            )
            db.execute("DROP TABLE memories_old")  # drops the old index with it
            db.execute(_MEMORIES_INDEX)

    def _load(self, db: sqlite3.Connection) -> None:
        for room, n, oldest, newest in db.execute(
            "SELECT room, count(*), min(created_at), max(created_at) FROM memories GROUP BY room"
        ):
            self._counts[room] = int(n)
            self._room_oldest[room] = float(oldest)
            self._rows += int(n)
            self._last_created = max(self._last_created, float(newest))
        self._oldest = min(self._room_oldest.values(), default=math.inf)
        self._schedule_sweep()

    def _load_ring(self, db: sqlite3.Connection) -> None:
        if self._max_per_room is None:
            return
        for room, rowid in db.execute(
            "SELECT room, rowid FROM memories ORDER BY room, created_at, rowid"
        ):
            ring = self._ring.get(room)
            if ring is None:
                ring = self._ring[room] = deque()
            ring.append(int(rowid))

    def _enforce(self, db: sqlite3.Connection) -> None:
        """Apply retention to what is already stored (on open: the bounds may have changed)."""
        if self._max_per_room is not None:
            for room, n in list(self._counts.items()):
                if n > self._max_per_room:
                    self._trim(db, room, n - self._max_per_room)
        if self._max_age is not None:
            self._sweep(db, self._clock())

    # -- retention ------------------------------------------------------------------------
    def _removed(self, room: str, n: int) -> None:
        left = self._counts[room] - n
        if left:
            self._counts[room] = left
        else:
            del self._counts[room]
            del self._room_oldest[room]
        ring = self._ring.get(room)
        if ring is not None:  # the removed rows are always the room's oldest
            for _ in range(n):
                ring.popleft()
            if not ring:
                del self._ring[room]
        self._rows -= n
        self._evicted += n

    def _trim(self, db: sqlite3.Connection, room: str, excess: int) -> None:
        """Delete the room's `excess` oldest rows (on open, when the bound is lower than what
        is stored). The room's oldest bound becomes stale but stays a lower bound."""
        removed = db.execute(_TRIM_ROOM, (room, excess)).rowcount
        if removed > 0:
            self._removed(room, removed)

    def _schedule_sweep(self) -> None:
        if self._max_age is None or self._oldest == math.inf:
            self._next_sweep = math.inf
        else:
            self._next_sweep = max(
                self._oldest + self._max_age, self._last_sweep + self._sweep_interval
            )

    def _sweep(self, db: sqlite3.Connection, now: float) -> None:
        """Delete every row older than `now - max_age_s`, room by room (each an index range)."""
        assert self._max_age is not None
        cutoff = now - self._max_age
        self._last_sweep = now
        for room, oldest in list(self._room_oldest.items()):
            if oldest >= cutoff:
                continue
            removed = db.execute(_EXPIRE_ROOM, (room, cutoff)).rowcount
            if removed > 0:
                self._removed(room, removed)
            if room in self._counts:
                row = db.execute(_OLDEST_IN_ROOM, (room,)).fetchone()
                self._room_oldest[room] = float(row[0])
        self._oldest = min(self._room_oldest.values(), default=math.inf)
        self._schedule_sweep()

    def _fresh(self, db: sqlite3.Connection) -> None:
        """Before a read: drop expired rows if there may be any (not throttled)."""
        if self._max_age is not None:
            now = self._clock()
            if self._oldest < now - self._max_age:
                self._sweep(db, now)

    def prune(self) -> int:
        """Apply retention now (e.g. when idle); return how many rows it removed."""
        with self._lock:
            db = self._conn()
            before = self._evicted
            self._enforce(db)
            return self._evicted - before

    # -- memories -------------------------------------------------------------------------
    def add(
        self, memory_id: str, room: str, entity: str, direction: str, content: dict[str, JsonValue]
    ) -> None:
        """Insert one memory. A repeated id is an IntegrityError: exactly-once is checked here.

        `direction` is 'in' or 'out' for chat messages, 'note' for anything else a plugin
        remembers; `content` is any JSON object (chat messages carry a "text" field).
        """
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {sorted(DIRECTIONS)}, not {direction!r}")
        data = json.dumps(content)
        with self._lock:
            db = self._conn()
            now = self._clock()
            created = now if now > self._last_created else self._last_created
            row = (memory_id, room, entity, direction, data, created)
            n = self._counts.get(room, 0) + 1
            if self._max_per_room is None:
                db.execute(_INSERT, row)
                self._rows += 1
            else:
                ring = self._ring.get(room)
                if ring is None:
                    ring = self._ring[room] = deque()
                if n <= self._max_per_room:
                    rowid = db.execute(_INSERT, row).lastrowid
                    self._rows += 1
                else:
                    # Full ring (n == bound + 1): insert and evict the oldest in one transaction.
                    db.execute("BEGIN")
                    try:
                        rowid = db.execute(_INSERT, row).lastrowid
                        db.execute(_DELETE_ROWID, (ring[0],))
                        db.execute("COMMIT")
                    except BaseException:
                        if db.in_transaction:
                            db.execute("ROLLBACK")
                        raise
                    ring.popleft()
                    self._evicted += 1
                    n -= 1  # the room's oldest bound goes stale but stays a lower bound
                if rowid is None:  # pragma: no cover - sqlite sets it after an INSERT
                    raise RuntimeError("sqlite3 gave no rowid for an INSERT")
                ring.append(rowid)
            self._counts[room] = n
            self._last_created = created
            if n == 1:
                self._room_oldest[room] = created
                if created < self._oldest:  # the store was empty
                    self._oldest = created
                    self._schedule_sweep()
            if now >= self._next_sweep:
                self._sweep(db, now)

    def recent(self, room: str | None, limit: int) -> list[Memory]:
        """The last `limit` memories of a room (of all rooms if None), oldest first."""
        sql = f"SELECT {_COLUMNS} FROM memories"
        args: tuple[str | int, ...] = ()
        if room is not None:
            sql += " WHERE room = ?"
            args = (room,)
        sql += " ORDER BY rowid DESC LIMIT ?"
        with self._lock:
            db = self._conn()
            self._fresh(db)
            rows: list[_Row] = db.execute(sql, (*args, limit)).fetchall()
        return [_memory(r) for r in reversed(rows)]

    def search(self, text: str, room: str | None = None, limit: int = 20) -> list[Memory]:
        """Memories whose content's "text" field contains `text` (case-sensitive substring),
        newest first; only in `room` if given."""
        if limit < 0:
            raise ValueError(f"limit must be >= 0, not {limit}")
        sql = (
            f"SELECT {_COLUMNS} FROM memories"
            " WHERE json_type(content, '$.text') = 'text'"
            " AND instr(json_extract(content, '$.text'), ?) > 0"
        )
        args: tuple[str | int, ...] = (text,)
        if room is not None:
            sql += " AND room = ?"
            args = (text, room)
        sql += " ORDER BY rowid DESC LIMIT ?"
        with self._lock:
            db = self._conn()
            self._fresh(db)
            rows: list[_Row] = db.execute(sql, (*args, limit)).fetchall()
        return [_memory(r) for r in rows]

    def count(self, room: str | None = None) -> int:
        """Memories in `room`, or in the whole store if None (from memory: no query)."""
        with self._lock:
            self._fresh(self._conn())
            return self._rows if room is None else self._counts.get(room, 0)

    def counts_by_room(self) -> dict[str, int]:
        """Memories per room, counted by the database itself (not the in-memory tally), so the
        final stats show what the file really holds."""
        with self._lock:
            db = self._conn()
            self._fresh(db)
            rows: list[tuple[str, int]] = db.execute(
                "SELECT room, COUNT(*) FROM memories GROUP BY room ORDER BY room"
            ).fetchall()
        return dict(rows)

    # -- rooms, entities, participants ----------------------------------------------------
    def ensure_entity(self, entity_id: str, name: str | None = None) -> None:
        """Create the entity if missing; a given name replaces the stored one, None keeps it."""
        with self._lock:
            self._conn().execute(
                "INSERT INTO entities (id, name, created_at) VALUES (?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET name = coalesce(excluded.name, name)",
                (entity_id, name, self._clock()),
            )

    def ensure_room(self, room_id: str, channel: str, members: Sequence[str]) -> None:
        """Create the room, its members' entities and their participant rows if missing.

        Idempotent. The channel is updated to the one given; members are only ever added.
        """
        if isinstance(members, str):
            raise TypeError("members must be a sequence of entity ids, not a str")
        with self._lock:
            db = self._conn()
            now = self._clock()
            with self._transaction(db):
                db.execute(
                    "INSERT INTO rooms (id, channel, created_at) VALUES (?, ?, ?)"
                    " ON CONFLICT (id) DO UPDATE SET channel = excluded.channel",
                    (room_id, channel, now),
                )
                db.executemany(
                    "INSERT OR IGNORE INTO entities (id, name, created_at) VALUES (?, NULL, ?)",
                    [(m, now) for m in members],
                )
                db.executemany(
                    "INSERT OR IGNORE INTO participants (room, entity) VALUES (?, ?)",
                    [(room_id, m) for m in members],
                )

    def rooms(self) -> list[str]:
        """Ids of the rooms created with `ensure_room`, sorted."""
        with self._lock:
            rows: list[tuple[str]] = (
                self._conn().execute("SELECT id FROM rooms ORDER BY id").fetchall()
            )
        return [r[0] for r in rows]

    def room_channel(self, room_id: str) -> str | None:
        with self._lock:
            row: tuple[str] | None = (
                self._conn()
                .execute("SELECT channel FROM rooms WHERE id = ?", (room_id,))
                .fetchone()
            )
        return None if row is None else row[0]

    def participants(self, room: str) -> list[str]:
        """Entity ids taking part in `room`, sorted (empty for an unknown room)."""
        with self._lock:
            rows: list[tuple[str]] = (
                self._conn()
                .execute("SELECT entity FROM participants WHERE room = ? ORDER BY entity", (room,))
                .fetchall()
            )
        return [r[0] for r in rows]

    def entity_name(self, entity_id: str) -> str | None:
        """The entity's name, or None if it has none or does not exist."""
        with self._lock:
            row: tuple[str | None] | None = (
                self._conn()
                .execute("SELECT name FROM entities WHERE id = ?", (entity_id,))
                .fetchone()
            )
        return None if row is None else row[0]
