"""The frame header: the small msgpack array the coordinator routes on.

It is decoded on every frame on both sides, so it is a slotted NamedTuple with a hand-written,
total validator rather than a pydantic model: the checks are the same (types, ranges, closed
kind set) at a fraction of the cost, and `decode_header` never raises anything but DecodeError.
"""

from __future__ import annotations

from typing import NamedTuple

from protocol.constants import MAX_FRAME_BYTES, MAX_ID_BYTES, PROTOCOL_VERSION
from protocol.errors import DecodeError, RejectReason
from protocol.kinds import Kind
from protocol.packing import pack, unpack

_U64 = (1 << 64) - 1
_FIELDS = 9


class Header(NamedTuple):
    version: int
    kind: Kind
    src: str
    """Sender id: an agent id, or COORDINATOR_ID."""
    dst: str
    """Agent id, or for an agent's MSG the room id the message is posted to."""
    incarnation: int
    """The sender's incarnation; a restarted sender gets a larger one and its seq starts over."""
    seq: int
    """Per sender incarnation, from 1; 0 for unsequenced kinds."""
    ack: int
    """Cumulative: the highest contiguous seq this sender has received from the peer."""
    corr: int
    """Correlation id linking a RESULT to its CMD; 0 when unused."""
    sent_ns: int
    """Sender's time.monotonic_ns() when the frame was (last) put on the wire."""

    def encode(self) -> bytes:
        return pack(
            [
                self.version,
                int(self.kind),
                self.src,
                self.dst,
                self.incarnation,
                self.seq,
                self.ack,
                self.corr,
                self.sent_ns,
            ]
        )


def _is_uint(value: object) -> bool:
    return type(value) is int and 0 <= value <= _U64


def _check_id(value: object, field: str) -> str:
    if type(value) is not str or not value or len(value.encode()) > MAX_ID_BYTES:
        raise DecodeError(RejectReason.BAD_HEADER, f"{field} must be a non-empty id string")
    return value


_KINDS = {int(k): k for k in Kind}


def decode_header(frame: bytes) -> Header:
    """Decode and validate a header frame; raises DecodeError and nothing else."""
    if len(frame) > MAX_FRAME_BYTES:
        raise DecodeError(RejectReason.OVERSIZE, f"header of {len(frame)} bytes")
    try:
        raw = unpack(frame)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise DecodeError(RejectReason.MALFORMED, f"header is not msgpack: {exc}") from None
    if type(raw) is not list or len(raw) != _FIELDS:
        raise DecodeError(RejectReason.BAD_HEADER, f"header must be an array of {_FIELDS}")
    version, kind, src, dst, incarnation, seq, ack, corr, sent_ns = raw
    if type(version) is not int:
        raise DecodeError(RejectReason.BAD_HEADER, "version must be an int")
    if version != PROTOCOL_VERSION:
        raise DecodeError(
            RejectReason.BAD_VERSION, f"protocol version {version}, expected {PROTOCOL_VERSION}"
        )
    known = _KINDS.get(kind) if type(kind) is int else None
    if known is None:
        raise DecodeError(RejectReason.UNKNOWN_KIND, f"unknown kind {kind!r}")
    for name, value in (
        ("incarnation", incarnation),
        ("seq", seq),
        ("ack", ack),
        ("corr", corr),
        ("sent_ns", sent_ns),
    ):
        if not _is_uint(value):
            raise DecodeError(RejectReason.BAD_HEADER, f"{name} must be an unsigned 64-bit int")
    return Header(
        version,
        known,
        _check_id(src, "src"),
        _check_id(dst, "dst"),
        incarnation,
        seq,
        ack,
        corr,
        sent_ns,
    )
