//! The MMDiT (Esser et al. 2024, "Scaling Rectified Flow Transformers"), as DiffusionKit's MLX
//! code computes it: patchified latent + learned position table, token-level text projected by
//! `context_embedder`, 24 joint blocks in which image and text tokens attend jointly (image
//! tokens first), adaLN modulation from `y_embedder(pooled) + t_embedder(t)`, a final adaLN +
//! Linear, and unpatchify. Activations are rank 4, `(batch, tokens, 1, hidden)`, as in DiffusionKit.

use mlx_rs::{Array, Dtype};

use super::config::MmditConfig;
use super::nn::{Conv2d, Linear, MlxResult, gelu, narrow, scalar, silu};
use super::registry::{LayerId, LayerKind, Stream, mmdit_linear_layer};
use super::weights::{TensorStore, WeightsError};

/// One stream (image or text) of a joint block.
#[derive(Debug, Clone)]
pub struct StreamBlock {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    /// `None` for the last block's text stream (only its keys and values are used).
    pub post: Option<PostAttentionLayers>,
    /// adaLN modulation: SiLU → Linear(hidden, n · hidden).
    pub adaln: Linear,
}

/// The output projection and MLP of a stream.
#[derive(Debug, Clone)]
pub struct PostAttentionLayers {
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

impl JointBlock {
    pub fn stream(&self, stream: Stream) -> &StreamBlock {
        match stream {
            Stream::Image => &self.image,
            Stream::Text => &self.text,
        }
    }
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

/// The conditioning path for one batch: `y_embedder(pooled) + t_embedder(t)` and the
/// intermediate values its Linears read.
#[derive(Debug, Clone)]
pub struct Conditioning {
    /// The timestep's sinusoidal features, `(B, 1, 1, 256)` (input of `t_embedder`'s first
    /// Linear; `y_embedder`'s first reads the pooled text itself).
    pub timestep_features: Array,
    /// `silu(y_embedder.layers.0(pooled))`, input of `y_embedder`'s second Linear.
    pub pooled_hidden: Array,
    /// `silu(t_embedder.layers.0(features))`, input of `t_embedder`'s second Linear.
    pub timestep_hidden: Array,
    /// `y_embedder(pooled)[:, None, None, :] + t_embedder(t)`: `(B, 1, 1, H)`.
    pub vector: Array,
}

impl Conditioning {
    /// `silu(vector)`: the input of every adaLN Linear.
    pub fn adaln_input(&self) -> MlxResult<Array> {
        silu(&self.vector)
    }
}

/// adaLN outputs for one timestep and pooled text batch, per block and stream, as
/// DiffusionKit's `cache_modulation_params` computes them.
#[derive(Debug, Clone)]
pub struct Modulation {
    /// `(image, text)` per block, each `(batch, 1, 1, n · hidden)`.
    pub blocks: Vec<(Array, Array)>,
    pub final_layer: Array,
}

impl Modulation {
    /// Evaluates every array (so later steps reuse computed values).
    pub fn eval(&self) -> MlxResult<()> {
        let mut all: Vec<&Array> = self.blocks.iter().flat_map(|(a, b)| [a, b]).collect();
        all.push(&self.final_layer);
        mlx_rs::transforms::eval(all)
    }

    /// One stream's adaLN output for `block`.
    pub fn stream(&self, block: usize, stream: Stream) -> &Array {
        let (image, text) = &self.blocks[block];
        match stream {
            Stream::Image => image,
            Stream::Text => text,
        }
    }
}

/// One stream's part of a joint block before joint attention.
#[derive(Debug, Clone)]
pub struct PreAttention {
    /// The modulated stream: the input of q, k and v.
    pub modulated: Array,
    pub q: Array,
    pub k: Array,
    pub v: Array,
    /// The stream's modulation chunks: shift, scale (and, with a post-attention part, gate,
    /// shift, scale, gate for the output projection and MLP).
    pub chunks: Vec<Array>,
}

/// One stream's part of a joint block after joint attention (output projection, MLP,
/// residuals).
#[derive(Debug, Clone)]
pub struct PostAttention {
    /// The modulated stream entering the MLP (input of `fc1`).
    pub mlp_input: Array,
    /// `gelu(fc1(mlp_input))` (input of `fc2`).
    pub mlp_hidden: Array,
    /// The stream's block output.
    pub output: Array,
}

impl Mmdit {
    /// Drops the joint blocks and the position table (nearly all the weights); the model is
    /// unusable afterwards.
    pub fn release(&mut self) {
        self.blocks = Vec::new();
        self.pos_embed = super::nn::released();
    }

    /// Builds the model from remapped tensors (see `weights::remap_mmdit`), strictly. Linear
    /// names and shapes come from the registry.
    pub fn from_store(config: &MmditConfig, store: &mut TensorStore) -> Result<Self, WeightsError> {
        config.validate().map_err(|source| WeightsError::Config {
            path: store.path().to_owned(),
            source,
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
        // Every identity has a shape (the registry computes it), so no lookup can fail.
        let mut linear = |id: LayerId| -> Result<Linear, WeightsError> {
            let l = mmdit_linear_layer(config, id);
            if l.bias {
                store.linear(&l.name, l.out_features, l.in_features)
            } else {
                store.linear_no_bias(&l.name, l.out_features, l.in_features)
            }
        };
        let y_embedder = [
            linear(LayerId::PooledEmbedder(0))?,
            linear(LayerId::PooledEmbedder(1))?,
        ];
        let t_embedder = [
            linear(LayerId::TimestepEmbedder(0))?,
            linear(LayerId::TimestepEmbedder(1))?,
        ];
        let context_embedder = linear(LayerId::ContextEmbedder)?;
        let mut blocks = Vec::with_capacity(config.depth);
        for block in 0..config.depth {
            let mut stream = |stream: Stream| -> Result<StreamBlock, WeightsError> {
                let id = |kind| LayerId::Block {
                    block,
                    stream,
                    kind,
                };
                // The last block's text stream only feeds keys and values to the image stream.
                let post = if block + 1 == config.depth && stream == Stream::Text {
                    None
                } else {
                    Some(PostAttentionLayers {
                        o_proj: linear(id(LayerKind::AttnO))?,
                        fc1: linear(id(LayerKind::MlpFc1))?,
                        fc2: linear(id(LayerKind::MlpFc2))?,
                    })
                };
                Ok(StreamBlock {
                    q_proj: linear(id(LayerKind::AttnQ))?,
                    k_proj: linear(id(LayerKind::AttnK))?,
                    v_proj: linear(id(LayerKind::AttnV))?,
                    adaln: linear(id(LayerKind::Adaln))?,
                    post,
                })
            };
            let image = stream(Stream::Image)?;
            let text = stream(Stream::Text)?;
            blocks.push(JointBlock { image, text });
        }
        let final_linear = linear(LayerId::FinalLinear)?;
        let final_adaln = linear(LayerId::FinalAdaln)?;
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

    /// The conditioning path: `y_embedder(pooled) + t_embedder(t)` with its intermediates.
    /// `timestep` is one value for the whole batch or one per row.
    pub fn conditioning(&self, pooled: &Array, timestep: &Array) -> MlxResult<Conditioning> {
        let batch = pooled.shape()[0];
        let pooled_hidden = silu(&self.y_embedder[0].forward(pooled)?)?;
        let y = self.y_embedder[1].forward(&pooled_hidden)?;
        // One timestep for the whole batch, or one per row (batched calibration samples).
        let t = if timestep.size() == 1 {
            mlx_rs::ops::broadcast_to(timestep.reshape(&[1])?, &[batch])?
        } else {
            timestep.reshape(&[batch])?
        };
        let timestep_features = self.timestep_embedding(&t)?.expand_dims_axes(&[1, 2])?;
        let timestep_hidden = silu(&self.t_embedder[0].forward(&timestep_features)?)?;
        let t = self.t_embedder[1].forward(&timestep_hidden)?;
        let vector = y.expand_dims_axes(&[1, 2])?.add(t)?;
        Ok(Conditioning {
            timestep_features,
            pooled_hidden,
            timestep_hidden,
            vector,
        })
    }

    /// `y_embedder(pooled)[:, None, None, :] + t_embedder(t)`: the adaLN input before its
    /// SiLU, `(B, 1, 1, H)`.
    pub fn conditioning_vector(&self, pooled: &Array, timestep: &Array) -> MlxResult<Array> {
        Ok(self.conditioning(pooled, timestep)?.vector)
    }

    /// Every adaLN output for one timestep (a scalar array in the activation dtype, or one
    /// per batch row).
    pub fn modulation(&self, pooled: &Array, timestep: &Array) -> MlxResult<Modulation> {
        self.modulation_from(&self.conditioning(pooled, timestep)?)
    }

    /// Every adaLN output from a computed conditioning path.
    pub fn modulation_from(&self, conditioning: &Conditioning) -> MlxResult<Modulation> {
        let cond = conditioning.adaln_input()?;
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

    /// One stream of joint block `block` up to q, k and v, from the stream's input `x`.
    pub fn pre_attention(
        &self,
        block: usize,
        stream: Stream,
        x: &Array,
        m: &Modulation,
    ) -> MlxResult<PreAttention> {
        let s = self.blocks[block].stream(stream);
        let n = if s.post.is_some() { 6 } else { 2 };
        let chunks = m.stream(block, stream).split_equal(n, -1)?;
        let modulated = self.modulate(x, &chunks[0], &chunks[1])?;
        Ok(PreAttention {
            q: s.q_proj.forward(&modulated)?,
            k: s.k_proj.forward(&modulated)?,
            v: s.v_proj.forward(&modulated)?,
            modulated,
            chunks,
        })
    }

    /// Joint attention over both streams' tokens (image first); the output split back into
    /// the streams, `[image, text]`, each `(B, tokens, 1, H)`.
    pub fn joint_attention(
        &self,
        image: &PreAttention,
        text: &PreAttention,
    ) -> MlxResult<[Array; 2]> {
        let batch = image.q.shape()[0];
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
        let q = joint(&image.q, &text.q)?;
        let k = joint(&image.k, &text.k)?;
        let v = joint(&image.v, &text.v)?;
        let scale = (1.0 / (dh as f64).sqrt()) as f32;
        let out = super::nn::attention(&q, &k, &v, scale)?
            .transpose_axes(&[0, 2, 1, 3])?
            .reshape(&[batch, -1, 1, hidden])?;
        let (s_img, s_txt) = (image.q.shape()[1], text.q.shape()[1]);
        Ok([narrow(&out, 1, 0, s_img)?, narrow(&out, 1, s_img, s_txt)?])
    }

    /// One stream's part of joint block `block` after attention: the output projection, the
    /// MLP and their gated residuals, from the stream's block input (`residual`), its share of
    /// the attention output and its modulation chunks. `None` for a stream without one (the
    /// last block's text stream).
    pub fn post_attention(
        &self,
        block: usize,
        stream: Stream,
        residual: &Array,
        attention: &Array,
        chunks: &[Array],
    ) -> MlxResult<Option<PostAttention>> {
        let Some(post) = &self.blocks[block].stream(stream).post else {
            return Ok(None);
        };
        let residual = residual.add(post.o_proj.forward(attention)?.multiply(&chunks[2])?)?;
        let mlp_input = self.modulate(&residual, &chunks[3], &chunks[4])?;
        let mlp_hidden = gelu(&post.fc1.forward(&mlp_input)?)?;
        let mlp = post.fc2.forward(&mlp_hidden)?;
        Ok(Some(PostAttention {
            output: residual.add(chunks[5].multiply(&mlp)?)?,
            mlp_input,
            mlp_hidden,
        }))
    }

    /// One joint block: both streams' pre-attention parts, joint attention, both streams'
    /// post-attention parts. The text output is `None` after the last block.
    pub fn joint_block(
        &self,
        index: usize,
        img: &Array,
        txt: &Array,
        m: &Modulation,
    ) -> MlxResult<(Array, Option<Array>)> {
        let pre_i = self.pre_attention(index, Stream::Image, img, m)?;
        let pre_t = self.pre_attention(index, Stream::Text, txt, m)?;
        let [attn_i, attn_t] = self.joint_attention(&pre_i, &pre_t)?;
        let img_out = self
            .post_attention(index, Stream::Image, img, &attn_i, &pre_i.chunks)?
            .map(|p| p.output)
            .ok_or_else(|| {
                mlx_rs::error::Exception::custom("image streams always have post-attention layers")
            })?;
        let txt_out = self
            .post_attention(index, Stream::Text, txt, &attn_t, &pre_t.chunks)?
            .map(|p| p.output);
        Ok((img_out, txt_out))
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

    /// The token-level text conditioning `(B, T, 4096)` as the context embedder reads it:
    /// `(B, T, 1, 4096)`.
    pub fn text_tokens(context: &Array) -> MlxResult<Array> {
        context.expand_dims(2)
    }

    /// Projects the token-level text conditioning `(B, T, 4096)` to `(B, T, 1, H)`.
    pub fn embed_text(&self, context: &Array) -> MlxResult<Array> {
        self.context_embedder.forward(&Self::text_tokens(context)?)
    }

    /// The final adaLN: the last block's image output, modulated (the final Linear's input).
    pub fn final_norm(&self, img: &Array, m: &Modulation) -> MlxResult<Array> {
        let chunks = m.final_layer.split_equal(2, -1)?;
        self.modulate(img, &chunks[0], &chunks[1])
    }

    /// Final adaLN + Linear and unpatchify: `(B, h, w, C)`.
    pub fn final_layer(
        &self,
        img: &Array,
        m: &Modulation,
        latent_hw: (i32, i32),
    ) -> MlxResult<Array> {
        let out = self.final_linear.forward(&self.final_norm(img, m)?)?;
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
        )
    }

    /// Runs joint blocks `start..` and the final layer from block `start`'s inputs.
    pub fn forward_from(
        &self,
        start: usize,
        mut img: Array,
        mut txt: Array,
        m: &Modulation,
        latent_hw: (i32, i32),
    ) -> MlxResult<Array> {
        for i in start..self.blocks.len() {
            let (new_img, new_txt) = self.joint_block(i, &img, &txt, m)?;
            img = new_img;
            if let Some(t) = new_txt {
                txt = t;
            }
        }
        self.final_layer(&img, m, latent_hw)
    }

    /// The dtype the weights were loaded in (the activation dtype).
    pub fn dtype(&self) -> Dtype {
        self.context_embedder.weight.dtype()
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
    let remapped = super::weights::remap_mmdit(path, raw)?;
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

/// A stream's Linears with their kinds, in the registry's order.
fn stream_linears_mut(s: &mut StreamBlock) -> Vec<(LayerKind, &mut Linear)> {
    let mut v = vec![
        (LayerKind::AttnQ, &mut s.q_proj),
        (LayerKind::AttnK, &mut s.k_proj),
        (LayerKind::AttnV, &mut s.v_proj),
    ];
    if let Some(post) = &mut s.post {
        v.push((LayerKind::AttnO, &mut post.o_proj));
        v.push((LayerKind::MlpFc1, &mut post.fc1));
        v.push((LayerKind::MlpFc2, &mut post.fc2));
    }
    v.push((LayerKind::Adaln, &mut s.adaln));
    v
}

impl Mmdit {
    /// Every Linear with its identity, in the order of `registry::mmdit_layer_ids`.
    pub fn linears_by_id_mut(&mut self) -> Vec<(LayerId, &mut Linear)> {
        let [y0, y2] = &mut self.y_embedder;
        let [t0, t2] = &mut self.t_embedder;
        let mut v: Vec<(LayerId, &mut Linear)> = vec![
            (LayerId::PooledEmbedder(0), y0),
            (LayerId::PooledEmbedder(1), y2),
            (LayerId::TimestepEmbedder(0), t0),
            (LayerId::TimestepEmbedder(1), t2),
            (LayerId::ContextEmbedder, &mut self.context_embedder),
        ];
        for (block, b) in self.blocks.iter_mut().enumerate() {
            for (stream, s) in [(Stream::Image, &mut b.image), (Stream::Text, &mut b.text)] {
                v.extend(stream_linears_mut(s).into_iter().map(|(kind, l)| {
                    (
                        LayerId::Block {
                            block,
                            stream,
                            kind,
                        },
                        l,
                    )
                }));
            }
        }
        v.push((LayerId::FinalLinear, &mut self.final_linear));
        v.push((LayerId::FinalAdaln, &mut self.final_adaln));
        v
    }

    /// Every Linear with its DiffusionKit name, in the order of `registry::mmdit_linear_layers`.
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        self.linears_by_id_mut()
            .into_iter()
            .map(|(id, l)| (id.name(), l))
            .collect()
    }

    /// The Linear `id`, if this model has it.
    pub fn linear_mut(&mut self, id: LayerId) -> Option<&mut Linear> {
        match id {
            LayerId::PooledEmbedder(i) => self.y_embedder.get_mut(i),
            LayerId::TimestepEmbedder(i) => self.t_embedder.get_mut(i),
            LayerId::ContextEmbedder => Some(&mut self.context_embedder),
            LayerId::FinalLinear => Some(&mut self.final_linear),
            LayerId::FinalAdaln => Some(&mut self.final_adaln),
            LayerId::Block {
                block,
                stream,
                kind,
            } => {
                let b = self.blocks.get_mut(block)?;
                let s = match stream {
                    Stream::Image => &mut b.image,
                    Stream::Text => &mut b.text,
                };
                stream_linears_mut(s)
                    .into_iter()
                    .find(|(k, _)| *k == kind)
                    .map(|(_, l)| l)
            }
        }
    }

    /// Bytes held by the parameters.
    pub fn weight_bytes(&self) -> usize {
        self.arrays().iter().map(|a| a.nbytes()).sum()
    }
}

impl Mmdit {
    /// A copy that shares every array but the weights of `ids`, which are `weights` (in that
    /// order): how a transform (`vjp`, `jvp`) sees the model as a function of those weights.
    pub fn with_weights(&self, ids: &[LayerId], weights: &[Array]) -> MlxResult<Self> {
        let mut m = self.clone();
        for (&id, w) in ids.iter().zip(weights) {
            let linear = m.linear_mut(id).ok_or_else(|| {
                mlx_rs::error::Exception::custom(format!("the model has no layer {}", id.name()))
            })?;
            linear.weight = w.clone();
        }
        Ok(m)
    }

    /// The float weights of `ids`, in that order (an error names a layer the model lacks).
    pub fn weights_of(&self, ids: &[LayerId]) -> MlxResult<Vec<Array>> {
        let mut m = self.clone();
        ids.iter()
            .map(|&id| {
                m.linear_mut(id).map(|l| l.weight.clone()).ok_or_else(|| {
                    mlx_rs::error::Exception::custom(format!(
                        "the model has no layer {}",
                        id.name()
                    ))
                })
            })
            .collect()
    }

    /// The denoiser from its raw inputs: the adaLN modulation is computed here from `pooled`
    /// and `timestep` rather than cached, so that a transform differentiates through it (the
    /// embedders and adaLN Linears then get their gradient).
    pub fn denoise(
        &self,
        x: &Array,
        context: &Array,
        pooled: &Array,
        timestep: &Array,
    ) -> MlxResult<Array> {
        let modulation = self.modulation(pooled, timestep)?;
        self.forward(x, context, &modulation)
    }
}
