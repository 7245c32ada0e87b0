"""Which loss the probes measure: the recorded loss call must be what the script trains on
(constant scaling, accumulation and casts allowed); a loss of several terms leaves the
Hessian and landscape probes unavailable, said once. And which layer the collapse probe takes
in a multi-head model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradlens
from gradlens.analysis.collapse import neural_collapse
from gradlens.instrument import interception

OPTIONS = {
    "hessian": {"every": 4, "k": 1, "trace": False},
    "landscape": {"every": 4, "dims": 1, "steps": 3, "roughness": 0},
    "collapse": {"every": 4},
    "ghost": {"every": 4},
}
PARTIAL = "the training loss is not one loss call (several terms)"


class _TwoHeads(nn.Module):
    """A classifier head, then a 1-output regression head (registered last)."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(6, 16), nn.Tanh())
        self.cls_head = nn.Linear(16, 3)
        self.reg_head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return self.cls_head(h), self.reg_head(h).squeeze(1)


def _data(steps: int = 8, n: int = 24):
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(steps):
        x = torch.randn(n, 6, generator=g)
        out.append((x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long(), x[:, 2].sin()))
    return out


def _train(runs_dir, step_fn, steps: int = 8):
    """``step_fn(model, x, y, r)`` does forward and backward(s); returns the run and model."""
    torch.manual_seed(0)
    model = _TwoHeads()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = _data(steps)
    with gradlens.Lens(model, opt, runs_dir=runs_dir, probe_options=OPTIONS) as lens:
        for x, y, r in data:
            opt.zero_grad()
            step_fn(model, x, y, r)
            opt.step()
        assert interception._backward_watchers == []  # full: nothing watched any more
        batches = list(lens.probe_set.batches)
    return gradlens.open_run(lens.run_dir), model, data, batches


def _one_call(model, x, y, r):
    F.cross_entropy(model(x)[0], y).backward()


def _scaled_and_cast(model, x, y, r):
    (F.cross_entropy(model(x)[0].double(), y).float() * 4.0 / 2).backward()


def _accumulated(model, x, y, r):
    for part in range(2):  # two micro-batches, loss / accum
        xs, ys = x[part::2], y[part::2]
        (F.cross_entropy(model(xs)[0], ys) / 2).backward()


def _grad_scaler(model, x, y, r):
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    scaler.scale(F.cross_entropy(model(x)[0], y)).backward()


def _with_aux_term(model, x, y, r):
    logits, pred = model(x)
    (F.cross_entropy(logits, y) + 0.1 * pred.pow(2).mean()).backward()


def _custom_plus_mse(model, x, y, r):
    logits, pred = model(x)
    (logits.logsumexp(1).mean() + F.mse_loss(pred, r)).backward()


def _real_plus_fake(model, x, y, r):  # a discriminator's two terms, one backward
    real = F.cross_entropy(model(x)[0], y)
    fake = F.cross_entropy(model(-x)[0], torch.zeros_like(y))
    (real + fake).backward()


def _backward_per_task(model, x, y, r):
    logits, pred = model(x)
    F.cross_entropy(logits, y).backward(retain_graph=True)
    F.mse_loss(pred, r).backward()


def _list_backward(model, x, y, r):
    logits, pred = model(x)
    torch.autograd.backward([F.cross_entropy(logits, y), F.mse_loss(pred, r)])


@pytest.mark.parametrize(
    "step_fn", [_one_call, _scaled_and_cast, _accumulated, _grad_scaler], ids=lambda f: f.__name__
)
def test_one_loss_call_is_the_objective(runs_dir, step_fn):
    run, *_, batches = _train(runs_dir, step_fn)
    assert [b.whole for b in batches] == [True, True]
    assert not run.meta.get("unavailable") and not run.meta.get("disabled")
    assert set(run.table("hessian").step) == {3, 7}
    assert set(run.table("landscape").step) == {3, 7}


@pytest.mark.parametrize(
    "step_fn",
    [_with_aux_term, _custom_plus_mse, _real_plus_fake, _backward_per_task, _list_backward],
    ids=lambda f: f.__name__,
)
def test_several_terms_leave_the_objective_probes_unavailable(runs_dir, capsys, step_fn):
    run, *_, batches = _train(runs_dir, step_fn)
    assert all(b.whole is False for b in batches if b.loss is not None)
    unavailable = run.meta["unavailable"]
    assert PARTIAL in unavailable.pop("probe hessian")
    assert PARTIAL in unavailable.pop("probe landscape")
    assert not run.meta.get("disabled")
    tables = run.tables()
    assert "hessian" not in tables and "landscape" not in tables
    assert set(run.table("softmax", filters=[("metric", "==", "ghost_r")]).step) == {3, 7}
    if batches[0].loss.name == "cross_entropy":  # not measuring the loss: still run
        assert set(run.table("collapse").step) == {3, 7} and not unavailable
    assert capsys.readouterr().err.count(PARTIAL) == 1


def test_collapse_takes_the_head_of_the_loss_logits(runs_dir):
    run, model, _, batches = _train(runs_dir, _with_aux_term)
    rows = run.table("collapse")
    got = dict(zip(rows[rows.step == 7].metric, rows[rows.step == 7].value, strict=True))
    assert got["num_classes"] == 3
    recorded = [(b.args[0], b.loss.target) for b in batches]
    want = neural_collapse(model, recorded, classifier="cls_head")
    for metric in ("nc1", "cdnv", "nc3", "nc4"):
        assert got[metric] == pytest.approx(want[metric], rel=1e-9), metric


def test_collapse_unavailable_for_a_regression(runs_dir, capsys):
    def regression(model, x, y, r):
        F.mse_loss(model(x)[1], r).backward()

    run, *_ = _train(runs_dir, regression)
    unavailable = run.meta["unavailable"]
    assert unavailable.pop("softmax signals").startswith("no F.cross_entropy")  # regression
    assert unavailable == {"probe collapse": "the recorded loss has no class-index targets"}
    assert "hessian" in run.tables() and "collapse" not in run.tables()
    assert capsys.readouterr().err.count("probe collapse unavailable") == 1


def _masked_mean(model, x, y, r):  # padding-style masking of per-sample losses
    per_sample = F.cross_entropy(model(x)[0], y, reduction="none")
    mask = (r > -0.5).float()
    ((per_sample * mask).sum() / mask.sum()).backward()


def _legacy_reduce(model, x, y, r):
    per_sample = F.cross_entropy(model(x)[0], y, reduce=False)
    (per_sample * torch.linspace(0.5, 1.5, len(y))).mean().backward()


@pytest.mark.parametrize("step_fn", [_masked_mean, _legacy_reduce], ids=lambda f: f.__name__)
def test_per_sample_losses_leave_the_objective_probes_unavailable(runs_dir, capsys, step_fn):
    """``reduction="none"`` then the script's own weighting: replaying the call gives a
    vector, not the objective (it used to switch Hessian and landscape off as internal
    errors); ghost and collapse read the logits and still run."""
    run, *_ = _train(runs_dir, step_fn)
    why = "the loss call returns per-sample losses (reduction='none') the script reduces"
    unavailable = run.meta["unavailable"]
    assert why in unavailable.pop("probe hessian") and why in unavailable.pop("probe landscape")
    assert not unavailable and not run.meta.get("disabled")
    assert set(run.table("collapse").step) == {3, 7}
    assert set(run.table("softmax", filters=[("metric", "==", "ghost_r")]).step) == {3, 7}
    assert capsys.readouterr().err.count(why) == 1


TRANSFORMS = {  # the loss call's input, from the model output (8 samples × 3)
    "itself": (lambda out: out, True),
    "view": (lambda out: out.view(-1, 3), True),
    "sigmoid": (lambda out: torch.sigmoid(out), False),
    "gather": (lambda out: out.gather(1, torch.zeros(len(out), 1, dtype=torch.long)), False),
    "transpose": (lambda out: out.t(), False),
}


@pytest.mark.parametrize("how", sorted(TRANSFORMS))
def test_a_loss_on_a_function_of_the_output_leaves_the_objective_probes_unavailable(runs_dir, how):
    """DQN's ``q(s).gather(1, a)``, ``mse_loss(sigmoid(out), y)``: replaying the loss call on
    the model output measures another objective (or fails: an internal error before); views
    and casts of the output replay exactly."""
    transform, replayable = TRANSFORMS[how]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(8, 4)
    options = {"hessian": {"every": 2, "k": 1, "trace": False}}
    with gradlens.Lens(runs_dir=runs_dir, probe_options=options) as lens:
        for _ in range(2):
            opt.zero_grad()
            value = transform(model(x))
            F.mse_loss(value, torch.zeros_like(value)).backward()
            opt.step()
    run = gradlens.open_run(lens.run_dir)
    assert not run.meta.get("disabled")
    unavailable = run.meta.get("unavailable", {})
    if replayable:
        assert "probe hessian" not in unavailable and "hessian" in run.tables()
    else:
        assert unavailable["probe hessian"].startswith("the loss call's input is a function")
        assert "hessian" not in run.tables()
