"""The dashboard in headless Chromium: every page, the controls, a run being written.

Needs Debian's ``chromium`` and ``chromium-driver`` and ``dash[testing]``; skipped without
them. Screenshots land in ``tests/_artifacts/dashboard/``.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gradlens.dashboard.app import create_app
from gradlens.store import RunWriter
from tests.dashboard.craft import craft_layer_run

ARTIFACTS = Path(__file__).resolve().parents[1] / "_artifacts" / "dashboard"
_MISSING = [
    name
    for name, found in (
        ("chromium", shutil.which("chromium") or shutil.which("chromium-browser")),
        ("chromedriver", shutil.which("chromedriver")),
        ("dash[testing]", importlib.util.find_spec("selenium")),
    )
    if not found
]
pytestmark = [
    pytest.mark.browser,
    pytest.mark.filterwarnings("ignore::DeprecationWarning:selenium.*"),
    pytest.mark.skipif(bool(_MISSING), reason=f"browser tests need {', '.join(_MISSING)}"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _until(check: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
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


def _traces(duo: Any, graph_id: str) -> list[dict[str, Any]]:
    """The traces plotly drew in ``graph_id``: name, point count, type, layout title."""
    return duo.driver.execute_script(
        """
        const el = document.querySelector(`#${arguments[0]} .js-plotly-plot`);
        if (!el || !el._fullData) return [];
        const len = a => (a && a.length) || 0;
        return el._fullData.map(t => ({name: t.name || '', type: t.type,
            n: t.z ? len(t.z) * len(t.z[0]) : len(t.x),
            yaxis: (el._fullLayout.yaxis || {}).type, xaxis: (el._fullLayout.xaxis || {}).type,
            title: (el._fullLayout.title || {}).text || ''}));
        """,
        graph_id,
    )


def _drawn(duo: Any, graph_id: str, min_points: int = 1, name: str | None = None) -> list:
    def ok() -> list:
        traces = _traces(duo, graph_id)
        data = [t for t in traces if t["n"] >= min_points and (name is None or t["name"] == name)]
        return traces if data else []

    return _until(ok, what=f"{graph_id} with data")


def _select(duo: Any, selector: str, label: str) -> None:
    """Pick ``label`` in a dcc.Dropdown (scrolled to the middle so its menu fits)."""
    element = duo.find_element(selector)
    duo.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    element.click()
    search = duo.find_elements(".dash-dropdown-search")
    if search:  # filter first: a long menu opens scrolled to the current value
        search[0].send_keys(label)

    def option() -> Any:
        found = duo.find_elements(".dash-dropdown-options .dash-dropdown-option")
        return next((o for o in found if o.text == label), None)

    _until(option, what=f"option {label!r} in {selector}").click()


def _shot(duo: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    duo.driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def _start(duo: Any, runs_dir: Path, path: str = "/", refresh_ms: int = 3000) -> None:
    duo.driver.set_window_size(1400, 1600)
    duo.start_server(create_app(runs_dir, refresh_ms=refresh_ms), port=_free_port())
    if path != "/":
        duo.driver.get(duo.server_url + path)


def _no_console_errors(duo: Any) -> None:
    severe = [e for e in (duo.get_logs() or []) if e.get("level") == "SEVERE"]
    assert severe == [], severe


def test_runs_page_and_compare_two_runs(dash_duo, dash_runs):
    _start(dash_duo, dash_runs)
    dash_duo.wait_for_element("#runs-rows", timeout=15)
    text = dash_duo.find_element("#runs-rows").text
    for name in ("mlp", "mlp-spiky", "mlp-diverged", "tiny-gpt", "probes"):
        assert name in text
    assert "finished" in text
    _shot(dash_duo, "runs")
    boxes = dash_duo.driver.find_elements("css selector", "#runs-select input")
    labels = dash_duo.driver.find_elements("css selector", "#runs-select label")
    for label, box in zip(labels, boxes, strict=True):
        if label.text.strip() in ("mlp", "mlp-spiky"):
            box.click()
    _until(lambda: "mlp-spiky" in dash_duo.find_element("#compare-link").get_attribute("href"))
    dash_duo.find_element("#compare-link").click()
    traces = _drawn(dash_duo, "compare-graph", 100, name="mlp-spiky")
    assert {"mlp", "mlp-spiky"} <= {t["name"] for t in traces}
    # overlay a per-layer metric of the same two runs
    _select(dash_duo, "#compare-metric", "grad_norm (layers)")
    _until(lambda: "of body.0.weight" in _traces(dash_duo, "compare-graph")[0]["title"])
    _shot(dash_duo, "compare")
    _no_console_errors(dash_duo)


def test_run_page_heatmap_layer_and_controls(dash_duo, dash_runs):
    from selenium.webdriver.common.action_chains import ActionChains

    _start(dash_duo, dash_runs, "/run/mlp-spiky")
    loss = _drawn(dash_duo, "loss-graph", 100, name="loss")
    assert any(t["name"] == "spike" and t["n"] == 5 for t in loss)
    _drawn(dash_duo, "gradnorm-graph", 100)
    _drawn(dash_duo, "lr-graph", 100)
    heat = _drawn(dash_duo, "heatmap-graph")
    assert heat[0]["type"] == "heatmap" and heat[0]["n"] == 6 * 300
    # click-through: pick a layer, then click a heatmap row
    _select(dash_duo, "#layer-select", "body.0.bias")
    layer = _drawn(dash_duo, "layer-graph", 100)
    assert len([t for t in layer if t["name"] in ("grad_norm", "update_ratio", "param_norm")]) == 3
    plot = dash_duo.find_element("#heatmap-graph .nsewdrag")
    dash_duo.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", plot)
    top_row = -plot.size["height"] // 2 + 8  # rows top-down in model order: body.0.weight
    ActionChains(dash_duo.driver).move_to_element(plot).pause(0.3).move_by_offset(3, top_row).pause(
        0.3
    ).click().perform()  # plotly needs the hover before the click
    _until(lambda: _traces(dash_duo, "layer-graph")[0]["title"] == "layer body.0.weight")
    # controls: log y on every curve, wall-clock x axis
    dash_duo.find_element("#logy input").click()
    _until(lambda: _traces(dash_duo, "loss-graph")[0]["yaxis"] == "log")
    dash_duo.find_element("#xaxis input[value='wall']").click()
    _until(
        lambda: (
            dash_duo.driver.execute_script(
                "return document.querySelector('#loss-graph .js-plotly-plot').layout.xaxis.type"
            )
            == "date"
        )
    )
    dash_duo.wait_for_contains_text("#findings", "loss_spikes", timeout=15)
    _shot(dash_duo, "run")
    _no_console_errors(dash_duo)


def test_probe_pages(dash_duo, dash_runs):
    _start(dash_duo, dash_runs, "/curvature/probes")
    eig = _drawn(dash_duo, "eig-graph", 10)
    assert [t["name"] for t in eig][:3] == ["λ1", "λ2", "λ3"]
    assert any(t["name"] == "2 / lr" for t in _drawn(dash_duo, "sharpness-graph", 10))
    _drawn(dash_duo, "trace-graph", 10)
    density = _drawn(dash_duo, "density-graph", 64)
    assert density[0]["yaxis"] == "log" and "step 180" in density[0]["title"]
    _select(dash_duo, "#density-step", "40")
    _until(lambda: "step 40" in _traces(dash_duo, "density-graph")[0]["title"])
    _shot(dash_duo, "curvature")

    dash_duo.find_element("#nav-landscape").click()
    _drawn(dash_duo, "landscape-1d-graph", 21)
    assert _drawn(dash_duo, "landscape-contour-graph", 121)[0]["type"] == "contour"
    assert _drawn(dash_duo, "landscape-surface-graph", 121)[0]["type"] == "surface"
    _select(dash_duo, "#landscape-plane", "hessian-2d")
    _until(lambda: "hessian-2d" in _traces(dash_duo, "landscape-contour-graph")[0]["title"])
    _select(dash_duo, "#landscape-step", "100")
    dash_duo.wait_for_contains_text("#landscape-summary", "roughness", timeout=15)
    _shot(dash_duo, "landscape")

    dash_duo.find_element("#nav-collapse").click()
    assert "nc1" in {t["name"] for t in _drawn(dash_duo, "collapse-graph", 10)}
    assert "log_z_mean" in {t["name"] for t in _drawn(dash_duo, "softmax-graph", 10)}
    _shot(dash_duo, "collapse")

    dash_duo.driver.get(dash_duo.server_url + "/curvature/mlp-spiky")  # a run without probes
    dash_duo.wait_for_contains_text(".message", "no hessian data in this run", timeout=15)
    dash_duo.driver.get(dash_duo.server_url + "/run/..%2F..%2Fetc")
    dash_duo.wait_for_contains_text(".message.error", "not a run name", timeout=15)
    _no_console_errors(dash_duo)


def test_a_run_being_written_refreshes(dash_duo, tmp_path):
    run_dir = craft_layer_run(tmp_path, "live", status="running", steps=50)
    _start(dash_duo, tmp_path, "/run/live", refresh_ms=500)
    _drawn(dash_duo, "loss-graph", 50, name="loss")
    writer = RunWriter(run_dir, strict=True)
    steps = list(range(50, 120))
    writer.write(
        "scalars",
        {"step": steps, "metric": ["loss"] * 70, "index": [0] * 70, "value": [0.5] * 70},
    )
    writer.close(compact=False)
    _drawn(dash_duo, "loss-graph", 120, name="loss")
    _shot(dash_duo, "live")
