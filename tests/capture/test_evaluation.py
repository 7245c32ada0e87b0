"""Evaluation loss and accuracy from the script's own loss calls, against the averages the
script computes itself; training unchanged bit for bit."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradlens
from gradlens.capture.evaluation import METRICS, EvalMetrics, eval_term
from gradlens.instrument import interception
from tests.conftest import cli_env, gradlens_cli

# An MNIST-style script (pytorch/examples): DataLoaders, dropout, a validation loop summing
# nll_loss(reduction='sum') and a test loop averaging nn.CrossEntropyLoss batch means weighted
# by batch size; uneven last batches. Run in-process (``train``) and under ``gradlens watch``.
SCRIPT = '''
import json
import re
import sys
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def dataset(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long())


def evaluate_sum(model, loader, mode):
    model.eval()
    total, correct = 0.0, 0
    with mode():
        for x, y in loader:
            out = model(x)
            total += F.nll_loss(F.log_softmax(out, 1), y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
    n = len(loader.dataset)
    return total / n, correct / n


def evaluate_mean(model, loader, mode):
    model.eval()
    criterion = nn.CrossEntropyLoss()
    total, correct = 0.0, 0
    with mode():
        for x, y in loader:
            out = model(x)
            total += criterion(out, y).item() * len(y)
            correct += (out.argmax(1) == y).sum().item()
    n = len(loader.dataset)
    return total / n, correct / n


def train(mode="no_grad", evaluate=True, epochs=2, bf16=False):
    """Returns (final weights, one dict per evaluation: step, val and test loss/accuracy)."""
    mode = {
        "no_grad": torch.no_grad,
        "inference_mode": torch.inference_mode,
        "grad_on": nullcontext,  # model.eval() without no_grad: a common slip
    }[mode]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    train_loader = DataLoader(dataset(96, 2), batch_size=16, shuffle=True, generator=g)
    val_loader = DataLoader(dataset(50, 3), batch_size=16)
    test_loader = DataLoader(dataset(37, 4), batch_size=10)
    steps, history = 0, []

    def evaluation():
        val = evaluate_sum(model, val_loader, mode)
        test = evaluate_mean(model, test_loader, mode)
        history.append({"step": max(steps - 1, 0), "val": val, "test": test})

    if evaluate:
        evaluation()  # before the first step
    for _ in range(epochs):
        model.train()
        for x, y in train_loader:
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            steps += 1
        if evaluate:
            evaluation()
    return {k: v.clone() for k, v in model.state_dict().items()}, history


if __name__ == "__main__":
    out = sys.argv[1]
    weights, history = train(sys.argv[2])
    torch.save(weights, out + ".pt")
    with open(out + ".json", "w") as f:
        json.dump(history, f)
'''


def _script() -> dict:
    namespace: dict = {"__name__": "eval_script"}
    exec(compile(SCRIPT, "eval_script", "exec"), namespace)
    return namespace


def _eval_rows(run: gradlens.Run):
    df = run.table("scalars")
    return df[df.metric.isin(METRICS)].sort_values(["step", "index", "metric"])


def _assert_matches(run: gradlens.Run, history: list[dict], rtol: float = 1e-6) -> None:
    """Rows at each evaluation's step: index 0 = the validation loader, 1 = the test loader."""
    rows = _eval_rows(run)
    assert sorted(set(rows.step)) == [h["step"] for h in history]  # one evaluation per step
    for h in history:
        at = rows[rows.step == h["step"]]
        for index, (key, size) in enumerate((("val", 50), ("test", 37))):
            phase = at[at["index"] == index].set_index("metric").value
            np.testing.assert_allclose(phase["eval_loss"], h[key][0], rtol=rtol)
            np.testing.assert_allclose(phase["eval_accuracy"], h[key][1], rtol=rtol)
            assert phase["eval_samples"] == size
        assert set(at["index"]) == {0, 1}


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "grad_on"])
def test_eval_loss_equals_the_scripts_own_average(runs_dir, mode):
    train = _script()["train"]
    plain_weights, plain_history = train(mode)
    with gradlens.Lens(runs_dir=runs_dir, name=mode) as lens:
        weights, history = train(mode)
    assert history == plain_history  # what the script saw is unchanged
    for key, value in plain_weights.items():
        assert torch.equal(value, weights[key]), key
    run = gradlens.open_run(lens.run_dir)
    assert run.steps == 12 and [h["step"] for h in history] == [0, 5, 11]
    _assert_matches(run, history)
    assert not hasattr(torch.utils.data.DataLoader.__iter__, "__wrapped__")  # patch removed


def test_half_precision_training_losses_are_not_evaluations(runs_dir):
    """bf16 autocast: the softmax stats' own cross-entropy (in the logits' dtype, under
    no_grad) is gradlens's call, not an evaluation of the script's."""
    train = _script()["train"]
    plain_weights, plain_history = train(bf16=True)
    with gradlens.Lens(runs_dir=runs_dir, softmax_every=1) as lens:
        weights, history = train(bf16=True)
    assert history == plain_history
    for key, value in plain_weights.items():
        assert torch.equal(value, weights[key]), key
    run = gradlens.open_run(lens.run_dir)
    assert len(run.table("softmax", filters=[("metric", "==", "num_samples")])) == 12
    _assert_matches(run, history)


def test_no_evaluation_no_rows(runs_dir):
    train = _script()["train"]
    with gradlens.Lens(runs_dir=runs_dir, name="train-only") as lens:
        train(evaluate=False)
    run = gradlens.open_run(lens.run_dir)
    assert run.steps == 12
    assert _eval_rows(run).empty


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["no_grad", "grad_on"])
def test_through_watch(tmp_path, mode):
    script = tmp_path / "mnist_style.py"
    script.write_text(SCRIPT)
    plain = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "plain"), mode],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=300,
    )
    assert plain.returncode == 0, plain.stderr
    watched = gradlens_cli(
        "watch", "--runs-dir", str(tmp_path / "runs"), "--name", "mnist", "--status", "off",
        str(script), str(tmp_path / "watched"), mode,
    )  # fmt: skip
    assert watched.returncode == 0, watched.stderr
    assert "disabled" not in watched.stderr, watched.stderr
    history = json.loads((tmp_path / "watched.json").read_text())
    assert history == json.loads((tmp_path / "plain.json").read_text())
    plain_weights, weights = torch.load(tmp_path / "plain.pt"), torch.load(tmp_path / "watched.pt")
    for key, value in plain_weights.items():
        assert torch.equal(value, weights[key]), key
    _assert_matches(gradlens.open_run(tmp_path / "runs" / "mnist"), history)


# -- loss inside forward, no DataLoader (nanoGPT) -----------------------------------------------


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 11, width: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.head = nn.Linear(width, vocab)

    def forward(self, idx, targets=None):
        logits = self.head(self.embed(idx))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss


def test_loss_inside_forward_estimate_loss(runs_dir):
    """nanoGPT's ``estimate_loss`` under ``@torch.no_grad()``: both splits, equal token counts
    and no DataLoader, so one phase whose loss is the mean of every batch loss; ``ignore_index``
    targets are left out of the mean, the accuracy and the count."""
    torch.manual_seed(0)
    data = torch.randint(0, 11, (400,))

    def get_batch():
        ix = torch.randint(len(data) - 9, (4,))
        x = torch.stack([data[i : i + 8] for i in ix])
        y = torch.stack([data[i + 1 : i + 9] for i in ix])
        y[:, 0] = -1  # e.g. padding
        return x, y

    @torch.no_grad()
    def estimate_loss():
        model.eval()
        losses, correct = [], 0
        for _split in ("train", "val"):
            for _ in range(3):
                x, y = get_batch()
                logits, loss = model(x, y)
                losses.append(loss.item())
                correct += ((logits.argmax(-1) == y) & (y != -1)).sum().item()
        model.train()
        return float(np.mean(losses)), correct / (6 * 4 * 7)

    model = TinyLM()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    expected = {}
    with gradlens.Lens(runs_dir=runs_dir, name="lm") as lens:
        for it in range(6):
            if it % 3 == 0:
                expected[max(it - 1, 0)] = estimate_loss()
            x, y = get_batch()
            _, loss = model(x, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        expected[5] = estimate_loss()  # after the last step: flushed at close
    rows = _eval_rows(gradlens.open_run(lens.run_dir))
    assert set(rows["index"]) == {0}
    assert sorted(set(rows.step)) == [0, 2, 5]
    for step, (loss, accuracy) in expected.items():
        at = rows[rows.step == step].set_index("metric").value
        np.testing.assert_allclose(at["eval_loss"], loss, rtol=1e-6)
        np.testing.assert_allclose(at["eval_accuracy"], accuracy, rtol=1e-6)
        assert at["eval_samples"] == 6 * 4 * 7


def test_which_calls_are_evaluations(runs_dir):
    """Gradients off: an evaluation. A model trained in eval mode (its loss backpropagated) is
    not evaluated; a call with gradients on after an eval-mode forward that no backward
    follows (``model.eval()`` without ``no_grad``) is; gradlens's own calls are not the
    script's; a training-mode call is not."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    with gradlens.Lens(model, opt, runs_dir=runs_dir, name="grad") as lens:
        model.eval()
        for _ in range(2):  # trained in eval mode (frozen dropout/BN statistics)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        with torch.no_grad(), interception.suspended():
            F.cross_entropy(model(x), y)  # gradlens's own
        model.train()
        F.cross_entropy(model(x), y)  # training mode, never backpropagated: not evaluated
        model.eval()
        expected = [F.cross_entropy(model(x[:5]), y[:5]).item()]  # gradients on
        with torch.no_grad():
            expected.append(F.cross_entropy(model(x[5:]), y[5:]).item())
    rows = _eval_rows(gradlens.open_run(lens.run_dir))
    assert set(rows.step) == {1}  # after the last optimizer step
    rows = rows.set_index("metric").value
    np.testing.assert_allclose(rows["eval_loss"], (expected[0] * 5 + expected[1] * 3) / 8)
    assert rows["eval_samples"] == 8


def test_a_failing_eval_capture_leaves_training_alone(runs_dir, monkeypatch):
    monkeypatch.setenv("GRADLENS_STRICT", "0")

    def broken(*args):
        raise RuntimeError("boom")

    monkeypatch.setattr(EvalMetrics, "observe", broken)
    train = _script()["train"]
    plain_weights, _ = train(epochs=1)
    with gradlens.Lens(runs_dir=runs_dir, name="broken") as lens:
        weights, _ = train(epochs=1)
    for key, value in plain_weights.items():
        assert torch.equal(value, weights[key]), key
    run = gradlens.open_run(lens.run_dir)
    assert run.status == "finished" and run.steps == 6
    assert run.meta["disabled"] == {"eval metrics": "RuntimeError: boom"}


# -- one call's sums, against the loss function's own mean ---------------------------------------


def _cases():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, generator=g)
    y = torch.randint(0, 5, (7,), generator=g)
    y[2] = -100
    w = torch.rand(5, generator=g)
    p = torch.softmax(torch.randn(7, 5, generator=g), 1)
    r = torch.rand(7, 5, generator=g)
    seq = torch.randn(3, 5, 4, generator=g)  # (N, C, d1)
    seq_y = torch.randint(0, 5, (3, 4), generator=g)
    seq_y[0, :2] = 7
    return [
        ("cross_entropy", (x, y), {}),
        ("cross_entropy", (x, y), {"weight": w}),
        ("cross_entropy", (x, y), {"weight": w, "label_smoothing": 0.1}),
        ("cross_entropy", (seq, seq_y), {"ignore_index": 7}),
        ("cross_entropy", (x[0], y[0]), {}),  # unbatched
        ("cross_entropy", (x, p), {"weight": w}),  # class probabilities
        ("cross_entropy", (x, p), {"label_smoothing": 0.2}),
        ("nll_loss", (x.log_softmax(1), y), {"weight": w}),
        ("mse_loss", (x, r), {}),
        ("mse_loss", (x, r[0]), {}),  # broadcast target
        ("mse_loss", (x, r), {"weight": p}),
        ("l1_loss", (x, r), {"weight": p}),
        ("huber_loss", (x, r), {"weight": p, "delta": 0.5}),
        ("smooth_l1_loss", (x, r), {"beta": 0.5}),
        ("binary_cross_entropy", (p, r), {"weight": r}),
        ("binary_cross_entropy_with_logits", (x, r), {"pos_weight": w}),
        ("kl_div", (x.log_softmax(1), p), {}),
        ("kl_div", (x.log_softmax(1), p), {"reduction": "batchmean"}),
    ]


@pytest.mark.parametrize("case", _cases(), ids=lambda c: f"{c[0]}-{'-'.join(c[2])}")
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_sum_over_weight_is_the_functions_mean(case, reduction):
    name, args, kwargs = case
    fn = getattr(F, name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # broadcast target, kl_div 'mean'
        mean = fn(*args, **kwargs).double()
        if kwargs.get("reduction") != "batchmean":
            kwargs = {**kwargs, "reduction": reduction}
        value = fn(*args, **kwargs)
    loss_sum, weight, samples, correct, classified = eval_term(name, args, kwargs, value)
    assert loss_sum.dtype == torch.float64
    torch.testing.assert_close(loss_sum / weight, mean, rtol=1e-6, atol=0)
    if classified:
        x, y = args
        valid = y != kwargs.get("ignore_index", -100)
        hits = (x.argmax(1 if x.dim() > 1 else 0) == y) & valid
        assert (correct, classified) == (hits.sum(), valid.sum())
        assert samples == valid.sum()


def test_legacy_size_average_and_reduce():
    x, y = torch.randn(6, 3), torch.randn(6, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summed = F.mse_loss(x, y, size_average=False)
        loss_sum, weight, *_ = eval_term("mse_loss", (x, y, False), {}, summed)
        none = F.mse_loss(x, y, reduce=False)
        none_sum, none_weight, *_ = eval_term("mse_loss", (x, y), {"reduce": False}, none)
    assert loss_sum == summed.double() and weight == 18
    torch.testing.assert_close(none_sum, none.double().sum())
    assert none_weight == 18


def test_unreadable_calls_are_left_out():
    x = torch.randn(4, 3)
    assert eval_term("cross_entropy", (x,), {}, torch.tensor(1.0)) is None  # does not bind
    assert eval_term("nll_loss", (x, torch.rand(4, 3)), {}, torch.tensor(1.0)) is None
    assert eval_term("mse_loss", (x, x), {"reduction": "odd"}, torch.tensor(1.0)) is None
    assert eval_term("mse_loss", (x, x), {}, "not a tensor") is None


def test_phases_follow_loaders_and_an_empty_period_writes_nothing():
    jobs = []
    metrics = EvalMetrics(jobs.append)
    x, y = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0])
    metrics.loader_started()  # before any call: still phase 0
    metrics.flush()
    assert jobs == []
    for _ in range(2):
        metrics.observe("cross_entropy", (x, y), {}, F.cross_entropy(x, y), step=4)
    metrics.loader_started()
    metrics.loader_started()
    metrics.observe("cross_entropy", (x[:1], y[:1]), {}, F.cross_entropy(x[:1], y[:1]), 9)
    metrics.flush()
    rows = jobs[0]()["scalars"]
    got = {(m, i): v for m, i, v in zip(rows["metric"], rows["index"], rows["value"], strict=True)}
    assert set(rows["step"]) == {4}  # the step when the period's evaluation began
    np.testing.assert_allclose(got["eval_loss", 0], F.cross_entropy(x, y).item(), rtol=1e-6)
    assert got["eval_accuracy", 0] == 0.5 and got["eval_samples", 0] == 4
    assert got["eval_accuracy", 1] == 1.0 and got["eval_samples", 1] == 1
    metrics.flush()
    assert len(jobs) == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_host_sync_on_cuda():
    metrics = EvalMetrics(lambda job: None)
    x, y = torch.randn(64, 10, device="cuda"), torch.randint(0, 10, (64,), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.no_grad():
            metrics.observe("cross_entropy", (x, y), {}, F.cross_entropy(x, y), 0)
            metrics.loader_started()
            loss = F.cross_entropy(x, y, weight=torch.ones(10, device="cuda"), reduction="sum")
            metrics.observe("cross_entropy", (x, y), {"reduction": "sum"}, loss, 0)
        metrics.flush()
    finally:
        torch.cuda.set_sync_debug_mode(0)


@pytest.mark.slow
def test_nanogpt_client_under_watch(tmp_path):
    """The nanoGPT-style client: loss inside forward, autocast context, ``estimate_loss`` under
    ``@torch.no_grad()`` before iterations 0 and 4 (steps 0 and 3); eval_loss is what it
    prints."""
    from tests.clients.harness import assert_unchanged, run_pair

    pair = run_pair(tmp_path, "nanogpt_style.py")
    assert_unchanged(pair)
    printed = re.findall(r"step (\d+): val loss ([\d.]+)", pair.plain.stdout)
    rows = _eval_rows(pair.run)
    loss = rows[rows.metric == "eval_loss"]
    assert list(loss.step) == [max(int(it) - 1, 0) for it, _ in printed] == [0, 3]
    assert set(loss["index"]) == {0}
    np.testing.assert_allclose(loss.value, [float(v) for _, v in printed], atol=5e-5)
    samples = rows[rows.metric == "eval_samples"].value
    assert list(samples) == [2 * 4 * 16] * 2  # two batches of 4 × 16 tokens
