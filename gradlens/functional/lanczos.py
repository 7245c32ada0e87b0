"""Lanczos with full reorthogonalisation for a few extreme eigenpairs of a symmetric operator,
optionally thick-restarted within a fixed number of basis vectors.

Knows nothing of models: it takes ``matvec(v) -> Hv`` on flat vectors (or an
:class:`~gradlens.functional.operator.Operator`). Stops on the Ritz residual
``‖H x_i − θ_i x_i‖`` (exact with full reorthogonalisation, up to rounding) falling below
``tol·|θ_i|`` for every wanted pair, not on the change of successive estimates (which stops
PyHessian early and wrong).

Each step is one product and two classical Gram-Schmidt passes against the whole basis
("twice is enough", Kahan/Parlett); the projection coefficients go into a small dense
projected matrix kept on the device, so a step reads nothing back to the host. The host reads
the projected matrix to test convergence; on CUDA that read is pipelined one step behind (the
next product is already queued while the host solves the small eigenproblem), so the device
never idles waiting for the host, at the price of at most one extra product.

With ``max_basis`` the basis is bounded (thick restart, Wu & Simon 2000; the scheme of
ARPACK/``scipy.sparse.linalg.eigsh`` with explicit Ritz vectors): when it is full, the
wanted Ritz vectors (and the opposite end, for λmin) are kept, converged wanted pairs are
locked — kept in the basis (new vectors stay orthogonal to them), their values and residuals
frozen — and the Krylov space grows again from the residual direction.

References: Golub & Van Loan, *Matrix Computations*, §10.1; Parlett, *The Symmetric
Eigenvalue Problem*, ch. 13; Wu & Simon (2000), *Thick-restart Lanczos method for large
symmetric eigenvalue problems*, SIAM J. Matrix Anal. Appl. 22(2).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from gradlens.functional.operator import Operator, as_operator

__all__ = ["WHICH", "LanczosResult", "default_max_basis", "lanczos", "tridiagonal_eigh"]

WHICH = ("LA", "SA", "LM")
Matvec = Callable[[Tensor], Tensor]
Reduce = Callable[[Tensor], Tensor]

_CHUNK = 1 << 20  # columns per block when the basis is rotated in place at a restart


def default_max_basis(k: int) -> int:
    """The bounded basis size gradlens uses for large models: ``max(2k + 10, 24)`` vectors."""
    return max(2 * k + 10, 24)


@dataclass
class LanczosResult:
    """Wanted Ritz pairs and the Krylov run behind them.

    ``eigenvalues``/``residuals`` are ordered by ``which`` (LA: descending; SA: ascending;
    LM: by descending magnitude); ``eigenvectors`` is (k, dim). ``alpha``/``beta`` define the
    tridiagonal T of an unrestarted run (reused for spectral density; empty after a restart);
    ``ritz``/``ritz_residuals`` cover all Ritz values of the final basis, ascending (the
    smallest is an estimate of λmin). ``basis_vectors`` is the most vectors of length ``dim``
    the basis held at once; ``restarts`` and ``locked`` count thick restarts and locked pairs.
    """

    eigenvalues: Tensor
    residuals: Tensor
    eigenvectors: Tensor
    hvps: int
    converged: bool
    alpha: Tensor
    beta: Tensor
    ritz: Tensor
    ritz_residuals: Tensor
    start: Tensor
    restarts: int = 0
    locked: int = 0
    basis_vectors: int = 0
    basis_device: str = "cpu"

    @property
    def steps(self) -> int:
        return int(self.alpha.numel())


def tridiagonal_eigh(alpha: Tensor, beta: Tensor) -> tuple[Tensor, Tensor]:
    """Eigen-decomposition of the symmetric tridiagonal matrix (diagonal α, off-diagonal β).

    Returns ascending eigenvalues and the eigenvector matrix (columns), in float64.
    """
    a = alpha.to(torch.float64)
    t = torch.diag(a)
    if beta.numel():
        b = beta.to(torch.float64)
        t = t + torch.diag(b, 1) + torch.diag(b, -1)
    return _small_eigh(t)


def _squared_norm(x: Tensor) -> Tensor:
    """‖x‖² as a 1-element tensor, through a matrix-vector product: MKL's threaded ``dot``
    took 8–10 ms on a busy 2-core machine whatever the length (``mv``: microseconds)."""
    return torch.mv(x.unsqueeze(0), x)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Small host linear algebra on one thread: multi-threaded LAPACK/BLAS on a 64×64 matrix
    took 40 ms on a busy 2-core machine against 0.3 ms on one thread (measured)."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _small_eigh(matrix: Tensor) -> tuple[Tensor, Tensor]:
    with _one_thread():
        return torch.linalg.eigh(matrix)


def _order(theta: Tensor, which: str) -> Tensor:
    """Indices of ``theta`` from most to least wanted."""
    if which == "LA":
        return torch.argsort(theta, descending=True)
    if which == "SA":
        return torch.argsort(theta)
    return torch.argsort(theta.abs(), descending=True)


class _Krylov:
    """Basis rows and the projected matrix, both on the device; a step never syncs.

    ``rows[:n]`` are orthonormal; ``proj[:n, :n-1]`` holds the Arnoldi coefficients (column
    j: the projection of H·rows[j] on the basis, then ‖residual‖ on row j+1), so that
    H·V_m = V_m·T_m + β·rows[m]·e_mᵀ with T_m the symmetric part of ``proj[:m, :m]``.
    """

    def __init__(
        self,
        dim: int,
        dtype: torch.dtype,
        device: torch.device,
        capacity: int,
        limit: int,
        allreduce: Reduce | None,
    ) -> None:
        self.rows = torch.empty(capacity, dim, dtype=dtype, device=device)
        self.proj = torch.zeros(capacity, capacity, dtype=torch.float64, device=device)
        self.limit = limit  # the most rows ever needed (the capacity grows up to it)
        self.allreduce = allreduce
        self.n = 0
        self.capacity = capacity  # the most rows allocated at once

    def total(self, t: Tensor) -> Tensor:
        return self.allreduce(t) if self.allreduce is not None else t

    def _grow(self) -> None:
        size = min(2 * self.rows.shape[0], self.limit)
        rows = torch.empty(size, self.rows.shape[1], dtype=self.rows.dtype, device=self.rows.device)
        rows[: self.n] = self.rows[: self.n]
        proj = torch.zeros(size, size, dtype=torch.float64, device=self.proj.device)
        proj[: self.n, : self.n] = self.proj[: self.n, : self.n]
        self.capacity = max(self.capacity, size)
        self.rows, self.proj = rows, proj

    def push(self, q: Tensor) -> None:
        if self.n == self.rows.shape[0]:
            self._grow()
        self.rows[self.n] = q.to(self.rows.device, self.rows.dtype)
        self.n += 1

    @property
    def full(self) -> bool:
        return self.n == self.rows.shape[0] == self.limit

    def step(self, matvec: Matvec, device: torch.device, dtype: torch.dtype) -> None:
        """One product from the newest row, orthogonalised twice against the basis."""
        j = self.n - 1
        w = matvec(self.rows[j].to(device, dtype)).to(self.rows.device, self.rows.dtype)
        basis = self.rows[: self.n]
        coef = self.total(basis @ w)
        w = w - coef @ basis
        again = self.total(basis @ w)
        w = w - again @ basis
        beta = self.total(_squared_norm(w)).sqrt()
        self.proj[: self.n, j] = (coef + again).to(torch.float64)
        if self.n == self.rows.shape[0]:
            self._grow()
        self.proj[self.n, j] = beta[0].to(torch.float64)
        tiny = torch.finfo(w.dtype).tiny
        self.rows[self.n] = w / beta.clamp_min(tiny)  # a breakdown is caught by the host check
        self.n += 1

    def snapshot(self, pinned: bool) -> tuple[int, Tensor, torch.cuda.Event | None]:
        """The projected matrix so far, copied to the host (asynchronously when ``pinned``)."""
        m = self.n - 1
        block = self.proj[: m + 1, :m]
        if not pinned:
            return m, block.to("cpu", copy=True), None
        host = torch.empty(block.shape, dtype=torch.float64, pin_memory=True)
        host.copy_(block, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return m, host, event

    def combine(self, start: int, stop: int, coefficients: Tensor) -> Tensor:
        """coefficients (c, stop−start) @ rows[start:stop] → (c, dim)."""
        part = self.rows[start:stop]
        return coefficients.to(part.device, part.dtype) @ part

    def restart(self, m: int, locked: int, keep: Tensor, rebuilt: Tensor) -> None:
        """rows[locked:locked+c] ← keepᵀ rows[locked:m] in place (column blocks, no second
        basis), rows[locked+c] ← rows[m]; ``rebuilt`` is the new projected matrix, its last
        row and column the coupling to rows[m]."""
        c = keep.shape[1]
        coefficients = keep.T.to(self.rows.device, self.rows.dtype)
        for lo in range(0, self.rows.shape[1], _CHUNK):
            block = self.rows[locked:m, lo : lo + _CHUNK]
            self.rows[locked : locked + c, lo : lo + _CHUNK] = coefficients @ block
        size = locked + c
        self.rows[size] = self.rows[m]
        self.proj.zero_()
        self.proj[: size + 1, : size + 1] = rebuilt.to(self.proj.device)
        self.n = size + 1


@dataclass
class _Ritz:
    """Ritz pairs of a snapshot: locked ones first, then the active block's."""

    theta: Tensor  # all values (locked, then active ascending)
    residual: Tensor
    vectors: Tensor  # active block's eigenvectors (columns), float64
    sym: Tensor  # the symmetric projected matrix (m × m)
    beta: float
    m: int


def _ritz(m: int, block: Tensor, locked_theta: Tensor, locked_res: Tensor) -> _Ritz:
    with _one_thread():
        return _ritz_pairs(m, block, locked_theta, locked_res)


def _ritz_pairs(m: int, block: Tensor, locked_theta: Tensor, locked_res: Tensor) -> _Ritz:
    nl = locked_theta.numel()
    square = block[:m, :m]
    sym = 0.5 * (square + square.T)
    beta = float(block[m, m - 1]) if m >= 1 else 0.0
    theta, y = torch.linalg.eigh(sym[nl:, nl:])
    coupling = sym[:nl, nl:] @ y  # locked-to-active couplings enter the residual
    residual = torch.sqrt((beta * y[-1]) ** 2 + (coupling**2).sum(0))
    return _Ritz(
        torch.cat([locked_theta, theta]),
        torch.cat([locked_res, residual]),
        y,
        sym,
        beta,
        m,
    )


def _done(ritz: _Ritz, k: int, which: str, tol: float, scale: float) -> tuple[Tensor, bool, bool]:
    idx = _order(ritz.theta, which)[:k]
    floor = 1e-7 * scale
    ok = ritz.residual[idx] <= tol * torch.clamp(ritz.theta[idx].abs(), min=floor)
    breakdown = ritz.beta <= 1e-10 * max(scale, 1e-30)
    return idx, bool(ok.all()), breakdown


def lanczos(
    matvec: Matvec | Operator,
    dim: int | None = None,
    k: int = 5,
    which: str = "LA",
    tol: float = 1e-3,
    max_iter: int | None = None,
    *,
    start: Tensor | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    basis_device: torch.device | str | None = None,
    max_basis: int | None = None,
    min_iter: int = 0,
    allreduce: Reduce | None = None,
    pipeline: bool | None = None,
) -> LanczosResult:
    """The ``k`` wanted eigenpairs of the symmetric operator ``matvec`` (dimension ``dim``).

    Args:
        matvec: v ↦ Hv on flat vectors of ``dtype`` on ``device``, or an ``Operator`` (then
            ``dim``, ``dtype`` and ``device`` default to the operator's).
        k: number of eigenpairs.
        which: ``LA`` largest algebraic, ``SA`` smallest algebraic, ``LM`` largest magnitude.
        tol: stop when every wanted pair has ‖Hv − θv‖ ≤ tol·|θ|.
        max_iter: products limit (default min(dim, max(20, 10k + 40)) without restarts,
            max(100, 20k + 100) with them).
        start: starting vector (default: Gaussian from ``generator``).
        dtype: working precision of the basis (float64 for ill-conditioned problems).
        basis_device: where the basis lives (``"cpu"`` to offload a large basis).
        max_basis: bound the basis to this many vectors (thick restart with locking);
            ``None`` keeps every Krylov vector (fewest products). See :func:`default_max_basis`.
        min_iter: run at least this many steps (e.g. for spectral density quadrature).
        allreduce: for sharded operators (each process holds a slice of every vector): sums
            partial inner products over processes. ``dim`` stays the global dimension (every
            process must take the same decisions); pass this process's slice as ``start``.
        pipeline: test convergence one step behind, overlapping the host's check with the
            next product (default: on for CUDA bases; costs at most one extra product).

    Example:
        >>> h = torch.diag(torch.arange(1.0, 101.0))
        >>> lanczos(lambda v: h @ v, 100, k=2).eigenvalues
        tensor([100.,  99.])
    """
    op = as_operator(matvec, dim, dtype, device)
    dim, dtype, device = op.dim, op.dtype, op.device
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    if not 1 <= k <= dim:
        raise ValueError(f"k must be in [1, {dim}], got {k}")
    if tol <= 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    restarted = max_basis is not None and max_basis < dim + 1
    if max_basis is not None and max_basis < k + 6:
        raise ValueError(f"max_basis must be >= k + 6 = {k + 6}, got {max_basis}")
    default = max(100, 20 * k + 100) if restarted else max(20, 10 * k + 40)
    limit = max_iter if max_iter is not None else default
    if not restarted:
        limit = min(dim, limit)
    if limit < k:
        raise ValueError(f"max_iter={max_iter} is smaller than k={k}")
    if start is None:
        start = torch.randn(dim, generator=generator, dtype=torch.float64)
    q = start.to(device, dtype)
    q = q / _total(allreduce, _squared_norm(q))[0].sqrt()
    first = q.clone()
    where = torch.device(basis_device or device)
    rows = int(max_basis) if restarted and max_basis is not None else limit + 1
    capacity = min(rows, 64) if not restarted else rows
    krylov = _Krylov(q.numel(), dtype, where, capacity, rows, allreduce)  # local slice length
    krylov.push(q)
    lag = pipeline if pipeline is not None else where.type == "cuda"
    pinned = lag and where.type == "cuda"
    locked_theta = torch.zeros(0, dtype=torch.float64)
    locked_res = torch.zeros(0, dtype=torch.float64)
    locked_rows = 0
    restarts = 0
    converged = False
    ritz: _Ritz | None = None
    pending: tuple[int, Tensor, torch.cuda.Event | None] | None = None
    hvps = 0
    while True:
        krylov.step(op, device, dtype)
        hvps += 1
        last = hvps >= limit
        snap = krylov.snapshot(pinned)
        urgent = last or krylov.full or not lag
        ready, pending = (snap, None) if urgent else (pending, snap)
        if ready is None:
            continue
        m, block, event = ready
        if event is not None:
            event.synchronize()
        ritz = _ritz(m, block, locked_theta, locked_res)
        scale = float(ritz.theta.abs().max()) if ritz.theta.numel() else 1.0
        if hvps - (0 if urgent else 1) >= max(k, min_iter) and ritz.theta.numel() >= k:
            _, ok, breakdown = _done(ritz, k, which, tol, scale)
            if ok or breakdown:
                converged = True
                break
        elif ritz.beta <= 1e-10 * max(scale, 1e-30):
            break
        if last:
            break
        if krylov.full:
            locked_theta, locked_res, locked_rows = _thick_restart(
                krylov, ritz, locked_rows, locked_theta, locked_res, k, which, tol, scale
            )
            restarts += 1
    assert ritz is not None
    return _result(krylov, ritz, locked_rows, k, which, hvps, converged, first, restarts, device)


def _total(allreduce: Reduce | None, t: Tensor) -> Tensor:
    return allreduce(t) if allreduce is not None else t


def _thick_restart(
    krylov: _Krylov,
    ritz: _Ritz,
    nl: int,
    locked_theta: Tensor,
    locked_res: Tensor,
    k: int,
    which: str,
    tol: float,
    scale: float,
) -> tuple[Tensor, Tensor, int]:
    """Lock converged wanted pairs, keep the best active Ritz vectors, restart from β·q."""
    m = ritz.m
    active = ritz.theta[nl:]
    res = ritz.residual[nl:]
    order = _order(ritz.theta, which)
    wanted = [int(i) for i in order[:k]]
    floor = 1e-7 * scale
    newly = [
        i - nl
        for i in wanted
        if i >= nl and res[i - nl] <= tol * max(abs(float(ritz.theta[i])), floor)
    ]
    free = krylov.limit - 1 - (nl + len(newly))  # rows left for active vectors, minus q
    candidates = [int(i) - nl for i in order if int(i) >= nl and int(i) - nl not in newly]
    remaining = k - nl - len(newly)
    keep_n = min(max(remaining + 2, free // 2), free - 2, len(candidates))
    keep = candidates[:keep_n]
    opposite = candidates[-1] if candidates else None
    if which != "LM" and keep_n >= remaining + 2 and opposite is not None and opposite not in keep:
        keep[-1] = opposite  # the other end of the spectrum: λmin (or λmax) from the same run
    selected = newly + keep
    y = ritz.vectors[:, selected]  # (m − nl, c)
    c = len(selected)
    with _one_thread():
        z = torch.zeros(m, nl + c, dtype=torch.float64)
        z[:nl, :nl] = torch.eye(nl, dtype=torch.float64)
        z[nl:, nl:] = y
        rebuilt = torch.zeros(nl + c + 1, nl + c + 1, dtype=torch.float64)
        rebuilt[: nl + c, : nl + c] = z.T @ ritz.sym @ z
        coupling = ritz.beta * z[m - 1]
        rebuilt[nl + c, : nl + c] = coupling
        rebuilt[: nl + c, nl + c] = coupling
    krylov.restart(m, nl, y, rebuilt)
    locked_theta = torch.cat([locked_theta, active[newly]])
    locked_res = torch.cat([locked_res, res[newly]])
    return locked_theta, locked_res, nl + len(newly)


def _result(
    krylov: _Krylov,
    ritz: _Ritz,
    nl: int,
    k: int,
    which: str,
    hvps: int,
    converged: bool,
    first: Tensor,
    restarts: int,
    device: torch.device,
) -> LanczosResult:
    idx = _order(ritz.theta, which)[:k]
    coefficients = torch.zeros(len(idx), ritz.m, dtype=torch.float64)
    for row, i in enumerate(idx.tolist()):
        if i < nl:
            coefficients[row, i] = 1.0
        else:
            coefficients[row, nl:] = ritz.vectors[:, i - nl]
    vectors = krylov.combine(0, ritz.m, coefficients)
    ascending = torch.argsort(ritz.theta)
    if restarts == 0:
        alpha = ritz.sym.diagonal().clone()
        beta = ritz.sym.diagonal(-1).clone()
    else:
        alpha = beta = torch.zeros(0, dtype=torch.float64)
    return LanczosResult(
        eigenvalues=ritz.theta[idx],
        residuals=ritz.residual[idx],
        eigenvectors=vectors.to(device),
        hvps=hvps,
        converged=converged,
        alpha=alpha,
        beta=beta,
        ritz=ritz.theta[ascending],
        ritz_residuals=ritz.residual[ascending],
        start=first,
        restarts=restarts,
        locked=nl,
        basis_vectors=krylov.capacity,
        basis_device=str(krylov.rows.device),
    )
