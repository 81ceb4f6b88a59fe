#!/usr/bin/env bash
# UI frame times while a calibration job runs on the MLX worker (the UI thread must never wait
# on MLX): the app under Xvfb starts the Generate tab's default job (tiny model, 4 images x 10
# steps at 256 px), logs every frame and exits when the job ends. Usage: scripts/bench-gui-frames.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/sd3lab
[ -x "$bin" ] || cargo build --release --locked
work=target/bench-gui
rm -rf "$work"; mkdir -p "$work"
export XDG_DATA_HOME="$work/xdg"
xvfb-run -a -s "-screen 0 1280x800x24" "$bin" gui --tab generate --no-persist \
  --calib-dir "$work/calibration_data" --start-job --exit-when-idle --frame-stats "$work/frames.csv"
echo "images written: $(ls "$work/calibration_data/images" | wc -l); per-frame log: $work/frames.csv"
