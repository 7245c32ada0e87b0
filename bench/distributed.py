"""Step time under 2-process DDP on CPU (gloo): gradlens watch vs plain, side by side.

    python bench/distributed.py [--trials 3] [--steps 60]

Each trial launches torchrun twice, plain and under `gradlens watch` (capture every step,
one asynchronous all-reduce of the captured row per step), and reads rank 0's median step
time; the ratio is the median over trials.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _run(cmd: list[str], steps: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "t.json"
        subprocess.run([*cmd, str(out), str(steps)], check=True, capture_output=True, cwd=tmp)
        return float(json.loads(out.read_text())["step_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
    script = str(HERE / "ddp_step.py")
    plain, watched = [], []
    with tempfile.TemporaryDirectory() as runs:
        for _ in range(args.trials):
            plain.append(_run([*torchrun, script], args.steps))
            watched.append(
                _run(
                    [
                        *torchrun,
                        "-m",
                        "gradlens",
                        "watch",
                        "--runs-dir",
                        runs,
                        "--status",
                        "off",
                        script,
                    ],
                    args.steps,
                )
            )
    p, w = statistics.median(plain), statistics.median(watched)
    print("2-process DDP on CPU (gloo), MLP 256-512-512-10, batch 256 per rank")
    print(f"{'plain ms':>9} {'gradlens ms':>11} {'ratio':>6}")
    print(f"{p * 1e3:>9.2f} {w * 1e3:>11.2f} {w / p:>6.3f}")


if __name__ == "__main__":
    main()
