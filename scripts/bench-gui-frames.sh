#!/usr/bin/env bash
# UI frame times while jobs run on the MLX worker (the UI thread must never wait on MLX):
#  1. generate: the app under Xvfb starts the Generate tab's default job (tiny model, 4 images x
#     10 steps at 256 px), logs every frame and exits when the job ends;
#  2. compare: the Compare tab runs a benchmark (fp32, w8, w4; 4 images x 10 steps at 256 px,
#     tiny model, metrics skipped) against a reference set, re-reading the folder and showing the
#     images as they land, with the same logging.
# Usage: scripts/bench-gui-frames.sh [generate|compare|all]
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:-all}
bin=$PWD/target/release/sd3lab
[ -x "$bin" ] || cargo build --release --locked
work=$PWD/target/bench-gui
rm -rf "$work"; mkdir -p "$work"
export XDG_DATA_HOME="$work/xdg"
if [ "$which" != compare ]; then
  xvfb-run -a -s "-screen 0 1280x800x24" "$bin" gui --tab generate --no-persist \
    --calib-dir "$work/calibration_data" --start-job --exit-when-idle --frame-stats "$work/frames.csv"
  echo "images written: $(ls "$work/calibration_data/images" | wc -l); per-frame log: $work/frames.csv"
fi
if [ "$which" != generate ]; then
  "$bin" calibrate --images-only --model tiny --num-images 4 --num-steps 10 --cfg-weight 5 \
    --height 256 --width 256 --calib-dir "$work/reference" >/dev/null
  # The Compare tab's run options, as the app saves them (eframe's RON state); every other
  # option keeps its default.
  mkdir -p "$XDG_DATA_HOME/sd3lab"
  cat > "$XDG_DATA_HOME/sd3lab/app.ron" <<RON
{
    "app": "(tab:compare,compare:(output_dir:\"$work/benchmark\",reference_dir:\"$work/reference\",model:\"tiny\",configurations:[\"fp32\",\"w8\",\"w4\"],num_images:4,num_steps:10,cfg_weight:5.0,size:256,skip_metrics:true))",
}
RON
  xvfb-run -a -s "-screen 0 1280x800x24" "$bin" gui --tab compare \
    --start-job --exit-when-idle --frame-stats "$work/frames-compare.csv"
  echo "benchmark images written: $(find "$work/benchmark" -name '*.png' | wc -l); per-frame log: $work/frames-compare.csv"
fi
