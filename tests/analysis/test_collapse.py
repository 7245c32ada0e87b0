"""``gradlens.analysis.collapse``: the model-level API equals the pure function on features computed
directly, finds the classifier, handles LM targets, and leaves the model and training alone."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradlens.analysis.collapse import find_classifier, neural_collapse, stream_collapse
from gradlens.analysis.objective import Batch, batches_from_data
from gradlens.functional.collapse import neural_collapse_metrics
from gradlens.instrument import interception


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Small tensors: intra-op threads only add contention on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Net(nn.Module):
    def __init__(self, dim: int = 8, hidden: int = 16, classes: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Dropout(0.3)
        )
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def _data(n: int = 96, dim: int = 8, classes: int = 4, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = 3 * torch.randn(classes, dim, generator=g)[y] + torch.randn(n, dim, generator=g)
    return x, y


def _close(got: dict[str, float], want: dict[str, float], rel: float = 1e-9) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=rel, abs=1e-12), key


def _trained_net() -> Net:
    torch.manual_seed(0)
    net = Net()
    net.train()
    x, y = _data()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    return net


def test_equals_the_pure_function_on_direct_features() -> None:
    net = _trained_net()
    x, y = _data()
    got = neural_collapse(net, (x, y))
    net.eval()
    with torch.no_grad():
        features = net.body(x)
    want = neural_collapse_metrics(features, y, net.head.weight, net.head.bias)
    _close(got, want)
    assert "nc4" in got and "nc3" in got
    # the same data in batches, or through a DataLoader, gives the same numbers (float32
    # features: each batch's centred scatter is summed in float32, hence 1e-6)
    batches = list(zip(x.split(20), y.split(20), strict=True))
    _close(neural_collapse(net, batches), want, rel=1e-6)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    _close(neural_collapse(net, loader), want, rel=1e-6)


def _snapshot(net: nn.Module) -> dict[str, Any]:
    return {
        "state": {k: v.clone() for k, v in net.state_dict().items()},
        "grads": [None if p.grad is None else p.grad.clone() for p in net.parameters()],
        "modes": [m.training for m in net.modules()],
        "rng": torch.get_rng_state(),
    }


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_model_and_training_state_are_untouched(mode: str) -> None:
    net = _trained_net()
    x, y = _data()
    F.cross_entropy(net(x), y).backward()  # gradients present
    before = _snapshot(net)
    neural_collapse(net, (x, y), mode=mode)
    after = _snapshot(net)
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), key
    for a, b in zip(before["grads"], after["grads"], strict=True):
        assert torch.equal(a, b)
    assert after["modes"] == before["modes"] and all(after["modes"])
    assert torch.equal(after["rng"], before["rng"])


def test_train_mode_uses_batch_statistics() -> None:
    net = _trained_net()
    x, y = _data()
    evaluated = neural_collapse(net, (x, y), mode="eval")
    trained = neural_collapse(net, (x, y), mode="train")
    assert trained["nc1"] != evaluated["nc1"]  # BatchNorm batch stats and dropout masks differ


def test_classifier_choice() -> None:
    net = Net()
    assert find_classifier(net) is net.head
    assert find_classifier(net, "body.0") is net.body[0]
    assert find_classifier(net, net.body[0]) is net.body[0]
    with pytest.raises(ValueError, match="submodule"):
        find_classifier(net, nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"no nn\.Linear"):
        find_classifier(nn.Sequential(nn.ReLU()))
    x, y = _data()
    # an inner layer as "classifier": its input is x, its weight (16, 8) has 16 "classes"
    inner = neural_collapse(net, (x, y), "body.0")
    direct = neural_collapse_metrics(x, y, net.body[0].weight, net.body[0].bias)
    _close(inner, direct)


class TinyLM(nn.Module):
    """Embedding → LayerNorm → vocabulary head, V = 50 > d = 6, (B, T) targets."""

    def __init__(self, vocab: int = 50, dim: int = 6) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.norm = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> Any:
        logits = self.lm_head(self.norm(self.embed(idx)))
        if targets is None:
            return logits
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)


def test_language_model_targets_with_ignored_positions() -> None:
    torch.manual_seed(0)
    lm = TinyLM()
    idx = torch.randint(0, 50, (4, 30))
    targets = (idx * 7 + 3) % 50  # a deterministic next-token map: collapsible classes
    targets[:, :5] = -100
    got = neural_collapse(lm, (idx, targets))
    with torch.no_grad():
        features = lm.norm(lm.embed(idx)).reshape(-1, 6)
    keep = targets.reshape(-1) >= 0
    want = neural_collapse_metrics(features[keep], targets.reshape(-1)[keep], lm.lm_head.weight)
    _close(got, want)
    assert got["num_samples"] == 4 * 25


class _Recorder(interception.ListenerBase):
    def __init__(self) -> None:
        self.events: list[str] = []

    def on_backward(self, tensor: Tensor) -> None:
        self.events.append("backward")

    def on_loss_call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.events.append(name)


def test_recorded_batches_with_loss_inside_forward_are_invisible_to_interception() -> None:
    """nanoGPT style: the replayed batch calls ``model(idx, targets)``, which computes the loss
    inside ``forward``; ``stream_collapse`` takes the labels from ``targets=``."""
    torch.manual_seed(1)
    lm = TinyLM()
    idx = torch.randint(0, 50, (3, 10))
    tgt = (idx + 1) % 50
    recorder = _Recorder()
    interception.install(recorder)
    try:
        F.cross_entropy(torch.randn(2, 3), torch.tensor([0, 1]))
        assert recorder.events == ["cross_entropy"]
        with interception.suspended():
            acc = stream_collapse(lm, [Batch((idx, tgt), {}, None, None, 3)], targets=[tgt])
        assert recorder.events == ["cross_entropy"]
    finally:
        interception.uninstall(recorder)
    with torch.no_grad():
        features = lm.norm(lm.embed(idx)).reshape(-1, 6)
    _close(
        acc.compute(lm.lm_head.weight), neural_collapse_metrics(features, tgt, lm.lm_head.weight)
    )


def test_stream_collapse_on_objective_batches_accumulates() -> None:
    net = _trained_net().eval()
    x, y = _data()
    batches = batches_from_data(list(zip(x.split(48), y.split(48), strict=True)), F.cross_entropy)
    acc = stream_collapse(net, batches[:1])
    acc = stream_collapse(net, batches[1:], accumulator=acc)
    with torch.no_grad():
        features = net.body(x)
    _close(
        acc.compute(net.head.weight, net.head.bias),
        neural_collapse_metrics(features, y, net.head.weight, net.head.bias),
        rel=1e-6,
    )


def test_errors() -> None:
    net = Net()
    x, y = _data()
    with pytest.raises(ValueError, match="mode"):
        neural_collapse(net, (x, y), mode="test")
    with pytest.raises(ValueError, match="target"):
        stream_collapse(net, [Batch((x,), {}, None, None, len(x))])
    with pytest.raises(ValueError, match="num_classes"):
        neural_collapse(net, (x, y), num_classes=7)
    with pytest.raises(ValueError, match="labels"):  # features and labels must line up
        neural_collapse(net, (x, y[:-1]))


class CosineHead(nn.Module):
    """A classifier without a ``weight``: cosine logits against learned prototypes."""

    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        self.prototypes = nn.Parameter(torch.randn(classes, dim))

    def forward(self, h: Tensor) -> Tensor:
        return F.normalize(h, dim=-1) @ F.normalize(self.prototypes, dim=-1).T


def test_classifier_without_weight_uses_its_outputs_for_nc4() -> None:
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), CosineHead(16, 4))
    x, y = _data()
    with pytest.raises(ValueError, match="num_classes"):
        neural_collapse(net, (x, y), net[2])
    got = neural_collapse(net, (x, y), net[2], num_classes=4)
    with torch.no_grad():
        features = net[1](net[0](x))
        predicted = net[2](features).argmax(-1)
    want = neural_collapse_metrics(features, y, predictions=predicted)
    _close(got, want)
    assert "nc4" in got and "nc3" not in got
