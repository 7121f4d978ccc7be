"""report.html: built for a real capture bundle and for a trace without requests, then opened in
headless Chromium over the DevTools protocol (pipe transport, no extra packages): the page must
load with no console errors or warnings, draw every chart it declares, and make no request that
leaves file://. The test saves a screenshot of the sample report; with
KPTRACE_UPDATE_SCREENSHOT=1 it also refreshes docs/report-screenshot.png."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import time
from pathlib import Path

import polars as pl
import pytest

from conftest import unavailable
from kptrace.analysis import analyze
from kptrace.attribute import COMPARABLE_BY, comparable_requests
from kptrace.export import report
from kptrace.export.charts import charts as build
from kptrace.export.report import write_report
from kptrace.simulate import Scenario, write_simulation
from kptrace.summary import build_summary, figure_text, plus_minus

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_traces" / "memcached-diskirq-same-core"
SCREENSHOT = ROOT / "docs" / "report-screenshot.png"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-quic", "--remote-debugging-pipe"]
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")


class DevTools:
    """Chromium driven over --remote-debugging-pipe: commands go to its fd 3, replies and events
    come from its fd 4, each a JSON message ending in NUL."""

    def __init__(self, binary: str, profile: Path, log: Path):
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def plumb() -> None:  # in the child: put the pipe ends on fds 3 and 4, whatever their numbers
            high_r = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
            high_w = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        with log.open("wb") as stderr:
            self.proc = subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                         stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
                                         pass_fds=(3, 4), preexec_fn=plumb)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []
        self.session: str | None = None

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_chrome], [], [], left)[0]:
                raise TimeoutError("no message from Chromium")
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise EOFError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, timeout: float = 30, session: bool = True, **params) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        for event in self.events:
            if event["method"] == method:
                return event
        while True:
            event = self._read(deadline)
            if "method" in event:
                self.events.append(event)
                if event["method"] == method:
                    return event

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open_page(self, url: str, width: int = 1280, height: int = 900) -> None:
        target = self.send("Target.createTarget", session=False, url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", session=False, targetId=target, flatten=True)["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        self.send("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")

    def screenshot(self, path: Path, width: int = 1280) -> None:
        height = int(self.evaluate("document.documentElement.scrollHeight"))
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        time.sleep(0.3)
        shot = self.send("Page.captureScreenshot", timeout=60, format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        try:
            self.send("Browser.close", session=False, timeout=10)
        except (OSError, RuntimeError, TimeoutError, EOFError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)


def problems(events: list[dict]) -> dict[str, list[str]]:
    """Console errors and warnings, uncaught exceptions, and requests that leave file://."""
    found = {"console": [], "exceptions": [], "network": []}
    for event in events:
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "warning", "assert"):
            found["console"].append(" ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
        elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
            found["console"].append(f"{params['entry']['source']}: {params['entry']['text']} {params['entry'].get('url', '')}")
        elif method == "Runtime.exceptionThrown":
            found["exceptions"].append(json.dumps(params["exceptionDetails"])[:500])
        elif method == "Network.requestWillBeSent" and not params["request"]["url"].startswith(LOCAL_SCHEMES):
            found["network"].append(params["request"]["url"])
    return found


CHECK_CHARTS = """JSON.stringify(Array.from(document.querySelectorAll("div.chart")).map(function (div) {
  var svg = div.querySelector("svg"), canvas = div.querySelector("canvas");
  return {id: div.id, embedded: div.classList.contains("vega-embed"),
          svg_elements: svg ? svg.querySelectorAll("*").length : 0,
          marks: svg ? svg.querySelectorAll("path, rect, line, text").length : 0,
          canvas: canvas ? canvas.width * canvas.height : 0,
          texts: svg ? Array.from(svg.querySelectorAll("text")).map(function (t) { return t.textContent; }) : []};
}))"""


@pytest.fixture(scope="module")
def chromium() -> str:
    binary = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if binary is None:
        unavailable("needs Chromium (Debian package chromium) to open report.html")
    return binary


def render(chromium: str, report: Path, tmp: Path, screenshot: Path) -> tuple[list[dict], dict, str]:
    browser = DevTools(chromium, tmp / "profile", tmp / "chromium.log")
    try:
        browser.open_page(report.resolve().as_uri())
        deadline = time.monotonic() + 90
        while (state := browser.evaluate("document.body.getAttribute('data-charts')")) is None:
            if time.monotonic() > deadline or any(e["method"] == "Runtime.exceptionThrown" for e in browser.events):
                break
            time.sleep(0.2)
        charts = json.loads(browser.evaluate(CHECK_CHARTS))
        browser.screenshot(screenshot)
        found = problems(browser.events)
    finally:
        browser.close()
    return charts, found, state


def check_page(charts: list[dict], found: dict, state: str, expected: list[str]) -> None:
    assert found == {"console": [], "exceptions": [], "network": []}
    assert state == "rendered", "the charts did not finish rendering"
    assert [c["id"] for c in charts] == expected
    for chart in charts:
        assert chart["embedded"], chart
        assert chart["svg_elements"] > 20 and chart["marks"] > 10 or chart["canvas"] > 0, chart


def check_html(text: str, charts: int) -> None:
    """Self-contained: no external scripts, styles or fonts; declared chart count; small data."""
    markup = re.sub(r"(<script[^>]*>).*?</script>", r"\1</script>", text, flags=re.S | re.I)
    assert not re.search(r"<(script|link|img|iframe|object|embed|source)\b[^>]*\b(src|href|data)\s*=", markup, re.I)
    assert "@import" not in markup and "url(" not in markup
    assert f'<meta name="kptrace-charts" content="{charts}">' in text
    specs = re.findall(r'<script type="application/json" id="spec-[^"]+">(.*?)</script>', text, re.S)
    assert len(specs) == charts
    assert sum(len(s) for s in specs) < 500_000


@pytest.fixture(scope="module")
def sample_analysis():
    with contextlib.chdir(ROOT):  # relative input paths, as `kptrace analyze sample_traces/...` prints them
        return analyze(SAMPLE.relative_to(ROOT))


@pytest.fixture(scope="module")
def sample_report(sample_analysis, tmp_path_factory) -> Path:
    return write_report(tmp_path_factory.mktemp("report") / "report.html", sample_analysis,
                        build_summary(sample_analysis))


def test_chart_data_agrees_with_the_tables(sample_analysis):
    """What the charts draw is the analysis' own figures, aggregated, not new ones."""
    irqs = sample_analysis.intervals.filter(pl.col("kind") == "hardirq")
    rates, bin_ns, n_bins, cpus = report.irq_rate_frame(sample_analysis)
    start, end = sample_analysis.meta["start_ns"], sample_analysis.meta["end_ns"]
    seconds = pl.min_horizontal(pl.lit(end - start), pl.col("t_ms") * 1_000_000 + bin_ns) - pl.col("t_ms") * 1_000_000
    assert bin_ns == 10_000_000 and n_bins == -(-(end - start) // bin_ns) and cpus == [0, 1]
    assert round(rates.select((pl.col("rate") * seconds / 1e9).sum()).item()) == irqs.height

    cdf = report.service_cdf_frame(sample_analysis.requests)
    for group in cdf.partition_by("group"):
        assert group["fraction"].is_sorted() and group["service_us"].is_sorted() and group["fraction"][-1] == 1.0
        assert group.height <= report.CDF_POINTS + 1
    counts = dict(sample_analysis.requests.group_by("disrupted").len().iter_rows())
    assert sorted(cdf["group"].unique()) == [f"clean (n = {counts[False]:,})", f"disrupted (n = {counts[True]:,})"]

    costs, share = report.cost_frame(sample_analysis.attribution)
    top = sample_analysis.attribution.sort("share_of_cpu", descending=True).row(0, named=True)
    direct = costs.filter(pl.col("order") == 0, pl.col("component") == "direct (measured)").row(0, named=True)
    assert direct["us"] == pytest.approx(top["direct_per_irq_ns"] / 1e3, abs=1e-3)
    assert direct["hi"] - direct["us"] == pytest.approx(top["direct_ci_ns"] / 1e3, abs=2e-3)
    assert share["pct"][0] == pytest.approx(top["share_of_cpu"] * 100, abs=1e-4)
    once = sample_analysis.attribution.filter(pl.col("count") == 1)["source"]  # a source seen once: no interval
    assert once.len() and costs.filter(pl.col("label").str.ends_with(once[0]))["lo"].is_null().all()
    assert not any(any(frame.select(pl.selectors.float().is_nan().any()).row(0)) for frame in (costs, share))

    slowdown = report.slowdown_frame(sample_analysis.requests)
    kept = comparable_requests(sample_analysis.requests.lazy()).filter(~pl.col("outlier")).collect()
    by = list(COMPARABLE_BY)
    expected = {tuple(key): n for *key, n in kept.filter(pl.col("hit_source").is_null()).group_by(by).len().iter_rows()}
    drawn = slowdown.filter(pl.col("group") == "clean").select(*by, "n").rows()
    assert {tuple(key): n for *key, n in drawn} == expected
    assert report.counters_subtitle(build_summary(sample_analysis)["input"]["counters"]).startswith(
        "this trace has no hardware counters (counters: software-only)")


def test_every_chart_the_report_embeds_is_valid_vega_lite(sample_analysis, sample_report):
    """The report writes its specs unvalidated (for speed): here each is checked against the
    Vega-Lite schema, and the report embeds exactly that spec."""
    charts = build(report.chart_inputs(report.report_view(sample_analysis), build_summary(sample_analysis)))
    html = sample_report.read_text()
    assert len(charts) >= 5
    for chart_id, chart in charts.items():
        spec = chart.to_dict(validate=True)  # raises on a spec Vega-Lite would reject
        embedded = re.search(rf'<script type="application/json" id="spec-{chart_id}">(.*?)</script>', html, re.S)
        assert json.loads(embedded.group(1)) == spec  # `<\/` reads back as `</`


def test_the_slowdown_chart_compares_requests_as_the_indirect_estimate_does(sample_analysis):
    """One definition of comparable requests: in every group the chart draws, a source's mean own
    time less the clean requests' length-weighted reference, weighted by its hit requests, is the
    attribution's indirect estimate for that source."""
    slowdown = report.slowdown_frame(sample_analysis.requests)
    reference = (slowdown.filter(pl.col("group").str.starts_with("clean, length-weighted"))
                 .select(*COMPARABLE_BY, reference="mean"))
    hits = (slowdown.filter(pl.col("group").str.starts_with("hit once by "))
            .with_columns(source=pl.col("group").str.strip_prefix("hit once by "))
            .join(reference, on=list(COMPARABLE_BY)))
    gaps = hits.group_by("cpu", "source").agg(gap_us=((pl.col("mean") - pl.col("reference")) * pl.col("n")).sum()
                                                   / pl.col("n").sum(), n=pl.col("n").sum())
    estimated = sample_analysis.attribution.filter(pl.col("indirect_per_irq_ns").is_not_null())
    joined = estimated.join(gaps, on=["cpu", "source"])
    assert joined.height == estimated.height == 2  # the disk IRQ and the timer on the server's CPU
    for row in joined.iter_rows(named=True):
        assert row["n"] == row["n_hit_requests"]
        assert row["gap_us"] == pytest.approx(row["indirect_per_irq_ns"] / 1e3, abs=0.002), row["source"]


def test_a_non_significant_indirect_estimate_is_shown_as_not_significant(tmp_path):
    """A simulated server whose timer ticks slow nothing down while its disk IRQs do: estimates
    whose interval includes 0 read `n.s. [low, high]` in the table and the headline, and are
    drawn grey with their bounds; significant ones are shown as a cost."""
    from dataclasses import replace

    scenario = Scenario(duration_s=0.3, seed=2)
    sources = tuple(replace(s, indirect_ns=0) if s.name == "local_timer" else replace(s, indirect_ns=8_000)
                    for s in scenario.sources)
    analysis = analyze(write_simulation(tmp_path / "sim", replace(scenario, sources=sources)))
    attribution = analysis.attribution.filter(pl.col("indirect_per_irq_ns").is_not_null())
    assert {False, True} <= set(attribution["indirect_significant"])
    table = report.attribution_table(analysis)
    headline = report.headline(analysis, build_summary(analysis))
    costs, _ = report.cost_frame(analysis.attribution)
    drawn = costs.filter(pl.col("part") == "indirect (estimated)")
    for row in attribution.iter_rows(named=True):
        shown = figure_text(row, "attribution", "indirect_per_irq_ns", 1e3, 2)
        assert shown.startswith("n.s. [") != row["indirect_significant"]
        assert f'<td class="num">{shown}</td>' in table
        assert f"+ {figure_text(row, 'attribution', 'indirect_per_irq_ns', 1e3, 2)} µs indirect" in headline
        bar = drawn.filter(pl.col("label") == f"CPU {row['cpu']} · {row['source']}").row(0, named=True)
        assert (bar["component"] == report.INDIRECT_NS) != row["indirect_significant"]
        assert (bar["lo"], bar["hi"]) == (round(row["indirect_lo_ns"] / 1e3, 3), round(row["indirect_hi_ns"] / 1e3, 3))
    assert "the indirect estimate's 95% interval includes 0" in table


def test_sample_report_renders_offline(sample_report: Path, chromium: str, tmp_path: Path):
    text = sample_report.read_text()
    assert "<title>kptrace report — memcached-diskirq-same-core</title>" in text
    check_html(text, 5)
    assert "no hardware counters" in text  # the slowdown chart says the trace has no IPC
    shot = tmp_path / "report.png"
    charts, found, state = render(chromium, sample_report, tmp_path, shot)
    check_page(charts, found, state, ["irq-rate", "service-cdf", "cost", "slowdown", "whatif"])
    # The what-if chart names every policy on its axis, says it is modelled and how well it calibrates.
    policies = ["vanilla", "move-irqs", "remove", "coalesce", "busy-poll", "irq-suspend", "kernel-polling"]
    shown = set(next(c["texts"] for c in charts if c["id"] == "whatif"))
    assert set(policies) <= shown
    assert any("calibration (vanilla replay vs measured)" in t and "within 5%" in t for t in shown)
    assert any("modelled: a replay of the serving cores" in t for t in shown), [t for t in shown if "modelled" in t]
    assert shot.stat().st_size > 50_000
    if os.environ.get("KPTRACE_UPDATE_SCREENSHOT"):  # tests leave tracked files alone unless asked
        shutil.copyfile(shot, SCREENSHOT)


def test_report_without_requests(chromium: str, tmp_path: Path):
    trace = write_simulation(tmp_path / "sim", Scenario(duration_s=0.3, seed=3))
    lines = trace.read_text().splitlines(keepends=True)
    stripped = tmp_path / "no-syscalls.txt"
    stripped.write_text("".join(line for line in lines if "sys_" not in line))
    analysis = analyze(stripped)
    assert analysis.requests is None
    report = write_report(tmp_path / "out" / "report.html", analysis, build_summary(analysis))
    text = report.read_text()
    assert "<title>kptrace report — no-syscalls.txt</title>" in text
    check_html(text, 2)
    assert "No per-request view: this trace has no syscall events" in text
    assert '<p class="missing">no what-if predictions: no requests in this trace' in text
    charts, found, state = render(chromium, report, tmp_path, tmp_path / "report.png")
    check_page(charts, found, state, ["irq-rate", "cost"])


def test_a_page_without_charts_carries_no_vega_and_still_loads_cleanly(sample_analysis, chromium: str, tmp_path: Path):
    """No chart, no Vega bundle (the page's largest part); the page still says it is done."""
    with_charts = write_report(tmp_path / "charts.html", sample_analysis, build_summary(sample_analysis))
    page = write_report(tmp_path / "none.html", sample_analysis, build_summary(sample_analysis), specs={})
    check_html(page.read_text(), 0)
    assert "vegaEmbed=" not in page.read_text().replace(" ", "") and "vegaEmbed=" in with_charts.read_text().replace(" ", "")
    assert page.stat().st_size < with_charts.stat().st_size - 500_000
    charts, found, state = render(chromium, page, tmp_path, tmp_path / "none.png")
    check_page(charts, found, state, [])


def test_the_browser_check_sees_network_and_console_problems(chromium: str, tmp_path: Path):
    """The checks above would fail on a page that fetches over http or logs an error."""
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><body><div class="chart" id="x"></div>'
                    '<img src="http://127.0.0.1:9/nothing.png">'
                    '<script>console.error("boom"); document.body.setAttribute("data-charts", "rendered");</script>'
                    '</body></html>')
    charts, found, state = render(chromium, page, tmp_path, tmp_path / "bad.png")
    assert found["network"] == ["http://127.0.0.1:9/nothing.png"]
    assert "boom" in found["console"]
    assert charts == [{"id": "x", "embedded": False, "svg_elements": 0, "marks": 0, "canvas": 0, "texts": []}]


def test_units_and_provenance_in_the_report_come_from_the_table_declarations(sample_analysis, monkeypatch):
    """Change a declaration and the report follows: the attribution table's header, the cost
    chart's legend and line, and the headline say what kptrace.tables says, not prose of their own."""
    from dataclasses import replace

    from kptrace import tables

    summary = build_summary(sample_analysis)
    before = report.attribution_table(sample_analysis)
    assert "µs/IRQ ±95%, estimated" in before and "modelled" not in before
    for row in sample_analysis.attribution.iter_rows(named=True):  # every row's figures, with their intervals
        cells = [plus_minus(row["direct_per_irq_ns"], row["direct_ci_ns"], 1e3, 2),
                 plus_minus(row["indirect_per_irq_ns"], row["indirect_ci_ns"], 1e3, 2),
                 plus_minus(row["share_of_cpu"], row["share_of_cpu_ci"], 0.01, 3)]
        assert "".join(f'<td class="num">{c}</td>' for c in cells) in before, row["source"]
    attribution = tables.TABLES["attribution"]
    columns = tuple(replace(c, provenance="modelled", meaning="a changed meaning") if c.name == "indirect_per_irq_ns"
                    else c for c in attribution.columns)
    monkeypatch.setitem(tables.TABLES, "attribution", replace(attribution, columns=columns))
    after = report.attribution_table(sample_analysis)
    assert "µs/IRQ ±95%, modelled" in after and "indirect is <b>modelled</b>: a changed meaning" in after
    assert "µs indirect (modelled)" in report.headline(sample_analysis, summary)
    kinds, text = report._cost_text()
    assert kinds == "measured / estimated / modelled" and "a changed meaning" in text


def test_the_report_shows_the_counter_source_it_is_given(sample_analysis):
    """The counter source is a structured value (summary.counter_source), rendered, not parsed."""
    summary = build_summary(sample_analysis)
    assert summary["input"]["counters"] == {"kind": "software-only",
                                            "names": ["msr/tsc/", "task-clock"]}
    facts = report.facts_table(sample_analysis, summary)
    assert "software-only (msr/tsc/, task-clock): no IPC" in facts
    pmu = {"kind": "hardware-pmu", "names": ["cycles", "instructions"]}
    assert report.counters_subtitle(pmu).startswith("this trace has hardware counters")
    assert report.counters_subtitle({"kind": "none", "names": []}).startswith(
        "this trace has no hardware counters (counters: none)")


def test_write_all_builds_the_charts_on_a_thread_into_the_page_write_report_writes(sample_analysis, tmp_path):
    """write_all builds the chart specs beside the timeline: the page is the one write_report
    writes on its own (but for the minute it was generated in)."""
    from kptrace.export.outputs import write_all

    summary = write_all(sample_analysis, tmp_path / "all", build_summary(sample_analysis))
    alone = write_report(tmp_path / "alone.html", sample_analysis, summary)
    generated = re.compile(r"generated \d{4}-\d\d-\d\d \d\d:\d\d UTC")
    assert generated.sub("", (tmp_path / "all" / "report.html").read_text()) == generated.sub("", alone.read_text())


def test_an_error_building_the_charts_on_the_thread_is_raised_by_write_all(sample_analysis, tmp_path, monkeypatch):
    from kptrace.export.outputs import write_all

    def broken(analysis, draw):
        raise RuntimeError("chart failed")
    monkeypatch.setattr("kptrace.export.outputs.measured_chart_specs", broken)
    with pytest.raises(RuntimeError, match="chart failed"):
        write_all(sample_analysis, tmp_path / "all", build_summary(sample_analysis))
    assert not (tmp_path / "all" / "report.html").exists()
