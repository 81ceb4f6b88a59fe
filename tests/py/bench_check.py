"""Reads a benchmark folder as Python tooling would (json, csv, PIL) and checks that the two
summaries agree: every configuration's image count, warmup rows, mean total latency over the
timed rows (per_image.csv rounds to microseconds), peak memory, and that each listed PNG exists
at the generated size. Prints `ok <rows> rows, <configs> configurations`."""

import csv
import json
import os
import sys

from PIL import Image

d = sys.argv[1]
with open(os.path.join(d, "results.json")) as f:
    results = json.load(f)
assert results["schema"] == "sd3lab.benchmark/1", results["schema"]
with open(os.path.join(d, "per_image.csv"), newline="") as f:
    rows = list(csv.DictReader(f))
gen = results["settings"]["generation"]
size = (gen["width"], gen["height"])
for c in results["configurations"]:
    mine = [r for r in rows if r["configuration"] == c["name"]]
    assert len(mine) == c["images"], (c["name"], len(mine), c["images"])
    timed = [r for r in mine if r["warmup"] == "false"]
    assert len(timed) == c["timed_images"]
    warm = sorted(int(r["index"]) for r in mine if r["warmup"] == "true")
    assert warm == list(range(results["settings"]["warmup"])), warm
    mean_total = sum(float(r["total_s"]) for r in timed) / len(timed)
    assert abs(mean_total - c["latency"]["total"]["mean"]) < 1e-5, (mean_total, c["latency"])
    peak = max(int(r["peak_mlx_bytes"]) for r in mine)
    assert peak == c["peak_memory"]["mlx_bytes"], (peak, c["peak_memory"])
    assert c["mmdit_weight_bytes"] > 0
    for r in mine:
        assert int(r["seed"]) == gen["seeds"][int(r["index"])]
        assert r["prompt"] == gen["prompts"][int(r["index"])]
        with Image.open(os.path.join(d, r["file"])) as im:
            assert im.size == size, (r["file"], im.size)
names = [c["name"] for c in results["configurations"]]
sizes = {c["name"]: c["mmdit_weight_bytes"] for c in results["configurations"]}
if "w4g64" in sizes and "fp32" in sizes:
    # Packed 4-bit weights plus scales; the float parts (norms, biases, embeddings) remain.
    assert sizes["w4g64"] < sizes["fp32"] / 2, sizes
print(f"ok {len(rows)} rows, {len(names)} configurations")
