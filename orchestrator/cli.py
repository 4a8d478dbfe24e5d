"""The `scenario-runner` command line.

Exit codes: 0 every scenario passed; 1 any FAIL or FLAKY; 2 invalid input (a scenario file,
the command line or the report directory; nothing is started); 3 any run an ERROR (it could not
be judged); 130 interrupted (Ctrl-C); 143 terminated (SIGTERM, handled like Ctrl-C).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import secrets
import signal
import sys
from pathlib import Path

import click
from pydantic import ByteSize, TypeAdapter, ValidationError
from rich.console import Console
from rich.markup import escape

from orchestrator.cluster.launchers import LAUNCHERS, default_launcher
from orchestrator.compare import CompareError, Thresholds, load_side
from orchestrator.compare import compare as run_compare
from orchestrator.events import (
    DEFAULT_MAX_BYTES,
    Event,
    EventStorage,
    SoakLocating,
    SoakProgress,
    events_schema,
)
from orchestrator.report.console import (
    print_comparison,
    print_quiet,
    print_summary,
    print_table,
    progress_bar,
    soak_locating_line,
    soak_progress_line,
)
from orchestrator.report.html import write_html
from orchestrator.report.junit import write_junit
from orchestrator.report.model import EXIT_INVALID, ScenarioReport
from orchestrator.run import live
from orchestrator.run.runner import RunOptions, SoakOptions
from orchestrator.run.session import (
    Outcome,
    Planned,
    Summary,
    default_root,
    exit_code,
    matches,
    outcomes,
    plan,
    prepare,
    run_planned,
)
from orchestrator.scenario.durations import Duration
from orchestrator.scenario.loader import validate_files
from orchestrator.scenario.spec import all_steps
from orchestrator.schemas import report_schema, scenario_schema

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
EXIT_TERMINATED = 143  # 128 + SIGTERM
LOG_WIDTH = 160


class DurationType(click.ParamType[Duration, object]):
    name = "duration"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> Duration:
        if isinstance(value, Duration):
            return value
        try:
            duration = Duration.parse(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if duration.seconds <= 0:
            self.fail(f"{value!r} is no time at all: give a positive duration", param, ctx)
        return duration


class SizeType(click.ParamType[int, object]):
    """A size in bytes, with a unit: 512MiB, 2GiB, 100MB."""

    name = "size"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> int:
        if isinstance(value, int):
            return value
        try:
            size = int(TypeAdapter(ByteSize).validate_python(str(value)))
        except ValidationError:
            self.fail(f"{value!r} is not a size (for example 512MiB, 2GiB)", param, ctx)
        if size < 4096:
            self.fail(f"{value!r} is under 4KiB: too small to hold an event log", param, ctx)
        return size


def _report_problems(problems: list[object]) -> None:
    for problem in problems:
        click.echo(str(problem), err=True)
    click.echo(f"{len(problems)} problem(s) found; nothing was run.", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="scenario-runner")
def main() -> None:
    """Run multi-agent scenarios: one OS process per agent, a ZeroMQ bus between them."""


# Options `run` and `soak` share, written once.
SEED_OPTION = click.option(
    "--seed",
    type=click.IntRange(min=0, max=(1 << 63) - 1),
    help="Seed every random choice (models' `chance`, plugins' runtime.random); each agent's"
    " seed derives from it, the scenario and the repeat. [default: random, and recorded]",
)
LAUNCHER_OPTION = click.option(
    "--launcher",
    type=click.Choice(sorted(LAUNCHERS)),
    default=default_launcher(),
    show_default=True,
    help="How agents start: forked from a template that has imported their modules (fast,"
    " small), or each a fresh interpreter (spawn).",
)
KEEP_RUN_DIR_OPTION = click.option(
    "--keep-run-dir",
    is_flag=True,
    help="Keep the private run directory (agent stores and logs, the socket).",
)
EVENTS_MAX_SIZE_OPTION = click.option(
    "--events-max-size",
    type=SizeType(),
    default="1GiB",
    show_default=True,
    help="The most events.jsonl may hold: a full log keeps only the summary from 90% of it,"
    " and any log stops at it (the report says from which events).",
)
METRICS_PORT_OPTION = click.option(
    "--metrics-port",
    type=click.IntRange(min=0, max=65535),
    help="Serve Prometheus metrics on 127.0.0.1:PORT while running (per agent memory,"
    " descriptors, threads, messages; delivery latency; retries, dead letters; progress).",
)
DIAGNOSE_OPTION = click.option(
    "--diagnose-on-timeout",
    is_flag=True,
    help="When a wait times out, write diagnostics-N.txt to the run's report directory: the"
    " pending waits, a wait-for graph across timelines (a cycle is a deadlock), and what each"
    " agent is doing and last said and heard. SIGUSR1 to the runner writes them at any time.",
)
class BindType(click.ParamType[str, object]):
    """Where the bus listens: `tcp` (loopback, a free port), `tcp://HOST[:PORT]` or
    `ipc://PATH`. Every connection must still authenticate with keys the run issued to its
    agents (CURVE, always on), which is what makes a non-loopback address safe to bind."""

    name = "endpoint"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> str:
        text = str(value).strip()
        if text == "tcp":
            return "tcp://127.0.0.1:*"
        if text.startswith("ipc://") and len(text) > len("ipc://"):
            if os.path.lexists(text.removeprefix("ipc://")):
                # libzmq would delete it and bind in its place: another run's socket, maybe.
                self.fail(f"{text}: the file exists (another run's socket?)", param, ctx)
            return text
        if not text.startswith("tcp://"):
            self.fail(f"{text!r}: give tcp, tcp://HOST[:PORT] or ipc://PATH", param, ctx)
        rest = text.removeprefix("tcp://")
        if rest.startswith("["):  # [v6 address] or [v6 address]:port
            host, _, tail = rest[1:].partition("]")
            port = tail.removeprefix(":") or "*"
        elif rest.count(":") == 1:
            host, port = rest.split(":")
        else:
            host, port = rest, "*"
        host = host or "127.0.0.1"
        try:
            address = ipaddress.ip_address("127.0.0.1" if host == "localhost" else host)
        except ValueError:
            self.fail(f"{host!r} is not an IP address (or localhost)", param, ctx)
        if port != "*" and not (port.isdigit() and 0 < int(port) < 65536):
            self.fail(f"{port!r} is not a port (1 to 65535, or *)", param, ctx)
        shown = f"[{address}]" if address.version == 6 else str(address)
        return f"tcp://{shown}:{port}"


BIND_OPTION = click.option(
    "--bind",
    type=BindType(),
    help="Where the bus listens [default: a private ipc socket in the run directory]: tcp"
    " (127.0.0.1, a free port), tcp://HOST[:PORT], or ipc://PATH. Agents authenticate with"
    " keys the run issues them whatever the address.",
)
QUIET_OPTION = click.option(
    "-q", "--quiet", is_flag=True, help="Print each scenario's verdict only."
)
VERBOSE_OPTION = click.option(
    "-v", "--verbose", is_flag=True, help="Per-agent table and error details."
)


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
def validate(files: tuple[Path, ...]) -> None:
    """Check scenario files without running anything."""
    scenarios, problems = validate_files(list(files))
    if problems:
        _report_problems(list(problems))
        sys.exit(EXIT_INVALID)
    for path, scenario in scenarios:
        click.echo(
            f"{path}: ok ({scenario.label}: {len(scenario.agent_ids)} agents,"
            f" {sum(1 for _ in all_steps(scenario))} steps,"
            f" {len(scenario.assertions)} assertions)"
        )


@main.command()
@click.option(
    "--report",
    "of_report",
    is_flag=True,
    help="The schema of report.json instead of the scenario format's.",
)
@click.option(
    "--events",
    "of_events",
    is_flag=True,
    help="The schema of one line of events.jsonl instead of the scenario format's.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the schema to this file instead of standard output.",
)
def schema(of_report: bool, of_events: bool, output: Path | None) -> None:
    """Print the JSON Schema of scenario files (or, with --report, of report.json; with
    --events, of one line of events.jsonl).

    Point an editor's YAML language server at it to get completion and checking as you type:
    `# yaml-language-server: $schema=scenario.schema.json` on a scenario's first line.
    """
    if of_report and of_events:
        raise click.UsageError("--report and --events: choose one schema")
    chosen = report_schema() if of_report else events_schema() if of_events else scenario_schema()
    text = json.dumps(chosen, indent=2) + "\n"
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise click.BadParameter(
            f"cannot write {output}: {exc.strerror}", param_hint="'-o' / '--output'"
        ) from None


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--report-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where reports go [default: scenario-runs/<timestamp>[-<name>]/]. One run writes"
    " report.json and events.jsonl there; several runs get a subdirectory each."
    " summary.json and junit.xml are always at the top.",
)
@click.option("--timeout", type=DurationType(), help="Override each scenario's timeout (e.g. 30s).")
@click.option(
    "--repeat",
    type=click.IntRange(min=1, max=10_000),
    default=1,
    show_default=True,
    help="Run each scenario N times with fresh agents; differing verdicts are FLAKY.",
)
@click.option(
    "--parallel",
    type=click.IntRange(min=1, max=256),
    default=1,
    show_default=True,
    help="Run up to N scenario runs at once (each with its own agents and run directory).",
)
@SEED_OPTION
@click.option(
    "--filter",
    "filters",
    multiple=True,
    metavar="PATTERN",
    help="Run only scenarios whose name or a tag matches this glob (repeatable: any matches).",
)
@LAUNCHER_OPTION
@KEEP_RUN_DIR_OPTION
@click.option(
    "--events",
    "events_storage",
    type=click.Choice([e.value for e in EventStorage]),
    default=EventStorage.FULL.value,
    show_default=True,
    help="What events.jsonl keeps: every event (full), all but the per-message ones"
    " (summary), or nothing (off). Waits and assertions always see every event; the report"
    " counts what the file left out.",
)
@EVENTS_MAX_SIZE_OPTION
@METRICS_PORT_OPTION
@DIAGNOSE_OPTION
@BIND_OPTION
@QUIET_OPTION
@VERBOSE_OPTION
def run(
    files: tuple[Path, ...],
    report_dir: Path | None,
    timeout: Duration | None,
    repeat: int,
    parallel: int,
    seed: int | None,
    filters: tuple[str, ...],
    launcher: str,
    keep_run_dir: bool,
    events_storage: str,
    events_max_size: int,
    metrics_port: int | None,
    diagnose_on_timeout: bool,
    bind: str | None,
    quiet: bool,
    verbose: bool,
) -> None:
    """Run scenario files and report a verdict for each.

    Exit status: 0 all passed, 1 a FAIL or FLAKY, 2 invalid input, 3 a run was an ERROR,
    130 interrupted (Ctrl-C), 143 terminated (SIGTERM); either way the runs that finished are
    still reported and the others torn down.
    """
    _run_files(
        files, report_dir, timeout, repeat, parallel, seed, filters, launcher, keep_run_dir,
        events_storage, events_max_size, quiet, verbose, None, metrics_port, diagnose_on_timeout,
        bind,
    )  # fmt: skip


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--duration",
    type=DurationType(),
    required=True,
    help="How long to soak: the script repeats on the same agents until this is spent (8h).",
)
@click.option(
    "--warmup",
    type=DurationType(),
    help="Samples this long after READY are left out of the leak verdicts."
    " [default: a fifth of the duration, at most 5m]",
)
@click.option(
    "--report-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where reports go [default: scenario-runs/<timestamp>[-<name>]/].",
)
@click.option("--timeout", type=DurationType(), help="Override each pass's timeout (e.g. 30s).")
@click.option(
    "--sample-interval",
    type=DurationType(),
    default="1s",
    show_default=True,
    help="How often each agent's memory is read (longer if 1,000 agents need it).",
)
@SEED_OPTION
@LAUNCHER_OPTION
@KEEP_RUN_DIR_OPTION
@click.option(
    "--progress-every",
    type=DurationType(),
    default="1m",
    show_default=True,
    help="How often to print each agent's memory and trend, and checkpoint report.json.",
)
@click.option(
    "--trace-leaks",
    is_flag=True,
    help="Run tracemalloc in every agent for the whole soak and report the allocation sites"
    " (file:line, with the traceback) that grew after the warm-up. Costs the agents memory"
    " and time, and moves their verdicts.",
)
@click.option(
    "--locate/--no-locate",
    default=True,
    show_default=True,
    help="When the soak finds a leak, run a shorter traced pass of the leaking agents after"
    " it (a quarter of --duration, 5s to 5m) to name the lines that allocate what grows.",
)
@click.option(
    "--locate-for",
    type=DurationType(),
    help="The locating pass's length, instead of a quarter of --duration (at least 2s; a"
    " small leak needs longer to stand out from the allocations it is traced among).",
)
@click.option(
    "--events",
    "events_storage",
    type=click.Choice([e.value for e in EventStorage]),
    default=EventStorage.SUMMARY.value,
    show_default=True,
    help="What events.jsonl keeps (a soak defaults to the summary: no per-message lines).",
)
@EVENTS_MAX_SIZE_OPTION
@METRICS_PORT_OPTION
@DIAGNOSE_OPTION
@BIND_OPTION
@QUIET_OPTION
@VERBOSE_OPTION
def soak(
    files: tuple[Path, ...],
    duration: Duration,
    warmup: Duration | None,
    report_dir: Path | None,
    timeout: Duration | None,
    sample_interval: Duration,
    seed: int | None,
    launcher: str,
    keep_run_dir: bool,
    progress_every: Duration,
    trace_leaks: bool,
    locate: bool,
    locate_for: Duration | None,
    events_storage: str,
    events_max_size: int,
    metrics_port: int | None,
    diagnose_on_timeout: bool,
    bind: str | None,
    quiet: bool,
    verbose: bool,
) -> None:
    """Soak: run each scenario's script on repeat, with the same agents, for a duration, and
    judge every agent's memory, descriptors and threads for leaks (LEAK, NO LEAK or
    INCONCLUSIVE per series, in the report; `memory: {leak: none}` asserts it).

    Exit status as for `run`.
    """
    if duration.seconds <= 0:
        raise click.BadParameter("a soak needs a positive duration", param_hint="'--duration'")
    if sample_interval.seconds < 0.05:
        raise click.BadParameter("at least 50ms", param_hint="'--sample-interval'")
    warmup_s = (
        warmup.seconds if warmup is not None else SoakOptions.default_warmup(duration.seconds)
    )
    if warmup_s >= duration.seconds:
        raise click.BadParameter(
            f"the warm-up ({Duration(warmup_s)}) must be shorter than the duration"
            f" ({duration}): nothing would be left to judge",
            param_hint="'--warmup'",
        )
    if locate_for is not None and locate_for.seconds < 2:
        raise click.BadParameter("at least 2s", param_hint="'--locate-for'")
    _run_files(
        files, report_dir, timeout, 1, 1, seed, (), launcher, keep_run_dir, events_storage,
        events_max_size, quiet, verbose,
        SoakOptions(
            duration.seconds, warmup_s, sample_interval.seconds,
            max(1.0, progress_every.seconds), trace_leaks, locate,
            locate_for.seconds if locate_for is not None else None,
        ),
        metrics_port, diagnose_on_timeout, bind,
    )  # fmt: skip


@main.command()
@click.argument("base", type=click.Path(path_type=Path))
@click.argument("new", type=click.Path(path_type=Path))
@click.option("--max-memory", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="Percent an agent's peak RSS or USS may grow before it is a regression.")
@click.option("--max-latency", type=click.FloatRange(min=0), default=20.0, show_default=True,
              help="Percent the delivery latency p99 may grow.")
@click.option("--max-duration", type=click.FloatRange(min=0), default=20.0, show_default=True,
              help="Percent a run's duration may grow.")
@click.option("--max-growth", type=SizeType(), default="1MiB", show_default=True,
              help="How much more an agent's USS may grow per hour in a soak (beyond both"
              " sides' 95% intervals).")
def compare(
    base: Path, new: Path, max_memory: float, max_latency: float, max_duration: float,
    max_growth: int,
) -> None:  # fmt: skip
    """Compare two report directories (before and after a change): per scenario its duration
    and delivery p99, per agent its peak RSS, USS and soak growth rate. With repeated runs on
    both sides, a metric regresses only when the best new run is worse than the worst base run
    by more than the threshold.

    Exit status: 0 no regression, 1 a regression, 2 a directory without readable reports.
    """
    limits = Thresholds(max_memory / 100, max_latency / 100, max_duration / 100, max_growth)
    try:
        changes, only = run_compare(load_side(base), load_side(new), limits)
    except CompareError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_INVALID)
    console = Console(soft_wrap=True)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = LOG_WIDTH  # a CI log is not 80 columns wide
    print_comparison(console, changes, only)
    sys.exit(1 if any(c.regression for c in changes) else 0)


@main.command("report")
@click.argument("run_dir", type=click.Path(path_type=Path))
def report_command(run_dir: Path) -> None:
    """Write report.html again from what a report directory holds (report.json and
    events.jsonl), in RUN_DIR and every run directory under it: for a soak killed mid-run,
    whose checkpointed report.json has no page yet, or after an upgrade.

    Exit status: 0 written, 2 no readable report.json in or under RUN_DIR.
    """
    if not run_dir.is_dir():
        click.echo(f"error: {run_dir}: not a directory", err=True)
        sys.exit(EXIT_INVALID)
    paths = sorted(run_dir.rglob("report.json"))
    if not paths:
        click.echo(f"error: {run_dir}: no report.json in it (or under it)", err=True)
        sys.exit(EXIT_INVALID)
    failed = 0
    for path in paths:
        try:
            report = ScenarioReport.model_validate_json(path.read_bytes())
        except (OSError, ValidationError) as exc:
            click.echo(f"error: {path}: not a report this version can read: "
                       f"{_first_problem(exc)}", err=True)  # fmt: skip
            failed += 1
            continue
        click.echo(str(write_html(report, path.parent)))
    sys.exit(EXIT_INVALID if failed else 0)


def _first_problem(exc: OSError | ValidationError) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "the top level"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}"


def _run_files(
    files: tuple[Path, ...],
    report_dir: Path | None,
    timeout: Duration | None,
    repeat: int,
    parallel: int,
    seed: int | None,
    filters: tuple[str, ...],
    launcher: str,
    keep_run_dir: bool,
    events_storage: str,
    events_max_size: int,
    quiet: bool,
    verbose: bool,
    soak: SoakOptions | None,
    metrics_port: int | None = None,
    diagnose_on_timeout: bool = False,
    bind: str | None = None,
) -> None:
    if quiet and verbose:
        raise click.UsageError("-q/--quiet and -v/--verbose ask for opposite things: choose one")
    if bind is not None and not bind.endswith(":*") and parallel > 1:
        raise click.UsageError(
            f"--bind {bind} with --parallel {parallel}: runs at once cannot share one address;"
            " give port * (or tcp) for a free port each"
        )
    if events_storage == EventStorage.OFF.value and events_max_size != DEFAULT_MAX_BYTES:
        raise click.UsageError("--events-max-size bounds events.jsonl, which --events off omits")
    # The same file named twice is one scenario, not two that would share a report group.
    unique = list({path.resolve(): path for path in files}.values())
    loaded, problems = validate_files(unique)
    if problems:
        _report_problems(list(problems))
        sys.exit(EXIT_INVALID)
    selected = [(path, s) for path, s in loaded if matches(s, filters)]
    if not selected:
        names = ", ".join(sorted({s.label for _, s in loaded}))
        click.echo(
            f"no scenario matches --filter {' '.join(filters)} (scenarios: {names});"
            " nothing was run.",
            err=True,
        )
        sys.exit(EXIT_INVALID)
    if seed is None:
        seed = secrets.randbits(32)
    root = report_dir or default_root([s for _, s in selected])
    planned = plan(selected, repeat, root)
    blocked = prepare(planned, root)
    if blocked:
        _report_problems(list(blocked))
        sys.exit(EXIT_INVALID)
    options = RunOptions(
        launcher=launcher,
        timeout=timeout,
        keep_run_dir=keep_run_dir,
        seed=seed,
        events=EventStorage(events_storage),
        events_max_bytes=events_max_size,
        soak=soak,
        sample_interval_s=soak.sample_interval_s if soak else 1.0,
        diagnose_on_timeout=diagnose_on_timeout,
        bind=bind,
    )
    # soft_wrap: a long report path stays on one line in a CI log; and a log is not 80 columns
    # wide (rich's guess without a terminal), so tables get room unless COLUMNS says otherwise.
    console = Console(stderr=False, soft_wrap=True)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = LOG_WIDTH
    metrics = None
    if metrics_port is not None:
        try:
            metrics = live.serve(metrics_port)
        except OSError as exc:
            click.echo(f"--metrics-port {metrics_port}: {exc.strerror}", err=True)
            sys.exit(EXIT_INVALID)
        port = metrics[0].server_port
        console.print(f"metrics: http://127.0.0.1:{port}/metrics", highlight=False)
    done: dict[Path, ScenarioReport] = {}
    interrupted = False
    with progress_bar(console, disable=quiet) as bar:
        task = bar.add_task("scenarios", total=len(planned))
        running: dict[Path, str] = {}

        def started(item: Planned) -> None:
            running[item.report_dir] = item.scenario.label
            bar.update(task, description=escape(", ".join(running.values())))

        def finished(item: Planned, report: ScenarioReport) -> None:
            done[item.report_dir] = report
            running.pop(item.report_dir, None)
            bar.update(task, advance=1, description=escape(", ".join(running.values())) or "done")
            if not quiet:
                print_summary(console, report, verbose)

        terminated = False

        def progress(item: Planned, event: Event) -> None:
            if isinstance(event, SoakProgress) and not quiet:
                console.print(soak_progress_line(item.scenario.label, event), highlight=False)
            elif isinstance(event, SoakLocating) and not quiet:
                console.print(soak_locating_line(item.scenario.label, event), highlight=False)

        async def run_all() -> None:
            # SIGTERM is handled like Ctrl-C: the runs are cancelled and tear themselves down.
            nonlocal terminated
            loop = asyncio.get_running_loop()
            main_task = asyncio.current_task()
            assert main_task is not None

            def on_sigterm() -> None:
                nonlocal terminated
                terminated = True
                main_task.cancel()

            def on_sigusr1() -> None:  # why does it not move? The runs go on.
                for path in live.write_diagnostics("SIGUSR1"):
                    console.print(f"diagnostics: {path}", highlight=False)

            loop.add_signal_handler(signal.SIGTERM, on_sigterm)
            loop.add_signal_handler(signal.SIGUSR1, on_sigusr1)
            try:
                await run_planned(planned, options, parallel, started, finished, progress)
            finally:
                loop.remove_signal_handler(signal.SIGTERM)
                loop.remove_signal_handler(signal.SIGUSR1)

        try:
            asyncio.run(run_all())
        except (KeyboardInterrupt, asyncio.CancelledError):
            # Every run in flight was cancelled and tore itself down (agents, sockets, run
            # directories); what finished is still summarised below.
            interrupted = True
    if metrics is not None:
        metrics[0].shutdown()
        metrics[0].server_close()
    finished_runs = [item for item in planned if item.report_dir in done]
    reports = [done[item.report_dir] for item in finished_runs]
    results = outcomes(finished_runs, reports)
    junit = write_junit(root / "junit.xml", reports, repeat if repeat > 1 else None)
    code = (
        (EXIT_TERMINATED if terminated else EXIT_INTERRUPTED)
        if interrupted
        else exit_code(results, reports)
    )
    Summary(
        seed=seed,
        repeat=repeat,
        parallel=parallel,
        filters=list(filters),
        exit_code=code,
        interrupted=interrupted,
        outcomes={o.value: sum(1 for r in results if r.outcome is o) for o in Outcome},
        scenarios=results,
        junit=str(junit),
    ).write(root)
    if quiet:
        print_quiet(console, results)
    elif len(planned) > 1:
        print_table(console, results, seed, str(root))
    else:
        console.print(f"seed {seed} (rerun with --seed {seed})", highlight=False)
    for report in reports:
        if report.exit_code == EXIT_INVALID:  # an agent's plugins could not be loaded
            for error in report.errors:
                if error.source == "init":
                    click.echo(f"{report.file}: {error.message}", err=True)
    if interrupted:
        click.echo(
            f"interrupted: {len(reports)} of {len(planned)} runs finished; their reports are"
            f" in {root}",
            err=True,
        )
    sys.exit(code)
