"""DiffusionKit side of scripts/bench-pipeline.sh: the same work as `sd3lab generate` /
`sd3lab model load`, timed the same way, printed as one JSON line.

usage: dk_bench.py generate MODEL_DIR CONFIG.json PROMPT SEED STEPS SIZE
       dk_bench.py load MODEL_DIR CONFIG.json DTYPE
"""
import gc
import json
import os
import resource
import sys
import time

import dk_oracle
import mlx.core as mx
from mlx.utils import tree_flatten


def _peak_rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _assemble(model_dir, cfg, dtype):
    pipe = dk_oracle.assemble_pipeline(model_dir, cfg, dtype)
    for part in (pipe.clip_l, pipe.clip_g, pipe.mmdit, pipe.decoder):
        mx.eval([a for _, a in tree_flatten(part.parameters())])
    return pipe


def load(model_dir, config_file, dtype):
    cfg = json.load(open(config_file))
    t = time.time()
    pipe = _assemble(model_dir, cfg, getattr(mx, dtype))
    seconds = time.time() - t
    print(json.dumps({"load_seconds": seconds, "peak_rss_bytes": _peak_rss(),
                      "mlx_active_bytes": mx.get_active_memory(), "mlx_peak_bytes": mx.get_peak_memory()}))
    del pipe


def generate(model_dir, config_file, prompt, seed, steps, size):
    cfg = json.load(open(config_file))
    t = time.time()
    pipe = _assemble(model_dir, cfg, mx.float32)
    load_s = time.time() - t
    t = time.time()
    cond, pooled = pipe.encode_text(prompt, 7.5, "")
    mx.eval(cond, pooled)
    # DiffusionKit's generate_image in its default low_memory_mode releases the text encoders
    # here and the MMDiT after denoising (sd3lab generate does the same).
    del pipe.clip_l, pipe.clip_g
    gc.collect()
    text_s = time.time() - t
    t = time.time()
    latent, iter_time = pipe.denoise_latents(cond, pooled, num_steps=int(steps), cfg_weight=7.5,
                                             latent_size=(int(size) // 8, int(size) // 8), seed=int(seed))
    mx.eval(latent)
    del pipe.mmdit
    gc.collect()
    denoise_s = time.time() - t
    t = time.time()
    image = pipe.decode_latents_to_image(latent)
    mx.eval(image)
    decode_s = time.time() - t
    print(json.dumps({"load_seconds": load_s, "text_encoding": text_s, "denoising": denoise_s,
                      "per_step": iter_time, "decoding": decode_s, "peak_rss_bytes": _peak_rss(),
                      "mlx_peak_bytes": mx.get_peak_memory()}))


if __name__ == "__main__":
    {"generate": generate, "load": load}[sys.argv[1]](*sys.argv[2:])
