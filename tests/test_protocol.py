"""The wire format: every kind round-trips, and any bad input is a DecodeError with its reason.

Decoding runs on every frame from every peer, so besides the round trips for one representative
body per model (every Cmd variant, every enum value), hypothesis throws arbitrary bytes, mutated
valid frames, tampered headers and arbitrary msgpack structures at it: the only exception it may
ever raise is `DecodeError`.
"""

from __future__ import annotations

import contextlib
import typing
from collections.abc import Callable
from functools import partial

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import JsonValue

from protocol import (
    BODY_MODELS,
    MAX_FRAME_BYTES,
    MAX_ID_BYTES,
    PROTOCOL_VERSION,
    Ack,
    ActionFinished,
    ActionStarted,
    AgentConfig,
    AgentErrorEvent,
    AgentErrorKind,
    AgentStats,
    Bye,
    ChannelType,
    Cmd,
    CmdAction,
    CmdGetState,
    CmdPending,
    CmdQueryMemory,
    CmdSend,
    CmdSetState,
    CmdTrace,
    Configure,
    DecodeError,
    EncodeError,
    Err,
    Event,
    Header,
    Hello,
    Kind,
    Msg,
    Origin,
    Ping,
    PluginEvent,
    Pong,
    Ready,
    RejectReason,
    Result,
    RoomConfig,
    RuleConfig,
    RulesModelConfig,
    StateChanged,
    Stop,
    WireModel,
    decode_body,
    decode_frames,
    decode_header,
    encode_body,
    split_frames,
)
from protocol.bodies import KIND_OF, Command
from protocol.packing import pack, unpack

U64 = (1 << 64) - 1
FAST = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

NESTED: dict[str, JsonValue] = {
    "list": [1, -2, 2.5, "three", None, True, False, [], {}],
    "map": {"deep": {"deeper": [{"k": "v"}, [1, [2, [3]]]]}, "empty": {}},
    "big": U64,
    "negative": -(1 << 63),
    "unicode": "h\u00e9llo \u2603 \U0001f600",
}

HELLO = Hello(agent_id="alice", pid=4242, protocol_version=PROTOCOL_VERSION, python="3.11.9",
              pyzmq="26.0.3", inbox_capacity=16)
CONFIGURE = Configure(
    config=AgentConfig(
        agent_id="alice",
        agent_dir="/tmp/run/alice",
        model=RulesModelConfig(rules=[
            RuleConfig(contains="hi", reply="hello {sender}"),
            RuleConfig(regex=r"^ping\s*$", reply="pong"),
            RuleConfig(reply="fallback"),
        ]),
        rooms=[
            RoomConfig(id="hall", channel=ChannelType.GROUP, members=["alice", "bob", "c.d"]),
            RoomConfig(id="dm:alice@bob", channel=ChannelType.DM, members=["alice", "bob"]),
        ],
    )
)
READY = Ready(pid=4242, store_path="/tmp/run/alice/store.sqlite")
MSG = Msg(msg_id="m-1", sender="alice", room="hall", text="hi \u2603", origin=Origin.SCRIPT)
CMD_SEND = Cmd(command=CmdSend(room="hall", text="hello all"))
CMD_SET = Cmd(command=CmdSetState(path="mood.level", value=NESTED))
CMD_QUERY = Cmd(command=CmdQueryMemory(room="hall", limit=10_000))
RESULT = Result(ok=True, value=NESTED)
EVENT = Event(event=PluginEvent(name="custom.thing", data={"action": "send", "detail": NESTED}))
ACTION_DONE = Event(
    event=ActionFinished(
        type="action.failed", action="DIVIDE", call_id="a:1", params={"a": 1.5, "b": NESTED},
        origin="script", msg_id="a:1:script-1", room="hall", status="error",
        error="ZeroDivisionError", duration_ms=0.25, result=None,
    )
)
ACK = Ack(credit=0)
PONG = Pong(echo_ns=U64)
STOP = Stop(deadline_ms=0)
BYE = Bye(stats=AgentStats(messages_in=10, messages_out=9, commands=3, handler_errors=1,
                           duplicates_dropped=2, retries=4, dead_letters=0, rejected_frames=1,
                           store_rows=19, inbox_peak=7, state=NESTED), undelivered=2)
ERR = Err(reason="bad_body", detail="Msg.text: Input should be a valid string")

SAMPLES: list[WireModel] = [
    HELLO,
    CONFIGURE,
    Configure(config=AgentConfig(agent_id="a", agent_dir="d")),  # every default
    READY,
    MSG,
    Msg(msg_id="m-2", sender="bob", room="hall", text="", origin=Origin.AGENT, in_reply_to="m-1"),
    CMD_SEND,
    CMD_SET,
    Cmd(command=CmdSetState(path="", value=None)),
    Cmd(command=CmdGetState(path="mood")),
    Cmd(command=CmdGetState()),
    CMD_QUERY,
    Cmd(command=CmdQueryMemory()),
    Cmd(command=CmdAction(name="CREATE_TODO", params={"title": "milk", "n": [1]}, room="hall")),
    Cmd(command=CmdAction(name="NONE")),
    Cmd(command=CmdTrace(step="start", frames=25)),
    Cmd(command=CmdTrace(step="report", top=3)),
    Cmd(command=CmdPending()),
    Cmd(command=CmdSend(room="hall", text="again?", key="script[0]#7")),
    RESULT,
    Result(ok=True, value=[1, 2.5, "x", None, {"a": [True]}]),
    Result(ok=False, error="no such path"),
    EVENT,
    Event(event=PluginEvent(name="empty")),
    ACTION_DONE,
    Event(event=ActionStarted(action="NONE", call_id="a:2", origin="model", msg_id="m", room="r")),
    Event(event=StateChanged(path="a.b", value=NESTED, previous=None)),
    Event(event=AgentErrorEvent(kind=AgentErrorKind.MODEL, where="model", error="boom")),
    ACK,
    Ack(credit=1024),
    Ack(credit=3, progress=123, doing="action WEDGE", doing_ms=4200),
    Ping(),
    PONG,
    STOP,
    Stop(deadline_ms=2500, reason="fault injected"),
    BYE,
    Bye(stats=AgentStats()),
    ERR,
]


def _header(kind: Kind, **changes: typing.Any) -> Header:
    header = Header(PROTOCOL_VERSION, kind, "alice", "coordinator", 3, 17, 16, 5, 123_456_789)
    return header._replace(**changes)


def _frames(body: WireModel) -> list[bytes]:
    return [_header(KIND_OF[type(body)]).encode(), encode_body(body)]


VALID_FRAMES = [_frames(body) for body in SAMPLES]
VALID_HEADER_FIELDS: list[object] = list(unpack(VALID_FRAMES[0][0]))  # type: ignore[call-overload]


def _reason(fn: Callable[[], object]) -> RejectReason:
    with pytest.raises(DecodeError) as info:
        fn()
    assert isinstance(info.value.reason, RejectReason)
    assert str(info.value).startswith(info.value.reason.value)
    return info.value.reason


# -- round trips ------------------------------------------------------------------------------


def test_samples_cover_every_kind_model_and_variant() -> None:
    assert {type(b) for b in SAMPLES} == set(BODY_MODELS.values())
    assert set(BODY_MODELS) == set(Kind)
    union = typing.get_args(Command)[0]
    variants = {type(b.command) for b in SAMPLES if isinstance(b, Cmd)}
    assert variants == set(typing.get_args(union))
    msgs = [b for b in SAMPLES if isinstance(b, Msg)]
    assert {m.origin for m in msgs} == set(Origin)
    rooms = [r for b in SAMPLES if isinstance(b, Configure) for r in b.config.rooms]
    assert {r.channel for r in rooms} == set(ChannelType)


@pytest.mark.parametrize("body", SAMPLES, ids=lambda b: type(b).__name__)
def test_round_trip(body: WireModel) -> None:
    kind = KIND_OF[type(body)]
    header = _header(kind)
    got_header, got_body = decode_frames([header.encode(), encode_body(body)])
    assert got_header == header
    assert type(got_header.kind) is Kind
    assert type(got_body) is type(body)
    assert got_body == body
    assert decode_body(kind, encode_body(body)) == body
    split_header, raw = split_frames([header.encode(), encode_body(body)])
    assert split_header == header
    assert raw == encode_body(body)


def test_round_trip_keeps_enum_types() -> None:
    msg = decode_body(Kind.MSG, encode_body(MSG))
    assert isinstance(msg, Msg)
    assert type(msg.origin) is Origin
    conf = decode_body(Kind.CONFIGURE, encode_body(CONFIGURE))
    assert isinstance(conf, Configure)
    assert [type(r.channel) for r in conf.config.rooms] == [ChannelType, ChannelType]


@pytest.mark.parametrize("kind", list(Kind), ids=lambda k: k.name)
def test_header_round_trip_extremes(kind: Kind) -> None:
    for header in (
        _header(kind, incarnation=0, seq=0, ack=0, corr=0, sent_ns=0),
        _header(kind, incarnation=U64, seq=U64, ack=U64, corr=U64, sent_ns=U64),
        _header(kind, src="x" * MAX_ID_BYTES, dst="\u00e9" * (MAX_ID_BYTES // 2)),
    ):
        assert decode_header(header.encode()) == header


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 63), max_value=U64)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20,
)
ids = st.from_regex(r"\A[A-Za-z0-9_.:@-]{1,64}\Z")


@FAST
@given(
    value=json_values,
    text=st.text(),
    room=ids,
    sender=ids,
    origin=st.sampled_from(Origin),
    header=st.builds(
        Header,
        version=st.just(PROTOCOL_VERSION),
        kind=st.sampled_from(Kind),
        src=st.text(min_size=1, max_size=16),
        dst=st.text(min_size=1, max_size=16),
        incarnation=st.integers(0, U64),
        seq=st.integers(0, U64),
        ack=st.integers(0, U64),
        corr=st.integers(0, U64),
        sent_ns=st.integers(0, U64),
    ),
)
def test_round_trip_generated(
    value: object, text: str, room: str, sender: str, origin: Origin, header: Header
) -> None:
    assert decode_header(header.encode()) == header
    bodies: list[WireModel] = [
        Msg(msg_id=text, sender=sender, room=room, text=text, origin=origin, in_reply_to=text),
        Result(ok=True, value=value),  # type: ignore[arg-type]
        Event(event=PluginEvent(name=sender, data={"v": value, text: [value]})),  # type: ignore[dict-item,list-item]
        Event(event=StateChanged(path=text, value=value, previous=[value])),  # type: ignore[arg-type,list-item]
        Cmd(command=CmdSetState(path=text, value=value)),  # type: ignore[arg-type]
        Bye(stats=AgentStats(state={"v": value})),  # type: ignore[dict-item]
    ]
    for body in bodies:
        frames = [header._replace(kind=KIND_OF[type(body)]).encode(), encode_body(body)]
        assert decode_frames(frames)[1] == body


# -- specific rejection reasons --------------------------------------------------------------


def _raw_header(**changes: object) -> bytes:
    names = list(Header._fields)
    fields = list(VALID_HEADER_FIELDS)
    for name, value in changes.items():
        fields[names.index(name)] = value
    return pack(fields)


BODY = encode_body(Ping())


@pytest.mark.parametrize("version", [0, PROTOCOL_VERSION + 1, -1, U64, 1 << 63])
def test_wrong_version_is_bad_version(version: int) -> None:
    header = _raw_header(version=version, kind=int(Kind.PING))
    assert _reason(lambda: decode_header(header)) is RejectReason.BAD_VERSION
    assert _reason(lambda: decode_frames([header, BODY])) is RejectReason.BAD_VERSION


@pytest.mark.parametrize("kind", [0, 14, 99, -1, U64, "MSG", 4.0, None, True, b"\x04"])
def test_unknown_kind(kind: object) -> None:
    header = _raw_header(kind=kind)
    assert _reason(lambda: decode_header(header)) is RejectReason.UNKNOWN_KIND
    assert _reason(lambda: decode_frames([header, BODY])) is RejectReason.UNKNOWN_KIND


def test_oversize_frames() -> None:
    header = _header(Kind.PING).encode()
    big = b"\x00" * (MAX_FRAME_BYTES + 1)
    assert _reason(lambda: decode_header(big)) is RejectReason.OVERSIZE
    assert _reason(lambda: decode_frames([big, BODY])) is RejectReason.OVERSIZE
    assert _reason(lambda: decode_frames([header, big])) is RejectReason.OVERSIZE
    assert _reason(lambda: split_frames([header, big])) is RejectReason.OVERSIZE
    for kind in Kind:
        assert _reason(partial(decode_body, kind, big)) is RejectReason.OVERSIZE
    # Valid msgpack that is merely too long is still OVERSIZE, for header and body alike.
    long_text = "x" * MAX_FRAME_BYTES
    long_header = _raw_header(src=long_text)
    assert len(long_header) > MAX_FRAME_BYTES
    assert _reason(lambda: decode_header(long_header)) is RejectReason.OVERSIZE
    long_err = _pack_unchecked(Err(reason="r", detail=long_text))
    assert _reason(lambda: decode_frames([_header(Kind.ERR).encode(), long_err])) is (
        RejectReason.OVERSIZE
    )


def test_frame_of_exactly_max_bytes_is_accepted() -> None:
    pad = encode_body(Err(reason="r", detail=""))
    detail = "x" * (MAX_FRAME_BYTES - len(pad) - 4)  # str32 has 4 more length bytes than fixstr
    body = encode_body(Err(reason="r", detail=detail))
    assert len(body) == MAX_FRAME_BYTES
    assert decode_frames([_header(Kind.ERR).encode(), body])[1] == Err(reason="r", detail=detail)
    one_more = _pack_unchecked(Err(reason="r", detail=detail + "x"))
    assert _reason(lambda: decode_body(Kind.ERR, one_more)) is RejectReason.OVERSIZE
    with pytest.raises(EncodeError, match="over the frame limit"):
        encode_body(Err(reason="r", detail=detail + "x"))


def _pack_unchecked(body: WireModel) -> bytes:
    """What a peer without the encode-side limit would put on the wire."""
    return pack(body.model_dump(mode="json"))


@pytest.mark.parametrize("value", [1 << 64, -(1 << 63) - 1, 10**30])
def test_int_msgpack_cannot_carry_is_an_encode_error(value: int) -> None:
    body = Cmd(command=CmdSetState(path="a.b", value=value))
    with pytest.raises(EncodeError, match="cannot be encoded"):
        encode_body(body)


@pytest.mark.parametrize(
    "frame",
    [b"", b"\xc1", b"\x92\x01", b"\x81", b"\xdb\xff\xff\xff\xff", b"\x01\x02",
     b"\xc7\x03\xff\x00\x00\x00", b"\xd6\x05\x00"],
    ids=["empty", "never-used-byte", "truncated-array", "truncated-map", "bad-str-len",
         "extra-data", "bad-timestamp-ext", "truncated-ext"],
)
def test_not_msgpack_is_malformed(frame: bytes) -> None:
    assert _reason(lambda: decode_header(frame)) is RejectReason.MALFORMED
    assert _reason(lambda: decode_frames([frame, BODY])) is RejectReason.MALFORMED
    for kind in Kind:
        assert _reason(partial(decode_body, kind, frame)) is RejectReason.MALFORMED
    header = _header(Kind.PING).encode()
    assert _reason(lambda: decode_frames([header, frame])) is RejectReason.MALFORMED


def test_non_string_map_keys_are_malformed() -> None:
    body = msgpack.packb({1: "x"})
    assert _reason(lambda: decode_body(Kind.EVENT, body)) is RejectReason.MALFORMED


@pytest.mark.parametrize("count", [0, 1, 3, 4])
def test_frame_count(count: int) -> None:
    frames = [_header(Kind.PING).encode(), BODY, BODY, BODY][:count]
    assert _reason(lambda: split_frames(frames)) is RejectReason.FRAME_COUNT
    assert _reason(lambda: decode_frames(frames)) is RejectReason.FRAME_COUNT


@pytest.mark.parametrize(
    "raw",
    [
        pack([1, 2, 3]),
        pack({"version": PROTOCOL_VERSION}),
        pack(VALID_HEADER_FIELDS[:8]),
        pack([*VALID_HEADER_FIELDS, 0]),
        pack("header"),
        pack(None),
        _raw_header(src=""),
        _raw_header(dst=""),
        _raw_header(src="x" * (MAX_ID_BYTES + 1)),
        _raw_header(dst="\u00e9" * (MAX_ID_BYTES // 2 + 1)),  # 33 chars, 66 bytes
        _raw_header(src=b"alice"),
        _raw_header(dst=7),
        _raw_header(seq=-1),
        _raw_header(ack=1.0),
        _raw_header(corr=True),
        _raw_header(incarnation=None),
        _raw_header(sent_ns="1"),
        _raw_header(version="1"),
        _raw_header(version=1.0),
        _raw_header(version=True),
    ],
)
def test_bad_header(raw: bytes) -> None:
    assert _reason(lambda: decode_header(raw)) is RejectReason.BAD_HEADER


def _body_dict(body: WireModel) -> dict[str, object]:
    raw = unpack(encode_body(body))
    assert isinstance(raw, dict)
    return raw


@pytest.mark.parametrize("body", SAMPLES, ids=lambda b: type(b).__name__)
def test_unknown_field_is_bad_body(body: WireModel) -> None:
    kind = KIND_OF[type(body)]
    raw = _body_dict(body)
    raw["unexpected"] = 1
    assert _reason(lambda: decode_body(kind, pack(raw))) is RejectReason.BAD_BODY
    header = _header(kind).encode()
    assert _reason(lambda: decode_frames([header, pack(raw)])) is RejectReason.BAD_BODY


@pytest.mark.parametrize("kind", list(Kind), ids=lambda k: k.name)
@pytest.mark.parametrize("raw", [None, [], "text", 1, b"bin", [{}]], ids=repr)
def test_non_map_body_is_bad_body(kind: Kind, raw: object) -> None:
    assert _reason(lambda: decode_body(kind, pack(raw))) is RejectReason.BAD_BODY


def _set(raw: dict[str, object], path: tuple[str | int, ...], value: object) -> None:
    node: typing.Any = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


STRICT_CASES: list[tuple[WireModel, tuple[str | int, ...], object]] = [
    (HELLO, ("pid",), "4242"),  # a string where an int is expected
    (HELLO, ("pid",), 4242.0),
    (HELLO, ("pid",), True),
    (HELLO, ("agent_id",), ""),
    (HELLO, ("agent_id",), "has space"),
    (HELLO, ("agent_id",), "x" * (MAX_ID_BYTES + 1)),
    (HELLO, ("agent_id",), "trailing\n"),
    (HELLO, ("python",), 3.11),
    (HELLO, ("inbox_capacity",), 0),
    (HELLO, ("inbox_capacity",), "16"),
    (HELLO, ("inbox_capacity",), 16.0),
    (HELLO, ("inbox_capacity",), (1 << 20) + 1),
    (CONFIGURE, ("config", "model", "kind"), "llm"),
    (CONFIGURE, ("config", "model", "rules", 0, "reply"), 5),
    (CONFIGURE, ("config", "model", "kind"), "fixtures-but-wrong"),
    (CONFIGURE, ("config", "model", "rules", 0, "extra"), 1),
    (CONFIGURE, ("config", "rooms", 0, "channel"), "BROADCAST"),
    (CONFIGURE, ("config", "rooms", 0, "channel"), "group"),
    (CONFIGURE, ("config", "rooms", 0, "channel"), 1),
    (CONFIGURE, ("config", "rooms", 0, "members"), "alice"),
    (CONFIGURE, ("config", "rooms", 0, "members", 0), "bad id"),
    (CONFIGURE, ("config", "rooms", 0, "extra"), 1),
    (CONFIGURE, ("config", "extra"), 1),
    (READY, ("pid",), None),
    (MSG, ("origin",), "SCRIPT"),
    (MSG, ("origin",), "human"),
    (MSG, ("origin",), None),
    (MSG, ("text",), 5),
    (MSG, ("text",), b"bytes"),
    (MSG, ("room",), "no/slash"),
    (CMD_SEND, ("command", "op"), "explode"),
    (CMD_SEND, ("command", "op"), None),
    (CMD_SEND, ("command", "room"), 1),
    (CMD_SEND, ("command", "extra"), 1),
    (CMD_SEND, ("command",), "send"),
    (CMD_SET, ("command", "value"), b"bin"),
    (CMD_SET, ("command", "value", "list"), [b"bin"]),
    (CMD_QUERY, ("command", "limit"), 0),
    (CMD_QUERY, ("command", "limit"), 10_001),
    (RESULT, ("ok",), 1),
    (RESULT, ("ok",), "true"),
    (RESULT, ("value",), msgpack.ExtType(5, b"x")),
    (EVENT, ("event", "data"), []),
    (EVENT, ("event", "data", "detail"), {"k": b"bin"}),
    (EVENT, ("event", "type"), "no.such.event"),
    (EVENT, ("event", "name"), ""),
    (ACTION_DONE, ("event", "status"), "exploded"),
    (ACTION_DONE, ("event", "origin"), "agent"),
    (ACTION_DONE, ("event", "extra"), 1),
    (ACK, ("credit",), -1),
    (ACK, ("credit",), "3"),
    (ACK, ("credit",), 3.0),
    (PONG, ("echo_ns",), "1"),
    (STOP, ("deadline_ms",), -1),
    (BYE, ("stats", "retries"), "4"),
    (BYE, ("stats", "state"), [1]),
    (BYE, ("stats", "extra"), 0),
    (BYE, ("undelivered",), None),
    (ERR, ("detail",), None),
]


@pytest.mark.parametrize(
    ("body", "path", "value"), STRICT_CASES,
    ids=[f"{type(b).__name__}.{'.'.join(map(str, p))}={v!r}"[:60] for b, p, v in STRICT_CASES],
)
def test_wrong_type_or_value_is_bad_body(
    body: WireModel, path: tuple[str | int, ...], value: object
) -> None:
    kind = KIND_OF[type(body)]
    raw = _body_dict(body)
    _set(raw, path, value)
    assert _reason(lambda: decode_body(kind, pack(raw))) is RejectReason.BAD_BODY


@pytest.mark.parametrize("body", SAMPLES, ids=lambda b: type(b).__name__)
def test_missing_required_field_is_bad_body(body: WireModel) -> None:
    kind = KIND_OF[type(body)]
    required = [name for name, f in type(body).model_fields.items() if f.is_required()]
    for name in required:
        raw = _body_dict(body)
        del raw[name]
        assert _reason(partial(decode_body, kind, pack(raw))) is RejectReason.BAD_BODY


@pytest.mark.parametrize("body", SAMPLES, ids=lambda b: type(b).__name__)
def test_body_of_another_kind_is_bad_body(body: WireModel) -> None:
    raw = encode_body(body)
    for kind in Kind:
        if kind is not KIND_OF[type(body)]:
            assert _reason(partial(decode_body, kind, raw)) is RejectReason.BAD_BODY


@pytest.mark.parametrize(
    ("body", "path", "value"),
    [(MSG, ("origin",), b"script"), (CONFIGURE, ("config", "rooms", 0, "channel"), b"DM")],
    ids=["Msg.origin", "RoomConfig.channel"],
)
def test_enum_field_rejects_bin_value(
    body: WireModel, path: tuple[str | int, ...], value: object
) -> None:
    raw = _body_dict(body)
    _set(raw, path, value)
    reason = _reason(lambda: decode_body(KIND_OF[type(body)], pack(raw)))
    assert reason is RejectReason.BAD_BODY


# -- hypothesis: nothing but DecodeError -----------------------------------------------------


def _decodes_or_rejects(frames: list[bytes]) -> None:
    """Every decoding entry point either succeeds with typed values or raises DecodeError."""
    try:
        header, body = decode_frames(frames)
    except DecodeError as exc:
        assert isinstance(exc.reason, RejectReason)
    else:
        assert type(header.kind) is Kind
        assert header.version == PROTOCOL_VERSION
        for value in header[4:]:
            assert type(value) is int and 0 <= value <= U64
        assert type(body) is BODY_MODELS[header.kind]
    with contextlib.suppress(DecodeError):
        split_frames(frames)
    for frame in frames[:2]:
        with contextlib.suppress(DecodeError):
            decode_header(frame)
        for kind in Kind:
            with contextlib.suppress(DecodeError):
                decode_body(kind, frame)


@FAST
@given(st.lists(st.binary(max_size=64), max_size=4))
def test_arbitrary_bytes_only_raise_decode_error(frames: list[bytes]) -> None:
    _decodes_or_rejects(frames)


@FAST
@given(header=st.binary(max_size=64), body=st.binary(max_size=64), kind=st.sampled_from(Kind))
def test_arbitrary_bytes_behind_a_valid_header(header: bytes, body: bytes, kind: Kind) -> None:
    _decodes_or_rejects([_header(kind).encode(), body])
    _decodes_or_rejects([header, encode_body(HELLO)])


def _mutations(frame: bytes) -> st.SearchStrategy[bytes]:
    """A valid frame with some bytes flipped, inserted, deleted, or the end cut off."""
    n = len(frame)
    op = st.one_of(
        st.tuples(st.just("flip"), st.integers(0, n - 1), st.integers(1, 255)),
        st.tuples(st.just("set"), st.integers(0, n - 1), st.integers(0, 255)),
        st.tuples(st.just("insert"), st.integers(0, n), st.binary(min_size=1, max_size=8)),
        st.tuples(st.just("delete"), st.integers(0, n - 1), st.integers(1, 8)),
        st.tuples(st.just("truncate"), st.integers(0, n - 1), st.just(0)),
    )

    def apply(ops: list[tuple[str, int, int] | tuple[str, int, bytes]]) -> bytes:
        data = bytearray(frame)
        for name, at, arg in ops:
            at = min(at, len(data))
            if name == "insert":
                assert isinstance(arg, bytes)
                data[at:at] = arg
            elif not data or at >= len(data):
                continue
            elif name == "flip":
                assert isinstance(arg, int)
                data[at] ^= arg
            elif name == "set":
                assert isinstance(arg, int)
                data[at] = arg
            elif name == "delete":
                assert isinstance(arg, int)
                del data[at : at + arg]
            else:
                del data[at:]
        return bytes(data)

    return st.lists(op, min_size=1, max_size=4).map(apply)


mutated_frames = st.sampled_from(VALID_FRAMES).flatmap(
    lambda frames: st.tuples(
        st.one_of(st.just(frames[0]), _mutations(frames[0])),
        st.one_of(st.just(frames[1]), _mutations(frames[1])),
    )
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_frames)
def test_mutated_valid_frames_only_raise_decode_error(frames: tuple[bytes, bytes]) -> None:
    _decodes_or_rejects(list(frames))


msgpack_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(1 << 63), max_value=U64),
    st.sampled_from([0, -1, U64, -(1 << 63), 1 << 32, PROTOCOL_VERSION + 1]),
    st.floats(),
    st.text(max_size=80),
    st.binary(max_size=16),
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=12)),
    st.builds(msgpack.Timestamp, st.integers(0, 1 << 34), st.integers(0, 999_999_999)),
)
msgpack_values = st.recursive(
    msgpack_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.one_of(st.text(max_size=10), st.binary(max_size=4)), inner,
                        max_size=5),
        # Keys msgpack can write but this decoder refuses (strict_map_key): MALFORMED.
        st.dictionaries(st.integers(-5, 5) | st.none(), inner, max_size=2),
    ),
    max_leaves=15,
)


def _packable(value: object) -> bytes:
    return typing.cast(bytes, msgpack.packb(value, use_bin_type=True))


@FAST
@given(msgpack_values)
def test_arbitrary_msgpack_only_raises_decode_error(value: object) -> None:
    frame = _packable(value)
    _decodes_or_rejects([frame, frame])
    for kind in Kind:
        _decodes_or_rejects([_header(kind).encode(), frame])


header_values = st.one_of(
    msgpack_values,
    st.integers(min_value=-(1 << 63), max_value=-1),
    st.integers(min_value=U64 - 3, max_value=U64),
    st.text(min_size=MAX_ID_BYTES - 2, max_size=MAX_ID_BYTES + 40),
    st.sampled_from([*range(-2, 20), int(Kind.MSG), float(Kind.MSG), "", "coordinator"]),
)


def _expected_header_reason(raw: bytes) -> RejectReason:
    """The header validator's documented order: size, msgpack, shape, version, kind, fields."""
    if len(raw) > MAX_FRAME_BYTES:
        return RejectReason.OVERSIZE
    try:
        fields = unpack(raw)
    except Exception:
        return RejectReason.MALFORMED
    assert isinstance(fields, list) and len(fields) == len(Header._fields)
    version, kind = fields[0], fields[1]
    if type(version) is not int:
        return RejectReason.BAD_HEADER
    if version != PROTOCOL_VERSION:
        return RejectReason.BAD_VERSION
    if type(kind) is not int or kind not in {int(k) for k in Kind}:
        return RejectReason.UNKNOWN_KIND
    return RejectReason.BAD_HEADER


@FAST
@given(
    changes=st.dictionaries(st.sampled_from(Header._fields), header_values, min_size=1),
    kind=st.sampled_from(Kind),
    body=st.sampled_from([f[1] for f in VALID_FRAMES]),
)
def test_tampered_header_fields(changes: dict[str, object], kind: Kind, body: bytes) -> None:
    raw = _raw_header(**{"kind": int(kind), **changes})
    try:
        header = decode_header(raw)
    except DecodeError as exc:
        assert exc.reason is _expected_header_reason(raw)
    else:
        expected = dict(zip(Header._fields, VALID_HEADER_FIELDS, strict=True))
        expected.update({"kind": int(kind)}, **changes)
        assert list(header) == [expected[name] for name in Header._fields]
        for name in ("src", "dst"):
            value = getattr(header, name)
            assert type(value) is str and 0 < len(value.encode()) <= MAX_ID_BYTES
    _decodes_or_rejects([raw, body])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(Kind),
    data=st.data(),
)
def test_field_shaped_bodies_only_raise_decode_error(kind: Kind, data: st.DataObject) -> None:
    """Maps with the model's own field names and arbitrary values reach deep into validation."""
    names = list(BODY_MODELS[kind].model_fields)
    extra = st.sampled_from(["extra", "op", "command", "config", "value", *names])
    raw = data.draw(
        st.dictionaries(st.sampled_from(names) | extra, msgpack_values, max_size=len(names) + 1)
        if names
        else st.dictionaries(extra, msgpack_values, max_size=2)
    )
    _decodes_or_rejects([_header(kind).encode(), _packable(raw)])
    # and the same values inside a valid body's nested maps
    base = data.draw(st.sampled_from([b for b in SAMPLES if KIND_OF[type(b)] is kind]))
    body = _body_dict(base)
    for key, value in body.items():
        if isinstance(value, dict) and value:
            inner = data.draw(st.sampled_from(sorted(value)))
            value[inner] = data.draw(msgpack_values)
            body[key] = value
    _decodes_or_rejects([_header(kind).encode(), _packable(body)])


def test_deeply_nested_json_value_is_bad_body_not_a_crash() -> None:
    value: object = None
    for _ in range(1000):
        value = [value]
    frame = pack({"ok": True, "value": value})
    assert _reason(lambda: decode_body(Kind.RESULT, frame)) is RejectReason.BAD_BODY
