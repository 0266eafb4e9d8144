#!/usr/bin/env bash
# The GPU items of issue 19, for a lent GPU (not run yet: the session that wrote it had none).
#   bash benchmarks/gpu_experiments.sh [speed|degradation|first-filters|all]   (default: all)
# CONVLENS_DATA must hold cifar10/ (carried as .gpudata); python3 there holds torch.
# Results (logs, metrics, the experiment pages) go to $OUT (default /tmp/out).
#
# 1. speed: a ResNet-20 CIFAR-10 training epoch in images/s, bf16 + channels-last, without and with
#    --compile (the issue's target: >= 60,000 img/s with --compile on an H200, from ~21,000). The
#    compile time is the first epoch's extra seconds. 3 epochs each, batch 1024 as in the probe.
# 2. degradation at --budget paper: plain/resnet 20 and 56, He et al.'s recipe, 164 epochs each,
#    one after the other (about an hour on an H200 at the speeds above; needs a long lease).
# 3. first-filters at --budget paper (30 epochs, three small networks).
set -u
what=${1:-all}
export PYTHONPATH="$PWD/src" CONVLENS_DATA="${CONVLENS_DATA:-$PWD/.gpudata}" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
cl() { python3 -m convlens.cli.main "$@"; }

if [[ $what == speed || $what == all ]]; then
    for mode in --no-compile --compile; do
        dir="/tmp/speed$mode"; rm -rf "$dir"
        ( time cl train resnet20 --data cifar10 --out "$dir" --device cuda --amp --channels-last \
            --epochs 3 --batch-size 1024 --lr 0.4 "$mode" ) > "$OUT/speed$mode.log" 2>&1
        cp "$dir/metrics.jsonl" "$OUT/speed$mode-metrics.jsonl"
        python3 - "$dir/metrics.jsonl" "$mode" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
ips = [r["images_per_s"] for r in rows]
extra = rows[0]["seconds"] - sum(r["seconds"] for r in rows[1:]) / max(len(rows) - 1, 1)
print(f"resnet20 {sys.argv[2]}: train img/s per epoch {[round(v) for v in ips]}, "
      f"steady {max(ips[1:] or ips):,.0f}; first epoch {extra:.0f} s longer (compile/warm-up)")
PY
    done
fi

if [[ $what == degradation || $what == all ]]; then
    ( time cl experiment degradation --budget paper --device cuda --out "$OUT/degradation-paper" ) \
        > "$OUT/degradation-paper.log" 2>&1
    tail -n 12 "$OUT/degradation-paper.log"
fi

if [[ $what == first-filters || $what == all ]]; then
    ( time cl experiment first-filters --budget paper --device cuda --out "$OUT/first-filters-paper" ) \
        > "$OUT/first-filters-paper.log" 2>&1
    tail -n 8 "$OUT/first-filters-paper.log"
fi
# A lease that ends mid-way loses at most one epoch per run:
#   cl experiment degradation --budget paper --device cuda --out "$OUT/degradation-paper" --resume
