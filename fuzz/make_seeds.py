"""Writes the seed corpora of the fuzz targets into fuzz/corpus/<target>/ (small valid files,
and a few near-valid ones, so that libFuzzer starts from inputs that reach deep into each parser).

    .deps/venv/bin/python fuzz/make_seeds.py [--sd3lab target/release/sd3lab]

Needs numpy (the project's venv has it). With a built `sd3lab` binary, also a manifest and a
sample `.npz` from a tiny `calibrate` run and a plan from `plan` (the product's own writers);
without it those seeds are skipped. The `.pth` seeds are the small files of tests/fixtures/pth
and what tests/py/make_pth_fixtures.py writes. Rerunning overwrites the seeds (same names).
"""

import argparse
import io
import json
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"


def put(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (d / name).write_bytes(data)


def npy_bytes(a):
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def npy_seeds():
    arrays = {
        "f32_2x3": np.arange(6, dtype="<f4").reshape(2, 3),
        "f16_4": np.array([1.0, -2.0, 0.5, np.inf], dtype="<f2"),
        "bf16_like_u2": np.array([1, 2], dtype="<u2"),
        "i64_be": np.array([1, -2, 3], dtype=">i8"),
        "f64_fortran": np.asfortranarray(np.arange(6, dtype="<f8").reshape(2, 3)),
        "bool_3": np.array([True, False, True]),
        "u8_scalar": np.array(7, dtype="u1"),
        "i32_empty": np.zeros((0, 4), dtype="<i4"),
        "str_u": np.array(["ab"]),
    }
    for name, a in arrays.items():
        put("npy", f"{name}.npy", npy_bytes(a))


def npz_seeds():
    for compressed in (False, True):
        buf = io.BytesIO()
        save = np.savez_compressed if compressed else np.savez
        save(
            buf,
            latent=np.arange(8, dtype="<f4").reshape(1, 2, 2, 2),
            step=np.array(3, dtype="<i8"),
            sigma=np.array(0.5, dtype="<f4"),
        )
        put("npz", f"numpy_{'deflated' if compressed else 'stored'}.npz", buf.getvalue())


def prompts_seeds():
    put("prompts", "header.csv", 'prompt\n"a photo of a cat"\n"a red, round apple"\nplain one\n')
    put("prompts", "bom_two_columns.csv", '\ufeffid,Prompt\n1,"say ""hi"""\n2,a dog\n\n')
    put("prompts", "single_column.csv", "a house on a hill\nan astronaut riding a horse\n")
    builtin = (ROOT / "assets" / "prompts.csv").read_text(encoding="utf-8").splitlines()[:6]
    put("prompts", "builtin_head.csv", "\n".join(builtin) + "\n")


def safetensors_bytes(tensors):
    """tensors: {name: np.ndarray}; written as safetensors (F16/F32 by dtype)."""
    header, blobs, offset = {}, [], 0
    for name, a in tensors.items():
        dt = {"float16": "F16", "float32": "F32"}[str(a.dtype)]
        raw = a.tobytes()
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def safetensors_seeds():
    h, c, p, pooled, ctx, freq = 8, 4, 2, 8, 8, 4
    z = lambda *s: np.zeros(s, dtype="float16")
    m = "model.diffusion_model."
    d = "first_stage_model.decoder."
    tensors = {
        m + "x_embedder.proj.weight": z(h, c, p, p),
        m + "pos_embed": z(1, 16, h),
        m + "joint_blocks.0.x_block.mlp.fc1.weight": z(4 * h, h),
        m + "joint_blocks.1.x_block.mlp.fc1.weight": z(4 * h, h),
        m + "y_embedder.mlp.0.weight": z(h, pooled),
        m + "context_embedder.weight": z(h, ctx),
        m + "t_embedder.mlp.0.weight": z(h, freq),
        d + "conv_in.weight": z(2, c, 3, 3),
        d + "conv_out.weight": z(3, 2, 3, 3),
        d + "up.0.block.0.conv1.weight": z(2, 2, 3, 3),
        d + "up.0.block.0.conv2.weight": z(2, 2, 3, 3),
        d + "up.0.block.1.conv1.weight": z(2, 2, 3, 3),
        d + "up.1.block.0.conv2.weight": z(2, 2, 3, 3),
    }
    put("safetensors_config", "minimal_mmdit_vae.safetensors", safetensors_bytes(tensors))
    put("safetensors_config", "one_f32.safetensors", safetensors_bytes({m + "pos_embed": np.zeros((1, 4, 2), "float32")}))
    put("safetensors_config", "empty.safetensors", safetensors_bytes({}))


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def tokenizer_seeds():
    """vocab.json, a 0xFF byte, merges.txt (the target splits the input there)."""
    symbols = bytes_to_unicode()
    merges = [("a", "t</w>"), ("c", "at</w>"), ("h", "o"), ("ho", "u"), ("d", "o"), ("do", "g</w>")]
    vocab = symbols + [s + "</w>" for s in symbols] + [a + b for a, b in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    ids = {t: i for i, t in enumerate(vocab)}
    merges_text = "#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n"
    put("tokenizer", "synthetic.bin", json.dumps(ids, ensure_ascii=False).encode() + b"\xff" + merges_text.encode())
    small = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a": 2, "a</w>": 3, "t</w>": 4, "at</w>": 5}
    put("tokenizer", "tiny_cat.bin", json.dumps(small).encode() + b"\xff#version: 0.2\na t</w>\n")


def clip_seeds():
    base = {
        "architectures": ["CLIPTextModel"],
        "model_type": "clip_text_model",
        "hidden_size": 32,
        "intermediate_size": 128,
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
        "max_position_embeddings": 77,
        "vocab_size": 49408,
        "hidden_act": "quick_gelu",
        "projection_dim": 32,
        "layer_norm_eps": 1e-5,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "torch_dtype": "float16",
    }
    put("clip_config", "clip_l.json", json.dumps(base, indent=2))
    g = dict(base, architectures=["CLIPTextModelWithProjection"], hidden_size=64, hidden_act="gelu")
    put("clip_config", "clip_g_projection.json", json.dumps(g, indent=2))


def sensitivity_seeds():
    full = json.loads((ROOT / "tests" / "fixtures" / "sensitivity-tiny.json").read_text())
    with_results = [l for l in full["layers"] if l["results"]]
    small = dict(full, layers=with_results[:3])
    small["settings"] = dict(full["settings"], samples=full["settings"]["samples"][:2])
    put("sensitivity", "tiny_three_layers.json", json.dumps(small, indent=1))
    put("sensitivity", "tiny_no_layers.json", json.dumps(dict(small, layers=[])))
    return small


def plan_seeds(sd3lab, sensitivity):
    put("plan", "uniform.json", json.dumps({"schema": "sd3lab.plan/1", "layers": {"joint_blocks.0.x_block.attn.qkv": {"bits": 4, "group_size": 64}}}))
    put("plan", "per_bucket.json", json.dumps({
        "schema": "sd3lab.plan/1",
        "layers": {"a": {"bits": 8, "group_size": 64}},
        "buckets": {"early": {"a": {"bits": 2, "group_size": 32}}, "late": {}},
    }))
    if sd3lab is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "sensitivity.json"
        src.write_text(json.dumps(sensitivity))
        for name, extra in [("built.json", []), ("built_per_bucket.json", ["--per-bucket"])]:
            out = Path(tmp) / name
            r = subprocess.run([sd3lab, "plan", "--sensitivity", str(src), "--target-bits", "5", "--output", str(out), *extra],
                               capture_output=True, text=True)
            if r.returncode == 0:
                put("plan", name, out.read_bytes())
            else:
                print(f"plan {name}: {r.stderr.strip()}", file=sys.stderr)


def calibrate_seeds(sd3lab):
    if sd3lab is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cal"
        r = subprocess.run([sd3lab, "calibrate", "--model", "tiny", "--num-images", "1", "--num-steps", "2",
                            "--height", "64", "--width", "64", "--calib-dir", str(out)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            print(f"calibrate: {r.stderr.strip()[-500:]}", file=sys.stderr)
            return
        put("manifest", "calibrate_tiny.json", (out / "manifest.json").read_bytes())
        samples = sorted(out.rglob("*.npz"))
        if samples:
            # The real member names, dtypes and ranks, each dimension cut to 2 (the 5 MB
            # conditioning would slow every execution), stored as the product stores them.
            with np.load(samples[0]) as sample:
                small = {k: sample[k][tuple(slice(0, 2) for _ in sample[k].shape)] for k in sample.files}
            buf = io.BytesIO()
            np.savez(buf, **small)
            put("npz", "calibrate_sample_cut.npz", buf.getvalue())


def pth_seeds():
    fixtures = ROOT / "tests" / "fixtures" / "pth"
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run([sys.executable, str(ROOT / "tests" / "py" / "make_pth_fixtures.py"), tmp],
                           capture_output=True, text=True)
        if r.returncode != 0:
            print(f"make_pth_fixtures: {r.stderr.strip()[-500:]}", file=sys.stderr)
        files = sorted(Path(tmp).glob("*.pth")) + sorted(fixtures.glob("*.pth"))
        for f in files:
            if f.stat().st_size <= 16384:
                put("pth", f.name, f.read_bytes())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sd3lab", default=str(ROOT / "target" / "release" / "sd3lab"))
    args = ap.parse_args()
    sd3lab = args.sd3lab if Path(args.sd3lab).is_file() else None
    npy_seeds()
    npz_seeds()
    prompts_seeds()
    safetensors_seeds()
    tokenizer_seeds()
    clip_seeds()
    small = sensitivity_seeds()
    plan_seeds(sd3lab, small)
    calibrate_seeds(sd3lab)
    pth_seeds()
    for d in sorted(CORPUS.iterdir()):
        print(d.name, len(list(d.iterdir())))


if __name__ == "__main__":
    main()
