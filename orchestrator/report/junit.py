"""junit.xml: the reports of one invocation in the JUnit XML format CI servers read.

One `<testsuite>` per scenario run (a matrix combination and a `--repeat` run each count as one),
one `<testcase>` per assertion. A failed assertion is a `<failure>` with its one-line message, and
its expected and actual values in the body; an assertion that could not be judged is an
`<error>`. Whatever made the run an ERROR outside its assertions (a crash, a failed step, an agent
error no `errors` assertion covers) is one more test case, `(run)`, holding an `<error>`, so a
CI server never shows a broken run as green.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from orchestrator.report.model import ScenarioReport

RUN_CASE = "(run)"

# Characters XML 1.0 cannot carry at all, even escaped (NUL, ESC, other C0 controls, lone
# surrogates, U+FFFE/U+FFFF). Agent text reaches assertion messages, so they do occur.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml(text: str) -> str:
    """`text` with each character XML cannot hold written as its Python escape (`\\x1b`)."""
    return _NOT_XML.sub(lambda m: repr(m.group())[1:-1], text)


def _clean(root: ET.Element) -> None:
    """Make every attribute and text in the tree writable as XML 1.0."""
    for element in root.iter():
        for key, value in element.attrib.items():
            element.attrib[key] = _xml(value)
        if element.text is not None:
            element.text = _xml(element.text)


def suite_name(report: ScenarioReport, repeats: int | None) -> str:
    name = report.variant or report.scenario
    if report.repeat is not None and repeats is not None:
        name += f" [run {report.repeat}/{repeats}]"
    return name


def _case(parent: ET.Element, classname: str, name: str, time_s: float) -> ET.Element:
    return ET.SubElement(
        parent, "testcase", {"classname": classname, "name": name, "time": f"{time_s:.3f}"}
    )


def _suite(root: ET.Element, report: ScenarioReport, repeats: int | None) -> dict[str, int]:
    name = suite_name(report, repeats)
    classname = report.variant or report.scenario
    suite = ET.SubElement(root, "testsuite")
    properties = ET.SubElement(suite, "properties")
    for key, value in (
        ("verdict", report.verdict.value),
        ("score", f"{report.verification.score:.6g}"),
        ("threshold", f"{report.verification.threshold:.6g}"),
        ("seed", str(report.seed)),
        ("report", str(Path(report.report_dir) / "report.json")),
        *((f"parameter {k}", str(v)) for k, v in report.parameters.items()),
    ):
        ET.SubElement(properties, "property", {"name": key, "value": value})
    counts = {"tests": 0, "failures": 0, "errors": 0}
    for a in report.assertions:
        case = _case(suite, classname, a.id, 0.0)
        counts["tests"] += 1
        if a.error is not None:
            counts["errors"] += 1
            element = ET.SubElement(case, "error", {"message": a.error, "type": a.type})
            element.text = a.message
        elif not a.passed:
            counts["failures"] += 1
            element = ET.SubElement(case, "failure", {"message": a.message, "type": a.type})
            element.text = f"expected: {a.expected}\nactual: {a.actual}"
    if report.verification.run_errors:
        case = _case(suite, classname, RUN_CASE, report.duration_s)
        counts["tests"] += 1
        counts["errors"] += 1
        first = report.verification.run_errors[0]
        element = ET.SubElement(case, "error", {"message": first, "type": "run"})
        element.text = "\n".join(report.verification.run_errors)
    suite.attrib.update(
        {
            "name": name,
            "tests": str(counts["tests"]),
            "failures": str(counts["failures"]),
            "errors": str(counts["errors"]),
            "skipped": "0",
            "time": f"{report.duration_s:.3f}",
            # xs:dateTime without a zone, as the JUnit XSD has it (the report's is UTC).
            "timestamp": report.started_at[:19],
            "file": report.file,
        }
    )
    return counts


def write_junit(path: Path, reports: Sequence[ScenarioReport], repeats: int | None = None) -> Path:
    """Write `reports` as one JUnit XML file; `repeats` is N of `--repeat N`, when given."""
    root = ET.Element("testsuites", {"name": "scenario-runner"})
    totals = {"tests": 0, "failures": 0, "errors": 0}
    for report in reports:
        for key, value in _suite(root, report, repeats).items():
            totals[key] += value
    root.attrib.update({k: str(v) for k, v in totals.items()})
    root.attrib["time"] = f"{sum(r.duration_s for r in reports):.3f}"
    _clean(root)
    ET.indent(root)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return path
