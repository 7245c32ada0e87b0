"""The ``ghost`` probe: the ghosts-of-softmax radius along the last update (Sao 2026).

ρ = π/Δ_a, Δ_a the largest per-sample spread of the logits' directional derivative along the
unit update direction (one JVP), and r = ‖Δθ‖/ρ — collapse was seen once r ≥ 1. Rows go to
the ``softmax`` table: ghost_rho, ghost_r, ghost_delta_a. Needs the update (optimizer mode
with update tracking); skipped otherwise, and unavailable when the training loss is known not to
be a softmax cross-entropy on those logits (``mse_loss``, ``smooth_l1_loss``… of the output: a
regression, a DQN's Q-values).
"""

from __future__ import annotations

from gradlens._attention import with_math_fallback
from gradlens.analysis.softmax import NoLogits, ghost_radius
from gradlens.probes.base import Probe, ProbeContext, ProbeUnavailable, Rows
from gradlens.store.rows import long_rows

__all__ = ["SOFTMAX_LOSSES", "GhostProbe"]

# Losses whose input is a softmax's logits (None: a loss the model returns, not known)
SOFTMAX_LOSSES = (None, "cross_entropy", "nll_loss")


class GhostProbe(Probe):
    """Safe-step radius of the softmax along the update just applied."""

    name = "ghost"
    tables = ("softmax",)
    preset = "standard"
    real_only = True
    default_every = 100

    def compute(self, ctx: ProbeContext) -> Rows:
        update = ctx.update
        if not update or not ctx.objective.batches:
            return {}
        batch = ctx.objective.batches[0]
        if batch.loss_name not in SOFTMAX_LOSSES and batch.on_logits:
            raise ProbeUnavailable(
                f"the training loss is F.{batch.loss_name}, not a softmax cross-entropy: "
                "the model output is no softmax's logits"
            )
        try:
            values = with_math_fallback(
                lambda: ghost_radius(ctx.model, batch.args, update, kwargs=batch.kwargs)
            )
        except NoLogits as exc:  # a model returning only its loss: nothing to measure
            raise ProbeUnavailable(str(exc)) from None
        metrics = {
            "ghost_rho": values["rho"],
            "ghost_r": values["r"],
            "ghost_delta_a": values["delta_a"],
        }
        rows = long_rows(
            "softmax", ctx.step, metric=list(metrics), layer="", value=list(metrics.values())
        )
        return {"softmax": rows}
