"""`python -m benchmarks.bus`: agent -> agent messaging through the coordinator, against raw pyzmq.

One run measures, in order:

1. the ceiling: raw pyzmq + msgpack between two processes over ipc with windowed, batched
   cumulative acks (benchmarks._raw), and the raw ipc round trip;
2. acked throughput from one agent to another through the coordinator, with the project's
   real parts: the Cluster (and its Bus) in this process's event loop, and two agent processes
   running the real Transport and Inbox (benchmarks._worker). Throughput is messages taken out
   of the receiver's inbox per second, from the sender's first send to the receiver's last
   receipt;
3. idle latency: ping -> pong between the two agents, one at a time; one-way is the receiver's
   receipt time minus the sender's stamp (CLOCK_MONOTONIC is system-wide).

Each throughput is the median of --repeat runs (after one short warm-up run). It prints a
table (figure, value, target, ratio to the baseline measured in the same run, status) or, with
--json, one JSON object. A missed target is printed as MISSED.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import psutil
from pydantic import JsonValue

from benchmarks._common import (
    STOP_DEADLINE_S,
    Row,
    child_env,
    coordinator,
    print_table,
    processes_left,
    run_dir,
    verdict,
)
from benchmarks._raw import RawPeer
from benchmarks._stats import LatencyStats
from orchestrator.cluster.cluster import AgentState, Cluster
from orchestrator.cluster.faults import WireFault
from orchestrator.cluster.launchers import SpawnLauncher
from orchestrator.events import MessageSent
from protocol import AgentConfig, ChannelType, CmdSetState, Msg, Origin, RoomConfig, encode_body
from protocol.reliability import RetryPolicy

SENDER, RECEIVER, ROOM = "bench-tx", "bench-rx", "bench"

TARGET_THROUGHPUT_RATIO = 0.5
TARGET_IDLE_P50_MS = 0.5
TARGET_IDLE_P99_MS = 2.0

READY_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class Options:
    messages: int
    window: int
    repeat: int
    latency_samples: int
    warmup: int
    payload: int
    batch: int
    op_timeout: float
    json: bool

    @property
    def warmup_messages(self) -> int:
        return max(1, min(self.messages // 10, 2000))


def parse_args(argv: Sequence[str]) -> Options:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bus",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--messages", type=int, default=20_000, help="messages per throughput run")
    p.add_argument(
        "--window",
        type=int,
        default=RetryPolicy().window,
        help="most unacknowledged messages per link, raw and on every project link",
    )
    p.add_argument("--repeat", type=int, default=3, help="throughput runs; the median counts")
    p.add_argument("--latency-samples", type=int, default=1000, help="pings after warm-up")
    p.add_argument("--warmup", type=int, default=100, help="pings before recording")
    p.add_argument("--payload", type=int, default=64, help="padding bytes in each message text")
    p.add_argument(
        "--batch",
        type=int,
        default=4096,
        help="most messages the sending agent's transport holds unacknowledged",
    )
    p.add_argument("--op-timeout", type=float, default=120.0, help="seconds per operation")
    p.add_argument("--json", action="store_true", help="print one JSON object, no table")
    ns = p.parse_args(list(argv))
    for name in ("messages", "window", "repeat", "latency_samples", "batch"):
        if getattr(ns, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if ns.payload < 0 or ns.warmup < 0:
        p.error("--payload and --warmup must not be negative")
    return Options(
        messages=ns.messages,
        window=ns.window,
        repeat=ns.repeat,
        latency_samples=ns.latency_samples,
        warmup=ns.warmup,
        payload=ns.payload,
        batch=ns.batch,
        op_timeout=ns.op_timeout,
        json=ns.json,
    )


def sample_msg(payload: int) -> Msg:
    """A message shaped like the benchmark agent's: same fields, same text length."""
    return Msg(
        msg_id=f"{SENDER}:1:{10**9}",
        sender=SENDER,
        room=ROOM,
        text=f"t {10**9} {time.monotonic_ns()} {'x' * payload}",
        origin=Origin.AGENT,
    )


# -- the benchmark agent's launcher ----------------------------------------------------------


def worker_launcher(window: int, op_timeout: float) -> SpawnLauncher:
    """SpawnLauncher's process setup (own session, death pipe), running benchmarks._worker."""
    return SpawnLauncher(
        "benchmarks._worker",
        ("--window", str(window), "--op-timeout", repr(op_timeout)),
        name="bench-worker",
    )


# -- measurements ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RawFigures:
    runs: list[float]
    rtt: LatencyStats
    one_way: LatencyStats

    @property
    def throughput(self) -> float:
        return statistics.median(self.runs)


@dataclass(frozen=True, slots=True)
class AgentFigures:
    runs: list[float]
    load_latency: LatencyStats
    """One-way latency of the median throughput run (sender's queue included)."""
    cpu_us_per_msg: dict[str, float]
    """CPU time per message over the throughput runs: coordinator, sender, receiver."""
    one_way: LatencyStats
    to_coordinator: LatencyStats
    """Idle pings: the sender's stamp to the coordinator routing the message."""
    rtt: LatencyStats
    retries: int
    dead_letters: int
    rejected_frames: int
    clean_exits: bool
    processes_left: int

    @property
    def throughput(self) -> float:
        return statistics.median(self.runs)


class BenchError(Exception):
    """A benchmark operation failed inside an agent, or lost messages."""


def measure_raw(opts: Options) -> RawFigures:
    body = sample_msg(opts.payload).model_dump(mode="json")
    with run_dir("sr-bench-raw-") as directory, RawPeer(directory, opts.op_timeout) as peer:
        peer.throughput(opts.warmup_messages, opts.window, body)
        runs = [
            peer.throughput(opts.messages, opts.window, body).msgs_per_s for _ in range(opts.repeat)
        ]
        rtts, one_way = peer.pingpong(opts.latency_samples, opts.warmup)
    return RawFigures(runs, LatencyStats.of_ns(rtts), LatencyStats.of_ns(one_way))


async def measure_agents(opts: Options, idle_fault: bool = False) -> AgentFigures:
    """`idle_fault`: with a bus fault in force that matches none of the messages (the cost of
    a fault when none fires; benchmarks.faults)."""
    launcher = worker_launcher(opts.window, opts.op_timeout)
    with run_dir("sr-bench-bus-") as directory:
        async with coordinator(
            directory, launcher, RetryPolicy(window=opts.window), child_env()
        ) as c:
            room = RoomConfig(id=ROOM, channel=ChannelType.GROUP, members=[SENDER, RECEIVER])
            c.set_rooms([(ROOM, (SENDER, RECEIVER))])
            configs = [
                AgentConfig(agent_id=agent, agent_dir=str(directory / agent), rooms=[room])
                for agent in (SENDER, RECEIVER)
            ]
            await c.launch(configs, READY_TIMEOUT_S)
            if idle_fault:
                c.wire_fault(
                    WireFault("drop", "drop in a room no message uses", rooms=frozenset({"none"}))
                )

            await _throughput_run(c, opts, opts.warmup_messages)
            pids = {agent: c.handles[agent].pid for agent in (SENDER, RECEIVER)}
            cpu_before = _cpu_seconds(pids)
            runs = [await _throughput_run(c, opts, opts.messages) for _ in range(opts.repeat)]
            cpu_after = _cpu_seconds(pids)
            total = opts.messages * opts.repeat
            cpu_us = {k: (cpu_after[k] - cpu_before[k]) * 1e6 / total for k in cpu_before}
            median = sorted(runs, key=lambda r: r[0])[len(runs) // 2]

            routed: list[MessageSent] = []
            watch = c.events.subscribe(routed.append, (MessageSent,), SENDER)
            params: dict[str, JsonValue] = {
                "room": ROOM,
                "count": opts.latency_samples,
                "warmup": opts.warmup,
            }
            rtt = LatencyStats.from_json(await _op(c, SENDER, "bench.pingpong", params, opts))
            report = await _op(c, RECEIVER, "bench.report", {"skip": opts.warmup}, opts)
            watch.close()
            to_coordinator = _ping_hop_latency(c, routed, opts.warmup)
            await c.stop(STOP_DEADLINE_S)

            procs = list(c.handles.values())
            clean = all(
                p.state is AgentState.EXITED
                and p.exit is not None
                and p.exit.returncode == 0
                and p.escalation is None
                for p in procs
            )
            return AgentFigures(
                runs=[rate for rate, _ in runs],
                load_latency=median[1],
                cpu_us_per_msg=cpu_us,
                one_way=LatencyStats.from_json(report),
                to_coordinator=to_coordinator,
                rtt=rtt,
                retries=sum(link.stats.retries for link in c.bus.links.values()),
                dead_letters=c.bus.dead_letters,
                rejected_frames=sum(c.bus.rejected.values()),
                clean_exits=clean,
                processes_left=len(processes_left([p.pid for p in procs])),
            )


async def _op(
    c: Cluster, agent: str, op: str, params: dict[str, JsonValue], opts: Options
) -> JsonValue:
    result = await c.command(agent, CmdSetState(path=op, value=params), opts.op_timeout)
    if not result.ok:
        raise BenchError(f"{agent}: {op} failed: {result.error}")
    return result.value


async def _throughput_run(c: Cluster, opts: Options, count: int) -> tuple[float, LatencyStats]:
    """Messages per second into the receiver's inbox, and their one-way latency."""
    params: dict[str, JsonValue] = {
        "room": ROOM,
        "count": count,
        "batch": opts.batch,
        "payload": opts.payload,
    }
    sent = await _op(c, SENDER, "bench.send", params, opts)
    got = await _op(c, RECEIVER, "bench.collect", {}, opts)
    if not isinstance(sent, dict) or not isinstance(got, dict):
        raise BenchError(f"bad answers: sent {sent!r}, received {got!r}")
    start_ns, last_ns, received = sent.get("start_ns"), got.get("last_recv_ns"), got.get("count")
    if received != count:
        raise BenchError(f"{RECEIVER} received {received} of {count} messages")
    if not isinstance(start_ns, int) or not isinstance(last_ns, int) or last_ns <= start_ns:
        raise BenchError(f"bad times: sent {sent!r}, received {got!r}")
    return count * 1e9 / (last_ns - start_ns), LatencyStats.from_json(got["latency"])


def _cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU seconds so far of this process (the coordinator) and each agent."""
    out = {"coordinator": time.process_time()}
    for agent, pid in pids.items():
        times = psutil.Process(pid).cpu_times()
        out[agent] = times.user + times.system
    return out


def _ping_hop_latency(c: Cluster, routed: list[MessageSent], warmup: int) -> LatencyStats:
    """From the event log: each recorded ping's send stamp to the coordinator routing it."""
    samples: list[int] = []
    for event in routed:
        if not event.text.startswith("p "):
            continue
        _, index, sent_ns, _ = event.text.split(" ", 3)
        if int(index) >= warmup:
            routed_ns = round((c.events.t0 + event.t) * 1e9)
            samples.append(routed_ns - int(sent_ns))
    return LatencyStats.of_ns(samples)


# -- report ----------------------------------------------------------------------------------


def _checks(agents: AgentFigures, raw: RawFigures) -> dict[str, tuple[float, str, bool]]:
    ratio = agents.throughput / raw.throughput
    p50, p99 = agents.one_way.p50_ms, agents.one_way.p99_ms
    return {
        "throughput_ratio": (
            ratio,
            f">= {TARGET_THROUGHPUT_RATIO:g}",
            ratio >= TARGET_THROUGHPUT_RATIO,
        ),
        "idle_one_way_p50_ms": (p50, f"<= {TARGET_IDLE_P50_MS:g}", p50 <= TARGET_IDLE_P50_MS),
        "idle_one_way_p99_ms": (p99, f"<= {TARGET_IDLE_P99_MS:g}", p99 <= TARGET_IDLE_P99_MS),
    }


def figures_json(opts: Options, raw: RawFigures, agents: AgentFigures) -> dict[str, JsonValue]:
    checks = _checks(agents, raw)
    return {
        "benchmark": "bus",
        "cpus": os.cpu_count(),
        "messages": opts.messages,
        "window": opts.window,
        "repeat": opts.repeat,
        "batch": opts.batch,
        "latency_samples": opts.latency_samples,
        "msg_body_bytes": len(encode_body(sample_msg(opts.payload))),
        "raw_throughput_msgs_per_s": round(raw.throughput, 1),
        "raw_throughput_runs": [round(r, 1) for r in raw.runs],
        "agent_throughput_msgs_per_s": round(agents.throughput, 1),
        "agent_throughput_runs": [round(r, 1) for r in agents.runs],
        "throughput_ratio": round(agents.throughput / raw.throughput, 4),
        "agent_load_latency": agents.load_latency.to_json(),
        "cpu_us_per_msg": {k: round(v, 2) for k, v in agents.cpu_us_per_msg.items()},
        "raw_rtt": raw.rtt.to_json(),
        "raw_one_way": raw.one_way.to_json(),
        "agent_one_way": agents.one_way.to_json(),
        "agent_to_coordinator": agents.to_coordinator.to_json(),
        "agent_rtt": agents.rtt.to_json(),
        "retries": agents.retries,
        "dead_letters": agents.dead_letters,
        "rejected_frames": agents.rejected_frames,
        "clean_exits": agents.clean_exits,
        "processes_left": agents.processes_left,
        "targets": {
            name: {"value": round(value, 4), "target": target, "met": met}
            for name, (value, target, met) in checks.items()
        },
        "missed": [name for name, (_, _, met) in checks.items() if not met],
    }


def _ms(v: float) -> str:
    return f"{v:.3f} ms"


def _times(v: float, base: float) -> str:
    return f"{v / base:.2f}x"


def print_report(opts: Options, raw: RawFigures, agents: AgentFigures) -> None:
    checks = _checks(agents, raw)
    ratio, _, ratio_met = checks["throughput_ratio"]
    one_way = agents.one_way
    rows = [
        Row(
            "raw pyzmq windowed-ack throughput (ceiling)",
            f"{raw.throughput:,.0f} msg/s",
            ratio="baseline",
        ),
        Row(
            "agent->agent acked throughput via coordinator",
            f"{agents.throughput:,.0f} msg/s",
            f">= {TARGET_THROUGHPUT_RATIO:.0%} of ceiling",
            f"{ratio:.1%}",
            verdict(ratio_met),
        ),
        Row("  its one-way latency, p50 (sender queue incl.)", _ms(agents.load_latency.p50_ms)),
        Row("  its one-way latency, p99 (sender queue incl.)", _ms(agents.load_latency.p99_ms)),
        Row(
            "  CPU per message: coordinator / sender / receiver",
            " / ".join(f"{v:.0f}" for v in agents.cpu_us_per_msg.values()) + " us",
        ),
        Row("raw ipc round trip, p50", _ms(raw.rtt.p50_ms), ratio="baseline"),
        Row("raw ipc round trip, p99", _ms(raw.rtt.p99_ms), ratio="baseline"),
        Row("raw ipc one-way, p50", _ms(raw.one_way.p50_ms), ratio="baseline"),
        Row("raw ipc one-way, p99", _ms(raw.one_way.p99_ms), ratio="baseline"),
        Row(
            "idle agent->agent one-way, p50",
            _ms(one_way.p50_ms),
            f"<= {_ms(TARGET_IDLE_P50_MS)}",
            _times(one_way.p50_ms, raw.one_way.p50_ms) + " raw",
            verdict(checks["idle_one_way_p50_ms"][2]),
        ),
        Row(
            "idle agent->agent one-way, p99",
            _ms(one_way.p99_ms),
            f"<= {_ms(TARGET_IDLE_P99_MS)}",
            _times(one_way.p99_ms, raw.one_way.p99_ms) + " raw",
            verdict(checks["idle_one_way_p99_ms"][2]),
        ),
        Row("  of which sender -> coordinator routed, p50", _ms(agents.to_coordinator.p50_ms)),
        Row("  of which sender -> coordinator routed, p99", _ms(agents.to_coordinator.p99_ms)),
        Row(
            "idle agent ping -> pong round trip, p50",
            _ms(agents.rtt.p50_ms),
            ratio=_times(agents.rtt.p50_ms, raw.rtt.p50_ms) + " raw rtt",
        ),
        Row(
            "idle agent ping -> pong round trip, p99",
            _ms(agents.rtt.p99_ms),
            ratio=_times(agents.rtt.p99_ms, raw.rtt.p99_ms) + " raw rtt",
        ),
        Row(
            "retries / dead letters / rejected frames",
            f"{agents.retries} / {agents.dead_letters} / {agents.rejected_frames}",
        ),
        Row(
            "agents exited cleanly; processes left",
            f"{'yes' if agents.clean_exits else 'NO'}; {agents.processes_left}",
        ),
    ]
    title = (
        f"bus benchmark: {opts.messages} messages x {opts.repeat} runs (median), "
        f"window {opts.window}, {opts.latency_samples} latency samples, {os.cpu_count()} CPUs"
    )
    print_table(title, rows)
    missed = [name for name, (_, _, met) in checks.items() if not met]
    print("targets missed: " + (", ".join(missed) if missed else "none"))


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    raw = measure_raw(opts)
    agents = asyncio.run(measure_agents(opts))
    if opts.json:
        print(json.dumps(figures_json(opts, raw, agents)))
    else:
        print_report(opts, raw, agents)
    return 0


if __name__ == "__main__":
    sys.exit(main())
