#!/usr/bin/env bash
# Cached vs naive sensitivity sweep (--scope model) on the issue's benchmark model: the
# medium-shaped synthetic checkpoint (SD3-medium widths, depth 4), float32, a small calibration
# set (1 image × 2 steps = 2 records, one early and one late) at 256×256. Two layer sets, 4 bits:
#   1. every Linear of the MMDiT (what a default sweep measures);
#   2. the MLP layers (fc1, fc2) of both streams.
# Naive runs one record at a time (a full forward per layer, bits and record); cached batches
# both records. Reports the whole command's time and the sweep's alone.
# Usage: scripts/bench-sensitivity-medium.sh   (output: the tables on stdout)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/sd3lab
[ -x "$bin" ] || cargo build --release --locked
model=${MODEL:-target/bench-model/medium-d4}
[ -f "$model/sd3_medium.safetensors" ] || "$bin" model synth --preset medium-shaped --depth 4 --seed 0 --output "$model"
out=target/bench-sensitivity-medium
calib="$out/calib"
[ -f "$calib/manifest.json" ] || "$bin" calibrate --model "$model" --num-images 1 --num-steps 2 \
  --height 256 --width 256 --calib-dir "$calib" --prompt-csv /nonexistent.csv >/dev/null 2>&1
common=(--model "$model" --calib-dir "$calib" --bits 4 --dtype float32 --batch-size 2)
rm -f "$out/times"
timed() { # name, args...
  local name=$1; shift
  rm -rf "${out:?}/$name"
  local s e sweep
  s=$(date +%s%N)
  "$bin" sensitivity "${common[@]}" "$@" --output-dir "$out/$name" >"$out/$name.log" 2>/dev/null
  e=$(date +%s%N)
  sweep=$(sed -n 's/.* measured in \([0-9.]*\) s .*/\1/p' "$out/$name.log")
  echo "$name $(( (e - s) / 1000000 )) $sweep" >>"$out/times"
}
timed all-cached
timed all-naive --no-cache
timed mlp-cached --layers 'mlp\.fc[12]'
timed mlp-naive --layers 'mlp\.fc[12]' --no-cache
python3 - "$out" <<'PY'
import csv, os, sys
out = sys.argv[1]
t = {}
for line in open(f"{out}/times"):
    name, ms, sweep = line.split()
    t[name] = (int(ms) / 1000, float(sweep))
def rows(m):
    return {(r["name"], r["bits"], r["bucket"]): float(r["mse"])
            for r in csv.DictReader(open(f"{out}/{m}/sensitivity.csv"))}
cpu = open("/proc/cpuinfo").read().split("model name")[1].split(":")[1].splitlines()[0].strip()
print(f"Machine: {cpu}, {os.cpu_count()} CPUs")
print("\n| medium-shaped depth 4, 256², 2 records, 4 bits | layers | naive whole (s) | cached whole (s) | speed-up | naive sweep (s) | cached sweep (s) | speed-up | largest rel. diff (mse) |")
print("|---|---|---|---|---|---|---|---|---|")
for s, label in (("all", "every Linear"), ("mlp", "MLP fc1/fc2")):
    a, b = rows(f"{s}-cached"), rows(f"{s}-naive")
    worst = max(abs(a[k] - b[k]) / max(abs(b[k]), 1e-30) for k in b)
    n = len({k[0] for k in b})
    nv, cv = t[f"{s}-naive"], t[f"{s}-cached"]
    print(f"| {label} | {n} | {nv[0]:.1f} | {cv[0]:.1f} | {nv[0] / cv[0]:.2f}× | {nv[1]:.1f} | {cv[1]:.1f} | **{nv[1] / cv[1]:.2f}×** | {worst:.1e} |")
PY
