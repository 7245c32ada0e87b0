"""The Lens API against per-step oracles computed in the training loop itself; its arguments,
its exit paths (exceptions, ``sys.exit``) and how it reads learning rates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradlens


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


def _data(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 6, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()


def _norms(tensors):
    return [t.detach().double().norm().item() for t in tensors]


def _pivot(run, table, metric):
    df = run.table(table, filters=[("metric", "==", metric)])
    index = "layer" if table == "layers" else "index"
    return df.pivot(index="step", columns=index, values="value")


def test_exact_per_layer_values_and_scalars(runs_dir):
    model, (x, y) = _model(), _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    names = [n for n, _ in model.named_parameters()]
    params = list(model.parameters())
    oracle = {"grad": [], "param": [], "update": [], "loss": [], "lr": []}
    with gradlens.Lens(model, opt, runs_dir=runs_dir, name="exact", every=5, param_every=1) as lens:
        for step in range(12):
            for group in opt.param_groups:
                group["lr"] = 0.1 / (1 + step)
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            before = [p.detach().clone() for p in params]
            oracle["grad"].append(_norms(p.grad for p in params))
            oracle["param"].append(_norms(before))
            oracle["loss"].append(loss.item())
            oracle["lr"].append(0.1 / (1 + step))
            opt.step()
            oracle["update"].append(_norms(p - b for p, b in zip(params, before)))
    run = gradlens.open_run(lens.run_dir)
    assert run.status == "finished" and run.steps == 12
    for table_metric, key in [
        ("grad_norm", "grad"),
        ("param_norm", "param"),
        ("update_norm", "update"),
    ]:
        got = _pivot(run, "layers", table_metric)[names].to_numpy()
        np.testing.assert_allclose(got, np.array(oracle[key]), rtol=2e-6, atol=1e-7)
    ratio = _pivot(run, "layers", "update_ratio")[names].to_numpy()
    np.testing.assert_allclose(
        ratio, np.array(oracle["update"]) / np.array(oracle["param"]), rtol=1e-5
    )
    scalars = run.table("scalars")
    loss = scalars[scalars.metric == "loss"].value.to_numpy()
    np.testing.assert_allclose(loss, oracle["loss"], rtol=1e-6)
    total = scalars[scalars.metric == "grad_norm"].value.to_numpy()
    np.testing.assert_allclose(total, np.linalg.norm(np.array(oracle["grad"]), axis=1), rtol=1e-5)
    lr = scalars[scalars.metric == "lr"].value.to_numpy()
    np.testing.assert_allclose(lr, oracle["lr"])
    assert (_pivot(run, "layers", "nonfinite").to_numpy() == 0).all()
    steps = scalars[scalars.metric == "step_time"].step.tolist()
    assert steps == list(range(1, 12))  # step 0 has no previous step to time against
    assert run.table("events").empty


def test_gradient_accumulation_reads_once_per_optimizer_step(runs_dir):
    model, (x, y) = _model(), _data()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    params = list(model.parameters())
    grads, losses = [], []
    with gradlens.Lens(model, opt, runs_dir=runs_dir, every=3) as lens:
        for _ in range(5):
            opt.zero_grad()
            total = 0.0
            for chunk in range(4):
                part = slice(chunk * 16, chunk * 16 + 16)
                loss = F.cross_entropy(model(x[part]), y[part]) / 4
                loss.backward()
                total += loss.item()
            grads.append(np.linalg.norm(_norms(p.grad for p in params)))
            losses.append(total)
            opt.step()
    run = gradlens.open_run(lens.run_dir)
    scalars = run.table("scalars")
    assert run.steps == 5
    np.testing.assert_allclose(scalars[scalars.metric == "grad_norm"].value, grads, rtol=1e-5)
    np.testing.assert_allclose(scalars[scalars.metric == "loss"].value, losses, rtol=1e-5)
    samples = scalars[scalars.metric == "samples_per_s"]
    step_time = scalars[scalars.metric == "step_time"].set_index("step").value
    np.testing.assert_allclose(samples.value * step_time[samples.step].to_numpy(), 64, rtol=1e-6)


@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused"])
def test_grad_scaler_true_magnitudes_and_skipped_steps(runs_dir, fused):
    model, (x, y) = _model(), _data()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, fused=fused)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    params = list(model.parameters())
    true_norms = []
    with gradlens.Lens(model, opt, runs_dir=runs_dir, param_every=1) as lens:
        for step in range(6):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            if step == 3:
                loss = loss * float("inf")  # overflow: GradScaler skips this step
            scale = scaler.get_scale()
            scaler.scale(loss).backward()
            true_norms.append([n / scale for n in _norms(p.grad for p in params)])
            scaler.step(opt)
            scaler.update()
    run = gradlens.open_run(lens.run_dir)
    assert run.steps == 6
    names = [n for n, _ in model.named_parameters()]
    got = _pivot(run, "layers", "grad_norm")[names].to_numpy()
    ok = [0, 1, 2, 4, 5]
    np.testing.assert_allclose(got[ok], np.array(true_norms)[ok], rtol=1e-5)
    skipped = _pivot(run, "scalars", "skipped")[0].tolist()
    assert skipped == [0, 0, 0, 1, 0, 0]
    updates = _pivot(run, "layers", "update_norm")
    assert (updates.loc[3] == 0).all() and (updates.loc[4] > 0).all()
    amp = _pivot(run, "scalars", "amp_scale")[0].tolist()
    assert amp[:4] == [2.0**12] * 4 and amp[4] == 2.0**11  # backed off after the skip
    loss = _pivot(run, "scalars", "loss")[0]
    assert 0.5 < loss[0] < 2.0  # the unscaled loss, not loss × 4096
    events = run.table("events")
    assert events[["step", "kind"]].values.tolist() == [[3, "skipped_step"]]


def test_manual_sgd_without_optimizer(runs_dir):
    model, (x, y) = _model(), _data()
    lr = 0.05
    params = list(model.parameters())
    grads = []
    with gradlens.Lens(model, runs_dir=runs_dir, every=4) as lens:
        for _ in range(7):
            model.zero_grad()
            F.cross_entropy(model(x), y).backward()
            grads.append(_norms(p.grad for p in params))
            with torch.no_grad():
                for p in params:
                    p.data.add_(p.grad, alpha=-lr)
    run = gradlens.open_run(lens.run_dir)
    assert run.steps == 7
    names = [n for n, _ in model.named_parameters()]
    got = _pivot(run, "layers", "grad_norm")[names].to_numpy()
    np.testing.assert_allclose(got, grads, rtol=1e-5)
    # The update after step t is lr * g_t, seen at step t+1 (or at close for the last step).
    updates = _pivot(run, "layers", "update_norm")[names].to_numpy()
    np.testing.assert_allclose(updates, lr * np.array(grads), rtol=1e-4)


def test_nonfinite_gradient_event_names_the_layer(runs_dir):
    model, (x, y) = _model(), _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradlens.Lens(model, opt, runs_dir=runs_dir) as lens:
        for step in range(30):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            if step == 25:
                model[2].weight.grad[0, 0] = float("nan")
                model[2].weight.grad[1, 1] = float("inf")
            opt.step()
            if step == 25:
                with torch.no_grad():  # keep training alive for the rest of the test
                    model[2].weight.nan_to_num_(0.0, 0.0, 0.0)
    run = gradlens.open_run(lens.run_dir)
    events = run.table("events")
    bad = events[events.kind == "nonfinite_grad"]
    assert bad[["step", "layer", "value"]].values.tolist() == [[25, "2.weight", 2.0]]
    layers = run.table("layers", filters=[("metric", "==", "nonfinite"), ("step", "==", 25)])
    assert dict(zip(layers.layer, layers.value)) == {
        "0.weight": 0,
        "0.bias": 0,
        "2.weight": 2,
        "2.bias": 0,
    }


def test_lens_rejects_bad_arguments(runs_dir):
    with pytest.raises(ValueError, match="every"):
        gradlens.Lens(every=0)
    with pytest.raises(ValueError, match="probes"):
        gradlens.Lens(probes="expensive")
    with pytest.raises(ValueError, match="updates_from"):
        gradlens.Lens(updates_from="nowhere")
    with pytest.raises(TypeError, match="model"):
        gradlens.Lens(model="not a model")


def test_exception_marks_run_failed_and_keeps_rows(runs_dir):
    model, (x, y) = _model(), _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    lens = gradlens.Lens(model, opt, runs_dir=runs_dir, name="boom")
    with pytest.raises(RuntimeError, match="boom"), lens:
        for step in range(10):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            if step == 6:
                raise RuntimeError("boom")
    run = gradlens.open_run(lens.run_dir)
    assert run.status == "failed" and "boom" in run.meta["error"]
    assert run.steps == 7


@pytest.mark.parametrize("code,status", [(0, "finished"), (None, "finished"), (3, "failed")])
def test_sys_exit_inside_a_lens_sets_the_status_from_its_code(runs_dir, code, status):
    lens = gradlens.Lens(nn.Linear(2, 2), runs_dir=runs_dir, name="exit")
    with pytest.raises(SystemExit), lens:
        raise SystemExit(code)
    assert gradlens.open_run(lens.run_dir).status == status


def test_tensor_learning_rate_on_the_cpu_is_read_per_step(runs_dir):
    """A scheduler updates a tensor lr in place: each step records the value it had then."""
    model, (x, y) = _model(), _data()
    opt = torch.optim.Adam(model.parameters(), lr=torch.tensor(0.1))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    with gradlens.Lens(model, opt, runs_dir=runs_dir) as lens:
        for _ in range(4):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
    lr = gradlens.open_run(lens.run_dir).table("scalars", filters=[("metric", "==", "lr")])
    np.testing.assert_allclose(lr.value, [0.1, 0.05, 0.025, 0.0125])


def test_sampled_parameter_norms_and_softmax(runs_dir):
    """Defaults: gradient norms every step; ‖θ‖, ‖Δθ‖ every 10th step; softmax every 20th."""
    model, (x, y) = _model(), _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradlens.Lens(model, opt, runs_dir=runs_dir, every=7) as lens:
        for _ in range(25):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    run = gradlens.open_run(lens.run_dir)
    steps = {m: sorted(set(run.table("layers", filters=[("metric", "==", m)]).step))
             for m in ("grad_norm", "param_norm", "update_norm", "update_ratio")}  # fmt: skip
    assert steps["grad_norm"] == list(range(25))
    assert steps["param_norm"] == steps["update_norm"] == steps["update_ratio"] == [0, 10, 20]
    softmax = run.table("softmax", filters=[("metric", "==", "num_samples")])
    assert sorted(softmax.step) == [0, 20]


@pytest.mark.parametrize("path", ["cpu", "accelerator"])
def test_dispatch_count_per_step_is_flat_in_the_number_of_tensors(runs_dir, monkeypatch, path):
    """The capture's cost floor, counted (deterministic): extra aten ops per optimizer step
    with the default capture, the same for 4 and for 34 parameter tensors. ``accelerator``
    runs, on the CPU, the code an accelerator runs (no BLAS norms of large tensors, no exact
    non-finite counts; see bench/hostcost.py), with tensors large enough for the BLAS path."""
    from gradlens.capture.cost import DispatchCount
    from gradlens.capture.norms import NormSignal
    from gradlens.functional.norms import NormPlan

    width = 16
    if path == "accelerator":
        monkeypatch.setattr(NormPlan, "BLAS_MIN_NUMEL", 1 << 62)
        monkeypatch.setattr(NormSignal, "CPU_COUNTS", False)
        width = 256  # 65,536 weights: the CPU path would take a BLAS dot per tensor

    def launches(layers: int, watched: bool, steps: int = 40) -> float:
        torch.manual_seed(0)
        hidden = [nn.Linear(width, width) for _ in range(layers)]
        model = nn.Sequential(*hidden, nn.Linear(width, 3))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
        x, y = torch.randn(32, width), torch.randint(0, 3, (32,))
        # (no flush by the clock inside the window: a loaded machine would count its copy)
        lens = gradlens.Lens(runs_dir=runs_dir, flush_secs=3600) if watched else None
        if lens:
            lens.start()
        for _ in range(2):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        count = DispatchCount()
        with count:
            for _ in range(steps):
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.step()
        if lens:
            lens.close()
        return count.launches / steps

    extra = [launches(n, True) - launches(n, False) for n in (1, 16)]
    assert extra[0] == pytest.approx(extra[1], abs=0.1)
    assert extra[0] <= 12


def test_lazy_modules_with_the_optimizer_made_before_the_dry_run(runs_dir):
    """``nn.LazyLinear`` parameters are uninitialized when the optimizer takes them (the
    model's owner is found then): they are named and measured once the first forward has
    materialized them (finding the owner used to read their size and switch model calls off)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.LazyLinear(16), nn.ReLU(), nn.LazyLinear(3))
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    norms = []
    with gradlens.Lens(runs_dir=runs_dir) as lens:
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        model(x[:1])  # the dry run
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            norms.append([p.grad.double().norm().item() for p in model.parameters()])
            opt.step()
    run = gradlens.open_run(lens.run_dir)
    assert not run.meta.get("disabled")
    grads = run.table("layers", filters=[("metric", "==", "grad_norm")])
    grads = grads.pivot(index="step", columns="layer", values="value")
    names = [n for n, _ in model.named_parameters()]
    np.testing.assert_allclose(grads[names].to_numpy(), norms, rtol=1e-6)


class _WordLM(nn.Module):
    """pytorch/examples word_language_model's RNN model: (sequence, batch) token ids."""

    def __init__(self, batch_first: bool, kind: str) -> None:
        super().__init__()
        self.encoder = nn.Embedding(50, 16)
        if kind == "lstm":
            self.rnn: nn.Module = nn.LSTM(16, 16, batch_first=batch_first)
        else:
            layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=batch_first)
            self.rnn = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.decoder = nn.Linear(16, 50)
        self.kind = kind

    def forward(self, ids):
        h = self.rnn(self.encoder(ids))
        return self.decoder(h[0] if self.kind == "lstm" else h)


@pytest.mark.parametrize("kind", ["lstm", "transformer"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_samples_of_sequence_first_models_are_the_batch(runs_dir, batch_first, kind):
    """(35, 4) token ids into a sequence-first model are 4 samples of 35 tokens."""
    torch.manual_seed(0)
    model = _WordLM(batch_first, kind)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    shape = (4, 35) if batch_first else (35, 4)
    with gradlens.Lens(runs_dir=runs_dir) as lens:
        for _ in range(3):
            ids = torch.randint(0, 50, shape)
            opt.zero_grad()
            F.cross_entropy(model(ids).reshape(-1, 50), ids.reshape(-1)).backward()
            opt.step()
    run = gradlens.open_run(lens.run_dir)
    scalars = run.table("scalars").pivot(index="step", columns="metric", values="value")
    done = scalars.dropna(subset=["step_time"])
    np.testing.assert_allclose(done.samples_per_s * done.step_time, 4, rtol=1e-6)
    np.testing.assert_allclose(done.tokens_per_s * done.step_time, 140, rtol=1e-6)
    assert run.meta["hyperparameters"]["batch_size"] == 4


@pytest.mark.skipif(not hasattr(torch.optim, "Adafactor"), reason="torch without Adafactor")
def test_an_optimizer_with_settings_that_are_not_numbers_is_recorded(runs_dir):
    """Adafactor's ``eps`` is ``(None, 1e-3)``: reading it for meta.json switched all capture
    off (``float(None)``); now it is recorded as JSON (``[null, 0.001]``)."""
    model, (x, y) = _model(), _data()
    opt = torch.optim.Adafactor(model.parameters(), lr=1e-2)
    with gradlens.Lens(runs_dir=runs_dir) as lens:
        for _ in range(4):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    run = gradlens.open_run(lens.run_dir)
    assert not run.meta.get("disabled")
    assert sorted(run.table("scalars", filters=[("metric", "==", "loss")]).step) == [0, 1, 2, 3]
    settings = run.meta["hyperparameters"]
    assert settings["optimizer"] == "Adafactor" and settings["lr"] == 1e-2
    assert settings["eps"] == [None, 1e-3]


def test_a_sweep_frees_each_model_it_leaves_and_probes_follow_the_new_one(runs_dir):
    """A sweep or k-fold loop trains a new model and optimizer each time in one process: the
    run records them all, but lets each dropped model go (it kept every one: a fold's worth
    of memory per fold) and the probes replay the model trained now, not the first."""
    import gc
    import weakref

    dropped = []
    options = {"hessian": {"every": 4, "k": 1, "trace": False}}
    with gradlens.Lens(runs_dir=runs_dir, probe_options=options) as lens:
        for fold in range(3):
            model = _model(fold)
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            for _ in range(4):
                x, y = _data(fold)
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.step()
            if fold:  # the previous fold's model is gone once this one trains
                gc.collect()
                assert all(ref() is None for ref in dropped)
            assert lens.probe_set.batches[0].module is model
            dropped.append(weakref.ref(model))
            del model, opt
    run = gradlens.open_run(lens.run_dir)
    assert sorted(run.table("scalars", filters=[("metric", "==", "loss")]).step) == list(range(12))
    assert run.meta["layers"] == 12 and len(run.meta["optimizers"]) == 3
    assert run.meta["phases"] == [4, 8]  # where each new model's optimizer took over
    assert "probe_scope" not in run.meta  # the old models' tensors are not "trained" any more
    assert sorted(set(run.table("hessian").step)) == [3, 7, 11]


def _ode(model, opt, x, y):  # a neural ODE's Euler stages: one module, four calls, one batch
    opt.zero_grad()
    h = x
    for _ in range(4):
        h = h + 0.25 * model(h)
    F.mse_loss(h, y).backward()
    opt.step()


def _accumulated(model, opt, x, y):  # four micro-batches of 4, each with its backward
    opt.zero_grad()
    for part in range(4):
        F.mse_loss(model(x[part::4]), y[part::4]).backward()
    opt.step()


def _two_sets(model, opt, x, y):  # a PINN: interior and boundary points, one backward
    opt.zero_grad()
    (F.mse_loss(model(x), y) + model(x[:3]).square().mean()).backward()
    opt.step()


def _line_search(model, opt, x, y):  # LBFGS evaluates the batch again and again
    def closure():
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        return loss

    opt.step(closure)


@pytest.mark.parametrize(
    ("step_fn", "samples"), [(_ode, 16), (_accumulated, 16), (_two_sets, 19), (_line_search, 16)]
)
def test_samples_per_step_count_each_batch_once(runs_dir, step_fn, samples):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2))
    if step_fn is _line_search:
        opt = torch.optim.LBFGS(model.parameters(), max_iter=5)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 2), torch.randn(16, 2)
    with gradlens.Lens(runs_dir=runs_dir) as lens:
        for _ in range(4):
            step_fn(model, opt, x, y)
    scalars = _pivot(gradlens.open_run(lens.run_dir), "scalars", "samples_per_s")
    rate = scalars[0].dropna()
    times = _pivot(gradlens.open_run(lens.run_dir), "scalars", "step_time")[0].loc[rate.index]
    assert len(rate) >= 3
    np.testing.assert_allclose(rate * times, samples, rtol=1e-6)
