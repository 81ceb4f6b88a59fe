#!/usr/bin/env bash
# Sensitivity sweep cost and proxy quality, in one run, on a synthetic model with SD3-medium
# widths and the full depth of 24 blocks (the full-size `sd3-medium` preset), float32, one
# calibration record at 256×256 (override: MODEL=dir SIZE=px).
#   1. cached vs naive (--no-cache), --scope model: the image-stream fc1 of all 24 blocks, 4 bits;
#   2. --scope model vs block vs layer on every layer of blocks 2, 12 and 22 at 2 and 4 bits,
#      with the Spearman rank agreement of each proxy's layer ranking with the model ranking.
# Reports the whole command's time and the sweep's alone (after loading the model, the samples
# and their float outputs, which every run pays once).
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
  "$bin" sensitivity "${common[@]}" "$@" --output-dir "$out/$name" >"$out/$name.log" 2>/dev/null
  e=$(date +%s%N)
  sweep=$(sed -n 's/.* measured in \([0-9.]*\) s .*/\1/p' "$out/$name.log")
  echo "$name $(( (e - s) / 1000000 )) $sweep" >>"$out/times"
}
rm -f "$out/times"
timed cached --bits 4 --layers 'image_transformer_block\.mlp\.fc1'
timed naive --bits 4 --layers 'image_transformer_block\.mlp\.fc1' --no-cache
for scope in model block layer; do
  timed "scope-$scope" --bits 2,4 --layers 'blocks\.(2|12|22)\.' --scope "$scope"
done
python3 - "$out" "$size" <<'PY'
import csv, os, sys
out, size = sys.argv[1], sys.argv[2]
t = {}
for line in open(f"{out}/times"):
    name, ms, sweep = line.split()
    t[name] = (int(ms) / 1000, float(sweep))
rows = lambda m: {(r["name"], r["bits"], r["bucket"]): float(r["mse"]) for r in csv.DictReader(open(f"{out}/{m}/sensitivity.csv"))}
a, b = rows("cached"), rows("naive")
worst = max(abs(a[k] - b[k]) / max(abs(b[k]), 1e-30) for k in b)
n = lambda m: len({r["name"] for r in csv.DictReader(open(f"{out}/{m}/sensitivity.csv"))})
cpu = open("/proc/cpuinfo").read().split("model name")[1].split(":")[1].splitlines()[0].strip()
print(f"Machine: {cpu}, {os.cpu_count()} CPUs")
print(f"\n| {n('cached')} layers (image fc1 of every block) × 4 bits × 1 record, depth 24, {size}² | whole command (s) | sweep alone (s) |")
print("|---|---|---|")
for k, label in (("naive", "naive (`--no-cache`: full forward)"), ("cached", "cached (blocks k.. only)")):
    print(f"| {label} | {t[k][0]:.1f} | {t[k][1]:.1f} |")
print(f"| speed-up | {t['naive'][0] / t['cached'][0]:.2f}× | {t['naive'][1] / t['cached'][1]:.2f}× |")
print(f"\nlargest relative difference cached vs naive (mse): {worst:.1e}")
print(f"\n| scope ({n('scope-model')} layers of blocks 2, 12, 22 × 2 bit widths) | whole command (s) | sweep alone (s) | sweep vs model |")
print("|---|---|---|---|")
for s in ("model", "block", "layer"):
    w, sw = t["scope-" + s]
    print(f"| {s} | {w:.1f} | {sw:.1f} | {t['scope-model'][1] / sw:.1f}× |")
PY
echo
"$bin" rank-agreement "$out/scope-model/sensitivity.json" "$out/scope-block/sensitivity.json" "$out/scope-layer/sensitivity.json"
