"""`python -m benchmarks._worker`: an agent process for the bus benchmark.

It is built from the project's real agent side, exactly as `python -m agent_worker` builds it:
the same arguments, an `Inbox`, a `Transport` (DEALER, its own I/O thread, reliable delivery,
credit), the HELLO -> CONFIGURE -> READY handshake and the STOP -> drain -> BYE teardown. Only
the runtime differs: no store and no handler, just counters and clocks, so the benchmark
measures the message path and nothing an agent would do with a message.

The coordinator drives it with CMD set_state, whose path names the operation:

- `bench.send` {room, count, batch, payload}: post `count` MSGs to `room` through
  `Transport.send`, at most `batch` unacknowledged at once (`Transport.flush` between
  batches); the RESULT carries the first send time.
- `bench.pingpong` {room, count, warmup}: post a ping, wait for its pong from the inbox,
  repeat; the RESULT carries the round trips.
- `bench.collect`: the RESULT carries the count, first and last receipt times and one-way
  latencies of the throughput messages taken from the inbox since the last collect. CMDs and
  MSGs reach an agent in one ordered stream, so a collect sent after the sender's `bench.send`
  returned (every message acknowledged by the coordinator, hence queued for this agent) is
  handled after the last of those messages.
- `bench.report` {skip}: the RESULT carries the one-way latency of the pings received since
  the last report, the first `skip` (the sender's warm-up) left out.

A message's text is `<kind> <index> <send time, monotonic ns> <padding>`, kind `t`
(throughput), `p` (ping) or `r` (pong). CLOCK_MONOTONIC is system-wide on Linux, so receipt
time minus the sender's stamp is the one-way latency across processes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from array import array

from pydantic import JsonValue

from agent_worker.__main__ import build_parser, run_agent
from agent_worker.inbox import Abandon, Command, Delivered, Inbox, Stopping
from agent_worker.runtime import EXIT_ABANDONED
from agent_worker.transport import Transport
from benchmarks._stats import LatencyStats
from protocol import AgentConfig, AgentStats, Bye, CmdSetState, Msg, Origin, Ready, Result
from protocol.reliability import RetryPolicy

EXIT_OK = 0

THROUGHPUT, PING, PONG = "t", "p", "r"


class BenchFailure(Exception):
    """An operation could not complete (a flush or a pong did not arrive in time)."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = build_parser("python -m benchmarks._worker")
    p.add_argument("--window", type=int, default=RetryPolicy().window)
    p.add_argument("--op-timeout", type=float, default=120.0, help="seconds per operation")
    return p.parse_args(argv)


class BenchAgent:
    def __init__(self, agent_id: str, transport: Transport, inbox: Inbox, op_timeout: float):
        self.agent_id = agent_id
        self.transport = transport
        self.inbox = inbox
        self.op_timeout = op_timeout
        self.messages_in = 0
        self.messages_out = 0
        self.commands = 0
        # throughput receive side
        self.received = 0
        self.first_recv_ns = 0
        self.last_recv_ns = 0
        self.load_latency_ns = array("q")
        # ping receive side
        self.ping_latency_ns = array("q")

    # -- main loop ------------------------------------------------------------------------
    def serve(self) -> int:
        while True:
            item = self.inbox.get()
            if isinstance(item, Delivered):
                self.on_message(item.msg, time.monotonic_ns())
            elif isinstance(item, Command):
                self.on_command(item)
            elif isinstance(item, Stopping):
                return self.shutdown(item.stop.deadline_ms / 1000.0)
            elif isinstance(item, Abandon):
                print(f"agent {self.agent_id}: leaving: {item.reason}", file=sys.stderr)
                return EXIT_ABANDONED
            self.transport.request_window_update()

    def on_message(self, msg: Msg, now_ns: int) -> None:
        self.messages_in += 1
        kind, index, sent_ns = parse_text(msg.text)
        if kind == THROUGHPUT:
            self.received += 1
            if self.received == 1:
                self.first_recv_ns = now_ns
            self.last_recv_ns = now_ns
            self.load_latency_ns.append(now_ns - sent_ns)
        elif kind == PING:
            self.ping_latency_ns.append(now_ns - sent_ns)
            self.post(msg.room, PONG, index, 0)

    def on_command(self, item: Command) -> None:
        self.commands += 1
        command = item.cmd.command
        try:
            if not isinstance(command, CmdSetState) or not isinstance(command.value, dict):
                raise BenchFailure(f"expected set_state with an object value, got {command!r}")
            result = self.run(command.path, command.value)
        except Exception as exc:
            result = Result(ok=False, error=f"{type(exc).__name__}: {exc}")
        self.transport.send(result, corr=item.corr)

    def run(self, op: str, params: dict[str, JsonValue]) -> Result:
        if op == "bench.collect":
            value: dict[str, JsonValue] = {
                "count": self.received,
                "first_recv_ns": self.first_recv_ns,
                "last_recv_ns": self.last_recv_ns,
                "latency": LatencyStats.of_ns(self.load_latency_ns).to_json()
                if self.received
                else None,
            }
            self.received = self.first_recv_ns = self.last_recv_ns = 0
            self.load_latency_ns = array("q")
            return Result(ok=True, value=value)
        if op == "bench.send":
            return self.send_many(
                _str(params, "room"),
                _int(params, "count"),
                _int(params, "batch"),
                _int(params, "payload"),
            )
        if op == "bench.pingpong":
            return self.pingpong(
                _str(params, "room"), _int(params, "count"), _int(params, "warmup")
            )
        if op == "bench.report":
            samples, self.ping_latency_ns = self.ping_latency_ns, array("q")
            kept = samples[_int(params, "skip") :]
            return Result(ok=True, value=LatencyStats.of_ns(kept).to_json())
        raise BenchFailure(f"unknown operation {op!r}")

    # -- sending --------------------------------------------------------------------------
    def post(self, room: str, kind: str, index: int, payload: int) -> None:
        self.messages_out += 1
        text = f"{kind} {index} {time.monotonic_ns()} {'x' * payload}"
        msg = Msg(
            msg_id=f"{self.agent_id}:{self.transport.incarnation}:{self.messages_out}",
            sender=self.agent_id,
            room=room,
            text=text,
            origin=Origin.AGENT,
        )
        self.transport.send(msg, dst=room)

    def send_many(self, room: str, count: int, batch: int, payload: int) -> Result:
        start_ns = time.monotonic_ns()
        deadline = time.monotonic() + self.op_timeout
        for index in range(count):
            self.post(room, THROUGHPUT, index, payload)
            # Bound what the transport holds: let each batch be acknowledged before the next.
            if (index + 1) % batch == 0 and not self.transport.flush(deadline):
                raise BenchFailure(f"batch ending at {index} not acknowledged in time")
        if not self.transport.flush(deadline):
            raise BenchFailure("last batch not acknowledged in time")
        return Result(ok=True, value={"start_ns": start_ns, "end_ns": time.monotonic_ns()})

    def pingpong(self, room: str, count: int, warmup: int) -> Result:
        rtts = array("q")
        for index in range(warmup + count):
            sent_ns = time.monotonic_ns()
            self.post(room, PING, index, 0)
            self.await_pong(index)
            if index >= warmup:
                rtts.append(time.monotonic_ns() - sent_ns)
        return Result(ok=True, value=LatencyStats.of_ns(rtts).to_json())

    def await_pong(self, index: int) -> None:
        deadline = time.monotonic() + self.op_timeout
        while (remaining := deadline - time.monotonic()) > 0:
            item = self.inbox.get(timeout=remaining)
            self.transport.request_window_update()
            if isinstance(item, Delivered):
                self.messages_in += 1
                kind, got, _ = parse_text(item.msg.text)
                if kind == PONG and got == index:
                    return
            elif item is not None:
                raise BenchFailure(f"unexpected {type(item).__name__} while waiting for a pong")
        raise BenchFailure(f"pong {index} did not arrive within {self.op_timeout:g}s")

    # -- teardown -------------------------------------------------------------------------
    def shutdown(self, deadline_s: float) -> int:
        deadline = time.monotonic() + deadline_s
        t = self.transport
        drained = t.flush(deadline)
        stats = AgentStats(
            messages_in=self.messages_in,
            messages_out=self.messages_out,
            commands=self.commands,
            duplicates_dropped=t.inbound.duplicates,
            retries=t.outbox.retransmissions,
            dead_letters=t.stats.dead_letters,
            rejected_frames=t.stats.rejected,
            inbox_peak=self.inbox.peak,
        )
        undelivered = 0 if drained else t.outbox.in_flight + t.outbox.queued
        t.send(Bye(stats=stats, undelivered=undelivered))
        t.flush(deadline)
        return EXIT_OK


def parse_text(text: str) -> tuple[str, int, int]:
    kind, index, sent_ns, _ = text.split(" ", 3)
    return kind, int(index), int(sent_ns)


def _int(params: dict[str, JsonValue], key: str) -> int:
    value = params.get(key)
    if not isinstance(value, int):
        raise BenchFailure(f"{key} must be an int, got {value!r}")
    return value


def _str(params: dict[str, JsonValue], key: str) -> str:
    value = params.get(key)
    if not isinstance(value, str):
        raise BenchFailure(f"{key} must be a string, got {value!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)

    def serve(config: AgentConfig, transport: Transport, inbox: Inbox) -> int:
        transport.send(Ready(pid=os.getpid(), store_path=config.agent_dir))
        return BenchAgent(config.agent_id, transport, inbox, args.op_timeout).serve()

    return run_agent(args, serve, RetryPolicy(window=args.window))


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
