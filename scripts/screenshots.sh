#!/usr/bin/env bash
# The README's screenshots, made by the app's screenshot mode under Xvfb from a tiny-model run:
# a calibration set (3 images x 6 steps, 128 px), a sensitivity sweep, a plan, a reference set and
# a benchmark of fp32, w8, w4 and the plan against it, then one PNG per tab (two for Compare) in
# docs/screenshots/. Usage: scripts/screenshots.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/sd3lab
[ -x "$bin" ] || cargo build --release --locked
work=target/screenshots
rm -rf "$work"; mkdir -p "$work" docs/screenshots
"$bin" calibrate --model tiny --num-images 3 --num-steps 6 --height 128 --width 128 --calib-dir "$work/calibration_data" >/dev/null
"$bin" sensitivity --model tiny --calib-dir "$work/calibration_data" --bits 2,3,4,8 --output-dir "$work/sensitivity" >/dev/null
"$bin" plan --sensitivity "$work/sensitivity/sensitivity.json" --target-bits 5 --output "$work/plan-5bits.json" >/dev/null
"$bin" calibrate --images-only --model tiny --num-images 8 --num-steps 6 --height 128 --width 128 --calib-dir "$work/reference" >/dev/null
"$bin" metrics weights --synthetic "$work/inception-synthetic.safetensors" >/dev/null
"$bin" benchmark --model tiny --config fp32 --config w8 --config w4 --config "$work/plan-5bits.json" \
  --num-images 8 --num-steps 6 --height 128 --width 128 --warmup 0 --reference-dir "$work/reference" \
  --inception-weights "$work/inception-synthetic.safetensors" --output-dir "$work/benchmark_results/tiny" >/dev/null
export XDG_DATA_HOME="$work/xdg"
shot() { # name, tab, extra args...
  local name=$1 tab=$2; shift 2
  xvfb-run -a -s "-screen 0 1280x800x24" "$bin" gui --tab "$tab" --size 1280x800 --screenshot "docs/screenshots/$name.png" "$@"
}
shot generate generate --calib-dir "$work/calibration_data"
shot samples samples --calib-dir "$work/calibration_data"
shot sensitivity sensitivity --sensitivity "$work/sensitivity/sensitivity.json"
shot compare compare --benchmark "$work/benchmark_results/tiny" --compare-view side
shot compare-diff compare --benchmark "$work/benchmark_results/tiny" --compare-view diff
shot compare-grid compare --benchmark "$work/benchmark_results/tiny" --compare-view grid
