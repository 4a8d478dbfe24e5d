"""Multipart send and receive on a pyzmq socket without the per-call overhead of the sugar layer.

`Socket.send_multipart` ORs `IntFlag`s for every part (two enum constructions each) and goes
through the sugar `send`, which checks for frames, groups and routing ids we never use; on the
message path that is about 3 us of a 4 us send. These call the backend socket's `send` / `recv`
with plain int flags. Semantics are zmq's: the parts of one message go out atomically (an error,
such as EAGAIN at the high-water mark or EHOSTUNREACH under ROUTER_MANDATORY, can only happen on
the first part), and `recv_frames` returns every part of one message, however many there are.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import zmq
from zmq.backend import Socket as _BackendSocket

_send = _BackendSocket.send
_recv = _BackendSocket.recv
_get = _BackendSocket.get

_POLLIN = int(zmq.POLLIN)
_EVENTS = int(zmq.EVENTS)
_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)
_LAST = int(zmq.NOBLOCK)
_RCVMORE = int(zmq.RCVMORE)


def send_frames(sock: zmq.Socket[bytes], frames: Sequence[bytes]) -> None:
    """Send `frames` as one message without blocking; raises zmq.Again / zmq.ZMQError."""
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        _send(sock, frame, _LAST if i == last else _MORE)


def recv_frames(sock: zmq.Socket[bytes]) -> list[bytes]:
    """Receive every part of the next message without blocking; raises zmq.Again if none."""
    return recv_rest(sock, [_recv(sock, _LAST)])


def recv_part(sock: zmq.Socket[bytes]) -> bytes:
    """The next part of a message (the first, for a ROUTER: the sender's routing id)."""
    part: bytes = _recv(sock, _LAST)
    return part


def recv_rest(sock: zmq.Socket[bytes], frames: list[bytes]) -> list[bytes]:
    """`frames` (the parts of the current message already taken) with the rest appended."""
    while _get(sock, _RCVMORE):
        frames.append(_recv(sock, _LAST))
    return frames


def recv_rest_with_user(sock: zmq.Socket[bytes]) -> tuple[list[bytes], bytes | None]:
    """Like `recv_rest`, and the User-Id its connection authenticated as (what the ZAP
    handler said), None if it has none. The parts come as zmq Frames to read that property,
    which costs about a microsecond more per part: for a connection's first message only."""
    frames: list[bytes] = []
    user: bytes | None = None
    while _get(sock, _RCVMORE):
        frame = _recv(sock, _LAST, False)
        if user is None:
            with contextlib.suppress(zmq.ZMQError):
                value = frame.get("User-Id")
                user = value.encode() if isinstance(value, str) else b""
        frames.append(frame.bytes)
    return frames, user or None


def readable(sock: zmq.Socket[bytes]) -> bool:
    """Whether a message is waiting. Draining until this is false, rather than until `recv`
    raises zmq.Again, saves an exception per drain: pyzmq builds its errors with imports and
    a strerror lookup, about 14 us each, and an agent's transport drained twice per message
    (its socket and its wake pipe)."""
    flags = _get(sock, _EVENTS)
    return isinstance(flags, int) and bool(flags & _POLLIN)
