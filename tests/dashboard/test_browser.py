"""The dashboard in headless Chromium: what a user sees and does, page by page.

One server and one browser for the module (they take seconds to start); each test opens its
pages. Needs Debian's ``chromium`` and ``chromium-driver`` and ``selenium`` (``dash[testing]``);
skipped without them. Screenshots at 1600×1000 land in ``tests/_artifacts/dashboard/``.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gradlens.dashboard.app import create_app
from gradlens.store import RunWriter, open_run, update_meta
from tests.dashboard.craft import (
    EVAL_STEPS,
    copy_samples,
    craft_eval_run,
    craft_layer_run,
    craft_probe_run,
    eval_curves,
)
from tests.report.craft import eval_rows

ARTIFACTS = Path(__file__).resolve().parents[1] / "_artifacts" / "dashboard"
_MISSING = [
    name
    for name, found in (
        ("chromium", shutil.which("chromium") or shutil.which("chromium-browser")),
        ("chromedriver", shutil.which("chromedriver")),
        ("selenium", importlib.util.find_spec("selenium")),
    )
    if not found
]
pytestmark = [
    pytest.mark.browser,
    pytest.mark.filterwarnings("ignore::DeprecationWarning:selenium.*"),
    pytest.mark.skipif(bool(_MISSING), reason=f"browser tests need {', '.join(_MISSING)}"),
]
WIDTH, HEIGHT = 1600, 1000


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("browser") / "runs"
    root.mkdir()
    copy_samples(root)
    craft_probe_run(root)
    craft_eval_run(root, "evaluated")
    craft_eval_run(root, "evaluated-2", offset=-0.2)
    craft_layer_run(root, "markup").rename(root / "<b>bold")  # markup in a name stays text
    bad = root / "corrupt"
    shutil.copytree(root / "mlp", bad)
    (bad / "layers" / "part-000099.parquet").write_bytes(b"PAR1 not parquet")
    (bad / "scalars" / "part-000099.parquet").write_bytes(b"PAR1 not parquet")
    return root


@pytest.fixture(scope="module")
def server(runs_dir: Path) -> Iterator[str]:
    from werkzeug.serving import make_server

    app = create_app(runs_dir, refresh_ms=500)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    httpd = make_server("127.0.0.1", port, app.server, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://localhost:{port}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument(f"--window-size={WIDTH},{HEIGHT}")
    options.set_capability("goog:loggingPrefs", {"browser": "SEVERE"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_window_size(WIDTH, HEIGHT)
    yield driver
    driver.quit()


# -- helpers -------------------------------------------------------------------------------------


def _until(check: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except Exception:  # element not there yet, figure not drawn yet
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(0.1)


_TRACES = """
const el = document.querySelector(`#${arguments[0]} .js-plotly-plot`);
if (!el || !el._fullData) return [];
const len = a => (a && a.length) || 0;
return el._fullData.map(t => ({name: t.name || '', type: t.type, mode: t.mode || '',
    n: t.z ? len(t.z) * len(t.z[0]) : len(t.x), y: t.y ? Array.from(t.y) : [],
    hover: t.hovertemplate || '', yaxis: (el._fullLayout.yaxis || {}).type,
    title: (el._fullLayout.title || {}).text || ''}));
"""
_AXIS = """
const el = document.querySelector(`#${arguments[0]} .js-plotly-plot`);
if (!el || !el._fullLayout || !el._fullData || !el._fullData.length) return null;
const ax = el._fullLayout[arguments[1] || 'xaxis'];
return {range: ax.range, offset: ax._offset, length: ax._length, type: ax.type};
"""


def _traces(browser: Any, graph_id: str) -> list[dict[str, Any]]:
    return browser.execute_script(_TRACES, graph_id)


def _axis(browser: Any, graph_id: str, axis: str = "xaxis") -> dict[str, Any] | None:
    return browser.execute_script(_AXIS, graph_id, axis)


def _drawn(browser: Any, graph_id: str, min_points: int = 1, name: str | None = None) -> list:
    def ok() -> list:
        traces = _traces(browser, graph_id)
        data = [t for t in traces if t["n"] >= min_points and (name is None or t["name"] == name)]
        return traces if data else []

    return _until(ok, what=f"{graph_id} with data")


_ALL_DRAWN = """
const graphs = Array.from(document.querySelectorAll('.dash-graph'));
if (!graphs.length) return !!document.querySelector('.message, #runs-rows');
return graphs.every(g => { const gd = g.querySelector('.js-plotly-plot');
    return gd && gd._fullLayout && gd._fullData && !g.closest('[data-dash-is-loading=true]'); });
"""


def _open(browser: Any, url: str) -> float:
    """Load ``url``; seconds until every chart on it is drawn."""
    browser.get_log("browser")  # drop earlier messages
    start = time.monotonic()
    browser.get(url)
    time.sleep(0.2)  # the router fills the page after the first paint
    _until(lambda: browser.execute_script(_ALL_DRAWN), what=f"{url} drawn")
    return time.monotonic() - start


def _shot(browser: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.set_window_size(WIDTH, HEIGHT)
    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def _no_console_errors(browser: Any) -> None:
    severe = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
    severe = [e for e in severe if "favicon" not in e.get("message", "")]
    assert severe == [], severe


def _text(browser: Any, selector: str) -> str:
    """Text of the first match (read in the page: re-rendered elements never go stale)."""
    text = browser.execute_script(
        "const el = document.querySelector(arguments[0]); return el ? el.innerText : null",
        selector,
    )
    if text is None:
        raise AssertionError(f"no {selector} on the page")
    return text


def _click(browser: Any, element: Any) -> None:
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    element.click()


def _same(a: list, b: list, tol: float = 1e-6) -> bool:
    return all(abs(float(x) - float(y)) <= tol * max(1.0, abs(float(y))) for x, y in zip(a, b))


# -- tests ---------------------------------------------------------------------------------------


_ROWS = """
return Array.from(document.querySelectorAll('#runs-rows tbody tr')).map(r => ({
    name: r.cells[0].innerText, text: r.innerText,
    status: (r.querySelector('.status') || {}).className || '',
    health: (r.querySelector('.health') || {}).className || ''}));
"""


def _rows(browser: Any) -> dict[str, dict[str, str]]:
    return {r["name"]: r for r in browser.execute_script(_ROWS)}


def test_runs_page_health_sort_filter_and_unreadable_runs(browser, server):
    _open(browser, server + "/")
    rows = _until(lambda: _rows(browser) if "mlp-diverged" in _rows(browser) else None)
    for name in ("mlp", "mlp-spiky", "tiny-gpt", "grokking", "probes", "<b>bold"):
        assert name in rows  # markup in a name is shown as text
    # the diverged run is marked unhealthy next to its status, not just "finished"
    diverged = _until(
        lambda: next(
            (
                r
                for n, r in _rows(browser).items()
                if n == "mlp-diverged" and "unhealthy" in r["text"]
            ),
            None,
        ),
        what="health of mlp-diverged",
    )
    assert "error" in diverged["health"] and "unhealthy" in diverged["status"]
    # a run with a corrupt segment is listed with the reason; the others are unaffected
    corrupt = _until(
        lambda: "unreadable" in _rows(browser)["corrupt"]["text"] and _rows(browser)["corrupt"],
        what="unreadable run",
    )
    assert "parquet" in corrupt["text"].lower()
    assert "unreadable" not in _rows(browser)["mlp"]["text"]
    _shot(browser, "runs")
    # filter by regex
    browser.find_element("css selector", "#runs-filter").send_keys("^mlp")
    _until(lambda: "grokking" not in _rows(browser), what="filtered rows")
    assert {"mlp", "mlp-spiky", "mlp-diverged"} <= set(_rows(browser))
    _no_console_errors(browser)


def test_run_page_from_a_spike_to_its_layer(browser, server):
    from selenium.webdriver.common.action_chains import ActionChains

    seconds = _open(browser, server + "/run/grokking")
    charts = ("loss-graph", "gradnorm-graph", "lr-graph", "heatmap-graph")
    for graph_id in charts:
        _drawn(browser, graph_id)

    # every chart: the same plot area and x range, so a step sits at one pixel column
    # (retried: the page's scrollbar may appear after the first charts were laid out)
    def one_plot_area() -> bool:
        return len({(a["offset"], a["length"]) for a in map(partial(_axis, browser), charts)}) == 1

    _until(one_plot_area, what="one plot area for every chart")
    axes = [_axis(browser, g) for g in charts]
    assert all(_same(a["range"], axes[0]["range"]) for a in axes), axes
    # the learning rate is constant: its axis is around 0.01, not −1…+1
    lo, hi = _axis(browser, "lr-graph", "yaxis")["range"]
    assert lo < 0.01 < hi and hi - lo < 0.02
    # grokking has spike events: the heatmap colours each layer against its own baseline
    heat = _traces(browser, "heatmap-graph")[0]
    assert "baseline" in heat["title"] and "steps %{customdata[1]}" in heat["hover"]
    _until(lambda: browser.title == "grokking · run — gradlens", what="the tab title")

    # hovering the loss shows the values at that step on the other curves too
    offsets = iter(range(5, 400, 17))

    def hover_links() -> bool:  # retried: a refresh may redraw the charts under the mouse
        plot = browser.find_element("css selector", "#loss-graph .nsewdrag")
        browser.execute_script("arguments[0].scrollIntoView({block: 'start'})", plot)
        step = next(offsets)  # a new position each try, so plotly sees a new hover
        ActionChains(browser).move_to_element(plot).pause(0.2).move_by_offset(step, 0).perform()
        time.sleep(0.2)
        return bool(browser.find_elements("css selector", "#gradnorm-graph .hoverlayer .hovertext"))

    _until(hover_links, what="linked hover")
    _shot(browser, "run")

    # click the gradient-spike finding: every chart zooms to its steps, its layer opens
    # (clicked in the page: the findings re-render while the report is refreshed)
    def click_finding() -> bool:  # retried: a click on a button being replaced is lost
        clicked = browser.execute_script(  # the steps of the finding that names head.weight
            "const row = Array.from(document.querySelectorAll('#findings-rows tr'))"
            ".find(r => Array.from(r.querySelectorAll('button'))"
            ".some(b => b.innerText === 'head.weight'));"
            "const b = row && row.querySelector('button');"
            "if (!b || !b.innerText.startsWith('1972')) return false;"
            "b.scrollIntoView({block: 'center'}); b.click(); return true;"
        )
        deadline = time.monotonic() + 4
        while clicked and time.monotonic() < deadline:
            traces = _traces(browser, "layer-graph")
            if traces and "head.weight" in traces[0]["title"]:
                return True
            time.sleep(0.1)
        return False

    _until(click_finding, timeout=30, what="the finding opens its layer")
    for graph_id in (*charts, "layer-graph"):
        lo, hi = _until(lambda g=graph_id: _axis(browser, g), what=graph_id)["range"]
        _until(
            lambda g=graph_id: (
                _axis(browser, g)["range"][0] > 1900 and _axis(browser, g)["range"][1] < 2100
            ),
            what=f"{graph_id} zoomed to the finding",
        )
    _shot(browser, "run-finding")
    # zoom one chart: the others follow (linked x axes)
    browser.execute_script(
        "Plotly.relayout(document.querySelector('#gradnorm-graph .js-plotly-plot'),"
        " {'xaxis.range': [100, 300]})"
    )
    for graph_id in (*charts, "layer-graph"):
        _until(
            lambda g=graph_id: _same(_axis(browser, g)["range"], [100, 300]),
            what=f"{graph_id} follows the zoom",
        )
    # the URL holds the view: reopening it shows the same layer and zoom
    url = _until(
        lambda: (
            "layer=head.weight" in browser.current_url
            and "range=100" in browser.current_url
            and browser.current_url
        ),
        what="the view in the URL",
    )
    _open(browser, url)
    _until(lambda: "head.weight" in _traces(browser, "layer-graph")[0]["title"])
    _until(lambda: _same(_axis(browser, "loss-graph")["range"], [100, 300]), what="zoom kept")
    assert "head.weight" in _text(browser, "#layer-select")
    _no_console_errors(browser)
    print(f"run page (grokking) drawn in {seconds:.2f} s")


def test_heatmap_row_click_and_controls(browser, server):
    from selenium.webdriver.common.action_chains import ActionChains

    _open(browser, server + "/run/mlp-spiky")
    loss = _drawn(browser, "loss-graph", 100, name="loss")
    assert any(t["name"] == "spike" and t["n"] == 5 for t in loss)
    spike = next(t for t in loss if t["name"] == "spike")
    assert "× baseline" in spike["hover"]  # ratio and baseline on hover
    heat = _drawn(browser, "heatmap-graph")
    assert heat[0]["type"] == "heatmap" and heat[0]["n"] == 6 * 300

    def click_top_row() -> bool:  # retried: a refresh may redraw the heatmap mid-click
        plot = browser.find_element("css selector", "#heatmap-graph .nsewdrag")
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", plot)
        top_row = -plot.size["height"] // 2 + 8  # rows top-down in model order: body.0.weight
        ActionChains(browser).move_to_element(plot).pause(0.3).move_by_offset(3, top_row).pause(
            0.3
        ).click().perform()  # plotly needs the hover before the click
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            traces = _traces(browser, "layer-graph")
            if traces and traces[0]["title"] == "layer body.0.weight":
                return True
            time.sleep(0.1)
        return False

    _until(click_top_row, timeout=30, what="a heatmap row opens its layer")
    # log y on every curve; wall-clock x on every chart, the heatmap included
    _click(browser, browser.find_element("css selector", "#logy input[value='log']"))
    _until(lambda: _traces(browser, "loss-graph")[0]["yaxis"] == "log")
    _click(browser, browser.find_element("css selector", "#xaxis input[value='wall']"))
    for graph_id in ("loss-graph", "heatmap-graph", "layer-graph"):
        _until(lambda g=graph_id: _axis(browser, g)["type"] == "date", what=f"{graph_id} wall")
    _no_console_errors(browser)


def test_values_read_on_the_compare_page_are_the_stored_ones(browser, server, runs_dir):
    stored = open_run(runs_dir / "grokking").table("hessian")
    top = stored[(stored["metric"] == "top_eigenvalue") & (stored["index"] == 0)]
    top = top[top["layer"].fillna("") == ""].sort_values("step")
    _open(browser, server + "/compare?runs=grokking,grokking-wd,missing-run")
    assert "missing-run" in _text(browser, ".message.warning")  # unknown runs are reported
    chart = '{"key":"hessian|top_eigenvalue","type":"compare-chart"}'
    selector = json.dumps(chart)[1:-1]

    def line() -> dict | None:
        found = browser.execute_script(
            "const el = document.getElementById(arguments[0]);"
            "const gd = el && el.querySelector('.js-plotly-plot');"
            "return gd && gd._fullData ? gd._fullData.map(t => ({name: t.name, y: t.y})) : null",
            chart,
        )
        return next((t for t in found or [] if t["name"] == "grokking"), None)

    drawn = _until(line, what=f"top eigenvalue chart {selector}")
    # the last probe reads 59.2 as stored, not an EMA of four sparse points
    np.testing.assert_allclose(drawn["y"], top["value"].to_numpy(), rtol=1e-6)
    colours = browser.execute_script(
        "return Array.from(document.querySelectorAll('#compare-grid .js-plotly-plot'))"
        ".map(gd => gd._fullData.filter(t => t.name === 'grokking').map(t => t.line.color))"
        ".flat()"
    )
    assert len(set(colours)) == 1  # one colour per run on every chart
    diff = _until(lambda: _text(browser, "#config-diff-rows"), what="the config diff")
    assert "argv" in diff  # grokking-wd was started with --weight-decay
    _shot(browser, "compare")
    _no_console_errors(browser)


def test_probe_pages_render_fast_with_controls_that_act(browser, server):
    timings = {}
    timings["curvature"] = _open(browser, server + "/curvature/grokking")
    for graph_id in ("eig-graph", "sharpness-graph", "trace-graph"):
        _drawn(browser, graph_id)
    assert not browser.find_elements("css selector", "#smoothing")  # sparse probes: no slider
    sharp = _axis(browser, "sharpness-graph", "yaxis")
    assert sharp["type"] == "log" and sharp["range"][1] < 3  # clipped near λmax ≈ 59
    _shot(browser, "curvature")

    timings["collapse"] = _open(browser, server + "/collapse/grokking")
    _drawn(browser, "collapse-graph")
    traces = _drawn(browser, "softmax-graph")
    assert "num_classes" not in {t["name"] for t in _traces(browser, "collapse-graph")}
    # never thousands of markers: a dense series is a line (softmax every 20 steps: 110 points)
    assert all("markers" not in t["mode"] or t["n"] <= 200 for t in traces)
    count = browser.execute_script(
        "const gd = document.querySelector('#collapse-graph .js-plotly-plot');"
        "return Object.keys(gd._fullLayout).filter(k => /^yaxis\\d*$/.test(k))"
        ".map(k => gd._fullLayout[k].type)"
    )
    assert set(count) == {"log"} and len(count) == 4  # log y on every family's panel
    _click(browser, browser.find_element("css selector", "#logy input[value='log']"))
    _until(
        lambda: (
            set(
                browser.execute_script(
                    "const gd = document.querySelector('#softmax-graph .js-plotly-plot');"
                    "return Object.keys(gd._fullLayout).filter(k => /^yaxis\\d*$/.test(k))"
                    ".map(k => gd._fullLayout[k].type)"
                )
            )
            == {"linear"}
        ),
        what="log y off on every softmax panel",
    )
    _until(lambda: "logy=0" in browser.current_url, what="log y in the URL")
    _shot(browser, "collapse")

    timings["landscape"] = _open(browser, server + "/landscape/mlp")
    assert _drawn(browser, "landscape-contour-graph", 100)[0]["type"] == "contour"
    assert not browser.find_element("css selector", "#landscape-1d-graph").is_displayed()
    _click(browser, browser.find_element("css selector", "#landscape-3d input"))  # WebGL: asked
    assert _drawn(browser, "landscape-surface-graph", 100)[0]["type"] == "surface"
    _shot(browser, "landscape")

    _open(browser, server + "/curvature/probes")
    density = _drawn(browser, "density-graph", 64)
    lo, hi = _axis(browser, "density-graph", "yaxis")["range"]
    assert density[0]["yaxis"] == "log" and hi - lo <= 6.5  # not 1e-45…1
    _no_console_errors(browser)
    print("render seconds:", {k: round(v, 2) for k, v in timings.items()})
    for page, seconds in timings.items():
        assert seconds < 10, f"{page} took {seconds:.1f} s"  # CI is slow; bench reports < 1 s


def test_a_live_run_updates_its_header_and_curves(browser, server, runs_dir):
    run_dir = craft_layer_run(runs_dir, "live", status="running", steps=50)
    _open(browser, server + "/run/live")
    _drawn(browser, "loss-graph", 50, name="loss")
    _until(lambda: "running" in _text(browser, "#run-status"), what="status running")
    writer = RunWriter(run_dir, strict=True)
    steps = list(range(50, 120))
    writer.write(
        "scalars",
        {"step": steps, "metric": ["loss"] * 70, "index": [0] * 70, "value": [0.5] * 70},
    )
    writer.close(compact=False)
    _drawn(browser, "loss-graph", 120, name="loss")
    update_meta(run_dir, status="finished", steps=120, end_time=1_700_000_070.0)
    _until(lambda: "finished" in _text(browser, "#run-status"), what="status finished")
    _until(lambda: "120 steps" in _text(browser, "#run-steps"), what="steps in the header")
    _no_console_errors(browser)


def _plot_area(browser: Any, graph_id: str) -> tuple[Any, Any]:
    axis = _axis(browser, graph_id)
    return (axis["offset"], axis["length"]) if axis else (None, None)


def test_eval_curves_next_to_the_loss_on_the_linked_x_axis(browser, server):
    seconds = _open(browser, server + "/run/evaluated")
    curves = eval_curves()
    val = _drawn(browser, "eval-graph", len(EVAL_STEPS), name="loader 0")
    drawn = {t["name"]: t for t in val}
    np.testing.assert_allclose(drawn["loader 0"]["y"], curves["val_loss"], rtol=1e-6)
    np.testing.assert_allclose(drawn["loader 1"]["y"], curves["test_loss"], rtol=1e-6)
    assert "train loss (median since the previous eval)" in drawn
    accuracy = {t["name"]: t for t in _drawn(browser, "evalacc-graph", name="loader 1")}
    np.testing.assert_allclose(accuracy["loader 1"]["y"], curves["test_accuracy"], rtol=1e-6)
    _drawn(browser, "user-graph", name="bleu")
    assert browser.find_element("css selector", "#eval-graph").is_displayed()
    charts = ("loss-graph", "eval-graph", "evalacc-graph", "user-graph", "gradnorm-graph")
    # one plot area and x range: a step sits at the same pixel column in every chart
    _until(
        lambda: len({_plot_area(browser, g) for g in charts}) == 1,
        what="one plot area for the loss and the eval charts",
    )
    ranges = [_axis(browser, g)["range"] for g in charts]
    assert all(_same(r, ranges[0]) for r in ranges), ranges
    # zooming the eval chart zooms the loss (and back)
    browser.execute_script(
        "Plotly.relayout(document.querySelector('#eval-graph .js-plotly-plot'),"
        " {'xaxis.range': [30, 150]})"
    )
    for graph_id in ("loss-graph", "user-graph", "heatmap-graph"):
        _until(
            lambda g=graph_id: _same(_axis(browser, g)["range"], [30, 150]),
            what=f"{graph_id} follows the eval chart's zoom",
        )
    _shot(browser, "run-evaluation")
    # a run without evaluations shows no empty eval charts
    _open(browser, server + "/run/mlp")
    _drawn(browser, "loss-graph")
    assert not browser.find_element("css selector", "#eval-graph").is_displayed()
    assert not browser.find_element("css selector", "#user-graph").is_displayed()
    _no_console_errors(browser)
    print(f"run page (evaluated) drawn in {seconds:.2f} s")
    assert seconds < 10, f"the run page took {seconds:.1f} s"


def test_compare_overlays_eval_curves(browser, server):
    _open(browser, server + "/compare?runs=evaluated,evaluated-2&sections=evaluation")
    chart = '{"key":"scalars|eval_loss","type":"compare-chart"}'

    def lines() -> dict | None:
        found = browser.execute_script(
            "const el = document.getElementById(arguments[0]);"
            "const gd = el && el.querySelector('.js-plotly-plot');"
            "return gd && gd._fullData ? gd._fullData.map(t => ({name: t.name, y: t.y,"
            " dash: t.line.dash, colour: t.line.color})) : null",
            chart,
        )
        return {t["name"]: t for t in found} if found and len(found) == 4 else None

    drawn = _until(lines, what="the eval loss of both runs")
    np.testing.assert_allclose(
        drawn["evaluated-2 · loader 0"]["y"], eval_curves(-0.2)["val_loss"], rtol=1e-6
    )
    assert drawn["evaluated · loader 1"]["dash"] == "dash"
    assert drawn["evaluated · loader 0"]["colour"] == drawn["evaluated · loader 1"]["colour"]
    assert drawn["evaluated · loader 0"]["colour"] != drawn["evaluated-2 · loader 0"]["colour"]
    _shot(browser, "compare-evaluation")
    _no_console_errors(browser)


@pytest.mark.parametrize("slow", [False, True], ids=["fast", "slower-than-the-timer"])
def test_a_live_runs_first_evaluation_appears_lined_up(
    browser, server, runs_dir, slow, monkeypatch
):
    """Slow: the charts take longer to build than the refresh timer's 0.5 s (a machine busy
    with training). Dash drops the answer of a callback fired again before it returned, so
    a page redrawn on every raw tick never showed the new evaluation."""
    if slow:
        from gradlens.dashboard.pages import run as run_page

        real = run_page.evaluation

        def slower(*args: Any, **kwargs: Any) -> Any:
            time.sleep(0.8)
            return real(*args, **kwargs)

        monkeypatch.setattr(run_page, "evaluation", slower)
    name = f"live-eval-{'slow' if slow else 'fast'}"
    run_dir = craft_layer_run(runs_dir, name, status="running", steps=100)
    _open(browser, server + f"/run/{name}")
    _drawn(browser, "loss-graph", 100, name="loss")
    assert not browser.find_element("css selector", "#eval-graph").is_displayed()
    writer = RunWriter(run_dir, strict=True)
    rows = eval_rows([49, 99], [0.9, 0.8])
    writer.write("scalars", {k: [r[i] for r in rows] for i, k in enumerate(_SCALARS)})
    writer.close(compact=False)
    _drawn(browser, "eval-graph", 2, name="eval")
    _until(
        lambda: browser.find_element("css selector", "#eval-graph").is_displayed(),
        what="the eval chart shown",
    )
    _until(
        lambda: _plot_area(browser, "eval-graph") == _plot_area(browser, "loss-graph"),
        what="the eval chart resized to the page",
    )
    update_meta(run_dir, status="finished", steps=100, end_time=1_700_000_070.0)
    _no_console_errors(browser)


_SCALARS = ("step", "metric", "index", "value")


def test_bad_files_and_names_never_break_a_page(browser, server):
    _open(browser, server + "/run/corrupt")
    _until(lambda: "unreadable" in browser.find_element("css selector", "body").text)
    _open(browser, server + "/run/..%2F..%2Fetc")
    assert "not a run name" in _text(browser, ".message.error")
    _open(browser, server + "/run/%3Cb%3Ebold")
    _drawn(browser, "heatmap-graph")
    assert "<b>bold" in _text(browser, ".run-name")
    _no_console_errors(browser)
