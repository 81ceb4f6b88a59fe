#!/usr/bin/env bash
# The README's screenshots, made by the app's screenshot mode under Xvfb from a run of the demo
# model (`tiny`) at its own settings (64 px, 28 steps, CFG 4, the demo captions): a calibration
# set (3 images), a sensitivity sweep, a plan, a reference set and a benchmark of fp32, w8, w4,
# w2 and the plan against it, then one PNG per tab (three for Compare) in docs/screenshots/, and
# the README's grid of demo pictures (scripts/demo-grid.py). Usage: scripts/screenshots.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/sd3lab
[ -x "$bin" ] || cargo build --release --locked
work=target/screenshots
rm -rf "$work"; mkdir -p "$work" docs/screenshots
demo=(--height 64 --width 64 --num-steps 28)
"$bin" calibrate --model tiny --num-images 3 "${demo[@]}" --cfg-weight 4 --calib-dir "$work/calibration_data" >/dev/null
"$bin" sensitivity --model tiny --calib-dir "$work/calibration_data" --bits 2,3,4,8 --output-dir "$work/sensitivity" >/dev/null
"$bin" plan --sensitivity "$work/sensitivity/sensitivity.json" --target-bits 5 --output "$work/plan-5bits.json" >/dev/null
"$bin" calibrate --images-only --model tiny --num-images 8 "${demo[@]}" --cfg-weight 4 --calib-dir "$work/reference" >/dev/null
"$bin" metrics weights --synthetic "$work/inception-synthetic.safetensors" >/dev/null
"$bin" benchmark --model tiny --config fp32 --config w8 --config w4 --config w2 --config "$work/plan-5bits.json" \
  --num-images 8 "${demo[@]}" --cfg-scale 4 --warmup 0 --reference-dir "$work/reference" \
  --inception-weights "$work/inception-synthetic.safetensors" --output-dir "$work/benchmark_results/tiny" >/dev/null
"$bin" model judge "$work/benchmark_results/tiny"
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
# The grid: held-out captions, their drawings and the demo model's pictures per configuration.
"$bin" model shapes --held-out --count 6 --seed 3 --output "$work/grid-eval" >/dev/null
"$bin" benchmark --model tiny --config fp32 --config w8 --config w4 --config w2 --num-images 6 "${demo[@]}" \
  --cfg-scale 4 --warmup 0 --skip-metrics --prompt-csv "$work/grid-eval/prompts.csv" \
  --output-dir "$work/grid-bench" >/dev/null
"$bin" model judge "$work/grid-bench"
.deps/venv/bin/python scripts/demo-grid.py "$work/grid-eval" "$work/grid-bench" docs/screenshots/demo-grid.png
