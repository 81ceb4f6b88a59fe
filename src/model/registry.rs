//! The MMDiT's quantizable Linear layers, each addressable by its full DiffusionKit name
//! (`multimodal_transformer_blocks.3.image_transformer_block.mlp.fc1`), with its shape,
//! parameter count and block index. Built from the configuration alone.

use serde::Serialize;

use super::config::MmditConfig;

/// What a Linear layer does, for filtering and plotting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
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
}

/// Which stream of a joint block a layer belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamKind {
    Image,
    Text,
}

/// One Linear layer of the MMDiT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinearLayer {
    /// Full module name as DiffusionKit names it.
    pub name: String,
    /// Joint block index; `None` for the embedders and the final layer.
    pub block: Option<usize>,
    pub stream: Option<StreamKind>,
    pub kind: LayerKind,
    pub in_features: usize,
    pub out_features: usize,
    pub bias: bool,
    /// Weights plus bias.
    pub params: usize,
}

impl LinearLayer {
    fn new(
        name: String,
        block: Option<usize>,
        stream: Option<StreamKind>,
        kind: LayerKind,
        shape: (usize, usize),
        bias: bool,
    ) -> Self {
        let (out_features, in_features) = shape;
        let params = out_features * in_features + if bias { out_features } else { 0 };
        Self {
            name,
            block,
            stream,
            kind,
            in_features,
            out_features,
            bias,
            params,
        }
    }
}

/// Every Linear of the MMDiT, in forward order.
pub fn mmdit_linear_layers(cfg: &MmditConfig) -> Vec<LinearLayer> {
    let h = cfg.hidden_size;
    let mut layers = Vec::new();
    let top =
        |name: &str, kind, shape| LinearLayer::new(name.to_owned(), None, None, kind, shape, true);
    layers.push(top(
        "y_embedder.mlp.layers.0",
        LayerKind::Embedder,
        (h, cfg.pooled_dim),
    ));
    layers.push(top("y_embedder.mlp.layers.2", LayerKind::Embedder, (h, h)));
    layers.push(top(
        "t_embedder.mlp.layers.0",
        LayerKind::Embedder,
        (h, cfg.frequency_dim),
    ));
    layers.push(top("t_embedder.mlp.layers.2", LayerKind::Embedder, (h, h)));
    layers.push(top(
        "context_embedder",
        LayerKind::Embedder,
        (h, cfg.context_dim),
    ));
    for block in 0..cfg.depth {
        let last = block + 1 == cfg.depth;
        for (stream, stream_name) in [
            (StreamKind::Image, "image_transformer_block"),
            (StreamKind::Text, "text_transformer_block"),
        ] {
            // The last block's text stream only feeds keys and values to the image stream.
            let skip_post = last && stream == StreamKind::Text;
            let prefix = format!("multimodal_transformer_blocks.{block}.{stream_name}");
            let mut add = |suffix: &str, kind, shape, bias| {
                layers.push(LinearLayer::new(
                    format!("{prefix}.{suffix}"),
                    Some(block),
                    Some(stream),
                    kind,
                    shape,
                    bias,
                ));
            };
            add("attn.q_proj", LayerKind::AttnQ, (h, h), true);
            add("attn.k_proj", LayerKind::AttnK, (h, h), false);
            add("attn.v_proj", LayerKind::AttnV, (h, h), true);
            if !skip_post {
                add("attn.o_proj", LayerKind::AttnO, (h, h), true);
                add("mlp.fc1", LayerKind::MlpFc1, (cfg.mlp_hidden(), h), true);
                add("mlp.fc2", LayerKind::MlpFc2, (h, cfg.mlp_hidden()), true);
            }
            let modulation = if skip_post { 2 } else { 6 };
            add(
                "adaLN_modulation.layers.1",
                LayerKind::Adaln,
                (modulation * h, h),
                true,
            );
        }
    }
    let p = cfg.patch_size * cfg.patch_size * cfg.latent_channels;
    layers.push(top("final_layer.linear", LayerKind::Final, (p, h)));
    layers.push(top(
        "final_layer.adaLN_modulation.layers.1",
        LayerKind::Adaln,
        (2 * h, h),
    ));
    layers
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
            .filter(|l| l.block == Some(23) && l.stream == Some(StreamKind::Text))
            .collect();
        assert_eq!(last_text.len(), 4);
        assert_eq!(last_text[3].out_features, 3072);
        // Names are unique.
        let mut names: Vec<_> = layers.iter().map(|l| &l.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 340);
    }
}
