#!/usr/bin/env bash
# Indexing benchmark: `sd3lab samples --json` (metadata only) vs a numpy loop that opens each
# file and reads `step_index`, side by side on the same set, alternating, two timed rounds
# after one warm-up round each (three timed rounds).
# Usage: scripts/bench-samples.sh [N=10000] [DIR=target/bench-samples]
# The set has realistic shapes: x (1,64,64,16) f32, conditioning (2,154,4096) f16,
# pooled (2,2048) f16: about 2.8 MB per file, 28 GB for 10,000 files (delete DIR afterwards).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-10000}
dir=${2:-target/bench-samples}
py=.deps/venv/bin/python
bin=target/release/sd3lab
[ -x "$bin" ] || cargo build --release --locked
if [ "$(cat "$dir/.count" 2>/dev/null)" != "$n" ]; then
  echo "writing $n sample files into $dir ..."
  rm -rf "$dir"; mkdir -p "$dir/samples"
  "$py" - "$dir" "$n" <<'PY'
import json, os, sys
import numpy as np
d, n = sys.argv[1], int(sys.argv[2])
steps = 50
rng = np.random.default_rng(0)
x = rng.standard_normal((1, 64, 64, 16)).astype(np.float32)
cond = np.zeros((2, 154, 4096), np.float16)
cond[:, :77, :2048] = rng.standard_normal((2, 77, 2048)).astype(np.float16)
pooled = rng.standard_normal((2, 2048)).astype(np.float16)
files = []
for i in range(n):
    img, step = divmod(i, steps)
    sigma = 3 * (1 - step / steps) / (1 + 2 * (1 - step / steps))
    name = f"samples/{img:06d}_{step:03d}.npz"
    np.savez(os.path.join(d, name), x=x, timestep=np.float32(sigma * 1000), sigma=np.float32(sigma),
             conditioning=cond, pooled_conditioning=pooled, step_index=np.int64(step))
    files.append(name)
json.dump({"n_completed": n // steps, "num_steps": steps}, open(os.path.join(d, "manifest.json"), "w"))
PY
  echo "$n" > "$dir/.count"
fi
numpy_loop() {
  "$py" - "$dir" <<'PY'
import glob, os, sys
import numpy as np
total = 0
for f in sorted(glob.glob(os.path.join(sys.argv[1], "samples", "*.npz"))):
    with np.load(f) as z:
        total += int(z["step_index"])
print(total, file=sys.stderr)
PY
}
seconds() { local s e; s=$(date +%s%N); "$@" >/dev/null 2>&1; e=$(date +%s%N); echo $(( (e - s) / 1000000 )); }
echo "warm-up..."; seconds "$bin" samples --calib-dir "$dir" --json >/dev/null; seconds numpy_loop >/dev/null
echo "files: $n in $dir ($(du -sh "$dir" | cut -f1)), $(nproc) CPUs"
for round in 1 2 3; do
  r=$(seconds "$bin" samples --calib-dir "$dir" --json)
  p=$(seconds numpy_loop)
  python3 -c 'import sys; k, r, p = map(int, sys.argv[1:]); print(f"round {k}: sd3lab samples --json {r/1000:.2f} s | numpy loop {p/1000:.2f} s | speed-up {p/r:.1f}x")' "$round" "$r" "$p"
done
