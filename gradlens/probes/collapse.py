"""The ``collapse`` probe: neural-collapse metrics of the penultimate features on a schedule.

One streaming pass over the probe batches (``gradlens.analysis.collapse.stream_collapse``: a
forward pre-hook on the classifier layer, float64 accumulators), labelled by the targets of the
recorded loss calls; the classifier is the last ``nn.Linear`` with as many outputs as the loss's
logits have classes (not a multi-task model's regression head). Rows: ``collapse`` (step,
metric, value) with nc1, cdnv, nc2_*, nc3, nc4. A loss without class-index targets
(regression, soft labels) makes the probe unavailable, said once.
"""

from __future__ import annotations

import math

from torch import Tensor

from gradlens.analysis.collapse import classifier_parameters, find_classifier, stream_collapse
from gradlens.functional.collapse import NeuralCollapseAccumulator
from gradlens.probes.base import Probe, ProbeContext, ProbeUnavailable, Rows
from gradlens.store.rows import long_rows

__all__ = ["CollapseProbe"]


class CollapseProbe(Probe):
    """NC1–NC4 and CDNV of the classifier's input features on the probe set."""

    name = "collapse"
    tables = ("collapse",)
    preset = "standard"
    default_every = 200

    def __init__(
        self,
        every: int | None = None,
        at_end: bool = False,
        mode: str = "eval",
        classifier: str | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__(every, at_end, mode)
        self.classifier = classifier
        self.num_classes = num_classes

    def compute(self, ctx: ProbeContext) -> Rows:
        batches = [b for b in ctx.objective.batches if _class_indices(b.labels)]
        if not batches:
            raise ProbeUnavailable("the recorded loss has no class-index targets")
        classes = next((b.classes for b in batches if b.classes is not None), None)
        try:  # the layer whose outputs are the loss's logits, not an auxiliary head
            layer = find_classifier(ctx.model, self.classifier, self.num_classes or classes)
        except ValueError as exc:
            if self.classifier is not None:
                raise
            raise ProbeUnavailable(f"{exc} (the loss's logits)") from None
        acc = stream_collapse(
            ctx.model, batches, layer, self.num_classes, targets=[b.labels for b in batches]
        )
        weight, bias = (_full(t) for t in classifier_parameters(layer))
        if ctx.world > 1:  # every rank's accumulator, merged in rank order (Chan's formula)
            acc = _merged_over_ranks(acc, ctx.world)
            weight = weight.cpu() if weight is not None else None
            bias = bias.cpu() if bias is not None else None
        metrics = {k: v for k, v in acc.compute(weight, bias).items() if not math.isnan(v)}
        values = [float(v) for v in metrics.values()]
        return {"collapse": long_rows("collapse", ctx.step, metric=list(metrics), value=values)}


def _class_indices(labels: object) -> bool:
    return isinstance(labels, Tensor) and not labels.is_floating_point() and labels.numel() > 0


def _full(t: Tensor | None) -> Tensor | None:
    """A DTensor (FSDP2) gathered whole, on every rank; plain tensors as they are."""
    full = getattr(t, "full_tensor", None)
    return full() if callable(full) else t


def _merged_over_ranks(acc: NeuralCollapseAccumulator, world: int) -> NeuralCollapseAccumulator:
    import torch.distributed as dist

    def fresh() -> NeuralCollapseAccumulator:
        return NeuralCollapseAccumulator(
            acc.num_classes, acc.dim, device="cpu", nc4_samples=acc.nc4_samples
        )

    gathered: list[NeuralCollapseAccumulator | None] = [None] * world
    dist.all_gather_object(gathered, fresh().merge(acc))
    total = fresh()
    for part in gathered:
        assert part is not None
        total.merge(part)
    return total
