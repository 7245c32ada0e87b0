"""The ``hessian`` probe: top-k eigenvalues, λmin, trace and (optionally) density, on a
schedule, with the sharpness against 2/lr for the edge-of-stability rule.

Rows: ``hessian`` (step, metric, layer, index, value) with metrics top_eigenvalue and
top_residual (index = rank), hvps, setup_hvps, lambda_min, lambda_min_residual, trace,
trace_stderr, trace_hvps, trace_reached (0 when the budget could not reach ``trace_tol``),
trace_deflated (eigenpairs of the eigen run deflated exactly), sharpness, lr, eos_ratio
(= sharpness · lr / 2; ≥ 1 means the step size is at or past the stability limit 2/lr of
gradient descent — Cohen et al. 2021), the HVP engine choice (hvp_seconds and hvp_engine with
layer = engine, fd_check_error, fd_check_passed) and, with ``blocks=True``,
block_top_eigenvalue per module (layer = module name); ``spectrum`` rows when
``density_runs > 0``.
"""

from __future__ import annotations

from typing import Any

import torch

from gradlens.analysis.hessian.choose import choose_hvp
from gradlens.analysis.hessian.hvp import METHODS, HessianOperator
from gradlens.analysis.hessian.sharded import ShardedHVP
from gradlens.analysis.hessian.spectra import density_runs, top_eigenpairs
from gradlens.functional.lanczos import WHICH, LanczosResult, lanczos
from gradlens.functional.operator import restrict
from gradlens.functional.trace import hutchpp
from gradlens.probes.base import Probe, ProbeContext, Rows
from gradlens.store.rows import long_rows

__all__ = ["HessianProbe"]


class HessianProbe(Probe):
    """Lanczos on Hessian-vector products of the probe set's loss."""

    name = "hessian"
    tables = ("hessian", "spectrum")
    preset = "standard"
    default_every = 500
    needs_objective = True
    real_only = True

    def __init__(
        self,
        every: int | None = None,
        at_end: bool = False,
        mode: str = "eval",
        k: int = 5,
        tol: float = 1e-3,
        which: str = "LA",
        method: str = "auto",
        max_iter: int | None = None,
        trace: bool = True,
        trace_tol: float = 0.05,
        trace_hvps: int = 60,
        density_runs: int = 0,
        density_steps: int = 40,
        blocks: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(every, at_end, mode)
        if method not in METHODS:
            raise ValueError(f"hessian: method must be one of {METHODS}, got {method!r}")
        if k < 1:
            raise ValueError(f"hessian: k must be >= 1, got {k}")
        if which not in WHICH:
            raise ValueError(f"hessian: which must be one of {WHICH}, got {which!r}")
        if max_iter is not None and max_iter < k:
            raise ValueError(f"hessian: max_iter must be >= k, got {max_iter}")
        if trace and trace_hvps < 4:
            raise ValueError(f"hessian: trace_hvps must be >= 4, got {trace_hvps}")
        if tol <= 0 or density_runs < 0 or density_steps < 2:
            raise ValueError("hessian: need tol > 0, density_runs >= 0, density_steps >= 2")
        self.k, self.tol, self.which, self.method = int(k), float(tol), which, method
        self.max_iter = max_iter
        self.trace, self.trace_tol, self.trace_hvps = bool(trace), float(trace_tol), trace_hvps
        self.density_runs, self.density_steps = int(density_runs), int(density_steps)
        self.blocks = bool(blocks)
        self.seed = int(seed)
        self._math_attention = False

    def compute(self, ctx: ProbeContext) -> Rows:
        engine = choose_hvp(
            ctx.objective, self.method, math_attention=self._math_attention, world=ctx.world
        )
        if isinstance(engine, ShardedHVP):
            return self._sharded(ctx, engine)
        self.method, self._math_attention = engine.method, engine.math_attention  # reuse choice
        eig = top_eigenpairs(
            engine, self.k, self.which, self.tol, max_iter=self.max_iter, seed=self.seed + ctx.step
        )
        rows = _Rows(ctx.step)
        self._eigen_rows(rows, eig.run, ctx.lrs)
        _selection_rows(rows, engine.selection)
        if self.trace and self.trace_hvps >= 4:
            generator = torch.Generator().manual_seed(self.seed + ctx.step + 7)
            sketch = max(1, min(self.k, (self.trace_hvps - 2) // 4))
            tr = hutchpp(  # reuses the eigen run: its converged pairs are deflated exactly
                engine,
                sketch=sketch,
                tol=self.trace_tol,
                max_hvps=self.trace_hvps,
                generator=generator,
                known=eig.converged_pairs(max(self.tol, 1e-2)),
            )
            rows.add("trace", tr.estimate)
            rows.add("trace_stderr", tr.stderr)
            rows.add("trace_hvps", tr.hvps)
            rows.add("trace_reached", float(tr.reached))
            rows.add("trace_deflated", tr.deflated)
        if self.blocks:
            for block, value in _block_tops(engine, self.tol, self.seed).items():
                rows.add("block_top_eigenvalue", value, layer=block)
        out: Rows = {}
        if self.density_runs > 0:
            density = density_runs(
                engine,
                self.density_runs,
                self.density_steps,
                seed=self.seed + ctx.step,
                reuse=[eig.run] if eig.run.restarts == 0 else [],  # SLQ needs T
            )
            out["spectrum"] = _spectrum_rows(ctx.step, density)
        rows.add("hvps", engine.count)
        rows.add("setup_hvps", engine.setup_count)
        out["hessian"] = rows.columns
        return out

    def _sharded(self, ctx: ProbeContext, engine: ShardedHVP) -> Rows:
        """FSDP2: finite-difference products through the sharded backward, Lanczos summing
        its inner products over ranks (every rank takes the same steps)."""
        generator = torch.Generator().manual_seed(self.seed + ctx.step + 1000 * dist_rank())
        start = torch.randn(engine.local_dim, generator=generator, dtype=torch.float64)
        run = lanczos(
            engine,
            k=self.k,
            which=self.which,
            tol=self.tol,
            max_iter=self.max_iter,
            start=start,
            allreduce=engine.allreduce,
        )
        rows = _Rows(ctx.step)
        self._eigen_rows(rows, run, ctx.lrs)
        rows.add("hvps", engine.count)
        return {"hessian": rows.columns}

    def _eigen_rows(self, rows: _Rows, run: LanczosResult, lrs: list[float]) -> None:
        """Top eigenvalues with residuals, λmin from the same run, sharpness against 2/lr."""
        for i, (value, residual) in enumerate(
            zip(run.eigenvalues.tolist(), run.residuals.tolist(), strict=True)
        ):
            rows.add("top_eigenvalue", value, index=i)
            rows.add("top_residual", residual, index=i)
        rows.add("lambda_min", float(run.ritz[0]))
        rows.add("lambda_min_residual", float(run.ritz_residuals[0]))
        sharpness = float(run.eigenvalues.max()) if self.which != "SA" else float("nan")
        rows.add("sharpness", sharpness)
        if lrs:
            rows.add("lr", lrs[0])
            rows.add("eos_ratio", sharpness * lrs[0] / 2)


def dist_rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class _Rows:
    """``hessian`` rows of one step, added one metric at a time."""

    def __init__(self, step: int) -> None:
        self.step = step
        self._columns: dict[str, list[Any]] = {"metric": [], "layer": [], "index": [], "value": []}

    def add(self, metric: str, value: float, index: int = 0, layer: str = "") -> None:
        row = {"metric": metric, "layer": layer, "index": index, "value": float(value)}
        for name, item in row.items():
            self._columns[name].append(item)

    @property
    def columns(self) -> dict[str, list[Any]]:
        return long_rows("hessian", self.step, **self._columns)


def _selection_rows(rows: _Rows, selection: dict[str, Any]) -> None:
    """What ``auto`` measured: seconds per HVP of each engine (layer = engine), the engine
    kept (``hvp_engine``, layer = engine, value 1) and the finite-difference accuracy check
    (``fd_check_error``: relative error against an exact engine; ``fd_check_passed``)."""
    for method, seconds in selection.get("seconds", {}).items():
        rows.add("hvp_seconds", seconds, layer=method)
    if selection.get("method"):
        rows.add("hvp_engine", 1.0, layer=str(selection["method"]))
    check = selection.get("fd_check")
    if check:
        rows.add("fd_check_error", check["error"], layer=str(check["against"]))
        rows.add("fd_check_passed", float(check["passed"]))


def _block_tops(engine: HessianOperator, tol: float, seed: int) -> dict[str, float]:
    """Top eigenvalue of each module's diagonal Hessian block (one Lanczos per block)."""
    out = {}
    for block, index in engine.module_blocks().items():
        run = lanczos(
            restrict(engine, index),
            k=1,
            which="LA",
            tol=tol,
            generator=torch.Generator().manual_seed(seed),
        )
        out[block] = float(run.eigenvalues[0])
    return out


def _spectrum_rows(step: int, density: Any) -> dict[str, list[Any]]:
    """The quadrature of every run (weights averaged over runs), then the smoothed density."""
    kind: list[str] = []
    index: list[int] = []
    x: list[float] = []
    value: list[float] = []
    scale = 1.0 / len(density.nodes)
    for nodes, weights in zip(density.nodes, density.weights, strict=True):
        kind += ["quadrature"] * len(nodes)
        index += range(len(nodes))
        x += nodes.tolist()
        value += [w * scale for w in weights.tolist()]
    kind += ["density"] * len(density.grid)
    index += range(len(density.grid))
    x += density.grid.tolist()
    value += density.density.tolist()
    return long_rows("spectrum", step, kind=kind, index=index, x=x, value=value)
