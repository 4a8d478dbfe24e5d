"""The benchmarks run end to end at tiny sizes and report every figure; no timing is asserted."""

from __future__ import annotations

import importlib
import json
from types import ModuleType
from typing import Any

import pytest

from orchestrator.run.loopwatch import PROBE_INTERVAL_S


def _benchmark(name: str) -> ModuleType:
    # benchmarks/ is a top-level folder, not an installed package; pytest's `pythonpath = ["."]`
    # (pyproject.toml) puts the checkout on sys.path.
    return importlib.import_module(f"benchmarks.{name}")


def _run_json(name: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert _benchmark(name).main([*argv, "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, out
    result = json.loads(out[0])
    assert isinstance(result, dict)
    return result


def _assert_latency(stats: dict[str, Any], count: int) -> None:
    assert stats["count"] == count
    assert 0 < stats["p50_ms"] <= stats["p99_ms"] <= stats["max_ms"]
    assert stats["mean_ms"] > 0


@pytest.mark.timeout(60)
def test_bus_benchmark_reports_every_figure(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--messages", "200", "--repeat", "1", "--latency-samples", "50", "--warmup", "5"]
    r = _run_json("bus", argv, capsys)

    assert r["benchmark"] == "bus"
    assert r["messages"] == 200
    assert r["raw_throughput_msgs_per_s"] > 0
    assert r["agent_throughput_msgs_per_s"] > 0
    assert len(r["raw_throughput_runs"]) == len(r["agent_throughput_runs"]) == 1
    assert r["throughput_ratio"] == pytest.approx(
        r["agent_throughput_msgs_per_s"] / r["raw_throughput_msgs_per_s"], rel=1e-3
    )
    _assert_latency(r["agent_load_latency"], 200)
    for key in ("raw_rtt", "raw_one_way", "agent_one_way", "agent_to_coordinator", "agent_rtt"):
        _assert_latency(r[key], 50)
    assert set(r["cpu_us_per_msg"]) == {"coordinator", "bench-tx", "bench-rx"}
    # /proc counts agent CPU in 10 ms ticks: at 200 messages an agent may show none.
    assert all(v >= 0 for v in r["cpu_us_per_msg"].values())
    assert r["cpu_us_per_msg"]["coordinator"] > 0
    assert r["dead_letters"] == 0
    assert r["rejected_frames"] == 0
    assert r["clean_exits"] is True
    assert r["processes_left"] == 0
    assert set(r["targets"]) == {"throughput_ratio", "idle_one_way_p50_ms", "idle_one_way_p99_ms"}
    for check in r["targets"].values():
        assert check["value"] > 0
        assert isinstance(check["met"], bool)
    assert r["missed"] == [name for name, c in r["targets"].items() if not c["met"]]


@pytest.mark.timeout(60)
def test_startup_benchmark_reports_every_count(capsys: pytest.CaptureFixture[str]) -> None:
    r = _run_json("startup", ["--counts", "1,2"], capsys)

    assert r["benchmark"] == "startup"
    assert r["launchers"] == ["fork", "spawn"]
    assert r["counts"] == [1, 2]
    assert [(run["launcher"], run["count"]) for run in r["runs"]] == [
        ("fork", 1), ("fork", 2), ("spawn", 1), ("spawn", 2)
    ]  # fmt: skip
    for run in r["runs"]:
        for key in ("import_floor_s", "ready_s", "startup_p50_s", "startup_max_s", "teardown_s"):
            assert run[key] > 0, key
        assert run["startup_p50_s"] <= run["startup_max_s"] <= run["ready_s"]
        assert run["uss_p50_mib"] > 0
        assert run["processes_left"] == 0
        assert run["clean_exits"] == run["count"]
        assert run["escalations"] == 0
        assert run["ready_met"] is None  # targets are set for 64 and 256 agents only
        assert run["teardown_met"] is None
    # Targets (64 and 256 agents, a fork agent's USS) are the benchmark's, not asserted here.
    assert all(m.split("_")[0] in ("fork", "spawn") for m in r["missed"])


def test_bus_benchmark_rejects_bad_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _benchmark("bus").main(["--messages", "0"])
    assert exc.value.code == 2
    assert "--messages" in capsys.readouterr().err


def test_startup_benchmark_rejects_bad_counts(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _benchmark("startup").main(["--counts", "1,x"])
    assert exc.value.code == 2
    assert "--counts" in capsys.readouterr().err


@pytest.mark.timeout(60)
def test_steps_benchmark_reports_every_figure(capsys: pytest.CaptureFixture[str]) -> None:
    r = _run_json("steps", ["--rounds", "30"], capsys)
    assert r["benchmark"] == "steps" and r["rounds"] == 30
    assert set(r["step_p50_ms"]) == {"action", "send", "wait", "assert"}
    assert all(v > 0 for v in r["step_p50_ms"].values())
    assert r["assert_first_tenth_mean_ms"] > 0 and r["assert_last_tenth_mean_ms"] > 0
    assert r["events"] > 30 * 4
    assert isinstance(r["missed"], list)


def test_steps_benchmark_rejects_too_few_rounds(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _benchmark("steps").main(["--rounds", "3"])
    assert exc.value.code == 2
    assert "--rounds" in capsys.readouterr().err


@pytest.mark.timeout(120)
def test_scenario_benchmark_reports_every_figure(capsys: pytest.CaptureFixture[str]) -> None:
    r = _run_json("scenario", ["--sizes", "64,128", "--scenarios", "pingpong,burst"], capsys)
    assert r["benchmark"] == "scenario" and r["sizes"] == [64, 128]
    assert set(r["scenarios"]) == {"pingpong", "burst"}
    for name, entry in r["scenarios"].items():
        runs = entry["runs"]
        assert [run["messages"] for run in runs] == [64, 128]
        for run in runs:
            assert run["msgs_per_s"] > 0 and run["cpu_us_per_msg"] > 0
            assert run["coordinator_cpu_us_per_msg"] > 0
            assert 0 < run["script_cpu_us_per_msg"] < run["cpu_us_per_msg"]
            assert run["coordinator_peak_rss_mib"] > 0
            assert run["loop_lag_max_ms"] >= run["loop_lag_p99_ms"] >= 0
            # The loop's lag is probed every 50 ms: a script phase shorter than that (these are
            # tiny runs) may hold no probe, and then its lag is unknown, not zero.
            assert run["script_loop_lag_max_ms"] is not None or run["script_s"] < PROBE_INTERVAL_S
        expected = {"cpu_us_per_msg", "loop_lag_max_ms", "cost_ratio", "rss_ratio"}
        if name == "pingpong":
            expected.add("msgs_per_s")
        assert set(entry["targets"]) == expected
    flagged = [f"{n} {k}" for n, e in r["scenarios"].items()
               for k, c in e["targets"].items() if not c["met"]]  # fmt: skip
    assert r["missed"] == flagged


def test_scenario_benchmark_rejects_unknown_scenarios(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _benchmark("scenario").main(["--scenarios", "pingpong,nope"])
    assert exc.value.code == 2
    assert "nope" in capsys.readouterr().err
    for sizes in ("20000,lots", "10"):
        with pytest.raises(SystemExit) as exc:
            _benchmark("scenario").main(["--sizes", sizes])
        assert exc.value.code == 2
        assert "--sizes" in capsys.readouterr().err


@pytest.mark.timeout(120)
def test_crowd_benchmark_reports_every_figure(capsys: pytest.CaptureFixture[str]) -> None:
    r = _run_json("crowd", ["--counts", "4"], capsys)
    assert r["benchmark"] == "crowd"
    (run,) = r["runs"]
    assert run["agents"] == 4 and run["verdict"] == "PASS", run["reasons"]
    assert run["processes_left"] == 0
    assert run["messages_routed"] == 1 + 2 * 2  # the roll call, a ping and a pong per pair
    assert run["ready_s"] > 0 and run["teardown_s"] > 0
    assert run["uss_p50_mib"] > 0
    assert run["sampler"]["readings"] >= 2 * 4  # READY and before-STOP, at least
    assert set(run["targets"]) >= {"verdict", "processes_left"}


def test_crowd_benchmark_refuses_an_odd_count(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _benchmark("crowd").main(["--counts", "5"])
    assert exc.value.code == 2
    assert "even" in capsys.readouterr().err


@pytest.mark.timeout(120)
def test_soak_benchmark_reports_every_figure(capsys: pytest.CaptureFixture[str]) -> None:
    r = _run_json(
        "soak", ["--durations", "6s", "--agents", "3", "--sample-interval", "250ms"], capsys
    )
    (run,) = r["runs"]
    assert run["agents"] == 3 and run["iterations"] > 0
    assert run["report_bytes"] > 0 and run["events_bytes"] > 0
    assert 0 < run["sampler_share"] < 1 and run["sampler_cpu_s"] > 0
    assert run["coordinator_rss_end_mib"] > 0 and run["coordinator_rss_verdict"] is not None
    assert sum(run["echo_verdicts"].values()) == 2 * 4  # 2 echoes, 4 process series


@pytest.mark.timeout(120)
def test_leakfind_benchmark_reports_every_agent(capsys: pytest.CaptureFixture[str]) -> None:
    r = _run_json("leakfind", ["--duration", "9s", "--rates", "65536", "--clean", "1",
                               "--warming", "1", "--soaks", "1"], capsys)  # fmt: skip
    (soak,) = r["soaks"]
    assert soak["passes"] > 0
    agents = {a["agent"]: a for a in soak["agents"]}
    assert set(agents) == {"leak0", "clean0", "warming0"}
    assert agents["leak0"]["injected_per_h"] > 0 and agents["clean0"]["injected_per_h"] == 0
    assert all(a["verdict"] in ("leak", "no leak", "inconclusive") for a in agents.values())
    if agents["leak0"]["verdict"] == "leak":  # then the locating pass named its line
        assert agents["leak0"]["site"].startswith("leaky.py:")


@pytest.mark.timeout(90)
def test_faults_benchmark_reports_every_figure(capsys: pytest.CaptureFixture[str]) -> None:
    r = _run_json("faults", ["--runs", "1", "--messages", "200", "--pairs", "1"], capsys)
    (kill,) = r["kill_to_failure_s"]
    (hung,) = r["sigstop_to_hung_s"]
    assert 0 < kill < 20, "the action failed when its agent was killed, not at its timeout"
    assert 0 < hung < 30
    assert r["throughput_no_fault_msgs_per_s"][0] > 0
    assert r["throughput_idle_fault_msgs_per_s"][0] > 0
    assert r["idle_fault_throughput_ratio"] > 0
