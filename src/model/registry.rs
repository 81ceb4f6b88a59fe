//! The MMDiT's quantizable Linear layers, each addressable by its typed identity ([`LayerId`])
//! and its full DiffusionKit name (`multimodal_transformer_blocks.3.image_transformer_block.mlp.fc1`),
//! with its shape, parameter count and block index. Built from the configuration alone. Layer
//! names are built here only ([`LayerId::name`]): the model's loader, `Mmdit::linears_mut` and
//! this registry all go through it.

use serde::{Deserialize, Serialize};

use super::config::MmditConfig;

/// What a Linear layer does, for filtering and plotting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerKind {
    AttnQ,
    AttnK,
    AttnV,
    AttnO,
    MlpFc1,
    MlpFc2,
    /// adaLN modulation (its output is cached per timestep).
    Adaln,
    /// Input adapters: y_embedder, t_embedder, context_embedder.
    Embedder,
    /// The final projection to patches.
    Final,
}

impl LayerKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::AttnQ => "attn_q",
            Self::AttnK => "attn_k",
            Self::AttnV => "attn_v",
            Self::AttnO => "attn_o",
            Self::MlpFc1 => "mlp_fc1",
            Self::MlpFc2 => "mlp_fc2",
            Self::Adaln => "adaln",
            Self::Embedder => "embedder",
            Self::Final => "final",
        }
    }

    /// An output projection or MLP layer: after joint attention, so it changes its own
    /// stream only.
    pub fn is_post_attention(self) -> bool {
        matches!(self, Self::AttnO | Self::MlpFc1 | Self::MlpFc2)
    }

    /// The module path of a joint block's Linear of this kind, below its stream.
    fn block_module(self) -> &'static str {
        match self {
            Self::AttnQ => "attn.q_proj",
            Self::AttnK => "attn.k_proj",
            Self::AttnV => "attn.v_proj",
            Self::AttnO => "attn.o_proj",
            Self::MlpFc1 => "mlp.fc1",
            Self::MlpFc2 => "mlp.fc2",
            Self::Adaln => "adaLN_modulation.layers.1",
            // Not in joint blocks; named by kind should one ever be built.
            Self::Embedder => "embedder",
            Self::Final => "final",
        }
    }

    /// A joint block stream's Linears in forward order (`post`: whether the stream has its
    /// output projection and MLP; the last block's text stream does not).
    pub fn block_kinds(post: bool) -> &'static [LayerKind] {
        if post {
            &[
                Self::AttnQ,
                Self::AttnK,
                Self::AttnV,
                Self::AttnO,
                Self::MlpFc1,
                Self::MlpFc2,
                Self::Adaln,
            ]
        } else {
            &[Self::AttnQ, Self::AttnK, Self::AttnV, Self::Adaln]
        }
    }
}

/// Which stream of a joint block a layer belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Image,
    Text,
}

impl Stream {
    pub const BOTH: [Stream; 2] = [Self::Image, Self::Text];

    pub fn name(self) -> &'static str {
        match self {
            Self::Image => "image",
            Self::Text => "text",
        }
    }

    /// Index in `(image, text)` pairs.
    pub fn index(self) -> usize {
        match self {
            Self::Image => 0,
            Self::Text => 1,
        }
    }

    fn module(self) -> &'static str {
        match self {
            Self::Image => "image_transformer_block",
            Self::Text => "text_transformer_block",
        }
    }
}

/// Where a Linear sits in the MMDiT: its typed identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LayerId {
    /// `y_embedder.mlp.layers.{0,2}`: Linear 0 or 1 of the pooled-text MLP.
    PooledEmbedder(usize),
    /// `t_embedder.mlp.layers.{0,2}`: Linear 0 or 1 of the timestep MLP.
    TimestepEmbedder(usize),
    /// `context_embedder`: token-level text to the hidden size.
    ContextEmbedder,
    /// A joint block's Linear.
    Block {
        block: usize,
        stream: Stream,
        kind: LayerKind,
    },
    /// `final_layer.linear`.
    FinalLinear,
    /// `final_layer.adaLN_modulation.layers.1`.
    FinalAdaln,
}

impl LayerId {
    /// The full DiffusionKit module name (the weight key without `.weight`/`.bias`).
    pub fn name(self) -> String {
        match self {
            Self::PooledEmbedder(i) => format!("y_embedder.mlp.layers.{}", 2 * i),
            Self::TimestepEmbedder(i) => format!("t_embedder.mlp.layers.{}", 2 * i),
            Self::ContextEmbedder => "context_embedder".into(),
            Self::Block {
                block,
                stream,
                kind,
            } => format!(
                "multimodal_transformer_blocks.{block}.{}.{}",
                stream.module(),
                kind.block_module()
            ),
            Self::FinalLinear => "final_layer.linear".into(),
            Self::FinalAdaln => "final_layer.adaLN_modulation.layers.1".into(),
        }
    }

    /// A name short enough for a plot axis or a progress line (`3.image.attn.q_proj`,
    /// `3.text.adaLN`, `t_embedder.0`): the full name without the module nesting.
    pub fn short_name(self) -> String {
        match self {
            Self::PooledEmbedder(i) => format!("y_embedder.{}", 2 * i),
            Self::TimestepEmbedder(i) => format!("t_embedder.{}", 2 * i),
            Self::ContextEmbedder => "context_embedder".into(),
            Self::Block {
                block,
                stream,
                kind,
            } => {
                let module = match kind {
                    LayerKind::Adaln => "adaLN",
                    _ => kind.block_module(),
                };
                format!("{block}.{}.{module}", stream.name())
            }
            Self::FinalLinear => "final_layer.linear".into(),
            Self::FinalAdaln => "final_layer.adaLN".into(),
        }
    }

    pub fn kind(self) -> LayerKind {
        match self {
            Self::PooledEmbedder(_) | Self::TimestepEmbedder(_) | Self::ContextEmbedder => {
                LayerKind::Embedder
            }
            Self::Block { kind, .. } => kind,
            Self::FinalLinear => LayerKind::Final,
            Self::FinalAdaln => LayerKind::Adaln,
        }
    }

    /// Joint block index; `None` for the embedders and the final layer.
    pub fn block(self) -> Option<usize> {
        match self {
            Self::Block { block, .. } => Some(block),
            _ => None,
        }
    }

    pub fn stream(self) -> Option<Stream> {
        match self {
            Self::Block { stream, .. } => Some(stream),
            _ => None,
        }
    }

    /// Whether the layer computes part of the modulation (the conditioning MLPs and every
    /// adaLN Linear), so that quantizing it changes every block's modulation.
    pub fn moves_modulation(self) -> bool {
        matches!(
            self,
            Self::PooledEmbedder(_) | Self::TimestepEmbedder(_) | Self::FinalAdaln
        ) || self.kind() == LayerKind::Adaln
    }
}

/// One Linear layer of the MMDiT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinearLayer {
    /// Typed identity (the other identity fields are derived from it).
    #[serde(skip)]
    pub id: LayerId,
    /// Full module name as DiffusionKit names it.
    pub name: String,
    /// Joint block index; `None` for the embedders and the final layer.
    pub block: Option<usize>,
    pub stream: Option<Stream>,
    pub kind: LayerKind,
    pub in_features: usize,
    pub out_features: usize,
    pub bias: bool,
    /// Weights plus bias.
    pub params: usize,
}

impl LinearLayer {
    fn new(id: LayerId, shape: (usize, usize), bias: bool) -> Self {
        let (out_features, in_features) = shape;
        let params = out_features * in_features + if bias { out_features } else { 0 };
        Self {
            id,
            name: id.name(),
            block: id.block(),
            stream: id.stream(),
            kind: id.kind(),
            in_features,
            out_features,
            bias,
            params,
        }
    }
}

/// Every Linear's identity, in forward order (the order of [`mmdit_linear_layers`] and of
/// `Mmdit::linears_mut`).
pub fn mmdit_layer_ids(depth: usize) -> Vec<LayerId> {
    let mut ids = vec![
        LayerId::PooledEmbedder(0),
        LayerId::PooledEmbedder(1),
        LayerId::TimestepEmbedder(0),
        LayerId::TimestepEmbedder(1),
        LayerId::ContextEmbedder,
    ];
    for block in 0..depth {
        for stream in Stream::BOTH {
            // The last block's text stream only feeds keys and values to the image stream.
            let post = !(block + 1 == depth && stream == Stream::Text);
            ids.extend(
                LayerKind::block_kinds(post)
                    .iter()
                    .map(|&kind| LayerId::Block {
                        block,
                        stream,
                        kind,
                    }),
            );
        }
    }
    ids.extend([LayerId::FinalLinear, LayerId::FinalAdaln]);
    ids
}

/// Every Linear of the MMDiT, in forward order.
pub fn mmdit_linear_layers(cfg: &MmditConfig) -> Vec<LinearLayer> {
    mmdit_layer_ids(cfg.depth)
        .into_iter()
        .map(|id| mmdit_linear_layer(cfg, id))
        .collect()
}

/// The Linear `id` names, with its shape under `cfg` (an id outside `mmdit_layer_ids(depth)`,
/// such as a block past the last, still gets the shape such a layer would have).
pub fn mmdit_linear_layer(cfg: &MmditConfig, id: LayerId) -> LinearLayer {
    let h = cfg.hidden_size;
    let patch = cfg.patch_size * cfg.patch_size * cfg.latent_channels;
    // (out, in) and bias, as the checkpoint holds them.
    let (shape, bias) = match id {
        LayerId::PooledEmbedder(0) => ((h, cfg.pooled_dim), true),
        LayerId::TimestepEmbedder(0) => ((h, cfg.frequency_dim), true),
        LayerId::PooledEmbedder(_) | LayerId::TimestepEmbedder(_) => ((h, h), true),
        LayerId::ContextEmbedder => ((h, cfg.context_dim), true),
        LayerId::FinalLinear => ((patch, h), true),
        LayerId::FinalAdaln => ((2 * h, h), true),
        LayerId::Block {
            block,
            stream,
            kind,
        } => match kind {
            LayerKind::AttnK => ((h, h), false),
            LayerKind::MlpFc1 => ((cfg.mlp_hidden(), h), true),
            LayerKind::MlpFc2 => ((h, cfg.mlp_hidden()), true),
            LayerKind::Adaln => {
                let last_text = block + 1 == cfg.depth && stream == Stream::Text;
                ((if last_text { 2 } else { 6 } * h, h), true)
            }
            _ => ((h, h), true),
        },
    };
    LinearLayer::new(id, shape, bias)
}

/// Parameters of the MMDiT that are not in Linear layers: the patch-embedding convolution and
/// the position table.
pub fn mmdit_non_linear_params(cfg: &MmditConfig) -> usize {
    let conv =
        cfg.hidden_size * cfg.latent_channels * cfg.patch_size * cfg.patch_size + cfg.hidden_size;
    let pos = cfg.max_latent_resolution * cfg.max_latent_resolution * cfg.hidden_size;
    conv + pos
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sd3_medium_has_340_linears_and_its_published_parameter_count() {
        let cfg = MmditConfig::sd3_medium();
        let layers = mmdit_linear_layers(&cfg);
        assert_eq!(layers.len(), 340);
        let linear: usize = layers.iter().map(|l| l.params).sum();
        assert_eq!(linear + mmdit_non_linear_params(&cfg), 2_084_877_376);
        assert_eq!(
            mmdit_non_linear_params(&cfg) - 1536 * 16 * 4 - 1536,
            56_623_104
        );
        let fc1 = layers
            .iter()
            .find(|l| l.name == "multimodal_transformer_blocks.3.image_transformer_block.mlp.fc1")
            .unwrap();
        assert_eq!(
            (fc1.block, fc1.out_features, fc1.in_features, fc1.kind),
            (Some(3), 6144, 1536, LayerKind::MlpFc1)
        );
        let last_text: Vec<_> = layers
            .iter()
            .filter(|l| l.block == Some(23) && l.stream == Some(Stream::Text))
            .collect();
        assert_eq!(last_text.len(), 4);
        assert_eq!(last_text[3].out_features, 3072);
        // Names are unique.
        let mut names: Vec<_> = layers.iter().map(|l| &l.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 340);
    }

    #[test]
    fn names_are_diffusionkit_module_names() {
        let names: Vec<String> = mmdit_layer_ids(2).into_iter().map(LayerId::name).collect();
        assert_eq!(
            names[..5],
            [
                "y_embedder.mlp.layers.0",
                "y_embedder.mlp.layers.2",
                "t_embedder.mlp.layers.0",
                "t_embedder.mlp.layers.2",
                "context_embedder"
            ]
        );
        assert_eq!(
            names[5..12],
            [
                "multimodal_transformer_blocks.0.image_transformer_block.attn.q_proj",
                "multimodal_transformer_blocks.0.image_transformer_block.attn.k_proj",
                "multimodal_transformer_blocks.0.image_transformer_block.attn.v_proj",
                "multimodal_transformer_blocks.0.image_transformer_block.attn.o_proj",
                "multimodal_transformer_blocks.0.image_transformer_block.mlp.fc1",
                "multimodal_transformer_blocks.0.image_transformer_block.mlp.fc2",
                "multimodal_transformer_blocks.0.image_transformer_block.adaLN_modulation.layers.1",
            ]
        );
        let n = names.len();
        assert_eq!(
            names[n - 6..],
            [
                "multimodal_transformer_blocks.1.text_transformer_block.attn.q_proj",
                "multimodal_transformer_blocks.1.text_transformer_block.attn.k_proj",
                "multimodal_transformer_blocks.1.text_transformer_block.attn.v_proj",
                "multimodal_transformer_blocks.1.text_transformer_block.adaLN_modulation.layers.1",
                "final_layer.linear",
                "final_layer.adaLN_modulation.layers.1"
            ]
        );
        let short: Vec<String> = mmdit_layer_ids(2)
            .into_iter()
            .map(LayerId::short_name)
            .collect();
        assert_eq!(
            short[..12],
            [
                "y_embedder.0",
                "y_embedder.2",
                "t_embedder.0",
                "t_embedder.2",
                "context_embedder",
                "0.image.attn.q_proj",
                "0.image.attn.k_proj",
                "0.image.attn.v_proj",
                "0.image.attn.o_proj",
                "0.image.mlp.fc1",
                "0.image.mlp.fc2",
                "0.image.adaLN",
            ]
        );
        assert_eq!(
            short[n - 3..],
            ["1.text.adaLN", "final_layer.linear", "final_layer.adaLN"]
        );
        assert!(
            LayerId::FinalAdaln.moves_modulation()
                && LayerId::TimestepEmbedder(1).moves_modulation()
        );
        assert!(
            !LayerId::ContextEmbedder.moves_modulation()
                && !LayerId::FinalLinear.moves_modulation()
        );
    }
}
