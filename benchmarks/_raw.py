"""The baseline: raw pyzmq + msgpack between two processes over ipc, with none of the project.

The driver (this process) binds a ROUTER, as the coordinator does; the peer
(`python -m benchmarks._raw`, a fresh interpreter) connects a DEALER, as an agent does. Frames
are `[header][body]` of the same shape and size as the project's (a 9-field msgpack array and a
msgpack map like a MSG body), packed and unpacked on every message, but nothing is validated,
numbered for retry, logged or routed onward.

- Throughput: the driver keeps at most `window` messages unacknowledged; the peer drains what
  has arrived and answers each drained batch with one cumulative ACK (highest seq, and its
  receive time of it). That is the cheapest correct windowed-ack scheme, hence the ceiling.
- Round trip: one PING at a time, answered at once with a PONG that carries the peer's receive
  time, so the same run yields a round trip and a one-way figure.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from array import array
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import zmq
from pydantic import JsonValue

from benchmarks._common import REPO_ROOT, child_env
from protocol.packing import pack, unpack

HELLO, DATA, ACK, PING, PONG, STOP = 1, 4, 8, 9, 10, 11
"""Header kinds, numbered as in protocol.Kind so the frames look like the project's."""

PEER_ID = b"raw-peer"
HWM = 100_000
DRAIN_BATCH = 4096


def _header(kind: int, seq: int) -> bytes:
    return pack([1, kind, "raw-tx", "raw-rx", 1, seq, 0, 0, time.monotonic_ns()])


# -- the peer process ----------------------------------------------------------------------


def serve(endpoint: str, silence_s: float) -> int:
    """The peer: answer HELLO, ack DATA in batches, echo PING, leave on STOP or silence."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.IDENTITY, PEER_ID)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, HWM)
        sock.setsockopt(zmq.RCVHWM, HWM)
        sock.connect(endpoint)
        sock.send_multipart([_header(HELLO, 0), b""])
        while True:
            if not sock.poll(int(silence_s * 1000), zmq.POLLIN):
                print("raw peer: driver silent, leaving", file=sys.stderr)
                return 3
            last_seq = -1
            last_ns = 0
            for _ in range(DRAIN_BATCH):
                try:
                    header_frame, body_frame = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                now_ns = time.monotonic_ns()
                header = unpack(header_frame)
                if body_frame:
                    unpack(body_frame)
                if not isinstance(header, list):
                    raise TypeError(f"bad header {header!r}")
                kind, seq = header[1], header[5]
                if kind == DATA:
                    last_seq, last_ns = seq, now_ns
                elif kind == PING:
                    sock.send_multipart([_header(PONG, seq), pack([seq, now_ns])])
                elif kind == STOP:
                    return 0
            if last_seq >= 0:
                sock.send_multipart([_header(ACK, 0), pack([last_seq, last_ns])])
    finally:
        sock.close(0)
        ctx.destroy(linger=0)


# -- the driver ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RawThroughput:
    messages: int
    first_send_ns: int
    last_recv_ns: int
    """The peer's clock when it took the last message off its socket."""
    last_ack_ns: int

    @property
    def msgs_per_s(self) -> float:
        return self.messages * 1e9 / (self.last_recv_ns - self.first_send_ns)


class RawPeer:
    """The driver's end, owning the peer process and both sockets' context."""

    def __init__(self, directory: Path, timeout_s: float) -> None:
        self.endpoint = f"ipc://{directory}/raw.sock"
        self.timeout_s = timeout_s
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._proc: subprocess.Popen[bytes] | None = None
        self._seq = 0

    def __enter__(self) -> RawPeer:
        try:
            s = self._sock
            s.setsockopt(zmq.ROUTER_MANDATORY, 1)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SNDHWM, HWM)
            s.setsockopt(zmq.RCVHWM, HWM)
            s.bind(self.endpoint)
            argv = [
                sys.executable,
                "-m",
                "benchmarks._raw",
                "--endpoint",
                self.endpoint,
                "--silence",
                repr(self.timeout_s),
            ]
            env = {**os.environ, **child_env()}
            self._proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL)
            self._recv(self._deadline())  # the peer's HELLO: it is connected
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                if proc.poll() is None:
                    self._send(_header(STOP, 0), b"")
                    proc.wait(timeout=self.timeout_s)
            except (zmq.ZMQError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
            if proc.returncode != 0:
                print(f"raw peer exited with {proc.returncode}", file=sys.stderr)
        self._sock.close(0)
        self._ctx.destroy(linger=0)

    # -- measurements -------------------------------------------------------------------
    def throughput(self, count: int, window: int, body: dict[str, JsonValue]) -> RawThroughput:
        """Send `count` messages with at most `window` unacknowledged; wait for the last ack."""
        deadline = self._deadline()
        base = self._seq
        last = base + count
        sent = acked = base
        last_recv_ns = 0
        first_ns = time.monotonic_ns()
        while acked < last:
            while sent < last and sent - acked < window:
                try:
                    self._send(_header(DATA, sent + 1), pack(body), zmq.NOBLOCK)
                except zmq.Again:
                    break
                sent += 1
            ack: bytes | None = self._recv(deadline)
            while ack is not None:
                seq, recv_ns = _pair(ack)
                if seq > acked:
                    acked, last_recv_ns = seq, recv_ns
                ack = self._recv_nowait()
        self._seq = last
        return RawThroughput(count, first_ns, last_recv_ns, time.monotonic_ns())

    def pingpong(self, count: int, warmup: int) -> tuple[array[int], array[int]]:
        """Round trips and one-way times (ns) of `count` pings, after `warmup` unrecorded."""
        rtts: array[int] = array("q")
        one_way: array[int] = array("q")
        for index in range(warmup + count):
            self._seq += 1
            sent_ns = time.monotonic_ns()
            self._send(_header(PING, self._seq), b"")
            seq, recv_ns = _pair(self._recv(self._deadline()))
            now_ns = time.monotonic_ns()
            if seq != self._seq:
                raise RuntimeError(f"pong {seq} for ping {self._seq}")
            if index >= warmup:
                rtts.append(now_ns - sent_ns)
                one_way.append(recv_ns - sent_ns)
        return rtts, one_way

    # -- socket helpers -----------------------------------------------------------------
    def _deadline(self) -> float:
        return time.monotonic() + self.timeout_s

    def _send(self, header: bytes, body: bytes, flags: int = 0) -> None:
        self._sock.send_multipart([PEER_ID, header, body], flags)

    def _recv(self, deadline: float) -> bytes:
        """The body of the next frame from the peer; TimeoutError past `deadline`."""
        remaining_ms = int((deadline - time.monotonic()) * 1000)
        if remaining_ms <= 0 or not self._sock.poll(remaining_ms, zmq.POLLIN):
            raise TimeoutError(f"raw peer silent for {self.timeout_s:g}s")
        body = self._recv_nowait()
        if body is None:
            raise RuntimeError("socket readable but no frame")
        return body

    def _recv_nowait(self) -> bytes | None:
        try:
            frames = self._sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return None
        return frames[-1]


def _pair(frame: bytes) -> tuple[int, int]:
    value = unpack(frame)
    if not isinstance(value, list) or len(value) != 2:
        raise TypeError(f"expected [seq, ns], got {value!r}")
    seq, ns = value
    if not isinstance(seq, int) or not isinstance(ns, int):
        raise TypeError(f"expected [seq, ns], got {value!r}")
    return seq, ns


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks._raw", description=__doc__)
    p.add_argument("--endpoint", required=True)
    p.add_argument("--silence", type=float, default=30.0, help="leave after this many seconds")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    return serve(args.endpoint, args.silence)


if __name__ == "__main__":
    sys.exit(main())
