"""Crafted runs: tables written directly, so every rule can be tested on known data."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np

from gradlens.store import RunWriter, create_run_dir, write_meta


def craft_run(
    runs_dir: Path,
    name: str = "crafted",
    *,
    loss=None,
    layers: dict | None = None,
    names: list[str] | None = None,
    scalars: dict | None = None,
    events: list[dict] | None = None,
    status: str = "finished",
    meta: dict | None = None,
    rows: list[tuple[int, str, int, float]] | None = None,
    user: list[tuple[int, str, float]] | None = None,
    layer_rows: list[tuple[int, str, str, float]] | None = None,
) -> Path:
    """``loss``: per-step values; ``layers``: metric → (steps × layers) array; ``rows``: more
    scalars rows (step, metric, index, value), e.g. from :func:`eval_rows`; ``user``: rows of
    the ``user`` table (step, metric, value), as ``gradlens.log`` writes them; ``layer_rows``:
    more ``layers`` rows (step, layer, metric, value), e.g. of a metric sampled every k steps."""
    run_dir = create_run_dir(runs_dir, name)
    steps = len(loss) if loss is not None else next(iter((layers or {}).values())).shape[0]
    write_meta(
        run_dir,
        {
            "name": run_dir.name,
            "status": status,
            "start_time": 1_700_000_000.0,
            "end_time": 1_700_000_060.0 if status != "running" else None,
            "steps": steps,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "device": "cpu",
            "versions": {"python": "3.11", "torch": "2.x", "gradlens": "test"},
            **(meta or {}),
        },
    )
    writer = RunWriter(run_dir, strict=True)
    columns = {"step": [], "metric": [], "index": [], "value": []}
    series = {"loss": loss, "grad_norm": np.ones(steps), **(scalars or {})}
    for metric, values in series.items():
        if values is None:
            continue
        for step, value in enumerate(values):
            columns["step"].append(step)
            columns["metric"].append(metric)
            columns["index"].append(0)
            columns["value"].append(float(value))
    for row in rows or []:
        for key, item in zip(columns, row, strict=True):
            columns[key].append(item)
    writer.write("scalars", columns)
    if user:
        writer.write(
            "user", {k: [r[i] for r in user] for i, k in enumerate(("step", "metric", "value"))}
        )
    if layers:
        names = names or [f"layer{i}.weight" for i in range(next(iter(layers.values())).shape[1])]
        rows = {"step": [], "layer": [], "metric": [], "value": []}
        for metric, values in layers.items():
            for step in range(values.shape[0]):
                for i, layer in enumerate(names):
                    rows["step"].append(step)
                    rows["layer"].append(layer)
                    rows["metric"].append(metric)
                    rows["value"].append(float(values[step, i]))
        writer.write("layers", rows)
    if layer_rows:
        keys = ("step", "layer", "metric", "value")
        writer.write("layers", {k: [r[i] for r in layer_rows] for i, k in enumerate(keys)})
    if events:
        full = [
            {
                "metric": "grad_norm",
                "layer": "",
                "baseline": np.nan,
                "ratio": np.nan,
                "detail": "",
                **e,
            }
            for e in events
        ]
        writer.write("events", {k: [e[k] for e in full] for k in full[0]})
    writer.close()
    return run_dir


def decreasing_loss(steps: int = 200, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 2.0 * np.exp(-np.arange(steps) / 40) + 0.2 + 0.02 * rng.standard_normal(steps)


def eval_rows(
    steps, loss, accuracy=None, samples: int = 500, index: int = 0
) -> list[tuple[int, str, int, float]]:
    """Scalars rows of one loader's evaluations at ``steps``, as capture records them."""
    out = []
    for i, step in enumerate(steps):
        out.append((int(step), "eval_loss", index, float(loss[i])))
        if accuracy is not None:
            out.append((int(step), "eval_accuracy", index, float(accuracy[i])))
        out.append((int(step), "eval_samples", index, float(samples)))
    return out
