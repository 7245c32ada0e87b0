"""Which HVP engine to use for an objective: :func:`choose_hvp`.

``method="auto"`` times two products of every engine (after a warm-up) on the real batches and
keeps the fastest; finite differences qualify only when their product agrees with an exact
engine's to ``fd_check_tol`` (1e-3 relative, in the run's dtype). The timings, the check and
the choice are kept in the engine's ``selection`` and logged. Where double backward or forward
AD is not implemented (fused attention kernels) it retries with the math attention backend,
then falls back to finite differences — saying so on stderr. Forward-over-reverse failing
for any reason leaves the choice to the other engines. FSDP2-sharded parameters always
get :class:`ShardedHVP`.
"""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor

from gradlens._attention import unsupported
from gradlens.analysis.hessian.double_backward import DoubleBackwardHVP
from gradlens.analysis.hessian.finite_difference import FiniteDifferenceHVP
from gradlens.analysis.hessian.forward_over_reverse import ForwardOverReverseHVP
from gradlens.analysis.hessian.hvp import METHODS, HessianOperator, Log, note, say
from gradlens.analysis.hessian.sharded import ShardedHVP
from gradlens.analysis.objective import Objective
from gradlens.instrument.distributed import all_reduce_sum, is_sharded

__all__ = ["ENGINES", "choose_hvp"]

ENGINES: dict[str, type[HessianOperator]] = {
    "double_backward": DoubleBackwardHVP,
    "forward_over_reverse": ForwardOverReverseHVP,
    "finite_difference": FiniteDifferenceHVP,
}
_EXACT = ("double_backward", "forward_over_reverse")


def choose_hvp(
    objective: Objective,
    method: str = "auto",
    *,
    fd_eps: float | None = None,
    log: Log | None = None,
    math_attention: bool = False,
    world: int = 1,
    fd_check_tol: float = 1e-3,
) -> HessianOperator | ShardedHVP:
    """The HVP engine ``method`` for ``objective`` (one of :data:`METHODS`), chosen by
    timing and an accuracy check when ``"auto"``. Run inside ``objective.isolated()``.

    Args:
        fd_eps: finite-difference step along the unit direction.
        log: where to say which engine was chosen (default: stderr / the package logger).
        math_attention: run under the math attention backend (pass back an earlier choice).
        world: > 1 in multi-process runs (products and measurements agree over ranks).
        fd_check_tol: ``auto`` accepts finite differences only when their product on the
            timing vector is within this relative error of an exact engine's.

    Example:
        >>> with objective.isolated():                                  # doctest: +SKIP
        ...     hv = choose_hvp(objective)(v)
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not objective.params:
        raise ValueError("the model has no trainable parameters")
    if is_sharded(objective.params):
        return ShardedHVP(objective, fd_eps=fd_eps or 5e-3)
    if method == "finite_difference":
        return FiniteDifferenceHVP(
            objective, fd_eps=fd_eps, log=log, math_attention=math_attention, world=world
        )
    if method != "auto":
        return ENGINES[method](objective, log=log, math_attention=math_attention, world=world)
    return _fastest(objective, fd_eps, log, world, fd_check_tol)


def _fastest(
    objective: Objective, fd_eps: float | None, log: Log | None, world: int, tol: float
) -> HessianOperator:
    """Time every engine on the real batches and keep the fastest correct one.

    Exact engines qualify when they run; finite differences only after their product on the
    timing vector agrees with the fastest exact engine's to ``tol`` (relative, in the run's
    dtype). What was measured goes into the chosen engine's ``selection``.
    """
    timings: dict[str, float] = {}
    outputs: dict[str, Tensor] = {}
    errors: dict[str, str] = {}
    engines: dict[str, HessianOperator] = {}
    setup = 0
    attention = False
    for attention in (False, True):
        for method in _EXACT:
            engine = ENGINES[method](objective, log=log, math_attention=attention, world=world)
            try:
                timings[method], outputs[method] = _timed(engine)
                engines[method] = engine
                engine.reset()  # free its graph before the next engine is timed
            except Exception as exc:
                # Forward-over-reverse may fail for any reason while double backward works:
                # torch.func's forward AD has gaps of its own (F.mse_loss with the default
                # mean reduction raises 'ZeroTensors are immutable', pytorch#123996).
                if method == "double_backward" and not unsupported(exc):
                    raise
                errors[method] = str(exc).splitlines()[0][:120]
            setup += engine.setup_count
        if timings:
            break
    fd = FiniteDifferenceHVP(
        objective, fd_eps=fd_eps, log=log, math_attention=attention and bool(timings), world=world
    )
    if not timings:
        say(
            log,
            f"double differentiation is not implemented for this model "
            f"({errors.get('double_backward', '?')}); using finite differences",
        )
        fd.setup_count = setup
        fd.selection = {"method": "finite_difference", "seconds": {}, "fd_check": None}
        return fd
    if attention:
        say(
            log,
            f"double backward is not implemented with the default attention kernel "
            f"({errors.get('double_backward', '?')}); using the math attention backend",
        )
    reference = min(timings, key=lambda m: timings[m])
    try:
        fd_seconds, fd_out = _timed(fd)
        check = _relative_error(fd_out, outputs[reference])
    except Exception:  # e.g. torch.func and in-place buffer updates (BatchNorm)
        fd_seconds, check = math.inf, math.inf
    engines["finite_difference"] = fd
    setup += fd.setup_count
    seconds = _agreed({**timings, "finite_difference": fd_seconds}, world, fd.device)
    check = _agreed({"check": check}, world, fd.device)["check"]
    qualified = check <= tol
    candidates = {m: t for m, t in seconds.items() if m != "finite_difference" or qualified}
    chosen = min(candidates, key=lambda m: candidates[m])
    engine = engines[chosen]
    engine.reset()  # products from here on count; start them from a fresh graph
    engine.setup_count = setup
    engine.selection = {
        "method": chosen,
        "seconds": seconds,
        "fd_check": {"error": check, "tol": tol, "passed": qualified, "against": reference},
    }
    note(
        log,
        "HVP engine "
        + ", ".join(f"{m} {1e3 * t:.3g} ms" for m, t in seconds.items())
        + f"; finite differences {'pass' if qualified else 'fail'} the accuracy check "
        f"(relative error {check:.2e} vs {reference}, tol {tol:g}); using {chosen}"
        + "".join(f"; {m} failed ({e})" for m, e in errors.items() if m not in seconds),
    )
    return engine


def _timed(engine: HessianOperator) -> tuple[float, Tensor]:
    """A warm-up product (it builds the reusable graph), then the faster of two timed;
    returns the seconds and the warm-up's product (for the accuracy check)."""
    v = torch.randn(engine.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    v = v.to(engine.device, engine.dtype)
    out = engine.product(v)
    engine.setup_count += 1
    best = math.inf
    for _ in range(2):
        _sync(engine.device)
        start = time.perf_counter()
        engine.product(v)
        _sync(engine.device)
        best = min(best, time.perf_counter() - start)
        engine.setup_count += 1
    return best, out


def _relative_error(approx: Tensor, exact: Tensor) -> float:
    scale = float(torch.linalg.vector_norm(exact.double()))
    diff = float(torch.linalg.vector_norm((approx - exact).double()))
    return diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)


def _agreed(values: dict[str, float], world: int, device: torch.device) -> dict[str, float]:
    """The ranks' mean of each measurement, so every rank takes the same decision."""
    if world <= 1:
        return values
    packed = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    mean = all_reduce_sum(packed) / world
    return dict(zip(values, mean.tolist(), strict=True))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
