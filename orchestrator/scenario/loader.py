"""Reading scenario files: YAML text in, a validated `Scenario` out, or a `ScenarioError` listing
every problem in the file, each at its line, column and field path.

The YAML is composed into a node tree first (not loaded straight to Python data) because only the
nodes know where each value was written; the data and a map from path to position are built from
the same walk, so every pydantic error location can be traced back to a line in the file.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
import re
import stat
import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, TypeVar, Union, cast, get_args, get_origin

import yaml
from pydantic import BaseModel, JsonValue, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from orchestrator.run.wire import config_problems
from orchestrator.scenario.assertions import Assertion
from orchestrator.scenario.references import Parts, ReferenceIssue, find_reference_issues
from orchestrator.scenario.schema import (
    CHECK_REFERENCES,
    Loc,
    closest,
    describe_value,
    format_loc,
    quote,
    suggest,
)
from orchestrator.scenario.spec import MATRIX_PATH, UNION_TAGS, AgentSpec, RoomSpec, Scenario
from orchestrator.scenario.steps import Actor, Step, StopCondition

Position = tuple[int, int]
"""1-based (line, column) in the file."""

# Alias expansion can make a small file describe a huge tree (the "billion laughs"); no honest
# scenario comes near this many nodes, so past it the file is refused rather than walked.
MAX_NODES = 1_000_000
# Nor does any nest values this deep. Past it the file is refused where the nesting goes too
# deep, so that every recursive walk of the data after the loader's (pydantic's validators,
# copies, msgpack) has room to spare; aliases can nest deeper than the YAML text shows.
MAX_DEPTH = 100
INT_MIN, INT_MAX = -(1 << 63), (1 << 64) - 1
"""The integers msgpack carries (int64 and uint64)."""

# The same safe constructor either way; libyaml's parser composes about 5x faster than PyYAML's,
# which matters for scenarios with thousands of steps.
_SafeLoader = yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader

_STANDARD_TAG = "tag:yaml.org,2002:"
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"
# Tags whose constructors build a collection: on a scalar (`!!map x`) PyYAML's would quietly
# give an empty one, since the builder never runs the part that fills it.
_COLLECTION_TAGS = frozenset(
    f"{_STANDARD_TAG}{kind}" for kind in ("map", "seq", "set", "omap", "pairs")
)

# Location segments that pydantic adds for its own schema nodes ('function-after[...]',
# 'list[...]'); they name no key in the file.
_SCHEMA_SEGMENT = re.compile(r"[a-z][a-z-]*\[.*\]")

_NO_REFERENCE_CHECK = {CHECK_REFERENCES: False}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one scenario file, where it is and what it is."""

    file: str
    line: int | None
    column: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        # One problem, one line, whatever the user's text contained (any line break, a key of
        # 100,000 characters, a path 100 levels deep).
        message = self.message.translate(_LINE_BREAKS)
        path = _shorten(self.path.translate(_LINE_BREAKS), 200)
        return f"{where}: {path}: {message}" if path else f"{where}: {message}"


# Every character str.splitlines() ends a line at (\r, U+2028, ...), written as an escape.
_LINE_BREAKS = str.maketrans(
    {c: repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}
)


def _shorten(text: str, limit: int = 60) -> str:
    """`text`, its middle cut out when it is longer than `limit`."""
    if len(text) <= limit:
        return text
    head = limit * 2 // 3
    return f"{text[:head]}...{text[-(limit - head - 3):]}"


class ScenarioError(Exception):
    """A scenario file (or several) could not be loaded; `problems` says why, all at once."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(problem) for problem in self.problems)


def load_scenario(path: Path) -> Scenario:
    """Load and validate one scenario file; raise `ScenarioError` with every problem in it.
    A file with a `matrix` is several scenarios: load it with `load_variants`."""
    return _single(load_variants(path), str(path))


def load_scenario_text(text: str, filename: str) -> Scenario:
    """Validate scenario YAML `text`; `filename` is only used to label problems."""
    return _single(load_variants_text(text, filename), filename)


def load_variants(path: Path) -> list[Scenario]:
    """The scenarios one file describes: itself, or one per combination of its `matrix`."""
    return load_variants_text(_read(path), str(path))


def load_variants_text(text: str, filename: str) -> list[Scenario]:
    document, problems = _parse(text, filename)
    if document is None:
        raise ScenarioError(problems)
    data = document.data
    if not isinstance(data, dict):
        problems.append(
            Problem(
                filename,
                *document.positions[()],
                "",
                "a scenario file must be a mapping (name, agents, rooms, script, assertions), "
                f"got {describe_value(data)}",
            )
        )
        raise ScenarioError(problems)
    if data.get("matrix") is None:
        scenario, found = _validate(data, document, filename)
        problems += found
        if problems or scenario is None:
            raise ScenarioError(_in_file_order(problems))
        return [scenario]
    combinations = _matrix(data["matrix"], document, filename, problems)
    if problems:  # the rest of the file is still checked, as written, so all is said at once
        _, found = _validate({k: v for k, v in data.items() if k != "matrix"}, document, filename)
        raise ScenarioError(_in_file_order(problems + found))
    base = {k: v for k, v in data.items() if k != "matrix"}
    scenarios: list[Scenario] = []
    by_variant: list[tuple[str, list[Problem]]] = []
    for combination in combinations:
        variant = copy.deepcopy(base)
        for key, value in combination.values.items():
            _set_path(variant, key, value)  # every path was checked to resolve in `_matrix`
        scenario, found = _validate(variant, document, filename)
        found = [combination.locate(p) for p in found]
        if scenario is not None:
            scenario._parameters = combination.values
            scenarios.append(scenario)
        label = ", ".join(
            f"{_shorten(k)}={_shorten(json.dumps(v))}" for k, v in combination.values.items()
        )
        by_variant.append((label, found))
    # A problem every combination has is the file's and is said once; one that depends on the
    # values is said for each combination that has it.
    common = set.intersection(*(set(found) for _, found in by_variant))
    problems += common
    for label, found in by_variant:
        problems += [
            dataclasses.replace(p, message=f"{p.message} (with matrix {label})")
            for p in found
            if p not in common
        ]
    if problems:
        raise ScenarioError(_in_file_order(problems))
    return scenarios


def validate_files(paths: Sequence[Path]) -> tuple[list[tuple[Path, Scenario]], list[Problem]]:
    """Load every file, collecting the scenarios that loaded (a file with a matrix gives
    several) and the problems of all the others."""
    scenarios: list[tuple[Path, Scenario]] = []
    problems: list[Problem] = []
    for path in paths:
        try:
            scenarios += [(path, scenario) for scenario in load_variants(path)]
        except ScenarioError as exc:
            problems.extend(exc.problems)
    return scenarios, problems


def _single(scenarios: list[Scenario], filename: str) -> Scenario:
    if len(scenarios) != 1:
        raise ScenarioError(
            [
                Problem(
                    filename,
                    None,
                    None,
                    "matrix",
                    f"the file's matrix makes {len(scenarios)} scenarios; load it with"
                    " load_variants",
                )
            ]
        )
    return scenarios[0]


MAX_FILE_BYTES = 16 * 1024 * 1024
"""A scenario file larger than this is not one (and is not read whole to find out)."""


def _read(path: Path) -> str:
    filename = str(path)
    try:
        # Only a regular file: a FIFO or a device would block the read (or never end).
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError
        if not stat.S_ISREG(info.st_mode):
            kind = "a FIFO" if stat.S_ISFIFO(info.st_mode) else "not a regular file"
            raise ScenarioError([Problem(filename, None, None, "",
                                         f"is {kind}, not a scenario file")])  # fmt: skip
        if info.st_size > MAX_FILE_BYTES:
            raise ScenarioError([Problem(filename, None, None, "", (
                f"is {info.st_size / 2**20:.1f} MiB: a scenario file is at most"
                f" {MAX_FILE_BYTES // 2**20} MiB"))])  # fmt: skip
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ScenarioError([Problem(filename, None, None, "", "no such file")]) from None
    except IsADirectoryError:
        raise ScenarioError(
            [Problem(filename, None, None, "", "is a directory, not a scenario file")]
        ) from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ScenarioError([Problem(filename, None, None, "", f"cannot read: {reason}")]) from None
    except ValueError:  # from stat(): a NUL in the name (of a matrix file, named in a scenario)
        message = "cannot read: a file name cannot contain a NUL character"
        raise ScenarioError([Problem(filename, None, None, "", message)]) from None
    try:
        # utf-8-sig: editors on Windows like to start a file with a byte order mark.
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ScenarioError(
            [Problem(filename, line, None, "", f"not UTF-8 text: {exc.reason} at byte {exc.start}")]
        ) from None


def _validate(
    data: dict[str, object], document: _Document, filename: str
) -> tuple[Scenario | None, list[Problem]]:
    problems: list[Problem] = []
    scenario: Scenario | None = None
    try:
        scenario = Scenario.model_validate(data, context=_NO_REFERENCE_CHECK)
    except ValidationError as exc:
        problems.extend(_validation_problems(exc, data, document, filename))
        issues = _references_of_valid_parts(data)
    else:
        issues = scenario.reference_issues()
    problems.extend(_reference_problem(issue, document, filename) for issue in issues)
    if scenario is not None and not problems:
        # What the agents would be sent: `validate` refuses what `run` could not send.
        for loc, message in config_problems(scenario):
            position = _nearest(loc, document)
            problems.append(Problem(filename, *position, format_loc(loc), message))
    return (None if problems else scenario), problems


# --- matrix ----------------------------------------------------------------------------------

MAX_VARIANTS = 1000
"""More combinations than this is a mistake in the matrix, not a test plan."""


@dataclass(frozen=True)
class _Combination:
    values: dict[str, JsonValue]
    entries: dict[str, tuple[str, Position]]
    """Where each value was written: (file, position), the scenario's or a matrix file's."""

    def locate(self, problem: Problem) -> Problem:
        """A problem with a value this combination set, moved to the entry that set it."""
        for key, (file, (line, column)) in self.entries.items():
            path = format_loc(tuple(int(x) if x.isdigit() else x for x in key.split(".")))
            below = problem.path.startswith((f"{path}.", f"{path}["))
            # An unknown key the matrix made: `defautls` of `defautls.retries`.
            made = path.startswith((f"{problem.path}.", f"{problem.path}[")) and (
                problem.message.startswith("unknown key")
            )
            if problem.path == path or below or made:
                return dataclasses.replace(problem, file=file, line=line, column=column)
        return problem


def _plain(value: object) -> bool:
    """Whether `value` is JSON-like: what a matrix value may be (no dates, sets, bytes)."""
    if value is None or isinstance(value, str | bool | int | float):
        return True
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def _matrix(
    raw: object, document: _Document, filename: str, problems: list[Problem]
) -> list[_Combination]:
    """The matrix's combinations; problems go to `problems`, each at its place in the file
    (the scenario's, or the matrix file's when `raw` names one).

    Two forms: a mapping of path -> values runs every combination (the first key varies
    slowest); a list of mappings of path -> value runs exactly those combinations (for values
    that go together, such as a worker count and the number of answers to wait for)."""
    doc, file = document, filename
    prefix: Loc = ("matrix",)
    if isinstance(raw, str):
        source = Path(filename).parent / raw
        try:
            text = _read(source)
        except ScenarioError as exc:
            at = document.positions[("matrix",)]
            problems += [
                Problem(filename, *at, "matrix", f"matrix file {quote(str(source))}: {p.message}")
                for p in exc.problems
            ]
            return []
        parsed, found = _parse(text, str(source))
        problems += found
        if parsed is None or found:
            return []
        doc, file, prefix, raw = parsed, str(source), (), parsed.data

    def position(loc: Loc, of_value: bool = False) -> Position:
        exact = None if of_value else doc.key_positions.get(loc)
        return exact or doc.positions.get(loc) or _nearest(loc, doc)

    def problem(message: str, loc: Loc, of_value: bool = False) -> None:
        problems.append(Problem(file, *position(loc, of_value), format_loc(loc), message))

    def path_ok(loc: Loc, key: object) -> bool:
        if not isinstance(key, str) or not MATRIX_PATH.fullmatch(key):
            problem(f"{key!r} is not a dotted path such as defaults.retries or agents.0.model", loc)
            return False
        reason = _resolve(document.data, key)
        if reason is not None:
            problem(reason, loc)
        return reason is None

    def value_ok(loc: Loc, value: object) -> bool:
        if not _plain(value):
            problem(
                "a matrix value is text, a number, a boolean, null, or a list or mapping of"
                f" those; got {describe_value(value)}",
                loc,
                of_value=True,
            )
        return _plain(value)

    combinations: list[_Combination] = []
    if isinstance(raw, dict) and raw:
        axes: list[tuple[str, list[JsonValue]]] = []
        for key, values in raw.items():
            loc = (*prefix, str(key))
            if not path_ok(loc, key):
                continue
            if not isinstance(values, list) or not values:
                message = f"the values must be a non-empty list, got {describe_value(values)}"
                problem(message, loc, of_value=True)
            elif all([value_ok((*loc, i), value) for i, value in enumerate(values)]):
                axes.append((str(key), cast(list[JsonValue], values)))
        if len(axes) == len(raw):
            total = math.prod(len(values) for _, values in axes)
            if total > MAX_VARIANTS:
                problem(
                    f"the matrix makes {total} combinations; at most {MAX_VARIANTS} are allowed",
                    prefix,
                )
                return []
            entries = {key: (file, position((*prefix, key))) for key, _ in axes}
            combinations = [
                _Combination(dict(zip(entries, values, strict=True)), entries)
                for values in itertools.product(*(values for _, values in axes))
            ]
    elif isinstance(raw, list) and raw:
        for i, item in enumerate(raw):
            if not isinstance(item, dict) or not item:
                empty = "an empty mapping" if item == {} else describe_value(item)
                message = f"a combination maps dotted paths to values, got {empty}"
                problem(message, (*prefix, i), of_value=True)
                continue
            usable = [
                path_ok((*prefix, i, str(k)), k) and value_ok((*prefix, i, str(k)), v)
                for k, v in item.items()
            ]
            if all(usable):
                entries = {k: (file, position((*prefix, i, k))) for k in item}
                combinations.append(_Combination(cast(dict[str, JsonValue], item), entries))
        if len(raw) > MAX_VARIANTS:
            problem(f"the matrix lists {len(raw)} combinations; at most {MAX_VARIANTS}", prefix)
    else:
        got = "an empty one" if raw in ({}, []) else describe_value(raw)
        problem(
            "a matrix maps dotted paths to lists of values, or lists combinations (mappings of"
            f" dotted paths to values), or names a YAML file holding either; got {got}",
            prefix,
            of_value=True,
        )
    keys = {key for c in combinations for key in c.values}
    for long in sorted(keys):
        for short in sorted(k for k in keys if long.startswith(f"{k}.")):
            file_of, (line, column) = next(
                c.entries[long] for c in combinations if long in c.values
            )
            message = f"overlaps the matrix's {short!r}: set one or the other"
            problems.append(Problem(file_of, line, column, long, message))
    return combinations if not problems else []


def _resolve(data: object, key: str) -> str | None:
    """Why `key` cannot be set in `data`, or None when it can. A key a mapping lacks is
    created, with mappings for the segments below it (`defaults.retries` in a file without
    `defaults`; validation then judges the keys); a list item must exist."""
    if key == "matrix" or key.startswith("matrix."):
        return "the matrix cannot set itself"
    segments = key.split(".")
    current = data
    for n, segment in enumerate(segments):
        here = ".".join(segments[:n]) or "the top level"
        if isinstance(current, dict):
            if segment not in current:
                below = segments[n + 1 :]
                if any(s.isdigit() for s in below):
                    return f"no key {segment!r} at {here}, so there is no list to index below it"
                return None
            current = current[segment]
        elif isinstance(current, list):
            if not segment.isdigit():
                return f"{here} is a list: index it with a number, not {segment!r}"
            if int(segment) >= len(current):
                return f"{here} has {len(current)} item(s); there is no item {segment}"
            current = current[int(segment)]
        elif n < len(segments):
            return f"{here} is {describe_value(current)}, which has no {segment!r}"
    return None


def _set_path(data: dict[str, object], key: str, value: JsonValue) -> None:
    """Set `key` (checked by `_resolve`) in `data`, creating the mappings it lacks."""
    *parents, last = key.split(".")
    current: object = data
    for segment in parents:
        if isinstance(current, list):
            current = current[int(segment)]
        else:
            mapping = cast(dict[str, object], current)
            if not isinstance(mapping.get(segment), dict | list):
                mapping[segment] = {}
            current = mapping[segment]
    if isinstance(current, list):
        current[int(last)] = copy.deepcopy(value)
    else:
        cast(dict[str, object], current)[last] = copy.deepcopy(value)


# --- YAML with positions ---------------------------------------------------------------------


@dataclass
class _Document:
    data: object
    # Where each value starts, and where the key of each mapping entry starts, by path.
    positions: dict[Loc, Position]
    key_positions: dict[Loc, Position]


class _Refused(Exception):
    """The document cannot be built at all (too large, too deep): `problem` says where."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


def _position(mark: yaml.Mark) -> Position:
    return mark.line + 1, mark.column + 1


def _parse(text: str, filename: str) -> tuple[_Document | None, list[Problem]]:
    """The document, or None when there is none to validate, and the problems found so far."""
    try:
        return _compose(text, filename)
    except yaml.MarkedYAMLError as exc:
        return None, [_yaml_problem(exc, filename)]
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        message = f"invalid YAML: unacceptable character #x{exc.character:04x}: {exc.reason}"
        return None, [Problem(filename, line, column, "", message)]
    except yaml.YAMLError as exc:
        return None, [Problem(filename, None, None, "", f"invalid YAML: {exc}")]
    except _Refused as exc:
        return None, [exc.problem]
    except RecursionError:
        return None, [Problem(filename, None, None, "", "the document is nested too deeply")]


def _compose(text: str, filename: str) -> tuple[_Document | None, list[Problem]]:
    loader = _SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, [Problem(filename, 1, 1, "", "empty file: expected a scenario mapping")]
        _check_expansion(node, filename)
        builder = _Builder(loader, filename)
        data = builder.value(node, ())
        return _Document(data, builder.positions, builder.key_positions), builder.problems
    finally:
        loader.dispose()


def _too_large(filename: str, position: Position, path: str = "") -> _Refused:
    message = f"the value here expands to over {MAX_NODES} values (through aliases?)"
    return _Refused(Problem(filename, *position, path, message))


def _check_expansion(root: yaml.Node, filename: str) -> None:
    """Refuse a document that aliases make larger than MAX_NODES values before building any of
    it, in time proportional to the file rather than to what it expands to, at the first
    anchored value (in file order, innermost first) whose expansion is over the limit."""
    sizes: dict[int, int] = {}  # values under a node once expanded, itself included
    opened: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_sized = stack.pop()
        if id(node) in sizes:
            continue
        if isinstance(node, yaml.ScalarNode):
            sizes[id(node)] = 1
            continue
        values: list[yaml.Node] = (
            node.value if isinstance(node, yaml.SequenceNode) else [v for _, v in node.value]
        )
        if not children_sized:
            if id(node) in opened:
                continue  # an alias to a value that contains it: the builder reports the cycle
            opened.add(id(node))
            stack.append((node, True))
            stack.extend((value, False) for value in reversed(values))
            continue
        size = 1 + sum(sizes.get(id(value), 1) for value in values)
        if size > MAX_NODES:
            raise _too_large(filename, _position(node.start_mark))
        sizes[id(node)] = size


def _yaml_problem(exc: yaml.MarkedYAMLError, filename: str) -> Problem:
    # PyYAML says where it was ("while parsing a flow sequence", at the opening bracket) and what
    # went wrong (at the offending character); the problem's mark is the one to jump to.
    mark = exc.problem_mark or exc.context_mark
    message = exc.problem or "syntax error"
    if exc.context:
        context = exc.context
        if exc.context_mark is not None and (mark is None or exc.context_mark.line != mark.line):
            context += f" at line {exc.context_mark.line + 1}"
        message = f"{context}: {message}" if exc.problem else context
    message = f"invalid YAML: {message}"
    if mark is None:
        return Problem(filename, None, None, "", message)
    return Problem(filename, *_position(mark), "", message)


class _Builder:
    """Turns a composed node tree into plain data, recording where every value and key is."""

    def __init__(self, loader: yaml.SafeLoader | yaml.CSafeLoader, filename: str) -> None:
        self.loader = loader
        self.filename = filename
        self.positions: dict[Loc, Position] = {}
        self.key_positions: dict[Loc, Position] = {}
        self.problems: list[Problem] = []
        self._budget = MAX_NODES
        # Nodes being built right now: meeting one again means an alias refers to its ancestor.
        self._open: set[int] = set()
        self._cycles: set[int] = set()
        self._scalars: dict[int, object] = {}
        # Mappings whose merge keys were already expanded (an alias can visit a node twice).
        self._flattened: set[int] = set()

    def problem(self, loc: Loc, position: Position, message: str) -> None:
        self.problems.append(Problem(self.filename, *position, format_loc(loc), message))

    def value(self, node: yaml.Node, loc: Loc) -> object:
        position = _position(node.start_mark)
        self.positions[loc] = position
        self._budget -= 1
        if self._budget < 0:  # `_check_expansion` refuses such a file first; this is a backstop
            raise _too_large(self.filename, position, format_loc(loc))
        if len(loc) > MAX_DEPTH:
            message = f"values nested more than {MAX_DEPTH} deep: no scenario needs that many"
            raise _Refused(Problem(self.filename, *position, format_loc(loc), message))
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, loc)
        if id(node) in self._open:
            # Once per anchored value, not once per path that reaches it through the cycle.
            if id(node) not in self._cycles:
                self._cycles.add(id(node))
                self.problem(loc, position, "the value anchored here contains an alias to itself")
            return None
        if node.tag not in (_MAP_TAG, _SEQ_TAG):
            self.problem(loc, position, f"unsupported YAML tag {quote(node.tag)}")
            return None
        self._open.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self.value(item, (*loc, i)) for i, item in enumerate(node.value)]
            assert isinstance(node, yaml.MappingNode)
            return self.mapping(node, loc)
        finally:
            self._open.discard(id(node))

    def scalar(self, node: yaml.ScalarNode, loc: Loc) -> object:
        # Memoised because keys are read twice (duplicate check, then the mapping) and a failed
        # read must be reported once; PyYAML also refuses to construct a node that failed before.
        if id(node) in self._scalars:
            return self._scalars[id(node)]
        value: object
        tag = node.tag.replace(_STANDARD_TAG, "!!", 1)
        if node.tag in _COLLECTION_TAGS:
            message = f"the tag {tag} is for a collection, not a value like {quote(node.value)}"
            self.problem(loc, _position(node.start_mark), message)
            value = str(node.value)
            self._scalars[id(node)] = value
            return value
        try:
            value = self.loader.construct_object(node)
        except (ValueError, OverflowError) as exc:
            # PyYAML's resolvers trust their regexes: `2024-13-01` is resolved as a date and then
            # fails in datetime, outside PyYAML's own error types. Keep the text and say why.
            self.problem(loc, _position(node.start_mark), f"cannot read {quote(node.value)}: {exc}")
            value = str(node.value)
        except (LookupError, AttributeError):
            # An explicit tag skips the resolvers' regexes altogether, and the constructors then
            # fail on what they were not made for: `!!bool maybe` (KeyError), `!!int ''`
            # (IndexError), `!!timestamp x` (AttributeError).
            self.problem(
                loc, _position(node.start_mark), f"cannot read {quote(node.value)} as {tag}"
            )
            value = str(node.value)
        if type(value) is int and not INT_MIN <= value <= INT_MAX:
            # Agents get their settings over msgpack, which carries at most 64 bits; caught
            # here, the problem has its place in the file (a run used to fail at start-up).
            text = str(node.value)
            shown = text if len(text) <= 24 else f"{text[:10]}...{text[-6:]}"
            self.problem(
                loc,
                _position(node.start_mark),
                f"the integer {shown} does not fit in 64 bits (agents receive their"
                f" configuration as msgpack, which carries {INT_MIN} to {INT_MAX})",
            )
            value = None
        self._scalars[id(node)] = value
        return value

    def mapping(self, node: yaml.MappingNode, loc: Loc) -> dict[str, object]:
        if id(node) not in self._flattened:
            self._check_duplicates(node, loc)
            # Expands `<<: *base` in place, merged keys first so that the mapping's own keys
            # override them, as YAML's merge key specifies.
            self.loader.flatten_mapping(node)
            self._flattened.add(id(node))
        result: dict[str, object] = {}
        for key_node, value_node in node.value:
            key_position = _position(key_node.start_mark)
            if not isinstance(key_node, yaml.ScalarNode):
                self.problem(loc, key_position, "a key must be a plain name, not a list or mapping")
                continue
            key = self.scalar(key_node, loc)
            if not isinstance(key, str):
                # `yes:`, `on:`, `1:` are not names to YAML; say so rather than "unknown key True".
                self.problem(
                    loc,
                    key_position,
                    f"key {quote(key_node.value)} is read as {describe_value(key)}; quote it",
                )
                continue
            self.key_positions[(*loc, key)] = key_position
            result[key] = self.value(value_node, (*loc, key))
        return result

    def _check_duplicates(self, node: yaml.MappingNode, loc: Loc) -> None:
        # PyYAML silently keeps the last of two equal keys; in a scenario that is always a mistake.
        first_line: dict[object, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            key = self.scalar(key_node, loc)
            position = _position(key_node.start_mark)
            if key in first_line:
                self.problem(
                    (*loc, str(key)),
                    position,
                    f"duplicate key {quote(key)} (first at line {first_line[key]})",
                )
            else:
                first_line[key] = position[0]


# --- validation errors to problems -----------------------------------------------------------


def _validation_problems(
    exc: ValidationError, data: object, document: _Document, filename: str
) -> list[Problem]:
    """`data` is what was validated: the document's data, or a matrix variant of it."""
    errors = [(error, _data_loc(error["loc"], data)) for error in exc.errors(include_url=False)]
    # A misspelt required key is reported twice by pydantic: as an unknown key and as the field
    # it was meant to be, missing. The first, with its did-you-mean, says all there is to say.
    meant: set[Loc] = set()
    for error, loc in errors:
        if error["type"] == "extra_forbidden" and loc:
            guess = closest(str(loc[-1]), _keys_at(loc[:-1]))
            if guess is not None:
                meant.add((*loc[:-1], guess))
    problems: list[Problem] = []
    for error, loc in errors:
        if error["type"] == "extra_forbidden" and loc:
            key = str(loc[-1])
            message = f"unknown key {quote(key)}{suggest(key, _keys_at(loc[:-1]))}"
            position = document.key_positions.get(loc) or _nearest(loc, document)
        elif error["type"] in ("missing", "no_assertions") and loc in meant:
            continue  # (an empty `assertions` is what a misspelt one leaves)
        elif error["type"] == "missing" and loc:
            message = f"missing required field {loc[-1]!r}"
            loc = loc[:-1]
            position = _nearest(loc, document)
        else:
            message = _message(error)
            position = _nearest(loc, document)
        problems.append(Problem(filename, *position, format_loc(loc), message))
    return problems


def _data_loc(loc: tuple[int | str, ...], data: object) -> Loc:
    """The path in the file that a pydantic error location refers to.

    pydantic puts a keyed union's tag ('SendStep') into the location, between the list index and
    the step's key; a segment is dropped as a tag only when it is not a key of the data there.
    """
    path: list[str | int] = []
    current: object = data
    inside = True
    for segment in loc:
        child = _child(current, segment) if inside else _ABSENT
        if child is not _ABSENT:
            current = child
        elif isinstance(segment, str) and (
            segment in UNION_TAGS
            or _SCHEMA_SEGMENT.fullmatch(segment)
            # JsonValue's union tags name the kind of the value they are under.
            or (segment == "list" and isinstance(current, list))
            or (segment == "dict" and isinstance(current, dict))
        ):
            continue
        else:
            # A key the data lacks (a missing field): nothing below it exists either.
            inside = False
        path.append(segment)
    return tuple(path)


_ABSENT = object()


def _child(container: object, segment: int | str) -> object:
    """container[segment] when the data has it, else _ABSENT (None is a value YAML can hold)."""
    if isinstance(container, dict):
        return container.get(segment, _ABSENT)
    if isinstance(container, list) and isinstance(segment, int) and 0 <= segment < len(container):
        return container[segment]
    return _ABSENT


def _nearest(loc: Loc, document: _Document) -> Position:
    """The position of the deepest value on `loc` that exists in the file."""
    for end in range(len(loc), -1, -1):
        position = document.positions.get(loc[:end])
        if position is not None:
            return position
    return 1, 1


def _flatten(annotation: object) -> list[object]:
    """The member types of an annotation, through Annotated[...] and unions."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _flatten(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return [member for arg in get_args(annotation) for member in _flatten(arg)]
    return [annotation]


def _keys_at(loc: Loc) -> list[str]:
    """The keys the schema allows in the mapping at `loc`, for did-you-mean suggestions."""
    candidates: list[object] = [Scenario]
    for segment in loc:
        following: list[object] = []
        for annotation in candidates:
            for member in _flatten(annotation):
                if isinstance(segment, int) and get_origin(member) is list:
                    following.append(get_args(member)[0])
                elif isinstance(segment, str) and (model := _is_model(member)) is not None:
                    following.extend(
                        field.annotation
                        for name, field in model.model_fields.items()
                        if segment in (name, field.alias)
                    )
        candidates = following
    keys: list[str] = []
    for annotation in candidates:
        for member in _flatten(annotation):
            if (model := _is_model(member)) is not None:
                keys.extend(field.alias or name for name, field in model.model_fields.items())
    return list(dict.fromkeys(keys))


def _is_model(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


# What pydantic's type errors expect, in the file's terms.
_EXPECTED = {
    "string_type": "a string",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}

_PYDANTIC_PREFIXES = ("Value error, ", "Assertion failed, ")


def _message(error: ErrorDetails) -> str:
    kind = error["type"]
    got = describe_value(error["input"])
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {got}"
    ctx = error.get("ctx", {})
    if kind == "literal_error":
        return f"expected {ctx.get('expected')}, got {got}"
    bounds = {
        "greater_than_equal": ("at least", "ge"),
        "greater_than": ("more than", "gt"),
        "less_than_equal": ("at most", "le"),
        "less_than": ("less than", "lt"),
    }
    if kind in bounds:
        words, key = bounds[kind]
        return f"must be {words} {ctx.get(key)}, got {got}"
    message = error["msg"]
    for prefix in _PYDANTIC_PREFIXES:
        message = message.removeprefix(prefix)
    return message


# --- references ------------------------------------------------------------------------------


_STEP: TypeAdapter[Step] = TypeAdapter(Step)
_ASSERTION: TypeAdapter[Assertion] = TypeAdapter(Assertion)
_ACTOR: TypeAdapter[Actor] = TypeAdapter(Actor)
_STOP: TypeAdapter[StopCondition] = TypeAdapter(StopCondition)
T = TypeVar("T")


def _references_of_valid_parts(data: dict[str, object]) -> list[ReferenceIssue]:
    """Reference problems among the parts of an invalid scenario that are valid on their own.

    So that one file's structural errors and reference errors are reported in the same run. An
    agent or room with an error elsewhere (a bad regex in its model) still counts by its
    identity (id and count; id, type and members). Only when an identity itself is broken are
    references not checked: with an agent missing, references to it would be reported as
    undefined when they are not.
    """
    raw_agents, raw_rooms = data.get("agents"), data.get("rooms", [])
    if not isinstance(raw_agents, list) or not raw_agents or not isinstance(raw_rooms, list):
        return []
    try:
        agents = {
            i: _identity(AgentSpec, item, ("id", "count")) for i, item in enumerate(raw_agents)
        }
        rooms = {
            i: _identity(RoomSpec, item, ("id", "type", "members"))
            for i, item in enumerate(raw_rooms)
        }
    except ValidationError:
        return []
    return find_reference_issues(
        Parts(
            agents=agents,
            rooms=rooms,
            script=_valid_items(data, "script", _STEP),
            actors=_valid_items(data, "actors", _ACTOR),
            assertions=_valid_items(data, "assertions", _ASSERTION),
            stop_when=_valid_items(data, "stop_when", _STOP),
        )
    )


M = TypeVar("M", bound=BaseModel)


def _identity(model: type[M], item: object, keys: tuple[str, ...]) -> M:
    """`item` as `model`, or, when it is invalid, only its identifying `keys` as `model` (the
    ValidationError of that when even those are wrong)."""
    try:
        return model.model_validate(item)
    except ValidationError:
        if not isinstance(item, dict):
            raise
        return model.model_validate({k: item[k] for k in keys if k in item})


def _valid_items(data: dict[str, object], key: str, adapter: TypeAdapter[T]) -> dict[int, T]:
    """The items of list `key` that validate on their own, or once what is wrong in them is
    taken out (so a bad regex beside an undefined agent reports both), by index."""
    raw = data.get(key, [])
    valid: dict[int, T] = {}
    for i, item in enumerate(raw if isinstance(raw, list) else []):
        salvaged = _salvage(adapter, item)
        if salvaged is not None:
            valid[i] = salvaged
    return valid


SALVAGE_ROUNDS = 4


def _salvage(adapter: TypeAdapter[T], item: object) -> T | None:
    """`item` validated, or validated with the fields its errors point at removed (each error
    is already reported on its own); None when that does not make it valid."""
    candidate = copy.deepcopy(item)
    for _ in range(SALVAGE_ROUNDS):
        try:
            return adapter.validate_python(candidate)
        except ValidationError as exc:
            removed = False
            for error in exc.errors():
                loc = _data_loc(error["loc"], candidate)
                removed = _remove(candidate, loc) or removed
            if not removed:
                return None
    return None


def _remove(data: object, loc: Loc) -> bool:
    """Delete the mapping key at `loc` (a field, never a list item); True if it was there."""
    if not loc or not isinstance(loc[-1], str):
        return False
    parent = data
    for segment in loc[:-1]:
        parent = _child(parent, segment)
        if parent is _ABSENT:
            return False
    if isinstance(parent, dict) and loc[-1] in parent:
        del parent[loc[-1]]
        return True
    return False


def _reference_problem(issue: ReferenceIssue, document: _Document, filename: str) -> Problem:
    return Problem(filename, *_nearest(issue.loc, document), format_loc(issue.loc), issue.message)


def _in_file_order(problems: list[Problem]) -> list[Problem]:
    unique = list(dict.fromkeys(problems))
    return sorted(
        unique,
        key=lambda p: (p.line is None, p.line or 0, p.column or 0, p.path),
    )
