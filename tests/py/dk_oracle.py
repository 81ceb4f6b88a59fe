"""DiffusionKit (0.5.2, MLX) as the numerical oracle for tests/model_parity.rs.

usage: dk_oracle.py mmdit CHECKPOINT CONFIG.json OUT_DIR
  Builds DiffusionKit's MMDiT for the configuration, loads CHECKPOINT (Stability layout) with
  DiffusionKit's own remapping, runs one forward on deterministic inputs for a CFG batch of 2
  and for a batch of 1, and saves inputs and outputs as .npy files in OUT_DIR.
"""
import dataclasses
import json
import os
import sys

import numpy as np

import dk_stubs

dk_stubs.install()
import mlx.core as mx  # noqa: E402
from diffusionkit.mlx import config as dkc  # noqa: E402
from diffusionkit.mlx.mmdit import MMDiT  # noqa: E402
from diffusionkit.mlx.model_io import mmdit_state_dict_adjustments  # noqa: E402


def mmdit_config(cfg):
    return dataclasses.replace(
        dkc.SD3_2b,
        depth_multimodal=cfg["depth"],
        num_heads=cfg["num_heads"],
        hidden_size_override=cfg["hidden_size"],
        max_latent_resolution=cfg["max_latent_resolution"],
        pooled_text_embed_dim=cfg["pooled_dim"],
        low_memory_mode=False,
    )


def load_mmdit(checkpoint, cfg, dtype=mx.float32):
    model = MMDiT(mmdit_config(cfg))
    weights = mmdit_state_dict_adjustments(mx.load(checkpoint), prefix="model.diffusion_model.")
    weights = {k: v.astype(dtype) for k, v in weights.items()}
    model.load_weights(list(weights.items()))
    return model


def mmdit(checkpoint, config_file, out):
    cfg = json.load(open(config_file))
    rng = np.random.RandomState(0)
    for batch, (lh, lw), t in [(2, (8, 12), 843.75), (1, (6, 6), 21.5)]:
        model = load_mmdit(checkpoint, cfg)
        x = rng.standard_normal((batch, lh, lw, 16)).astype(np.float32)
        ctx = np.zeros((batch, 154, 4096), np.float32)
        ctx[:, :77, :96] = rng.standard_normal((batch, 77, 96)).astype(np.float32)
        pooled = rng.standard_normal((batch, cfg["pooled_dim"])).astype(np.float32)
        timestep = mx.array([t], dtype=mx.float32)
        model.cache_modulation_params(mx.array(pooled), timestep)
        y = model(
            latent_image_embeddings=mx.array(x),
            token_level_text_embeddings=mx.expand_dims(mx.array(ctx), 2),
            timestep=mx.broadcast_to(timestep[0], [batch]),
        )
        tag = f"b{batch}"
        for name, a in [("x", x), ("ctx", ctx), ("pooled", pooled), ("t", np.array(t, np.float32)), ("out", np.array(y))]:
            np.save(os.path.join(out, f"{tag}_{name}.npy"), a)




def clip(model_dir, tokenizer_dir, pad, prompts_file, out):
    """CLIP hidden_states[-2] and pooled output for [prompt, negative] as DiffusionKit's
    encode_text batches them (pad: 'eos' for CLIP-L, 'zero' for CLIP-G)."""
    from diffusionkit.mlx import DiffusionPipeline

    model, tok = _load_clip(model_dir, tokenizer_dir, pad == "eos")
    for i, (prompt, negative) in enumerate(json.load(open(prompts_file))):
        tokens = DiffusionPipeline._tokenize(None, tok, prompt, negative)
        o = model(tokens)
        np.save(os.path.join(out, f"clip{i}_ids.npy"), np.array(tokens).astype(np.int64))
        np.save(os.path.join(out, f"clip{i}_hidden.npy"), np.array(o.hidden_states[-2]))
        np.save(os.path.join(out, f"clip{i}_pooled.npy"), np.array(o.pooled_output))


COMMANDS = {"mmdit": mmdit, "clip": clip}


def load_vae_decoder(checkpoint, cfg, dtype=mx.float32):
    """DiffusionKit's VAE decoder for a configuration, loaded with its own remapping."""
    from diffusionkit.mlx.vae import VAEDecoder
    from diffusionkit.mlx.model_io import vae_decoder_state_dict_adjustments

    model = VAEDecoder(in_channels=cfg["latent_channels"], out_channels=cfg["out_channels"],
                       block_out_channels=cfg["block_out_channels"], layers_per_block=cfg["layers_per_block"],
                       resnet_groups=cfg["norm_groups"])
    weights = vae_decoder_state_dict_adjustments(mx.load(checkpoint), prefix="first_stage_model.decoder.")
    model.load_weights(list({k: v.astype(dtype) for k, v in weights.items()}.items()))
    return model


def vae(checkpoint, config_file, out):
    """DiffusionKit's VAE decoder on a deterministic sampler latent: float image and u8 image."""
    from diffusionkit.mlx import SD3LatentFormat

    model = load_vae_decoder(checkpoint, json.load(open(config_file)))
    latent = np.random.RandomState(5).standard_normal((1, 6, 8, 16)).astype(np.float32)
    z = SD3LatentFormat().process_out(mx.array(latent))
    x = mx.clip(model(z) / 2 + 0.5, 0, 1)
    np.save(os.path.join(out, "vae_latent.npy"), latent)
    np.save(os.path.join(out, "vae_image.npy"), np.array(x))
    np.save(os.path.join(out, "vae_u8.npy"), np.array((x * 255).astype(mx.uint8)))


COMMANDS["vae"] = vae


def vae_encoder(checkpoint, config_file, out):
    """DiffusionKit's VAE encoder, loaded with its own remapping, on a deterministic image in
    [-1, 1]: the image and the encoder's output (mean and log-variance channels)."""
    from diffusionkit.mlx.vae import VAEEncoder
    from diffusionkit.mlx.model_io import vae_encoder_state_dict_adjustments

    cfg = json.load(open(config_file))
    model = VAEEncoder(in_channels=3, out_channels=2 * cfg["latent_channels"],
                       block_out_channels=cfg["block_out_channels"],
                       layers_per_block=cfg["layers_per_block"], resnet_groups=cfg["norm_groups"])
    weights = vae_encoder_state_dict_adjustments(mx.load(checkpoint), prefix="first_stage_model.encoder.")
    model.load_weights(list({k: v.astype(mx.float32) for k, v in weights.items()}.items()))
    image = np.random.RandomState(6).uniform(-1, 1, (2, 44, 20, 3)).astype(np.float32)
    np.save(os.path.join(out, "encoder_image.npy"), image)
    np.save(os.path.join(out, "encoder_moments.npy"), np.array(model(mx.array(image))))


COMMANDS["vae_encoder"] = vae_encoder


def _clip_and_tokenizer(model_dir, name, tok_name, pad_with_eos):
    return _load_clip(os.path.join(model_dir, name), os.path.join(model_dir, tok_name), pad_with_eos)


def _load_clip(d, td, pad_with_eos):
    """A CLIP encoder and its tokenizer, loaded as DiffusionKit's model_io does."""
    from diffusionkit.mlx.clip import CLIPTextModel
    from diffusionkit.mlx.config import CLIPTextModelConfig
    from diffusionkit.mlx.model_io import _load_safetensor_weights, map_clip_text_encoder_weights
    from diffusionkit.mlx.tokenizer import Tokenizer

    config = json.load(open(os.path.join(d, "config.json")))
    with_projection = "WithProjection" in config["architectures"][0]
    model = CLIPTextModel(CLIPTextModelConfig(
        num_layers=config["num_hidden_layers"], model_dims=config["hidden_size"],
        num_heads=config["num_attention_heads"], max_length=config["max_position_embeddings"],
        vocab_size=config["vocab_size"], projection_dim=config["projection_dim"] if with_projection else None,
        hidden_act=config.get("hidden_act", "quick_gelu")))
    _load_safetensor_weights(map_clip_text_encoder_weights, model, os.path.join(d, "model.fp16.safetensors"), False)
    with open(os.path.join(td, "merges.txt"), encoding="utf-8") as f:
        merges = [tuple(m.split()) for m in f.read().strip().split("\n")[1 : 49152 - 256 - 2 + 1]]
    vocab = json.load(open(os.path.join(td, "vocab.json"), encoding="utf-8"))
    return model, Tokenizer(dict(map(reversed, enumerate(merges))), vocab, pad_with_eos=pad_with_eos)


def assemble_pipeline(model_dir, cfg, dtype=mx.float32):
    """DiffusionKit's DiffusionPipeline for a model directory in the published layout, built
    without __init__ (which would download from the hub) from its own loaders and remappings."""
    from diffusionkit.mlx import DiffusionPipeline, SD3LatentFormat
    from diffusionkit.mlx.sampler import ModelSamplingDiscreteFlow

    ckpt = os.path.join(model_dir, "sd3_medium.safetensors")
    pipe = object.__new__(DiffusionPipeline)
    pipe.activation_dtype = dtype
    pipe.use_t5 = False
    pipe.sampler = ModelSamplingDiscreteFlow(shift=3.0)
    pipe.latent_format = SD3LatentFormat()
    pipe.clip_l, pipe.tokenizer_l = _clip_and_tokenizer(model_dir, "clip_l", "tokenizer_l", True)
    pipe.clip_g, pipe.tokenizer_g = _clip_and_tokenizer(model_dir, "clip_g", "tokenizer_g", False)
    pipe.mmdit = load_mmdit(ckpt, cfg["mmdit"], dtype)
    # CFGDenoiser.clear_cache reloads the adaLN weights through pipe.load_mmdit.
    adaln = [(k, v.astype(dtype)) for k, v in mmdit_state_dict_adjustments(mx.load(ckpt), prefix="model.diffusion_model.").items() if "adaLN" in k]
    pipe.load_mmdit = lambda only_modulation_dict=False: adaln
    pipe.decoder = load_vae_decoder(ckpt, cfg["vae"], dtype)
    if dtype != mx.float32:
        pipe.clip_l.set_dtype(dtype)
        pipe.clip_g.set_dtype(dtype)
    return pipe


def generate(model_dir, config_file, settings_file, out):
    """A whole no-T5 generation with DiffusionKit's own pipeline code (encode_text →
    denoise_latents → decode_latents_to_image), assembled from the model directory."""
    s = json.load(open(settings_file))
    pipe = assemble_pipeline(model_dir, json.load(open(config_file)))
    cond, pooled = pipe.encode_text(s["prompt"], s["cfg_weight"], s["negative_prompt"])
    cond, pooled = cond.astype(mx.float32), pooled.astype(mx.float32)
    latent, _ = pipe.denoise_latents(cond, pooled, num_steps=s["num_steps"], cfg_weight=s["cfg_weight"],
                                     latent_size=(s["height"] // 8, s["width"] // 8), seed=s["seed"])
    image = pipe.decode_latents_to_image(latent.astype(mx.float32))
    np.save(os.path.join(out, "gen_cond.npy"), np.array(cond))
    np.save(os.path.join(out, "gen_pooled.npy"), np.array(pooled))
    np.save(os.path.join(out, "gen_latent.npy"), np.array(latent))
    np.save(os.path.join(out, "gen_u8.npy"), np.array((image * 255).astype(mx.uint8)))


COMMANDS["generate"] = generate


if __name__ == "__main__":
    COMMANDS[sys.argv[1]](*sys.argv[2:])
