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

import gradlens.hessian as gh
from gradlens.hessian.hvp import HVP
from gradlens.objective import Objective, batches_from_data

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
    res = gh.hessian_eigenvalues(
        m64, loss_fn, data, k=k, tol=1e-10, dtype=torch.float64, max_iter=400
    )
    return res.eigenvalues


def exact_trace(model: nn.Module, batch, loss_fn) -> float:
    """Σ eᵢᵀHeᵢ over all unit vectors, float64 (exact up to rounding; small models only)."""
    m64 = copy.deepcopy(model).double()
    data = tuple(t.double() if t.is_floating_point() else t for t in batch)
    objective = Objective(m64, batches_from_data(data, loss_fn))
    with objective.isolated():
        engine = HVP(objective, "double_backward")
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
    out = {}
    with objective.isolated():
        start = time.perf_counter()
        engine = HVP(objective, "auto", log=lambda msg: out.setdefault("note", msg))
        _sync(device)
        out["setup_seconds"] = time.perf_counter() - start
        out["method"] = engine.method + (" (math attention)" if engine.math_attention else "")
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
        _sync(device)
        start = time.perf_counter()
        res = gh.top_eigenpairs(engine, k, "LA", 1e-3)
        _sync(device)
        out["eig_seconds"] = time.perf_counter() - start
        out["eig_hvps"] = res.hvps
        out["eigenvalues"] = res.eigenvalues
        out["residual"] = float((res.residuals / res.eigenvalues.abs()).max())
        engine.count = 0
        start = time.perf_counter()
        from gradlens.functional.trace import hutchpp

        tr = hutchpp(
            engine,
            engine.dim,
            sketch=10,
            tol=1e-2,
            max_hvps=100,
            matmat=engine.matmat,
            generator=torch.Generator().manual_seed(0),
            dtype=engine.dtype,
            device=engine.device,
        )
        out["trace_seconds"] = time.perf_counter() - start
        out["trace_hvps"], out["trace"], out["trace_stderr"] = tr.hvps, tr.estimate, tr.stderr
    return out


def _err(values, reference) -> float:
    if values is None:
        return math.nan
    v = torch.as_tensor(values, dtype=torch.float64)[: len(reference)].cpu()
    return float(((v - reference) / reference.abs()).abs().max())


def run_problem(name, model, batch, loss_fn, device: str, k: int = 5, trace_ref=None) -> None:
    model = model.to(device)
    batch = tuple(t.to(device) for t in batch)
    params = sum(p.numel() for p in model.parameters())
    print(f"\n== {name} on {device}: {params:,} parameters", flush=True)
    reference = reference_eigenvalues(model, batch, loss_fn, k).cpu()
    print(
        f"reference top-{k} (float64 Lanczos, tol 1e-10): "
        + ", ".join(f"{v:.6g}" for v in reference.tolist())
    )
    ours = _gradlens(model, batch, loss_fn, device, k)
    theirs = _pyhessian(model, batch, loss_fn, device, k)
    print(
        f"{'':<10} {'top-5 HVPs':>10} {'seconds':>8} {'max rel err':>12} "
        f"{'trace HVPs':>10} {'trace':>10} {'trace err':>10}"
    )
    for label, r in (("gradlens", ours), ("PyHessian", theirs)):
        if "error" in r:
            print(f"{label:<10} failed: {r['error']}")
            continue
        trace_err = f"{abs(r['trace'] - trace_ref) / abs(trace_ref):.2%}" if trace_ref else "-"
        print(
            f"{label:<10} {r['eig_hvps']:>10} {r['eig_seconds']:>8.3f} "
            f"{_err(r['eigenvalues'], reference):>12.2e} {r['trace_hvps']:>10} "
            f"{r['trace']:>10.5g} {trace_err:>10}"
        )
    if "eig_hvps" in theirs:
        print(
            f"HVP ratio PyHessian / gradlens: {theirs['eig_hvps'] / ours['eig_hvps']:.1f}×"
            f"  (target ≥ 4×)"
        )
    if "density" in theirs:
        print(f"PyHessian density(): {theirs['density']}")
    budget = ours["eig_hvps"] * ours["hvp_ms"] / 1e3
    print(
        f"gradlens engine: {ours['method']}; gradient {ours['grad_ms']:.2f} ms, HVP "
        f"{ours['hvp_ms']:.2f} ms = {ours['hvp_ms'] / ours['grad_ms']:.2f}× gradient (target ≤ 3)"
    )
    print(
        f"gradlens wall / (HVPs × HVP time) = {ours['eig_seconds'] / budget:.2f} "
        f"(target ≤ 1.2); engine selection {ours['setup_seconds']:.2f} s; trace "
        f"{ours['trace']:.5g} ± {ours['trace_stderr']:.2g}"
    )
    if "note" in ours:
        print(f"note: {ours['note']}")


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


def scale_run(g) -> None:
    """GPT-2-small (124M) top-5 on 8×512 tokens: time and peak memory (GPU)."""
    torch.manual_seed(0)
    model = GPT(vocab=50257, block=512, d=768, layers=12, heads=12).cuda().eval()
    idx, tgt = (t.cuda() for t in _gpt_batch(50257, 8, 512, g))
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    res = gh.hessian_eigenvalues(model, lm_loss, (idx, tgt), k=5, tol=1e-3)
    torch.cuda.synchronize()
    print(
        f"\n== GPT-2 small scale: top-5 {res.eigenvalues.tolist()} in "
        f"{time.perf_counter() - start:.1f} s, {res.hvps} HVPs, engine {res.method}, peak "
        f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB (target ≤ 30 s)"
    )


if __name__ == "__main__":
    main()
