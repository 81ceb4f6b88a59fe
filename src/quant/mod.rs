//! Quantization of the MMDiT's Linear layers: configurations (`none`, uniform `wN`, per-layer
//! plans), applied either for real (MLX-packed weights and `quantized_matmul`: the memory and
//! latency a user gets) or simulated (quantize → dequantize back to float: the same numbers
//! through a float matmul, fast on the CPU backend). The adaLN Linears are quantized like the
//! others; since the modulation is computed from them for every timestep, their quantization
//! acts on the modulation.
//!
//! A plan may give each step bucket (early/mid/late) its own layer map; the pipeline then holds
//! one MMDiT per bucket (sharing every array they have in common) and switches at bucket
//! boundaries.
//!
//! `sensitivity`: the per-layer, per-bit sweep; `linearized`: its first-order scope (gradient
//! probes, every layer at once). `plan`: exact mixed-precision plans and their
//! validation.

pub mod linearized;
pub mod plan;
pub mod sensitivity;
pub mod shards;
pub mod validate;

use std::collections::BTreeMap;
use std::path::Path;

use mlx_rs::Array;
use serde::{Deserialize, Serialize};

use crate::calib::Bucket;
use crate::model::mmdit::Mmdit;
use crate::model::nn::{Linear, QuantizedWeight};

/// Bit widths MLX's affine quantization supports.
pub const SUPPORTED_BITS: [i32; 6] = [2, 3, 4, 5, 6, 8];
/// Group sizes MLX's affine quantization supports.
pub const SUPPORTED_GROUPS: [i32; 3] = [32, 64, 128];

/// Bits and group size of one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerQuant {
    pub bits: i32,
    #[serde(default = "default_group")]
    pub group_size: i32,
}

fn default_group() -> i32 {
    64
}

/// Bits per weight that a group's float16 scale and bias add: `32 / group_size`.
pub fn scale_overhead_bits(group_size: i32) -> f64 {
    32.0 / group_size.max(1) as f64
}

/// How many layers get each bit width, by bit width.
pub fn bits_histogram<'a>(
    layers: impl IntoIterator<Item = &'a LayerQuant>,
) -> BTreeMap<i32, usize> {
    let mut histogram = BTreeMap::new();
    for q in layers {
        *histogram.entry(q.bits).or_default() += 1;
    }
    histogram
}

impl LayerQuant {
    /// Checks that MLX supports these bits and this group size (the one such check).
    pub fn validate(&self) -> Result<(), QuantError> {
        if !SUPPORTED_BITS.contains(&self.bits) {
            return Err(QuantError::UnsupportedBits { bits: self.bits });
        }
        if !SUPPORTED_GROUPS.contains(&self.group_size) {
            return Err(QuantError::UnsupportedGroupSize {
                group_size: self.group_size,
            });
        }
        Ok(())
    }
}

/// A mixed-precision plan (`plan.json`, schema `sd3lab.plan/1`): bits and group size per layer
/// name; layers that are not listed stay float.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantPlan {
    #[serde(default)]
    pub schema: String,
    pub layers: BTreeMap<String, LayerQuant>,
    /// Per step bucket layer maps (`early`/`mid`/`late` → layers): a bucket listed here uses its
    /// own map instead of `layers` (layers absent from it stay float).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub buckets: BTreeMap<String, BTreeMap<String, LayerQuant>>,
    /// Anything else the plan carries (budget, predicted bytes and error…), kept as is.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl QuantPlan {
    /// The layer map used during `bucket`: its own map when the plan has one, else `layers`
    /// (always `layers` for [`Bucket::All`]).
    pub fn layers_for(&self, bucket: Bucket) -> &BTreeMap<String, LayerQuant> {
        match bucket {
            Bucket::All => &self.layers,
            b => self.buckets.get(b.name()).unwrap_or(&self.layers),
        }
    }
}

/// What to quantize.
#[derive(Debug, Clone, PartialEq)]
pub enum QuantConfig {
    /// The float model.
    None,
    /// Every Linear at the same bits and group size.
    Uniform(LayerQuant),
    Plan(QuantPlan),
}

impl QuantConfig {
    /// Parses `none`, `w4` (any supported N), or a path to a plan JSON file.
    pub fn parse(spec: &str, group_size: i32) -> Result<Self, QuantError> {
        if spec == "none" {
            return Ok(Self::None);
        }
        if let Some(n) = spec.strip_prefix('w').and_then(|n| n.parse::<i32>().ok()) {
            let q = LayerQuant {
                bits: n,
                group_size,
            };
            q.validate()?;
            return Ok(Self::Uniform(q));
        }
        let path = Path::new(spec);
        if !path.is_file() {
            return Err(QuantError::UnknownSpec(spec.to_owned()));
        }
        let text = std::fs::read_to_string(path).map_err(|source| QuantError::Read {
            path: path.to_owned(),
            source,
        })?;
        let plan: QuantPlan =
            serde_json::from_str(&text).map_err(|source| QuantError::NotAPlan {
                path: path.to_owned(),
                source,
            })?;
        for (name, q) in &plan.layers {
            q.validate().map_err(|e| QuantError::PlanLayer {
                path: path.to_owned(),
                bucket: None,
                layer: name.clone(),
                source: Box::new(e),
            })?;
        }
        for (bucket, layers) in &plan.buckets {
            if !matches!(
                bucket.parse::<Bucket>(),
                Ok(Bucket::Early | Bucket::Mid | Bucket::Late)
            ) {
                return Err(QuantError::UnknownPlanBucket {
                    path: path.to_owned(),
                    bucket: bucket.clone(),
                });
            }
            for (name, q) in layers {
                q.validate().map_err(|e| QuantError::PlanLayer {
                    path: path.to_owned(),
                    bucket: Some(bucket.clone()),
                    layer: name.clone(),
                    source: Box::new(e),
                })?;
            }
        }
        Ok(Self::Plan(plan))
    }

    /// The configuration that applies during `bucket` (a per-bucket plan's map for it).
    pub fn for_bucket(&self, bucket: Bucket) -> Self {
        match self {
            Self::Plan(p) if !p.buckets.is_empty() => Self::Plan(QuantPlan {
                schema: p.schema.clone(),
                layers: p.layers_for(bucket).clone(),
                buckets: BTreeMap::new(),
                extra: serde_json::Map::new(),
            }),
            other => other.clone(),
        }
    }

    /// Whether step buckets use different layer maps.
    pub fn is_per_bucket(&self) -> bool {
        matches!(self, Self::Plan(p) if !p.buckets.is_empty())
    }

    /// The setting for one layer, if it is to be quantized.
    pub fn for_layer(&self, name: &str) -> Option<LayerQuant> {
        match self {
            Self::None => None,
            Self::Uniform(q) => Some(*q),
            Self::Plan(p) => p.layers.get(name).copied(),
        }
    }
}

/// Real or simulated quantization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuantMode {
    Real,
    Simulated,
}

/// What [`apply`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QuantReport {
    pub quantized: Vec<(String, LayerQuant)>,
    /// Layers left float, with the reason.
    pub skipped: Vec<(String, String)>,
    pub bytes_before: usize,
    pub bytes_after: usize,
}

/// Why quantization failed.
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    #[error("{bits} bits is not supported (MLX: {})", listed(&SUPPORTED_BITS, ", "))]
    UnsupportedBits { bits: i32 },
    #[error("group size {group_size} is not supported (MLX: {})", listed(&SUPPORTED_GROUPS, ", "))]
    UnsupportedGroupSize { group_size: i32 },
    #[error("'{0}' is neither none, wN (N in {bits}) nor a plan file", bits = listed(&SUPPORTED_BITS, ","))]
    UnknownSpec(String),
    #[error("{path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a plan: {source}")]
    NotAPlan {
        path: std::path::PathBuf,
        source: serde_json::Error,
    },
    /// A plan's layer entry MLX cannot quantize (`bucket`: in that bucket's map).
    #[error("{path}: {}layer {layer}: {source}", in_bucket(.bucket))]
    PlanLayer {
        path: std::path::PathBuf,
        bucket: Option<String>,
        layer: String,
        source: Box<QuantError>,
    },
    #[error("{path}: buckets: unknown bucket '{bucket}' (expected early, mid or late)")]
    UnknownPlanBucket {
        path: std::path::PathBuf,
        bucket: String,
    },
    #[error("the plan names layer '{layer}', which this model does not have")]
    UnknownLayer { layer: String },
    /// A caller's mistake, not a configuration problem: quantization starts from float layers.
    #[error("bug: {layer} is already quantized (quantization applies to a float model)")]
    AlreadyQuantized { layer: String },
    #[error("MLX error while quantizing {layer}: {source}")]
    Mlx {
        layer: String,
        source: mlx_rs::error::Exception,
    },
}

/// `values` joined by `sep`, for messages that list what is supported.
fn listed(values: &[i32], sep: &str) -> String {
    values
        .iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(sep)
}

/// `bucket early, ` for an entry of a bucket's map, nothing for the default map.
fn in_bucket(bucket: &Option<String>) -> String {
    bucket
        .as_ref()
        .map_or(String::new(), |b| format!("bucket {b}, "))
}

/// Quantizes one weight `(out, in)` with MLX's affine scheme.
pub fn quantize_weight(
    weight: &Array,
    q: LayerQuant,
) -> Result<QuantizedWeight, mlx_rs::error::Exception> {
    let (packed, scales, biases) = mlx_rs::ops::quantize(weight, q.group_size, q.bits)?;
    let shape = (weight.shape()[0], weight.shape()[1]);
    Ok(QuantizedWeight {
        packed,
        scales,
        biases,
        bits: q.bits,
        group_size: q.group_size,
        shape,
    })
}

/// `dequantize(quantize(W))` in W's dtype: the float weight the quantized layer computes with.
pub fn fake_quantize(weight: &Array, q: LayerQuant) -> Result<Array, mlx_rs::error::Exception> {
    let w = quantize_weight(weight, q)?;
    mlx_rs::ops::dequantize(&w.packed, &w.scales, &w.biases, q.group_size, q.bits)?
        .as_dtype(weight.dtype())
}

/// Quantizes `linear` in place.
pub fn quantize_linear(
    linear: &mut Linear,
    q: LayerQuant,
    mode: QuantMode,
) -> Result<(), mlx_rs::error::Exception> {
    match mode {
        QuantMode::Simulated => {
            linear.weight = fake_quantize(&linear.weight, q)?;
            linear.weight.eval()?;
        }
        QuantMode::Real => {
            let w = quantize_weight(&linear.weight, q)?;
            mlx_rs::transforms::eval([&w.packed, &w.scales, &w.biases])?;
            linear.weight = Array::from_slice::<f32>(&[], &[0]).as_dtype(linear.weight.dtype())?;
            linear.quantized = Some(w);
        }
    }
    Ok(())
}

/// Applies `config` to every MMDiT Linear. Layers whose input size is not a multiple of the
/// group size stay float and are reported; a plan naming an unknown layer is an error.
pub fn apply(
    mmdit: &mut Mmdit,
    config: &QuantConfig,
    mode: QuantMode,
) -> Result<QuantReport, QuantError> {
    let mut report = QuantReport {
        bytes_before: mmdit.weight_bytes(),
        ..QuantReport::default()
    };
    let linears = mmdit.linears_mut();
    if let QuantConfig::Plan(plan) = config
        && let Some(unknown) = plan
            .layers
            .keys()
            .find(|k| !linears.iter().any(|(n, _)| n == *k))
    {
        return Err(QuantError::UnknownLayer {
            layer: unknown.clone(),
        });
    }
    for (name, linear) in linears {
        let Some(q) = config.for_layer(&name) else {
            continue;
        };
        if linear.quantized.is_some() {
            return Err(QuantError::AlreadyQuantized { layer: name });
        }
        let inp = linear.in_features();
        if inp % q.group_size != 0 {
            report.skipped.push((
                name,
                format!(
                    "input size {inp} is not a multiple of the group size {}",
                    q.group_size
                ),
            ));
            continue;
        }
        quantize_linear(linear, q, mode).map_err(|source| QuantError::Mlx {
            layer: name.clone(),
            source,
        })?;
        report.quantized.push((name, q));
    }
    report.bytes_after = mmdit.weight_bytes();
    Ok(report)
}

/// Applies `config` to a pipeline's MMDiT. A per-bucket plan builds one MMDiT per step bucket
/// from the float one (arrays they share are held once) and the pipeline switches between
/// them; `bytes_after` then counts every distinct weight once.
pub fn apply_to_pipeline(
    pipe: &mut crate::model::pipeline::Pipeline,
    config: &QuantConfig,
    mode: QuantMode,
) -> Result<QuantReport, QuantError> {
    if !config.is_per_bucket() {
        pipe.bucket_mmdits = None;
        return apply(&mut pipe.mmdit, config, mode);
    }
    let bytes_before = pipe.mmdit.weight_bytes();
    let mut variants = Vec::new();
    let mut report = QuantReport {
        bytes_before,
        ..QuantReport::default()
    };
    for bucket in Bucket::STEPS {
        let mut m = pipe.mmdit.clone();
        let r = apply(&mut m, &config.for_bucket(bucket), mode)?;
        for (name, q) in r.quantized {
            let labelled = format!("{name} ({bucket})");
            report.quantized.push((labelled, q));
        }
        for s in r.skipped {
            if !report.skipped.contains(&s) {
                report.skipped.push(s);
            }
        }
        variants.push(m);
    }
    // Distinct weights: the non-Linear parameters once, then each (layer, setting) once.
    let linear_bytes = |l: &Linear| l.arrays().iter().map(|a| a.nbytes()).sum::<usize>();
    let mut seen = std::collections::BTreeSet::new();
    let mut bytes = 0usize;
    let mut other = pipe.mmdit.weight_bytes();
    for (_, l) in pipe.mmdit.linears_mut() {
        other -= linear_bytes(l);
    }
    for m in &mut variants {
        for (name, l) in m.linears_mut() {
            let key = (name, l.quantized.as_ref().map(|q| (q.bits, q.group_size)));
            if seen.insert(key) {
                bytes += linear_bytes(l);
            }
        }
    }
    report.bytes_after = other + bytes;
    pipe.mmdit = variants[0].clone();
    pipe.bucket_mmdits = Some(variants);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_refusals_are_typed_and_name_the_plan_entry() {
        assert!(matches!(
            QuantConfig::parse("w7", 64),
            Err(QuantError::UnsupportedBits { bits: 7 })
        ));
        assert!(matches!(
            QuantConfig::parse("w4", 48),
            Err(QuantError::UnsupportedGroupSize { group_size: 48 })
        ));
        assert!(matches!(
            QuantConfig::parse("no-such-plan.json", 64),
            Err(QuantError::UnknownSpec(s)) if s == "no-such-plan.json"
        ));
        // The messages list what MLX supports, as they did when the lists were typed out.
        assert_eq!(
            QuantError::UnsupportedGroupSize { group_size: 48 }.to_string(),
            "group size 48 is not supported (MLX: 32, 64, 128)"
        );
        assert_eq!(
            QuantError::UnknownSpec("x".into()).to_string(),
            "'x' is neither none, wN (N in 2,3,4,5,6,8) nor a plan file"
        );
        let dir = tempfile::tempdir().unwrap();
        let plan = dir.path().join("plan.json");
        let write = |text: &str| std::fs::write(&plan, text).unwrap();
        let spec = plan.display().to_string();
        write(r#"{"layers": {}, "buckets": {"all": {}}}"#);
        assert!(matches!(
            QuantConfig::parse(&spec, 64),
            Err(QuantError::UnknownPlanBucket { bucket, .. }) if bucket == "all"
        ));
        write(r#"{"layers": {}, "buckets": {"late": {"x": {"bits": 7, "group_size": 64}}}}"#);
        let err = QuantConfig::parse(&spec, 64).unwrap_err();
        assert!(
            matches!(&err, QuantError::PlanLayer { bucket: Some(b), layer, source, .. }
                if b == "late" && layer == "x"
                    && matches!(**source, QuantError::UnsupportedBits { bits: 7 })),
            "{err:?}"
        );
        assert!(
            err.to_string().ends_with(
                "plan.json: bucket late, layer x: 7 bits is not supported (MLX: 2, 3, 4, 5, 6, 8)"
            ),
            "{err}"
        );
        write("not json");
        assert!(matches!(
            QuantConfig::parse(&spec, 64),
            Err(QuantError::NotAPlan { .. })
        ));
    }
}
