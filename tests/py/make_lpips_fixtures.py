"""Writes tests/fixtures/lpips/: image pairs and the `lpips` package's distances for them
(LPIPS(net='alex', version='0.1'), PyTorch on the CPU), for tests/metrics_lpips.rs.

    /path/to/torch-venv/bin/python tests/py/make_lpips_fixtures.py tests/fixtures/lpips

Needs torch, torchvision and lpips 0.1.4. The linear heads are the package's own v0.1
`alex.pth` (the same file as tests/fixtures/pth/lpips_v0.1_alex.pth). The AlexNet backbone is
not ImageNet's (it cannot be downloaded here) but deterministic He-uniform weights from an
integer hash that tests/metrics_lpips.rs reproduces bit for bit (`synth_weights`).
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import lpips

# torchvision AlexNet features: (index, in, out, kernel).
CONVS = [(0, 3, 64, 11), (3, 64, 192, 5), (6, 192, 384, 3), (8, 384, 256, 3), (10, 256, 256, 3)]
WIDTH, HEIGHT = 64, 48


def synth(n, stream, scale):
    """`n` float32 values uniform in [-scale, scale): an integer hash of (index, stream)."""
    i = np.arange(n, dtype=np.uint64)
    m = np.uint64(0xFFFFFFFF)
    x = (i * np.uint64(2654435761) + np.uint64(stream) * np.uint64(40503)) & m
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(2246822519)) & m
    x ^= x >> np.uint64(13)
    u = (x >> np.uint64(8)).astype(np.float32) / np.float32(2**23) - np.float32(1)
    return u * np.float32(scale)


def synth_weights():
    out = {}
    for layer, (i, cin, cout, k) in enumerate(CONVS):
        fan_in = cin * k * k
        w = synth(cout * cin * k * k, 2 * layer + 1, np.float32(np.sqrt(6.0 / fan_in)))
        out[f"features.{i}.weight"] = w.reshape(cout, cin, k, k)
        out[f"features.{i}.bias"] = synth(cout, 2 * layer + 2, np.float32(0.05))
    return out


def images(rng):
    """Pairs of test images: noise vs noise, a gradient vs itself with noise, blocks vs shifted
    blocks, and an image against itself (distance 0)."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    grad = np.stack([x * 4, y * 5, (x + y) * 2], -1).clip(0, 255).astype(np.uint8)
    noisy = (grad + rng.normal(0, 12, grad.shape)).clip(0, 255).astype(np.uint8)
    blocks = (((x // 8 + y // 8) % 2) * 200 + 30)[..., None].repeat(3, -1).astype(np.uint8)
    shifted = np.roll(blocks, 3, axis=1)
    n1 = rng.integers(0, 256, grad.shape, dtype=np.uint8)
    n2 = rng.integers(0, 256, grad.shape, dtype=np.uint8)
    return [("noise", n1, n2), ("gradient", grad, noisy), ("blocks", blocks, shifted),
            ("same", grad, grad)]


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    model = lpips.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False).eval()
    feats = [m for m in (model.net.slice1, model.net.slice2, model.net.slice3, model.net.slice4,
                         model.net.slice5) for m in m if isinstance(m, torch.nn.Conv2d)]
    weights = synth_weights()
    with torch.no_grad():
        for conv, (i, *_rest) in zip(feats, CONVS):
            conv.weight.copy_(torch.from_numpy(weights[f"features.{i}.weight"]))
            conv.bias.copy_(torch.from_numpy(weights[f"features.{i}.bias"]))
    expected = {}
    rng = np.random.default_rng(7)
    for name, a, b in images(rng):
        Image.fromarray(a).save(out / f"{name}_a.png")
        Image.fromarray(b).save(out / f"{name}_b.png")
        with torch.no_grad():
            d = model(lpips.im2tensor(a), lpips.im2tensor(b))
        expected[name] = repr(float(d.flatten()[0]))
    with open(out / "expected.json", "w") as f:
        json.dump(expected, f, indent=1)
    print(expected)


if __name__ == "__main__":
    main()
