"""The text report at 80 columns (pipes, CI logs), rendered into a StringIO console."""

from __future__ import annotations

import io
import re

import numpy as np
from rich.console import Console

from gradlens.report import build_report, report_renderable
from gradlens.report.compare import compare_runs, render_compare
from gradlens.store import open_run
from tests.conftest import ROOT
from tests.report.craft import craft_run, decreasing_loss

SAMPLES = ROOT / "sample_runs"


def _render(renderable, width=80):
    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False)
    console.print(renderable)
    return console.file.getvalue()


def _report(name):
    return build_report(open_run(SAMPLES / name))


def test_every_line_fits_and_the_sparkline_is_one_line():
    for name in ("mlp", "mlp-spiky", "mlp-diverged", "tiny-gpt", "grokking"):
        report = _report(name)
        out = _render(report_renderable(report))
        assert max(len(line) for line in out.splitlines()) <= 80, name
        (spark,) = [line for line in out.splitlines() if line.startswith("loss  ")]
        assert len(spark.strip()) == len("loss  ") + len(report.loss), name


def test_evidence_wraps_in_a_wide_column_not_five_lines():
    out = _render(report_renderable(_report("mlp-diverged"))).splitlines()
    start = next(i for i, line in enumerate(out) if re.match(r"error +nonfinite  steps 6", line))
    evidence = []
    for line in out[start + 1 :]:
        if not line.startswith("        "):
            break
        evidence.append(line)
    assert 1 <= len(evidence) <= 3, evidence
    assert "first NaN/Inf gradients in head.bias" in " ".join(x.strip() for x in evidence)


def test_diverged_layers_are_non_finite_not_zero_and_not_both_largest_and_smallest():
    report = _report("mlp-diverged")
    assert len(report.layers["grad_norm_nonfinite"]) == 6  # NaN from step 12 to the end
    assert not report.layers.get("grad_norm_largest")
    out = _render(report_renderable(report))
    layers = out[out.index("Layers (") : out.index("Softmax collapse")]
    assert "non-finite" in layers and "NaN/Inf" in layers
    assert "│     0 │" not in layers and " 0 │" not in layers
    for name in ("mlp", "mlp-spiky", "grokking"):
        ranked = _report(name).layers
        for metric in ("grad_norm", "update_ratio"):
            largest = {layer for layer, _ in ranked.get(f"{metric}_largest", [])}
            smallest = {layer for layer, _ in ranked.get(f"{metric}_smallest", [])}
            assert not largest & smallest, (name, metric)


def test_two_tensors_are_split_between_largest_and_smallest(runs_dir):
    layers = {"grad_norm": np.tile([1.0, 5.0], (50, 1)), "update_ratio": np.full((50, 2), 1e-3)}
    report = build_report(open_run(craft_run(runs_dir, loss=decreasing_loss(50), layers=layers)))
    assert report.layers["grad_norm_largest"] == [("layer1.weight", 5.0)]
    assert report.layers["grad_norm_smallest"] == [("layer0.weight", 1.0)]


def test_a_single_probe_prints_one_value():
    out = _render(report_renderable(_report("tiny-gpt")))
    collapse = out[out.index("Neural collapse") :]
    assert "CDNV" in collapse and "(step 199)" in collapse
    assert "→" not in collapse.split("Softmax collapse")[0]
    assert "(steps 199–199)" not in out


def test_compare_fits_80_columns_and_keeps_names_whole():
    runs = [open_run(SAMPLES / n) for n in ("mlp", "mlp-spiky", "mlp-diverged")]
    out = _render(render_compare(compare_runs(runs), "text"))
    assert max(len(line) for line in out.splitlines()) <= 80
    header = next(line for line in out.splitlines() if "mlp-spiky" in line)
    assert "mlp-diverged" in header  # one column per run, names not cut
    assert "…" not in out.split("Per-layer")[0]
