"""The probe runner on unusual training loops: when a due probe runs, on which module, that a
probe at the end does not repeat the one just scheduled, and that a probe's rows are checked
against the schema before the writer sees them."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradlens
from gradlens.probes import REGISTRY, Probe
from gradlens.probes.runner import check_probe_rows
from gradlens.report import build_report
from gradlens.store.rows import long_rows


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(32, 4, generator=g), torch.randint(0, 3, (32,), generator=g)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def _train(model, steps=6, no_grad_step=False, runs_dir=None, **options):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
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


def test_probes_due_before_a_batch_was_seen_wait_for_one_instead_of_giving_up(runs_dir):
    options = {"hessian": {"every": 1, "k": 1, "trace": False}, "collapse": {"every": 1}}
    run = _train(_mlp(), no_grad_step=True, runs_dir=runs_dir, probe_options=options)
    assert sorted(run.table("hessian").step.unique()) == list(range(6))  # even under no_grad
    assert sorted(run.table("collapse").step.unique()) == list(range(6))


def test_probes_replay_the_right_module_of_a_split_model(runs_dir):
    """Backbone and head are separate modules; the probes replay the one that saw the batch."""
    torch.manual_seed(0)
    backbone, head = nn.Sequential(nn.Linear(4, 8), nn.Tanh()), nn.Linear(8, 3)
    opt = torch.optim.SGD([*backbone.parameters(), *head.parameters()], lr=0.1)
    x, y = _data()
    seen = []  # the head's inputs as recorded (the first two batches)
    options = {"hessian": {"every": 2, "k": 1, "trace": False}}
    with gradlens.Lens(runs_dir=runs_dir, probe_options=options) as lens:
        for _ in range(4):
            opt.zero_grad()
            hidden = backbone(x)
            seen.append(hidden.detach().clone())
            F.cross_entropy(head(hidden), y).backward()
            opt.step()
    run = gradlens.open_run(lens.run_dir)
    assert sorted(run.table("hessian").step.unique()) == [1, 3]
    # The loss is replayed through the head (the root whose call fed it), the backbone's
    # output held fixed: the run says so, and the curvature is the head's block's.
    assert run.meta["probe_scope"] == {"module": "Linear", "parameters": 27, "trained": 67}
    top = run.table("hessian", filters=[("metric", "==", "top_eigenvalue")])
    measured = float(top[top.step == 3].value.iloc[0])
    both = torch.cat(seen[:2]), torch.cat([y, y])  # two batches of equal size: one mean
    assert measured == pytest.approx(_top_eigenvalue(head, *both), rel=1e-4)
    found = [f for f in build_report(run).findings if f.message == "probes measure Linear only"]
    assert len(found) == 1 and "27 of the 67 trained parameters" in found[0].evidence


def _top_eigenvalue(head: nn.Linear, features: torch.Tensor, y: torch.Tensor) -> float:
    """Largest eigenvalue of the dense float64 Hessian of the head's loss on fixed features."""
    w, b = head.weight.detach().double(), head.bias.detach().double()
    sizes = (w.numel(), b.numel())

    def loss(flat: torch.Tensor) -> torch.Tensor:
        w_, b_ = flat.split(sizes)
        logits = features.double() @ w_.view_as(w).T + b_
        return F.cross_entropy(logits, y)

    hessian = torch.autograd.functional.hessian(loss, torch.cat([w.flatten(), b]))
    return float(torch.linalg.eigvalsh(hessian)[-1])


def test_a_whole_model_probed_has_no_scope_note(runs_dir):
    options = {"hessian": {"every": 2, "k": 1, "trace": False}}
    run = _train(_mlp(), steps=2, runs_dir=runs_dir, probe_options=options)
    assert len(run.table("hessian")) > 0
    assert "probe_scope" not in run.meta


def test_at_end_probe_does_not_repeat_the_scheduled_one(runs_dir):
    options = {"collapse": {"every": 2, "at_end": True}}
    run = _train(_mlp(), steps=4, runs_dir=runs_dir, probe_options=options)
    steps = run.table("collapse", filters=[("metric", "==", "nc1")]).step.tolist()
    assert steps == [1, 3]


class BadRowsProbe(Probe):
    """Measures fine, then returns rows the writer could not store (a misspelt column)."""

    name = "badrows"
    tables = ("collapse",)
    preset = "full"
    default_every = 1

    calls: ClassVar[list[int]] = []  # the steps it ran at, over its instances

    def compute(self, ctx):
        self.calls.append(ctx.step)
        return {"collapse": {"step": [ctx.step], "metrc": ["nc1"], "value": [1.0]}}


def test_a_probe_with_bad_rows_is_switched_off_in_one_line_and_training_goes_on(
    runs_dir, monkeypatch, capsys
):
    monkeypatch.setitem(REGISTRY, "badrows", f"{__name__}:BadRowsProbe")
    monkeypatch.setattr(BadRowsProbe, "calls", [])
    monkeypatch.setenv("GRADLENS_STRICT", "0")
    options = {"badrows": {"every": 1}, "collapse": {"every": 1}}
    plain = _mlp()
    _train(plain, runs_dir=runs_dir)
    model = _mlp()
    run = _train(model, runs_dir=runs_dir, probe_options=options)

    err = capsys.readouterr().err
    line = (
        "gradlens: probe badrows disabled: ValueError: table 'collapse' rows lack column 'metric'"
    )
    assert err.count(line) == 1 and err.count("disabled") == 1, err
    assert run.status == "finished"
    assert len(run.table("scalars", filters=[("metric", "==", "loss")])) == 6
    for a, b in zip(plain.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)  # training unchanged
    # the other probe still writes every step; nothing of the bad one reached the store
    assert sorted(run.table("collapse").step.unique()) == list(range(6))
    assert not run.table("collapse").metric.isna().any()
    seconds = run.table("scalars").metric
    assert (seconds == "probe_seconds.collapse").sum() == 6
    assert (seconds == "probe_seconds.badrows").sum() == 0
    events = run.table("events", filters=[("kind", "==", "internal_error")])
    assert events.metric.tolist() == ["probe badrows"]
    assert BadRowsProbe.calls == [0]  # switched off after its first run


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([("collapse", {})], r"^probe badrows returned list, not rows per table$"),
        (
            {
                "hessian": {
                    "step": [1],
                    "metric": ["x"],
                    "layer": [""],
                    "index": [0],
                    "value": [1.0],
                }
            },
            r"^probe badrows wrote table 'hessian', not one of its tables \(collapse\)$",
        ),
        (
            {"collapse": {"step": [1, 2], "metric": ["nc1"], "value": [1.0, 2.0]}},
            r"^table 'collapse' column 'metric' has 1 rows, column 'step' has 2$",
        ),
        (
            {"collapse": {"step": [1], "metric": ["nc1"], "value": [float("nan")], "x": [0]}},
            r"^table 'collapse' has no column 'x'",
        ),
        (
            {"collapse": {"step": [1], "metric": ["nc1"], "value": ["one"]}},
            r"^table 'collapse' column 'value' \(double\)",
        ),
    ],
    ids=["not-a-mapping", "undeclared-table", "lengths", "unknown-column", "type"],
)
def test_probe_rows_are_checked_against_its_tables_and_the_schema(rows, message):
    with pytest.raises(ValueError, match=message):
        check_probe_rows(BadRowsProbe(), rows)


def test_good_probe_rows_pass_unchanged():
    rows = {"collapse": long_rows("collapse", 4, metric=["nc1", "nc3"], value=[0.5, 0.25])}
    assert check_probe_rows(BadRowsProbe(), rows) is rows
    assert check_probe_rows(BadRowsProbe(), {}) == {}


class _Agent(nn.Module):
    """A PPO agent (CleanRL style) whose script calls its methods, never the module itself;
    its layers are written by hand, so no module call is seen at all."""

    def __init__(self) -> None:
        super().__init__()
        self.actor = nn.Parameter(torch.randn(4, 2) * 0.1)
        self.critic = nn.Parameter(torch.randn(4, 1) * 0.1)

    def get_action_and_value(self, obs):
        dist = torch.distributions.Categorical(logits=obs @ self.actor)
        action = dist.sample()
        return action, dist.log_prob(action), dist.entropy(), obs @ self.critic


def test_a_model_never_called_itself_says_what_it_could_not_record(runs_dir):
    torch.manual_seed(0)
    agent = _Agent()
    opt = torch.optim.Adam(agent.parameters(), lr=1e-3)
    options = {"hessian": {"every": 2, "k": 1, "trace": False}}
    with gradlens.Lens(runs_dir=runs_dir, probe_options=options) as lens:
        for _ in range(4):
            obs = torch.randn(16, 4)
            _, logprob, entropy, value = agent.get_action_and_value(obs)
            loss = -(logprob * torch.randn(16)).mean() + 0.5 * value.square().mean()
            opt.zero_grad()
            (loss - 0.01 * entropy.mean()).backward()
            opt.step()
    run = gradlens.open_run(lens.run_dir)
    assert run.steps == 4
    unavailable = run.meta["unavailable"]
    assert unavailable["probe hessian"].startswith("never ran: no training batch")
    assert unavailable["throughput"].startswith("no training call of the model itself")
    found = {f.message for f in build_report(run).findings if f.rule == "gradlens_health"}
    assert found == {
        "probe hessian unavailable on this run",
        "throughput unavailable on this run",
        "softmax signals unavailable on this run",  # no cross-entropy call either
    }


def test_forwards_without_a_loss_do_not_use_up_the_probe_batches(runs_dir):
    """CleanRL style: the agent acts (forwards with gradients on, no loss) before it learns;
    those forwards are not training batches, so probes still find the first ones that are."""
    torch.manual_seed(0)
    q = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))
    opt = torch.optim.Adam(q.parameters(), lr=1e-3)
    options = {"hessian": {"every": 2, "k": 1, "trace": False}}
    with gradlens.Lens(runs_dir=runs_dir, probe_options=options) as lens:
        for _ in range(5):  # acting: argmax of Q, no loss
            q(torch.randn(1, 4)).argmax()
        for _ in range(4):
            x, target = torch.randn(8, 4), torch.randn(8, 2)
            opt.zero_grad()
            F.smooth_l1_loss(q(x), target).backward()
            opt.step()
    run = gradlens.open_run(lens.run_dir)
    assert "probe hessian" not in run.meta.get("unavailable", {})
    assert sorted(set(run.table("hessian").step)) == [1, 3]
