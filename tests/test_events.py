"""The event log alone: typed events, indexed delivery, standing waits, bounded storage.

Pure logic with synthetic events (no agents); the log's ring holds one event in most tests, to
show that nothing correct depends on its size.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import jsonschema
import pytest

from orchestrator.events import (
    EVENT_KINDS,
    EVENT_TYPES,
    AgentCrashed,
    Event,
    EventLog,
    EventStorage,
    MessageDelivered,
    MessageSent,
    RunStarted,
    StateChanged,
    Tap,
    WireRejected,
    events_schema,
    read_events,
)
from orchestrator.judge.matching import MessageFilter


def sent(agent: str, text: str, room: str = "r", msg_id: str | None = None) -> MessageSent:
    return MessageSent(
        agent=agent, msg_id=msg_id or f"{agent}:{text}", room=room, text=text, origin="agent"
    )


def delivered(agent: str, msg_id: str, sender: str, room: str = "r") -> MessageDelivered:
    return MessageDelivered(
        agent=agent, msg_id=msg_id, sender=sender, room=room, attempts=1, latency_ms=0.5
    )


def test_every_kind_has_a_unique_tag_and_round_trips_through_the_file(tmp_path: Path) -> None:
    assert len(EVENT_KINDS) == len(EVENT_TYPES)
    log = EventLog(tmp_path / "events.jsonl", capacity=1)
    log.emit(RunStarted(scenario="s", file="f.yaml", endpoint="ipc://x"))
    log.emit(sent("a", "hello \u2603"))
    log.emit(StateChanged(agent="a", path="x.y", value={"n": [1, 2]}, previous=None))
    log.emit(AgentCrashed(agent="a", pid=7, returncode=None, signal="SIGKILL", escalation=None))
    log.close()
    back = list(read_events(tmp_path / "events.jsonl"))
    assert [type(e) for e in back] == [RunStarted, MessageSent, StateChanged, AgentCrashed]
    assert [e.id for e in back] == [1, 2, 3, 4]
    assert isinstance(back[1], MessageSent) and back[1].text == "hello \u2603"
    first = json.loads((tmp_path / "events.jsonl").read_text().splitlines()[0])
    assert list(first)[:4] == ["kind", "id", "t", "agent"]  # the shared fields lead each line


def test_each_line_validates_against_the_exported_schema(tmp_path: Path) -> None:
    schema = events_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    log = EventLog(tmp_path / "events.jsonl")
    log.emit(sent("a", "x"))
    log.emit(delivered("b", "a:x", "a"))
    log.emit(WireRejected(reason="bad_body", detail="Msg.text", by="coordinator"))
    log.close()
    for line in (tmp_path / "events.jsonl").read_text().splitlines():
        jsonschema.validate(json.loads(line), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"kind": "message.sent", "id": 1, "t": 0.0, "agent": "a"}, schema)


def test_listeners_get_only_the_kinds_and_agent_they_subscribed_to(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "e.jsonl", capacity=1)
    any_sent: list[Event] = []
    from_b: list[Event] = []
    everything: list[Event] = []
    log.subscribe(any_sent.append, (MessageSent,))
    subscription = log.subscribe(from_b.append, (MessageSent,), agent="b")
    log.subscribe(everything.append)
    log.emit(sent("a", "1"))
    log.emit(sent("b", "2"))
    log.emit(delivered("b", "a:1", "a"))
    subscription.close()
    log.emit(sent("b", "3"))
    assert [e.id for e in any_sent] == [1, 2, 4]
    assert [e.id for e in from_b] == [2]
    assert [e.id for e in everything] == [1, 2, 3, 4]
    assert log.counts == {"message.sent": 3, "message.delivered": 1}
    log.close()


def test_summary_storage_leaves_out_per_message_events_and_counts_them(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "e.jsonl", storage=EventStorage.SUMMARY)
    log.emit(sent("a", "1"))
    log.emit(delivered("b", "a:1", "a"))
    log.emit(AgentCrashed(agent="a", pid=1, returncode=1, signal=None, escalation=None))
    log.close()
    kinds = [json.loads(line)["kind"] for line in (tmp_path / "e.jsonl").open()]
    assert kinds == ["agent.crashed"]
    assert log.omitted == {"message.sent": 1, "message.delivered": 1}
    assert log.counts["message.sent"] == 1


def test_off_storage_writes_no_file(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "e.jsonl", storage=EventStorage.OFF)
    seen: list[Event] = []
    log.subscribe(seen.append)
    log.emit(sent("a", "1"))
    log.close()
    assert not (tmp_path / "e.jsonl").exists()
    assert len(seen) == 1 and log.omitted == {"message.sent": 1}


def test_the_size_cap_bounds_the_file(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "e.jsonl", max_bytes=64 * 1024)
    for i in range(20_000):
        log.emit(sent("a", f"message {i}"))
        if i % 10 == 0:  # the summary's own events fill the rest of the cap
            log.emit(AgentCrashed(agent="a", pid=1, returncode=1, signal=None, escalation=None))
    log.close()
    size = (tmp_path / "e.jsonl").stat().st_size
    assert log.summary_from is not None and log.full_from is not None
    assert log.summary_from < log.full_from
    assert size <= 64 * 1024 + 300  # within one line of the cap, ending on a whole line
    lines = [json.loads(line) for line in (tmp_path / "e.jsonl").open()]
    # Past 90% of the cap only the summary (a crash, not messages); past the cap nothing.
    assert all(e["kind"] != "message.sent" for e in lines if e["id"] >= log.summary_from)
    assert max(e["id"] for e in lines) < log.full_from
    written = sum(1 for e in lines if e["kind"] == "message.sent")
    assert written + log.omitted["message.sent"] == 20_000


def test_rejected_frames_are_rate_limited_in_the_file_and_counted_exactly(
    tmp_path: Path,
) -> None:
    log = EventLog(tmp_path / "e.jsonl")
    seen: list[Event] = []
    log.subscribe(seen.append, (WireRejected,))
    for _ in range(10_000):
        log.emit(WireRejected(reason="malformed", detail="junk", by="coordinator"))
    log.emit(WireRejected(reason="bad_body", detail="junk", by="coordinator"))
    # Limited where it is emitted: a flood is not 10,000 events in the ring and to listeners.
    assert len(seen) == 2 and log.last_id == 2
    log.close()
    lines = [json.loads(line) for line in (tmp_path / "e.jsonl").open()]
    malformed = [e for e in lines if e["reason"] == "malformed"]
    # The first one, then one summary line at the end with what was held back.
    assert [e["summary"] for e in malformed] == [False, True]
    assert sum(e["suppressed"] for e in malformed) + 1 == 10_000
    assert log.counts["wire.rejected"] == 10_002  # the summary line is an event too
    ids = [e["id"] for e in lines]
    assert ids == sorted(set(ids))  # every line its own id
    assert (tmp_path / "e.jsonl").stat().st_size < 2_000


def test_a_listener_that_raises_costs_nobody_else_their_event(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "e.jsonl", capacity=1)
    seen: list[int] = []

    def broken(event: Event) -> None:
        raise RecursionError("deep")

    log.subscribe(broken, (MessageSent,))
    log.subscribe(lambda e: seen.append(e.id), (MessageSent,))
    log.emit(sent("a", "1"))
    log.emit(sent("a", "2"))
    assert seen == [1, 2]
    assert len(log.listener_errors) == 2
    assert "RecursionError: deep" in log.listener_errors[0]
    log.close()


def test_events_emitted_by_a_listener_come_after_the_event_being_handed_out(
    tmp_path: Path,
) -> None:
    log = EventLog(tmp_path / "e.jsonl", capacity=1)
    order: list[tuple[str, int]] = []

    def stopper(event: MessageSent) -> None:
        order.append(("stopper", event.id))
        if event.text == "stop":
            log.emit(StateChanged(agent="a", path="p", value=1, previous=None))

    log.subscribe(stopper, (MessageSent,))
    log.subscribe(lambda e: order.append(("any", e.id)), (MessageSent, StateChanged))
    log.subscribe(lambda e: order.append(("from a", e.id)), (MessageSent,), agent="a")
    log.emit(sent("a", "stop"))
    assert order == [("stopper", 1), ("any", 1), ("from a", 1), ("any", 2)]
    log.close()


def test_until_is_level_triggered(tmp_path: Path) -> None:
    async def scenario() -> None:
        log = EventLog(tmp_path / "e.jsonl", capacity=1)
        loop = asyncio.get_running_loop()
        loop.call_soon(log.emit, sent("a", "1"))
        loop.call_soon(log.emit, sent("a", "2"))
        await log.until(lambda: log.counts["message.sent"] >= 2, (MessageSent,), 5)
        await log.until(lambda: True, (MessageSent,), 0)  # already true: no wait at all
        with pytest.raises(TimeoutError):
            await log.until(lambda: log.counts["message.sent"] >= 3, (MessageSent,), 0.05)
        log.close()

    asyncio.run(scenario())


def test_a_tap_finds_a_match_that_came_before_the_wait_and_consumes_in_order(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        log = EventLog(tmp_path / "e.jsonl", capacity=1)
        cursor = [0]
        tap = Tap(log, MessageFilter(sender="bot", contains="pong"), lambda: cursor[0])
        log.emit(sent("bot", "pong 1"))
        log.emit(sent("user", "pong 2"))  # not from bot: never offered to the tap
        log.emit(sent("bot", "pong 3"))
        first = await tap.next_after(cursor[0], 1)
        assert first == 1  # it came before anyone waited, and the ring has moved on
        cursor[0] = first
        second = await tap.next_after(cursor[0], 1)
        assert second == 3
        cursor[0] = second
        loop = asyncio.get_running_loop()
        loop.call_later(0.01, log.emit, sent("bot", "pong 4"))
        third = await tap.next_after(cursor[0], 5)
        assert third == 4 and isinstance(log.ring[-1], MessageSent)
        assert log.ring[-1].text == "pong 4"
        with pytest.raises(TimeoutError):
            await tap.next_after(third, 0.02)
        tap.close()
        log.close()

    asyncio.run(scenario())


def test_a_tap_keeps_only_what_its_timeline_may_still_ask_for(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "e.jsonl", capacity=1)
    cursor = [0]
    tap = Tap(log, MessageFilter(sender="bot"), lambda: cursor[0])
    for i in range(1, 100_001):
        log.emit(sent("bot", f"m{i}"))
        cursor[0] = log.last_id  # the timeline moves on (another wait of it matched)
    assert tap.held <= 1
    tap.close()
    log.close()


def test_a_message_to_someone_is_its_delivery_to_them(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "e.jsonl", capacity=1)
    to_bob = MessageFilter(to="bob", contains="hi")
    matched: list[Event] = []
    for cls, agent in to_bob.index_keys():
        log.subscribe(lambda e: matched.append(e) if to_bob(e) else None, (cls,), agent)
    log.emit(sent("alice", "hi bob", msg_id="m1"))  # sent, not yet received
    assert matched == []
    log.emit(delivered("carol", "m1", "alice"))  # someone else got it
    log.emit(delivered("bob", "m1", "alice"))
    log.emit(delivered("bob", "m1", "alice"))  # the same delivery again counts once
    log.emit(delivered("bob", "m2", "alice"))  # never sent as matching
    assert [e.id for e in matched] == [3]
    log.close()


def test_every_kind_is_documented_in_reports_md() -> None:
    text = (Path(__file__).resolve().parent.parent / "docs" / "reports.md").read_text()
    missing = [kind for kind in EVENT_KINDS if f"`{kind}`" not in text]
    assert missing == []
