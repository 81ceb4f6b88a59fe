"""numpy reads a calibration directory written by `sd3lab calibrate` the way the seed's
Python code does, and prints a JSON summary for tests/calibrate.rs."""
import glob
import json
import os
import sys

import numpy as np

d = sys.argv[1]
m = json.load(open(os.path.join(d, "manifest.json")))
out = {"n_completed": m["n_completed"], "num_steps": m["num_steps"], "files": [], "generation": m.get("generation", {})}
for rel in m["sample_files"]:
    with np.load(os.path.join(d, rel), allow_pickle=False) as z:
        out["files"].append({
            "file": rel,
            "keys": sorted(z.files),
            "x": [list(z["x"].shape), str(z["x"].dtype)],
            "conditioning": [list(z["conditioning"].shape), str(z["conditioning"].dtype)],
            "pooled": [list(z["pooled_conditioning"].shape), str(z["pooled_conditioning"].dtype)],
            "step_index": int(z["step_index"]),
            "timestep": float(z["timestep"]),
            "sigma": float(z["sigma"]),
            "x_sum": float(np.asarray(z["x"], dtype=np.float64).sum()),
        })
out["images"] = sorted(os.path.basename(p) for p in glob.glob(os.path.join(d, "images", "*.png")))
print(json.dumps(out))
