"""torch-fidelity 0.4.0's own FID / IS / KID functions on feature matrices that a test wrote
as .npy files (see fidelity_stubs.py for how they run without PyTorch).

Usage: fidelity_oracle.py DIR, where DIR/jobs.json is a list of jobs:
  {"metric": "fid", "a": "x.npy", "b": "y.npy"}
  {"metric": "isc", "logits": "l.npy", "splits": 10}
  {"metric": "kid", "a": "x.npy", "b": "y.npy", "subsets": 100, "subset_size": 1000}
  {"metric": "subsets", "n1": 150, "n2": 120, "m": 100, "count": 3}: the index lists that
      kid_features_to_metric draws, in its order (rng.choice(n1, m) then rng.choice(n2, m),
      count times, from RandomState(2020)), as one list of 2·count index lists
Prints one JSON list with torch-fidelity's result dict per job (floats printed with repr
precision)."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402

import fidelity_stubs  # noqa: E402

metric_fid, metric_isc, metric_kid = fidelity_stubs.load()
T = fidelity_stubs.Tensor

d = sys.argv[1]
with open(os.path.join(d, "jobs.json")) as f:
    jobs = json.load(f)


def feats(name):
    a = np.load(os.path.join(d, name))
    assert a.dtype == np.float32 and a.ndim == 2, (name, a.dtype, a.shape)
    return T(a)


out = []
for job in jobs:
    m = job["metric"]
    if m == "fid":
        s1 = metric_fid.fid_features_to_statistics(feats(job["a"]))
        s2 = metric_fid.fid_features_to_statistics(feats(job["b"]))
        out.append(metric_fid.fid_statistics_to_metric(s1, s2, verbose=False))
    elif m == "isc":
        out.append(metric_isc.isc_features_to_metric(feats(job["logits"]), splits=job["splits"]))
    elif m == "kid":
        out.append(metric_kid.kid_features_to_metric(
            feats(job["a"]), feats(job["b"]),
            kid_subsets=job["subsets"], kid_subset_size=job["subset_size"], verbose=False))
    elif m == "subsets":
        # the index draws of kid_features_to_metric, in its call order
        rng = np.random.RandomState(2020)
        draws = []
        for _ in range(job["count"]):
            draws.append(rng.choice(job["n1"], job["m"], replace=False).tolist())
            draws.append(rng.choice(job["n2"], job["m"], replace=False).tolist())
        out.append(draws)
    else:
        raise SystemExit(f"unknown metric {m!r}")
print(json.dumps(out))
