"""Training-script idioms beyond ``test_clients.py``, plain vs ``gradlens watch``: the script's
output and final weights are unchanged, and the run holds the numbers the script computed
itself."""

from __future__ import annotations

import numpy as np
import pytest

from tests.clients.harness import assert_steps, assert_unchanged, layer_names, run_pair

pytestmark = pytest.mark.slow


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
    grads = _layer(pair.run, "grad_norm")
    backbone = [n for n in pair.trace["names"] if n.startswith("backbone.")]
    recorded = np.sqrt((grads[backbone].fillna(0.0) ** 2).sum(axis=1)).to_numpy()
    np.testing.assert_allclose(recorded, pair.trace["backbone_grad_norm"], rtol=1e-5, atol=1e-8)
    assert grads[backbone].loc[:3].isna().all().all()  # frozen: not recorded, not 0
    assert (grads["aux.weight"].loc[1::2] == 0).all()  # the unused branch: no gradient
