"""Fuzzing `scenario-runner validate` with hostile scenario files (tests/fuzzcorpus.py): seeded
mutations of every example and hand-made files that break YAML readers (alias bombs, deep
nesting, bytes that are not UTF-8, binary, empty files, a directory, a missing path).

Whatever the file, validate answers within a deadline, exits 0 (valid) or 2 (invalid), never
with a traceback, and every problem it reports for a file's content names the file and the line
(`file:line[:column]: [path: ]message`, one line each). Most cases run in process, through the
click command itself; a few run the installed command, to check the exit codes end to end.

The quick corpus runs in CI; `-m slow` runs a larger one (thousands of mutants, another seed).
The figures (files tried, count per exit code, slowest case) are printed (`-s`) and recorded as
junit properties. What the fuzzing found is pinned below, each problem at its exact place.
"""

from __future__ import annotations

import random
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner
from fuzzcorpus import (
    EXAMPLES_DIR,
    VALID_HEAD,
    Case,
    alias_chain,
    asserting,
    billion_laughs,
    corpus,
    examples,
    handmade,
    in_settings,
)

from orchestrator.cli import main
from orchestrator.report.model import EXIT_INVALID
from orchestrator.scenario.loader import ScenarioError, load_scenario, load_scenario_text

SCRIPT = Path(sys.executable).parent / "scenario-runner"

CASE_DEADLINE_S = 10.0
"""In process: far more than any case needs (the slowest take well under a second)."""
PROCESS_DEADLINE_S = 60.0
"""A fresh interpreter on a loaded machine: start-up and imports included."""
MAX_PROBLEM_CHARS = 1500
"""A problem line quotes values shortened; none comes near this, even for a 4 MiB line."""

QUICK_SEED, QUICK_PER_EXAMPLE = 1, 20
SLOW_SEED, SLOW_PER_EXAMPLE = 2, 1000


@dataclass(frozen=True)
class Outcome:
    exit_code: int
    stdout: str
    stderr: str
    seconds: float
    exception: BaseException | None = None


def _materialise(case: Case, where: Path) -> Path:
    if case.kind == "directory":
        path = where / "a-directory.yaml"
        path.mkdir(exist_ok=True)
        return path
    if case.kind == "missing":
        return where / "no-such-file.yaml"
    path = where / "case.yaml"
    path.write_bytes(case.content)
    return path


def _validate_in_process(path: Path) -> Outcome:
    t0 = time.perf_counter()
    result = CliRunner().invoke(main, ["validate", str(path)])
    seconds = time.perf_counter() - t0
    exception = None if isinstance(result.exception, SystemExit) else result.exception
    return Outcome(result.exit_code, result.stdout, result.stderr, seconds, exception)


_WARNING = re.compile(r"\S+:\d+: \w*Warning: |\s")


def _located(line: str, path: Path) -> bool:
    """`file:line[:column]: ...`: the file, then where in it. (A problem in the file a
    `matrix:` names is at its place in that file, beside the scenario.)"""
    files = re.escape(str(path)) + "|" + re.escape(f"{path.parent}/") + r"[^:]+"
    return re.match(rf"({files}):\d+(:\d+)?: \S", line) is not None


def _judge(case: Case, path: Path, outcome: Outcome) -> str | None:
    """What is wrong with validate's answer for `case` (at `path`), or None."""
    output = outcome.stdout + outcome.stderr
    if outcome.exception is not None:
        return f"raised {outcome.exception!r}"
    if "Traceback" in output:
        return f"a traceback:\n{output[-2000:]}"
    if outcome.exit_code not in (0, EXIT_INVALID):
        return f"exit code {outcome.exit_code}:\n{output[-2000:]}"
    if case.valid is not None and (outcome.exit_code == 0) != case.valid:
        expected = "accepted" if case.valid else "refused"
        return f"should be {expected}, exit code {outcome.exit_code}:\n{output[-2000:]}"
    if outcome.exit_code == 0:
        ok = [line for line in outcome.stdout.splitlines() if line.startswith(f"{path}: ok (")]
        # Only Python's warnings (a FutureWarning from re.compile of a pattern like `[[a]]`).
        noise = [line for line in outcome.stderr.splitlines() if not _WARNING.match(line)]
        return None if ok and not noise else f"exit 0 without 'ok':\n{output[-2000:]}"
    lines = outcome.stderr.splitlines()
    if case.kind == "directory":
        # click refuses it before the loader sees it, naming it.
        return None if f"'{path}' is a directory" in outcome.stderr else output[-2000:]
    if not lines or not re.fullmatch(r"\d+ problem\(s\) found; nothing was run\.", lines[-1]):
        return f"no problem count at the end:\n{output[-2000:]}"
    problems = lines[:-1]
    if len(problems) != int(lines[-1].split()[0]):
        return f"{len(problems)} problem lines for {lines[-1]!r}"
    for line in problems:
        if len(line) > len(str(path)) + MAX_PROBLEM_CHARS:
            return f"a problem line of {len(line)} characters: {line[:300]}..."
        if case.kind == "missing":
            if line != f"{path}: no such file":
                return f"not the missing file's problem: {line[:300]}"
        elif not _located(line, path):
            return f"a problem without its place in the file: {line[:500]}"
    return None


@dataclass
class Figures:
    tried: int = 0
    exit_codes: Counter[int] = field(default_factory=Counter)
    slowest: tuple[float, str] = (0.0, "")
    seconds: float = 0.0

    def add(self, case: Case, outcome: Outcome) -> None:
        self.tried += 1
        self.exit_codes[outcome.exit_code] += 1
        self.slowest = max(self.slowest, (outcome.seconds, case.name))

    def __str__(self) -> str:
        codes = ", ".join(f"exit {k}: {v}" for k, v in sorted(self.exit_codes.items()))
        return (
            f"{self.tried} files tried ({codes}); slowest {self.slowest[1]!r} in"
            f" {self.slowest[0]:.2f}s; {self.seconds:.1f}s in all"
        )


def _within_deadline(case: Case, path: Path) -> Outcome:
    """validate's outcome for `path`, run in a thread of its own so that a case past its
    deadline fails the test instead of blocking it. The thread is a daemon: a hung one is
    abandoned, and does not keep the test run from ending."""
    done: list[Outcome] = []
    thread = threading.Thread(
        target=lambda: done.append(_validate_in_process(path)), name="fuzz", daemon=True
    )
    thread.start()
    thread.join(CASE_DEADLINE_S)
    if thread.is_alive():
        pytest.fail(f"{case.name}: validate did not answer within {CASE_DEADLINE_S} s")
    assert done, f"{case.name}: validate's thread ended without an outcome"
    return done[0]


def _fuzz(cases: list[Case], where: Path, record: Callable[[str, object], None]) -> Figures:
    figures = Figures()
    failures: list[str] = []
    t0 = time.perf_counter()
    for case in cases:
        path = _materialise(case, where)
        outcome = _within_deadline(case, path)
        figures.add(case, outcome)
        wrong = _judge(case, path, outcome)
        if wrong is not None:
            failures.append(f"{case.name}: {wrong}")
    figures.seconds = time.perf_counter() - t0
    print(f"\nfuzz corpus: {figures}")
    record("fuzz_files_tried", figures.tried)
    record("fuzz_exit_codes", dict(figures.exit_codes))
    record("fuzz_slowest", f"{figures.slowest[1]} {figures.slowest[0]:.3f}s")
    assert not failures, f"{len(failures)} of {len(cases)} cases:\n" + "\n\n".join(failures[:20])
    return figures


def test_the_corpus_is_deterministic_and_covers_every_example() -> None:
    first, again = corpus(QUICK_SEED, 3), corpus(QUICK_SEED, 3)
    assert first == again
    assert corpus(QUICK_SEED + 1, 3) != first
    for example in examples():  # every example is mutated, each mutant differently
        mutants = [case.content for case in first if case.name.startswith(f"{example.stem}/")]
        assert len(mutants) == 3 and example.read_bytes() not in mutants


def test_validate_survives_the_fuzz_corpus(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    figures = _fuzz(corpus(QUICK_SEED, QUICK_PER_EXAMPLE), tmp_path, record_property)
    assert figures.exit_codes[0] > 0 and figures.exit_codes[EXIT_INVALID] > 0


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_validate_survives_a_large_fuzz_corpus(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    _fuzz(corpus(SLOW_SEED, SLOW_PER_EXAMPLE), tmp_path, record_property)


# What the fuzzing found, each at the place it is now reported (it was a traceback, a problem
# with no line, a path with pydantic's internals in it, or a problem line of 100,000 characters).
FOUND = [
    pytest.param(billion_laughs(), 6, 7, "", "the value here expands to over 1000000 values",
                 id="alias-bomb-located-at-once"),
    pytest.param(in_settings("!!bool maybe").decode(), 4, 19, "agents[0].settings.x",
                 "cannot read 'maybe' as !!bool", id="explicit-tag-keyerror"),
    pytest.param(in_settings("[!!timestamp x]").decode(), 4, 20, "agents[0].settings.x[0]",
                 "cannot read 'x' as !!timestamp", id="explicit-tag-attributeerror"),
    pytest.param(in_settings("!!int ''").decode(), 4, 19, "agents[0].settings.x",
                 "cannot read '' as !!int", id="explicit-tag-indexerror"),
    pytest.param(in_settings("!!seq x").decode(), 4, 19, "agents[0].settings.x",
                 "the tag !!seq is for a collection", id="collection-tag-on-a-scalar"),
    pytest.param(in_settings("[" * 150 + "]" * 150).decode(), 4, 116,
                 "agents[0].settings.x" + "[0]" * 97, "values nested more than 100 deep",
                 id="deep-settings"),
    pytest.param(VALID_HEAD + "matrix: {description: [" + "[" * 400 + "]" * 400 + "]}\n", 10,
                 122, "matrix.description" + "[0]" * 99, "values nested more than 100 deep",
                 id="deep-matrix-value-recursionerror"),
    # (at the innermost value, where the anchors were written: where an alias is used is lost)
    pytest.param(alias_chain(150), 1, 10, "c99" + "[0]" * 100,
                 "values nested more than 100 deep", id="deep-through-aliases"),
    pytest.param(in_settings("[1, {y: 2024-01-01}]").decode(), 4, 27,
                 "agents[0].settings.x[1].y", "not a valid JSON value", id="json-value-path"),
    pytest.param(asserting("{message: {from: b, json_schema: {type: {a: 1}}}}").decode(), 10,
                 38, "assertions[1].message.json_schema", "unknown type {'a': 1}",
                 id="json-schema-type-typeerror"),
    pytest.param(asserting(f"{{memory: {{growth: {{max: '{'x' * 5000}/h'}}}}}}").decode(), 10,
                 29, "assertions[1].memory.growth.max", "'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
                 id="growth-rate-shortened"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "line", "column", "path", "message"), FOUND)
def test_what_fuzzing_found_is_reported_where_it_is(
    text: str, line: int, column: int, path: str, message: str
) -> None:
    with pytest.raises(ScenarioError) as caught:
        load_scenario_text(text, "case.yaml")
    problem = caught.value.problems[0]
    assert (problem.line, problem.column, problem.path) == (line, column, path), problem
    assert message in problem.message and len(str(problem)) < 500, problem


def test_a_matrix_file_name_with_a_nul_or_too_long_is_a_problem_of_the_matrix_entry(
    tmp_path: Path,
) -> None:
    for name, reason in (('"a\\0b"', "cannot contain a NUL"), ("y" * 5000, "too long")):
        path = tmp_path / "m.yaml"
        path.write_text(f"{VALID_HEAD}matrix: {name}\n")
        with pytest.raises(ScenarioError) as caught:
            load_scenario(path)
        (problem,) = caught.value.problems
        assert (problem.line, problem.path) == (10, "matrix") and reason in problem.message
        assert len(str(problem)) < 500


def test_a_long_matrix_value_is_shortened_in_the_problems_it_causes() -> None:
    text = f"{VALID_HEAD}matrix: {{timeout: ['{'x' * 100_000}', 1s]}}\n"
    with pytest.raises(ScenarioError) as caught:
        load_scenario_text(text, "case.yaml")
    (problem,) = caught.value.problems
    assert "bad duration" in problem.message and '(with matrix timeout="xxx' in problem.message
    assert len(str(problem)) < 500


END_TO_END = (
    "alias-bomb/billion-laughs",
    "deep/flow-lists-10000",
    "binary/random-4k",
    "path/directory",
)


def test_the_installed_command_exits_0_or_2_without_a_traceback(tmp_path: Path) -> None:
    by_name = {case.name: case for case in handmade(random.Random(QUICK_SEED))}
    valid = EXAMPLES_DIR / "hello-room.yaml"
    cases = [
        *(by_name[name] for name in END_TO_END),
        Case("hello-room", valid.read_bytes(), valid=True),
    ]
    started: list[tuple[Case, Path, subprocess.Popen[str], float]] = []
    # Started together (each its own interpreter), then waited on, each with a deadline.
    for n, case in enumerate(cases):
        where = tmp_path / str(n)
        where.mkdir()
        path = _materialise(case, where)
        process = subprocess.Popen(
            [str(SCRIPT), "validate", str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append((case, path, process, time.perf_counter()))
    failures: list[str] = []
    codes: list[str] = []
    try:
        for case, path, process, t0 in started:
            try:
                stdout, stderr = process.communicate(timeout=PROCESS_DEADLINE_S)
            except subprocess.TimeoutExpired:
                failures.append(f"{case.name}: no answer within {PROCESS_DEADLINE_S} s")
                continue
            outcome = Outcome(process.returncode, stdout, stderr, time.perf_counter() - t0)
            codes.append(f"{case.name}: exit {outcome.exit_code} in {outcome.seconds:.1f}s")
            wrong = _judge(case, path, outcome)
            if wrong is not None:
                failures.append(f"{case.name}: {wrong}")
    finally:
        for _, _, process, _ in started:
            if process.poll() is None:
                process.kill()
                process.wait()
    print(f"\nfuzz end to end: {'; '.join(codes)}")
    assert not failures, "\n\n".join(failures)
