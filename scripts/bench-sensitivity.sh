#!/usr/bin/env bash
# Sensitivity sweep cost: cached block re-runs vs the naive oracle (--no-cache), same layers,
# bits and samples, on the medium-shaped synthetic model (SD3-medium widths, depth 4), 512×512.
# Usage: scripts/bench-sensitivity.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/sd3lab
[ -x "$bin" ] || cargo build --release --locked
medium=target/bench-model/medium-d4
[ -f "$medium/sd3_medium.safetensors" ] || "$bin" model synth --preset medium-shaped --depth 4 --seed 0 --output "$medium"
out=target/bench-sensitivity
calib="$out/calib"
[ -f "$calib/manifest.json" ] || "$bin" calibrate --model "$medium" --num-images 1 --num-steps 2 --calib-dir "$calib" --prompt-csv /nonexistent.csv >/dev/null 2>&1
layers='blocks\.(0|3)\.image_transformer_block\.(attn\.q_proj|mlp\.fc1)'
for mode in cached naive; do
  flag=""; [ $mode = naive ] && flag="--no-cache"
  rm -rf "$out/$mode"
  s=$(date +%s%N)
  "$bin" sensitivity --model "$medium" --calib-dir "$calib" --bits 4,8 --layers "$layers" $flag --output-dir "$out/$mode" >/dev/null 2>&1
  e=$(date +%s%N)
  echo "$mode $(( (e - s) / 1000000 ))"
done | python3 -c '
import sys
t = dict(l.split() for l in sys.stdin)
c, n = int(t["cached"]) / 1000, int(t["naive"]) / 1000
print("| sweep (4 layers × 2 bit widths × 2 samples, medium-shaped depth 4, 512²) | seconds |")
print("|---|---|")
print(f"| cached (blocks k.. only) | {c:.1f} |")
print(f"| naive (--no-cache) | {n:.1f} |")
print(f"| speed-up | {n / c:.2f}× |")
'
python3 - "$out" <<'PY'
import csv, sys
rows = lambda m: {(r["name"], r["bits"], r["bucket"]): float(r["mse"]) for r in csv.DictReader(open(f"{sys.argv[1]}/{m}/sensitivity.csv"))}
a, b = rows("cached"), rows("naive")
worst = max(abs(a[k] - b[k]) / max(abs(b[k]), 1e-30) for k in b)
print(f"largest relative difference cached vs naive: {worst:.1e}")
PY
