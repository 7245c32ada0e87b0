"""Framework training loops under ``gradlens watch``: Hugging Face ``Trainer``, an
``accelerate`` loop and Lightning ``Trainer.fit`` (test dependencies: the ``clients`` extra)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.clients.harness import assert_steps, assert_unchanged, layer_names, run_pair, scalar

pytestmark = pytest.mark.slow


def test_hf_trainer_with_accumulation_checkpointing_and_probes(tmp_path):
    pytest.importorskip("transformers")
    pair = run_pair(
        tmp_path,
        "hf_trainer.py",
        watch=("--probes", "full", "--probe", "hessian.every=3", "--probe", "hessian.k=2",
               "--probe", "ghost.every=3", "--probe", "landscape.every=100",
               "--probe", "landscape.at_end=true", "--probe", "landscape.steps=3",
               "--probe", "collapse.every=100"),
    )  # fmt: skip
    assert_unchanged(pair, timing="train_runtime")
    assert layer_names(pair.run) == set(pair.trace["names"])
    assert_steps(pair, "loss", rtol=1e-3)  # the Trainer logs its loss rounded
    assert_steps(pair, "grad_norm", rtol=1e-4)  # before clipping, as the Trainer logs it
    assert set(pair.run.table("hessian").step) == {2, 5}
    assert "ghost" in " ".join(scalar_metrics(pair.run))
    landscape = pair.run.table("landscape")
    at = (landscape.metric == "loss") & (landscape.alpha == 0) & (landscape.beta == 0)
    centre = landscape[at].value.iloc[0]
    loss = pair.trace["loss"]
    # the probe replays two recorded micro-batches without the Trainer's num_items_in_batch:
    # the full loss, not loss / accumulation steps
    assert 0.8 * min(loss) < centre < 1.2 * max(loss)


def test_accelerate_loop_with_accumulation_two_groups_and_evaluation(tmp_path):
    pytest.importorskip("accelerate")
    pytest.importorskip("transformers")
    pair = run_pair(tmp_path, "accelerate_loop.py")
    assert_unchanged(pair)
    assert layer_names(pair.run) == set(pair.trace["names"])
    assert_steps(pair, "loss", rtol=1e-6)  # the mean of the accumulated micro-batch losses
    assert_steps(pair, "grad_norm", rtol=1e-5)  # what accelerator.clip_grad_norm_ returned
    steps, coef = scalar(pair.run, "clip_coef")
    assert steps == list(range(10)) and (coef < 1).any() and (coef == 1).any()
    steps, eval_loss = scalar(pair.run, "eval_loss")
    assert steps == [4, 9]  # after each epoch's last optimizer step
    np.testing.assert_allclose(eval_loss, pair.trace["eval_loss"], rtol=1e-6)


def test_lightning_fit_closure_clipping_validation(tmp_path):
    pytest.importorskip("lightning")
    pair = run_pair(tmp_path, "lightning_fit.py")
    assert_unchanged(pair)
    assert layer_names(pair.run) == set(pair.trace["names"])
    assert_steps(pair, "loss")
    assert_steps(pair, "grad_norm")
    steps, _ = scalar(pair.run, "clip_coef")
    assert steps == list(range(10))


def scalar_metrics(run) -> list[str]:
    return sorted(run.table("scalars", columns=["metric"]).metric.unique())
