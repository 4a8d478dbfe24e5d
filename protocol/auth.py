"""Who may speak on the bus: CurveZMQ keys, one pair per agent process.

Every connection to the coordinator's ROUTER is a CURVE handshake, and the coordinator's ZAP
handler admits only keys it issued to the run's agents, one pair per incarnation. The pair
reaches its agent through a socket it inherits (or, from the fork server, receives over a
Unix socket that the server never reads), never the command line or the environment (both
readable by any process of the user), and the coordinator learns which agent a
connection belongs to from the key it authenticated with, not from a routing id the peer
chooses. So a process that was issued no key cannot connect at all, and an agent cannot speak
for another: it holds only its own key.

`Credentials` is what one agent needs: the server's public key and its own pair (Z85 text,
40 characters each).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import zmq

KEY_LENGTH = 40
"""Characters of a Z85-encoded CURVE key."""

ZAP_DOMAIN = b"scenario-runner"


class CredentialsError(ValueError):
    """What was handed over is not three Z85 keys."""


@dataclass(frozen=True, slots=True, repr=False)
class Credentials:
    server_public: bytes
    public: bytes
    secret: bytes

    def __repr__(self) -> str:  # a secret never lands in a log by accident
        return f"Credentials(public={self.public.decode()!r})"

    @classmethod
    def issue(cls, server_public: bytes) -> Credentials:
        """A fresh key pair for one agent process, for the server whose public key is given."""
        public, secret = zmq.curve_keypair()
        return cls(server_public, public, secret)

    def encode(self) -> bytes:
        return b" ".join((self.server_public, self.public, self.secret))

    @classmethod
    def decode(cls, data: bytes) -> Credentials:
        parts = data.split()
        if len(parts) != 3 or any(len(p) != KEY_LENGTH for p in parts):
            raise CredentialsError("expected three Z85 CURVE keys of 40 characters")
        return cls(parts[0], parts[1], parts[2])

    def apply(self, sock: zmq.Socket[bytes]) -> None:
        """Make `sock` (a DEALER, before it connects) a CURVE client with these keys."""
        sock.curve_serverkey = self.server_public
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret


def read_credentials(fd: int) -> Credentials:
    """Read the credentials the coordinator wrote into `fd` (see hand_over) to its end, and
    close it."""
    chunks = []
    try:
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return Credentials.decode(b"".join(chunks))


def hand_over(credentials: Credentials) -> int:
    """A descriptor holding `credentials`, for a child to inherit (`--credentials-fd`) or to
    be passed over a Unix socket: one end of a socket pair whose other end wrote them and is
    closed. A socket, not a pipe: any process of the user can open /proc/PID/fd/N of a pipe
    and read it, while opening a socket there fails (ENXIO). The keys are 122 bytes, far
    under any socket buffer."""
    ours, theirs = socket.socketpair()
    try:
        ours.sendall(credentials.encode())
    except BaseException:
        theirs.close()
        raise
    finally:
        ours.close()
    return theirs.detach()
