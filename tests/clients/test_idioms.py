"""Training-script idioms beyond ``test_clients.py``, plain vs ``gradlens watch``: the script's
output and final weights are unchanged, and the run holds the numbers the script computed
itself.

What gradlens records for a step is what was backpropagated since the previous optimizer step:
with several ``backward()`` calls (multi-task losses, ``retain_graph=True``, accumulation of
``loss / accum``) the step's ``loss`` is their sum; a gradient taken with
``torch.autograd.grad`` (a gradient penalty) is part of the loss only through what is
backpropagated; when the weights move in place between two backward calls (SAM) the step's
loss is the one before they moved. Parameters without a gradient on a step (an unused branch) read 0; parameters
that join the optimizer's steps later (unfrozen, ``add_param_group``) have no rows before.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.clients.harness import assert_steps, assert_unchanged, layer_names, run_pair, scalar

pytestmark = pytest.mark.slow

PROBES = (
    "--probes", "standard", "--probe", "hessian.every=2", "--probe", "hessian.k=2",
    "--probe", "ghost.every=2", "--probe", "collapse.every=3", "--probe", "landscape.every=4",
)  # fmt: skip


def _layer(run, metric: str):
    """steps × layers table of a per-layer metric."""
    df = run.table("layers", filters=[("metric", "==", metric)])
    return df.pivot(index="step", columns="layer", values="value")


@pytest.mark.parametrize("mode", ["add_group", "all_params"])
def test_finetune_unfreeze_mid_training(tmp_path, mode):
    pair = run_pair(tmp_path, "finetune_unfreeze.py", "--mode", mode)
    assert_unchanged(pair)
    assert layer_names(pair.run) == set(pair.trace["names"])
    assert_steps(pair, "loss")
    assert_steps(pair, "grad_norm")  # the backbone's gradient counts from its first step
    assert_steps(pair, "clip_coef", rtol=1e-4)  # a clip over frozen parameters, then all
    grads = _layer(pair.run, "grad_norm")
    backbone = [n for n in pair.trace["names"] if n.startswith("backbone.")]
    recorded = np.sqrt((grads[backbone].fillna(0.0) ** 2).sum(axis=1)).to_numpy()
    np.testing.assert_allclose(recorded, pair.trace["backbone_grad_norm"], rtol=1e-5, atol=1e-8)
    assert grads[backbone].loc[:3].isna().all().all()  # frozen: not recorded, not 0
    assert (grads["aux.weight"].loc[1::2] == 0).all()  # the unused branch: no gradient
    groups = {0, 1, 2} if mode == "add_group" else {0}
    assert set(pair.run.table("scalars", filters=[("metric", "==", "lr")])["index"]) == groups
    assert pair.run.meta["optimizers"][0]["param_groups"] == len(groups)


def test_wgan_gp_critic_steps_and_gradient_penalty(tmp_path):
    pair = run_pair(tmp_path, "wgan_gp.py")
    assert_unchanged(pair)
    assert layer_names(pair.run) == set(pair.trace["names"])
    for metric in ("loss", "grad_norm", "loss@2", "grad_norm@2"):
        assert_steps(pair, metric)  # the critic (n_critic steps per iteration) is the run


def test_multitask_several_backward_calls_per_step(tmp_path):
    pair = run_pair(tmp_path, "multitask_backward.py")
    assert_unchanged(pair)
    assert layer_names(pair.run) == set(pair.trace["names"])
    assert_steps(pair, "loss")  # the sum of the losses backpropagated in the step
    assert_steps(pair, "grad_norm")


def test_custom_loss_eval_in_inference_mode_and_plateau(tmp_path):
    pair = run_pair(tmp_path, "custom_loss_eval_plateau.py")
    assert_unchanged(pair)
    assert layer_names(pair.run) == set(pair.trace["names"])
    assert_steps(pair, "loss")  # no F.cross_entropy: the loss is what was backpropagated
    assert_steps(pair, "grad_norm")  # zero_grad(set_to_none=False)
    assert_steps(pair, "lr")  # ReduceLROnPlateau halving it
    steps, values = scalar(pair.run, "eval_loss")  # the F.cross_entropy of the eval pass
    evals = np.array(pair.trace["evals"])
    assert steps == evals[:, 0].astype(int).tolist()
    np.testing.assert_allclose(values, evals[:, 1], rtol=1e-5)


def test_optimizer_switched_between_phases(tmp_path):
    pair = run_pair(tmp_path, "optimizer_zoo.py")
    assert_unchanged(pair)
    assert layer_names(pair.run) == set(pair.trace["names"])
    assert_steps(pair, "loss")
    assert_steps(pair, "grad_norm")
    updates = _layer(pair.run, "update_norm")  # sampled steps, read for every optimizer
    total = np.sqrt((updates**2).sum(axis=1))
    expected = np.asarray(pair.trace["update_norm"])[total.index]
    np.testing.assert_allclose(total.to_numpy(), expected, rtol=1e-4)
    kinds = [o["optimizer"] for o in pair.run.meta["optimizers"]]
    assert kinds == ["Adagrad", "RMSprop", "SGD", "Adamax", "NAdam", "RAdam"]


def test_parametrized_weights_and_channels_last(tmp_path):
    pair = run_pair(tmp_path, "parametrized_conv.py")
    assert_unchanged(pair)
    assert layer_names(pair.run) == set(pair.trace["names"])  # ….parametrizations.weight.original0
    assert_steps(pair, "loss")
    assert_steps(pair, "grad_norm")
    grads = _layer(pair.run, "grad_norm")[pair.trace["names"]]
    np.testing.assert_allclose(grads.to_numpy(), pair.trace["layer_norms"], rtol=1e-5)


def test_onecycle_then_swa(tmp_path):
    pair = run_pair(tmp_path, "swa_onecycle.py")
    assert_unchanged(pair)
    assert layer_names(pair.run) == set(pair.trace["names"])  # not the AveragedModel's copy
    assert_steps(pair, "loss")
    assert_steps(pair, "grad_norm")
    assert_steps(pair, "lr")  # OneCycleLR, then SWALR


def test_regression_with_a_loss_module(tmp_path):
    pair = run_pair(tmp_path, "regression_mse.py")
    assert_unchanged(pair)
    assert layer_names(pair.run) == set(pair.trace["names"])
    assert_steps(pair, "loss")
    assert_steps(pair, "grad_norm")
    assert_steps(pair, "lr")


@pytest.mark.parametrize(
    "flags", [(), ("--reentrant",), ("--manual",), ("--reentrant", "--manual")]
)
def test_activation_checkpointing(tmp_path, flags):
    pair = run_pair(tmp_path, "activation_checkpointing.py", *flags)
    assert_unchanged(pair)
    assert layer_names(pair.run) == set(pair.trace["names"])
    assert_steps(pair, "loss")  # a reentrant backward inside backward is not a step
    assert_steps(pair, "grad_norm")
    assert pair.run.steps == len(pair.trace["loss"])


@pytest.mark.parametrize(
    "script,probes",
    [
        ("wgan_gp.py", PROBES),  # no F.* loss: the probes wait, one line each
        ("optimizer_zoo.py", PROBES),
        ("swa_onecycle.py", PROBES),
        ("sparse_complex.py", PROBES),  # sparse embedding gradients in the HVPs
        # probes over the recorder that replaced the first one at the unfreezing step
        # (collapse: see test_multitask_collapse_probe)
        ("finetune_unfreeze.py", (*PROBES, "--probe", "collapse.every=1000")),
    ],
)
def test_idioms_with_probes_unchanged(tmp_path, script, probes):
    pair = run_pair(tmp_path, script, watch=probes)
    assert_unchanged(pair)
    assert_steps(pair, "loss")
    assert_steps(pair, "grad_norm")


def test_regression_hessian_probe(tmp_path):
    # forward-over-reverse HVPs of F.mse_loss raise 'ZeroTensors are immutable' (torch.func,
    # pytorch#123996): the engine choice keeps double backward or finite differences
    pair = run_pair(tmp_path, "regression_mse.py", watch=PROBES)
    assert_unchanged(pair)
    hessian = pair.run.table("hessian")
    assert sorted(hessian.step.unique()) == [1, 3, 5, 7]
    engines = set(hessian[hessian.metric == "hvp_engine"]["layer"])
    assert engines and "forward_over_reverse" not in engines


def test_multitask_collapse_probe(tmp_path):
    pair = run_pair(tmp_path, "multitask_backward.py", watch=PROBES)
    assert_unchanged(pair)
    collapse = pair.run.table("collapse")  # the 3-class head, not the 1-output regression head
    assert set(collapse[collapse.metric == "num_classes"]["value"]) == {3.0}
    # one backward per task: the cross-entropy call is a part of the step's loss
    unavailable = pair.run.meta["unavailable"]
    assert set(unavailable) == {"probe hessian", "probe landscape"}
    assert "several terms" in pair.watched.stderr


def test_parametrized_ghost_probe(tmp_path):
    # weight_norm has no forward AD: the radius comes from two reverse passes
    pair = run_pair(tmp_path, "parametrized_conv.py", watch=PROBES)
    assert_unchanged(pair)
    ghost = pair.run.table("softmax", filters=[("metric", "==", "ghost_r")])
    assert sorted(ghost.step) == list(range(1, pair.run.steps, 2))


@pytest.mark.parametrize("context", ["spawn", "fork"])
def test_dataloader_worker_processes(tmp_path, context):
    """Workers started by ``spawn`` unpickle the script's Dataset and collate_fn from the
    script run as ``__main__``; forked ones drop gradlens's patches. Neither is a trainer:
    no worker runs (``gradlens.workers``) beside the script's."""
    pair = run_pair(tmp_path, "loader_workers.py", "--context", context)
    assert_unchanged(pair)
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["client"]
    assert layer_names(pair.run) == set(pair.trace["names"])
    assert_steps(pair, "loss")
    assert_steps(pair, "grad_norm")
    steps, eval_loss = scalar(pair.run, "eval_loss")
    assert steps == [5, 11]  # after each epoch's last optimizer step
    np.testing.assert_allclose(eval_loss, pair.trace["eval_loss"], rtol=1e-6)
    _, samples = scalar(pair.run, "samples_per_s")
    assert len(samples) == 11 and (samples > 0).all()  # the batches reached the model


@pytest.mark.parametrize("form", ["two-steps", "closure"])
def test_sam_two_backward_passes_per_step(tmp_path, form):
    """SAM moves the weights in place between its two backward passes: the step's loss is
    the one at w (what the script reports), not the sum with the ascent point's; the gradient
    norm is the one the base optimizer applies."""
    pair = run_pair(tmp_path, "sam_sharpness.py", "--form", form)
    assert_unchanged(pair)
    assert "no optimizer step is seen" not in pair.watched.stderr
    # step(closure): SGD steps inside SAM's step, which is the one recorded (no "@2" rows)
    recorded = [o["optimizer"] for o in pair.run.meta["optimizers"]]
    assert recorded == (["SAM"] if form == "closure" else ["SGD"])
    assert layer_names(pair.run) == set(pair.trace["names"])
    assert_steps(pair, "loss")
    assert_steps(pair, "grad_norm")


def test_lookahead_wrapper_records_the_wrapper_once(tmp_path):
    """The base optimizer steps inside the wrapper's step over the same parameters: one
    optimizer is recorded (the wrapper, whose Δθ includes the pull to the slow weights)."""
    pair = run_pair(tmp_path, "lookahead_wrapper.py")
    assert_unchanged(pair)
    assert [o["optimizer"] for o in pair.run.meta["optimizers"]] == ["Lookahead"]
    assert layer_names(pair.run) == set(pair.trace["names"])
    assert_steps(pair, "loss")
    assert_steps(pair, "grad_norm")
    metrics = set(pair.run.table("scalars", columns=["metric"]).metric)
    assert not any("@" in m for m in metrics)


@pytest.mark.parametrize(
    "model, updates_from", [("recsys", "copy"), ("spectral", "copy"), ("spectral", "optimizer")]
)
def test_sparse_and_complex_gradients(tmp_path, model, updates_from):
    """Sparse embedding gradients and complex parameters are measured like dense real ones
    (they used to switch capture off at the first step)."""
    watch = ("--param-every", "5", "--softmax-every", "5", "--updates-from", updates_from)
    pair = run_pair(tmp_path, "sparse_complex.py", "--model", model, watch=watch)
    assert_unchanged(pair)
    names = pair.trace["names"]
    assert layer_names(pair.run) == set(names)
    both = model == "recsys"  # SparseAdam for the tables, Adam for the tower
    # (one backward for both: the loss is the first optimizer's step's, no ``loss@2``)
    for metric in ("loss", "grad_norm", *(("grad_norm@2",) if both else ())):
        assert_steps(pair, metric)
    grads, updates = _layer(pair.run, "grad_norm"), _layer(pair.run, "update_norm")
    assert list(updates.index) == [0, 5, 10]
    cos = pair.run.table("softmax", filters=[("metric", "==", "grad_weight_cos")])
    cos = cos[cos.layer != ""].pivot(index="step", columns="layer", values="value")
    assert list(cos.index) == [0, 5, 10]
    primary = [n for n in names if n.endswith("user.weight") or n.endswith("history.weight")]
    for name in names:
        np.testing.assert_allclose(grads[name], pair.trace[f"grad.{name}"], rtol=1e-5)
        expected = np.asarray(pair.trace[f"update.{name}"])[updates.index]
        np.testing.assert_allclose(updates[name], expected, rtol=1e-4, atol=1e-9)
        if name in primary or not both:  # cosines: the primary optimizer's tensors
            expected = np.asarray(pair.trace[f"cos.{name}"])[cos.index]
            np.testing.assert_allclose(cos[name], expected, rtol=1e-4, atol=1e-6)


def test_complex_parameters_probes_say_unavailable(tmp_path):
    """Hessian, ghost and landscape take real parameter vectors: on a model with complex
    parameters each says so once (not an internal error); collapse needs class targets."""
    pair = run_pair(tmp_path, "sparse_complex.py", "--model", "spectral", watch=PROBES)
    assert_unchanged(pair)
    assert_steps(pair, "grad_norm")
    unavailable = pair.run.meta["unavailable"]
    for probe in ("hessian", "ghost", "landscape"):
        assert "complex parameters" in unavailable[f"probe {probe}"]
        assert f"probe {probe} unavailable: the model has complex" in pair.watched.stderr
