"""Real-style training scripts, plain vs ``gradlens watch``: the script's output and final
weights are unchanged, and the run holds the numbers the script computed itself."""

from __future__ import annotations

import numpy as np
import pytest

from tests.clients.harness import assert_steps, assert_unchanged, layer_names, run_pair, scalar

pytestmark = pytest.mark.slow


def test_nanogpt_style(tmp_path):
    pair = run_pair(tmp_path, "nanogpt_style.py")
    assert_unchanged(pair)
    assert layer_names(pair.run) == set(pair.trace["names"])  # tied lm_head: one tensor
    assert_steps(pair, "loss")
    assert_steps(pair, "grad_norm")  # before clipping, not the flat 1.0 after it
    _, clipped = scalar(pair.run, "grad_norm_clipped")
    np.testing.assert_allclose(clipped, np.minimum(pair.trace["grad_norm"], 1.0), rtol=1e-4)


def test_nanogpt_style_compiled_bf16(tmp_path):
    pair = run_pair(
        tmp_path,
        "nanogpt_style.py",
        "--compile", "aot_eager", "--dtype", "bfloat16", "--iters", "4",
        watch=("--probes", "standard", "--probe", "hessian.every=2", "--probe", "hessian.k=2",
               "--probe", "ghost.every=2", "--probe", "collapse.every=100"),
    )  # fmt: skip
    assert_unchanged(pair)
    assert_steps(pair, "loss", rtol=1e-4)
    assert_steps(pair, "grad_norm", rtol=1e-4)
    hessian = pair.run.table("hessian")
    assert set(hessian.step) == {1, 3}  # the probe replays the uncompiled module
    assert pair.run.meta["unavailable"]["softmax signals"].startswith("the loss is computed")


def test_examples_style_manual_sgd_and_torch_save(tmp_path):
    pair = run_pair(tmp_path, "examples_style.py")
    assert_unchanged(pair)
    assert "reloaded RNNModel" in pair.watched.stdout
    assert layer_names(pair.run) == set(pair.trace["names"])
    assert_steps(pair, "loss")
    assert_steps(pair, "grad_norm")
    # nn.NLLLoss on the model's log_softmax: the shift-invariant softmax stats, no log Z
    stats = pair.run.table("softmax").pivot_table(
        index="step", columns="metric", values="value", dropna=False
    )
    assert list(stats.index) == [0] and stats.num_samples[0] > 0
    assert stats.mean_logit_gap[0] > 0 and 0 <= stats.accuracy[0] <= 1
    assert stats.log_z_mean.isna().all() and stats.logit_norm.isna().all()


def test_ema_deepcopy_pickle(tmp_path):
    pair = run_pair(tmp_path, "ema_deepcopy.py")
    assert_unchanged(pair)
    assert layer_names(pair.run) == set(pair.trace["names"])
    assert_steps(pair, "loss")
    assert_steps(pair, "grad_norm")


def test_lbfgs_closure_recorded_at_its_own_step(tmp_path):
    pair = run_pair(tmp_path, "lbfgs_closure.py")
    assert_unchanged(pair)
    assert layer_names(pair.run) == set(pair.trace["names"])
    assert_steps(pair, "loss")
    assert_steps(pair, "grad_norm")


def test_gan_two_optimizers(tmp_path):
    pair = run_pair(tmp_path, "gan_two_optimizers.py")
    assert_unchanged(pair)
    assert layer_names(pair.run) == set(pair.trace["names"])
    for metric in ("loss", "grad_norm", "loss@2", "grad_norm@2"):
        assert_steps(pair, metric)


def test_forward_forward_layers_trained_in_turn(tmp_path):
    pair = run_pair(tmp_path, "forward_forward.py")
    assert_unchanged(pair)
    assert layer_names(pair.run) == set(pair.trace["names"])
    assert_steps(pair, "loss")  # every step of every layer on the run's curve
    assert_steps(pair, "grad_norm")
    assert pair.run.steps == len(pair.trace["loss"])


def test_accumulation_clipping_cosine(tmp_path):
    pair = run_pair(tmp_path, "accum_clip_cosine.py")
    assert_unchanged(pair)
    assert layer_names(pair.run) == set(pair.trace["names"])
    assert_steps(pair, "loss")
    assert_steps(pair, "grad_norm")
    assert_steps(pair, "clip_coef", rtol=1e-4)


def test_compiled_optimizer_step_and_scheduler(tmp_path):
    """The recipe's ``opt.step(); sched.step()`` inside ``torch.compile``: no hook runs there,
    so the steps are recorded from the end of backward once the weights are seen to move
    unseen twice; from the third step on, loss, pre-step gradient norm and the lr the step used
    are the script's, and probes (which restore weights in place) leave the training as it is."""
    pair = run_pair(
        tmp_path,
        "compiled_optimizer.py", "--backend", "aot_eager",
        watch=("--probes", "standard", "--probe", "hessian.every=2", "--probe", "ghost.every=2"),
    )  # fmt: skip
    assert_unchanged(pair)  # probes wait for the backward's end: the script's graph is live
    assert set(pair.run.table("hessian").step) == {3, 5, 7}
    assert layer_names(pair.run) == set(pair.trace["names"])
    assert "step hooks" in pair.run.meta["unavailable"]
    for metric in ("loss", "grad_norm", "lr"):
        steps, values = scalar(pair.run, metric)
        assert steps == list(range(2, 8)), metric
        np.testing.assert_allclose(values, pair.trace[metric][2:], rtol=1e-5, err_msg=metric)
