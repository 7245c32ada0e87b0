"""Which loss the probes measure when the model computes it: probes replay the module and take
the loss it returns (nanoGPT's ``logits, loss = model(x, y)``, a Hugging Face output's
``.loss``, a loss gradlens sees no call of). That returned loss must be what the script
backpropagates, up to constant scaling; a term added after forward leaves the Hessian and
landscape probes unavailable, said once and listed in ``meta.unavailable``."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradlens
from gradlens.instrument import interception

OPTIONS = {
    "hessian": {"every": 4, "k": 1, "trace": False},
    "landscape": {"every": 4, "dims": 1, "steps": 3, "roughness": 0},
}
GHOST = {"ghost": {"every": 4}}  # it needs logits in the output: not a lone loss
LOGITS_TOO = ("tuple", "output")
PARTIAL = "the training loss is not the loss the model returns (terms added after forward)"


@dataclass
class _Output:
    """A Hugging Face style output: an object with ``.loss`` and ``.logits``."""

    loss: torch.Tensor
    logits: torch.Tensor


class _LossModel(nn.Module):
    """A classifier whose forward computes its loss (``style`` says how it returns it)."""

    def __init__(self, style: str = "loss") -> None:
        super().__init__()
        self.style = style
        self.net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> object:
        logits = self.net(x)
        if self.style == "aux_out":  # MoE-style: logits and a hand-made balance term
            return logits, logits.softmax(1).mean(0).square().sum()
        if self.style == "no_loss_call":  # a loss gradlens sees no call of
            loss = -logits.log_softmax(1).gather(1, y[:, None]).mean()
        else:
            loss = F.cross_entropy(logits, y)
        if self.style == "with_aux":  # the module's own objective: ce + aux
            loss = loss + 0.1 * F.mse_loss(logits.mean(1), torch.zeros(len(x)))
        if self.style == "tuple":
            return logits, loss
        if self.style == "output":
            return _Output(loss, logits)
        return loss


def _l2(model: nn.Module) -> torch.Tensor:
    return sum(p.square().sum() for p in model.parameters())  # type: ignore[return-value]


def _data(steps: int = 8, n: int = 24):
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(steps):
        x = torch.randn(n, 6, generator=g)
        out.append((x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()))
    return out


def _train(runs_dir, step_fn, style: str = "loss", steps: int = 8):
    """``step_fn(model, x, y)`` does forward and backward(s); returns the run and batches."""
    torch.manual_seed(0)
    model = _LossModel(style)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    options = {**OPTIONS, **GHOST} if style in LOGITS_TOO else OPTIONS
    with gradlens.Lens(model, opt, runs_dir=runs_dir, probe_options=options) as lens:
        for x, y in _data(steps):
            opt.zero_grad()
            step_fn(model, x, y)
            opt.step()
        assert interception._backward_watchers == []  # full: nothing watched any more
        batches = list(lens.probe_set.batches)
    return gradlens.open_run(lens.run_dir), batches


def _returned(model, x, y):
    loss = model(x, y)
    loss.backward()


def _scaled(model, x, y):
    (model(x, y) / 4).backward()


def _accumulated(model, x, y):
    for part in range(2):  # two micro-batches, loss / accum, GradScaler-style scaling
        scaled = model(x[part::2], y[part::2]) / 2 * torch.tensor(8.0)
        scaled.double().backward()


def _tuple_loss(model, x, y):
    _, loss = model(x, y)
    loss.backward()


def _output_loss(model, x, y):
    model(x, y).loss.backward()


def _plus_l2(model, x, y):
    (model(x, y) + 0.1 * _l2(model)).backward()


def _tuple_plus_l2(model, x, y):
    (model(x, y)[1] + 0.01 * _l2(model)).backward()


def _output_plus_l2(model, x, y):
    out = model(x, y)
    (out.loss + 0.01 * _l2(model)).backward()


def _two_backwards(model, x, y):  # the penalty backpropagated on its own
    model(x, y).backward()
    (0.01 * _l2(model)).backward()


WHOLE = [
    (_returned, "loss"),
    (_scaled, "loss"),
    (_accumulated, "loss"),
    (_tuple_loss, "tuple"),
    (_output_loss, "output"),
    (_returned, "with_aux"),  # ce + aux inside forward: the returned loss is the objective
    (_scaled, "no_loss_call"),
]
PARTS = [
    (_plus_l2, "loss"),
    (_tuple_plus_l2, "tuple"),
    (_output_plus_l2, "output"),
    (_two_backwards, "loss"),
    (_plus_l2, "with_aux"),
    (_plus_l2, "no_loss_call"),
]


def _id(case) -> str:
    step_fn, style = case
    return f"{step_fn.__name__}-{style}"


@pytest.mark.parametrize("case", WHOLE, ids=_id)
def test_the_returned_loss_is_the_objective(runs_dir, case):
    step_fn, style = case
    run, batches = _train(runs_dir, step_fn, style)
    assert [b.loss.inside_forward for b in batches] == [True, True]
    assert [b.whole for b in batches] == [True, True]
    unavailable = run.meta.get("unavailable", {})
    if style == "no_loss_call":  # no cross-entropy call: no softmax signals, and it says so
        assert unavailable.pop("softmax signals").startswith("no F.cross_entropy")
    assert not unavailable and not run.meta.get("disabled")
    assert set(run.table("hessian").step) == {3, 7}
    assert set(run.table("landscape").step) == {3, 7}


@pytest.mark.parametrize("case", PARTS, ids=_id)
def test_terms_added_after_forward_leave_the_objective_probes_unavailable(runs_dir, capsys, case):
    step_fn, style = case
    run, batches = _train(runs_dir, step_fn, style)
    assert [b.whole for b in batches] == [False, False]
    unavailable = run.meta["unavailable"]
    if style == "no_loss_call":
        assert unavailable.pop("softmax signals").startswith("no F.cross_entropy")
    assert set(unavailable) == {"probe hessian", "probe landscape"}
    assert all(why.startswith(PARTIAL) for why in unavailable.values())
    assert not run.meta.get("disabled")
    tables = run.tables()
    assert "hessian" not in tables and "landscape" not in tables
    if style in LOGITS_TOO:  # not measuring the loss: still runs
        assert set(run.table("softmax", filters=[("metric", "==", "ghost_r")]).step) == {3, 7}
    assert capsys.readouterr().err.count(PARTIAL) == 1


def test_the_landscape_centre_is_the_returned_loss(runs_dir):
    # the probe measures what the module returns, at the recorded batches
    run, batches = _train(runs_dir, _scaled)
    landscape = run.table("landscape")
    at = (landscape.metric == "loss") & (landscape.alpha == 0) & (landscape.step == 7)
    assert at.sum() == 1
    torch.manual_seed(0)
    model = _LossModel()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, y in _data():
        opt.zero_grad()
        (model(x, y) / 4).backward()
        opt.step()
    with torch.no_grad():
        expected = sum(float(model(*b.args)) for b in batches) / len(batches)
    assert landscape[at].value.iloc[0] == pytest.approx(expected, rel=1e-5)


def test_ghost_on_a_model_returning_only_its_loss_is_unavailable(runs_dir):
    """The ghost radius needs logits: a lone returned loss makes it unavailable (said, not an
    internal error), and the objective probes still run."""
    torch.manual_seed(0)
    model = _LossModel("loss")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradlens.Lens(model, opt, runs_dir=runs_dir, probe_options={**OPTIONS, **GHOST}) as lens:
        for x, y in _data():
            opt.zero_grad()
            _returned(model, x, y)
            opt.step()
    run = gradlens.open_run(lens.run_dir)
    assert set(run.meta["unavailable"]) == {"probe ghost"}
    assert "a scalar (a loss), not logits" in run.meta["unavailable"]["probe ghost"]
    assert not run.meta.get("disabled")
    assert set(run.table("hessian").step) == {3, 7}


def _ce_on_logits(model, x, y):
    logits, _aux = model(x, y)
    F.cross_entropy(logits, y).backward()


def _ce_plus_aux(model, x, y):
    logits, aux = model(x, y)
    (F.cross_entropy(logits, y) + 0.01 * aux).backward()


def test_a_scalar_returned_beside_logits_gives_way_to_the_loss_call_after_forward(runs_dir):
    """``logits, aux = model(x)`` with the script's ``F.cross_entropy(logits, y)``: the loss
    call is the objective, not the returned scalar (a mixture of experts' balance term)."""
    run, batches = _train(runs_dir, _ce_on_logits, "aux_out")
    assert [(b.loss.name, b.loss.inside_forward, b.whole) for b in batches] == [
        ("cross_entropy", False, True)
    ] * 2
    assert not run.meta.get("unavailable") and not run.meta.get("disabled")
    assert set(run.table("hessian").step) == {3, 7}


def test_the_loss_call_plus_the_returned_scalar_is_said_as_several_terms(runs_dir, capsys):
    run, batches = _train(runs_dir, _ce_plus_aux, "aux_out")
    assert [b.whole for b in batches] == [False, False]
    why = "the training loss is not one loss call (several terms)"
    assert all(w.startswith(why) for w in run.meta["unavailable"].values())
    assert capsys.readouterr().err.count(why) == 1
