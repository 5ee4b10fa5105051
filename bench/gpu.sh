#!/usr/bin/env bash
# GPU benchmark of DINOv2-B/14 + QAA-8192 at 322x322 (random weights) on a lent GPU machine.
#
#   bench/gpu.sh [OUT] [--smoke] [--budget-s S]     # OUT defaults to bench/gpu_out
#
# The one bench runner in GPU mode (python3 -m bench.run --gpu; parts in bench/gpu_bench.py).
# Runs from the repository root with the machine's python3 (override: PYTHON=...). Installs
# nothing: parts whose packages are missing (faiss, onnxruntime-gpu) are skipped with the reason
# printed. Whole run capped at 8 minutes; writes OUT/{results.json,summary.md,log.txt,nvidia-smi.txt}
# and prints the summary table. --smoke: tiny model on the CPU (seconds), to check the script.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=bench/gpu_out
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then OUT=$1; shift; fi
PY=${PYTHON:-python3}
mkdir -p "$OUT"
{ nvidia-smi || echo "nvidia-smi not available"; } > "$OUT/nvidia-smi.txt" 2>&1
"$PY" - <<'PYEOF' 2>&1 | tee "$OUT/packages.txt"
import importlib
for name in ("torch", "timm", "torchvision", "onnx", "onnxruntime", "faiss", "numpy", "yaml", "cv2"):
    try:
        module = importlib.import_module(name)
        print(f"{name:12s} {getattr(module, '__version__', '?')}")
    except Exception as err:  # report, never install
        print(f"{name:12s} MISSING ({type(err).__name__}: {err})")
PYEOF
# 480 s hard cap (the script budgets its parts to ~420 s); SIGINT first so partial logs flush.
timeout -s INT -k 20 480 "$PY" -m bench.run --gpu --out "$OUT" "$@" 2>&1 | tee "$OUT/log.txt"
status=${PIPESTATUS[0]}
echo "bench/gpu.sh: exit status $status; results in $OUT"
exit "$status"
