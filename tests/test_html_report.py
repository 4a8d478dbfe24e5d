"""report.html: the charts and digests as pure functions, the page as rendered, the `report`
command, and the page in a real headless Chromium (loads offline, no console errors, charts
drawn, a screenshot that is not blank)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner
from conftest import SoakedExample

from orchestrator.cli import main
from orchestrator.events import ErrorKind, MessageSent, RunError, StepFinished
from orchestrator.report.html import (
    MAX_CHARTS,
    TEXT_KEEP,
    TRANSCRIPT_KEEP,
    EventDigest,
    _axis,
    charted_agents,
    digest_events,
    memory_chart,
    render_html,
)
from orchestrator.report.model import EXIT_INVALID, ScenarioReport

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
REPORT = Path(__file__).resolve().parent / "data" / "reports" / "action-faults.json"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _message(i: int, text: str = "hello") -> MessageSent:
    return MessageSent(id=i, t=i / 10, agent="a", msg_id=f"a:{i}", room="r", text=text,
                       origin="agent")  # fmt: skip


# --- pure parts -------------------------------------------------------------------------------


def test_a_chart_maps_every_point_inside_its_plot_with_the_trend_and_the_warm_up() -> None:
    points = [(float(t), 1_000_000 + 5_000 * t) for t in range(100)]
    trend = ((20.0, 1_100_000.0), (99.0, 1_495_000.0))
    chart = memory_chart("a", {"uss": points}, trend=trend, warmup=(0.0, 20.0), verdict="leak")
    (line,) = chart.lines
    xy = [tuple(map(float, p.split(","))) for p in line.points.split()]
    assert len(xy) == 100
    assert all(chart.left <= x <= chart.plot_right for x, _ in xy)
    assert all(chart.top <= y <= chart.plot_bottom for _, y in xy)
    assert xy[-1][1] < xy[0][1]  # growth goes up the page
    assert chart.trend is not None and chart.warmup is not None
    assert chart.warmup[0] == chart.left and chart.warmup[1] < xy[-1][0]
    labels = [t.label for t in chart.y_ticks]
    assert len(labels) >= 2 and len(set(labels)) == len(labels)


def test_a_chart_of_nothing_has_no_lines_and_a_flat_series_still_draws() -> None:
    assert memory_chart("a", {"uss": []}).lines == []
    flat = memory_chart("a", {"rss": [(0.0, 5.0), (1.0, 5.0)]}, unit="count")
    assert len(flat.lines) == 1 and flat.y_ticks


def test_axis_labels_are_round_units_and_distinct() -> None:
    mib = 1024 * 1024
    assert [label for _, label in _axis(33.0 * mib, 33.6 * mib, "bytes")] == [
        "33.0 MiB", "33.2 MiB", "33.4 MiB", "33.6 MiB",
    ]  # fmt: skip
    assert [label for _, label in _axis(9.5e6, 31e6, "bytes")] == [
        "10 MiB", "15 MiB", "20 MiB", "25 MiB"
    ]
    assert [label for _, label in _axis(0, 7, "count")] == ["0", "2", "4", "6"]


def test_the_transcript_keeps_both_ends_and_counts_what_it_left_out() -> None:
    digest = EventDigest()
    total = 2 * TRANSCRIPT_KEEP + 345
    for i in range(1, total + 1):
        digest.add(_message(i, "x" * (TEXT_KEEP + 7) if i == 1 else f"m{i}"))
    rows = digest.transcript
    assert digest.messages == total and digest.transcript_omitted == 345
    assert rows[0].id == 1 and rows[TRANSCRIPT_KEEP - 1].id == TRANSCRIPT_KEEP
    assert rows[TRANSCRIPT_KEEP].id == TRANSCRIPT_KEEP + 346 and rows[-1].id == total
    assert len(rows[0].text) == TEXT_KEEP and rows[0].cut == 7


def test_a_half_written_last_line_is_counted_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    lines = [msgspec.json.encode(_message(i)) for i in (1, 2)]
    path.write_bytes(b"\n".join(lines) + b"\n" + lines[0][:25])
    digest = digest_events(path)
    assert digest.messages == 2 and digest.unreadable == 1


def _report(**changes: object) -> ScenarioReport:
    """A real report to render: the one a run of examples/action-faults.yaml wrote, kept in
    tests/data so the pure tests need no run."""
    data = json.loads(REPORT.read_text())
    data.update(changes)
    return ScenarioReport.model_validate(data)


def test_the_page_escapes_what_agents_say_and_forbids_any_fetch() -> None:
    digest = EventDigest()
    digest.add(_message(1, '<script>alert("x")</script><img src="http://example.com/a.png">'))
    digest.add(RunError(id=2, t=0.5, error_kind=ErrorKind.STEP, message="<b>bad</b>"))
    digest.add(StepFinished(id=3, t=0.6, timeline="script", path="script[0]", step_id=None,
                            step_kind="send", status="failed", duration_s=0.1,
                            error="<x>"))  # fmt: skip
    page = render_html(_report(), digest)
    assert "<script>alert" not in page and "&lt;script&gt;alert" in page
    assert "default-src 'none'" in page  # the browser refuses every fetch
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "&lt;b&gt;bad&lt;/b&gt;" in page  # the fault's label, escaped, on the timeline


def test_only_the_most_interesting_agents_are_charted() -> None:
    base = _report()
    agent = base.agents[0].model_dump()
    agents = []
    for i in range(MAX_CHARTS + 10):
        a = json.loads(json.dumps(agent))
        a["id"] = f"agent{i}"
        a["memory"]["rss_first_bytes"], a["memory"]["rss_last_bytes"] = 1000, 1000 + i
        agents.append(a)
    agents[3]["memory"]["leak"] = [{
        "series": "uss", "verdict": "leak", "reason": "grows", "unit": "bytes",
        "slope_per_h": 1e7, "slope_low_per_h": 9e6, "slope_high_per_h": 1.1e7, "trend_tau": 0.9,
        "trend_p": 0.001, "floor_per_h": 1048576.0, "detectable_per_h": 2e6, "windows": 30,
        "analysed_s": 60.0,
    }]  # fmt: skip
    report = _report(agents=agents)
    charted = [a.id for a in charted_agents(report)]
    assert len(charted) == MAX_CHARTS
    assert charted[0] == "agent3"  # the leaking agent first, then by growth
    assert charted[1:3] == [f"agent{MAX_CHARTS + 9}", f"agent{MAX_CHARTS + 8}"]


# --- the command ----------------------------------------------------------------------------


def test_report_rewrites_the_page_of_every_run_under_a_directory(tmp_path: Path) -> None:
    for name in ("one", "two"):
        (tmp_path / "runs" / name).mkdir(parents=True)
        shutil.copy(REPORT,
                    tmp_path / "runs" / name / "report.json")  # fmt: skip
    result = CliRunner().invoke(main, ["report", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    for name in ("one", "two"):
        page = (tmp_path / "runs" / name / "report.html").read_text()
        assert "action-faults" in page and "quotient-kept" in page
        assert str(tmp_path / "runs" / name / "report.html") in result.output


def test_report_refuses_a_directory_without_a_readable_report(tmp_path: Path) -> None:
    empty = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert empty.exit_code == EXIT_INVALID and "no report.json" in empty.output
    (tmp_path / "report.json").write_text('{"scenario": "x", "verdict": "MAYBE"}')
    bad = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert bad.exit_code == EXIT_INVALID
    assert f"{tmp_path / 'report.json'}: not a report" in bad.output
    assert "verdict" in bad.output or "description" in bad.output
    assert not (tmp_path / "report.html").exists()


# --- in a browser ---------------------------------------------------------------------------


def _need_browser() -> None:
    """CI installs Chromium and Playwright (.ci/run); elsewhere the test skips without them."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        playwright_missing = True
    else:
        playwright_missing = False
    if CHROMIUM and not playwright_missing:
        return
    what = "chromium" if not CHROMIUM else "playwright"
    if os.environ.get("CI"):
        pytest.fail(f"{what} is not installed: .ci/run installs it for this test")
    pytest.skip(f"{what} is not installed (CI installs it: see .ci/run)")


CHART_BOXES = """() => Array.from(document.querySelectorAll('figure.chart polyline.series'))
    .map(e => { const b = e.getBBox(); return [b.width, b.height]; })"""
TRENDS = "document.querySelectorAll('figure.chart polyline.trend').length"
COLOURS = """async (src) => {
    const img = new Image(); img.src = src; await img.decode();
    const c = document.createElement('canvas'); c.width = img.width; c.height = img.height;
    const g = c.getContext('2d'); g.drawImage(img, 0, 0);
    const d = g.getImageData(0, 0, c.width, c.height).data, seen = new Set();
    for (let i = 0; i < d.length; i += 4 * 97) seen.add(d[i] + ',' + d[i + 1] + ',' + d[i + 2]);
    return seen.size; }"""
"""Distinct colours in a sample of the screenshot's pixels (a blank page has one)."""


def _open_in_chromium(page_path: Path, screenshot: Path) -> dict[str, object]:
    from playwright.sync_api import ConsoleMessage, sync_playwright

    problems: list[str] = []
    requests: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            problems.append(message.text)

    seen: dict[str, object] = {"problems": problems, "requests": requests}
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )  # fmt: skip
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", on_console)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_path.as_uri())
            seen["drawn"] = page.evaluate(CHART_BOXES)
            seen["trends"] = page.evaluate(TRENDS)
            seen["verdict"] = page.inner_text("#verdict")
            if page.query_selector("#filter"):
                seen["pager"] = page.inner_text("#page")
                page.fill("#filter", "no such text anywhere")
                seen["filtered"] = page.inner_text("#page")
            page.screenshot(path=str(screenshot), full_page=True)
            png = "data:image/png;base64," + base64.b64encode(screenshot.read_bytes()).decode()
            seen["colours"] = page.evaluate(COLOURS, png)
        finally:
            browser.close()
    return seen


@pytest.mark.timeout(150)
def test_a_soak_page_opens_offline_in_chromium_with_its_charts_drawn(
    tmp_path: Path, soaked_example: SoakedExample
) -> None:
    _need_browser()
    out = soaked_example.report_dir  # the soak example's run (tests/test_soak.py judges it)
    seen = _open_in_chromium(out / "report.html", tmp_path / "soak.png")
    assert seen["problems"] == []
    assert seen["requests"] == [(out / "report.html").as_uri()]  # nothing fetched
    drawn = seen["drawn"]
    assert isinstance(drawn, list) and len(drawn) >= 3 * 3  # uss, pss, rss of each agent
    assert all(w > 100 and h >= 0 for w, h in drawn)
    report = ScenarioReport.model_validate_json((out / "report.json").read_text())
    assert report.coordinator is not None
    fitted = [
        next(x for x in leaks if x.series == "uss").trend_line
        for leaks in [a.memory.leak for a in report.agents] + [report.coordinator.leak]
    ]
    # One dashed line per verdict with a fit (a loaded machine may sample too little for some).
    assert seen["trends"] == len([line for line in fitted if line is not None]) >= 2
    assert seen["verdict"] == report.verdict.value
    # A soak keeps no per-message events (its default --events summary): no transcript.
    assert "pager" not in seen
    assert isinstance(seen["colours"], int) and seen["colours"] > 8  # not a blank page


@pytest.mark.timeout(120)
def test_a_failed_run_page_shows_its_errors_and_timeline_in_chromium(
    tmp_path: Path, private_tmp: Path
) -> None:
    _need_browser()
    out = tmp_path / "broken"
    result = CliRunner().invoke(
        main, ["run", str(EXAMPLES / "broken-step.yaml"), "--report-dir", str(out), "-q"]
    )
    report = ScenarioReport.model_validate_json((out / "report.json").read_text())
    assert result.exit_code == report.exit_code != 0
    seen = _open_in_chromium(out / "report.html", tmp_path / "broken.png")
    assert seen["problems"] == [] and seen["verdict"] == report.verdict.value
    # The transcript's pager and filter work (a run keeps every message's event).
    assert "page 1 of" in str(seen["pager"]) and "(0 rows)" in str(seen["filtered"])
    assert isinstance(seen["colours"], int) and seen["colours"] > 8  # not a blank page
    page = (out / "report.html").read_text()
    assert page.count('class="b-fail"') >= 1  # the failed step on the timeline
    for error in report.errors:
        assert error.message.split("\n")[0][:40] in page.replace("&#39;", "'").replace("&#34;", '"')
