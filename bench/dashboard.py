"""Dashboard responsiveness on a long run: load and callback times against their targets.

Writes a synthetic run of STEPS steps × LAYERS layers (5 per-layer metrics: 100M layer rows
at the defaults) in the compacted layout the run store writes, plus a second run with the
same scalars for the comparison, into a temporary directory. Then times the dashboard's own
callback bodies, cold (fresh cache) and warm, including the JSON encoding Dash does before a
figure goes over the wire:

    python bench/dashboard.py [--steps 100000] [--layers 200] [--repeat 5] [--keep DIR]
                              [--no-browser]

Targets (issue 7): the run page opens in < 2 s, callbacks answer in < 300 ms. Then (issue 15)
every page of the sample runs is opened in headless Chromium (when chromium and chromedriver
are installed) and timed until all its charts are drawn: goal < 1 s a page.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import plotly.io as pio
import pyarrow as pa

from gradlens.dashboard.app import create_app, render
from gradlens.dashboard.context import AppContext
from gradlens.dashboard.data import Cache
from gradlens.dashboard.pages import compare, run
from gradlens.store import write_meta
from gradlens.store.columns import file_info, table_files
from gradlens.store.schema import SCHEMAS
from gradlens.store.writer import write_grouped

LAYER_METRICS = ("grad_norm", "nonfinite", "param_norm", "update_norm", "update_ratio")
OPEN_TARGET_S, CALLBACK_TARGET_S, RENDER_TARGET_S = 2.0, 0.3, 1.0
SAMPLES = Path(__file__).resolve().parents[1] / "sample_runs"
PAGES = (
    "/",
    "/run/mlp-spiky",
    "/run/grokking",
    "/run/tiny-gpt",
    "/curvature/grokking",
    "/curvature/mlp",
    "/collapse/grokking",
    "/collapse/tiny-gpt",
    "/landscape/mlp",
    "/landscape/tiny-gpt",
    "/compare?runs=grokking,grokking-wd",
)
_ALL_DRAWN = """
const graphs = Array.from(document.querySelectorAll('.dash-graph'));
if (!graphs.length) return !!document.querySelector('.message, #runs-rows tbody tr');
return graphs.every(g => { const gd = g.querySelector('.js-plotly-plot');
    return gd && gd._fullLayout && gd._fullData && !g.closest('[data-dash-is-loading=true]'); });
"""


def layer_names(count: int) -> list[str]:
    """Transformer-like parameter names, in model order."""
    kinds = ["ln1.weight", "ln1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight"]
    kinds += ["attn.proj.bias", "ln2.weight", "ln2.bias", "mlp.fc.weight", "mlp.proj.weight"]
    return [f"blocks.{i // len(kinds)}.{kinds[i % len(kinds)]}" for i in range(count)]


def write_run(run_dir: Path, steps: int, layers: int, seed: int = 0) -> int:
    """A finished run in the compacted layout; returns the number of layer rows."""
    rng = np.random.default_rng(seed)
    run_dir.mkdir(parents=True)
    write_meta(
        run_dir,
        {
            "name": run_dir.name,
            "status": "finished",
            "start_time": 1_700_000_000.0,
            "end_time": 1_700_000_000.0 + steps * 0.2,
            "steps": steps,
            "device": "cuda:0",
            "command": "bench/dashboard.py (synthetic)",
        },
    )
    step = np.arange(steps, dtype=np.int64)
    loss = 3.0 * np.exp(-step / (steps / 5)) + 0.5 + 0.05 * rng.standard_normal(steps)
    spikes = rng.choice(steps, 5, replace=False)
    loss[spikes] *= 8
    scalars = {
        "loss": loss,
        "grad_norm": 1.0 + 0.1 * rng.standard_normal(steps),
        "lr": np.minimum(step / 1000, 1.0) * 3e-4,
        "time": step * 0.2,
        "step_time": np.full(steps, 0.2),
        "samples_per_s": np.full(steps, 5000.0),
        "nonfinite": np.zeros(steps),
        "skipped": np.zeros(steps),
    }
    names = sorted(scalars)  # metric-major, by name: the compacted layout
    table = pa.table(
        {
            "step": np.tile(step, len(names)),
            "metric": np.repeat(names, steps),
            "index": np.zeros(steps * len(names), dtype=np.int32),
            "value": np.concatenate([scalars[n] for n in names]),
        },
        schema=SCHEMAS["scalars"],
    )
    (run_dir / "scalars").mkdir()
    write_grouped(table, list(range(0, table.num_rows, steps)), _compact(run_dir, "scalars"))
    events = {
        "step": spikes,
        "kind": ["loss_spike"] * 5,
        "metric": ["loss"] * 5,
        "layer": [""] * 5,
        "value": loss[spikes],
        "baseline": loss[spikes] / 8,
        "ratio": np.full(5, 8.0),
        "detail": [""] * 5,
    }
    (run_dir / "events").mkdir()
    write_grouped(pa.table(events, schema=SCHEMAS["events"]), [0], _compact(run_dir, "events"))
    if layers:
        _write_layers(run_dir, rng, step, layers)
    return steps * layers * len(LAYER_METRICS)


def _write_layers(run_dir: Path, rng: np.random.Generator, step: np.ndarray, count: int) -> None:
    steps, names = len(step), layer_names(count)
    scale = np.exp(rng.normal(0, 1.5, count)).astype(np.float32)  # 3 decades across layers
    values = []
    for metric in LAYER_METRICS:
        if metric == "nonfinite":
            values.append(np.zeros(steps * count, dtype=np.float32))
            continue
        noise = np.exp(0.2 * rng.standard_normal((count, steps), dtype=np.float32))
        block = noise * scale[:, None]
        if metric == "grad_norm":
            block[count // 3, steps // 2] *= 50  # one layer's spike, for the heatmap
        values.append(block.ravel())
    codes = np.tile(np.repeat(np.arange(count, dtype=np.int32), steps), len(LAYER_METRICS))
    table = pa.table(
        {
            "step": np.tile(step, count * len(LAYER_METRICS)),
            "layer": pa.DictionaryArray.from_arrays(codes, pa.array(names)),
            "metric": pa.DictionaryArray.from_arrays(
                np.repeat(np.arange(len(LAYER_METRICS), dtype=np.int32), steps * count),
                pa.array(LAYER_METRICS),
            ),
            "value": np.concatenate(values),
        }
    )
    starts = list(range(0, table.num_rows, steps))  # one group per (metric, layer)
    (run_dir / "layers").mkdir()
    write_grouped(table, starts, _compact(run_dir, "layers"), SCHEMAS["layers"])


def _compact(run_dir: Path, table: str) -> Path:
    return run_dir / table / "compact-000000.parquet"


def timed(fn: Callable[[], Any], repeat: int, fresh: Callable[[], None] | None = None) -> float:
    """Median seconds of ``fn`` over ``repeat`` calls (``fresh`` runs untimed before each)."""
    times = []
    for _ in range(repeat):
        if fresh is not None:
            fresh()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def encode(*figures: Any) -> int:
    """JSON-encode figures as Dash does before sending them; returns the bytes sent."""
    return sum(len(pio.to_json(f, validate=False)) for f in figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--layers", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="write the runs here and keep them")
    parser.add_argument("--no-browser", action="store_true", help="skip the page render times")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="gradlens-bench-"))
    try:
        bench(root, args.steps, args.layers, args.repeat)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    if not args.no_browser:
        browser_bench(SAMPLES, args.repeat)


def bench(root: Path, steps: int, layers: int, repeat: int) -> None:
    t0 = time.perf_counter()
    rows = write_run(root / "long", steps, layers)
    write_run(root / "other", steps, 0, seed=1)
    written = time.perf_counter() - t0
    files = table_files(root / "long", "layers")
    size = sum(f.stat().st_size for f in files)
    groups = file_info(files[0]).groups
    aligned = all(g.bounds["layer"][0] == g.bounds["layer"][1] for g in groups)
    print(f"synthetic run: {steps:,} steps × {layers} layers × {len(LAYER_METRICS)} metrics")
    print(f"  layer rows {rows:,}, layers file {size / 1e6:.0f} MB, {len(groups)} row groups")
    print(f"  (one metric and layer per row group: {aligned}); written in {written:.1f} s")
    print(f"  cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}")

    app = create_app(root)
    ctx: AppContext = app.server.config["GRADLENS_CONTEXT"]

    def settle() -> None:  # background prefetches would steal the CPU from what is timed
        while ctx.cache.busy():
            time.sleep(0.05)

    def fresh() -> None:
        settle()
        ctx.cache = Cache()

    def only_heatmap() -> None:  # just opened: the grad_norm matrix, nothing prefetched
        fresh()
        ctx.data("long").layer_matrix("grad_norm")

    layer = layer_names(layers)[layers // 3]

    def open_page() -> None:
        render(ctx, "/run/long")
        figures = run.curves(ctx, "long", 0.6, "step", [])
        heat = run.heatmap(ctx, "long", "grad_norm", None)
        encode(*figures, heat)

    zoom = {"xaxis.range[0]": steps * 0.2, "xaxis.range[1]": steps * 0.6}
    click = {"points": [{"x": steps // 2, "y": layer}]}
    checks = [
        ("open run page (cold: layout, curves, heatmap)", OPEN_TARGET_S, open_page, fresh),
        ("open run page (warm)", OPEN_TARGET_S, open_page, None),
        (
            "heatmap callback: zoom 40% of steps (warm)",
            CALLBACK_TARGET_S,
            lambda: encode(run.heatmap(ctx, "long", "grad_norm", zoom)),
            None,
        ),
        (
            "heatmap callback: switch metric (prefetched)",
            CALLBACK_TARGET_S,
            lambda: encode(run.heatmap(ctx, "long", "param_norm", None)),
            settle,
        ),
        (
            "heatmap callback: switch metric (cold, no prefetch)",
            CALLBACK_TARGET_S,
            lambda: encode(run.heatmap(ctx, "long", "param_norm", None)),
            fresh,
        ),
        (
            "layer click-through (3 curves, 2 read from disk)",
            CALLBACK_TARGET_S,
            lambda: encode(
                run.layer_curves(
                    ctx, "long", run.clicked_layer(ctx, "long", click), 0.6, "step", []
                )
            ),
            only_heatmap,
        ),
        (
            "compare overlay: loss of 2 runs (cold)",
            CALLBACK_TARGET_S,
            lambda: encode(
                compare.figure(ctx, ["long", "other"], "scalars|loss", None, 0.6, "step", [])
            ),
            fresh,
        ),
        (
            "heatmap: colour relative to baseline (cold)",
            OPEN_TARGET_S,
            lambda: encode(run.heatmap(ctx, "long", "grad_norm", None, colour="relative")),
            only_heatmap,
        ),
        (
            "heatmap: relative colour, zoom 40% (warm)",
            CALLBACK_TARGET_S,
            lambda: encode(
                run.heatmap(ctx, "long", "grad_norm", [steps * 0.2, steps * 0.6], "relative")
            ),
            None,
        ),
        (
            "smoothing slider: 3 run-page curves (warm)",
            CALLBACK_TARGET_S,
            lambda: encode(*run.curves(ctx, "long", 0.9, "time", ["log"])),
            None,
        ),
    ]
    open_page()  # warm the OS file cache and imports: "cold" means a fresh dashboard cache
    run.heatmap(ctx, "long", "grad_norm", None)
    settle()
    print(f"\n{'what':<52} {'median':>9} {'target':>8}  ok")
    failed = 0
    for name, target, fn, before in checks:
        seconds = timed(fn, repeat, before or settle)
        ok = seconds < target
        failed += not ok
        print(
            f"{name:<52} {seconds * 1000:7.0f} ms {target * 1000:6.0f} ms  {'yes' if ok else 'NO'}"
        )
    heat = run.heatmap(ctx, "long", "grad_norm", None)
    points = max(len(t.x) for t in run.curves(ctx, "long", 0.6, "step", [])[0].data)
    print(
        f"\nheatmap {len(heat.data[0].y)} layers × {len(heat.data[0].x)} buckets, "
        f"{encode(heat) / 1e6:.1f} MB JSON; longest curve trace {points} points"
    )
    print("all within target" if not failed else f"{failed} over target")


def browser_bench(root: Path, repeat: int) -> None:
    """Seconds from navigation until every chart of each page is drawn, in headless Chromium."""
    missing = [n for n in ("chromium", "chromedriver") if not shutil.which(n)]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
        from werkzeug.serving import make_server
    except ImportError:
        missing.append("selenium")
    if missing:
        print(f"\npage render times skipped: needs {', '.join(missing)}")
        return
    import logging
    import socket
    import threading

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no request log in the table
    app = create_app(root)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    httpd = make_server("127.0.0.1", port, app.server, threaded=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    options = Options()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1600,1000")
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    print(f"\npage render in headless Chromium, {root.name}/ (median of {repeat}, warm server)")
    print(f"  load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus (times scale with it)")
    print(f"{'page':<52} {'median':>9} {'target':>8}  ok")
    failed = 0
    try:
        for page in PAGES:
            times = []
            for attempt in range(repeat + 1):
                start = time.perf_counter()
                driver.get(f"http://localhost:{port}{page}")
                time.sleep(0.05)
                while not driver.execute_script(_ALL_DRAWN):
                    if time.perf_counter() - start > 60:
                        break
                    time.sleep(0.02)
                if attempt:  # the first visit warms the server's cache and the browser's
                    times.append(time.perf_counter() - start)
            seconds = statistics.median(times)
            ok = seconds < RENDER_TARGET_S
            failed += not ok
            print(
                f"{page:<52} {seconds * 1000:7.0f} ms {RENDER_TARGET_S * 1000:6.0f} ms  "
                f"{'yes' if ok else 'NO'}"
            )
    finally:
        driver.quit()
        httpd.shutdown()
    print("every page within target" if not failed else f"{failed} pages over target")


if __name__ == "__main__":
    main()
