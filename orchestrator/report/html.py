"""report.html: one self-contained page per run, rendered from report.json and events.jsonl.

The page opens offline: its styles, its script and its charts (inline SVG, drawn here) are in
the file, and a Content-Security-Policy forbids every fetch. It shows the verdict and the
assertions, each agent's memory over time with its leak verdict and fitted trend, a timeline
of steps and faults, the errors, and a transcript of messages that stays usable however large
the run: the first and last TRANSCRIPT_KEEP messages, paged in the browser, with the count of
what was left out.

`write_html` is called at the end of every run; `scenario-runner report RUN_DIR` calls it again
from what a run directory holds (a soak killed mid-run leaves a checkpointed report.json).
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from orchestrator.events import (
    AgentCrashed,
    AgentError,
    AgentHung,
    Event,
    FaultEnded,
    FaultInjected,
    MessageDeadLetter,
    MessageRefused,
    MessageSent,
    RunError,
    StepFinished,
    StopConditionMet,
    decode_event,
)
from orchestrator.report.model import AgentReport, LeakReport, ScenarioReport

TRANSCRIPT_KEEP = 1000
"""Messages kept from each end of the run for the transcript."""
TEXT_KEEP = 400
"""Characters of a message's text shown; the rest is counted."""
MAX_CHARTS = 48
"""Agents charted (the leaking and the most grown first); every agent is in the table."""
MAX_STEP_BARS = 2000
"""Step runs drawn on the timeline; later runs are counted."""
MAX_MARKS = 500
"""Faults marked on the timeline; later ones are counted (all are in the errors section)."""

MIB = 1024 * 1024


# --- charts ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Line:
    name: str
    css: str
    points: str
    """SVG polyline points, "x,y x,y ..."."""


@dataclass(frozen=True, slots=True)
class Tick:
    at: float
    label: str


@dataclass(slots=True)
class Chart:
    title: str
    width: int = 560
    height: int = 180
    left: int = 84
    right: int = 8
    top: int = 10
    bottom: int = 24
    lines: list[Line] = field(default_factory=list)
    trend: Line | None = None
    warmup: tuple[float, float] | None = None
    """The warm-up as x from, x to (pixels)."""
    x_ticks: list[Tick] = field(default_factory=list)
    y_ticks: list[Tick] = field(default_factory=list)
    verdict: str | None = None
    caption: str = ""

    @property
    def plot_bottom(self) -> int:
        return self.height - self.bottom

    @property
    def plot_right(self) -> int:
        return self.width - self.right


def fmt_bytes(n: float) -> str:
    if abs(n) >= 1024 * MIB:
        return f"{n / (1024 * MIB):.2f} GiB"
    if abs(n) >= MIB:
        return f"{n / MIB:.1f} MiB"
    if abs(n) >= 1024:
        return f"{n / 1024:.0f} KiB"
    return f"{n:.0f} B"


def fmt_rate(per_h: float | None, unit: str) -> str:
    if per_h is None:
        return ""
    if unit == "bytes":
        return ("+" if per_h >= 0 else "-") + fmt_bytes(abs(per_h)) + "/h"
    return f"{per_h:+.2f}/h"


def fmt_seconds(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.1f}h"
    if s >= 120:
        return f"{s / 60:.0f}m"
    return f"{s:.0f}s" if s >= 10 else f"{s:.1f}s"


def _nice_ticks(low: float, high: float, count: int = 4) -> list[float]:
    """About `count` round values spanning low..high."""
    span = high - low
    if span <= 0:
        return [low]
    raw = span / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step) + 1)]


def _byte_unit(top: float) -> tuple[float, str]:
    for scale, name in ((1024 * MIB, "GiB"), (MIB, "MiB"), (1024, "KiB")):
        if top >= scale:
            return scale, name
    return 1, "B"


def _axis(low: float, high: float, unit: str) -> list[tuple[float, str]]:
    """(value, label) ticks: round numbers of MiB (or KiB, GiB) for bytes, with as many
    decimals as the step between ticks needs."""
    scale, suffix = _byte_unit(max(abs(low), abs(high))) if unit == "bytes" else (1, "")
    values = _nice_ticks(low / scale, high / scale, 5)
    step = values[1] - values[0] if len(values) > 1 else 1.0
    decimals = max(0, min(4, -math.floor(math.log10(step)))) if step > 0 else 0
    return [(v * scale, f"{v:.{decimals}f} {suffix}".rstrip()) for v in values]


def memory_chart(
    title: str,
    series: dict[str, Sequence[tuple[float, float]]],
    *,
    unit: str = "bytes",
    trend: tuple[tuple[float, float], tuple[float, float]] | None = None,
    warmup: tuple[float, float] | None = None,
    verdict: str | None = None,
    caption: str = "",
) -> Chart:
    """A chart of `series` ({name: [(t, value)]}) on shared axes, with the fitted `trend`
    line ((t, v), (t, v)) and the `warmup` span (t from, t to) shaded."""
    chart = Chart(title, verdict=verdict, caption=caption)
    drawn = {name: points for name, points in series.items() if points}
    if not drawn:
        return chart
    everything = [p for points in drawn.values() for p in points]
    if trend is not None:
        everything += list(trend)
    t0, t1 = min(t for t, _ in everything), max(t for t, _ in everything)
    v0, v1 = min(v for _, v in everything), max(v for _, v in everything)
    if v1 == v0:
        v0, v1 = v0 - max(1.0, abs(v0) * 0.01), v1 + max(1.0, abs(v1) * 0.01)
    pad = (v1 - v0) * 0.05
    v0, v1 = v0 - pad, v1 + pad
    t1 = t1 if t1 > t0 else t0 + 1.0
    x_span = chart.plot_right - chart.left
    y_span = chart.plot_bottom - chart.top

    def x(t: float) -> float:
        return chart.left + (t - t0) / (t1 - t0) * x_span

    def y(v: float) -> float:
        return chart.plot_bottom - (v - v0) / (v1 - v0) * y_span

    def polyline(points: Iterable[tuple[float, float]]) -> str:
        return " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in points)

    chart.lines = [Line(name, f"s-{name}", polyline(points)) for name, points in drawn.items()]
    if trend is not None:
        chart.trend = Line("trend", "trend", polyline(trend))
    if warmup is not None and warmup[1] > t0:
        chart.warmup = (x(max(t0, warmup[0])), x(min(t1, warmup[1])))
    chart.y_ticks = [Tick(y(v), text) for v, text in _axis(v0, v1, unit)]
    chart.x_ticks = [Tick(x(t), fmt_seconds(t)) for t in _nice_ticks(t0, t1, 5)]
    return chart


# --- what the events hold ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TranscriptRow:
    id: int
    t: float
    sender: str
    room: str
    text: str
    cut: int
    """Characters of the text left out."""
    kind: str
    """sent or refused."""
    note: str = ""


@dataclass(frozen=True, slots=True)
class Bar:
    timeline: str
    x: float
    width: float
    css: str
    label: str


@dataclass(frozen=True, slots=True)
class Mark:
    x: float
    css: str
    label: str


@dataclass(slots=True)
class Timeline:
    width: int = 960
    row_height: int = 22
    left: int = 120
    rows: list[str] = field(default_factory=list)
    bars: list[Bar] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    x_ticks: list[Tick] = field(default_factory=list)
    bars_omitted: int = 0
    marks_omitted: int = 0
    from_events: bool = True
    """False: the event file had no step events (summary storage), so each step is one bar
    from its first start, from report.json."""

    @property
    def height(self) -> int:
        return 28 + self.row_height * max(1, len(self.rows))

    def row_y(self, timeline: str) -> int:
        return 6 + self.row_height * self.rows.index(timeline)


@dataclass(slots=True)
class EventDigest:
    """What the page needs from events.jsonl, read once, in bounded memory."""

    head: list[TranscriptRow] = field(default_factory=list)
    tail: deque[TranscriptRow] = field(default_factory=lambda: deque(maxlen=TRANSCRIPT_KEEP))
    messages: int = 0
    """Messages sent or refused, all of them (the transcript keeps both ends)."""
    steps: list[StepFinished] = field(default_factory=list)
    steps_omitted: int = 0
    faults: list[tuple[float, str, str]] = field(default_factory=list)
    """(t, css class, label)"""
    faults_omitted: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    unreadable: int = 0
    """Lines that did not decode (a run killed mid-write leaves half a line)."""
    last_t: float = 0.0

    @property
    def transcript(self) -> list[TranscriptRow]:
        return [*self.head, *self.tail]

    @property
    def transcript_omitted(self) -> int:
        return self.messages - len(self.head) - len(self.tail)

    def add(self, event: Event) -> None:
        self.kinds[event.kind] += 1
        self.last_t = max(self.last_t, event.t)
        if isinstance(event, MessageSent | MessageRefused):
            self._message(event)
        elif isinstance(event, StepFinished):
            if len(self.steps) < MAX_STEP_BARS:
                self.steps.append(event)
            else:
                self.steps_omitted += 1
        if isinstance(
            event,
            AgentCrashed | AgentHung | AgentError | RunError | StopConditionMet | MessageDeadLetter
            | FaultInjected | FaultEnded,
        ):
            self._fault(event)

    def _message(self, event: MessageSent | MessageRefused) -> None:
        if isinstance(event, MessageSent):
            kind, note = "sent", f"reply to {event.in_reply_to}" if event.in_reply_to else ""
        else:
            kind, note = "refused", event.reason
        self.messages += 1
        text = event.text
        row = TranscriptRow(
            event.id, event.t, event.agent or "", event.room, text[:TEXT_KEEP],
            max(0, len(text) - TEXT_KEEP), kind, note,
        )  # fmt: skip
        if len(self.head) < TRANSCRIPT_KEEP:
            self.head.append(row)
        else:
            self.tail.append(row)

    def _fault(self, event: Event) -> None:
        if len(self.faults) >= MAX_MARKS:
            self.faults_omitted += 1
            return
        if isinstance(event, RunError):
            label = f"{event.error_kind}: {event.message}"
            css = "m-error"
        elif isinstance(event, AgentError):
            label = f"{event.agent} {event.error_kind} in {event.where}: {event.error}"
            css = "m-agent"
        elif isinstance(event, StopConditionMet):
            label, css = f"stop_when: {event.reason}", "m-stop"
        elif isinstance(event, FaultInjected):
            target = f" {event.agent}" if event.agent else ""
            label, css = f"fault {event.fault}{target}: {event.detail}", "m-fault"
        elif isinstance(event, FaultEnded):
            label, css = f"fault {event.fault} ended: {event.detail}", "m-fault"
        elif isinstance(event, MessageDeadLetter):
            label = f"dead letter: {event.frame} {event.msg_id or ''} to {event.recipient}"
            css = "m-dead"
            label += f" ({event.reason})"
        else:
            label, css = f"{event.kind}: {event.agent}", "m-crash"
        self.faults.append((event.t, css, label[:300]))


def digest_events(path: Path) -> EventDigest:
    digest = EventDigest()
    if not path.is_file():
        return digest
    with path.open("rb") as f:
        for line in f:
            try:
                event = decode_event(line)
            except (msgspec.DecodeError, msgspec.ValidationError):
                digest.unreadable += 1
                continue
            digest.add(event)
    return digest


def timeline(report: ScenarioReport, digest: EventDigest) -> Timeline:
    tl = Timeline()
    end = max(report.duration_s, digest.last_t, 1e-3)
    plot = tl.width - tl.left - 10

    def x(t: float) -> float:
        return tl.left + min(max(t, 0.0), end) / end * plot

    tl.x_ticks = [Tick(x(t), fmt_seconds(t)) for t in _nice_ticks(0.0, end, 8)]
    tl.from_events = bool(digest.steps)
    if digest.steps:
        for s in digest.steps:
            start = s.t - s.duration_s
            css = "b-pass" if s.status == "passed" else "b-fail"
            label = f"{s.path} {s.step_kind} {s.status} in {s.duration_s:.3f}s"
            if s.error:
                label += f": {s.error[:200]}"
            if s.timeline not in tl.rows:
                tl.rows.append(s.timeline)
            tl.bars.append(Bar(s.timeline, x(start), max(1.0, x(s.t) - x(start)), css, label))
        tl.bars_omitted = digest.steps_omitted
    else:
        for step in report.steps:
            if step.started_s is None:
                continue
            if step.timeline not in tl.rows:
                tl.rows.append(step.timeline)
            css = {"passed": "b-pass", "failed": "b-fail"}.get(step.status, "b-skip")
            width = x(step.started_s + step.duration_s) - x(step.started_s)
            label = (
                f"{step.path} {step.kind} {step.status}: {step.runs} run(s),"
                f" {step.duration_s:.3f}s in all"
            )
            tl.bars.append(Bar(step.timeline, x(step.started_s), max(1.0, width), css, label))
    if not tl.rows:
        tl.rows.append("script")
    tl.marks = [Mark(x(t), css, label) for t, css, label in digest.faults]
    tl.marks_omitted = digest.faults_omitted
    return tl


# --- agents -----------------------------------------------------------------------------------


def _leak(agent_leaks: Sequence[LeakReport], series: str) -> LeakReport | None:
    return next((a for a in agent_leaks if a.series == series), None)


def _judged(leaks: Sequence[LeakReport]) -> LeakReport | None:
    """The verdict a chart shows: USS's (what a `leak` assertion reads first), else RSS's."""
    return _leak(leaks, "uss") or _leak(leaks, "rss")


def _growth(agent: AgentReport) -> int:
    m = agent.memory
    if m.rss_first_bytes is None or m.rss_last_bytes is None:
        return 0
    return m.rss_last_bytes - m.rss_first_bytes


_RANK = {"leak": 0, "inconclusive": 1, "no leak": 2}


def charted_agents(report: ScenarioReport) -> list[AgentReport]:
    """The agents to chart: leaking first, then inconclusive, then by growth."""

    def rank(agent: AgentReport) -> tuple[int, int]:
        worst = min((_RANK.get(a.verdict, 3) for a in agent.memory.leak), default=3)
        return worst, -_growth(agent)

    return sorted(report.agents, key=rank)[:MAX_CHARTS]


def _memory_series(
    series: dict[str, list[tuple[float, int]]], rss_series: list[tuple[float, int]]
) -> dict[str, Sequence[tuple[float, float]]]:
    """The byte series to draw: a soak's judged floors (uss, pss, rss), else sampled RSS."""
    drawn: dict[str, Sequence[tuple[float, float]]] = {
        name: series[name] for name in ("uss", "pss", "rss") if series.get(name)
    }
    if not drawn and rss_series:
        drawn["rss"] = rss_series
    return drawn


def _warmup(report: ScenarioReport, first_t: float | None) -> tuple[float, float] | None:
    if report.soak is None or first_t is None or report.soak.warmup_s <= 0:
        return None
    return first_t, first_t + report.soak.warmup_s


def agent_chart(report: ScenarioReport, agent: AgentReport) -> Chart:
    m = agent.memory
    drawn = _memory_series(m.series, m.rss_series)
    judged = _judged(m.leak)
    firsts = [points[0][0] for points in drawn.values() if points]
    caption = ""
    if judged is not None:
        caption = f"{judged.series}: {judged.reason}"
    return memory_chart(
        agent.id,
        drawn,
        trend=judged.trend_line if judged else None,
        warmup=_warmup(report, min(firsts) if firsts else None),
        verdict=judged.verdict if judged else None,
        caption=caption,
    )


def coordinator_chart(report: ScenarioReport) -> Chart | None:
    c = report.coordinator
    if c is None:
        return None
    drawn = _memory_series(c.series, c.rss_series)
    if not drawn:
        return None
    judged = _judged(c.leak)
    firsts = [points[0][0] for points in drawn.values()]
    return memory_chart(
        "coordinator",
        drawn,
        trend=judged.trend_line if judged else None,
        warmup=_warmup(report, min(firsts)),
        verdict=judged.verdict if judged else None,
        caption=f"{judged.series}: {judged.reason}" if judged else "",
    )


# --- the page -------------------------------------------------------------------------------

_env = Environment(
    loader=PackageLoader("orchestrator.report", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters["bytes"] = lambda n: "" if n is None else fmt_bytes(n)
_env.filters["rate"] = fmt_rate
_env.filters["seconds"] = fmt_seconds
_env.filters["ms"] = lambda v: "" if v is None else f"{v:.1f} ms"


def render_html(report: ScenarioReport, digest: EventDigest) -> str:
    charted = charted_agents(report)
    return _env.get_template("report.html.j2").render(
        r=report,
        digest=digest,
        timeline=timeline(report, digest),
        charts=[(agent, agent_chart(report, agent)) for agent in charted],
        charted=len(charted),
        coordinator_chart=coordinator_chart(report),
        judged=_judged,
        transcript_keep=TRANSCRIPT_KEEP,
    )


def write_html(report: ScenarioReport, directory: Path) -> Path:
    """Render report.html into `directory` from `report` and the events.jsonl beside it
    (atomically, like report.json)."""
    digest = digest_events(directory / "events.jsonl")
    path = directory / "report.html"
    partial = path.with_suffix(".html.tmp")
    partial.write_text(render_html(report, digest), encoding="utf-8")
    partial.replace(path)
    return path
