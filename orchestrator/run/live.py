"""Live metrics: `--metrics-port N` serves Prometheus metrics on 127.0.0.1 while runs go on.

Nothing is counted twice and nothing costs a message anything: the collector reads, at each
scrape (in the HTTP server's thread), what the runs already keep: the sampler's per-agent
figures, the bus's counters and latency histograms, a soak's pass count. Runs register here
when they start and leave when they end (`ACTIVE`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from orchestrator.metrics import LatencyHistogram

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from orchestrator.run.runner import ScenarioRun

ACTIVE: dict[int, ScenarioRun] = {}
"""Runs in progress in this process, by id(); the runner adds and removes itself."""

LATENCY_BOUNDS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Upper bounds (seconds) of the delivery latency histogram's buckets."""


def _buckets(histogram: LatencyHistogram) -> list[tuple[str, float]]:
    return [(repr(bound), float(n)) for bound, n in histogram.cumulative(LATENCY_BOUNDS)] + [
        ("+Inf", float(histogram.count))
    ]


class RunsCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        label_names = ["scenario"]
        agent_labels = ["scenario", "agent"]
        elapsed = GaugeMetricFamily(
            "scenario_runner_elapsed_seconds", "Seconds since the run started.", labels=label_names
        )
        passes = CounterMetricFamily(
            "scenario_runner_soak_passes",
            "Passes of the script (1 unless a soak).",
            labels=label_names,
        )
        routed = CounterMetricFamily(
            "scenario_runner_messages_routed", "Messages the bus routed.", labels=label_names
        )
        retries = CounterMetricFamily(
            "scenario_runner_retries", "Frames the bus retransmitted.", labels=label_names
        )
        dead = CounterMetricFamily(
            "scenario_runner_dead_letters",
            "Messages that could not be delivered.",
            labels=label_names,
        )
        latency = HistogramMetricFamily(
            "scenario_runner_delivery_latency_seconds",
            "Message delivery latency through the bus.",
            labels=label_names,
        )
        rss = GaugeMetricFamily(
            "scenario_runner_agent_rss_bytes", "Agent RSS, last sampled.", labels=agent_labels
        )
        uss = GaugeMetricFamily(
            "scenario_runner_agent_uss_peak_bytes",
            "Largest agent USS sampled.",
            labels=agent_labels,
        )
        fds = GaugeMetricFamily(
            "scenario_runner_agent_open_fds", "Agent open descriptors.", labels=agent_labels
        )
        threads = GaugeMetricFamily(
            "scenario_runner_agent_threads", "Agent threads.", labels=agent_labels
        )
        delivered = CounterMetricFamily(
            "scenario_runner_agent_messages_in",
            "Messages delivered to the agent.",
            labels=agent_labels,
        )
        posted = CounterMetricFamily(
            "scenario_runner_agent_messages_out", "Messages the agent posted.", labels=agent_labels
        )
        coordinator = GaugeMetricFamily(
            "scenario_runner_coordinator_rss_bytes",
            "The coordinator's own RSS, last sampled.",
            labels=label_names,
        )
        for run in list(ACTIVE.values()):
            label = [run.scenario.label]
            elapsed.add_metric(label, run.elapsed_s())
            passes.add_metric(label, float(run.iterations))
            cluster, sampler = run.cluster, run.sampler
            if cluster is not None:
                bus = cluster.bus
                routed.add_metric(label, float(bus.messages_routed))
                dead.add_metric(label, float(bus.dead_letters))
                links = list(bus.links.values())
                retries.add_metric(label, float(sum(link.stats.retries for link in links)))
                merged = LatencyHistogram()
                for link in links:
                    merged.merge(link.stats.latency)
                    delivered.add_metric([*label, link.agent_id], float(link.stats.delivered))
                    posted.add_metric([*label, link.agent_id], float(link.stats.posted))
                latency.add_metric(label, _buckets(merged), sum_value=merged.total_s)
            if sampler is not None:
                for agent, s in list(sampler.agents.items()):
                    labels = [*label, agent]
                    if s.last_rss is not None:
                        rss.add_metric(labels, float(s.last_rss))
                    if s.uss_peak:
                        uss.add_metric(labels, float(s.uss_peak))
                    if s.num_fds is not None:
                        fds.add_metric(labels, float(s.num_fds))
                    if s.num_threads is not None:
                        threads.add_metric(labels, float(s.num_threads))
                if sampler.coordinator.last_rss is not None:
                    coordinator.add_metric(label, float(sampler.coordinator.last_rss))
        yield from (
            elapsed,
            passes,
            routed,
            retries,
            dead,
            latency,
            rss,
            uss,
            fds,
            threads,
            delivered,
            posted,
            coordinator,
        )


def serve(port: int) -> tuple[WSGIServer, threading.Thread]:
    """Serve /metrics on 127.0.0.1:`port` (0: any free port) until `server.shutdown()`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RunsCollector())
    return start_http_server(port, addr="127.0.0.1", registry=registry)


def write_diagnostics(why: str) -> list[Path]:
    """Every run under way writes its diagnostics (SIGUSR1 to the runner): their paths."""
    written = []
    for run in list(ACTIVE.values()):
        path = run.write_diagnostics(why)
        if path is not None:
            written.append(path)
    return written
