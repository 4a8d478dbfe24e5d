"""The fault matrix: every fault type against every step type, and every run ends in a
verdict with nothing left behind.

One run per fault, not one per pair: the script puts agent `t` in the fault (with a message
on its way to it), then runs every step type against it, each with a short timeout (a step
that fails is fine: its error boundary keeps the timeline going), then `fault` steps against
the agent already in the fault, while an actor timeline acts as `t` from the moment the fault
is injected. Each run must end in a verdict (PASS, FAIL or ERROR, exit 0, 1 or 3) that
accounts for every failed step, with no runner error or traceback, no step past its timeout,
nothing that spun, and nothing left behind: no process, no run directory (the bus socket is
in it), no descriptor or thread in the coordinator's process. `-m slow` adds one run per
(fault, step type) pair.
"""

from __future__ import annotations

import gc
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.events import ErrorKind
from orchestrator.report.model import EXIT_CODES, ScenarioReport, Verdict

STEP_TIMEOUT_S = 0.25
"""Every probe's budget (`defaults.timeout`): short, so that a run in which every probe
times out still takes seconds, and a stopped agent's frames stay well inside the link's
retry budget (about 11 s at the minimum RTO): its link must not break."""
FAULT_TIMEOUT_S = 10.0
"""The budget of the warm-up and of fault steps (a restart waits for the new READY)."""
OVERRUN_SLACK_S = 1.5
"""How far past its timeout a step may end on a loaded machine, and no further."""
WINDOW = "for: 30s"
"""Bus faults outlast the script; the runner ends them before its drain."""
MAX_COMMANDS = 400
"""Commands a run may send: the script's few dozen, and the drain's round of one per live
agent each time the bus falls quiet. Thousands means something spun."""

# -- the matrix ------------------------------------------------------------------------------

FAULTS: dict[str, list[str]] = {
    # On t's process.
    "kill": ["kill: t"],
    "kill-sigterm": ["kill: t, signal: SIGTERM"],
    "stop": ["stop: t"],  # and left stopped: teardown must continue it
    "cont": ["stop: t", "cont: t"],
    "restart": ["restart: t"],
    "restart-empty": ["restart: t, keep_store: false"],
    # On the bus, each share 1 (in force on every transmission it matches), but frame loss:
    # losing every frame of t's link, heartbeats too, would rightly have t declared hung.
    "drop": [f"drop: 1.0, to: t, {WINDOW}"],
    "drop-frames": [f"drop: 0.3, frames: all, to: t, {WINDOW}"],  # acks, heartbeats, commands
    "delay": [f"delay: 300ms, jitter: 100ms, to: t, {WINDOW}"],
    "duplicate": [f"duplicate: 1.0, to: t, {WINDOW}"],
    "reorder": [f"reorder: 1.0, within: 300ms, {WINDOW}"],
    "partition": [f"partition: [[t], [b]], {WINDOW}"],
}
"""The fault steps that put agent `t` in each fault."""

AGAIN: dict[str, list[str]] = {
    "kill": ["kill: t", "stop: t", "cont: t"],
    "kill-sigterm": ["kill: t", "restart: t"],
    "stop": ["stop: t"],
    "cont": ["cont: t"],
    "restart": ["restart: t"],
    "restart-empty": ["restart: t, keep_store: false"],
    "drop": [f"drop: 1.0, from: t, {WINDOW}", "restart: t"],
    "drop-frames": [f"drop: 0.3, frames: all, from: t, {WINDOW}", "restart: t"],
    "delay": [f"delay: 100ms, room: r, {WINDOW}", "restart: t"],
    "duplicate": [f"duplicate: 1.0, {WINDOW}", "stop: t"],
    "reorder": [f"reorder: 1.0, to: t, {WINDOW}", "kill: t"],
    "partition": [f"partition: [[b], [t]], {WINDOW}", "restart: t"],
}
"""The `fault` step type against the agent already in the fault: the same fault again, and
another on top of it."""

PROBES: tuple[tuple[str, str], ...] = (
    ("send", "send: {agent: t, room: r, text: said by t}"),
    ("send", "send: {agent: b, room: r, text: ping 1}"),
    ("wait_for", "wait_for: {message: {to: t, origin: script, contains: ping 1}}"),
    ("wait_for", "wait_for: {message: {from: t, contains: pong ping 1}}"),
    ("action", "action: {agent: t, name: NONE}"),
    ("action", "action: {agent: t, name: REPLY, room: r, params: {text: replied}}"),
    ("wait_for", "wait_for: {action: {agent: t, name: REPLY}}"),
    ("set_state", "set_state: {agent: t, path: probe.value, value: 1}"),
    ("wait_for", "wait_for: {state: {agent: t, path: probe.value, equals: 1}}"),
    ("wait_for", "wait_for: {event: {kind: state.changed, agent: t}}"),
    ("assert", "assert: {state: {agent: t, path: probe.value, equals: 1}}"),
    ("assert", "assert: {message: {from: t, contains: pong}}"),
    ("assert", "assert: {delivery: {agent: t}}"),
    ("assert", "assert: {action: {agent: t, name: NONE, status: null, count: {min: 0}}}"),
    (
        "repeat",
        "repeat: {count: 2, steps: [{send: {agent: b, room: r, text: ping 2}},"
        " {action: {agent: t, name: NONE}}, {wait_for: {message: {from: t, contains: ping 2}}}]}",
    ),
    (
        "parallel",
        "parallel: [{send: {agent: t, room: r, text: at once}}, {action: {agent: t, name: IGNORE}},"
        " {set_state: {agent: t, path: probe.parallel, value: true}},"
        " {wait_for: {message: {from: t, contains: ping 3}}},"
        " {send: {agent: b, room: r, text: ping 3}}]",
    ),
    ("pause", "pause: 100ms"),
)
"""Every step type against `t` (the kind, and the step in flow-style YAML)."""
STEP_TYPES = {kind for kind, _ in PROBES} | {"fault"}

AGENTS = """\
agents:
  - {id: t, model: {rules: [{when: {regex: "^ping"}, reply: "pong {text}"}]}}
  - {id: b}
rooms:
  - {id: r, members: [t, b]}
"""
WARM_UP = [
    f"{{id: warm-send, timeout: {FAULT_TIMEOUT_S}s, send: {{agent: b, room: r, text: ping 0}}}}",
    f"{{id: warm-wait, timeout: {FAULT_TIMEOUT_S}s,"
    " wait_for: {message: {from: t, contains: pong ping 0}}}",
]
IN_FLIGHT = "{id: in-flight, send: {agent: b, room: r, text: ping in flight}}"
"""Right after the fault: a message on its way to `t`, for the fault to act on (most bus
faults touch messages only; commands to `t` queue behind it on the same ordered link)."""
ACTOR = f"""\
actors:
  - agent: t
    script:
      - id: actor-wait
        timeout: {FAULT_TIMEOUT_S}s
        wait_for: {{event: {{kind: fault.injected}}}}
      - {{id: actor-send, send: {{room: r, text: said by the actor}}}}
      - {{id: actor-action, action: {{name: NONE}}}}
      - {{id: actor-set-state, set_state: {{path: probe.actor, value: 1}}}}
"""
ASSERTIONS = """\
assertions:
  - message: {from: t, contains: pong}
  - action: {agent: t, name: NONE}
  - state: {agent: t, path: probe.value, equals: 1}
  - delivery: {}
  - errors: {}
  - timing: {step: warm-wait, max: 5s}
  - memory: {agent: t, peak_rss: 1GiB}
  - custom: {rule: "plugins.rules:pongs_at_least", params: {n: 0}}
"""
"""Every assertion type about `t`, judged after the run."""


def scenario(
    name: str, faults: list[str], probes: tuple[tuple[str, str], ...], again: list[str]
) -> str:
    """`t` answers pings, `b` pings: a warm-up round, the fault, the probes, the faults on
    top; an actor acting as `t`; assertions of every type."""
    steps = list(WARM_UP)
    steps += [f"{{id: fault-{i}, timeout: {FAULT_TIMEOUT_S}s, fault: {{{f}}}}}" for i, f in
              enumerate(faults)]  # fmt: skip
    steps.append(IN_FLIGHT)
    steps += [f"{{id: probe-{i}-{kind}, {step}}}" for i, (kind, step) in enumerate(probes)]
    steps += [f"{{id: again-{i}, timeout: {FAULT_TIMEOUT_S}s, fault: {{{f}}}}}" for i, f in
              enumerate(again)]  # fmt: skip
    head = f"name: {name}\ntimeout: 40s\ndefaults: {{timeout: {STEP_TIMEOUT_S}s}}\n"
    script = "script:\n" + "".join(f"  - {step}\n" for step in steps)
    return head + AGENTS + script + ACTOR + ASSERTIONS


# -- running and checking ----------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    code: int
    report: ScenarioReport
    output: str
    fds: tuple[int, int]
    """This process's open descriptors before and after the run: the coordinator runs here
    (the bus socket, the pidfds, the death pipe)."""
    threads: tuple[int, int]


def run(tmp_path: Path, name: str, text: str) -> Outcome:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    # The custom rule is imported from the file's folder, as a user's would be.
    plugins = tmp_path / "plugins"
    if not plugins.exists():
        plugins.symlink_to(Path(__file__).resolve().parent / "plugins")
    out = tmp_path / name
    me = psutil.Process()
    fds, threads = me.num_fds(), threading.active_count()
    result = CliRunner().invoke(
        main, ["run", str(path), "--report-dir", str(out), "-q", "--seed", "7"]
    )
    gc.collect()  # a task whose exception nobody retrieved is logged when it is collected
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"the runner raised {result.exception!r}\n{result.output}"
    )
    assert (out / "report.json").exists(), result.output
    report = ScenarioReport.model_validate_json((out / "report.json").read_text())
    after = (me.num_fds(), threading.active_count())
    return Outcome(result.exit_code, report, result.output, (fds, after[0]), (threads, after[1]))


def _budget(step_id: str | None) -> float:
    """A step's timeout, as the scenario gives it."""
    if step_id is not None and step_id.startswith(("warm-", "fault-", "again-", "actor-wait")):
        return FAULT_TIMEOUT_S
    return STEP_TIMEOUT_S


def _events(report: ScenarioReport, kind: str) -> list[dict[str, object]]:
    lines = Path(report.events_file).read_text().splitlines()
    return [json.loads(x) for x in lines if f'"kind":"{kind}"' in x]


def check(outcome: Outcome, private_tmp: Path, caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the acceptance criterion asks of one run: what was wrong with it, if anything."""
    problems: list[str] = []
    code, report = outcome.code, outcome.report
    # A verdict, and its exit code.
    if code not in (0, 1, 3) or code != EXIT_CODES[report.verdict] or code != report.exit_code:
        problems.append(f"exit code {code} for {report.verdict} (report: {report.exit_code})")
    if "Traceback" in outcome.output:
        problems.append(f"a traceback on the console:\n{outcome.output}")
    logged = [r for r in caplog.get_records("call") if r.levelno >= logging.WARNING]
    problems += [f"logged by {r.name}: {r.getMessage()}\n{r.exc_text or ''}" for r in logged]
    # The faults explain every error: steps that failed, none inside the runner; no runner
    # error, no crash or hang nobody planned, nothing an agent reported.
    for error in report.errors:
        if error.source is not ErrorKind.STEP or "internal error" in error.message:
            problems.append(f"{error.source} error: {error.message}\n{error.detail or ''}")
    problems += [f"{a.id} ended {a.status}" for a in report.agents if a.status != "exited"]
    # Every step ran, and none went on past its timeout (that would be a hang).
    for step in report.steps:
        if step.runs == 0:
            problems.append(f"{step.path} ({step.id}) never ran: {step.skipped_reason}")
        budget = _budget(step.id)
        took = step.max_duration_s or 0.0
        if step.kind not in ("repeat", "parallel") and took > budget + OVERRUN_SLACK_S:
            problems.append(
                f"{step.path} ({step.id}, {step.kind}) took {took:.2f}s with a timeout of"
                f" {budget}s: {step.error}"
            )
    # Every failure is in the verdict: a failed step makes an ERROR, a failed assert step is a
    # failed inline assertion.
    failed = [s for s in report.steps if s.status == "failed"]
    if failed and report.verdict is Verdict.PASS:
        problems.append(f"PASS with failed steps: {[(s.path, s.error) for s in failed]}")
    inline = {a.id: a for a in report.assertions if a.inline}
    for step in failed:
        if step.kind == "assert" and (step.id not in inline or inline[step.id].passed):
            problems.append(
                f"assert step {step.path} ({step.id}) failed ({step.error}), and no failed"
                " assertion says so"
            )
    # Nothing spun.
    assert report.event_log is not None
    if (sent := report.event_log.emitted.get("command.sent", 0)) > MAX_COMMANDS:
        problems.append(f"{sent} commands sent; {report.timings}")
    # Nothing left behind.
    children = psutil.Process().children(recursive=True)
    _, alive = psutil.wait_procs(children, timeout=2)
    if alive:
        problems.append(f"processes left behind: {[(p.pid, p.name()) for p in alive]}")
        for process in alive:
            process.kill()
    if leftovers := sorted(p.name for p in private_tmp.iterdir()):
        problems.append(f"left in the temporary folder: {leftovers}")
    if outcome.fds[1] != outcome.fds[0]:
        problems.append(f"descriptors: {outcome.fds[0]} before the run, {outcome.fds[1]} after")
    if outcome.threads[1] != outcome.threads[0]:
        problems.append(f"threads: {outcome.threads[0]} before the run, {outcome.threads[1]} after")
    return problems


def _in_force(report: ScenarioReport, fault: str) -> None:
    """The fault was injected, and (a bus fault) did something to what the probes sent."""
    injected = _events(report, "fault.injected")
    assert injected and injected[0]["fault"] == FAULTS[fault][0].split(":")[0], injected
    if fault not in ("kill", "kill-sigterm", "stop", "cont", "restart", "restart-empty"):
        ended = [str(e["detail"]) for e in _events(report, "fault.ended")]
        assert ended and ": nothing of" not in ended[0], ended


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fault", list(FAULTS))
def test_every_step_type_under_a_fault(
    tmp_path: Path, private_tmp: Path, caplog: pytest.LogCaptureFixture, fault: str
) -> None:
    outcome = run(tmp_path, fault, scenario(f"matrix-{fault}", FAULTS[fault], PROBES, AGAIN[fault]))
    problems = check(outcome, private_tmp, caplog)
    assert not problems, "\n".join(problems)
    _in_force(outcome.report, fault)
    ran = {s.kind for s in outcome.report.steps if s.runs and s.path.startswith("script[")}
    assert ran >= STEP_TYPES, f"step types that did not run: {STEP_TYPES - ran}"


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("probe", range(len(PROBES)), ids=[f"{i}-{k}" for i, (k, _) in
                                                        enumerate(PROBES)])  # fmt: skip
@pytest.mark.parametrize("fault", list(FAULTS))
def test_one_step_type_under_one_fault(
    tmp_path: Path, private_tmp: Path, caplog: pytest.LogCaptureFixture, fault: str, probe: int
) -> None:
    text = scenario(f"pair-{fault}-{probe}", FAULTS[fault], PROBES[probe : probe + 1], AGAIN[fault])
    outcome = run(tmp_path, f"{fault}-{probe}", text)
    problems = check(outcome, private_tmp, caplog)
    assert not problems, "\n".join(problems)
    _in_force(outcome.report, fault)
