"""Neural collapse of a model on a probe set: classifier-input features, one streaming pass.

:func:`neural_collapse` is the user-facing call; :func:`stream_collapse` is the feature capture
on replayable :class:`~gradlens.analysis.objective.Batch` objects, shared with the scheduled
probe. The math lives in :mod:`gradlens.functional.collapse`; see ``docs/collapse.md``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from gradlens.analysis.objective import MODES, Batch, restored_state
from gradlens.functional.collapse import NeuralCollapseAccumulator
from gradlens.instrument import interception

__all__ = ["classifier_parameters", "find_classifier", "neural_collapse", "stream_collapse"]


def find_classifier(
    model: nn.Module, classifier: nn.Module | str | None = None, num_classes: int | None = None
) -> nn.Module:
    """The classifier layer: ``classifier`` (a submodule or its qualified name), else the
    last ``nn.Linear`` registered in ``model`` with ``num_classes`` outputs (when known: the
    logits' classes in the loss call), else the last with at least 2 outputs (a multi-task
    model's 1-output regression or auxiliary head is not a classifier)."""
    if isinstance(classifier, str):
        try:
            return model.get_submodule(classifier)
        except AttributeError as exc:
            raise ValueError(f"model has no submodule {classifier!r}") from exc
    if isinstance(classifier, nn.Module):
        if not any(m is classifier for m in model.modules()):
            raise ValueError("classifier is not a submodule of model")
        return classifier
    if classifier is not None:
        raise TypeError(f"classifier must be a module, a name or None, not {type(classifier)}")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features >= 2]
    if num_classes is not None:
        linears = [m for m in linears if m.out_features == num_classes]
        if not linears:
            raise ValueError(f"model has no nn.Linear with {num_classes} outputs; pass classifier=")
    if not linears:
        raise ValueError("model has no nn.Linear with 2 or more outputs; pass classifier=")
    return linears[-1]


def classifier_parameters(classifier: nn.Module) -> tuple[Tensor | None, Tensor | None]:
    """``(weight (C, d), bias (C,))`` of a linear classifier, ``None`` where it has none."""
    weight = getattr(classifier, "weight", None)
    bias = getattr(classifier, "bias", None)
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        return None, None
    return weight.detach(), bias.detach() if isinstance(bias, Tensor) else None


def _num_classes(classifier: nn.Module, num_classes: int | None) -> int:
    weight, _ = classifier_parameters(classifier)
    if weight is not None:
        if num_classes is not None and num_classes != weight.shape[0]:
            raise ValueError(f"num_classes={num_classes} but the classifier has {weight.shape[0]}")
        return int(weight.shape[0])
    if num_classes is None:
        raise ValueError("the classifier has no (C, d) weight; pass num_classes=")
    return num_classes


def stream_collapse(
    model: nn.Module,
    batches: Iterable[Batch],
    classifier: nn.Module | str | None = None,
    num_classes: int | None = None,
    *,
    targets: Sequence[Any] | None = None,
    accumulator: NeuralCollapseAccumulator | None = None,
) -> NeuralCollapseAccumulator:
    """Feed the classifier's input features over ``batches`` into an accumulator.

    Each batch runs ``model(*batch.args, **batch.kwargs)`` under ``no_grad``; hooks on the
    classifier capture its input, flattened to (n, d), and the argmax of its output (the
    network's prediction, for NC4); the labels are ``batch.target`` (or ``targets[i]``),
    flattened; labels outside ``[0, C)`` (``-100``, ``-1``) are skipped. Modes, isolation
    and interception are the caller's business (the scheduled probe runs inside
    ``Objective.isolated()``; :func:`neural_collapse` does its own).
    """
    layer = find_classifier(model, classifier)
    classes = _num_classes(layer, num_classes)
    captured: list[Tensor] = []
    predicted: list[Tensor] = []
    handles = _capture(layer, captured, predicted, classes)
    acc = accumulator
    try:
        with torch.no_grad():
            for i, batch in enumerate(batches):
                labels = batch.target if targets is None else targets[i]
                if not isinstance(labels, Tensor):
                    raise ValueError(f"batch {i} has no integer target tensor to label features")
                captured.clear()
                predicted.clear()
                model(*batch.args, **batch.kwargs)
                features = _flat_features(captured, i)
                predictions = _flat_predictions(predicted, features.shape[0])
                if acc is None:
                    acc = NeuralCollapseAccumulator(
                        classes, features.shape[-1], device=features.device
                    )
                acc.update(features, labels, predictions)
    finally:
        for handle in handles:
            handle.remove()
    if acc is None:
        raise ValueError("no batch to measure neural collapse on")
    return acc


def _capture(
    layer: nn.Module, captured: list[Tensor], predicted: list[Tensor], classes: int
) -> list[RemovableHandle]:
    """Hooks appending the layer's input to ``captured``, its output to ``predicted``."""

    def before(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        value = args[0] if args else next(iter(kwargs.values()), None)
        if isinstance(value, Tensor):
            captured.append(value.detach())

    def after(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        # The scores themselves (no copy): the accumulator takes the argmax of the few rows
        # it keeps for NC4, not of every row.
        if isinstance(output, Tensor) and output.dim() and output.shape[-1] == classes:
            predicted.append(output.detach().reshape(-1, classes))

    return [
        layer.register_forward_pre_hook(before, with_kwargs=True),
        layer.register_forward_hook(after),
    ]


def _flat_predictions(predicted: list[Tensor], rows: int) -> Tensor | None:
    """The network's scores for the captured rows, if every call produced them."""
    if not predicted:
        return None
    flat = predicted[0] if len(predicted) == 1 else torch.cat(predicted)
    return flat if flat.shape[0] == rows else None


def _flat_features(captured: list[Tensor], index: int) -> Tensor:
    if not captured:
        raise ValueError(f"the classifier did not run on batch {index}")
    dim = captured[0].shape[-1]
    if len(captured) == 1:
        return captured[0].reshape(-1, dim)
    return torch.cat([c.reshape(-1, dim) for c in captured])


def neural_collapse(
    model: nn.Module,
    data: Any,
    classifier: nn.Module | str | None = None,
    *,
    num_classes: int | None = None,
    mode: str = "eval",
) -> dict[str, float]:
    """Neural-collapse metrics (NC1–NC4, CDNV, …) of ``model``'s penultimate features on ``data``.

    Args:
        model: the network; left exactly as it was (parameters, gradients, modes, buffers, RNG).
        data: an ``(x, y)`` batch or an iterable of them (a DataLoader); items may also be
            ``(x1, x2, …, y)``, run as ``model(x1, x2, …)``. ``y`` are class indices, (B,) or
            (B, T) for language models; entries outside ``[0, C)`` are skipped.
        classifier: the classifier layer (module or qualified name); default the last
            ``nn.Linear``. Its input is the feature, its weight and bias give NC3/NC4.
        num_classes: C, needed only when the classifier has no (C, d) weight.
        mode: ``"eval"`` (default) or ``"train"``, set explicitly for the pass.

    Returns:
        metric name → value; keys in ``gradlens.functional.collapse.NC_METRICS`` and
        ``CLASSIFIER_METRICS`` (``docs/collapse.md``).

    Example:
        >>> metrics = neural_collapse(model, loader)  # doctest: +SKIP
        >>> metrics["nc1"], metrics["nc4"]  # doctest: +SKIP
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    layer = find_classifier(model, classifier)
    with restored_state(model), interception.suspended():
        model.train(mode == "train")
        acc = stream_collapse(model, _batches(data), layer, num_classes)
        weight, bias = classifier_parameters(layer)
        return acc.compute(weight, bias)


def _batches(data: Any) -> Iterator[Batch]:
    """``(x, y)`` or an iterable of ``(x…, y)`` items, lazily (a DataLoader is not buffered)."""
    if (
        isinstance(data, tuple | list)
        and len(data) >= 2
        and all(isinstance(v, Tensor) for v in data)
    ):
        data = [data]
    for item in data:
        if not isinstance(item, tuple | list) or len(item) < 2:
            raise ValueError("data items must be (inputs..., labels)")
        *inputs, labels = item
        yield Batch(tuple(inputs), {}, labels, None, len(labels))
