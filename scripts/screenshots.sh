#!/usr/bin/env bash
# The README's screenshots, made by the app's screenshot mode under Xvfb from a tiny-model run:
# a calibration set (3 images x 6 steps, 128 px), a sensitivity sweep, then one PNG per tab in
# docs/screenshots/. Usage: scripts/screenshots.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/sd3lab
[ -x "$bin" ] || cargo build --release --locked
work=target/screenshots
rm -rf "$work"; mkdir -p "$work" docs/screenshots
"$bin" calibrate --model tiny --num-images 3 --num-steps 6 --height 128 --width 128 --calib-dir "$work/calibration_data" >/dev/null
"$bin" sensitivity --model tiny --calib-dir "$work/calibration_data" --bits 2,3,4,8 --output-dir "$work/sensitivity" >/dev/null
export XDG_DATA_HOME="$work/xdg"
shot() { # tab, extra args...
  local tab=$1; shift
  xvfb-run -a -s "-screen 0 1280x800x24" "$bin" gui --tab "$tab" --size 1280x800 --screenshot "docs/screenshots/$tab.png" "$@"
}
shot generate --calib-dir "$work/calibration_data"
shot samples --calib-dir "$work/calibration_data"
shot sensitivity --sensitivity "$work/sensitivity/sensitivity.json"
