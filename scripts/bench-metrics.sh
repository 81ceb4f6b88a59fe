#!/usr/bin/env bash
# Image-quality metrics figures for docs/FIGURES.md, side by side in one run, same images:
#   - Inception-v3 feature extraction of 150 images of 512×512: sd3lab on the CPU (its x86 CPU
#     kernels, with OpenBLAS's kernels as the environment sets them and, if OPENBLAS_CORETYPE is
#     set, as sd3lab picks them; and MLX's own operations) against torch-fidelity 0.4.0
#     (PyTorch on the CPU), ROUNDS (default 2) alternating rounds, all with the same synthetic
#     weights (`sd3lab metrics weights --synthetic`, saved as a .pth for torch-fidelity), and
#     their IS from those features (a check that all computed the same thing);
#   - FID between two such sets: sd3lab (faer eigenvalues, f64) against torch-fidelity's
#     fid_statistics_to_metric (numpy eigvals), on the same features.
# Needs the PyTorch environment of scripts/metrics-fixtures.sh (~6 GB; not needed by the tests).
# Usage: scripts/bench-metrics.sh [VENV]   (default VENV: /work/torch-venv, or $TORCH_VENV)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-${TORCH_VENV:-/work/torch-venv}}
[ -x "$venv/bin/python" ] || { echo "no PyTorch environment at $venv: run scripts/metrics-fixtures.sh first" >&2; exit 1; }
bin=target/release/sd3lab
[ -x "$bin" ] || cargo build --release --locked
work=target/bench-metrics
rm -rf "$work"; mkdir -p "$work/a" "$work/b"
"$bin" metrics weights --synthetic "$work/inception.safetensors" >/dev/null
"$venv/bin/python" - "$work" <<'PY'
import json, struct, sys
import numpy as np
import torch
from PIL import Image
work = sys.argv[1]
# The same weights as a .pth for torch-fidelity (safetensors read by hand: F32 tensors).
raw = open(f"{work}/inception.safetensors", "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
header = json.loads(raw[8:8 + n])
sd = {}
for k, v in header.items():
    if k == "__metadata__":
        continue
    a, b = v["data_offsets"]
    arr = np.frombuffer(raw[8 + n + a:8 + n + b], dtype={"F32": np.float32, "I64": np.int64}[v["dtype"]])
    sd[k] = torch.from_numpy(arr.reshape(v["shape"]).copy())
torch.save(sd, f"{work}/inception.pth")
# 2 × 150 smooth random 512×512 images (low-frequency noise upsampled, plus colour).
rs = np.random.RandomState(0)
for folder in "ab":
    for i in range(150):
        small = rs.rand(8, 8, 3) * 255
        img = Image.fromarray(small.astype(np.uint8)).resize((512, 512), Image.BICUBIC)
        img.save(f"{work}/{folder}/{i:03d}.png")
PY
echo "threads: sd3lab = MLX + OpenBLAS on all cores; torch $("$venv/bin/python" -c 'import torch; print(torch.get_num_threads())') threads"
# sd3lab's variants, each a JSON line "label<TAB>json": its CPU kernels with OpenBLAS's kernels
# as this environment sets them; if OPENBLAS_CORETYPE is set, also as sd3lab picks them on a
# user's machine (the variable unset); and MLX's own operations (SD3LAB_CPU_KERNELS=0).
core() { "$@" "$bin" doctor --seconds 0.1 2>/dev/null | sed -n 's/^  kernels *\([^:]*\):.*/\1/p'; }
ours() { # label, env command..., then metrics flags after --
  local label=$1; shift; local envcmd=(); while [ "$1" != -- ]; do envcmd+=("$1"); shift; done; shift
  printf '%s\t%s\n' "$label" "$("${envcmd[@]}" "$bin" metrics --input1 "$work/a" --no-cache \
    --inception-weights "$work/inception.safetensors" --json "$@" | tr -d '\n')"
}
rounds=${ROUNDS:-2}
results=$work/ours.tsv; : > "$results"
for r in $(seq "$rounds"); do
  ours "CPU kernels, OpenBLAS $(core env)" env -- --isc --input2 "$work/b" --fid >> "$results"
  if [ -n "${OPENBLAS_CORETYPE:-}" ]; then
    ours "CPU kernels, OpenBLAS $(core env -u OPENBLAS_CORETYPE) (sd3lab's choice; OPENBLAS_CORETYPE=$OPENBLAS_CORETYPE unset)" \
      env -u OPENBLAS_CORETYPE -- --isc >> "$results"
  fi
  ours "MLX's operations (SD3LAB_CPU_KERNELS=0), OpenBLAS $(core env)" env SD3LAB_CPU_KERNELS=0 -- --isc >> "$results"
  "$venv/bin/python" - "$work" >> "$results" <<'PY'
import json, sys, time
import torch_fidelity
work = sys.argv[1]
t = time.perf_counter()
r = torch_fidelity.calculate_metrics(input1=f"{work}/a", isc=True, cuda=False, cache=False, verbose=False,
                                     feature_extractor_weights_path=f"{work}/inception.pth")
t = time.perf_counter() - t
print("torch-fidelity\t" + json.dumps({"seconds": {"features1": t}, "inception_score_mean": r["inception_score_mean"]}))
PY
done
"$venv/bin/python" - "$results" <<'PY'
import json, sys, time
import numpy as np
from torch_fidelity.metric_fid import fid_statistics_to_metric
rows = [line.rstrip("\n").split("\t", 1) for line in open(sys.argv[1]) if "\t" in line]
print("| 150 images, 512×512, CPU | round | Inception features s | s / image | IS |")
print("|---|---|---|---|---|")
seen, fid = {}, []
for label, js in rows:
    d = json.loads(js)
    seen[label] = seen.get(label, 0) + 1
    t = d["seconds"]["features1"]
    name = "torch-fidelity 0.4.0 (PyTorch)" if label == "torch-fidelity" else f"sd3lab: {label}"
    print(f"| {name} | {seen[label]} | {t:.1f} | {t / 150:.3f} | {d['inception_score_mean']:.6f} |")
    if "fid" in d["seconds"]:
        fid.append(d["seconds"]["fid"])
# FID on 2048-d features of this size: the eigenvalue problem is 2048×2048 either way.
rs = np.random.RandomState(1)
f1 = rs.rand(150, 2048).astype(np.float32); f2 = rs.rand(150, 2048).astype(np.float32)
st = lambda f: {"mu": f.mean(axis=0), "sigma": np.cov(f.astype(np.float64), rowvar=False)}
s1, s2 = st(f1), st(f2)
t = time.perf_counter()
fid_statistics_to_metric(s1, s2, verbose=False)
t_np = time.perf_counter() - t
print()
print("| FID of two 150-image sets (2048×2048 eigenvalues) | seconds |")
print("|---|---|")
print(f"| sd3lab (faer, f64; statistics + eigenvalues) | {' / '.join(f'{x:.2f}' for x in fid)} |")
print(f"| torch-fidelity (numpy eigvals; eigenvalues only) | {t_np:.2f} |")
PY
