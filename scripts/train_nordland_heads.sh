#!/usr/bin/env bash
# Train every aggregation head the same way on Nordland (training/configs/nordland_cpu.yaml: same
# small ViT, data, schedule and 15-minute CPU budget; only the head changes) and evaluate each one
# winter -> summer (+-2 frames) on the held-out part of the route, with the raw-pixel baseline and
# the untrained QAA model for reference. Prints a table; results land in OUT/summary.md.
#
#   scripts/train_nordland_heads.sh [OUT=runs/nordland_heads] [DATA=../shared/data/nordland64x32] [HEADS...]
#
# HEADS default to QAA GeM NetVLAD SALAD BoQ; QAA-Softmax and QAA-OT (the paper's ablation) also work.
#
# One head takes up to ~13 minutes on a busy 2-core CPU. Several invocations with different HEADS may
# run side by side into the same OUT; the summary lists every head trained there so far.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/nordland_heads}
DATA=${2:-../shared/data/nordland64x32}
shift $(( $# > 2 ? 2 : $# )) || true
HEADS=("$@")
[ ${#HEADS[@]} -gt 0 ] || HEADS=(QAA GeM NetVLAD SALAD BoQ)
PY=${PYTHON:-.venv/bin/python}
CONFIG=training/configs/nordland_cpu.yaml
# the validation split of the config: the last 15 % of the route, never trained on
EVAL_ARGS=(--dataset "traversal:$DATA" --database-traversal summer --query-traversal winter
           --frame-tolerance 2 --frame-range 0.85:1.0 --no-progress)
mkdir -p "$OUT"

# Heads sized for the config's 64-wide ViT (descriptor dims in the comments).
head_config() {
  case "$1" in
    QAA|QAA-Softmax|QAA-OT)  # 256; the Softmax / OT ablations (for training.coding_rate) share the QAA sizes
             echo "{num_channels: 64, num_queries: 32, num_clusters: 16, cluster_dim: 16, feature_nheads: 4, score_nheads: 4}" ;;
    GeM)     echo "{num_channels: 64}" ;;                                                                 # 64
    NetVLAD) echo "{num_channels: 64, num_clusters: 8}" ;;                                               # 512
    SALAD)   echo "{num_channels: 64, num_clusters: 4, cluster_dim: 56, token_dim: 32}" ;;  # 256; its OT needs fewer clusters than the 8 tokens
    BoQ)     echo "{num_channels: 64, proj_channels: 64, num_queries: 16, num_layers: 2, row_dim: 4, num_heads: 4}" ;;  # 256
    *) echo "unknown head $1" >&2; exit 2 ;;
  esac
}

for head in "${HEADS[@]}"; do
  run="$OUT/$head"
  if [ ! -f "$run/summary.json" ]; then
    "$PY" -m training.train --config "$CONFIG" --out "$run" --no-progress \
      --set "data_root=$DATA" "model.agg_arch=$head" "model.agg_config=$(head_config "$head")"
  fi
  "$PY" -m training.evaluate --model "$run/checkpoints/last" "${EVAL_ARGS[@]}" --json "$run/heldout.json"
done

# Untrained QAA (same config, zero steps) and the raw-pixel baseline on the same split.
if [ ! -f "$OUT/untrained/checkpoints/last/model.safetensors" ]; then
  "$PY" - "$CONFIG" "$OUT/untrained/checkpoints/last" "$DATA" <<'EOF'
import sys
import torch
from qaa_vpr_ros.model import save_checkpoint
from training.config import load_config
from training.train import build_training_model
config, _ = load_config(sys.argv[1], [f"data_root={sys.argv[3]}"])
torch.manual_seed(config.seed)
save_checkpoint(build_training_model(config), sys.argv[2])
EOF
fi
"$PY" -m training.evaluate --model "$OUT/untrained/checkpoints/last" "${EVAL_ARGS[@]}" --json "$OUT/untrained.json"
"$PY" -m training.evaluate --model raw-pixels:32x64 "${EVAL_ARGS[@]}" --json "$OUT/raw_pixels.json"

"$PY" - "$OUT" "${HEADS[@]}" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
order = ["QAA", "QAA-Softmax", "QAA-OT", "GeM", "NetVLAD", "SALAD", "BoQ"]
heads = sorted((p.parent.name for p in out.glob("*/heldout.json")), key=lambda h: (order + [h]).index(h))
rows = [(h, out / h / "heldout.json", out / h / "summary.json") for h in heads]
rows += [("untrained QAA", out / "untrained.json", None), ("raw pixels 32x64", out / "raw_pixels.json", None)]
lines = ["| model | dim | steps | R@1 | R@5 | R@10 | R@20 |", "|---|---|---|---|---|---|---|"]
for name, result, summary in rows:
    r = json.loads(result.read_text())[0]
    steps = json.loads(summary.read_text())["step"] if summary else "-"
    dim = "-"
    if summary:
        from qaa_vpr_ros.model import load_model
        dim = load_model(out / name / "checkpoints" / "last").out_dim
    lines.append(f"| {name} | {dim} | {steps} | {r['R@1']:.1f} | {r['R@5']:.1f} | {r['R@10']:.1f} | {r['R@20']:.1f} |")
text = "\n".join(lines)
print(text)
(out / "summary.md").write_text(text + "\n")
EOF
