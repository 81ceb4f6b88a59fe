#!/usr/bin/env bash
# The linearized (gradient-probe) sensitivity sweep against the exact `--scope model` sweep, side
# by side in one run, float32, 128×128 calibration records (CFG pairs):
#   1. medium-shaped synthetic model (SD3-medium widths, depth 4): 3 images × 2 steps; both sweeps
#      on images 0–1 (4 records), every Linear, bits 2,4; linearized with its default probes
#      (16 passes in all). Time ratio, Spearman and top-10 overlap per bit width, and the plan
#      check: a 3-bit-average plan built from each report, its real error measured (`plan
#      --validate`) on the held-out image 2.
#   2. full-depth synthetic SD3-medium (24 blocks): 1 record; exact on the layers of blocks 2, 12
#      and 22 (42 layers: every layer would take hours here), linearized on every layer (16
#      probes); Spearman over the 42 common layers, and the exact sweep's time for every layer
#      extrapolated from its measured rate (layers of blocks 2, 12, 22 average the depth).
#   3. as 2 with 4 records (2 images × 2 steps) and the default probes (4 per record, 16 passes):
#      the exact sweep's cost grows with the records, the linearized one's with the passes.
# Usage: scripts/bench-sensitivity-linearized.sh   (tables on stdout; PARTS="1 2 3" to choose)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/sd3lab
[ -x "$bin" ] || cargo build --release --locked
out=target/bench-linearized
mkdir -p "$out"
rm -f "$out/times"
timed() { # name, args...
  local name=$1; shift
  rm -rf "${out:?}/$name"
  local s e
  s=$(date +%s%N)
  "$bin" "$@" >"$out/$name.log" 2>&1
  e=$(date +%s%N)
  echo "$name $(( (e - s) / 1000000 ))" >>"$out/times"
}
calib() { # model, folder, images, steps
  [ -f "$2/manifest.json" ] || "$bin" calibrate --model "$1" --num-images "$3" --num-steps "$4" \
    --height 128 --width 128 --calib-dir "$2" --prompt-csv /nonexistent.csv >/dev/null 2>&1
}
parts=${PARTS:-1 2 3}
if [[ " $parts " == *" 1 "* ]]; then
  m=target/bench-model/medium-d4
  [ -f "$m/sd3_medium.safetensors" ] || "$bin" model synth --preset medium-shaped --depth 4 --seed 0 --output "$m"
  calib "$m" "$out/calib-d4" 3 2
  common=(sensitivity --model "$m" --calib-dir "$out/calib-d4" --max-images 2 --bits 2,4 --dtype float32)
  timed d4-exact "${common[@]}" --scope model --output-dir "$out/d4-exact"
  timed d4-linearized "${common[@]}" --scope linearized --output-dir "$out/d4-linearized"
  for s in exact linearized; do
    "$bin" plan --sensitivity "$out/d4-$s/sensitivity.json" --target-bits 3 --validate \
      --output "$out/d4-$s/plan-3bits.json" >"$out/d4-$s/plan.log" 2>&1
  done
  "$bin" rank-agreement --json "$out/d4-exact/sensitivity.json" "$out/d4-linearized/sensitivity.json" >"$out/d4-agreement.json"
fi
if [[ " $parts " == *" 2 "* ]]; then
  m=target/bench-model/sd3-medium
  [ -f "$m/sd3_medium.safetensors" ] || "$bin" model synth --preset sd3-medium --seed 0 --output "$m"
  calib "$m" "$out/calib-full" 1 2
  common=(sensitivity --model "$m" --calib-dir "$out/calib-full" --step-stride 2 --bits 2,4 --dtype float32)
  timed full-exact "${common[@]}" --scope model --layers 'blocks\.(2|12|22)\.' --output-dir "$out/full-exact"
  timed full-linearized "${common[@]}" --scope linearized --probes 16 --output-dir "$out/full-linearized"
  "$bin" rank-agreement --json "$out/full-exact/sensitivity.json" "$out/full-linearized/sensitivity.json" >"$out/full-agreement.json"
fi
if [[ " $parts " == *" 3 "* ]]; then
  m=target/bench-model/sd3-medium
  calib "$m" "$out/calib-full4" 2 2
  common=(sensitivity --model "$m" --calib-dir "$out/calib-full4" --bits 2,4 --dtype float32)
  timed full4-exact "${common[@]}" --scope model --layers 'blocks\.(2|12|22)\.' --output-dir "$out/full4-exact"
  timed full4-linearized "${common[@]}" --scope linearized --output-dir "$out/full4-linearized"
  "$bin" rank-agreement --json "$out/full4-exact/sensitivity.json" "$out/full4-linearized/sensitivity.json" >"$out/full4-agreement.json"
fi
python3 - "$out" "$parts" <<'PY'
import json, os, sys
out, parts = sys.argv[1], sys.argv[2].split()
t = {}
for line in open(f"{out}/times"):
    name, ms = line.split()
    t[name] = int(ms) / 1000
def sweep_s(name):  # the sweep alone, after loading (from the CLI's last line)
    for line in open(f"{out}/{name}.log"):
        if " measured in " in line:
            return float(line.split(" measured in ")[1].split(" s ")[0])
def report(name):
    return json.load(open(f"{out}/{name}/sensitivity.json"))
def agreement(name):
    return {a["bits"]: a for a in json.load(open(f"{out}/{name}-agreement.json"))["agreement"]}
cpu = open("/proc/cpuinfo").read().split("model name")[1].split(":")[1].splitlines()[0].strip()
print(f"Machine: {cpu}, {os.cpu_count()} CPUs")
if "1" in parts:
    ex, li = report("d4-exact"), report("d4-linearized")
    n = len([l for l in ex["layers"] if l["results"]])
    probes = li["settings"]["probes"]
    print(f"\n1. medium-shaped depth 4, 128², {len(ex['settings']['samples'])} records, {n} layers × bits 2,4; linearized {probes['per_pass']} probes per record")
    print("\n| sweep | whole command (s) | sweep alone (s) |")
    print("|---|---|---|")
    for s in ("exact", "linearized"):
        print(f"| {s} | {t['d4-' + s]:.1f} | {sweep_s('d4-' + s):.1f} |")
    print(f"| **time ratio** | {t['d4-exact'] / t['d4-linearized']:.1f}× | **{sweep_s('d4-exact') / sweep_s('d4-linearized'):.1f}×** |")
    print("\n| bits | Spearman | top-10 overlap | layers |")
    print("|---|---|---|---|")
    for b, a in sorted(agreement("d4").items()):
        print(f"| {b} | **{a['spearman']:.3f}** | {a['top10_overlap']}/10 | {a['layers']} |")
    print("\n| plan (3 bits average) built from | average bits | measured MSE on held-out image | measured SQNR (dB) |")
    print("|---|---|---|---|")
    mses = {}
    for s in ("exact", "linearized"):
        p = json.load(open(f"{out}/d4-{s}/plan-3bits.json"))
        row = next(r for r in p["validation"]["rows"] if r["bucket"] == "all")
        mses[s] = row["mse"]
        avg = p.get("average_bits", p.get("extra", {}).get("average_bits", "?"))
        print(f"| {s} | {avg if isinstance(avg, str) else f'{avg:.2f}'} | {row['mse']:.4e} | {row['sqnr_db']:.2f} |")
    print(f"\nplan from the linearized report vs from the exact one: real error {100 * (mses['linearized'] / mses['exact'] - 1):+.1f} %")
if "2" in parts:
    ex, li = report("full-exact"), report("full-linearized")
    n_ex = len([l for l in ex["layers"] if l["results"]])
    n_li = len([l for l in li["layers"] if l["results"]])
    rate = sweep_s("full-exact") / n_ex
    print(f"\n2. full-depth synthetic SD3-medium, 128², 1 record, bits 2,4; linearized 16 probes")
    print("\n| sweep | layers | whole command (s) | sweep alone (s) |")
    print("|---|---|---|---|")
    print(f"| exact (blocks 2, 12, 22) | {n_ex} | {t['full-exact']:.1f} | {sweep_s('full-exact'):.1f} |")
    print(f"| exact, every layer (extrapolated: {rate:.1f} s per layer) | {n_li} | | {rate * n_li:.0f} |")
    print(f"| linearized, every layer | {n_li} | {t['full-linearized']:.1f} | {sweep_s('full-linearized'):.1f} |")
    print(f"| **time ratio, every layer** | | | **{rate * n_li / sweep_s('full-linearized'):.1f}×** |")
    print("\n| bits | Spearman (42 common layers) | top-10 overlap |")
    print("|---|---|---|")
    for b, a in sorted(agreement("full").items()):
        print(f"| {b} | **{a['spearman']:.3f}** | {a['top10_overlap']}/10 |")
if "3" in parts:
    ex, li = report("full4-exact"), report("full4-linearized")
    n_ex = len([l for l in ex["layers"] if l["results"]])
    n_li = len([l for l in li["layers"] if l["results"]])
    rate = sweep_s("full4-exact") / n_ex
    k = li["settings"]["probes"]["per_pass"]
    print(f"\n3. full-depth synthetic SD3-medium, 128², {len(li['settings']['samples'])} records, bits 2,4; linearized {k} probes per record (default)")
    print("\n| sweep | layers | whole command (s) | sweep alone (s) |")
    print("|---|---|---|---|")
    print(f"| exact (blocks 2, 12, 22) | {n_ex} | {t['full4-exact']:.1f} | {sweep_s('full4-exact'):.1f} |")
    print(f"| exact, every layer (extrapolated: {rate:.1f} s per layer) | {n_li} | | {rate * n_li:.0f} |")
    print(f"| linearized, every layer | {n_li} | {t['full4-linearized']:.1f} | {sweep_s('full4-linearized'):.1f} |")
    print(f"| **time ratio, every layer** | | | **{rate * n_li / sweep_s('full4-linearized'):.1f}×** |")
    print("\n| bits | Spearman (42 common layers) | top-10 overlap |")
    print("|---|---|---|")
    for b, a in sorted(agreement("full4").items()):
        print(f"| {b} | **{a['spearman']:.3f}** | {a['top10_overlap']}/10 |")
PY
