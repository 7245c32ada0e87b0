"""Neural-collapse statistics (NC1–NC4, CDNV) from one streaming pass, float64 accumulators.

Papyan, Han & Donoho 2020, "Prevalence of neural collapse during the terminal phase of deep
learning training" (PNAS, arXiv 2008.08186); CDNV per Galanti et al. 2021 (arXiv 2112.15121);
ETF and self-duality errors per Kothapalli 2022 / rhubarbwu/neural-collapse; the bias-free
identity-Gram target per Dang et al. 2023 (arXiv 2301.00437). Definitions, numerical choices
and their reasons are in ``docs/collapse.md``.

State kept by :class:`NeuralCollapseAccumulator` (about ``8(Cd + d² + C)`` bytes): per-class
counts, float64 means and within-class sums of squares, and the pooled within-class scatter
``S_W``. Batches and accumulators are merged with Chan et al.'s parallel formula, so the
result does not depend on how the data were split (batches, ranks), and no raw second moment
``Σ hhᵀ`` is ever formed (it cancels catastrophically near collapse).

NC4 needs the final class means; it is computed at ``compute()`` time on the first
``nc4_samples`` features seen (all of them when the probe set is smaller), which the
accumulator keeps in their own dtype with the network's decision for them. One pass, bounded
memory, exact on small probe sets.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor

__all__ = [
    "CLASSIFIER_METRICS",
    "NC_METRICS",
    "NeuralCollapseAccumulator",
    "neural_collapse_metrics",
]

NC_METRICS = (
    "nc1",
    "nc1_quotient",
    "cdnv",
    "nc2_equinorm",
    "nc2_equiangular",
    "nc2_max_angle",
    "nc2_etf_distance",
    "nc2_etf_distance_raw",
    "nc2_identity_distance",
    "num_classes",
    "num_samples",
)
"""Keys always returned by :meth:`NeuralCollapseAccumulator.compute`."""

CLASSIFIER_METRICS = (
    "nc2_equinorm_w",
    "nc2_equiangular_w",
    "nc2_max_angle_w",
    "nc3",
    "nc3_duality",
    "nc4",
)
"""Keys added when the classifier weight is given (``nc4`` also without it, when the
network's predictions were passed to :meth:`NeuralCollapseAccumulator.update`)."""

_TILE_ELEMENTS = 1 << 22  # C×C work is done in row tiles of at most this many float64 entries


class NeuralCollapseAccumulator:
    """Streaming neural-collapse statistics over ``(features, labels)`` batches.

    Args:
        num_classes: C; labels outside ``[0, C)`` (``ignore_index`` such as -100) are skipped.
        dim: d, the feature dimension (the classifier's input size).
        device: where the float64 state lives (the features are moved there).
        nc4_samples: how many features to keep for NC4 (0 disables NC4).

    Example:
        >>> acc = NeuralCollapseAccumulator(10, 64)
        >>> for h, y in batches:  # doctest: +SKIP
        ...     acc.update(h, y)
        >>> acc.compute(weight=fc.weight, bias=fc.bias)["nc1"]  # doctest: +SKIP
    """

    def __init__(
        self,
        num_classes: int,
        dim: int,
        *,
        device: torch.device | str | None = None,
        nc4_samples: int = 2048,
    ) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if nc4_samples < 0:
            raise ValueError(f"nc4_samples must be >= 0, got {nc4_samples}")
        self.num_classes = int(num_classes)
        self.dim = int(dim)
        self.nc4_samples = int(nc4_samples)
        f64 = torch.float64
        self.counts = torch.zeros(num_classes, dtype=torch.int64, device=device)
        self.means = torch.zeros(num_classes, dim, dtype=f64, device=device)
        self.m2 = torch.zeros(num_classes, dtype=f64, device=device)  # per class Σ‖h − μ_c‖²
        self._scatter = torch.zeros(dim, dim, dtype=f64, device=device)  # Σ (h − μ_y)(h − μ_y)ᵀ
        self._pending: Tensor | None = None  # float32 batch Grams not yet added to _scatter
        self._pending_batches = 0
        self.samples: list[Tensor] = []  # the first nc4_samples features, for NC4
        self.predictions: list[Tensor | None] = []  # the network's argmax for them, if given
        self._kept = 0

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def scatter(self) -> Tensor:
        """The pooled within-class scatter ``S_W`` (d × d, float64)."""
        self._flush()
        return self._scatter

    @property
    def num_samples(self) -> int:
        return int(self.counts.sum())

    def update(self, features: Tensor, labels: Tensor, predictions: Tensor | None = None) -> None:
        """Add a batch: ``features`` (..., d) and integer ``labels`` with the same leading size.

        ``predictions``: the network's decision per row for NC4, as integer class indices or as
        float scores (..., C), whose argmax is taken only for the rows kept for NC4. Without them
        NC4 computes ``argmax(W h + b)`` from the weight given to :meth:`compute`.
        """
        h = features.detach().reshape(-1, self.dim).to(self.device)
        y = labels.detach().reshape(-1).to(self.device, torch.int64)
        p = None if predictions is None else predictions.detach()
        if p is not None:
            p = p.reshape(-1, p.shape[-1]) if p.is_floating_point() else p.reshape(-1)
        if h.shape[0] != y.shape[0] or (p is not None and p.shape[0] != y.shape[0]):
            raise ValueError(f"{h.shape[0]} feature rows but {y.shape[0]} labels")
        remaining = self.nc4_samples - self._kept
        valid = (y >= 0) & (y < self.num_classes)
        if not bool(valid.all()):
            rows = torch.nonzero(valid).flatten()
            h, y = h[rows], y[rows]
            p = None if p is None or remaining <= 0 else p[rows[:remaining].to(p.device)]
        if y.numel() == 0:
            return
        self._keep(h, p)
        classes, inverse = torch.unique(y, return_inverse=True)
        n_b = torch.bincount(inverse, minlength=classes.numel())
        mean_b = torch.zeros(classes.numel(), self.dim, dtype=torch.float64, device=self.device)
        mean_b.index_add_(0, inverse, h.double()).div_(n_b[:, None])
        # Batch-centred rows in the features' precision (float64 only for float64 features):
        # their values are small, so the Gram is safe there (rounding the batch means to
        # float32 biases S_W by (ε|h|/σ)², about 1e-5 relative even at offset 50, σ = 1e-3).
        work = torch.float64 if h.dtype == torch.float64 else torch.float32
        centred = h.to(work) - mean_b.to(work)[inverse]
        m2_b = torch.zeros_like(n_b, dtype=torch.float64).index_add_(
            0, inverse, centred.square().sum(1).double()
        )
        correction = self._absorb(classes, n_b, mean_b, m2_b)
        self._add_gram(centred)
        self._add_gram(correction.to(work))

    def _add_gram(self, rows: Tensor) -> None:
        """``S_W += rowsᵀ rows``: into float64 directly for float64 rows; float32 Grams are
        summed in a float32 buffer added to the float64 ``S_W`` every 16 batches and on read."""
        with _highest_precision():  # no TF32
            if rows.dtype == torch.float64:
                self._scatter.addmm_(rows.T.contiguous(), rows)
                return
            if self._pending is None:
                self._pending = torch.zeros_like(self._scatter, dtype=torch.float32)
            self._pending.addmm_(rows.T.contiguous(), rows)
        self._pending_batches += 1
        if self._pending_batches >= 32:
            self._flush()

    def _flush(self) -> None:
        if self._pending is not None and self._pending_batches:
            self._scatter += self._pending.double()
            self._pending.zero_()
            self._pending_batches = 0

    def merge(self, other: NeuralCollapseAccumulator) -> NeuralCollapseAccumulator:
        """Add ``other``'s data (another split or rank) to this one, exactly; returns self."""
        if (other.num_classes, other.dim) != (self.num_classes, self.dim):
            raise ValueError(
                f"cannot merge a ({other.num_classes}, {other.dim}) accumulator into "
                f"({self.num_classes}, {self.dim})"
            )
        classes = torch.nonzero(other.counts.to(self.device) > 0).flatten()
        if classes.numel():
            correction = self._absorb(
                classes,
                other.counts.to(self.device)[classes],
                other.means.to(self.device)[classes],
                other.m2.to(self.device)[classes],
            )
            self._scatter += other.scatter.to(self.device) + correction.T @ correction
        for sample, predicted in zip(other.samples, other.predictions, strict=True):
            self._keep(sample.to(self.device), predicted)
        return self

    def _absorb(self, classes: Tensor, n_b: Tensor, mean_b: Tensor, m2_b: Tensor) -> Tensor:
        """Chan's update of counts, means, m2; returns rows R with ``RᵀR`` the scatter term."""
        n_a = self.counts[classes]
        n = n_a + n_b
        delta = mean_b - self.means[classes]
        weight = (n_a * n_b).double() / n  # n_a n_b / (n_a + n_b)
        self.means.index_add_(0, classes, delta * (n_b.double() / n)[:, None])
        self.m2.index_add_(0, classes, m2_b + weight * delta.square().sum(1))
        self.counts.index_add_(0, classes, n_b)
        return delta * weight.sqrt()[:, None]

    def _keep(self, h: Tensor, predicted: Tensor | None) -> None:
        take = min(self.nc4_samples - self._kept, h.shape[0])
        if take > 0:
            self.samples.append(h[:take].clone())
            if predicted is not None:
                predicted = predicted[:take]
                scores = predicted.is_floating_point()
                predicted = predicted.argmax(-1) if scores else predicted.clone()
                predicted = predicted.to(h.device, torch.int64)
            self.predictions.append(predicted)
            self._kept += take

    def compute(self, weight: Tensor | None = None, bias: Tensor | None = None) -> dict[str, float]:
        """The metrics (:data:`NC_METRICS`, plus :data:`CLASSIFIER_METRICS` given ``weight``).

        Classes never seen are excluded; ``weight`` (C, d) and ``bias`` (C,) are the classifier's.
        ``nc4`` is there when the network's predictions were given to :meth:`update`, or else
        computed as ``argmax(W h + b)`` over all C classes when ``weight`` is given.
        """
        seen = torch.nonzero(self.counts > 0).flatten()
        if seen.numel() < 2:
            raise ValueError("neural-collapse metrics need samples of at least two classes")
        means = self.means[seen]
        global_mean = means.mean(0)  # unweighted mean of class means (Papyan)
        centred = means - global_mean
        counts = self.counts[seen].double()
        within = self.scatter / counts.sum()
        out = {
            "nc1": _nc1(within, centred),
            "nc1_quotient": within.trace() / (centred.square().sum() / seen.numel()),
            "nc2_equinorm": _cov(centred.norm(dim=1)),
            **_mean_pair_stats(centred, global_mean, self.m2[seen] / counts),
            "num_classes": torch.tensor(float(seen.numel())),
            "num_samples": counts.sum(),
        }
        w_all, b_all = self._classifier(weight, bias)
        if w_all is not None:
            out.update(_classifier_metrics(w_all[seen], centred))
        if self.samples and (w_all is not None or all(p is not None for p in self.predictions)):
            chunks = zip(self.samples, self.predictions, strict=True)
            out["nc4"] = _nc4(chunks, seen, centred, global_mean, w_all, b_all)
        return {k: float(v) for k, v in out.items()}

    def _classifier(
        self, weight: Tensor | None, bias: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None]:
        """The classifier's weight and bias in float64 on the state's device, checked."""
        if weight is None:
            return None, None
        w = weight.detach().to(self.device, torch.float64)
        if w.shape != (self.num_classes, self.dim):
            raise ValueError(f"weight must be {(self.num_classes, self.dim)}, got {w.shape}")
        b = None if bias is None else bias.detach().to(self.device, torch.float64)
        if b is not None and b.shape != (self.num_classes,):
            raise ValueError(f"bias must be ({self.num_classes},), got {tuple(b.shape)}")
        return w, b


def neural_collapse_metrics(
    features: Tensor,
    labels: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    *,
    predictions: Tensor | None = None,
) -> dict[str, float]:
    """Neural-collapse metrics of ``features`` (N, d) with integer ``labels`` (N,), one shot.

    C is ``weight.shape[0]`` when a weight is given, else ``labels.max() + 1``. NC4 uses all
    samples, against ``predictions`` (the network's argmax) if given, else ``argmax(Wh + b)``.
    See :class:`NeuralCollapseAccumulator` for streaming.

    Example:
        >>> h, y = torch.randn(100, 8), torch.arange(100) % 4
        >>> sorted(neural_collapse_metrics(h, y))[:3]
        ['cdnv', 'nc1', 'nc1_quotient']
    """
    num_classes = int(weight.shape[0]) if weight is not None else int(labels.max()) + 1
    dim = features.shape[-1]
    acc = NeuralCollapseAccumulator(
        max(num_classes, 2), dim, device=features.device, nc4_samples=features.numel() // dim
    )
    acc.update(features, labels, predictions)
    return acc.compute(weight, bias)


# --- the statistics ------------------------------------------------------------------------


@contextlib.contextmanager
def _highest_precision() -> Iterator[None]:
    previous = torch.get_float32_matmul_precision()
    if previous == "highest":
        yield
        return
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def _nc1(within: Tensor, centred: Tensor, route: str | None = None) -> Tensor:
    """``Tr(Σ_W Σ_B⁺)/C`` with an exact rank-``min(d, C−1)`` float64 pseudo-inverse.

    ``route="gram"`` works with the C×C Gram ``G = M̃M̃ᵀ`` (``Tr(G⁺² M̃ Σ_W M̃ᵀ)``), cheaper when
    C−1 < d; ``"cov"`` with the d×d ``Σ_B``; the default picks the smaller. Eigenvalues below
    ``λ_max·max(C, d)·ε`` are treated as zero (the null direction of the centred means).
    """
    c, d = centred.shape
    rank = min(d, c - 1)
    route = route or ("gram" if c - 1 < d else "cov")
    if route == "gram":
        vals, vecs = torch.linalg.eigh(centred @ centred.T)
        vals, vecs = _top(vals, vecs, rank, max(c, d))
        if vals.numel() == 0:  # all class means equal: no between-class spread
            return torch.tensor(math.nan, dtype=torch.float64)
        proj = vecs.T @ centred  # u_kᵀ M̃
        quad = ((proj @ within) * proj).sum(1)
        return (quad / vals.square()).sum()
    vals, vecs = torch.linalg.eigh(centred.T @ centred / c)
    vals, vecs = _top(vals, vecs, rank, max(c, d))
    if vals.numel() == 0:
        return torch.tensor(math.nan, dtype=torch.float64)
    quad = ((vecs.T @ within) * vecs.T).sum(1)  # v_kᵀ Σ_W v_k
    return (quad / vals).sum() / c


def _top(vals: Tensor, vecs: Tensor, rank: int, size: int) -> tuple[Tensor, Tensor]:
    """The ``rank`` largest eigenpairs (``eigh`` is ascending), minus numerically null ones."""
    vals, vecs = vals[-rank:], vecs[:, -rank:]
    keep = vals > vals[-1] * size * torch.finfo(torch.float64).eps
    return vals[keep], vecs[:, keep]


def _cov(x: Tensor) -> Tensor:
    """Coefficient of variation ``std/mean`` (unbiased std, as Papyan's ``torch.std``)."""
    return x.std() / x.mean()


def _row_tiles(rows: int, cols: int) -> Iterator[slice]:
    step = max(1, _TILE_ELEMENTS // max(cols, 1))
    for start in range(0, rows, step):
        yield slice(start, min(rows, start + step))


def _frobenius_of_gram(x: Tensor) -> Tensor:
    """``‖x xᵀ‖_F`` through the smaller of the two Grams (``‖xxᵀ‖_F = ‖xᵀx‖_F``)."""
    small = x @ x.T if x.shape[0] <= x.shape[1] else x.T @ x
    return small.norm()


class _CosineSums:
    """Sums over pairs c < c' of ``cos + 1/(C−1)`` (shifted so near-ETF sums do not cancel)."""

    def __init__(self, classes: int, device: torch.device) -> None:
        self.shift = 1.0 / (classes - 1)
        self.pairs = classes * (classes - 1) // 2
        self.s1 = self.s2 = self.abs = torch.zeros((), dtype=torch.float64, device=device)

    def add(self, cos: Tensor, upper: Tensor) -> None:
        x = torch.where(upper, cos + self.shift, 0.0)
        self.s1 = self.s1 + x.sum()
        self.s2 = self.s2 + x.square().sum()
        self.abs = self.abs + x.abs().sum()

    def std(self) -> Tensor:
        """Population std of the pairwise cosines."""
        var = (self.s2 - self.s1.square() / self.pairs) / self.pairs
        return var.clamp_min(0).sqrt()

    def max_angle(self) -> Tensor:
        """``Avg_{c≠c'} |cos + 1/(C−1)|`` (Papyan's equiangularity / coherence)."""
        return self.abs / self.pairs


def _upper(tile: slice, cols: int, device: torch.device) -> Tensor:
    """Mask of the pairs (c, c') with c' > c, for the rows ``tile``."""
    rows = torch.arange(tile.start, tile.stop, device=device)
    return torch.arange(cols, device=device)[None, :] > rows[:, None]


def _unit_rows(x: Tensor) -> Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)


def _eye_rows(tile: slice, classes: int, device: torch.device) -> Tensor:
    """Rows ``tile`` of the C×C identity, float64."""
    rows = torch.arange(tile.start, tile.stop, device=device)
    return (torch.arange(classes, device=device)[None, :] == rows[:, None]).double()


def _mean_pair_stats(centred: Tensor, global_mean: Tensor, variances: Tensor) -> dict[str, Tensor]:
    """CDNV, equiangularity, ETF and identity-Gram distances, over C×C row tiles."""
    c, device = centred.shape[0], centred.device
    sq_norms = centred.square().sum(1)
    inv_norms = 1 / sq_norms.sqrt().clamp_min(torch.finfo(torch.float64).tiny)
    cos_sums = _CosineSums(c, device)
    cdnv = etf = etf_raw = ident = torch.zeros((), dtype=torch.float64, device=device)
    g = _frobenius_of_gram(centred)
    g_raw = _frobenius_of_gram(centred + global_mean)
    # Raw Gram from the centred one: μμᵀ = M̃M̃ᵀ + a1ᵀ + 1aᵀ + ‖μ_G‖² 11ᵀ, a = M̃ μ_G.
    a = centred @ global_mean
    offset = global_mean.square().sum()
    for tile in _row_tiles(c, c):
        upper = _upper(tile, c, device)
        eye = _eye_rows(tile, c, device)
        etf_target = (eye - 1.0 / c) / math.sqrt(c - 1)  # Gram of a unit-norm simplex ETF
        gram = centred[tile] @ centred.T
        cos_sums.add(gram * inv_norms[tile, None] * inv_norms[None, :], upper)
        dist2 = sq_norms[tile, None] + sq_norms[None, :] - 2 * gram
        pair_var = (variances[tile, None] + variances[None, :]) / 2
        cdnv = cdnv + torch.where(upper, pair_var / dist2.clamp_min(0), 0.0).sum()
        etf = etf + (gram / g - etf_target).square().sum()
        raw = gram + a[tile, None] + a[None, :] + offset
        etf_raw = etf_raw + (raw / g_raw - etf_target).square().sum()
        ident = ident + (raw / g_raw - eye / math.sqrt(c)).square().sum()
    return {
        "cdnv": cdnv / cos_sums.pairs,
        "nc2_equiangular": cos_sums.std(),
        "nc2_max_angle": cos_sums.max_angle(),
        "nc2_etf_distance": etf.sqrt(),
        "nc2_etf_distance_raw": etf_raw.sqrt(),
        "nc2_identity_distance": ident.sqrt(),
    }


def _weight_pair_stats(w: Tensor, centred: Tensor) -> dict[str, Tensor]:
    """Equiangularity of the classifier rows, and the W–M̃ self-duality (alignment) error."""
    c = w.shape[0]
    unit = _unit_rows(w)
    cos_sums = _CosineSums(c, w.device)
    dual = torch.zeros((), dtype=torch.float64, device=w.device)
    # ‖W M̃ᵀ‖_F² = ⟨WᵀW, M̃ᵀM̃⟩, through d×d matrices when C > d.
    if c > w.shape[1]:
        norm = ((w.T @ w) * (centred.T @ centred)).sum().sqrt()
    else:
        norm = (w @ centred.T).norm()
    for tile in _row_tiles(c, c):
        cos_sums.add(unit[tile] @ unit.T, _upper(tile, c, w.device))
        target = (_eye_rows(tile, c, w.device) - 1.0 / c) / math.sqrt(c - 1)
        dual = dual + ((w[tile] @ centred.T) / norm - target).square().sum()
    return {
        "nc2_equiangular_w": cos_sums.std(),
        "nc2_max_angle_w": cos_sums.max_angle(),
        "nc3_duality": dual.sqrt(),
    }


def _classifier_metrics(w: Tensor, centred: Tensor) -> dict[str, Tensor]:
    """NC2 for the classifier rows of the classes seen, and NC3 (Papyan, squared)."""
    diff = w / w.norm() - centred / centred.norm()
    return {
        "nc2_equinorm_w": _cov(w.norm(dim=1)),
        **_weight_pair_stats(w, centred),
        "nc3": diff.square().sum(),
    }


def _nc4(
    chunks: Iterable[tuple[Tensor, Tensor | None]],
    seen: Tensor,
    centred: Tensor,
    global_mean: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
) -> Tensor:
    """Fraction of samples whose nearest class mean differs from the network's prediction.

    The prediction is the one recorded with the sample, else ``argmax(W h + b)``. Computed in
    the features' precision (float32 at least), as the network computes its logits, after
    centring on μ_G in float64; one GEMM per tile: ``(h − μ_G)·[M̃; W]ᵀ``.
    """
    c = centred.shape[0]
    half_sq = centred.square().sum(1) / 2
    shift = None if weight is None else weight @ global_mean  # (h − μ_G)Wᵀ + Wμ_G + b = hWᵀ + b
    if shift is not None and bias is not None:
        shift = shift + bias
    disagree, total = torch.zeros((), dtype=torch.int64, device=centred.device), 0
    for samples, predicted in chunks:
        dtype = torch.float64 if samples.dtype == torch.float64 else torch.float32
        rhs = centred if predicted is not None or weight is None else torch.cat([centred, weight])
        rhs_t = rhs.T.to(dtype)
        for tile in _row_tiles(samples.shape[0], rhs_t.shape[1]):
            h = (samples[tile].double() - global_mean).to(dtype)
            with _highest_precision():
                prod = h @ rhs_t
            nearest = seen[(half_sq.to(dtype) - prod[:, :c]).argmin(1)]
            if predicted is not None:
                network = predicted[tile]
            else:
                assert shift is not None
                network = (prod[:, c:] + shift.to(dtype)).argmax(1)
            disagree += (nearest != network).sum()
        total += samples.shape[0]
    return disagree.double() / total
