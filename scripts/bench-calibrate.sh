#!/usr/bin/env bash
# Capture overhead of `sd3lab calibrate`: per image, seconds spent writing the per-step samples
# vs seconds spent denoising, and `calibrate` vs plain `generate` with the same prompt, seed and
# settings (run alternately), for the tiny and the medium-shaped (depth 4) synthetic models.
# Usage: scripts/bench-calibrate.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/sd3lab
[ -x "$bin" ] || cargo build --release --locked
medium=target/bench-model/medium-d4
[ -f "$medium/sd3_medium.safetensors" ] || "$bin" model synth --preset medium-shaped --depth 4 --seed 0 --output "$medium"
out=target/bench-calibrate
rm -rf "$out"; mkdir -p "$out"
run() { # name model images steps
  local name=$1 model=$2 images=$3 steps=$4
  "$bin" calibrate --model "$model" --num-images "$images" --num-steps "$steps" --calib-dir "$out/$name" --prompt-csv /nonexistent.csv --json > "$out/$name.calibrate.json" 2>/dev/null
  local prompt
  prompt=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["generation"]["prompts"][0])' "$out/$name/manifest.json")
  "$bin" generate --model "$model" --prompt "$prompt" --seed 0 --num-steps "$steps" --output "$out/$name.png" --json > "$out/$name.generate.json"
  python3 - "$out/$name" "$name" "$images" "$steps" <<'PY'
import json, sys
base, name, images, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
c = json.load(open(base + ".calibrate.json"))
g = json.load(open(base + ".generate.json"))
n = c["images_written"]
gen_img = g["seconds"]["text_encoding"] + g["seconds"]["denoising"] + g["seconds"]["decoding"]
print(f"| {name} | {steps} | {n} | {sum(c['image_seconds'])/n:.2f} | {gen_img:.2f} | {c['denoising_seconds']/n:.2f} | {c['capture_seconds']/n:.3f} | {100*c['capture_seconds']/c['denoising_seconds']:.1f} % | {c['bytes_written']/n/1e6:.1f} |")
PY
}
echo "| model | steps | images | calibrate s/img | generate s/img | denoising s/img | capture s/img | capture / denoising | MB/img |"
echo "|---|---|---|---|---|---|---|---|---|"
run tiny tiny 3 8
run medium-d4 "$medium" 1 3
