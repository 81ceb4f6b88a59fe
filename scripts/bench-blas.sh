#!/usr/bin/env bash
# f32 GEMM through MLX with the wheel's reference BLAS vs with Debian's OpenBLAS (as `sd3lab`
# ships), side by side in one run. Builds a second binary without OpenBLAS into
# target/reference-blas (a few minutes the first time). Usage: scripts/bench-blas.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-3}
SD3LAB_NO_OPENBLAS=1 cargo build --release --locked --target-dir target/reference-blas --bin sd3lab >/dev/null
for round in 1 2; do
  for variant in reference openblas; do
    if [ $variant = reference ]; then bin=target/reference-blas/release/sd3lab; else bin=target/release/sd3lab; fi
    line=$(env -u OPENBLAS_CORETYPE "$bin" doctor --seconds "$secs" | grep -E "^(CPU BLAS|  kernels|f32 GEMM)" | tr -s ' ' | paste -sd ';' -)
    echo "round $round $variant: $line"
  done
done
