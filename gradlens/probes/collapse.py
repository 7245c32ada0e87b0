"""The ``collapse`` probe: neural-collapse metrics of the penultimate features on a schedule.

One streaming pass over the probe batches (``gradlens.collapse.stream_collapse``: a forward
pre-hook on the classifier layer, float64 accumulators), labelled by the targets of the
recorded loss calls. Rows: ``collapse`` (step, metric, value) with nc1, cdnv, nc2_*, nc3, nc4.
"""

from __future__ import annotations

import math

from gradlens.collapse import classifier_parameters, find_classifier, stream_collapse
from gradlens.probes.base import Probe, ProbeContext, Rows

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
        batches = [b for b in ctx.objective.batches if b.labels is not None]
        if not batches:
            return {}
        layer = find_classifier(ctx.model, self.classifier)
        acc = stream_collapse(
            ctx.model, batches, layer, self.num_classes, targets=[b.labels for b in batches]
        )
        weight, bias = classifier_parameters(layer)
        metrics = {k: v for k, v in acc.compute(weight, bias).items() if not math.isnan(v)}
        return {
            "collapse": {
                "step": [ctx.step] * len(metrics),
                "metric": list(metrics),
                "value": [float(v) for v in metrics.values()],
            }
        }
