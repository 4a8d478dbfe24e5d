"""Typed decode errors: the only exception decoding a frame may raise."""

from __future__ import annotations

from enum import StrEnum


class RejectReason(StrEnum):
    """Why an incoming frame was rejected; counted per reason in the report."""

    FRAME_COUNT = "frame_count"
    OVERSIZE = "oversize"
    MALFORMED = "malformed"
    BAD_VERSION = "bad_version"
    UNKNOWN_KIND = "unknown_kind"
    BAD_HEADER = "bad_header"
    BAD_BODY = "bad_body"
    UNKNOWN_SENDER = "unknown_sender"
    SRC_MISMATCH = "src_mismatch"
    UNEXPECTED_KIND = "unexpected_kind"
    UNAUTHENTICATED = "unauthenticated"
    """A connection whose CURVE key this run did not issue (or issued to an agent that has
    ended): refused at the handshake."""
    CONNECTION = "connection"
    """An authenticated connection beyond the agents' own (a backstop: a key admits one
    connection, so a reconnect is refused as `unauthenticated` first)."""


class DecodeError(Exception):
    """A frame could not be decoded. `reason` is machine-readable, `detail` is for people."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class EncodeError(ValueError):
    """A body cannot go on the wire: a value msgpack cannot carry (an int outside 64 bits) or a
    body larger than the frame size limit. Raised to the caller, which reports it where the body
    came from (a step, an agent's reply) instead of crashing a transport."""
