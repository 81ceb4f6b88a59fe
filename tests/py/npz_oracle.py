"""numpy side of the calibration-format interop tests (tests/calib_numpy.rs).

write-variants DIR   numpy writes every layout variant the seed's tools produce
check-rust DIR       numpy loads what the Rust side wrote and checks dtypes and values
Values follow formulas that the Rust test computes too (see `expected` below).
"""
import json
import os
import sys

import numpy as np

DTYPES = ["float16", "float32", "float64", "int32", "int64", "bool", "int8", "uint8"]
SHAPES = [(), (1,), (3,), (2, 3), (2, 3, 4)]


def expected(dtype, shape):
    n = int(np.prod(shape)) if shape else 1
    base = np.arange(n)
    if dtype == "bool":
        v = base % 3 == 0
    elif dtype.startswith("float"):
        v = base * 0.25 - 1.0
    else:
        v = base - 5 if not dtype.startswith("uint") else base + 7
    return v.astype(dtype).reshape(shape)


def record(img, step, num_steps=4, lat=(1, 4, 4, 16)):
    """One calibration record with values tied to (img, step)."""
    x = np.full(lat, img * 100 + step, dtype=np.float32)
    x.flat[0] = -1.5
    t = np.float32(1000.0 - step * 250.0)
    s = np.array([1.0 - step / num_steps], dtype=np.float32)
    cond = np.zeros((2, 154, 64), np.float16)
    cond[0, 0, :] = img + step / 8
    pooled = np.full((2, 32), step, np.float16)
    return x, t, s, cond, pooled, np.int64(step)


def write_set(d, kind, images=2, steps=4):
    os.makedirs(d, exist_ok=True)
    sub = d if kind == "root" else os.path.join(d, "samples")
    os.makedirs(sub, exist_ok=True)
    files = []
    for img in range(images):
        for step in range(steps):
            x, t, s, c, p, k = record(img, step, steps)
            name = f"{img:06d}_{step:03d}.npz"
            path = os.path.join(sub, name)
            if kind == "positional":
                np.savez(path, x, t, s, c, p, k)
            elif kind == "compressed":
                np.savez_compressed(path, x=x, timestep=t, sigma=s, conditioning=c, pooled_conditioning=p, step_index=k)
            elif kind == "latent":
                np.savez(path, latent=x, timestep=t, sigma=s, conditioning=c, pooled_conditioning=p, step_index=k)
            else:
                np.savez(path, x=x, timestep=t, sigma=s, conditioning=c, pooled_conditioning=p, step_index=k)
            files.append(os.path.relpath(path, d))
    if kind == "manifest-files":
        # Listed in an order that differs from the lexical one? No: image-major, as the seed writes.
        json.dump({"n_completed": images, "num_steps": steps, "sample_files": files, "seed_note": {"k": [1, 2]}},
                  open(os.path.join(d, "manifest.json"), "w"))
    elif kind in ("named", "compressed"):
        json.dump({"n_completed": images, "num_steps": steps, "cfg_weight": 7.5},
                  open(os.path.join(d, "manifest.json"), "w"))


def write_variants(root):
    for kind in ["named", "positional", "compressed", "latent", "root", "manifest-files"]:
        write_set(os.path.join(root, kind), kind)
    arrays = {f"{dt}_{'x'.join(map(str, sh)) or 'scalar'}": expected(dt, sh) for dt in DTYPES for sh in SHAPES}
    arrays["float64_fortran"] = np.asfortranarray(expected("float64", (2, 3, 4)))
    arrays["float32_bigendian"] = expected("float32", (2, 3)).astype(">f4")
    arrays["int64_zero_d"] = np.array(42, dtype=np.int64)
    np.savez(os.path.join(root, "dtypes.npz"), **arrays)
    np.savez_compressed(os.path.join(root, "dtypes_compressed.npz"), **arrays)
    np.save(os.path.join(root, "single.npy"), expected("float32", (2, 3, 4)))


def check_rust(root):
    spec = json.load(open(os.path.join(root, "written.json")))
    for fname, members in spec.items():
        with np.load(os.path.join(root, fname), allow_pickle=False) as z:
            assert sorted(z.files) == sorted(members), (fname, z.files, members)
            for name, (dtype, shape) in members.items():
                a = z[name]
                want = expected(dtype if dtype != "bfloat16" else "float32", tuple(shape))
                assert a.dtype == want.dtype, (fname, name, a.dtype, want.dtype)
                assert a.shape == want.shape, (fname, name, a.shape, want.shape)
                assert np.array_equal(a, want), (fname, name, a, want)
    m = json.load(open(os.path.join(root, "calib", "manifest.json")))
    assert m["n_completed"] == 3 and m["num_steps"] == 4, m
    assert m["seed_note"] == {"k": [1, 2]} and m["cfg_weight"] == 7.5, m
    print("numpy: all Rust-written arrays match")


if __name__ == "__main__":
    cmd, root = sys.argv[1], sys.argv[2]
    {"write-variants": write_variants, "check-rust": check_rust}[cmd](root)
