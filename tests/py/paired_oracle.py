"""scikit-image's PSNR and SSIM on image pairs a test wrote as uint8 H×W×3 .npy files, with
the arguments sd3lab's paired metrics reproduce.

Usage: paired_oracle.py DIR, where DIR/jobs.json is a list of {"a": "x.npy", "b": "y.npy"}.
Prints one JSON list of {"psnr": float or "inf", "ssim": float} or {"ssim_error": message}
when skimage refuses the pair for SSIM (the PSNR is still given)."""
import json
import math
import os
import sys
import warnings

import numpy as np
import skimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

assert skimage.__version__ == "0.26.0", skimage.__version__

d = sys.argv[1]
with open(os.path.join(d, "jobs.json")) as f:
    jobs = json.load(f)
out = []
for job in jobs:
    a = np.load(os.path.join(d, job["a"]))
    b = np.load(os.path.join(d, job["b"]))
    assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3, (a.dtype, a.shape)
    with warnings.catch_warnings():
        # identical images: skimage divides by a zero MSE and returns inf
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(peak_signal_noise_ratio(a, b, data_range=255))
    r = {"psnr": "inf" if math.isinf(p) else p}
    try:
        r["ssim"] = float(structural_similarity(
            a, b, channel_axis=2, gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False, data_range=255))
    except ValueError as e:
        r["ssim_error"] = str(e)
    out.append(r)
print(json.dumps(out))
