"""Crafted runs for the dashboard tests: every probe table, written with the store's writer."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from gradlens.store import RunWriter
from tests.report.craft import craft_run, decreasing_loss, eval_rows

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_runs"
LAYERS = ["embed.weight", "body.0.weight", "body.0.bias", "head.weight"]
PROBE_STEPS = list(range(0, 200, 20))


def copy_samples(runs_dir: Path) -> list[str]:
    """Copy the recorded sample runs into ``runs_dir``; their names."""
    names = []
    for run in sorted(SAMPLES.iterdir()):
        if (run / "meta.json").is_file():
            shutil.copytree(run, runs_dir / run.name)
            names.append(run.name)
    return names


def craft_layer_run(runs_dir: Path, name: str, steps: int = 200, **kwargs) -> Path:
    """A run with loss, lr, time, four layers and a gradient spike at step 120."""
    rng = np.random.default_rng(1)
    base = np.array([0.5, 2.0, 0.05, 1.0])
    grad = base * np.exp(0.1 * rng.standard_normal((steps, len(LAYERS))))
    if steps > 120:
        grad[120, 1] *= 40.0
    layers = {
        "grad_norm": grad,
        "param_norm": np.tile(np.array([10.0, 20.0, 1.0, 5.0]), (steps, 1)),
        "update_ratio": np.full((steps, len(LAYERS)), 1e-3),
    }
    scalars = {
        "lr": np.full(steps, 0.1),
        "time": np.arange(steps) * 0.05,
        **kwargs.pop("scalars", {}),
    }
    return craft_run(
        runs_dir,
        name,
        loss=kwargs.pop("loss", decreasing_loss(steps)),
        layers=layers,
        names=LAYERS,
        scalars=scalars,
        **kwargs,
    )


EVAL_STEPS = list(range(19, 200, 20))  # ten evaluations: steps 19, 39, …, 199


def eval_curves(offset: float = 0.0) -> dict[str, np.ndarray]:
    """Val and test curves of ``craft_eval_run``: val overfits after step 99."""
    i = np.arange(len(EVAL_STEPS))
    val = np.where(i <= 4, 1.2 - 0.12 * i, 0.72 + 0.05 * (i - 4)) + offset
    return {
        "val_loss": val,
        "test_loss": val + 0.1,
        "val_accuracy": np.linspace(0.5, 0.85, len(EVAL_STEPS)),
        "test_accuracy": np.linspace(0.45, 0.8, len(EVAL_STEPS)),
    }


def craft_eval_run(runs_dir: Path, name: str = "evaluated", offset: float = 0.0) -> Path:
    """``craft_layer_run`` plus two eval loaders (val = index 0, test = 1) every 20 steps
    and two metrics the script logged itself (``user`` table)."""
    curves = eval_curves(offset)
    rows = eval_rows(EVAL_STEPS, curves["val_loss"], curves["val_accuracy"], 1000)
    rows += eval_rows(EVAL_STEPS, curves["test_loss"], curves["test_accuracy"], 500, index=1)
    user = [(s, "val/acc", float(a)) for s, a in zip(EVAL_STEPS, curves["val_accuracy"])]
    user += [(s, "bleu", 10.0 + s / 20) for s in EVAL_STEPS[::2]]
    return craft_layer_run(runs_dir, name, rows=rows, user=user)


def craft_probe_run(runs_dir: Path, name: str = "probes") -> Path:
    """A 200-step run with every probe table, following ``gradlens.store.schema``."""
    run_dir = craft_layer_run(runs_dir, name)
    writer = RunWriter(run_dir, strict=True)
    hessian: dict[str, list] = {"step": [], "metric": [], "layer": [], "index": [], "value": []}

    def h(step: int, metric: str, value: float, index: int = 0) -> None:
        for key, item in zip(hessian, (step, metric, "", index, value), strict=True):
            hessian[key].append(item)

    for step in PROBE_STEPS:
        top = 10.0 + step / 10  # λ1 grows toward 2/lr = 20
        for k, scale in enumerate((1.0, 0.5, 0.25)):
            h(step, "top_eigenvalue", top * scale, k)
        h(step, "sharpness", top)
        h(step, "eos_ratio", top * 0.1 / 2)
        h(step, "trace", 50.0 + step)
        h(step, "trace_stderr", 2.0)
        h(step, "lambda_min", -0.5)
    writer.write("hessian", hessian)

    grid = np.linspace(-1.0, 30.0, 64)
    nodes = np.linspace(-1.0, 30.0, 8)
    spectrum: dict[str, list] = {"step": [], "kind": [], "index": [], "x": [], "value": []}
    for step in PROBE_STEPS:
        density = np.exp(-0.5 * (grid - step / 20) ** 2) + 1e-4
        for i, (x, v) in enumerate(zip(grid, density, strict=True)):
            for key, item in zip(spectrum, (step, "density", i, x, v), strict=True):
                spectrum[key].append(item)
        for i, x in enumerate(nodes):
            for key, item in zip(spectrum, (step, "quadrature", i, x, 1 / 8), strict=True):
                spectrum[key].append(item)
    writer.write("spectrum", spectrum)

    land: dict[str, list] = {k: [] for k in ("step", "slice", "metric", "alpha", "beta", "value")}

    def row(*items: object) -> None:
        for key, item in zip(land, items, strict=True):
            land[key].append(item)

    for step in (100, 199):
        for a in np.linspace(-1, 1, 21):
            row(step, "update-1d", "loss", a, np.nan, 1.0 + a * a)
            row(step, "update-1d", "accuracy", a, np.nan, 1.0 - 0.3 * a * a)
        for a in np.linspace(-1, 1, 11):
            for b in np.linspace(-1, 1, 11):
                row(step, "filter-2d", "loss", a, b, 1.0 + a * a + 2 * b * b)
                row(step, "hessian-2d", "loss", a, b, 5.0 + a * a)
        row(step, "update-1d", "roughness", np.nan, np.nan, 0.01)
    writer.write("landscape", land)

    nc = ["nc1", "cdnv", "nc2_equinorm", "nc2_equiangular", "nc2_etf_distance", "nc3", "nc4"]
    collapse: dict[str, list] = {"step": [], "metric": [], "value": []}
    for step in PROBE_STEPS:
        for i, metric in enumerate(nc):
            collapse["step"].append(step)
            collapse["metric"].append(metric)
            collapse["value"].append((i + 1) * np.exp(-step / 100))
    writer.write("collapse", collapse)

    soft: dict[str, list] = {"step": [], "metric": [], "layer": [], "value": []}
    for step in PROBE_STEPS:
        for metric, value in (
            ("saturated_fraction", step / 400),
            ("zero_loss_fraction", step / 800),
            ("max_logit_gap", 5 + step / 10),
            ("log_z_mean", 2 + step / 50),
        ):
            for key, item in zip(soft, (step, metric, "", value), strict=True):
                soft[key].append(item)
    writer.write("softmax", soft)
    writer.close()
    return run_dir
