"""Nothing gradlens does is visible on the user's model or optimizer: pickle, deepcopy,
torch.save/torch.load(weights_only=True) and state_dict behave exactly as without gradlens;
and under torch.compile gradlens causes no extra graph or graph break."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradlens
from gradlens.instrument.roots import RootCalls


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


def _train(model, opt, steps=3):
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("explicit", [True, False])
def test_model_and_optimizer_pickle_copy_save_and_load_as_without_gradlens(runs_dir, explicit):
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    args = (model, opt) if explicit else ()
    with gradlens.Lens(*args, runs_dir=runs_dir):
        _train(model, opt)
        assert not model._forward_pre_hooks and not model._forward_hooks
        assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks
        twin = copy.deepcopy(model)
        clone = pickle.loads(pickle.dumps((model, opt)))[0]
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        with torch.serialization.safe_globals([Net, nn.Linear]):
            loaded = torch.load(buffer, weights_only=True)
        _train(model, opt)  # still recorded after copies were made
    for other in (twin, clone, loaded):
        assert type(other) is Net and not other._forward_pre_hooks
    run = gradlens.open_run(runs_dir / gradlens.list_runs(runs_dir)[0].name)
    assert run.steps == 6


def test_root_calls_patch_the_class_only_while_watched():
    seen = []
    calls = RootCalls(lambda m, a, k: seen.append(("before", m)), lambda m, o: seen.append("after"))
    a, b = Net(), Net()
    assert "__call__" not in Net.__dict__
    calls.add(a)
    assert "__call__" in Net.__dict__ and not a.__dict__.get("__call__")
    a(torch.zeros(1, 4))
    b(torch.zeros(1, 4))  # same class, not watched: no callback
    assert seen == [("before", a), "after"]
    calls.close()
    assert "__call__" not in Net.__dict__


def test_compiled_model_no_extra_graphs_or_breaks(runs_dir):
    from torch._dynamo.utils import counters

    def train(watched: bool) -> tuple[int, int]:
        torch._dynamo.reset()
        counters.clear()
        torch.manual_seed(0)
        model = torch.compile(Net(), backend="aot_eager")
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        if watched:
            with gradlens.Lens(runs_dir=runs_dir):
                _train(model, opt, steps=4)
        else:
            _train(model, opt, steps=4)
        return counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())

    assert train(watched=True) == train(watched=False)
