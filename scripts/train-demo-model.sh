#!/usr/bin/env bash
# Reproduces the built-in demo model (`--model tiny`): trains it with `sd3lab model train-demo`'s
# default settings (seed 0) into target/train-demo-model, prints the wall time and the mean losses,
# and compares the trained checkpoint with the shipped one (assets/demo-model/). With --install
# the trained checkpoint replaces the shipped one (then rebuild: the binary embeds it, and bump
# TINY_VERSION in src/model/source.rs so caches take the new model).
# The same machine and MLX build give the same bytes; another CPU or BLAS may round differently.
# Usage: scripts/train-demo-model.sh [--install]   (about 47 minutes on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/sd3lab
cargo build --release --locked
out=target/train-demo-model
rm -rf "$out"
shipped=assets/demo-model/sd3_medium.safetensors
start=$(date +%s)
"$bin" model train-demo --output "$out"
echo "trained in $(( $(date +%s) - start )) s"
trained="$out/model/sd3_medium.safetensors"
sha256sum "$trained" "$shipped"
if cmp -s "$trained" "$shipped"; then
  echo "the trained checkpoint is the shipped one, byte for byte"
else
  echo "the trained checkpoint differs from the shipped one"
fi
if [ "${1:-}" = --install ]; then
  cp "$trained" "$shipped"
  echo "installed into $shipped"
fi
