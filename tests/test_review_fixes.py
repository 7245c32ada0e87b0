"""Regressions found in review: several optimizers, tensor learning rates, exits, probes on
unusual scripts, K-dimensional cross-entropy, NaN statistics, CLI user errors."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradlens
from gradlens.capture.recorder import StepRecorder
from gradlens.store.columns import read_columns
from tests.conftest import SCRIPTS, gradlens_cli


def _data(n=32, d=4, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    return x, torch.randint(0, classes, (n,), generator=g)


def test_two_optimizers_per_iteration_share_the_step_and_split_the_loss(runs_dir):
    torch.manual_seed(0)
    d, g = nn.Linear(4, 3), nn.Linear(4, 3)
    opt_d, opt_g = torch.optim.SGD(d.parameters(), lr=0.1), torch.optim.SGD(g.parameters(), 0.1)
    x, y = _data()
    losses = []
    with gradlens.Lens([d, g], [opt_d, opt_g], runs_dir=runs_dir) as lens:
        for _ in range(4):
            for model, opt in ((d, opt_d), (g, opt_g)):
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y) * (1 if model is d else 10)
                loss.backward()
                opt.step()
                losses.append(loss.item())
    scalars = gradlens.open_run(lens.run_dir).table("scalars")
    main = scalars[scalars.metric == "loss"]
    other = scalars[scalars.metric == "loss@2"]
    assert main.step.tolist() == other.step.tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(main.value, losses[0::2], rtol=1e-6)  # d's own loss only
    np.testing.assert_allclose(other.value, losses[1::2], rtol=1e-6)


def test_a_new_optimizer_takes_over_when_the_old_one_is_gone(runs_dir):
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x, y = _data()
    with gradlens.Lens(runs_dir=runs_dir) as lens:  # automatic, like watch
        for lr in (0.1, 0.01):  # two phases, each with a fresh optimizer
            opt = torch.optim.SGD(model.parameters(), lr=lr)
            for _ in range(5):
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.step()
            del opt
    run = gradlens.open_run(lens.run_dir)
    assert run.steps == 10
    lr = run.table("scalars", filters=[("metric", "==", "lr")])
    assert lr.step.tolist() == list(range(10))
    np.testing.assert_allclose(lr.value, [0.1] * 5 + [0.01] * 5)


def test_tensor_learning_rate_on_the_cpu_is_read_per_step(runs_dir):
    model = nn.Linear(4, 3)
    opt = torch.optim.Adam(model.parameters(), lr=torch.tensor(0.1))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    x, y = _data()
    with gradlens.Lens(model, opt, runs_dir=runs_dir) as lens:
        for _ in range(4):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
    lr = gradlens.open_run(lens.run_dir).table("scalars", filters=[("metric", "==", "lr")])
    np.testing.assert_allclose(lr.value, [0.1, 0.05, 0.025, 0.0125])


@pytest.mark.parametrize("code,status", [(0, "finished"), (None, "finished"), (3, "failed")])
def test_sys_exit_inside_a_lens(runs_dir, code, status):
    lens = gradlens.Lens(nn.Linear(2, 2), runs_dir=runs_dir, name="exit")
    with pytest.raises(SystemExit), lens:
        raise SystemExit(code)
    assert gradlens.open_run(lens.run_dir).status == status


def test_update_after_a_skipped_step_is_zero():
    p = nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    rec = StepRecorder([p], ["p"], lambda chunk: None)
    rec.before_update(None)
    rec.after_update(gradlens.capture.chunk.StepInfo(0, 0.0, None, 0, 0), applied=False)
    (delta,) = rec.last_update()
    assert torch.equal(delta, torch.zeros(3))


def _train(model, opt, steps=6, no_grad_step=False, runs_dir=None, **options):
    x, y = _data()
    with gradlens.Lens(model, opt, runs_dir=runs_dir, **options) as lens:
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            if no_grad_step:
                with torch.no_grad():
                    opt.step()
            else:
                opt.step()
    return gradlens.open_run(lens.run_dir)


def test_probes_due_before_a_batch_wait_instead_of_giving_up(runs_dir):
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    options = {"hessian": {"every": 1, "k": 1, "trace": False}, "collapse": {"every": 1}}
    run = _train(model, opt, no_grad_step=True, runs_dir=runs_dir, probe_options=options)
    assert sorted(run.table("hessian").step.unique()) == list(range(6))  # even under no_grad
    assert sorted(run.table("collapse").step.unique()) == list(range(6))


def test_probes_replay_the_right_module_of_a_split_model(runs_dir):
    torch.manual_seed(0)
    backbone, head = nn.Sequential(nn.Linear(4, 8), nn.Tanh()), nn.Linear(8, 3)
    opt = torch.optim.SGD([*backbone.parameters(), *head.parameters()], lr=0.1)
    x, y = _data()
    options = {"hessian": {"every": 2, "k": 1, "trace": False}}
    with gradlens.Lens(runs_dir=runs_dir, probe_options=options) as lens:
        for _ in range(4):
            opt.zero_grad()
            F.cross_entropy(head(backbone(x)), y).backward()
            opt.step()
    assert sorted(gradlens.open_run(lens.run_dir).table("hessian").step.unique()) == [1, 3]


def test_k_dimensional_cross_entropy_feeds_the_softmax_signals(runs_dir):
    conv = nn.Conv1d(4, 5, 1)
    opt = torch.optim.SGD(conv.parameters(), lr=0.1)
    x = torch.randn(6, 4, 7)
    y = torch.randint(0, 5, (6, 7))
    with gradlens.Lens(conv, opt, runs_dir=runs_dir, softmax_every=1) as lens:
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(conv(x), y).backward()  # logits (N, C, L)
            opt.step()
    softmax = gradlens.open_run(lens.run_dir).table("softmax")
    samples = softmax[softmax.metric == "num_samples"].value
    assert samples.tolist() == [42.0] * 3


def test_at_end_probe_does_not_repeat_the_scheduled_one(runs_dir):
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    options = {"collapse": {"every": 2, "at_end": True}}
    run = _train(model, opt, steps=4, runs_dir=runs_dir, probe_options=options)
    steps = run.table("collapse", filters=[("metric", "==", "nc1")]).step.tolist()
    assert steps == [1, 3]


def test_nan_values_survive_column_pruned_reads(tmp_path):
    path = tmp_path / "part-000000.parquet"
    table = pa.table(
        {
            "step": [0, 1, 2],
            "metric": ["loss"] * 3,
            "index": pa.array([0] * 3, pa.int32()),
            "value": [float("nan"), 1.0, 1.0],
        }
    )
    pq.write_table(table, path)
    got = read_columns([path], ["step", "value"]).column("value").to_pylist()
    assert np.isnan(got[0]) and got[1:] == [1.0, 1.0]


def test_empty_run_is_an_error_not_a_pass(runs_dir, tmp_path):
    script = tmp_path / "nothing.py"
    script.write_text("import torch\nprint('no training')\n")
    assert gradlens_cli("watch", "--runs-dir", str(runs_dir), str(script)).returncode == 0
    report = gradlens_cli("report", str(runs_dir / "nothing"))
    assert report.returncode == 1 and "no training step recorded" in report.stdout


def test_cli_user_errors_are_one_line_exit_2(tmp_path, runs_dir):
    underscored = tmp_path / "_train.py"
    underscored.write_text("print('ok')\n")
    ok = gradlens_cli("watch", "--runs-dir", str(runs_dir), str(underscored))
    assert ok.returncode == 0 and (runs_dir / "train").is_dir()
    a_file = tmp_path / "afile"
    a_file.write_text("")
    for args in (
        ["watch", "--runs-dir", str(runs_dir), "--name", "bad name", str(underscored)],
        ["watch", "--runs-dir", str(a_file), str(underscored)],
        ["report", str(runs_dir / "train"), "-o", str(tmp_path / "missing" / "r.txt")],
        ["watch", "--probe", "hessian.which=XX", str(underscored)],
    ):
        result = gradlens_cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stderr.startswith("gradlens: error:")
    assert SCRIPTS.is_dir()
