"""``gradlens.log``: the script's own scalars in the ``user`` table; a no-op outside gradlens."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import gradlens
from tests.conftest import SCRIPTS, gradlens_cli


def test_log_outside_gradlens_does_nothing():
    assert gradlens.log({"val/acc": 0.5}) is None
    assert gradlens.log("not even a mapping") is None  # type: ignore[arg-type]


def test_logged_values_at_the_last_step_or_the_given_one(runs_dir, capsys):
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradlens.Lens(model, opt, runs_dir=runs_dir, every=4) as lens:
        gradlens.log({"before": 1.0})  # no step yet: step 0
        for step in range(10):
            opt.zero_grad()
            F.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 3, (8,))).backward()
            opt.step()
            if step % 3 == 2:
                gradlens.log({"val/acc": step / 10, "tensor": torch.tensor([step * 2.0])})
        gradlens.log({"bleu": 21.4, "bad": "x", "also_bad": torch.ones(3)}, step=100)
    user = gradlens.open_run(lens.run_dir).table("user").sort_values(["metric", "step"])
    rows = {m: list(zip(g.step, g.value, strict=True)) for m, g in user.groupby("metric")}
    assert rows["before"] == [(0, 1.0)]
    assert rows["bleu"] == [(100, 21.4)]
    np.testing.assert_allclose([v for _, v in rows["val/acc"]], [0.2, 0.5, 0.8])
    assert [s for s, _ in rows["val/acc"]] == [2, 5, 8]
    assert [v for _, v in rows["tensor"]] == [4.0, 10.0, 16.0]
    assert "bad" not in rows and "also_bad" not in rows
    err = capsys.readouterr().err
    assert "gradlens.log: 'bad' is not a number" in err


def test_log_through_watch(runs_dir):
    result = gradlens_cli(
        "watch", "--runs-dir", str(runs_dir), "--name", "logged", "--status", "off",
        str(SCRIPTS / "user_log.py"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    user = gradlens.open_run(runs_dir / "logged").table("user")
    assert sorted(user.step) == [4, 9] and set(user.metric) == {"eval_loss"}


def test_an_accelerator_value_is_copied_when_logged():
    """On a GPU the value is read at the next flush: a running tensor the script keeps adding
    to in place must be recorded as it was when logged (``.float()`` of a float32 tensor is
    the tensor itself: every row read the flush-time value). Checked on a CPU tensor."""
    from gradlens.capture.user import snapshot

    running = torch.tensor([2.0])
    held = snapshot(running)
    running.add_(3.0)
    assert held.item() == 2.0 and held.dtype == torch.float32 and held.shape == ()
