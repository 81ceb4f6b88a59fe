"""Independent oracle of the sensitivity sweep's metrics: numpy (float64) computes mse, sqnr_db
and cosine per step bucket and over all records from the float and quantized model outputs
that the test dumped (float.npy, quant.npy: one flattened output per record; bucket.npy: 0 =
early, 1 = mid, 2 = late). Prints one JSON object keyed by bucket name."""

import json
import sys

import numpy as np

d = sys.argv[1]
y = np.load(f"{d}/float.npy").astype(np.float64)
q = np.load(f"{d}/quant.npy").astype(np.float64)
b = np.load(f"{d}/bucket.npy")
groups = [(n, b == i) for i, n in enumerate(["early", "mid", "late"])]
groups.append(("all", np.ones(len(b), dtype=bool)))
out = {}
for name, mask in groups:
    if not mask.any():
        continue
    ys, qs = y[mask], q[mask]
    err = float(((ys - qs) ** 2).sum())
    cos = [float(a @ c / (np.linalg.norm(a) * np.linalg.norm(c))) for a, c in zip(ys, qs)]
    out[name] = {
        "mse": err / ys.size,
        "sqnr_db": float(10 * np.log10((ys**2).sum() / err)),
        "cosine": float(np.mean(cos)),
        "n_samples": int(mask.sum()),
    }
print(json.dumps(out))
