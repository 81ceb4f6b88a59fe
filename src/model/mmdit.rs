//! The MMDiT (Esser et al. 2024, "Scaling Rectified Flow Transformers"), as DiffusionKit's MLX
//! code computes it: patchified latent + learned position table, token-level text projected by
//! `context_embedder`, 24 joint blocks in which image and text tokens attend jointly (image
//! tokens first), adaLN modulation from `y_embedder(pooled) + t_embedder(t)`, a final adaLN +
//! Linear, and unpatchify. Activations are rank 4, `(batch, tokens, 1, hidden)`, as in DiffusionKit.

use mlx_rs::{Array, Dtype};

use super::config::MmditConfig;
use super::nn::{Conv2d, Linear, MlxResult, cast, gelu, narrow, scalar, silu};
use super::weights::{TensorStore, WeightsError};

/// One stream (image or text) of a joint block.
#[derive(Debug, Clone)]
pub struct StreamBlock {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    /// `None` for the last block's text stream (only its keys and values are used).
    pub post: Option<PostAttention>,
    /// adaLN modulation: SiLU → Linear(hidden, n · hidden).
    pub adaln: Linear,
}

/// The output projection and MLP of a stream.
#[derive(Debug, Clone)]
pub struct PostAttention {
    pub o_proj: Linear,
    pub fc1: Linear,
    pub fc2: Linear,
}

/// A joint (multimodal) transformer block.
#[derive(Debug, Clone)]
pub struct JointBlock {
    pub image: StreamBlock,
    pub text: StreamBlock,
}

/// The whole denoiser.
#[derive(Debug, Clone)]
pub struct Mmdit {
    pub config: MmditConfig,
    pub x_embedder: Conv2d,
    /// `(max², hidden)`.
    pub pos_embed: Array,
    pub y_embedder: [Linear; 2],
    pub t_embedder: [Linear; 2],
    pub context_embedder: Linear,
    pub blocks: Vec<JointBlock>,
    pub final_linear: Linear,
    pub final_adaln: Linear,
}

/// adaLN outputs for one timestep and pooled text batch, per block and stream, as
/// DiffusionKit's `cache_modulation_params` computes them.
#[derive(Debug, Clone)]
pub struct Modulation {
    /// `(image, text)` per block, each `(batch, 1, 1, n · hidden)`.
    pub blocks: Vec<(Array, Array)>,
    pub final_layer: Array,
}

/// What a joint block's post-attention parts start from, per stream (image, text).
#[derive(Debug, Clone)]
pub struct BlockParts {
    pub index: usize,
    /// The block's inputs (the residual stream).
    pub residual: [Array; 2],
    /// Joint attention's output, split back into the streams.
    pub attention: [Array; 2],
    /// The streams' modulation chunks.
    pub chunks: [Vec<Array>; 2],
}

impl BlockParts {
    pub fn eval(&self) -> MlxResult<()> {
        let mut all: Vec<&Array> = self.residual.iter().chain(&self.attention).collect();
        all.extend(self.chunks.iter().flatten());
        mlx_rs::transforms::eval(all)
    }
}

/// Records Linear inputs under `prefix.suffix` names (a no-op without a destination).
pub struct LinearTap<'a> {
    prefix: String,
    inputs: Option<&'a mut Vec<(String, Array)>>,
}

impl<'a> LinearTap<'a> {
    fn new(prefix: String, inputs: Option<&'a mut Vec<(String, Array)>>) -> Self {
        Self { prefix, inputs }
    }

    fn rename(self, prefix: String) -> Self {
        Self {
            prefix,
            inputs: self.inputs,
        }
    }

    fn record(&mut self, suffix: &str, x: &Array) {
        if let Some(v) = self.inputs.as_deref_mut() {
            v.push((format!("{}.{suffix}", self.prefix), x.clone()));
        }
    }
}

impl Modulation {
    /// Evaluates every array (so later steps reuse computed values).
    pub fn eval(&self) -> MlxResult<()> {
        let mut all: Vec<&Array> = self.blocks.iter().flat_map(|(a, b)| [a, b]).collect();
        all.push(&self.final_layer);
        mlx_rs::transforms::eval(all)
    }
}

impl Mmdit {
    /// Drops the joint blocks and the position table (nearly all the weights); the model is
    /// unusable afterwards.
    pub fn release(&mut self) {
        self.blocks = Vec::new();
        self.pos_embed = super::nn::released();
    }

    /// Builds the model from remapped tensors (see `weights::remap_mmdit`), strictly.
    pub fn from_store(config: &MmditConfig, store: &mut TensorStore) -> Result<Self, WeightsError> {
        config.validate().map_err(|reason| WeightsError::Invalid {
            path: store.path().to_owned(),
            reason,
        })?;
        let h = config.hidden_size;
        let (c, p) = (config.latent_channels as i32, config.patch_size as i32);
        let x_embedder = Conv2d {
            weight: store.take("x_embedder.proj.weight", &[h as i32, p, p, c])?,
            bias: Some(store.take("x_embedder.proj.bias", &[h as i32])?),
            stride: p,
            padding: 0,
        };
        let max = config.max_latent_resolution as i32;
        let pos_embed = store.take("x_pos_embedder.pos_embed.weight", &[max * max, h as i32])?;
        let y_embedder = [
            store.linear("y_embedder.mlp.layers.0", h, config.pooled_dim)?,
            store.linear("y_embedder.mlp.layers.2", h, h)?,
        ];
        let t_embedder = [
            store.linear("t_embedder.mlp.layers.0", h, config.frequency_dim)?,
            store.linear("t_embedder.mlp.layers.2", h, h)?,
        ];
        let context_embedder = store.linear("context_embedder", h, config.context_dim)?;
        let mut blocks = Vec::with_capacity(config.depth);
        for i in 0..config.depth {
            let last = i + 1 == config.depth;
            let mut stream = |name: &str, skip_post: bool| -> Result<StreamBlock, WeightsError> {
                let pre = format!("multimodal_transformer_blocks.{i}.{name}");
                let post = if skip_post {
                    None
                } else {
                    Some(PostAttention {
                        o_proj: store.linear(&format!("{pre}.attn.o_proj"), h, h)?,
                        fc1: store.linear(&format!("{pre}.mlp.fc1"), config.mlp_hidden(), h)?,
                        fc2: store.linear(&format!("{pre}.mlp.fc2"), h, config.mlp_hidden())?,
                    })
                };
                Ok(StreamBlock {
                    q_proj: store.linear(&format!("{pre}.attn.q_proj"), h, h)?,
                    k_proj: store.linear_no_bias(&format!("{pre}.attn.k_proj"), h, h)?,
                    v_proj: store.linear(&format!("{pre}.attn.v_proj"), h, h)?,
                    adaln: store.linear(
                        &format!("{pre}.adaLN_modulation.layers.1"),
                        if skip_post { 2 } else { 6 } * h,
                        h,
                    )?,
                    post,
                })
            };
            let image = stream("image_transformer_block", false)?;
            let text = stream("text_transformer_block", last)?;
            blocks.push(JointBlock { image, text });
        }
        let final_linear = store.linear(
            "final_layer.linear",
            config.patch_size * config.patch_size * config.latent_channels,
            h,
        )?;
        let final_adaln = store.linear("final_layer.adaLN_modulation.layers.1", 2 * h, h)?;
        Ok(Self {
            config: config.clone(),
            x_embedder,
            pos_embed,
            y_embedder,
            t_embedder,
            context_embedder,
            blocks,
            final_linear,
            final_adaln,
        })
    }

    /// DiffusionKit's sinusoidal timestep embedding, computed in float16 as it does
    /// (`MMDiTConfig.dtype` is float16 for SD3 whatever the weights' dtype): `(batch, 256)`.
    pub fn timestep_embedding(&self, t: &Array) -> MlxResult<Array> {
        let half = (self.config.frequency_dim / 2) as i32;
        let f16 = Dtype::Float16;
        let idx = mlx_rs::ops::arange::<i32, f32>(0, half, 1)?.as_dtype(f16)?;
        // -log(max_period) is float32 (log of an int32 array); the product promotes to float32.
        let neg_log = Array::from_int(10000)
            .as_dtype(Dtype::Float32)?
            .log()?
            .negative()?;
        let freqs = neg_log
            .multiply(&idx)?
            .divide(Array::from_int(half))?
            .exp()?
            .as_dtype(f16)?;
        let args = t
            .expand_dims(1)?
            .as_dtype(f16)?
            .multiply(freqs.expand_dims(0)?)?;
        mlx_rs::ops::concatenate(&[args.cos()?, args.sin()?], -1)
    }

    /// `y_embedder(pooled)[:, None, None, :] + t_embedder(t)`: the adaLN input, `(B, 1, 1, H)`.
    pub fn conditioning_vector(&self, pooled: &Array, timestep: &Array) -> MlxResult<Array> {
        self.conditioning_vector_tapped(pooled, timestep, None)
    }

    fn conditioning_vector_tapped(
        &self,
        pooled: &Array,
        timestep: &Array,
        inputs: Option<&mut Vec<(String, Array)>>,
    ) -> MlxResult<Array> {
        let batch = pooled.shape()[0];
        let mut tap = LinearTap::new("y_embedder.mlp".into(), inputs);
        tap.record("layers.0", pooled);
        let y0 = silu(&self.y_embedder[0].forward(pooled)?)?;
        tap.record("layers.2", &y0);
        let y = self.y_embedder[1].forward(&y0)?;
        // One timestep for the whole batch, or one per row (batched calibration samples).
        let t = if timestep.size() == 1 {
            mlx_rs::ops::broadcast_to(timestep.reshape(&[1])?, &[batch])?
        } else {
            timestep.reshape(&[batch])?
        };
        let emb = self.timestep_embedding(&t)?.expand_dims_axes(&[1, 2])?;
        let mut tap = tap.rename("t_embedder.mlp".into());
        tap.record("layers.0", &emb);
        let t0 = silu(&self.t_embedder[0].forward(&emb)?)?;
        tap.record("layers.2", &t0);
        let t = self.t_embedder[1].forward(&t0)?;
        y.expand_dims_axes(&[1, 2])?.add(t)
    }

    /// The input of every adaLN Linear: `silu(conditioning_vector)`.
    pub fn adaln_input(&self, pooled: &Array, timestep: &Array) -> MlxResult<Array> {
        silu(&self.conditioning_vector(pooled, timestep)?)
    }

    /// Names of the adaLN Linears (blocks' image and text streams, then the final layer).
    pub fn adaln_names(&self) -> Vec<String> {
        let mut names: Vec<String> = (0..self.blocks.len())
            .flat_map(|i| {
                ["image", "text"].map(|s| {
                    format!(
                        "multimodal_transformer_blocks.{i}.{s}_transformer_block.adaLN_modulation.layers.1"
                    )
                })
            })
            .collect();
        names.push("final_layer.adaLN_modulation.layers.1".into());
        names
    }

    /// Every adaLN output for one timestep (a scalar array in the activation dtype, or one
    /// per batch row).
    pub fn modulation(&self, pooled: &Array, timestep: &Array) -> MlxResult<Modulation> {
        self.modulation_tapped(pooled, timestep, None)
    }

    /// [`Mmdit::modulation`], recording the inputs of the embedders' and adaLN Linears.
    pub fn modulation_tapped(
        &self,
        pooled: &Array,
        timestep: &Array,
        mut inputs: Option<&mut Vec<(String, Array)>>,
    ) -> MlxResult<Modulation> {
        let cond =
            silu(&self.conditioning_vector_tapped(pooled, timestep, inputs.as_deref_mut())?)?;
        if let Some(v) = inputs {
            v.extend(self.adaln_names().into_iter().map(|n| (n, cond.clone())));
        }
        let blocks = self
            .blocks
            .iter()
            .map(|b| Ok((b.image.adaln.forward(&cond)?, b.text.adaln.forward(&cond)?)))
            .collect::<MlxResult<Vec<_>>>()?;
        Ok(Modulation {
            blocks,
            final_layer: self.final_adaln.forward(&cond)?,
        })
    }

    /// `LN(x)·(1 + scale) + shift`; for a batch of one DiffusionKit fuses it into
    /// `layer_norm(x, 1 + scale, shift)`, and so does this.
    fn modulate(&self, x: &Array, shift: &Array, scale: &Array) -> MlxResult<Array> {
        let eps = self.config.layer_norm_eps;
        let one_plus = scalar(1.0).add(scale)?;
        if x.shape()[0] == 1 {
            mlx_rs::fast::layer_norm(x, &one_plus.squeeze()?, &shift.squeeze()?, eps)
        } else {
            mlx_rs::fast::layer_norm(x, None, None, eps)?
                .multiply(&one_plus)?
                .add(shift)
        }
    }

    /// Runs one stream up to q, k, v; returns them and the modulation chunks.
    fn pre_attention(
        &self,
        s: &StreamBlock,
        x: &Array,
        m: &Array,
        tap: &mut LinearTap,
    ) -> MlxResult<([Array; 3], Vec<Array>)> {
        let n = if s.post.is_some() { 6 } else { 2 };
        let chunks = m.split_equal(n, -1)?;
        let h = self.modulate(x, &chunks[0], &chunks[1])?;
        for name in ["attn.q_proj", "attn.k_proj", "attn.v_proj"] {
            tap.record(name, &h);
        }
        Ok((
            [
                s.q_proj.forward(&h)?,
                s.k_proj.forward(&h)?,
                s.v_proj.forward(&h)?,
            ],
            chunks,
        ))
    }

    fn post_attention(
        &self,
        post: &PostAttention,
        residual: &Array,
        attn: &Array,
        chunks: &[Array],
        tap: &mut LinearTap,
    ) -> MlxResult<Array> {
        tap.record("attn.o_proj", attn);
        let residual = residual.add(post.o_proj.forward(attn)?.multiply(&chunks[2])?)?;
        let h = self.modulate(&residual, &chunks[3], &chunks[4])?;
        tap.record("mlp.fc1", &h);
        let hidden = gelu(&post.fc1.forward(&h)?)?;
        tap.record("mlp.fc2", &hidden);
        let mlp = post.fc2.forward(&hidden)?;
        residual.add(chunks[5].multiply(&mlp)?)
    }

    /// One joint block. `text` is `None` after the last block.
    pub fn joint_block(
        &self,
        index: usize,
        img: &Array,
        txt: &Array,
        m: &Modulation,
    ) -> MlxResult<(Array, Option<Array>)> {
        self.joint_block_parts(index, img, txt, m, None)
            .map(|(out, _)| out)
    }

    /// [`Mmdit::joint_block`], recording the input of each of the block's Linears (by full
    /// layer name) into `inputs` when given, and also returning what the post-attention parts
    /// start from (to re-run one stream's post-attention alone, see
    /// [`Mmdit::stream_post_attention`]).
    pub fn joint_block_parts(
        &self,
        index: usize,
        img: &Array,
        txt: &Array,
        m: &Modulation,
        inputs: Option<&mut Vec<(String, Array)>>,
    ) -> MlxResult<((Array, Option<Array>), BlockParts)> {
        let block = &self.blocks[index];
        let (mi, mt) = &m.blocks[index];
        let prefix = format!("multimodal_transformer_blocks.{index}");
        let mut tap_i = LinearTap::new(format!("{prefix}.image_transformer_block"), inputs);
        let (qkv_i, chunks_i) = self.pre_attention(&block.image, img, mi, &mut tap_i)?;
        let mut tap_t = tap_i.rename(format!("{prefix}.text_transformer_block"));
        let (qkv_t, chunks_t) = self.pre_attention(&block.text, txt, mt, &mut tap_t)?;
        let mut tap_i = tap_t.rename(format!("{prefix}.image_transformer_block"));
        let batch = img.shape()[0];
        let (heads, dh, hidden) = (
            self.config.num_heads as i32,
            self.config.head_dim() as i32,
            self.config.hidden_size as i32,
        );
        let joint = |a: &Array, b: &Array| -> MlxResult<Array> {
            mlx_rs::ops::concatenate(&[a, b], 1)?
                .reshape(&[batch, -1, heads, dh])?
                .transpose_axes(&[0, 2, 1, 3])
        };
        let q = joint(&qkv_i[0], &qkv_t[0])?;
        let k = joint(&qkv_i[1], &qkv_t[1])?;
        let v = joint(&qkv_i[2], &qkv_t[2])?;
        let scale = (1.0 / (dh as f64).sqrt()) as f32;
        let out = super::nn::attention(&q, &k, &v, scale)?
            .transpose_axes(&[0, 2, 1, 3])?
            .reshape(&[batch, -1, 1, hidden])?;
        let (s_img, s_txt) = (img.shape()[1], txt.shape()[1]);
        let attn_img = narrow(&out, 1, 0, s_img)?;
        let attn_txt = narrow(&out, 1, s_img, s_txt)?;
        let post_i = block
            .image
            .post
            .as_ref()
            .expect("image streams always have post-attention layers");
        let img_out = self.post_attention(post_i, img, &attn_img, &chunks_i, &mut tap_i)?;
        let mut tap_t = tap_i.rename(format!("{prefix}.text_transformer_block"));
        let txt_out = match &block.text.post {
            Some(post_t) => {
                Some(self.post_attention(post_t, txt, &attn_txt, &chunks_t, &mut tap_t)?)
            }
            None => None,
        };
        let parts = BlockParts {
            index,
            residual: [img.clone(), txt.clone()],
            attention: [attn_img, attn_txt],
            chunks: [chunks_i, chunks_t],
        };
        Ok(((img_out, txt_out), parts))
    }

    /// One stream's post-attention part of block `parts.index` (output projection, MLP and
    /// residuals) with the current weights, from the state `parts` saved: the same numbers as
    /// that stream's output of the whole block when only post-attention weights changed.
    pub fn stream_post_attention(
        &self,
        parts: &BlockParts,
        image: bool,
    ) -> MlxResult<Option<Array>> {
        let block = &self.blocks[parts.index];
        let (stream, i) = if image {
            (&block.image, 0)
        } else {
            (&block.text, 1)
        };
        let Some(post) = &stream.post else {
            return Ok(None);
        };
        let mut tap = LinearTap::new(String::new(), None);
        self.post_attention(
            post,
            &parts.residual[i],
            &parts.attention[i],
            &parts.chunks[i],
            &mut tap,
        )
        .map(Some)
    }

    /// Patch embedding plus the centre-cropped position table: `(B, tokens, 1, H)`.
    pub fn embed_image(&self, x: &Array) -> MlxResult<Array> {
        let shape = x.shape();
        let (batch, h, w) = (shape[0], shape[1], shape[2]);
        let p = self.config.patch_size as i32;
        let (gh, gw) = (h / p, w / p);
        let max = self.config.max_latent_resolution as i32;
        let hidden = self.config.hidden_size as i32;
        let table = self.pos_embed.reshape(&[1, max, max, hidden])?;
        let (y0, x0) = ((max - gh) / 2, (max - gw) / 2);
        let pos = narrow(&narrow(&table, 1, y0, gh)?, 2, x0, gw)?;
        let emb = self.x_embedder.forward(x)?.add(&pos)?;
        emb.reshape(&[batch, -1, 1, hidden])
    }

    /// Projects the token-level text conditioning `(B, T, 4096)` to `(B, T, 1, H)`.
    pub fn embed_text(&self, context: &Array) -> MlxResult<Array> {
        self.context_embedder.forward(&context.expand_dims(2)?)
    }

    /// Final adaLN + Linear and unpatchify: `(B, h, w, C)`.
    /// The input of `final_layer.linear`: the last block's image output, modulated.
    pub fn final_linear_input(&self, img: &Array, m: &Modulation) -> MlxResult<Array> {
        let chunks = m.final_layer.split_equal(2, -1)?;
        self.modulate(img, &chunks[0], &chunks[1])
    }

    pub fn final_layer(
        &self,
        img: &Array,
        m: &Modulation,
        latent_hw: (i32, i32),
    ) -> MlxResult<Array> {
        let out = self
            .final_linear
            .forward(&self.final_linear_input(img, m)?)?;
        let (p, c) = (
            self.config.patch_size as i32,
            self.config.latent_channels as i32,
        );
        let (lh, lw) = latent_hw;
        let batch = out.shape()[0];
        out.reshape(&[batch, lh / p, lw / p, p, p, c])?
            .transpose_axes(&[0, 5, 1, 3, 2, 4])?
            .reshape(&[batch, c, lh, lw])?
            .transpose_axes(&[0, 2, 3, 1])
    }

    /// The denoiser: latent `(B, h, w, 16)`, text `(B, T, 4096)`, modulation for this timestep.
    pub fn forward(&self, x: &Array, context: &Array, m: &Modulation) -> MlxResult<Array> {
        let (lh, lw) = (x.shape()[1], x.shape()[2]);
        self.forward_from(
            0,
            self.embed_image(x)?,
            self.embed_text(context)?,
            m,
            (lh, lw),
            None,
        )
    }

    /// Runs joint blocks `start..` and the final layer from block `start`'s inputs. When
    /// `record` is given, it receives every block's inputs `(image, text)` (for caching).
    pub fn forward_from(
        &self,
        start: usize,
        mut img: Array,
        mut txt: Array,
        m: &Modulation,
        latent_hw: (i32, i32),
        mut record: Option<&mut Vec<(Array, Array)>>,
    ) -> MlxResult<Array> {
        for i in start..self.blocks.len() {
            if let Some(r) = record.as_deref_mut() {
                r.push((img.clone(), txt.clone()));
            }
            let (new_img, new_txt) = self.joint_block(i, &img, &txt, m)?;
            img = new_img;
            if let Some(t) = new_txt {
                txt = t;
            }
        }
        if let Some(r) = record {
            r.push((img.clone(), txt.clone()));
        }
        self.final_layer(&img, m, latent_hw)
    }

    /// The dtype the weights were loaded in (the activation dtype).
    pub fn dtype(&self) -> Dtype {
        self.context_embedder.weight.dtype()
    }

    /// Casts to the activation dtype where needed.
    pub fn to_activation(&self, x: &Array) -> MlxResult<Array> {
        cast(x, self.dtype())
    }
}

/// Loads the MMDiT from a checkpoint in Stability's layout (`sd3_medium.safetensors`),
/// remapped as DiffusionKit does, in `dtype`. Tensors of other models in the same file (the
/// VAE) are ignored; any unexpected MMDiT tensor is an error.
pub fn load_mmdit(
    path: &std::path::Path,
    config: &MmditConfig,
    dtype: Dtype,
) -> Result<Mmdit, WeightsError> {
    mmdit_from_tensors(
        path,
        &super::weights::load_safetensors(path)?,
        config,
        dtype,
    )
}

/// Builds the MMDiT from a checkpoint's already loaded (lazy) tensors.
pub fn mmdit_from_tensors(
    path: &std::path::Path,
    raw: &std::collections::HashMap<String, Array>,
    config: &MmditConfig,
    dtype: Dtype,
) -> Result<Mmdit, WeightsError> {
    let remapped = super::weights::remap_mmdit(raw).map_err(|source| WeightsError::Mlx {
        key: "attn.qkv split".into(),
        source,
    })?;
    let mut store = TensorStore::new(path, remapped, dtype);
    let model = Mmdit::from_store(config, &mut store)?;
    store.finish()?;
    Ok(model)
}

impl Mmdit {
    /// Every parameter array.
    pub fn arrays(&self) -> Vec<&Array> {
        let mut v = self.x_embedder.arrays();
        v.push(&self.pos_embed);
        for l in self.y_embedder.iter().chain(&self.t_embedder).chain([
            &self.context_embedder,
            &self.final_linear,
            &self.final_adaln,
        ]) {
            v.extend(l.arrays());
        }
        for b in &self.blocks {
            for s in [&b.image, &b.text] {
                for l in [&s.q_proj, &s.k_proj, &s.v_proj, &s.adaln] {
                    v.extend(l.arrays());
                }
                if let Some(p) = &s.post {
                    for l in [&p.o_proj, &p.fc1, &p.fc2] {
                        v.extend(l.arrays());
                    }
                }
            }
        }
        v
    }
}

impl Mmdit {
    /// Every Linear with its DiffusionKit name, in the order of `registry::mmdit_linear_layers`.
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut v: Vec<(String, &mut Linear)> = Vec::new();
        let [y0, y2] = &mut self.y_embedder;
        v.push(("y_embedder.mlp.layers.0".into(), y0));
        v.push(("y_embedder.mlp.layers.2".into(), y2));
        let [t0, t2] = &mut self.t_embedder;
        v.push(("t_embedder.mlp.layers.0".into(), t0));
        v.push(("t_embedder.mlp.layers.2".into(), t2));
        v.push(("context_embedder".into(), &mut self.context_embedder));
        for (i, b) in self.blocks.iter_mut().enumerate() {
            for (stream, s) in [
                ("image_transformer_block", &mut b.image),
                ("text_transformer_block", &mut b.text),
            ] {
                let p = format!("multimodal_transformer_blocks.{i}.{stream}");
                v.push((format!("{p}.attn.q_proj"), &mut s.q_proj));
                v.push((format!("{p}.attn.k_proj"), &mut s.k_proj));
                v.push((format!("{p}.attn.v_proj"), &mut s.v_proj));
                if let Some(post) = &mut s.post {
                    v.push((format!("{p}.attn.o_proj"), &mut post.o_proj));
                    v.push((format!("{p}.mlp.fc1"), &mut post.fc1));
                    v.push((format!("{p}.mlp.fc2"), &mut post.fc2));
                }
                v.push((format!("{p}.adaLN_modulation.layers.1"), &mut s.adaln));
            }
        }
        v.push(("final_layer.linear".into(), &mut self.final_linear));
        v.push((
            "final_layer.adaLN_modulation.layers.1".into(),
            &mut self.final_adaln,
        ));
        v
    }

    /// Bytes held by the parameters.
    pub fn weight_bytes(&self) -> usize {
        self.arrays().iter().map(|a| a.nbytes()).sum()
    }
}
