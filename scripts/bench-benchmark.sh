#!/usr/bin/env bash
# `sd3lab benchmark` figures for docs/FIGURES.md (Benchmark), measured side by side in one run:
#   1. Harness overhead: the same tiny-model images (256×256, 20 steps, float32) through one
#      `sd3lab benchmark --config fp32` process and through plain `sd3lab generate` (one process
#      per image, as a user would run it). Prints each image's generation seconds (text encoding +
#      denoising + decoding) both ways, checks the PNGs are identical, and the benchmark's own time
#      around generation (peak resets, PNG, record, summaries) as a share of generation time.
#   2. fp32 vs w8 vs w4 (real quantized path) on the medium-shaped model (SD3-medium widths,
#      depth 2), 256×256, 2 CFG steps, 2 images per configuration (the first is warm-up): seconds
#      per step, peak MLX and RSS memory, MMDiT weight bytes.
# Usage: scripts/bench-benchmark.sh [images=6]   (writes under target/bench-benchmark)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-6}
bin=target/release/sd3lab
[ -x "$bin" ] || cargo build --release --locked
work=target/bench-benchmark
rm -rf "$work"; mkdir -p "$work"
medium=target/bench-model/medium-d2
[ -f "$medium/sd3_medium.safetensors" ] || "$bin" model synth --preset medium-shaped --depth 2 --seed 0 --output "$medium" >/dev/null

echo "== 1. harness overhead: tiny, 256x256, 20 steps, float32, $n images"
"$bin" benchmark --model tiny --config fp32 --num-images "$n" --num-steps 20 --height 256 --width 256 \
  --dtype float32 --skip-metrics --prompt-csv /nonexistent.csv --output-dir "$work/harness" 2>/dev/null | tail -2
python3 - "$work/harness/results.json" > "$work/prompts.tsv" <<'PY'
import json, sys
g = json.load(open(sys.argv[1]))["settings"]["generation"]
for p, s in zip(g["prompts"], g["seeds"]):
    print(f"{s}\t{p}")
PY
i=0
while IFS=$'\t' read -r seed prompt; do
  "$bin" generate --model tiny --prompt "$prompt" --seed "$seed" --num-steps 20 --height 256 --width 256 \
    --dtype float32 --output "$work/generate-$i.png" --json > "$work/generate-$i.json"
  cmp -s "$work/generate-$i.png" "$work/harness/fp32/images/$(printf %06d "$i").png" || { echo "image $i differs"; exit 1; }
  i=$((i + 1))
done < "$work/prompts.tsv"
python3 - "$work" "$n" <<'PY'
import csv, json, sys
work, n = sys.argv[1], int(sys.argv[2])
rows = list(csv.DictReader(open(f"{work}/harness/per_image.csv")))
print("| image | benchmark s | generate s | benchmark / generate |")
print("|---|---|---|---|")
tb = tg = 0.0
for i in range(n):
    s = json.load(open(f"{work}/generate-{i}.json"))["seconds"]
    g = s["text_encoding"] + s["denoising"] + s["decoding"]
    b = float(rows[i]["total_s"])
    warm = " (warm-up)" if rows[i]["warmup"] == "true" else ""
    if not warm:
        tb += b; tg += g
    print(f"| {i}{warm} | {b:.3f} | {g:.3f} | {b / g:.3f} |")
print(f"| timed images | {tb:.3f} | {tg:.3f} | {tb / tg:.3f} |")
print("every benchmark PNG is byte-identical to generate's")
PY

echo
echo "== 2. fp32 vs w8 vs w4: medium-shaped depth 2, 256x256, 2 CFG steps, 2 images each (1 warm-up)"
"$bin" benchmark --model "$medium" --config fp32 --config w8 --config w4 --num-images 2 --num-steps 2 \
  --height 256 --width 256 --dtype float32 --skip-metrics --prompt-csv /nonexistent.csv \
  --output-dir "$work/quant" 2>/dev/null | tail -1
python3 - "$work/quant/results.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print("| configuration | s / step | text encoding s | decoding s | peak MLX GB | peak RSS GB | MMDiT MB | vs fp32 |")
print("|---|---|---|---|---|---|---|---|")
base = None
for c in r["configurations"]:
    l = c["latency"]
    base = base or c["mmdit_weight_bytes"]
    print(f"| {c['name']} | {l['per_step']['mean']:.2f} | {l['text_encoding']['mean']:.2f} | {l['decoding']['mean']:.2f} | "
          f"{c['peak_memory']['mlx_bytes']/1e9:.2f} | {c['peak_memory']['process_rss_bytes']/1e9:.2f} | "
          f"{c['mmdit_weight_bytes']/1e6:.0f} | {c['mmdit_weight_bytes']/base:.2f}× |")
PY
