#!/usr/bin/env bash
# The demo model's training speed: seconds per VAE step and per MMDiT step at the shipped
# settings (VAE batch 8, MMDiT batch 16, 64×64 pictures, float32, MLX CPU), with the training
# command's allocator tuning (freed buffers kept in the heap) and without it
# (SD3LAB_NO_MALLOC_TUNING=1), side by side in one run. Both runs must end with the same bytes
# (the tuning changes no number).
# The timings include each command's start (model initialisation or loading) and last checkpoint;
# the MMDiT phase's latent pool is cut to 64 pictures here (encoding the shipped 16,384 takes
# minutes and is not a per-step cost).
# Linux (GNU date); the allocator tuning is glibc's.
# Usage: scripts/bench-train-demo.sh [STEPS]   (table on stdout; logs in target/bench-train-demo)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/sd3lab
cargo build --release --locked
steps=${1:-20}
out=target/bench-train-demo
rm -rf "$out"
mkdir -p "$out"
ms() { echo $(($(date +%s%N) / 1000000)); }
printf '%-10s %12s %14s\n' allocator "VAE s/step" "MMDiT s/step"
for mode in tuned default; do
  env=()
  [ "$mode" = default ] && env=(SD3LAB_NO_MALLOC_TUNING=1)
  dir="$out/$mode"
  s=$(ms)
  env ${env[@]+"${env[@]}"} "$bin" model train-demo --output "$dir" --vae-steps "$steps" --mmdit-steps 0 \
    --vae-batch 8 --batch 16 --latent-pool 64 >"$out/$mode-vae.log" 2>&1
  m=$(ms)
  env ${env[@]+"${env[@]}"} "$bin" model train-demo --output "$dir" --vae-steps "$steps" --mmdit-steps "$steps" \
    --vae-batch 8 --batch 16 --latent-pool 64 >"$out/$mode-mmdit.log" 2>&1
  e=$(ms)
  awk -v a=$((m - s)) -v b=$((e - m)) -v n="$steps" -v mode="$mode" \
    'BEGIN { printf "%-10s %12.2f %14.2f\n", mode, a / 1000 / n, b / 1000 / n }'
done
cmp "$out/tuned/model/sd3_medium.safetensors" "$out/default/model/sd3_medium.safetensors"
echo "same weights either way; $steps steps per phase (the MMDiT phase includes loading the CLIPs and encoding 64 latents)"
