"""The `scenario-runner` command line.

Exit codes: 0 every scenario passed; 1 any FAIL; 2 invalid input (a scenario file or the
command line; nothing is started); 3 any ERROR (the scenario could not be judged).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click
from rich.console import Console

from orchestrator.console import print_summary
from orchestrator.durations import Duration
from orchestrator.loader import validate_files
from orchestrator.report import EXIT_INVALID, Verdict
from orchestrator.runner import RunOptions, run_scenario
from orchestrator.scenario import all_steps


class DurationType(click.ParamType[Duration, object]):
    name = "duration"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> Duration:
        if isinstance(value, Duration):
            return value
        try:
            return Duration.parse(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _report_problems(problems: list[object]) -> None:
    for problem in problems:
        click.echo(str(problem), err=True)
    click.echo(f"{len(problems)} problem(s) found; nothing was run.", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="scenario-runner")
def main() -> None:
    """Run multi-agent scenarios: one OS process per agent, a ZeroMQ bus between them."""


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
def validate(files: tuple[Path, ...]) -> None:
    """Check scenario files without running anything."""
    scenarios, problems = validate_files(list(files))
    if problems:
        _report_problems(list(problems))
        sys.exit(EXIT_INVALID)
    for path, scenario in zip(files, scenarios, strict=True):
        click.echo(
            f"{path}: ok ({scenario.name}: {len(scenario.agent_ids)} agents,"
            f" {sum(1 for _ in all_steps(scenario))} steps,"
            f" {len(scenario.assertions)} assertions)"
        )


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--report-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to write report.json and events.jsonl"
    " [default: scenario-runs/<timestamp>-<name>/]. With several files, each"
    " scenario gets a subdirectory named after it.",
)
@click.option("--timeout", type=DurationType(), help="Override each scenario's timeout (e.g. 30s).")
@click.option(
    "--keep-run-dir",
    is_flag=True,
    help="Keep the private run directory (agent stores and logs, the socket).",
)
@click.option("-v", "--verbose", is_flag=True, help="Per-agent table and error details.")
def run(
    files: tuple[Path, ...],
    report_dir: Path | None,
    timeout: Duration | None,
    keep_run_dir: bool,
    verbose: bool,
) -> None:
    """Run scenario files and report a verdict for each."""
    scenarios, problems = validate_files(list(files))
    if problems:
        _report_problems(list(problems))
        sys.exit(EXIT_INVALID)
    console = Console(stderr=False)
    verdicts: list[Verdict] = []
    invalid = False
    for path, scenario in zip(files, scenarios, strict=True):
        target = report_dir
        if report_dir is not None and len(files) > 1:
            target = report_dir / scenario.name
        options = RunOptions(report_dir=target, timeout=timeout, keep_run_dir=keep_run_dir)
        report = asyncio.run(run_scenario(scenario, path, options))
        print_summary(console, report, verbose)
        verdicts.append(report.verdict)
        if report.exit_code == EXIT_INVALID:  # an agent's plugins could not be loaded
            invalid = True
            for error in report.errors:
                if error.source == "init":
                    click.echo(f"{path}: {error.message}", err=True)
    if invalid:
        sys.exit(EXIT_INVALID)
    if Verdict.ERROR in verdicts:
        sys.exit(3)
    if Verdict.FAIL in verdicts:
        sys.exit(1)
    sys.exit(0)
