"""Lanczos with full reorthogonalisation for a few extreme eigenpairs of a symmetric operator.

Knows nothing of models: it takes ``matvec(v) -> Hv`` on flat vectors. Stops on the Ritz
residual ``|β_m s_m,i| = ‖H v_i − θ_i v_i‖`` (exact with full reorthogonalisation, up to
rounding) falling below ``tol·|θ_i|`` for every wanted pair, not on the change of successive
estimates (which stops PyHessian early and wrong). The basis lives on ``basis_device``
(the operator's device by default, or the CPU when it would not fit) in ``dtype``.

Reference: Golub & Van Loan, *Matrix Computations*, §10.1; Parlett, *The Symmetric
Eigenvalue Problem*, ch. 13.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["WHICH", "LanczosResult", "lanczos", "tridiagonal_eigh"]

WHICH = ("LA", "SA", "LM")
Matvec = Callable[[Tensor], Tensor]
Reduce = Callable[[Tensor], Tensor]


@dataclass
class LanczosResult:
    """Wanted Ritz pairs and the Krylov run behind them.

    ``eigenvalues``/``residuals`` are ordered by ``which`` (LA: descending; SA: ascending;
    LM: by descending magnitude); ``eigenvectors`` is (k, dim). ``alpha``/``beta`` define the
    tridiagonal T (reused for spectral density); ``ritz``/``ritz_residuals`` cover all of T's
    eigenvalues, ascending (the smallest is an estimate of λmin).
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
    return torch.linalg.eigh(t)


def _wanted(theta: Tensor, k: int, which: str) -> Tensor:
    if which == "LA":
        return torch.argsort(theta, descending=True)[:k]
    if which == "SA":
        return torch.argsort(theta)[:k]
    return torch.argsort(theta.abs(), descending=True)[:k]


class _Basis:
    """Orthonormal Lanczos vectors as rows of a growing matrix (doubling capacity)."""

    def __init__(self, dim: int, dtype: torch.dtype, device: torch.device, capacity: int):
        self.rows = torch.empty(max(capacity, 2), dim, dtype=dtype, device=device)
        self.n = 0

    def append(self, q: Tensor) -> None:
        if self.n == self.rows.shape[0]:
            grown = torch.empty(
                2 * self.n, self.rows.shape[1], dtype=self.rows.dtype, device=self.rows.device
            )
            grown[: self.n] = self.rows
            self.rows = grown
        self.rows[self.n] = q.to(self.rows.device, self.rows.dtype)
        self.n += 1

    def orthogonalise(self, w: Tensor, allreduce: Reduce | None = None) -> Tensor:
        """w minus its projection on the basis: classical Gram-Schmidt, repeated once when the
        first pass removed most of w (the DGKS criterion, ‖x‖ < ‖w‖/√2 — "twice is enough",
        Kahan/Parlett). Each pass is two matrix-vector products. With ``allreduce`` the
        vectors are shards and the partial projections and norms are summed first."""
        q = self.rows[: self.n]
        x = w.to(q.device, q.dtype)

        def total(t: Tensor) -> Tensor:
            return allreduce(t) if allreduce is not None else t

        before = total((x @ x).reshape(1))
        for _ in range(2):
            x = x - q.T @ total(q @ x)
            after = total((x @ x).reshape(1))
            if float(after[0]) >= 0.5 * float(before[0]):
                break
            before = after
        return x.to(w.device, w.dtype)

    def combine(self, coefficients: Tensor) -> Tensor:
        """coefficients (k, n) @ basis (n, dim) → (k, dim)."""
        q = self.rows[: self.n]
        return coefficients.to(q.device, q.dtype) @ q


def lanczos(
    matvec: Matvec,
    dim: int,
    k: int = 5,
    which: str = "LA",
    tol: float = 1e-3,
    max_iter: int | None = None,
    *,
    start: Tensor | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    basis_device: torch.device | str | None = None,
    min_iter: int = 0,
    allreduce: Reduce | None = None,
) -> LanczosResult:
    """The ``k`` wanted eigenpairs of the symmetric operator ``matvec`` (dimension ``dim``).

    Args:
        matvec: v ↦ Hv on flat vectors of ``dtype`` on ``device``.
        k: number of eigenpairs.
        which: ``LA`` largest algebraic, ``SA`` smallest algebraic, ``LM`` largest magnitude.
        tol: stop when every wanted pair has ‖Hv − θv‖ ≤ tol·|θ|.
        max_iter: Krylov dimension limit (default min(dim, max(20, 10k + 40))).
        start: starting vector (default: Gaussian from ``generator``).
        dtype: working precision of the basis (float64 for ill-conditioned problems).
        basis_device: where the basis lives (``"cpu"`` to offload a large basis).
        min_iter: run at least this many steps (e.g. for spectral density quadrature).
        allreduce: for sharded operators (each process holds a slice of every vector): sums
            partial inner products over processes. ``dim`` stays the global dimension (every
            process must take the same decisions); pass this process's slice as ``start``.

    Example:
        >>> h = torch.diag(torch.arange(1.0, 101.0))
        >>> lanczos(lambda v: h @ v, 100, k=2).eigenvalues
        tensor([100.,  99.])
    """
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    if not 1 <= k <= dim:
        raise ValueError(f"k must be in [1, {dim}], got {k}")
    if tol <= 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    device = torch.device(device)
    limit = min(dim, max_iter if max_iter is not None else max(20, 10 * k + 40))
    if limit < k:
        raise ValueError(f"max_iter={max_iter} is smaller than k={k}")
    if start is None:
        start = torch.randn(dim, generator=generator, dtype=torch.float64)
    q = start.to(device, dtype)

    def dot(x: Tensor, y: Tensor) -> Tensor:
        d = torch.dot(x, y)
        return allreduce(d.reshape(1))[0] if allreduce is not None else d

    q = q / dot(q, q).sqrt()
    first = q.clone()
    basis = _Basis(q.numel(), dtype, torch.device(basis_device or device), min(limit + 1, 64))
    basis.append(q)
    alphas: list[float] = []
    betas: list[float] = []
    prev: Tensor | None = None
    converged = False
    theta = s = residual = torch.zeros(0, dtype=torch.float64)
    hvps = 0
    for j in range(limit):
        w = matvec(q).to(device, dtype)
        hvps += 1
        a = dot(w, q)
        w = w - a * q
        if prev is not None:
            w = w - betas[-1] * prev
        w = basis.orthogonalise(w, allreduce)
        b = dot(w, w).sqrt()
        alphas.append(float(a))  # one host read per step: nothing next to an HVP
        beta = float(b)
        theta, s = tridiagonal_eigh(
            torch.tensor(alphas, dtype=torch.float64), torch.tensor(betas, dtype=torch.float64)
        )
        residual = (beta * s[-1]).abs()
        scale = theta.abs().max().item() if theta.numel() else 1.0
        breakdown = beta <= 1e-10 * max(scale, 1e-30)
        if j + 1 >= max(k, min_iter):
            idx = _wanted(theta, k, which)
            floor = 1e-7 * scale
            ok = residual[idx] <= tol * torch.clamp(theta[idx].abs(), min=floor)
            if bool(ok.all()) or breakdown:
                converged = True
                break
        if breakdown or j + 1 == limit:
            break
        betas.append(beta)
        prev, q = q, w / b
        basis.append(q)
    # T is steps × steps (betas holds its steps−1 off-diagonals); the basis holds steps vectors.
    idx = _wanted(theta, k, which)
    vectors = basis.combine(s[:, idx].T)  # (k, dim)
    return LanczosResult(
        eigenvalues=theta[idx],
        residuals=residual[idx],
        eigenvectors=vectors.to(device),
        hvps=hvps,
        converged=converged,
        alpha=torch.tensor(alphas, dtype=torch.float64),
        beta=torch.tensor(betas, dtype=torch.float64),
        ritz=theta,
        ritz_residuals=residual,
        start=first,
    )
