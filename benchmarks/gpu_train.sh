#!/usr/bin/env bash
# GPU training results of the README, run on a lent H100 through the device tool:
#   bash benchmarks/gpu_train.sh DATA MODEL SEED [SEED ...]   (extra `convlens train` flags in $TRAIN_ARGS)
# CONVLENS_DATA must hold the data set (carried as .gpudata); python3 there holds torch.
# One process per seed, all sharing the GPU (a ResNet-20 does not fill an H100).
set -u
data=$1 model=$2; shift 2
export PYTHONPATH="$PWD/src" CONVLENS_DATA="${CONVLENS_DATA:-$PWD/.gpudata}" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
for seed in "$@"; do
    ( time python3 -m convlens.cli.main train "$model" --data "$data" --out "/tmp/$model-$data-$seed" \
        --device cuda --amp --channels-last --seed "$seed" ${TRAIN_ARGS:-} ) > "$OUT/$data-$seed.log" 2>&1 &
done
wait
for seed in "$@"; do
    cp "/tmp/$model-$data-$seed/metrics.jsonl" "$OUT/$model-$data-$seed-metrics.jsonl"
    tail -n 3 "$OUT/$data-$seed.log"
done
python3 - "$OUT" <<'PY'
import glob, json, sys
accs = []
for p in sorted(glob.glob(f"{sys.argv[1]}/*-metrics.jsonl")):
    rows = [json.loads(l) for l in open(p)]
    t, first90 = 0.0, None
    for r in rows:
        t += r["seconds"]
        if first90 is None and r["test_acc"] >= 0.90:
            first90 = f"epoch {r['epoch'] + 1} at {t:.0f} s"
    accs.append(rows[-1]["test_acc"])
    ips = sum(r["images_per_s"] for r in rows) / len(rows)
    print(f"{p.split('/')[-1]}: {len(rows)} epochs, final test acc {rows[-1]['test_acc']:.4f}, "
          f"{t:.0f} s in all, mean {ips:,.0f} train img/s, first >= 90 %: {first90}")
print(f"mean final test accuracy over {len(accs)} seeds: {sum(accs) / len(accs):.4f}")
PY
