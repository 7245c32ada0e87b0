"""Hessian spectra: gradlens vs PyHessian side by side on the same model and batch.

    pip install -e ".[bench]"        # pyhessian==0.1, the baseline
    python bench/hessian.py           # CPU problems, and GPU problems when CUDA is there
    python bench/hessian.py --scale   # GPU only: top-5 of a GPT-2-small-sized model

For each problem it prints, per tool: HVPs, wall time and the error of the top-5 eigenvalues
against a high-accuracy reference (float64 Lanczos to 1e-10, or the exact diagonal for the
trace), plus gradlens's engine choice, HVP/gradient cost ratio and wall / (HVPs × HVP time).

Targets (issue #4): top-5 at tol 1e-3 with ≥ 4× fewer HVPs than PyHessian and lower error;
wall time within 1.2× of HVP count × HVP time; HVP ≤ 3× a gradient with the auto engine.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import GPT, ResNet18

import gradlens.analysis.hessian as gh
from gradlens.analysis.hessian import DoubleBackwardHVP, choose_hvp
from gradlens.analysis.objective import Objective, batches_from_data
from gradlens.functional.trace import hutchpp

warnings.filterwarnings("ignore")


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def reference_mlp() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """The anchors' fixed problem: 32-64-64-10 tanh MLP trained 300 Adam steps on teacher
    labels, one batch of 512 (shared/reference/hessian_anchors.md §0)."""
    torch.manual_seed(0)
    x = torch.randn(512, 32)
    teacher = nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 10))
    with torch.no_grad():
        y = teacher(x).argmax(1)
    model = nn.Sequential(
        nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10)
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model, (x, y)


def reference_eigenvalues(model: nn.Module, batch, loss_fn, k: int = 5) -> torch.Tensor:
    """Top-k to 1e-10 with float64 parameters, HVPs and basis."""
    m64 = copy.deepcopy(model).double()
    data = tuple(t.double() if t.is_floating_point() else t for t in batch)
    device = next(m64.parameters()).device  # an unbounded basis: fewest products
    res = gh.hessian_eigenvalues(
        m64, loss_fn, data, k=k, tol=1e-10, dtype=torch.float64, max_iter=400, basis_device=device
    )
    return res.eigenvalues


def exact_trace(model: nn.Module, batch, loss_fn) -> float:
    """Σ eᵢᵀHeᵢ over all unit vectors, float64 (exact up to rounding; small models only)."""
    m64 = copy.deepcopy(model).double()
    data = tuple(t.double() if t.is_floating_point() else t for t in batch)
    objective = Objective(m64, batches_from_data(data, loss_fn))
    with objective.isolated():
        engine = DoubleBackwardHVP(objective)
        total = 0.0
        for i in range(engine.dim):
            e = torch.zeros(engine.dim, dtype=torch.float64)
            e[i] = 1.0
            total += float(engine(e)[i])
    return total


def _pyhessian(model, batch, loss_fn, device: str, top_n: int):
    try:
        import pyhessian
    except ImportError:
        return {"error": "pyhessian not installed (pip install -e '.[bench]')"}
    module = sys.modules["pyhessian.hessian"]
    original = module.hessian_vector_product
    count = {"n": 0}

    def counted(*args, **kwargs):
        count["n"] += 1
        return original(*args, **kwargs)

    module.hessian_vector_product = counted
    out = {}
    try:
        m = copy.deepcopy(model)
        criterion = _Criterion(loss_fn)
        h = pyhessian.hessian(m, criterion, data=batch, cuda=device == "cuda")
        torch.manual_seed(0)
        _sync(device)
        start = time.perf_counter()
        values, _ = h.eigenvalues(top_n=top_n)
        _sync(device)
        out["eig_seconds"], out["eig_hvps"] = time.perf_counter() - start, count["n"]
        out["eigenvalues"] = torch.tensor(sorted(values, reverse=True), dtype=torch.float64)
        count["n"] = 0
        start = time.perf_counter()
        samples = h.trace()
        out["trace_seconds"], out["trace_hvps"] = time.perf_counter() - start, count["n"]
        out["trace"] = float(sum(samples) / len(samples))
        try:
            h.density(iter=20, n_v=1)
            out["density"] = "ok"
        except Exception as exc:  # PyPI 0.1 calls torch.eig, removed from torch
            out["density"] = f"crashes: {type(exc).__name__}: {str(exc)[:60]}"
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:100]}"
    finally:
        module.hessian_vector_product = original
    return out


class _Criterion(nn.Module):
    def __init__(self, loss_fn):
        super().__init__()
        self.loss_fn = loss_fn

    def forward(self, output, target):
        return self.loss_fn(output, target)


def _gradlens(model, batch, loss_fn, device: str, k: int):
    m = copy.deepcopy(model)
    objective = Objective(m, batches_from_data(batch, loss_fn))
    out: dict = {}
    with objective.isolated():
        _sync(device)
        start = time.perf_counter()
        engine = choose_hvp(
            objective, "auto", log=lambda msg: out.setdefault("notes", []).append(msg)
        )
        _sync(device)
        out["setup_seconds"] = time.perf_counter() - start
        out["method"] = engine.method + (" (math attention)" if engine.math_attention else "")
        out["selection_ms"] = {m_: 1e3 * t for m_, t in engine.selection["seconds"].items()}
        out["fd_check"] = engine.selection["fd_check"]
        grad_times = [engine.gradient_time() for _ in range(3)]
        out["grad_ms"] = 1e3 * min(grad_times)
        v = torch.randn(engine.dim, device=engine.device, dtype=engine.dtype)
        engine(v)
        hvp_times = []
        for _ in range(3):
            _sync(device)
            t = time.perf_counter()
            engine(v)
            _sync(device)
            hvp_times.append(time.perf_counter() - t)
        out["hvp_ms"] = 1e3 * min(hvp_times)
        engine.count = 0
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            out["model_gib"] = torch.cuda.memory_allocated() / 2**30
        _sync(device)
        start = time.perf_counter()
        res = gh.top_eigenpairs(engine, k, "LA", 1e-3)
        _sync(device)
        out["eig_seconds"] = time.perf_counter() - start
        if device == "cuda":
            out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        out["eig_hvps"] = res.hvps
        out["eigenvalues"] = res.eigenvalues
        out["residual"] = float((res.residuals / res.eigenvalues.abs()).max())
        out["basis"] = res.basis
        out["restarts"] = res.run.restarts
        out["basis_vectors"] = res.run.basis_vectors
        engine.count = 0
        start = time.perf_counter()
        tr = hutchpp(  # reuses the eigen run: converged pairs deflated exactly
            engine,
            engine.dim,
            sketch=10,
            tol=1e-2,
            max_hvps=100,
            matmat=engine.matmat,
            generator=torch.Generator().manual_seed(0),
            dtype=engine.dtype,
            device=engine.device,
            known=res.converged_pairs(1e-2),
        )
        _sync(device)
        out["trace_seconds"] = time.perf_counter() - start
        out["trace_hvps"], out["trace"], out["trace_stderr"] = tr.hvps, tr.estimate, tr.stderr
        out["trace_reached"], out["trace_deflated"] = tr.reached, tr.deflated
    return out


def _err(values, reference) -> float:
    if values is None:
        return math.nan
    v = torch.as_tensor(values, dtype=torch.float64)[: len(reference)].cpu()
    return float(((v - reference) / reference.abs()).abs().max())


def measure(
    model, batch, loss_fn, device: str, k: int = 5, trace_ref=None, reference=True, baseline=True
) -> dict:
    """gradlens and PyHessian on one problem; errors against a float64 reference."""
    model = model.to(device)
    batch = tuple(t.to(device) for t in batch)
    out: dict = {"params": sum(p.numel() for p in model.parameters()), "device": device}
    ref = reference_eigenvalues(model, batch, loss_fn, k).cpu() if reference else None
    out["reference"] = ref.tolist() if ref is not None else None
    out["gradlens"] = _gradlens(model, batch, loss_fn, device, k)
    out["pyhessian"] = _pyhessian(model, batch, loss_fn, device, k) if baseline else {}
    for r in (out["gradlens"], out["pyhessian"]):
        if ref is not None and "eigenvalues" in r:
            r["max_rel_err"] = _err(r["eigenvalues"], ref)
        if trace_ref and "trace" in r:
            r["trace_rel_err"] = abs(r["trace"] - trace_ref) / abs(trace_ref)
        if "eigenvalues" in r:
            r["eigenvalues"] = [float(v) for v in r["eigenvalues"]]
    ours = out["gradlens"]
    ours["hvp_over_grad"] = ours["hvp_ms"] / ours["grad_ms"]
    ours["wall_over_hvps"] = ours["eig_seconds"] / (ours["eig_hvps"] * ours["hvp_ms"] / 1e3)
    theirs = out["pyhessian"]
    if "eig_seconds" in theirs:
        out["wall_ratio_pyhessian_over_gradlens"] = theirs["eig_seconds"] / ours["eig_seconds"]
        out["hvp_ratio_pyhessian_over_gradlens"] = theirs["eig_hvps"] / ours["eig_hvps"]
    return out


def run_problem(name, model, batch, loss_fn, device: str, k: int = 5, trace_ref=None) -> dict:
    print(f"\n== {name} on {device}", flush=True)
    r = measure(model, batch, loss_fn, device, k, trace_ref)
    print(f"{r['params']:,} parameters; reference top-{k}: {r['reference']}")
    print(
        f"{'':<10} {'top-5 HVPs':>10} {'seconds':>8} {'max rel err':>12} "
        f"{'trace HVPs':>10} {'trace':>10} {'± stderr':>9} {'trace err':>10}"
    )
    for label in ("gradlens", "pyhessian"):
        x = r[label]
        if "error" in x or "eig_hvps" not in x:
            print(f"{label:<10} failed: {x.get('error', 'not run')}")
            continue
        trace_err = f"{x['trace_rel_err']:.2%}" if "trace_rel_err" in x else "-"
        stderr = f"{x['trace_stderr']:.2g}" if "trace_stderr" in x else "none"
        print(
            f"{label:<10} {x['eig_hvps']:>10} {x['eig_seconds']:>8.3f} "
            f"{x.get('max_rel_err', math.nan):>12.2e} {x['trace_hvps']:>10} "
            f"{x['trace']:>10.5g} {stderr:>9} {trace_err:>10}"
        )
    if "wall_ratio_pyhessian_over_gradlens" in r:
        print(
            f"PyHessian / gradlens: wall {r['wall_ratio_pyhessian_over_gradlens']:.2f}×, "
            f"HVPs {r['hvp_ratio_pyhessian_over_gradlens']:.1f}×"
        )
    ours = r["gradlens"]
    print(
        f"gradlens engine: {ours['method']} (timed ms: "
        + ", ".join(f"{m} {t:.3g}" for m, t in ours["selection_ms"].items())
        + f"; FD check {ours['fd_check']}); HVP {ours['hvp_over_grad']:.2f}× gradient"
    )
    print(
        f"gradlens wall / (HVPs × HVP time) = {ours['wall_over_hvps']:.2f} (target ≤ 1.2); "
        f"basis {ours['basis']}, {ours['restarts']} restarts; trace reached its stderr: "
        f"{ours['trace_reached']} ({ours['trace_deflated']} pairs deflated)"
    )
    return r


def _gpt_batch(vocab: int, batch: int, tokens: int, generator) -> tuple:
    idx = torch.randint(0, vocab, (batch, tokens + 1), generator=generator)
    return idx[:, :-1], idx[:, 1:]


def lm_loss(logits, targets):
    """Token cross-entropy on (batch, tokens, vocab) logits."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", action="store_true", help="GPU: GPT-2-small top-5 timing")
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU")
    )
    g = torch.Generator().manual_seed(0)
    model, batch = reference_mlp()
    run_problem(
        "32-64-64-10 tanh MLP, batch 512 (reference problem)",
        model,
        batch,
        F.cross_entropy,
        "cpu",
        trace_ref=exact_trace(model, batch, F.cross_entropy),
    )
    torch.manual_seed(0)
    gpt = GPT(vocab=128, block=32, d=64, layers=2, heads=4).eval()
    run_problem(
        "2-layer GPT d=64 (SDPA), 8×32 tokens", gpt, _gpt_batch(128, 8, 32, g), lm_loss, "cpu"
    )
    if torch.cuda.is_available():
        torch.manual_seed(0)
        x = torch.randn(256, 3, 32, 32, generator=g)
        y = torch.randint(0, 10, (256,), generator=g)
        run_problem("ResNet-18, batch 256", ResNet18().eval(), (x, y), F.cross_entropy, "cuda")
        torch.manual_seed(0)
        gpt4 = GPT(vocab=512, block=128, d=256, layers=4, heads=4).eval()
        run_problem(
            "4-layer GPT d=256, 32×128 tokens", gpt4, _gpt_batch(512, 32, 128, g), lm_loss, "cuda"
        )
        if args.scale:
            scale_run(g)


SCALE_124M = dict(vocab=50257, block=512, d=768, layers=12, heads=12, batch=8)


def scale(g, device: str = "cuda", vocab=50257, block=512, d=768, layers=12, heads=12, batch=8):
    """Top-5 of a GPT (GPT-2-small sized by default: 124M) on batch × block tokens: time, HVPs,
    basis plan and peak memory against the model's own memory."""
    torch.manual_seed(0)
    model = GPT(vocab=vocab, block=block, d=d, layers=layers, heads=heads).to(device).eval()
    idx, tgt = (t.to(device) for t in _gpt_batch(vocab, batch, block, g))
    params = sum(p.numel() for p in model.parameters())
    out: dict = {"params": params, "tokens": batch * block}
    if device == "cuda":
        torch.cuda.synchronize()
        out["model_gib"] = torch.cuda.memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    res = gh.hessian_eigenvalues(model, lm_loss, (idx, tgt), k=5, tol=1e-3)
    _sync(device)
    out.update(
        seconds=time.perf_counter() - start,
        hvps=res.hvps,
        setup_hvps=res.setup_hvps,
        method=res.method,
        eigenvalues=res.eigenvalues.tolist(),
        max_rel_residual=float((res.residuals / res.eigenvalues.abs()).max()),
        converged=res.converged,
        basis=res.basis,
        basis_vectors=res.run.basis_vectors,
        restarts=res.run.restarts,
        vector_gib=params * 4 / 2**30,
    )
    if device == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def scale_run(g) -> None:
    r = scale(g)
    print(
        f"\n== GPT-2 small scale: top-5 {r['eigenvalues']} in {r['seconds']:.1f} s, "
        f"{r['hvps']} HVPs, engine {r['method']}, basis {r['basis']}, peak "
        f"{r['peak_gib']:.1f} GiB = model {r['model_gib']:.1f} GiB + "
        f"{(r['peak_gib'] - r['model_gib']) / r['vector_gib']:.1f} vectors (target ≤ 30 s)"
    )


if __name__ == "__main__":
    main()
