"""Message kinds: the closed set of frame types the protocol knows."""

from __future__ import annotations

from enum import IntEnum


class Kind(IntEnum):
    """Frame kind, carried as a small int in every header."""

    HELLO = 1
    """agent -> coordinator, unsequenced, repeated until CONFIGURE arrives: pid and versions."""
    CONFIGURE = 2
    """coordinator -> agent: the agent's full spec."""
    READY = 3
    """agent -> coordinator: store open, model loaded; the agent can take messages."""
    MSG = 4
    """a chat message: agent -> coordinator (dst is the room), coordinator -> member."""
    CMD = 5
    """coordinator -> agent: do something (post a message, set or read state)."""
    RESULT = 6
    """agent -> coordinator: the outcome of a CMD, matched by correlation id."""
    EVENT = 7
    """agent -> coordinator: something observable happened inside the agent."""
    ACK = 8
    """either way, unsequenced: cumulative ack in the header, receive credit in the body."""
    PING = 9
    """either way, unsequenced: sent when a link has been idle for a heartbeat interval."""
    PONG = 10
    """either way, unsequenced: the answer to PING (gives a round-trip sample)."""
    STOP = 11
    """coordinator -> agent: drain, close, say BYE before the deadline."""
    BYE = 12
    """agent -> coordinator: final stats; the last sequenced frame an agent sends."""
    ERR = 13
    """either way, unsequenced: the peer sent something this side rejected."""


SEQUENCED_KINDS: frozenset[Kind] = frozenset(
    {Kind.CONFIGURE, Kind.READY, Kind.MSG, Kind.CMD, Kind.RESULT, Kind.EVENT, Kind.STOP, Kind.BYE}
)
"""Kinds delivered reliably: numbered per sender incarnation, acked, retried, de-duplicated."""
