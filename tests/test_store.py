"""Unit tests of the agent's SQLite memory store (agent_worker/store.py): a real SQLite file in
tmp_path, no processes."""

from __future__ import annotations

import sqlite3
import threading
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest
from pydantic import JsonValue

from agent_worker.store import Memory, MemoryStore, StoreClosedError
from protocol import RetentionConfig


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, dt: float) -> None:
        self.now += dt


def msg(text: str, **extra: JsonValue) -> dict[str, JsonValue]:
    content: dict[str, JsonValue] = {"text": text, "origin": "test"}
    content.update(extra)
    return content


def db_rows(store: MemoryStore) -> list[tuple[str, str, float]]:
    """(id, room, created_at) straight from the file, through a second connection."""
    with closing(sqlite3.connect(store.path)) as db:
        rows: list[tuple[str, str, float]] = db.execute(
            "SELECT id, room, created_at FROM memories ORDER BY rowid"
        ).fetchall()
    return rows


def db_counts(store: MemoryStore) -> Counter[str]:
    return Counter(room for _, room, _ in db_rows(store))


def ids(memories: list[Memory]) -> list[str]:
    return [m.id for m in memories]


# -- compatibility with the runtime's calls ---------------------------------------------------


def test_add_and_recent_like_the_runtime(tmp_path: Path) -> None:
    store = MemoryStore(tmp_path / "agent")
    assert store.path == tmp_path / "agent" / MemoryStore.FILENAME
    store.add("a:1:1", "lobby", "alice", "in", msg("hello", in_reply_to="x"))
    store.add("b:1:1", "lobby", "bob", "out", msg("hi"))
    store.add("a:1:2", "side", "alice", "in", msg("psst"))
    assert store.rows == 3

    lobby = store.recent("lobby", 10)
    assert ids(lobby) == ["a:1:1", "b:1:1"]  # oldest first
    first = lobby[0]
    assert (first.room, first.entity, first.direction) == ("lobby", "alice", "in")
    assert first.content == {"text": "hello", "origin": "test", "in_reply_to": "x"}
    assert isinstance(first.created_at, float)
    assert ids(store.recent(None, 2)) == ["b:1:1", "a:1:2"]  # all rooms: the last two
    assert ids(store.recent(None, 100)) == ["a:1:1", "b:1:1", "a:1:2"]
    assert store.recent("nowhere", 10) == []
    store.close()


def test_duplicate_id_is_an_integrity_error_and_changes_nothing(tmp_path: Path) -> None:
    store = MemoryStore(tmp_path, RetentionConfig(max_per_room=2))
    store.add("m1", "r", "e", "in", msg("one"))
    store.add("m2", "r", "e", "in", msg("two"))
    with pytest.raises(sqlite3.IntegrityError):
        store.add("m1", "r", "e", "in", msg("again"))  # with the ring full: in a transaction
    assert (store.rows, store.count("r"), store.evicted) == (2, 2, 0)
    store.add("m3", "r", "e", "in", msg("three"))
    assert ids(store.recent("r", 10)) == ["m2", "m3"]
    assert (store.rows, store.evicted) == (2, 1)
    store.close()


def test_note_direction_and_free_form_content(tmp_path: Path) -> None:
    store = MemoryStore(tmp_path)
    store.add("n1", "lobby", "agent", "note", {"kind": "fact", "facts": ["a", 1, None]})
    [note] = store.recent("lobby", 1)
    assert note.direction == "note"
    assert note.content == {"kind": "fact", "facts": ["a", 1, None]}
    with pytest.raises(ValueError, match="direction"):
        store.add("n2", "lobby", "agent", "sideways", msg("x"))
    # The CHECK constraint holds even for a write that bypasses the Python check.
    with pytest.raises(sqlite3.IntegrityError), closing(sqlite3.connect(store.path)) as db:
        db.execute("INSERT INTO memories VALUES ('n3', 'lobby', 'agent', 'sideways', '{}', 0)")
    assert store.rows == 1
    store.close()


# -- count and search -----------------------------------------------------------------------


def test_count(tmp_path: Path) -> None:
    store = MemoryStore(tmp_path)
    assert store.count() == 0
    assert store.count("r1") == 0
    for i in range(5):
        store.add(f"a{i}", "r1", "e", "in", msg("x"))
    for i in range(3):
        store.add(f"b{i}", "r2", "e", "out", msg("y"))
    assert (store.count(), store.count("r1"), store.count("r2"), store.count("r3")) == (8, 5, 3, 0)
    assert store.count() == store.rows == len(db_rows(store))
    store.close()


def test_search(tmp_path: Path) -> None:
    clock = FakeClock()
    store = MemoryStore(tmp_path, clock=clock)
    store.add("m1", "r1", "e", "in", msg("the cat sat"))
    clock.advance(1)
    store.add("m2", "r2", "e", "in", msg("a Cat again"))
    clock.advance(1)
    store.add("m3", "r1", "e", "out", msg("concatenate"))
    clock.advance(1)
    store.add("m4", "r1", "e", "note", {"kind": "cat", "note": "cat"})  # no "text" field
    store.add("m5", "r1", "e", "note", {"text": 42})  # "text" not a string
    store.add("m6", "r1", "e", "in", msg("100% of_the cats"))

    assert ids(store.search("cat")) == ["m6", "m3", "m1"]  # newest first, case-sensitive
    assert ids(store.search("cat", room="r1")) == ["m6", "m3", "m1"]
    assert ids(store.search("Cat", room="r2")) == ["m2"]
    assert ids(store.search("cat", limit=2)) == ["m6", "m3"]
    assert store.search("cat", limit=0) == []
    assert ids(store.search("% of_")) == ["m6"]  # no LIKE wildcards
    assert store.search("dog") == []
    assert store.search("cat", room="r3") == []
    assert store.search("cat")[0].content == msg("100% of_the cats")
    with pytest.raises(ValueError, match="limit"):
        store.search("cat", limit=-1)
    store.close()


# -- rooms, entities, participants ----------------------------------------------------------


def test_ensure_room_is_idempotent(tmp_path: Path) -> None:
    store = MemoryStore(tmp_path)
    assert store.rooms() == []
    assert store.participants("lobby") == []
    for _ in range(3):
        store.ensure_room("lobby", "group", ["bob", "alice"])
    store.ensure_room("dm", "dm", ["alice", "carol"])
    assert store.rooms() == ["dm", "lobby"]
    assert store.participants("lobby") == ["alice", "bob"]
    assert store.participants("dm") == ["alice", "carol"]
    # Members are only ever added; the channel follows the latest call.
    store.ensure_room("lobby", "world", ["dave"])
    assert store.participants("lobby") == ["alice", "bob", "dave"]
    assert store.room_channel("lobby") == "world"
    assert store.room_channel("nowhere") is None
    with closing(sqlite3.connect(store.path)) as db:
        entities = [r[0] for r in db.execute("SELECT id FROM entities ORDER BY id")]
        (participants,) = db.execute("SELECT count(*) FROM participants").fetchone()
    assert entities == ["alice", "bob", "carol", "dave"]
    assert participants == 5
    with pytest.raises(TypeError, match="sequence"):
        store.ensure_room("lobby", "group", "alice")
    store.close()

    reopened = MemoryStore(tmp_path)
    reopened.ensure_room("lobby", "world", ["alice"])
    assert reopened.rooms() == ["dm", "lobby"]
    assert reopened.participants("lobby") == ["alice", "bob", "dave"]
    reopened.close()


def test_ensure_entity(tmp_path: Path) -> None:
    store = MemoryStore(tmp_path)
    store.ensure_entity("alice")
    assert store.entity_name("alice") is None
    store.ensure_entity("alice", "Alice")
    store.ensure_entity("alice")  # None keeps the name
    assert store.entity_name("alice") == "Alice"
    store.ensure_room("lobby", "group", ["alice"])  # does not clear the name either
    assert store.entity_name("alice") == "Alice"
    store.ensure_entity("alice", "Alice B.")
    assert store.entity_name("alice") == "Alice B."
    assert store.entity_name("nobody") is None
    store.close()


# -- retention by count ---------------------------------------------------------------------


def test_store_without_retention_keeps_everything(tmp_path: Path) -> None:
    store = MemoryStore(tmp_path)
    for i in range(1_000):
        store.add(f"m{i}", f"r{i % 3}", "e", "in", msg(str(i)))
    assert (store.rows, store.evicted) == (1_000, 0)
    assert store.prune() == 0
    assert len(db_rows(store)) == 1_000
    assert db_counts(store) == {"r0": 334, "r1": 333, "r2": 333}
    store.close()


def test_retention_by_count_holds_per_room(tmp_path: Path) -> None:
    bound = 10
    store = MemoryStore(tmp_path, RetentionConfig(max_per_room=bound))
    # Uneven traffic: r0 gets many inserts, r1 some, r2 fewer than the bound.
    plan = ["r0"] * 500 + ["r1"] * 37 + ["r2"] * 4
    sent: dict[str, list[str]] = {}
    for i, room in enumerate(plan):
        memory_id = f"{room}-{i}"
        store.add(memory_id, room, "e", "in", msg(memory_id))
        sent.setdefault(room, []).append(memory_id)
        assert store.count(room) == min(len(sent[room]), bound)  # after every insert
    counts = db_counts(store)
    assert counts == {"r0": bound, "r1": bound, "r2": 4}
    for room, room_ids in sent.items():
        assert ids(store.recent(room, 100)) == room_ids[-bound:]  # the newest kept, in order
    assert store.rows == len(db_rows(store)) == 2 * bound + 4
    assert store.evicted == len(plan) - store.rows == (500 - bound) + (37 - bound)
    store.close()


def test_retention_by_count_interleaved_rooms(tmp_path: Path) -> None:
    store = MemoryStore(tmp_path, RetentionConfig(max_per_room=3))
    for i in range(100):
        store.add(f"m{i}", f"r{i % 4}", "e", "in", msg(str(i)))
    assert db_counts(store) == {f"r{k}": 3 for k in range(4)}
    assert ids(store.recent("r1", 10)) == ["m89", "m93", "m97"]
    assert ids(store.recent(None, 4)) == ["m96", "m97", "m98", "m99"]
    assert (store.rows, store.evicted) == (12, 88)
    store.close()


def test_reopen_keeps_counts_and_ring(tmp_path: Path) -> None:
    retention = RetentionConfig(max_per_room=5)
    store = MemoryStore(tmp_path, retention)
    for i in range(8):
        store.add(f"a{i}", "ra", "e", "in", msg(str(i)))
    for i in range(3):
        store.add(f"b{i}", "rb", "e", "in", msg(str(i)))
    store.close()

    again = MemoryStore(tmp_path, retention)
    assert (again.rows, again.evicted) == (8, 0)  # evicted counts this opening only
    assert (again.count("ra"), again.count("rb")) == (5, 3)
    for i in range(8, 12):
        again.add(f"a{i}", "ra", "e", "in", msg(str(i)))
    for i in range(3, 5):
        again.add(f"b{i}", "rb", "e", "in", msg(str(i)))
    assert ids(again.recent("ra", 10)) == [f"a{i}" for i in range(7, 12)]
    assert ids(again.recent("rb", 10)) == [f"b{i}" for i in range(5)]
    assert (again.rows, again.evicted) == (10, 4)
    assert again.rows == len(db_rows(again))
    again.close()

    # Reopening with a lower bound trims at once; without retention nothing more goes.
    tighter = MemoryStore(tmp_path, RetentionConfig(max_per_room=2))
    assert (tighter.rows, tighter.evicted) == (4, 6)
    assert ids(tighter.recent("ra", 10)) == ["a10", "a11"]
    tighter.add("a12", "ra", "e", "in", msg("12"))
    assert ids(tighter.recent("ra", 10)) == ["a11", "a12"]
    tighter.close()
    unbounded = MemoryStore(tmp_path)
    assert (unbounded.rows, unbounded.count("ra"), unbounded.count("rb")) == (4, 2, 2)
    unbounded.close()


# -- retention by age -----------------------------------------------------------------------


def test_retention_by_age_with_injected_clock(tmp_path: Path) -> None:
    clock = FakeClock()
    store = MemoryStore(tmp_path, RetentionConfig(max_age_s=10.0), clock=clock)
    for i in range(5):
        store.add(f"old{i}", "r1", "e", "in", msg("old"))
    store.add("old-r2", "r2", "e", "in", msg("old"))
    clock.advance(6)
    for i in range(3):
        store.add(f"mid{i}", "r1", "e", "in", msg("mid"))
    assert (store.rows, store.evicted) == (9, 0)

    clock.advance(5)  # the first batch is 11 s old, the second 5 s
    # A read never returns expired rows.
    assert ids(store.recent("r1", 100)) == ["mid0", "mid1", "mid2"]
    assert store.count("r2") == 0
    assert (store.rows, store.evicted) == (3, 6)
    assert sorted(r[0] for r in db_rows(store)) == ["mid0", "mid1", "mid2"]

    # The insert path sweeps too (no read in between).
    clock.advance(6)
    store.add("new", "r1", "e", "in", msg("new"))
    assert [r[0] for r in db_rows(store)] == ["new"]
    assert (store.rows, store.evicted) == (1, 9)
    assert store.count() == 1
    store.close()


def test_age_sweep_on_insert_is_throttled_but_bounded(tmp_path: Path) -> None:
    """With a steady stream the insert path sweeps at most once per interval (1 s here), and
    no row outlives max_age by more than that interval."""
    clock = FakeClock(0.0)
    max_age = 10.0
    store = MemoryStore(tmp_path, RetentionConfig(max_age_s=max_age), clock=clock)
    sweeps = 0
    real_sweep = store._sweep

    def counting_sweep(db: sqlite3.Connection, now: float) -> None:
        nonlocal sweeps
        sweeps += 1
        real_sweep(db, now)

    store._sweep = counting_sweep  # type: ignore[method-assign]
    step = 0.01
    for i in range(6_000):  # 60 s of the clock, 100 inserts per second
        store.add(f"m{i}", "r", "e", "in", msg(str(i)))
        oldest = min(created for _, _, created in db_rows(store)) if i % 500 == 0 else None
        if oldest is not None:
            assert clock.now - oldest <= max_age + 1.0 + step
        clock.advance(step)
    assert 45 <= sweeps <= 52  # about once per second after the first 10 s
    assert store.rows == len(db_rows(store))
    assert store.rows + store.evicted == 6_000
    assert store.rows <= (max_age + 1.0) / step + 1
    store.close()


def test_retention_by_age_applies_on_reopen(tmp_path: Path) -> None:
    clock = FakeClock()
    store = MemoryStore(tmp_path, clock=clock)
    store.add("a", "r", "e", "in", msg("a"))
    clock.advance(100)
    store.add("b", "r", "e", "in", msg("b"))
    store.close()
    clock.advance(1)
    aged = MemoryStore(tmp_path, RetentionConfig(max_age_s=50), clock=clock)
    assert (aged.rows, aged.evicted) == (1, 1)
    assert ids(aged.recent(None, 10)) == ["b"]
    aged.close()


def test_clock_stepping_back_does_not_evict_the_newest(tmp_path: Path) -> None:
    clock = FakeClock(100.0)
    store = MemoryStore(tmp_path, RetentionConfig(max_per_room=2), clock=clock)
    store.add("m1", "r", "e", "in", msg("1"))
    store.add("m2", "r", "e", "in", msg("2"))
    clock.now = 50.0  # wall clock stepped back
    store.add("m3", "r", "e", "in", msg("3"))
    assert ids(store.recent("r", 10)) == ["m2", "m3"]
    created = [m.created_at for m in store.recent("r", 10)]
    assert created == sorted(created)
    store.close()


# -- both bounds together -------------------------------------------------------------------


def test_retention_by_count_and_age(tmp_path: Path) -> None:
    clock = FakeClock()
    store = MemoryStore(tmp_path, RetentionConfig(max_per_room=4, max_age_s=30.0), clock=clock)
    for i in range(20):  # one per second: count bound applies first
        store.add(f"a{i}", "ra", "e", "in", msg(str(i)))
        clock.advance(1)
    store.add("b0", "rb", "e", "in", msg("b"))
    assert ids(store.recent("ra", 10)) == ["a16", "a17", "a18", "a19"]
    assert (store.rows, store.evicted) == (5, 16)

    clock.advance(20)  # ra's rows are 21-24 s old, rb's 20 s: all under 30 s
    store.add("b1", "rb", "e", "in", msg("b"))
    assert (store.count("ra"), store.count("rb")) == (4, 2)

    clock.advance(8)  # a16 and a17 are now over 30 s old; a18 is exactly 30 s
    assert ids(store.recent("ra", 10)) == ["a18", "a19"]
    assert (store.rows, store.evicted) == (4, 18)

    # The ring stays right after an age sweep shrank it: new inserts evict the right rows.
    for i in range(20, 25):
        store.add(f"a{i}", "ra", "e", "in", msg(str(i)))
    assert ids(store.recent("ra", 10)) == ["a21", "a22", "a23", "a24"]
    assert db_counts(store) == {"ra": 4, "rb": 2}
    assert (store.rows, store.evicted) == (6, 21)

    clock.advance(1_000)
    assert store.count() == 0
    assert db_rows(store) == []
    assert (store.rows, store.evicted) == (0, 27)
    store.add("c0", "ra", "e", "in", msg("fresh"))  # an emptied store starts over cleanly
    assert ids(store.recent(None, 10)) == ["c0"]
    assert store.rows == 1
    store.close()


# -- schema migration -----------------------------------------------------------------------


def test_old_schema_is_migrated_to_allow_notes(tmp_path: Path) -> None:
    path = tmp_path / MemoryStore.FILENAME
    with closing(sqlite3.connect(path)) as db:
        db.executescript(
            """
            CREATE TABLE memories (
                id TEXT PRIMARY KEY, room TEXT NOT NULL, entity TEXT NOT NULL,
                direction TEXT NOT NULL CHECK (direction IN ('in', 'out')),
                content TEXT NOT NULL, created_at REAL NOT NULL
            );
            CREATE INDEX memories_room ON memories (room, created_at);
            INSERT INTO memories VALUES ('m1', 'r', 'e', 'in', '{"text": "one"}', 1.0);
            INSERT INTO memories VALUES ('m2', 'r', 'e', 'out', '{"text": "two"}', 2.0);
            """
        )
    store = MemoryStore(tmp_path, RetentionConfig(max_per_room=2))
    store.add("n1", "r", "agent", "note", {"text": "three"})
    assert ids(store.recent("r", 10)) == ["m2", "n1"]
    assert (store.rows, store.evicted) == (2, 1)
    store.close()


# -- lifecycle ------------------------------------------------------------------------------


def test_close_twice_and_use_after_close(tmp_path: Path) -> None:
    store = MemoryStore(tmp_path)
    store.add("m1", "r", "e", "in", msg("x"))
    store.close()
    store.close()  # a second close is a no-op
    assert store.closed
    assert (store.rows, store.evicted) == (1, 0)  # still readable for the final stats
    calls: list[Callable[[], object]] = [
        lambda: store.add("m2", "r", "e", "in", msg("y")),
        lambda: store.recent("r", 1),
        lambda: store.search("x"),
        lambda: store.count(),
        lambda: store.prune(),
        lambda: store.ensure_room("r", "group", ["e"]),
        lambda: store.ensure_entity("e"),
        lambda: store.rooms(),
        lambda: store.participants("r"),
    ]
    for call in calls:
        with pytest.raises(StoreClosedError, match="is closed"):
            call()
    assert issubclass(StoreClosedError, RuntimeError)


def test_context_manager_closes(tmp_path: Path) -> None:
    with MemoryStore(tmp_path) as store:
        store.add("m1", "r", "e", "in", msg("x"))
    assert store.closed


def test_usable_from_another_thread(tmp_path: Path) -> None:
    """Sync plugin code runs in an executor thread and writes through the runtime."""
    store = MemoryStore(tmp_path, RetentionConfig(max_per_room=50))
    errors: list[BaseException] = []

    def writer(tag: str) -> None:
        try:
            for i in range(200):
                store.add(f"{tag}{i}", tag, "e", "in", msg(str(i)))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in ("x", "y", "z")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert db_counts(store) == {"x": 50, "y": 50, "z": 50}
    assert (store.rows, store.evicted) == (150, 450)
    store.close()
