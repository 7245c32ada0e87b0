"""Every GPU benchmark in one run: overhead, Hessian (with the 124M-parameter scale run),
landscape and collapse, each in its own process under its own time limit; one results file.

    python bench/gpu.py OUT_DIR            # on one H100/H200: under 8 minutes in all
    python bench/gpu.py OUT_DIR --smoke    # the same code paths at tiny sizes, on the CPU

Writes ``OUT_DIR/results.md``: a markdown table per part (gradlens side by side with its
baseline: PyHessian, the naive per-point loop, the plain training step, the plain forward) and
the raw JSON of every measurement. A part that fails or runs past its limit is recorded as such
and the others still run. PyHessian is the Hessian baseline when installed
(``pip install -e ".[bench]"``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

# seconds per part on the GPU (sum 465 s < 8 min, leaving room for process start-up)
LIMITS = {"overhead": 100, "hessian": 240, "landscape": 85, "collapse": 40}
SMOKE_LIMITS = {"overhead": 600, "hessian": 900, "landscape": 600, "collapse": 300}  # busy CPUs


# -- parts (each runs in a child process) ------------------------------------------------------


def part_overhead(device: str, smoke: bool) -> dict:
    import overhead

    cases = ["mlp-small"] if smoke else overhead.GPU_CASES
    # Timed windows hold two flushes (the writer's share is in the ratio): flushes every 20
    # steps here, more often than a run's default 50, so that the part fits its time limit.
    overhead.EVERY = 20
    steps, trials = (3, 1) if smoke else (2 * overhead.EVERY + 10, 3)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            out.append(overhead.bench(case, device, steps, trials, Path(tmp)))
    return {"cases": out}


def part_hessian(device: str, smoke: bool) -> dict:
    import hessian as hb
    import torch.nn.functional as F
    from models import GPT, ResNet18

    g = torch.Generator().manual_seed(0)
    out: dict = {}
    if smoke:
        torch.manual_seed(0)
        mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
        x, y = torch.randn(64, 8, generator=g), torch.randint(0, 4, (64,), generator=g)
        out["mlp"] = hb.measure(mlp, (x, y), F.cross_entropy, device)
        torch.manual_seed(0)
        gpt = GPT(vocab=32, block=8, d=16, layers=1, heads=2).eval()
        out["gpt"] = hb.measure(gpt, hb._gpt_batch(32, 4, 8, g), hb.lm_loss, device)
        import gradlens.analysis.hessian.spectra as spectra

        spectra.FULL_BASIS_LIMIT = 1  # as for 124M parameters: the bounded, restarted basis
        out["scale"] = hb.scale(g, device, vocab=64, block=16, d=32, layers=2, heads=2, batch=2)
        return out
    torch.manual_seed(0)
    x = torch.randn(256, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (256,), generator=g)
    out["resnet18"] = hb.measure(ResNet18().eval(), (x, y), F.cross_entropy, device)
    torch.manual_seed(0)
    gpt4 = GPT(vocab=512, block=128, d=256, layers=4, heads=4).eval()
    batch = hb._gpt_batch(512, 32, 128, g)
    out["gpt4"] = hb.measure(gpt4, batch, hb.lm_loss, device, reference=False)
    torch.cuda.empty_cache()
    out["scale"] = hb.scale(g, device, **hb.SCALE_124M)
    return out


def part_landscape(device: str, smoke: bool) -> dict:
    import landscape as lb

    case, samples, steps = ("cnn", 16, 5) if smoke else ("resnet18", 1024, 41)
    model, x, y = lb._case(case, device, samples)
    naive_s, naive = lb._timed(lambda: lb.naive_grid(model, x, y, steps, 0.5), device)
    out: dict = {"case": case, "samples": samples, "grid": f"{steps}x{steps}"}
    out["naive"] = {"seconds": naive_s}
    for label, kwargs in lb._variants(device, []):
        seconds, (losses, attrs) = lb._timed(
            lambda kwargs=kwargs: lb._ours(model, x, y, steps, 0.5, kwargs), device
        )
        err = max(abs(a - b) for a, b in zip(losses, naive, strict=True))
        out[label] = {
            "seconds": seconds,
            "speedup": naive_s / seconds,
            "max_abs_err_vs_naive": err,
            "engine": attrs["engine"],
            "precision": attrs.get("precision"),
            "check_error": attrs.get("check_error"),
            "batch_points": attrs["batch_points"],
        }
    return out


def part_collapse(device: str, smoke: bool) -> dict:
    import collapse as cb

    cases = ["cnn"] if smoke else cb.GPU_CASES
    batches, trials = (1, 1) if smoke else (4, 3)
    return {"cases": {name: cb.bench(name, device, batches, trials) for name in cases}}


PARTS = {
    "overhead": part_overhead,
    "hessian": part_hessian,
    "landscape": part_landscape,
    "collapse": part_collapse,
}


# -- the parent: run the parts, write the file --------------------------------------------------


def _run_part(name: str, device: str, smoke: bool, limit: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "part.json"
        cmd = [sys.executable, __file__, "--part", name, "--json", str(target), "--device", device]
        cmd += ["--smoke"] if smoke else []
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {limit} s", "seconds": limit}
        seconds = time.perf_counter() - start
        if proc.returncode != 0 or not target.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-6:]
            return {"error": f"exit {proc.returncode}: " + " | ".join(tail), "seconds": seconds}
        result = json.loads(target.read_text())
        result["seconds"] = seconds
        return result


def _f(value, fmt: str = ".3g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, fmt) if isinstance(value, int | float) else str(value)


def _tables(results: dict) -> list[str]:
    lines: list[str] = []
    over = results.get("overhead", {})
    lines += ["## Overhead (watched / plain training step)", ""]
    if "cases" in over:
        lines += [
            "| case | plain ms | gradlens ms | ratio | no-updates | graphs | .item()/layer | "
            "+launches | hook ms | writer ms |"
        ]
        lines += ["|" + "---|" * 10]
        for r in over["cases"]:
            lines.append(
                f"| {r['case']} | {_f(r['plain_ms'])} | {_f(r['watched_ms'])} | "
                f"{_f(r['ratio'])} | {_f(r['no_updates_ratio'])} | {_f(r.get('graphs_ratio'))} | "
                f"{_f(r['item_ratio'])} | {_f(r['extra_launches'])} | {_f(r['hook_ms'])} | "
                f"{_f(r['writer_ms'])} |"
            )
    else:
        lines.append(f"failed: {over.get('error')}")
    hes = results.get("hessian", {})
    lines += ["", "## Hessian top-5 at tol 1e-3 (gradlens vs PyHessian)", ""]
    problems = {k: v for k, v in hes.items() if isinstance(v, dict) and "gradlens" in v}
    if problems:
        lines += [
            "| problem | params | gradlens HVPs | s | max rel err | PyHessian HVPs | s | "
            "max rel err | wall ratio | engine | HVP/grad | wall/(HVPs×HVP) | basis | "
            "trace ± stderr (HVPs, reached) |",
            "|" + "---|" * 14,
        ]
        for name, r in problems.items():
            o, p = r["gradlens"], r["pyhessian"]
            lines.append(
                f"| {name} | {r['params']:,} | {o['eig_hvps']} | {_f(o['eig_seconds'])} | "
                f"{_f(o.get('max_rel_err'))} | {_f(p.get('eig_hvps', p.get('error')))} | "
                f"{_f(p.get('eig_seconds'))} | {_f(p.get('max_rel_err'))} | "
                f"{_f(r.get('wall_ratio_pyhessian_over_gradlens'))} | {o['method']} | "
                f"{_f(o['hvp_over_grad'])} | {_f(o['wall_over_hvps'])} | {o['basis']} | "
                f"{_f(o['trace'])} ± {_f(o['trace_stderr'])} ({o['trace_hvps']}, "
                f"{o['trace_reached']}) |"
            )
    if "scale" in hes:
        s = hes["scale"]
        extra = ""
        if "peak_gib" in s:
            vectors = (s["peak_gib"] - s["model_gib"]) / s["vector_gib"]
            extra = f", peak {s['peak_gib']:.1f} GiB = model + {vectors:.1f} vectors"
        lines += [
            "",
            f"Scale run: {s['params']:,} parameters, {s['tokens']} tokens: top-5 in "
            f"{_f(s['seconds'])} s, {s['hvps']} HVPs (+{s['setup_hvps']} setup), engine "
            f"{s['method']}, basis {s['basis']}, {s['restarts']} restarts{extra}; max rel. "
            f"residual {_f(s['max_rel_residual'])}.",
        ]
    if "error" in hes:
        lines.append(f"failed: {hes['error']}")
    land = results.get("landscape", {})
    lines += ["", f"## Landscape {land.get('grid', '')} ({land.get('case', '')})", ""]
    if "naive" in land:
        lines += ["| engine | seconds | speedup vs naive loop | max abs err | precision | check"]
        lines[-1] += " error |"
        lines += ["|---|---|---|---|---|---|", f"| naive loop | {_f(land['naive']['seconds'])} |"]
        lines[-1] += " 1 | 0 | float32 | - |"
        for label, r in land.items():
            if isinstance(r, dict) and "speedup" in r:
                lines.append(
                    f"| {label} ({r['engine']}) | {_f(r['seconds'])} | {_f(r['speedup'])} | "
                    f"{_f(r['max_abs_err_vs_naive'])} | {r['precision']} | "
                    f"{_f(r['check_error'])} |"
                )
    else:
        lines.append(f"failed: {land.get('error')}")
    col = results.get("collapse", {})
    lines += ["", "## Collapse probe (probe / forward)", ""]
    if "cases" in col:
        lines += ["| case | forward ms | probe ms | ratio |", "|---|---|---|---|"]
        for name, r in col["cases"].items():
            lines.append(
                f"| {name} | {_f(1e3 * r['forward'])} | {_f(1e3 * r['probe'])} | {_f(r['ratio'])} |"
            )
    else:
        lines.append(f"failed: {col.get('error')}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", help="folder for results.md")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, CPU: same code paths")
    parser.add_argument("--device", default=None)
    parser.add_argument("--part", choices=sorted(PARTS), help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    parser.add_argument("--parts", nargs="*", default=list(PARTS), choices=sorted(PARTS))
    args = parser.parse_args()
    device = args.device or ("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    if args.part:  # child
        if args.smoke:
            torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
        result = PARTS[args.part](device, args.smoke)
        Path(args.json).write_text(json.dumps(result, default=_jsonable))
        return
    if not args.out:
        parser.error("OUT_DIR is required")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    limits = SMOKE_LIMITS if args.smoke else LIMITS
    env = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "smoke": args.smoke,
        "limits_s": limits,
    }
    results: dict = {"env": env}
    start = time.perf_counter()
    for name in args.parts:
        print(f"== {name} (limit {limits[name]} s)", flush=True)
        results[name] = _run_part(name, device, args.smoke, limits[name])
        print(f"   {results[name].get('error', 'ok')} in {results[name]['seconds']:.1f} s")
    env["total_s"] = time.perf_counter() - start
    text = [
        f"# gradlens GPU benchmarks ({env['device']}, torch {env['torch']}"
        + (", smoke: tiny sizes" if args.smoke else "")
        + f", {env['total_s']:.0f} s)",
        "",
        *_tables(results),
        "",
        "## Raw",
        "",
        "```json",
        json.dumps(results, indent=1, default=_jsonable),
        "```",
        "",
    ]
    path = out_dir / "results.md"
    path.write_text("\n".join(text))
    print(f"wrote {path}")
    failed = [n for n in args.parts if "error" in results[n]]
    if failed:
        print(f"failed parts: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


def _jsonable(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return str(value)


if __name__ == "__main__":
    main()
