#!/usr/bin/env bash
# The GPU check of docs/benchmarks.md, as one script that fits in ten minutes on one GPU:
#   1. the card, Python and torch versions;
#   2. first, the paper's Table 1 run on CIFAR-10 (train + test, 60,000 images):
#      `imgcluster fit cifar10 --preset paper` (ResNet-34, every method setting at the paper's
#      value, docs/method.md) under a time budget; its history.jsonl scores every epoch
#      (ACC / NMI / ARI), `eval` scores the end, and the results are copied to OUT_DIR at once,
#      so they survive a session that ends during the later steps;
#   3. trainer vs bare throughput of ResNet-34 and the small net at 32 px, batch 256
#      (benchmarks/throughput.py), with the host-device synchronisations of one training step
#      (skipped with THROUGHPUT=0).
#
# usage: benchmarks/gpu_check.sh OUT_DIR DATA_DIR [MINUTES] [FIT_ARGS...]
#   DATA_DIR holds cifar10-train.tar.gz (train/<class>/*.jpg) and the test split, either as the
#   folder cifar10-test/<class>/*.jpg or as cifar10-test.tar.gz; MINUTES is the preset run's
#   time budget (default 5: with the decode, the per-epoch scoring, which the budget leaves out,
#   and the export, about 7 minutes in all). FIT_ARGS go to `fit` after the preset.
# Run it from the repository root; it needs no install (the source tree goes on PYTHONPATH).
set -u
out=$(realpath "$1")
data=$(realpath "$2")
minutes=${3:-5}
shift $(($# < 3 ? $# : 3))
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
work=$(mktemp -d)
log() { echo "== $(date +%T) $*" | tee -a "$out/steps.log"; }

log "versions"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name())" | tee -a "$out/gpu.txt"

log "extract CIFAR-10"
mkdir -p "$work/cifar10"
tar -xzf "$data/cifar10-train.tar.gz" -C "$work/cifar10"
if [ -d "$data/cifar10-test" ]; then
    cp -r "$data/cifar10-test" "$work/cifar10/test"
else
    tar -xzf "$data/cifar10-test.tar.gz" -C "$work/cifar10"
    mv "$work/cifar10/cifar10-test" "$work/cifar10/test"
fi
rm -f "$work/cifar10/test/labels.csv"

log "Table 1: fit cifar10 --preset paper for $minutes minutes $*"
python3 -m imgcluster fit cifar10 --preset paper --data-root "$work/cifar10" --device cuda \
    --no-report --time-budget "$minutes" --cache-dir "$work/cache" --out "$work/run" "$@" \
    >"$out/fit.log" 2>&1
echo "fit exit status $?"
tail -5 "$out/fit.log"
cp "$work/run/history.jsonl" "$work/run/config.json" "$out/" 2>/dev/null

log "eval"
python3 -m imgcluster eval --run "$work/run" --json | tee "$out/eval.json"

log "time to accuracy"
python3 - "$out/history.jsonl" <<'EOF' | tee "$out/table1.md"
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print("| epoch | elapsed s | train img/s | label update s | scoring s | ACC | NMI | ARI |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['epoch']} | {r['elapsed_seconds']:.0f} | {r['images_per_s']:.0f} "
          f"| {r['label_update_seconds']:.1f} | {r.get('diagnostic_seconds', float('nan')):.1f} "
          f"| {r.get('acc', float('nan')):.3f} | {r.get('nmi', float('nan')):.3f} "
          f"| {r.get('ari', float('nan')):.3f} |")
EOF

if [ "${THROUGHPUT:-1}" != 0 ]; then
    log "throughput: resnet34, 32 px, batch 256"
    python3 benchmarks/throughput.py --device cuda --backbone resnet34 --image-size 32 \
        --batch-size 256 --steps 20 --rounds 3 --warmup 5 --sync-check --json \
        2>"$out/throughput.err" | tee "$out/throughput.json"

    log "throughput: small, 32 px, batch 256"
    python3 benchmarks/throughput.py --device cuda --backbone small --image-size 32 \
        --batch-size 256 --steps 20 --rounds 3 --warmup 5 --sync-check --json \
        2>>"$out/throughput.err" | tee -a "$out/throughput.json"
fi
log "done"
