"""The hessian probe during training: the numbers, the tables, and no effect on training."""

from __future__ import annotations

import subprocess
import sys

import torch
import torch.nn.functional as F
from torch import nn

import gradlens
import gradlens.analysis.hessian as gh
from tests.conftest import EXAMPLES, SCRIPTS, cli_env, gradlens_cli


def test_probe_matches_the_api_on_the_probe_batches(runs_dir):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    g = torch.Generator().manual_seed(0)
    batches = []
    options = {"hessian": {"every": 8, "k": 3, "tol": 1e-6, "trace_hvps": 40}}
    with gradlens.Lens(model, opt, runs_dir=runs_dir, probe_options=options) as lens:
        for _ in range(8):
            x = torch.randn(32, 5, generator=g)
            y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
            batches.append((x, y))
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    table = gradlens.open_run(lens.run_dir).table("hessian")
    assert set(table["step"]) == {7}
    top = table[table.metric == "top_eigenvalue"].sort_values("index")["value"].to_numpy()
    # the probe ran after step 7's update, on the two recorded probe batches
    direct = gh.hessian_eigenvalues(model, F.cross_entropy, batches[:2], k=3, tol=1e-6)
    torch.testing.assert_close(
        torch.tensor(top, dtype=torch.float64), direct.eigenvalues, rtol=1e-5, atol=0
    )
    value = {m: v for m, v in zip(table.metric, table.value) if m in ("eos_ratio", "sharpness")}
    assert value["eos_ratio"] == value["sharpness"] * 0.2 / 2


def test_watch_with_the_hessian_probe_on_a_transformer(runs_dir):
    result = gradlens_cli(
        "watch",
        "--runs-dir",
        str(runs_dir),
        "--status",
        "off",
        "--probe",
        "hessian.every=4",
        "--probe",
        "hessian.density_runs=1",
        "--probe",
        "hessian.density_steps=10",
        "--probe",
        "hessian.k=2",
        "--probe",
        "hessian.trace_hvps=12",
        str(EXAMPLES / "tiny_gpt.py"),
        "--steps",
        "8",
        "--batch-size",
        "4",
        "--block",
        "16",
    )
    assert result.returncode == 0, result.stderr
    assert "math attention backend" in result.stderr  # SDPA's fused kernel: fallback said
    run = gradlens.open_run(runs_dir / "tiny_gpt")
    hessian = run.table("hessian")
    assert sorted(hessian.step.unique()) == [3, 7]
    assert {
        "top_eigenvalue",
        "top_residual",
        "lambda_min",
        "trace",
        "trace_stderr",
        "eos_ratio",
        "hvps",
    } <= set(hessian.metric)
    spectrum = run.table("spectrum")
    assert set(spectrum.kind) == {"quadrature", "density"}
    report = gradlens_cli("report", str(runs_dir / "tiny_gpt"))
    assert "Hessian" in report.stdout and "top eigenvalues at step 7" in report.stdout


def test_hessian_probe_does_not_change_training(tmp_path, runs_dir):
    plain, watched = tmp_path / "plain.pt", tmp_path / "watched.pt"
    script = SCRIPTS / "invariance.py"
    ref = subprocess.run(
        [sys.executable, str(script), str(plain), "0"],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=300,
    )
    assert ref.returncode == 0, ref.stderr
    result = gradlens_cli(
        "watch",
        "--runs-dir",
        str(runs_dir),
        "--status",
        "off",
        "--probes",
        "standard",
        "--probe",
        "hessian.every=3",
        "--probe",
        "hessian.mode=train",
        "--probe",
        "hessian.blocks=true",
        "--probe",
        "hessian.density_runs=1",
        "--probe",
        "hessian.density_steps=8",
        str(script),
        str(watched),
        "0",
    )
    assert result.returncode == 0, result.stderr
    a, b = torch.load(plain), torch.load(watched)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    hessian = gradlens.open_run(runs_dir / "invariance").table("hessian")
    assert hessian.step.nunique() >= 5
    assert (hessian.metric == "block_top_eigenvalue").any()
