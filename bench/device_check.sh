#!/usr/bin/env bash
# Every GPU check of gradlens in one run on a CUDA machine, most important first, each part
# under its own time limit (at most 8.5 minutes in all); a log and a few result files land in
# $OUT (few files: the device tool brings back at most 8).
#
#     OUT=/tmp/gpu bash bench/device_check.sh           # or the device tool's $OUT
#     PARTS="tests overhead" bash bench/device_check.sh  # a subset
#
# Parts: tests (tests/test_gpu.py, incl. the CUDA-graph replay's bitwise check), overhead
# (bench/overhead.py on ResNet-18, the 4-layer GPT and the nanoGPT-style model: ratios with and
# without GRADLENS_CUDA_GRAPHS=1, launches, hook and writer time), watch (bench/watch_gpu.py:
# `gradlens watch` on the nanoGPT-style client with torch.compile, bf16, fp16+GradScaler),
# probes (bench/gpu.py's Hessian and collapse parts, PyHessian beside them when installed).
# Needs torch, numpy, pandas, pyarrow,
# typer, rich and pytest (the device image has them; plotly/dash are not needed).
set -u
OUT=${OUT:-/tmp/gradlens-device}
PARTS=${PARTS:-tests overhead watch probes}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
LOG="$OUT/log.txt"
PY=${PYTHON:-python3}

part() {  # part NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    case " $PARTS " in *" $name "*) ;; *) return 0 ;; esac
    local start=$SECONDS
    echo "== $name (limit ${limit}s): $*" | tee -a "$LOG"
    timeout --signal=INT --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
    echo "== $name: exit $? in $((SECONDS - start))s" | tee -a "$LOG"
}

{ nvidia-smi -L; $PY -c "import torch; print('torch', torch.__version__, torch.version.cuda)"; } \
    >>"$LOG" 2>&1
part tests 90 $PY -m pytest -q -s -p no:cacheprovider tests/test_gpu.py
part overhead 180 $PY bench/overhead.py --trials 3 --cases resnet18 gpt nanogpt
part watch 150 $PY bench/watch_gpu.py /tmp/gradlens-watch --limit 60
cp /tmp/gradlens-watch/watch_gpu.json "$OUT/" 2>/dev/null
part probes 90 $PY bench/gpu.py "$OUT/probes" --parts hessian collapse
echo "done in ${SECONDS}s" | tee -a "$LOG"
