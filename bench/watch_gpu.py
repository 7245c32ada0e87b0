"""``gradlens watch`` on the nanoGPT-style client on a GPU: torch.compile, bf16 autocast and
fp16 + GradScaler, with ``--probes standard`` (issue #11's GPU acceptance), side by side.

    python bench/watch_gpu.py OUT_DIR            # on a CUDA machine
    python bench/watch_gpu.py OUT_DIR --smoke    # the same code path on the CPU (aot_eager)

Each configuration runs plain and watched (exit codes must agree), with a time limit; the
table says whether the watched run finished, how many steps it recorded, which probes wrote
rows and what gradlens said on stderr.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CLIENT = ROOT / "tests" / "clients" / "nanogpt_style.py"
PROBES = ["--probes", "standard", "--probe", "hessian.every=4", "--probe", "ghost.every=4",
          "--probe", "collapse.every=100", "--probe", "hessian.k=3"]  # fmt: skip


def configs(smoke: bool) -> list[tuple[str, list[str]]]:
    if smoke:
        return [("cpu aot_eager bf16", ["--compile", "aot_eager", "--dtype", "bfloat16"])]
    cuda = ["--device", "cuda"]
    return [
        ("compile bf16", [*cuda, "--compile", "inductor", "--dtype", "bfloat16"]),
        ("compile fp16 GradScaler", [*cuda, "--compile", "inductor", "--dtype", "float16"]),
        ("eager fp16 GradScaler", [*cuda, "--dtype", "float16"]),
        ("eager fp32", [*cuda]),
    ]


def run(name: str, args: list[str], out: Path, limit: float) -> dict:
    iters = ["--iters", "12"]
    plain = subprocess.run(
        [sys.executable, str(CLIENT), *args, *iters],
        capture_output=True, text=True, timeout=limit,
    )  # fmt: skip
    start = time.perf_counter()
    slug = name.replace(" ", "-")
    watched = subprocess.run(
        [sys.executable, "-m", "gradlens", "watch", "--runs-dir", str(out / "runs"),
         "--name", slug, "--status", "off", *PROBES, str(CLIENT), *args, *iters],
        capture_output=True, text=True, timeout=limit,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    import gradlens

    result = {"config": name, "plain_rc": plain.returncode, "watched_rc": watched.returncode,
              "seconds": round(seconds, 1)}  # fmt: skip
    try:
        r = gradlens.open_run(out / "runs" / slug)
        result.update(
            status=r.status,
            steps=r.steps,
            hessian_rows=len(r.table("hessian")),
            softmax_rows=len(r.table("softmax")),
            unavailable=r.meta.get("unavailable"),
            disabled=r.meta.get("disabled"),
        )
    except Exception as exc:  # a run that did not even start
        result["error"] = f"{type(exc).__name__}: {exc}"
    result["gradlens_said"] = [
        line for line in watched.stderr.splitlines() if line.startswith("gradlens:")
    ][:5]
    if watched.returncode != plain.returncode:
        result["stderr_tail"] = watched.stderr[-1500:]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--limit", type=float, default=240.0, help="seconds per run")
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA device: nothing to run (use --smoke for the CPU code path)")
        return
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for name, extra in configs(args.smoke):
        try:
            results.append(run(name, extra, args.out, args.limit))
        except subprocess.TimeoutExpired:
            results.append({"config": name, "error": f"over {args.limit:.0f} s"})
        r = results[-1]
        print(
            f"{r['config']:<26} rc plain/watched {r.get('plain_rc')}/{r.get('watched_rc')}  "
            f"{r.get('status', '-'):<9} steps {r.get('steps', '-')}  "
            f"hessian rows {r.get('hessian_rows', '-')}  softmax rows {r.get('softmax_rows', '-')}"
            f"  {r.get('seconds', '-')} s  {r.get('error', '')}",
            flush=True,
        )
    (args.out / "watch_gpu.json").write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
