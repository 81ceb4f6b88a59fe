"""Regenerates the torch-fidelity fixtures under tests/fixtures/metrics/ (run it through
scripts/metrics-fixtures.sh, which makes the PyTorch environment it needs).

What it writes, and why:
- images/a/, images/b/: two small deterministic PNG folders (64x64 with a few RGBA, grey and
  paletted images, an upper-case extension, a non-image file and a subfolder that the listing
  must skip; 80x48 RGB/RGBA in b, which exercises the resize on both axes).
- inception_bn_stats.npz: the BatchNorm running statistics of the synthetic Inception weights.
  Every other weight is drawn from numpy's legacy RandomState(SEED) in state-dict order (below),
  which sd3lab's `metrics::inception::synthetic_weights` reproduces bit for bit; the running
  statistics cannot be drawn (features would collapse or explode), so torch computes them here
  from varied synthetic images (train mode, cumulative average), as training would.
- features_{a,b}.npy, logits_{a,b}.npy: torch-fidelity 0.4.0's `2048` and `logits_unbiased`
  per image, in its listing order.
- resize.npz: torch-fidelity's interpolate_bilinear_2d_like_tensorflow1x on integer-formula
  sources (the Rust test rebuilds the same sources).
- fidelity.json: seed, parameters, listing order, per-tensor sums of the weights, and FID, IS
  (both folders) and KID as torch-fidelity computes them on a and b.

Usage: python fidelity_fixtures.py OUT_DIR
"""

import json
import os
import shutil
import sys
import tempfile

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

import torch_fidelity
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
from torch_fidelity.utils import extract_featuresdict_from_input_id, glob_samples_paths

SEED = 20240611
# Must match sd3lab's metrics::inception::{SYNTHETIC_FC_STD, SYNTHETIC_BETA_STD}.
FC_STD = 0.1
BETA_STD = 0.05
ISC_SPLITS = 4
KID_SUBSETS = 50
KID_SUBSET_SIZE = 16
EXTRACTOR = "inception-v3-compat"


def synthetic_state_dict(template):
    """Weights drawn from RandomState(SEED) in the order of `template` (the extractor's own
    state dict): He convs, gamma 0.5+U[0,1), beta N(0, BETA_STD^2), fc weight N(0, FC_STD^2),
    fc bias N(0, BETA_STD^2); float64 draws rounded to float32. Running statistics stay at
    (0, 1) until calibrated."""
    rs = np.random.RandomState(SEED)
    out = {}
    for key, t in template.items():
        shape = tuple(t.shape)
        n = int(np.prod(shape)) if shape else 1
        if key.endswith("conv.weight"):
            fan_in = shape[1] * shape[2] * shape[3]
            v = rs.randn(n) * np.sqrt(2.0 / fan_in)
        elif key.endswith("bn.weight"):
            v = 0.5 + rs.rand(n)
        elif key.endswith("bn.bias") or key == "fc.bias":
            v = rs.randn(n) * BETA_STD
        elif key == "fc.weight":
            v = rs.randn(n) * FC_STD
        elif key.endswith("running_mean"):
            v = np.zeros(n)
        elif key.endswith("running_var"):
            v = np.ones(n)
        elif key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(0, dtype=torch.long)
            continue
        else:
            raise SystemExit(f"unexpected key {key}")
        out[key] = torch.from_numpy(v.astype(np.float32).reshape(shape))
    return out


def calibration_batches(rs, batches=4, per=16, size=128):
    """Varied uint8 images: flat colours, ramps, blocks, noise, mixtures."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    for _ in range(batches):
        imgs = []
        for i in range(per):
            kind = i % 5
            c0, c1 = rs.rand(3) * 255, rs.rand(3) * 255
            if kind == 0:
                img = np.ones((size, size, 3)) * c0
            elif kind == 1:
                t = (xx if rs.rand() < 0.5 else yy)[..., None]
                img = c0 * (1 - t) + c1 * t
            elif kind == 2:
                k = rs.randint(2, 9)
                cells = rs.rand(k, k, 3) * 255
                img = np.kron(cells, np.ones((size // k + 1, size // k + 1, 1)))[:size, :size]
            elif kind == 3:
                img = rs.rand(size, size, 3) * 255
            else:
                img = c0 * xx[..., None] + rs.randn(size, size, 3) * 40 + c1 * 0.3
            imgs.append(np.clip(img, 0, 255).astype(np.uint8))
        yield torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()


def calibrate(fe, rs):
    for m in fe.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    fe.train()
    with torch.no_grad():
        for batch in calibration_batches(rs):
            fe(batch)
    fe.eval()


def make_image(rs, h, w, style):
    yy, xx = np.mgrid[0:h, 0:w]
    c0, c1 = rs.rand(3) * 255, rs.rand(3) * 255
    t = (xx / (w - 1))[..., None] if style == "a" else (yy / (h - 1))[..., None]
    img = c0 * (1 - t) + c1 * t
    for _ in range(rs.randint(1, 5)):
        y0, x0 = rs.randint(0, h - 4), rs.randint(0, w - 4)
        y1, x1 = y0 + rs.randint(3, h // 2), x0 + rs.randint(3, w // 2)
        img[y0:y1, x0:x1] = rs.rand(3) * 255
    img += rs.randn(h, w, 3) * (rs.rand() * (25 if style == "a" else 45))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_images(root):
    rs = np.random.RandomState(SEED + 1)
    a = os.path.join(root, "images", "a")
    b = os.path.join(root, "images", "b")
    for d in (a, b):
        os.makedirs(d, exist_ok=True)
    for i in range(24):
        rgb = make_image(rs, 64, 64, "a")
        name = f"img_{i:02d}.png"
        if i == 3:
            Image.fromarray(np.dstack([rgb, rs.randint(0, 256, (64, 64)).astype(np.uint8)]), "RGBA").save(
                os.path.join(a, name)
            )
        elif i == 5:
            Image.fromarray(rgb.mean(axis=2).astype(np.uint8), "L").save(os.path.join(a, name))
        elif i == 7:
            Image.fromarray(rgb).quantize(colors=16).save(os.path.join(a, name))
        elif i == 11:
            # Upper-case extension: torch-fidelity lower-cases extensions, and "Z" sorts
            # before "i" in byte order.
            Image.fromarray(rgb).save(os.path.join(a, "Z_upper.PNG"), format="PNG")
        else:
            Image.fromarray(rgb).save(os.path.join(a, name))
    # What the listing must skip: another extension, a subfolder's image.
    with open(os.path.join(a, "notes.txt"), "w") as f:
        f.write("not an image\n")
    os.makedirs(os.path.join(a, "nested"), exist_ok=True)
    Image.fromarray(make_image(rs, 64, 64, "a")).save(os.path.join(a, "nested", "deep.png"))
    for i in range(24):
        rgb = make_image(rs, 48, 80, "b")
        if i % 6 == 1:
            img = Image.fromarray(np.dstack([rgb, np.full((48, 80), 200, np.uint8)]), "RGBA")
        else:
            img = Image.fromarray(rgb)
        img.save(os.path.join(b, f"b{i:02d}.png"))
    return a, b


def resize_source(h, w):
    """Must match `resize_source` in tests/metrics_inception.rs."""
    y, x, c = np.mgrid[0:h, 0:w, 0:3].astype(np.int64)
    return ((x * x * 3 + y * 5 + c * 101 + x * y * 7) % 256).astype(np.uint8)


RESIZE_CASES = [(5, 7, 11, 13), (37, 53, 29, 31), (48, 80, 299, 299), (512, 512, 299, 299), (299, 299, 299, 299)]
RESIZE_STEP = 5  # 299-sized outputs are kept every 5th row and column


def write_resize(out):
    arrays = {}
    for h, w, oh, ow in RESIZE_CASES:
        src = torch.from_numpy(resize_source(h, w)).permute(2, 0, 1)[None].float()
        y = interpolate_bilinear_2d_like_tensorflow1x(src, size=(oh, ow), align_corners=False)
        y = y[0].permute(1, 2, 0).numpy().astype(np.float32)
        if oh == 299:
            y = y[::RESIZE_STEP, ::RESIZE_STEP]
        arrays[f"{h}x{w}_to_{oh}x{ow}"] = np.ascontiguousarray(y)
    np.savez(os.path.join(out, "resize.npz"), **arrays)


def extractor_template():
    """The extractor's state dict (keys, order, shapes) without weights: construction loads a
    weights file, so loading is stubbed out for this one instance."""
    import torch_fidelity.feature_extractor_inceptionv3 as fem

    load, load_sd = fem.torch.load, FeatureExtractorInceptionV3.load_state_dict
    fem.torch.load = lambda *a, **k: {}
    FeatureExtractorInceptionV3.load_state_dict = lambda self, *a, **k: None
    try:
        fe = FeatureExtractorInceptionV3(EXTRACTOR, ["2048", "logits_unbiased"], feature_extractor_weights_path="-")
    finally:
        fem.torch.load, FeatureExtractorInceptionV3.load_state_dict = load, load_sd
    return fe


def listing(d):
    return [os.path.basename(p) for p in glob_samples_paths(d, False, "png,jpg,jpeg", verbose=False)]


def main():
    out = sys.argv[1]
    torch.set_num_threads(os.cpu_count() or 1)
    shutil.rmtree(os.path.join(out, "images"), ignore_errors=True)
    os.makedirs(out, exist_ok=True)
    dir_a, dir_b = write_images(out)
    write_resize(out)

    fe = extractor_template()
    fe.load_state_dict(synthetic_state_dict(fe.state_dict()))
    calibrate(fe, np.random.RandomState(SEED + 2))
    sd = {k: v.detach().clone() for k, v in fe.state_dict().items()}
    assert len(sd) == 566, len(sd)
    stats = {k: v.numpy().astype(np.float32) for k, v in sd.items() if "running_" in k}
    np.savez_compressed(os.path.join(out, "inception_bn_stats.npz"), **stats)

    tmp = tempfile.mkdtemp(prefix="fidelity-fixtures-")
    try:
        pth = os.path.join(tmp, "synthetic-inception.pth")
        torch.save(sd, pth)
        common = dict(
            cuda=False,
            feature_extractor=EXTRACTOR,
            feature_extractor_weights_path=pth,
            save_cpu_ram=True,
            cache=False,
            verbose=False,
        )
        fe2 = torch_fidelity.utils.create_feature_extractor(EXTRACTOR, ["2048", "logits_unbiased"], **common)
        for name, d in (("a", dir_a), ("b", dir_b)):
            fd = extract_featuresdict_from_input_id(1, fe2, input1=d, **common)
            np.save(os.path.join(out, f"features_{name}.npy"), fd["2048"].numpy().astype(np.float32))
            np.save(os.path.join(out, f"logits_{name}.npy"), fd["logits_unbiased"].numpy().astype(np.float32))
        metrics = torch_fidelity.calculate_metrics(
            input1=dir_a,
            input2=dir_b,
            fid=True,
            isc=True,
            kid=True,
            isc_splits=ISC_SPLITS,
            kid_subsets=KID_SUBSETS,
            kid_subset_size=KID_SUBSET_SIZE,
            **common,
        )
        isc_b = torch_fidelity.calculate_metrics(input1=dir_b, isc=True, isc_splits=ISC_SPLITS, **common)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    info = {
        "generator": "tests/py/fidelity_fixtures.py (scripts/metrics-fixtures.sh)",
        "torch": torch.__version__,
        "torch_fidelity": torch_fidelity.__version__,
        "seed": SEED,
        "fc_std": FC_STD,
        "beta_std": BETA_STD,
        "feature_extractor": EXTRACTOR,
        "listing": {"a": listing(dir_a), "b": listing(dir_b)},
        "params": {"isc_splits": ISC_SPLITS, "kid_subsets": KID_SUBSETS, "kid_subset_size": KID_SUBSET_SIZE},
        "metrics_a_vs_b": {k: float(v) for k, v in metrics.items()},
        "isc_b": {k: float(v) for k, v in isc_b.items()},
        "resize_step": RESIZE_STEP,
        "resize_cases": [list(c) for c in RESIZE_CASES],
        "tensor_sums": {
            k: float(v.double().sum()) for k, v in sd.items() if not k.endswith("num_batches_tracked")
        },
    }
    with open(os.path.join(out, "fidelity.json"), "w") as f:
        json.dump(info, f, indent=1)
        f.write("\n")
    print(json.dumps({"metrics_a_vs_b": info["metrics_a_vs_b"], "isc_b": info["isc_b"]}, indent=1))


if __name__ == "__main__":
    main()
