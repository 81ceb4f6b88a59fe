#!/usr/bin/env bash
# Sensitivity sweep cost and proxy quality, in one run, on a synthetic model with SD3-medium
# widths and the full depth of 24 blocks (the full-size `sd3-medium` preset), float32, one
# calibration record at 256×256 (override: MODEL=dir SIZE=px LAYERS=regex).
#   1. cached vs naive (--no-cache), --scope model, a few fc1 layers spread over the depth;
#   2. --scope model vs block vs layer on every layer of three blocks, with the Spearman rank
#      agreement of each proxy's layer ranking with the model ranking, per bit width.
# Usage: scripts/bench-sensitivity.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/sd3lab
[ -x "$bin" ] || cargo build --release --locked
model=${MODEL:-target/bench-model/sd3-medium}
size=${SIZE:-256}
[ -f "$model/sd3_medium.safetensors" ] || "$bin" model synth --preset sd3-medium --seed 0 --output "$model"
out=target/bench-sensitivity
calib="$out/calib-$size"
[ -f "$calib/manifest.json" ] || "$bin" calibrate --model "$model" --num-images 1 --num-steps 2 \
  --height "$size" --width "$size" --calib-dir "$calib" --prompt-csv /nonexistent.csv >/dev/null 2>&1
common=(--model "$model" --calib-dir "$calib" --max-images 1 --step-stride 2 --dtype float32)
timed() { # name, args...
  local name=$1; shift
  rm -rf "$out/$name"
  local s e
  s=$(date +%s%N)
  "$bin" sensitivity "${common[@]}" "$@" --output-dir "$out/$name" >/dev/null 2>&1
  e=$(date +%s%N)
  echo "$name $(( (e - s) / 1000000 ))" >>"$out/times"
}
rm -f "$out/times"
few='blocks\.(2|12|22)\.image_transformer_block\.mlp\.fc1'
timed cached --bits 2,4 --layers "$few"
timed naive --bits 2,4 --layers "$few" --no-cache
many=${LAYERS:-'blocks\.(2|12|22)\.'}
for scope in model block layer; do
  timed "scope-$scope" --bits 2,4 --layers "$many" --scope "$scope"
done
python3 - "$out" "$size" <<'PY'
import csv, sys
out, size = sys.argv[1], sys.argv[2]
t = {k: int(v) / 1000 for k, v in (l.split() for l in open(f"{out}/times"))}
rows = lambda m: {(r["name"], r["bits"], r["bucket"]): float(r["mse"]) for r in csv.DictReader(open(f"{out}/{m}/sensitivity.csv"))}
a, b = rows("cached"), rows("naive")
worst = max(abs(a[k] - b[k]) / max(abs(b[k]), 1e-30) for k in b)
n = lambda m: len({r["name"] for r in csv.DictReader(open(f"{out}/{m}/sensitivity.csv"))})
print(f"Machine: {open('/proc/cpuinfo').read().split('model name')[1].split(':')[1].splitlines()[0].strip()}, {__import__('os').cpu_count()} CPUs")
print(f"\n| cost: {n('cached')} fc1 layers × 2 bit widths × 1 record, depth 24, {size}² | seconds |")
print("|---|---|")
print(f"| naive (--no-cache: full forward) | {t['naive']:.1f} |")
print(f"| cached (blocks k.. only) | {t['cached']:.1f} |")
print(f"| speed-up | {t['naive'] / t['cached']:.2f}× |")
print(f"\nlargest relative difference cached vs naive (mse): {worst:.1e}")
print(f"\n| scope ({n('scope-model')} layers × 2 bit widths) | seconds | vs model |")
print("|---|---|---|")
for s in ("model", "block", "layer"):
    print(f"| {s} | {t['scope-' + s]:.1f} | {t['scope-model'] / t['scope-' + s]:.1f}× |")
PY
echo
"$bin" rank-agreement "$out/scope-model/sensitivity.json" "$out/scope-block/sensitivity.json" "$out/scope-layer/sensitivity.json"
