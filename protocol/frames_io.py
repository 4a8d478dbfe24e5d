"""Multipart send and receive on a pyzmq socket without the per-call overhead of the sugar layer.

`Socket.send_multipart` ORs `IntFlag`s for every part (two enum constructions each) and goes
through the sugar `send`, which checks for frames, groups and routing ids we never use; on the
message path that is about 3 us of a 4 us send. These call the backend socket's `send` / `recv`
with plain int flags. Semantics are zmq's: the parts of one message go out atomically (an error,
such as EAGAIN at the high-water mark or EHOSTUNREACH under ROUTER_MANDATORY, can only happen on
the first part), and `recv_frames` returns every part of one message, however many there are.
"""

from __future__ import annotations

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
    frames: list[bytes] = [_recv(sock, _LAST)]
    while _get(sock, _RCVMORE):
        frames.append(_recv(sock, _LAST))
    return frames


def readable(sock: zmq.Socket[bytes]) -> bool:
    """Whether a message is waiting. Draining until this is false, rather than until `recv`
    raises zmq.Again, saves an exception per drain: pyzmq builds its errors with imports and
    a strerror lookup, about 14 us each, and an agent's transport drained twice per message
    (its socket and its wake pipe)."""
    flags = _get(sock, _EVENTS)
    return isinstance(flags, int) and bool(flags & _POLLIN)
