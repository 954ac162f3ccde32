#!/usr/bin/env bash
# Amazon (MiniOneRec layout) in MiniOneRec's protocol: the README's run, one command.
#
#   bash scripts/amazon_minionerec.sh [OUT]          # OUT defaults to runs/amazon
#
# import (--expand-histories) -> collision-free index (--unique-sids) -> samples -> SFT (validation early stopping,
# best weights kept) -> RAD-DPO (lr, steps and gamma chosen by `radgr experiment tune` on SFT's validation split,
# never the test split) -> `radgr eval` of RAD-DPO against SFT and popularity over every test row, at beam 50
# (MiniOneRec's evaluate.sh) and beam 128. Each step is skipped when its output exists, so a rerun resumes (SFT and
# RAD-DPO also resume from their checkpoints). Wall seconds per step go to OUT/times.tsv.
#
# Knobs (environment): DATASET (default ../shared/datasets/amazon18-industrial), PRESET (small), SFT_LR (1e-3),
# SFT_BATCH (32), SFT_MAX_STEPS (4000), SFT_EVAL_EVERY (250), TUNE_LRS (5e-5,1e-4), TUNE_STEPS (300),
# TUNE_LIMIT (all validation sessions), EVAL_LIMIT (all rows), ENGINE (torch: beam 50 over all 4,533 rows
# took 97 s with it and 1,739 s with vLLM, the latter beside a CI run; same metrics but one example's rank), RADGR (radgr), PYTHON (python). On one GPU: PRESET=0.6b SFT_LR=3e-4 SFT_BATCH=64 (README).
set -euo pipefail

OUT=${1:-runs/amazon}
DATASET=${DATASET:-../shared/datasets/amazon18-industrial}
PRESET=${PRESET:-small}
SFT_LR=${SFT_LR:-1e-3}
SFT_BATCH=${SFT_BATCH:-32}
SFT_MAX_STEPS=${SFT_MAX_STEPS:-4000}
SFT_EVAL_EVERY=${SFT_EVAL_EVERY:-250}
TUNE_LRS=${TUNE_LRS:-5e-5,1e-4}
TUNE_STEPS=${TUNE_STEPS:-300}
RADGR=${RADGR:-radgr}
PYTHON=${PYTHON:-python}
ENGINE=${ENGINE:-torch}
LIMIT=()
if [[ -n "${EVAL_LIMIT:-}" ]]; then LIMIT=(--limit "$EVAL_LIMIT"); fi
TUNE=()
if [[ -n "${TUNE_LIMIT:-}" ]]; then TUNE=(--limit "$TUNE_LIMIT"); fi

mkdir -p "$OUT/eval"
step() {  # step NAME DONE_PATH CMD...: run CMD unless DONE_PATH exists; append its wall seconds to times.tsv
    local name=$1 done=$2
    shift 2
    if [[ -e "$done" ]]; then echo "== $name: done ($done)"; return; fi
    echo "== $name: $*"
    local t0=$SECONDS
    "$@"
    printf '%s\t%s\n' "$name" "$((SECONDS - t0))" >> "$OUT/times.tsv"
}

step import "$OUT/data/sessions.parquet" \
    "$RADGR" data import-amazon --dataset "$DATASET" --out "$OUT/data" --expand-histories
step index "$OUT/index/stats.json" \
    "$RADGR" index build --catalog "$OUT/data/catalog.parquet" --out "$OUT/index" --codebooks 256,256,256 --unique-sids
step samples "$OUT/samples/test.parquet" \
    "$RADGR" data samples --sessions "$OUT/data/sessions.parquet" --index "$OUT/index" \
    --catalog "$OUT/data/catalog.parquet" --out "$OUT/samples"
step sft "$OUT/sft/final" \
    "$RADGR" train sft --preset "$PRESET" --samples "$OUT/samples" --index "$OUT/index" \
    --catalog "$OUT/data/catalog.parquet" --out "$OUT/sft" --batch-size "$SFT_BATCH" --lr "$SFT_LR" \
    --max-steps "$SFT_MAX_STEPS" --eval-every "$SFT_EVAL_EVERY" --save-steps "$SFT_EVAL_EVERY" --resume
step tune "$OUT/tune/tune.json" \
    "$RADGR" experiment tune --samples "$OUT/samples" --index "$OUT/index" --sft "$OUT/sft/final" \
    --out "$OUT/tune" --methods rad-dpo --lrs "$TUNE_LRS" --steps "$TUNE_STEPS" "${TUNE[@]}"
# the tune's choice, as `radgr train align` options (batch 8 and RDRW window 512: the tune's preset)
read -r -a CHOSEN < <("$PYTHON" - "$OUT/tune/tune.json" <<'EOF'
import json, sys
o = json.load(open(sys.argv[1]))["chosen"]["rad-dpo"]["overrides"]
print(f"--lr {o['lr']:g} --max-steps {int(o['max_steps'])} --beta {o['beta']:g} --gamma {o['gamma']:g}")
EOF
)
step rad-dpo "$OUT/rad/final" \
    "$RADGR" train align --method rad-dpo --sft "$OUT/sft/final" --samples "$OUT/samples" --out "$OUT/rad" \
    --batch-size 8 --rdrw-window 512 "${CHOSEN[@]}" --resume
for b in 50 128; do
    step "eval-b$b" "$OUT/eval/rad_vs_sft_b$b.json" \
        "$RADGR" eval --model "$OUT/rad/final" --against "$OUT/sft/final" --index "$OUT/index" \
        --samples "$OUT/samples" --beam-width "$b" --top-k 500 --no-hallucination --baseline popularity --engine "$ENGINE" \
        "${LIMIT[@]}" --out "$OUT/eval/rad_vs_sft_b$b.json"
done
echo "== wall seconds per step ($OUT/times.tsv):"
cat "$OUT/times.tsv"
