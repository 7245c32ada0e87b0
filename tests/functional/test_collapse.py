"""Neural-collapse math against closed forms and a dense float64 two-pass oracle.

Closed forms (shared reference, landscape_nc_anchors.md §4): a simplex ETF of norm s with
isotropic within-class covariance σ²I gives NC1 = σ²(C−1)²/(C s²) and CDNV = σ²d(C−1)/(2C s²);
exact collapse gives zeros; an uncentred orthogonal frame has ETF error √(2−2√((C−1)/C)).
The noise is built so that every class's sample covariance is exactly σ²I (an orthonormal,
centred design), so the closed forms hold to rounding, not just in expectation.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

from gradlens.functional.collapse import (
    CLASSIFIER_METRICS,
    NC_METRICS,
    NeuralCollapseAccumulator,
    _nc1,
    neural_collapse_metrics,
)

C, D, S, SIGMA, N = 10, 64, 20.0, 1e-3, 100


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Small tensors: intra-op threads only add contention on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def simplex_etf(c: int, d: int, norm: float, g: torch.Generator) -> torch.Tensor:
    """c centred means of norm ``norm`` with pairwise cosine −1/(c−1), in a random d-subspace."""
    centring = torch.eye(c, dtype=torch.float64) - 1.0 / c
    basis = torch.linalg.qr(torch.randn(d, c, dtype=torch.float64, generator=g))[0].T
    return norm * math.sqrt(c / (c - 1)) * centring @ basis


def exact_noise(n: int, d: int, sigma: float, g: torch.Generator) -> torch.Tensor:
    """n×d noise with zero mean and sample covariance exactly σ²I (needs n > d)."""
    e = torch.randn(n, d, dtype=torch.float64, generator=g)
    q = torch.linalg.qr(e - e.mean(0))[0]
    return sigma * math.sqrt(n) * q


def etf_data(sigma: float = SIGMA, offset: float = 50.0, seed: int = 0):
    g = _gen(seed)
    means = simplex_etf(C, D, S, g) + offset * torch.randn(D, dtype=torch.float64, generator=g)
    h = torch.cat([means[c] + exact_noise(N, D, sigma, g) for c in range(C)])
    y = torch.arange(C).repeat_interleave(N)
    perm = torch.randperm(len(y), generator=g)
    return h[perm], y[perm], means


def dense_oracle(h: torch.Tensor, y: torch.Tensor, c: int) -> dict[str, float]:
    """Two-pass float64 reference, Papyan's definitions with explicit C×C / d×d matrices."""
    h = h.double()
    classes = [k for k in range(c) if (y == k).any()]
    means = torch.stack([h[y == k].mean(0) for k in classes])
    centred = means - means.mean(0)
    k = len(classes)
    resid = h - torch.stack([means[classes.index(int(v))] for v in y])
    sigma_w = resid.T @ resid / len(y)
    sigma_b = centred.T @ centred / k
    vals, vecs = torch.linalg.eigh(sigma_b)
    r = min(h.shape[1], k - 1)
    inv_b = vecs[:, -r:] @ torch.diag(1 / vals[-r:]) @ vecs[:, -r:].T
    variances = torch.stack(
        [(h[y == k] - means[i]).square().sum(1).mean() for i, k in enumerate(classes)]
    )
    unit = centred / centred.norm(dim=1, keepdim=True)
    cos = unit @ unit.T
    iu = torch.triu_indices(k, k, 1)
    pair_cos = cos[iu[0], iu[1]]
    dist2 = torch.cdist(means, means).square()
    cdnv = ((variances[:, None] + variances[None, :]) / 2 / dist2)[iu[0], iu[1]].mean()
    gram = centred @ centred.T
    target = (torch.eye(k, dtype=torch.float64) - 1 / k) / math.sqrt(k - 1)
    return {
        "nc1": float(torch.trace(sigma_w @ inv_b) / k),
        "cdnv": float(cdnv),
        "nc2_equinorm": float(centred.norm(dim=1).std() / centred.norm(dim=1).mean()),
        "nc2_equiangular": float(pair_cos.std(unbiased=False)),
        "nc2_max_angle": float((pair_cos + 1 / (k - 1)).abs().mean()),
        "nc2_etf_distance": float((gram / gram.norm() - target).norm()),
    }


def test_keys() -> None:
    h, y, _ = etf_data()
    plain = neural_collapse_metrics(h, y)
    assert set(plain) == set(NC_METRICS)
    full = neural_collapse_metrics(h, y, torch.randn(C, D, dtype=torch.float64))
    assert set(full) == set(NC_METRICS) | set(CLASSIFIER_METRICS)


def test_etf_with_isotropic_noise_matches_the_closed_forms() -> None:
    h, y, _ = etf_data()
    m = neural_collapse_metrics(h, y)
    assert m["nc1"] == pytest.approx(SIGMA**2 * (C - 1) ** 2 / (C * S**2), rel=1e-9)
    assert m["cdnv"] == pytest.approx(SIGMA**2 * D * (C - 1) / (2 * C * S**2), rel=1e-9)
    assert m["nc1_quotient"] == pytest.approx(SIGMA**2 * D / S**2, rel=1e-9)
    for key in ("nc2_equinorm", "nc2_equiangular", "nc2_max_angle", "nc2_etf_distance"):
        assert abs(m[key]) < 1e-12, key
    assert m["num_classes"] == C and m["num_samples"] == C * N


def test_exact_collapse_gives_zeros_and_nc3_nc4() -> None:
    h, y, means = etf_data(sigma=0.0)
    centred = means - means.mean(0)
    weight = 3.0 * centred  # W = k·M̃ (self-duality)
    bias = -weight @ means.mean(0)  # b = −Wμ_G: the classifier is the nearest-class-centre rule
    m = neural_collapse_metrics(h, y, weight, bias)
    for key in ("nc1", "cdnv", "nc2_equinorm", "nc2_equiangular", "nc2_max_angle"):
        assert abs(m[key]) < 1e-12, key
    for key in ("nc2_etf_distance", "nc2_equinorm_w", "nc2_equiangular_w", "nc3_duality"):
        assert abs(m[key]) < 1e-12, key
    assert m["nc3"] < 1e-24
    assert m["nc4"] == 0.0


def test_nc4_needs_the_bias() -> None:
    """With offset features, a bias-free W = M̃ disagrees with the NCC rule (reference §2d)."""
    h, y, means = etf_data(sigma=0.5)
    weight = (means - means.mean(0)).clone()
    with_bias = neural_collapse_metrics(h, y, weight, -weight @ means.mean(0))
    without = neural_collapse_metrics(h, y, weight)
    assert with_bias["nc4"] == 0.0
    assert without["nc4"] > 0.5


def test_matches_the_dense_oracle_on_random_data() -> None:
    g = _gen(3)
    h = (
        torch.randn(600, 12, dtype=torch.float64, generator=g)
        + torch.randn(5, 12, generator=g, dtype=torch.float64).repeat(120, 1) * 2
    )
    y = torch.arange(5).repeat(120)
    got = neural_collapse_metrics(h, y)
    want = dense_oracle(h, y, 5)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-10), key


def test_streaming_equals_one_shot_for_any_split_and_merge() -> None:
    g = _gen(1)
    h, y, _ = etf_data(sigma=0.3, seed=1)
    h = h + 1e3  # a large offset: the raw second moment would cancel
    y = y.clone()
    y[y == 7] = 3  # class 7 never seen: excluded
    weight, bias = (
        torch.randn(C, D, dtype=torch.float64, generator=g),
        torch.randn(C, dtype=torch.float64, generator=g),
    )
    one_shot = neural_collapse_metrics(h, y, weight, bias)
    cuts = sorted(torch.randint(1, len(y), (6,), generator=g).tolist())
    ranks = [NeuralCollapseAccumulator(C, D), NeuralCollapseAccumulator(C, D)]
    for i, (a, b) in enumerate(zip([0, *cuts], [*cuts, len(y)], strict=True)):
        ranks[i % 2].update(h[a:b], y[a:b])  # uneven batches, some missing classes
    merged = ranks[0].merge(ranks[1])
    streamed = merged.compute(weight, bias)
    assert one_shot["num_classes"] == C - 1
    for key, value in one_shot.items():
        assert streamed[key] == pytest.approx(value, rel=1e-10, abs=1e-14), key


def test_batches_missing_classes_and_ignore_index() -> None:
    h, y, _ = etf_data(sigma=0.2)
    acc = NeuralCollapseAccumulator(C, D)
    for c in range(C):  # one class per batch, plus ignored labels in each
        sel = y == c
        labels = torch.cat([y[sel], torch.full((3,), -100)])
        acc.update(torch.cat([h[sel], torch.randn(3, D, dtype=torch.float64)]), labels)
    ref = neural_collapse_metrics(h, y)
    got = acc.compute()
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, rel=1e-10), key


def test_float32_features_near_collapse_keep_nc1() -> None:
    """Offset 50, σ = 1e-3 in float32: naive pinv/one-pass give 10.2 or −15910 (reference)."""
    h, y, _ = etf_data()
    theory = SIGMA**2 * (C - 1) ** 2 / (C * S**2)
    acc = NeuralCollapseAccumulator(C, D)
    for chunk_h, chunk_y in zip(h.float().split(128), y.split(128), strict=True):
        acc.update(chunk_h, chunk_y)
    assert acc.compute()["nc1"] == pytest.approx(theory, rel=1e-2)


def test_orthogonal_frame_etf_error() -> None:
    c, d = 10, 32
    frame = torch.linalg.qr(torch.randn(d, c, dtype=torch.float64, generator=_gen(2)))[0].T * 7.0
    y = torch.arange(c).repeat(3)
    m = neural_collapse_metrics(frame[y], y)
    assert m["nc2_etf_distance_raw"] == pytest.approx(
        math.sqrt(2 - 2 * math.sqrt((c - 1) / c)), abs=1e-12
    )
    assert m["nc2_etf_distance_raw"] == pytest.approx(0.32036, abs=1e-5)
    assert m["nc2_identity_distance"] < 1e-12
    assert m["nc2_etf_distance"] < 1e-12  # centring an equal-norm orthogonal frame gives an ETF


def test_invariances() -> None:
    h, y, _ = etf_data(sigma=0.4)
    base = neural_collapse_metrics(h, y)
    perm = torch.randperm(C, generator=_gen(5))
    for variant in (
        neural_collapse_metrics(3.0 * h + 11.0, y),
        neural_collapse_metrics(h, perm[y]),
    ):
        for key in ("nc1", "cdnv", "nc2_equinorm", "nc2_equiangular", "nc2_etf_distance"):
            assert variant[key] == pytest.approx(base[key], rel=1e-9), key


def test_more_classes_than_dimensions() -> None:
    """C > d: Σ_B is full rank d and NC1 = Tr(Σ_W Σ_B⁻¹)/C; tiles give the dense values."""
    c, d = 300, 16
    g = _gen(4)
    means = torch.randn(c, d, dtype=torch.float64, generator=g) * 3
    y = torch.randint(0, c, (3000,), generator=g)
    h = means[y] + torch.randn(3000, d, dtype=torch.float64, generator=g)
    got = neural_collapse_metrics(h, y, torch.randn(c, d, dtype=torch.float64, generator=g))
    want = dense_oracle(h, y, c)
    seen = int(torch.unique(y).numel())
    assert got["num_classes"] == seen
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-9), key


def test_tiled_pairwise_equals_a_single_tile(monkeypatch: pytest.MonkeyPatch) -> None:
    import gradlens.functional.collapse as module

    g = _gen(6)
    c, d = 40, 8
    y = torch.arange(c).repeat(5)
    h = torch.randn(c, d, dtype=torch.float64, generator=g)[y] + 0.3 * torch.randn(
        len(y), d, dtype=torch.float64, generator=g
    )
    w, b = (
        torch.randn(c, d, dtype=torch.float64, generator=g),
        torch.randn(c, dtype=torch.float64, generator=g),
    )
    whole = neural_collapse_metrics(h, y, w, b)
    monkeypatch.setattr(module, "_TILE_ELEMENTS", 3 * c)  # 3-row tiles
    tiled = neural_collapse_metrics(h, y, w, b)
    for key, value in whole.items():
        assert tiled[key] == pytest.approx(value, rel=1e-10, abs=1e-15), key


def test_gram_route_equals_covariance_route() -> None:
    g = _gen(7)
    centred = torch.randn(6, 20, dtype=torch.float64, generator=g)
    centred -= centred.mean(0)
    a = torch.randn(20, 20, dtype=torch.float64, generator=g)
    within = a @ a.T / 20
    gram = _nc1(within, centred, route="gram")
    cov = _nc1(within, centred, route="cov")
    assert float(gram) == pytest.approx(float(cov), rel=1e-10)


def test_rejects_bad_input() -> None:
    acc = NeuralCollapseAccumulator(3, 4)
    with pytest.raises(ValueError, match="labels"):
        acc.update(torch.randn(5, 4), torch.zeros(4, dtype=torch.long))
    acc.update(torch.randn(5, 4), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="two classes"):
        acc.compute()
    with pytest.raises(ValueError, match="merge"):
        acc.merge(NeuralCollapseAccumulator(3, 5))


def test_equal_class_means_have_no_nc1() -> None:
    x = torch.randn(20, 4, dtype=torch.float64, generator=_gen(8))
    m = neural_collapse_metrics(torch.cat([x, x]), torch.arange(2).repeat_interleave(20))
    assert math.isnan(m["nc1"])  # Σ_B = 0: no between-class spread to compare with


def test_nc4_from_recorded_predictions() -> None:
    """Predictions given with the features: NC4 needs no weight, and counts disagreements."""
    h, y, means = etf_data(sigma=0.1)
    predicted = y.clone()
    predicted[:37] = (y[:37] + 1) % C  # disagrees with the nearest mean on 37 rows
    m = neural_collapse_metrics(h, y, predictions=predicted)
    assert m["nc4"] == 37 / len(y)
    assert "nc3" not in m
    # A chunk without predictions falls back to argmax(W h + b); this W, b is exactly the
    # nearest-class-mean rule (argmax μ_cᵀh − ‖μ_c‖²/2), so only the 37 rows disagree.
    weight, bias = means, -0.5 * means.square().sum(1)
    acc = NeuralCollapseAccumulator(C, D)
    acc.update(h[:500], y[:500], predicted[:500])
    acc.update(h[500:], y[500:])
    assert acc.compute(weight, bias)["nc4"] == 37 / len(y)
    assert "nc4" not in acc.compute()  # no weight, and not every chunk has predictions


def test_nc4_from_scores_takes_the_argmax_of_kept_rows_only() -> None:
    h, y, means = etf_data(sigma=0.1)
    scores = h @ means.T - 0.5 * means.square().sum(1)  # the nearest-mean rule as scores
    scores[:5] = -scores[:5]  # flipped: these rows now disagree
    labels = y.clone()
    labels[:3] = -100  # ignored rows are dropped before keeping
    acc = NeuralCollapseAccumulator(C, D, nc4_samples=50)
    acc.update(h, labels, scores)
    assert sum(len(s) for s in acc.samples) == 50
    assert acc.compute()["nc4"] == 2 / 50  # rows 3 and 4 among the 50 kept


def test_float32_streaming_and_merging_agree_with_one_shot() -> None:
    """Float32 features: per-batch Grams summed in float32 (flushed every 16 batches)."""
    h, y, _ = etf_data(sigma=0.3)
    h32 = (h + 5.0).float()
    one_shot = neural_collapse_metrics(h32.double(), y)
    ranks = [NeuralCollapseAccumulator(C, D), NeuralCollapseAccumulator(C, D)]
    for i, (hb, yb) in enumerate(zip(h32.split(25), y.split(25), strict=True)):  # 40 batches
        ranks[i % 3 == 0].update(hb, yb)
    merged = ranks[0].merge(ranks[1]).compute()
    for key in ("nc1", "nc1_quotient", "cdnv", "nc2_equinorm", "nc2_etf_distance"):
        assert merged[key] == pytest.approx(one_shot[key], rel=1e-5), key
