#!/usr/bin/env bash
# SD3 pipeline benchmark, sd3lab vs DiffusionKit (0.5.2, same MLX 0.32.2 CPU build, same
# Debian OpenBLAS library *and the same kernels*: DiffusionKit's process gets the library through
# LD_PRELOAD and the core type sd3lab runs with through OPENBLAS_CORETYPE, since sd3lab switches
# itself to faster kernels where OpenBLAS misdetects the CPU; both are printed), side by side,
# alternating, on the same synthetic checkpoint, each as its one-shot command runs (text encoders
# released after encoding, the MMDiT after denoising: DiffusionKit's default low_memory_mode):
#   1. medium-shaped (SD3-medium widths, depth 4), 512×512, float32, 2 steps of CFG:
#      load, text encoding, seconds per denoising step, decode, peak memory;
#   2. the full-size sd3-medium synthetic checkpoint (4.3 GB + CLIPs), float16: load time and memory.
# Usage: scripts/bench-pipeline.sh [rounds=2]   (needs ~9 GB of disk under target/bench-model)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
bin=target/release/sd3lab
py=.deps/venv/bin/python
openblas=$(ls /usr/lib/x86_64-linux-gnu/libopenblas.so.0 2>/dev/null || true)
[ -x "$bin" ] || cargo build --release --locked
medium=target/bench-model/medium-d4
full=target/bench-model/sd3-medium
[ -f "$medium/sd3_medium.safetensors" ] || "$bin" model synth --preset medium-shaped --depth 4 --seed 0 --output "$medium"
prompt="a lighthouse on a cliff at dusk"
# The kernels sd3lab ends up with (after its own CPU check) are the ones DiffusionKit gets too.
core=$("$bin" doctor --json --seconds 0.1 --gemm-size 128 | python3 -c 'import json,sys; print(json.load(sys.stdin)["blas"].get("openblas_core") or "")')
dk_env=(LD_PRELOAD="$openblas")
[ -n "$core" ] && dk_env+=(OPENBLAS_CORETYPE="$core")
dk_core=$(env "${dk_env[@]}" "$py" -c 'import ctypes; l=ctypes.CDLL("libopenblas.so.0"); l.openblas_get_corename.restype=ctypes.c_char_p; print(l.openblas_get_corename().decode())' 2>/dev/null || echo unknown)
echo "OpenBLAS kernels: sd3lab ${core:-unknown}, DiffusionKit $dk_core"
"$bin" model load --model "$medium" --dtype float32 --json | python3 -c 'import json,sys; json.dump(json.load(sys.stdin)["config"], open("target/bench-model/medium.json","w"))'
for r in $(seq 1 "$rounds"); do
  "$bin" generate --model "$medium" --prompt "$prompt" --seed 0 --num-steps 2 --dtype float32 --output target/bench-model/ours.png --json > "target/bench-model/ours-$r.json"
  (cd tests/py && env "${dk_env[@]}" "../../$py" dk_bench.py generate "../../$medium" ../../target/bench-model/medium.json "$prompt" 0 2 512) > "target/bench-model/dk-$r.json"
done
python3 - "$rounds" <<'PY'
import json, sys
n = int(sys.argv[1])
print("medium-shaped depth 4, 512x512, float32, 2 CFG steps (seconds; memory in GB)")
print("| run | load | text encoding | s/step | decode | peak MLX | peak RSS |")
print("|---|---|---|---|---|---|---|")
for r in range(1, n + 1):
    o = json.load(open(f"target/bench-model/ours-{r}.json"))
    d = json.load(open(f"target/bench-model/dk-{r}.json"))
    s = o["seconds"]
    print(f"| sd3lab #{r} | {s['load']:.2f} | {s['text_encoding']:.2f} | {s['denoising']/len(s['per_step']):.2f} | {s['decoding']:.1f} | {o['peak_memory_bytes']['mlx']/1e9:.2f} | {o['peak_memory_bytes']['process_rss']/1e9:.2f} |")
    print(f"| DiffusionKit #{r} | {d['load_seconds']:.2f} | {d['text_encoding']:.2f} | {d['denoising']/2:.2f} | {d['decoding']:.1f} | {d['mlx_peak_bytes']/1e9:.2f} | {d['peak_rss_bytes']/1e9:.2f} |")
PY
[ -f "$full/sd3_medium.safetensors" ] || "$bin" model synth --preset sd3-medium --seed 0 --output "$full"
"$bin" model load --model "$full" --dtype float16 --json | python3 -c 'import json,sys; json.dump(json.load(sys.stdin)["config"], open("target/bench-model/full.json","w"))'
echo
echo "full-size sd3-medium synthetic checkpoint, float16 (files: $(du -sh "$full" | cut -f1))"
echo "| run | load s | peak RSS GB | MLX active GB |"
echo "|---|---|---|---|"
for r in $(seq 1 "$rounds"); do
  "$bin" model load --model "$full" --dtype float16 --json | python3 -c "import json,sys; d=json.load(sys.stdin); print(f\"| sd3lab #$r | {d['load_seconds']:.2f} | {d['peak_rss_bytes']/1e9:.2f} | {d['mlx_active_bytes']/1e9:.2f} |\")"
  (cd tests/py && env "${dk_env[@]}" "../../$py" dk_bench.py load "../../$full" ../../target/bench-model/full.json float16) | python3 -c "import json,sys; d=json.load(sys.stdin); print(f\"| DiffusionKit #$r | {d['load_seconds']:.2f} | {d['peak_rss_bytes']/1e9:.2f} | {d['mlx_active_bytes']/1e9:.2f} |\")"
done
