#!/usr/bin/env bash
# Two local ranks (`sd3lab launch --local 2`) against one process, side by side in one run, on
# the medium-shaped synthetic model (SD3-medium widths, depth 4), float32, 128×128:
#   1. sensitivity sweep, exact model scope, every Linear (60), bits 2,4, 4 records (2 images ×
#      2 steps); the merged file must equal the single process's byte for byte;
#   2. benchmark, fp32 and w4, 4 images × 4 steps, no metrics; the PNGs must be equal;
#   3. the coordination itself: `sd3lab ring-check` (barrier, progress sum, gather of 4 KB per
#      rank), i.e. what a rank adds per item (one sum per sweep stage or image round, one
#      gather at the end).
# This machine has 2 cores: each rank's MLX/OpenBLAS already uses both, so 2 ranks can only
# share them (expect about 1×); the figures measure the overhead, not a cluster's speed-up.
# Usage: scripts/bench-distributed.sh   (tables on stdout; full logs in target/bench-distributed)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/sd3lab
[ -x "$bin" ] || cargo build --release --locked
out=target/bench-distributed
mkdir -p "$out"
rm -f "$out/times"
timed() { # name, args...
  local name=$1; shift
  local s e
  s=$(date +%s%N)
  "$bin" "$@" >"$out/$name.log" 2>&1
  e=$(date +%s%N)
  echo "$name $(( (e - s) / 1000000 ))" >>"$out/times"
}
m=target/bench-model/medium-d4
[ -f "$m/sd3_medium.safetensors" ] || "$bin" model synth --preset medium-shaped --depth 4 --seed 0 --output "$m" >/dev/null
calib="$out/calib-d4"
[ -f "$calib/manifest.json" ] || "$bin" calibrate --model "$m" --num-images 2 --num-steps 2 \
  --height 128 --width 128 --calib-dir "$calib" --prompt-csv /nonexistent.csv >/dev/null 2>&1

rm -rf "$out"/sens-* "$out"/bench-*
sens=(sensitivity --model "$m" --calib-dir "$calib" --bits 2,4 --dtype float32)
timed sens-1 "${sens[@]}" --output-dir "$out/sens-1"
timed sens-2 launch --local 2 --log-dir "$out/logs-sens" -- sd3lab "${sens[@]}" --output-dir "$out/sens-2"
cmp "$out/sens-1/sensitivity.json" "$out/sens-2/sensitivity.json"
cmp "$out/sens-1/sensitivity.csv" "$out/sens-2/sensitivity.csv"

bench=(benchmark --model "$m" --dtype float32 --height 128 --width 128 --num-images 4 --num-steps 4
  --config fp32 --config w4 --skip-metrics --prompt-csv /nonexistent.csv)
timed bench-1 "${bench[@]}" --output-dir "$out/bench-1"
timed bench-2 launch --local 2 --log-dir "$out/logs-bench" -- sd3lab "${bench[@]}" --output-dir "$out/bench-2"
for f in $(cd "$out/bench-1" && find . -name '*.png' | sort); do cmp "$out/bench-1/$f" "$out/bench-2/$f"; done

"$bin" launch --local 2 --log-dir "$out/logs-ring" -- sd3lab ring-check --rounds 500 >"$out/ring.log" 2>&1

python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
t = {}
for line in open(f"{out}/times"):
    name, ms = line.split()
    t[name] = int(ms) / 1000
print("| job | 1 process (s) | 2 local ranks (s) | speed-up |")
print("|---|---|---|---|")
print(f"| sensitivity, 60 layers × bits 2,4 × 4 records (files byte-identical) | {t['sens-1']:.1f} | {t['sens-2']:.1f} | {t['sens-1'] / t['sens-2']:.2f}× |")
print(f"| benchmark, fp32 + w4 × 4 images × 4 steps (PNGs identical) | {t['bench-1']:.1f} | {t['bench-2']:.1f} | {t['bench-1'] / t['bench-2']:.2f}× |")
def per_rank(log):  # the ranks' own work: "N layers measured in S s" / images
    return [l.strip() for l in open(log) if " measured in " in l or "images generated in" in l]
for r in (0, 1):
    for l in per_rank(f"{out}/logs-sens/rank-{r}.log"):
        print(f"  sensitivity rank {r}: {l}")
print()
print("collectives between 2 local ranks (mean of 500, after a warm-up):")
for l in open(f"{out}/ring.log"):
    if " ms" in l:
        print("  " + l.rstrip())
layers = len(json.load(open(f"{out}/sens-1/sensitivity.json"))["layers"])
print(f"sensitivity: {layers} layers; one progress sum per stage (depth 4 + 2 = 6) and one gather per run")
PY
