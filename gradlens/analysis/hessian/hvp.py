"""Hessian-vector products of an :class:`~gradlens.analysis.objective.Objective`, on flat vectors.

Engines (``method``):
- ``double_backward``: reverse-over-reverse. With one batch the gradient graph is built once
  and reused by every product (only the second backward runs per HVP); with several batches
  each product recomputes forward + backward per batch, weighted by batch size.
- ``forward_over_reverse``: ``torch.func.jvp`` of ``torch.func.grad`` per batch; also offers
  a batched multi-vector product with ``vmap``.
- ``finite_difference``: central difference of two gradients (any model whose gradient
  exists; O(ε²) truncation error, ~1e-5–1e-4 relative in float32).
- ``auto``: times two products of every engine (after a warm-up) on the real batches and
  keeps the fastest; finite differences qualify only when their product agrees with an exact
  engine's to ``fd_check_tol`` (1e-3 relative, in the run's dtype). The timings, the check
  and the choice are kept in ``HVP.selection`` and logged. Where double backward or forward
  AD is not implemented (fused attention kernels) it retries with the math attention
  backend, then falls back to finite differences — saying so on stderr.

Nothing here changes the model: run it inside ``Objective.isolated()``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.func import grad, jvp, vmap

from gradlens._attention import math_attention, unsupported
from gradlens.analysis.objective import Batch, Objective

__all__ = ["HVP", "METHODS", "HVPUnavailable"]

METHODS = ("auto", "double_backward", "forward_over_reverse", "finite_difference")
_EXACT = ("double_backward", "forward_over_reverse")


class HVPUnavailable(RuntimeError):
    """No engine could differentiate this model twice."""


class HVP:
    """v ↦ Hv for the loss of ``objective`` at its current parameters.

    Args:
        objective: model, batches and mode.
        method: one of :data:`METHODS`.
        fd_eps: finite-difference step along the unit direction (default 5e-3 in float32,
            1e-5 in float64).
        log: where to say which engine was chosen (default: stderr).
        math_attention: run under the math attention backend (set by ``auto`` when the fused
            kernels cannot be differentiated twice; pass it back to reuse a choice).
        world: > 1 in multi-process runs: each rank's product on its own batches is summed
            over ranks (weighted by batch sizes), giving the Hessian of the global batch.
        fd_check_tol: ``auto`` accepts finite differences only when their product on the
            timing vector is within this relative error of an exact engine's.

    Attributes:
        dim: number of parameters. count: HVPs computed (excluding engine selection).
        setup_count: HVPs spent choosing the engine. method: the engine in use.
        selection: what ``auto`` measured — ``seconds`` per engine, ``fd_check`` (relative
        error, tol, passed, the exact engine compared against) and the chosen ``method``.
    """

    def __init__(
        self,
        objective: Objective,
        method: str = "auto",
        fd_eps: float | None = None,
        log: Callable[[str], None] | None = None,
        math_attention: bool = False,
        world: int = 1,
        fd_check_tol: float = 1e-3,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if not objective.params:
            raise ValueError("the model has no trainable parameters")
        self.objective = objective
        self.params = objective.params
        self.names = objective.names
        self.shapes = [p.shape for p in self.params]
        self.numels = [p.numel() for p in self.params]
        self.dim = sum(self.numels)
        self.dtype = self.params[0].dtype
        self.device = self.params[0].device
        self.fd_eps = fd_eps or (1e-5 if self.dtype == torch.float64 else 5e-3)
        self.log = log
        self.count = 0
        self.setup_count = 0
        self.math_attention = math_attention
        self.world = world
        self._global_total = float(objective.total)
        if world > 1:
            from gradlens.instrument.distributed import all_reduce_sum

            total = torch.tensor([float(objective.total)], dtype=torch.float64, device=self.device)
            self._global_total = float(all_reduce_sum(total)[0])
        self._graph: tuple[Tensor, ...] | None = None
        self.fd_check_tol = fd_check_tol
        self.selection: dict[str, Any] = {"method": method, "seconds": {}, "fd_check": None}
        self.method = method if method != "auto" else self._choose()

    # -- public ----------------------------------------------------------------------------------

    def __call__(self, v: Tensor) -> Tensor:
        """H @ v for a flat vector (any float dtype; returned in the same dtype)."""
        self.count += 1
        return self._apply(self.method, v)

    def matmat(self, vectors: Tensor) -> Tensor:
        """H @ vᵢ for each row of ``vectors`` (m, dim): vmapped where the engine allows."""
        if self.method == "forward_over_reverse" and vectors.shape[0] > 1 and self.world == 1:
            try:
                with self._context():
                    out = self._vmapped(vectors)
                self.count += vectors.shape[0]
                return out
            except Exception:
                pass  # e.g. BatchNorm in train mode under vmap: one at a time
        return torch.stack([self(v) for v in vectors])

    def gradient_time(self) -> float:
        """Seconds for one plain gradient of the objective, with the default kernels (what a
        training step pays), for HVP/gradient cost ratios."""
        _sync(self.device)
        start = time.perf_counter()
        torch.autograd.grad(self.objective.loss(), self.params, allow_unused=True)
        _sync(self.device)
        return time.perf_counter() - start

    # -- engine selection ------------------------------------------------------------------------

    def _choose(self) -> str:
        """Time every engine on the real batches and keep the fastest correct one.

        Exact engines qualify when they run; finite differences only after their product on
        the timing vector agrees with the fastest exact engine's to ``fd_check_tol``
        (relative, in the run's dtype). What was measured is kept in ``self.selection``.
        """
        timings: dict[str, float] = {}
        outputs: dict[str, Tensor] = {}
        errors: dict[str, str] = {}
        for attempt in (False, True):
            self.math_attention = attempt
            for method in _EXACT:
                self._graph = None  # a graph built under other kernels cannot be reused
                try:
                    timings[method], outputs[method] = self._time(method)
                except Exception as exc:
                    if not unsupported(exc):
                        raise
                    errors[method] = str(exc).splitlines()[0][:120]
            if timings:
                break
        if not timings:
            self.math_attention = False
            self._say(
                f"double differentiation is not implemented for this model "
                f"({errors.get('double_backward', '?')}); using finite differences"
            )
            self.selection = {"method": "finite_difference", "seconds": {}, "fd_check": None}
            return "finite_difference"
        self._graph = None
        if self.math_attention:
            self._say(
                f"double backward is not implemented with the default attention kernel "
                f"({errors.get('double_backward', '?')}); using the math attention backend"
            )
        reference = min(timings, key=lambda m: timings[m])
        try:
            fd_seconds, fd_out = self._time("finite_difference")
            check = _relative_error(fd_out, outputs[reference])
        except Exception as exc:  # e.g. torch.func and in-place buffer updates (BatchNorm)
            fd_seconds, check = math.inf, math.inf
            errors["finite_difference"] = str(exc).splitlines()[0][:120]
        seconds = _agreed({**timings, "finite_difference": fd_seconds}, self.world, self.device)
        check = _agreed({"check": check}, self.world, self.device)["check"]
        qualified = check <= self.fd_check_tol
        candidates = {m: t for m, t in seconds.items() if m != "finite_difference" or qualified}
        chosen = min(candidates, key=lambda m: candidates[m])
        self.selection = {
            "method": chosen,
            "seconds": seconds,
            "fd_check": {
                "error": check,
                "tol": self.fd_check_tol,
                "passed": qualified,
                "against": reference,
            },
        }
        self._note(
            "HVP engine "
            + ", ".join(f"{m} {1e3 * t:.3g} ms" for m, t in seconds.items())
            + f"; finite differences {'pass' if qualified else 'fail'} the accuracy check "
            f"(relative error {check:.2e} vs {reference}, tol {self.fd_check_tol:g}); "
            f"using {chosen}"
        )
        return chosen

    def _time(self, method: str) -> tuple[float, Tensor]:
        """A warm-up product (it builds the reusable graph), then the faster of two timed;
        returns the seconds and the warm-up's product (for the accuracy check)."""
        v = torch.randn(
            self.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64
        ).to(self.device, self.dtype)
        out = self._apply(method, v)
        self.setup_count += 1
        best = math.inf
        for _ in range(2):
            _sync(self.device)
            start = time.perf_counter()
            self._apply(method, v)
            _sync(self.device)
            best = min(best, time.perf_counter() - start)
            self.setup_count += 1
        return best, out

    def _note(self, message: str) -> None:
        """Routine information: to ``log`` when given, else the package logger."""
        if self.log is not None:
            self.log(message)
        else:
            logging.getLogger("gradlens.analysis.hessian").info(message)

    def _say(self, message: str) -> None:
        if self.log is not None:
            self.log(message)
        else:
            print(f"gradlens: {message}", file=sys.stderr)

    # -- engines ---------------------------------------------------------------------------------

    def _context(self) -> contextlib.AbstractContextManager[Any]:
        return math_attention() if self.math_attention else contextlib.nullcontext()

    def _apply(self, method: str, v: Tensor) -> Tensor:
        parts = self._split(v.to(self.device, self.dtype))
        with self._context():
            if method == "double_backward":
                out = self._double_backward(parts)
            elif method == "forward_over_reverse":
                out = self._forward_over_reverse(parts)
            else:
                out = self._finite_difference(parts)
        flat = self._flat(out)
        if self.world > 1:  # Σ_r (N_r / N) H_r v over ranks: the global batch's Hessian
            from gradlens.instrument.distributed import all_reduce_sum

            flat = all_reduce_sum(flat * self.objective.total) / self._global_total
        return flat.to(v.dtype)

    def _split(self, v: Tensor) -> list[Tensor]:
        return [x.view(shape) for x, shape in zip(v.split(self.numels), self.shapes, strict=True)]

    def _flat(self, parts: list[Tensor]) -> Tensor:
        return torch.cat([p.reshape(-1) for p in parts])

    def _second(self, grads: tuple[Tensor, ...], v: list[Tensor], retain: bool) -> list[Tensor]:
        used = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        out = [torch.zeros_like(p) for p in self.params]
        if used:
            results = torch.autograd.grad(
                [grads[i] for i in used],
                self.params,
                grad_outputs=[v[i] for i in used],
                retain_graph=retain,
                allow_unused=True,
            )
            for i, r in enumerate(results):
                if r is not None:
                    out[i] = r
        return out

    def _first(self, batch: Batch | None) -> tuple[Tensor, ...]:
        loss = self.objective.loss() if batch is None else self.objective.batch_loss(batch)
        return torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)

    def _double_backward(self, v: list[Tensor]) -> list[Tensor]:
        batches = self.objective.batches
        if len(batches) == 1:
            if self._graph is None:
                self._graph = self._first(None)
            return self._second(self._graph, v, retain=True)
        total = [torch.zeros_like(p) for p in self.params]
        for batch, weight in self.objective.weighted_batches():
            part = self._second(self._first(batch), v, retain=False)
            for t, h in zip(total, part, strict=True):
                t.add_(h, alpha=weight)
        return total

    def _loss_of(self, batch: Batch) -> Callable[[dict[str, Tensor]], Tensor]:
        return lambda params: self.objective.batch_loss(batch, params)

    def _detached(self) -> dict[str, Tensor]:
        return {n: p.detach() for n, p in zip(self.names, self.params, strict=True)}

    def _forward_over_reverse(self, v: list[Tensor]) -> list[Tensor]:
        primal = self._detached()
        tangent = dict(zip(self.names, v, strict=True))
        total = [torch.zeros_like(p) for p in self.params]
        for batch, weight in self.objective.weighted_batches():
            hv = jvp(grad(self._loss_of(batch)), (primal,), (tangent,))[1]
            for t, name in zip(total, self.names, strict=True):
                t.add_(hv[name], alpha=weight)
        return total

    def _vmapped(self, vectors: Tensor) -> Tensor:
        primal = self._detached()
        stacked = {
            n: x.reshape(vectors.shape[0], *shape)
            for n, x, shape in zip(
                self.names,
                vectors.to(self.device, self.dtype).split(self.numels, dim=1),
                self.shapes,
                strict=True,
            )
        }
        total = torch.zeros(vectors.shape[0], self.dim, dtype=self.dtype, device=self.device)
        for batch, weight in self.objective.weighted_batches():
            g = grad(self._loss_of(batch))
            hv = vmap(lambda t, g=g: jvp(g, (primal,), (t,))[1])(stacked)
            flat = torch.cat([hv[n].reshape(vectors.shape[0], -1) for n in self.names], dim=1)
            total.add_(flat, alpha=weight)
        return total.to(vectors.dtype)

    def _finite_difference(self, v: list[Tensor]) -> list[Tensor]:
        norm = math.sqrt(sum(float((x.double() ** 2).sum()) for x in v))
        if norm == 0.0:
            return [torch.zeros_like(x) for x in v]
        eps = self.fd_eps / norm
        primal = self._detached()
        gradients = []
        for sign in (1.0, -1.0):
            shifted = {n: p + sign * eps * x for (n, p), x in zip(primal.items(), v, strict=True)}
            total = [torch.zeros_like(p) for p in self.params]
            for batch, weight in self.objective.weighted_batches():
                g = grad(self._loss_of(batch))(shifted)
                for t, name in zip(total, self.names, strict=True):
                    t.add_(g[name], alpha=weight)
            gradients.append(total)
        return [(a - b) / (2 * eps) for a, b in zip(*gradients, strict=True)]


def _relative_error(approx: Tensor, exact: Tensor) -> float:
    scale = float(torch.linalg.vector_norm(exact.double()))
    diff = float(torch.linalg.vector_norm((approx - exact).double()))
    return diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)


def _agreed(values: dict[str, float], world: int, device: torch.device) -> dict[str, float]:
    """The ranks' mean of each measurement, so every rank takes the same decision."""
    if world <= 1:
        return values
    from gradlens.instrument.distributed import all_reduce_sum

    packed = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    mean = all_reduce_sum(packed) / world
    return dict(zip(values, mean.tolist(), strict=True))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
