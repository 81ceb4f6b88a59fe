//! What one column of a benchmark is: a precision (`fp32`, `fp16`, `bf16`), a uniform
//! quantization (`wN[:gG]`) or a plan file, with the name it has in the output.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::config::{MmditConfig, ModelDtype};
use crate::model::registry::mmdit_layer_ids;
use crate::quant::{LayerQuant, QuantConfig, QuantError, SUPPORTED_BITS, SUPPORTED_GROUPS};

/// One benchmark configuration, parsed and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Configuration {
    /// Its name in the output and its folder: `fp16`, `w4g64`, a plan's file stem.
    pub name: String,
    /// As the user wrote it.
    pub spec: String,
    /// The dtype the whole pipeline runs at: the configuration's own for `fp32`/`fp16`/`bf16`,
    /// the run's for quantized configurations.
    pub dtype: ModelDtype,
    pub quant: QuantConfig,
    /// The plan file of a plan configuration.
    pub plan_file: Option<PathBuf>,
}

/// What a configuration is, as recorded in its folder and in `results.json`: two runs with
/// equal identities produce the same images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigurationIdentity {
    pub name: String,
    pub dtype: ModelDtype,
    /// `{"kind": "float"}`, `{"kind": "uniform", "bits", "group_size"}` or
    /// `{"kind": "plan", "per_bucket", "layers", "plan"}` (the plan's content; its file is `spec`).
    pub quantization: serde_json::Value,
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigurationError {
    #[error(
        "'{spec}' is not a configuration: fp32, fp16, bf16, wN[:gG] (N in {bits}; G in {groups}) or a plan file",
        bits = listed(&SUPPORTED_BITS),
        groups = listed(&SUPPORTED_GROUPS)
    )]
    Unknown { spec: String },
    #[error("configuration '{spec}': {source}")]
    Quant { spec: String, source: QuantError },
    #[error("plan file {0} does not exist")]
    MissingPlan(PathBuf),
    #[error("two configurations are named '{name}' ({first} and {second})")]
    DuplicateName {
        name: String,
        first: String,
        second: String,
    },
}

fn listed(values: &[i32]) -> String {
    values
        .iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Configuration {
    /// Parses one `--config` value. `dtype` is the run's dtype (used by quantized
    /// configurations); `group_size` applies to `wN` without `:gG`.
    pub fn parse(
        spec: &str,
        dtype: ModelDtype,
        group_size: i32,
    ) -> Result<Self, ConfigurationError> {
        let float = |dtype| Self {
            name: spec.to_owned(),
            spec: spec.to_owned(),
            dtype,
            quant: QuantConfig::None,
            plan_file: None,
        };
        match spec {
            "fp32" => return Ok(float(ModelDtype::Float32)),
            "fp16" => return Ok(float(ModelDtype::Float16)),
            "bf16" => return Ok(float(ModelDtype::Bfloat16)),
            _ => {}
        }
        if let Some((bits, group)) = parse_uniform(spec) {
            let q = LayerQuant {
                bits,
                group_size: group.unwrap_or(group_size),
            };
            q.validate().map_err(|source| ConfigurationError::Quant {
                spec: spec.to_owned(),
                source,
            })?;
            return Ok(Self {
                name: format!("w{}g{}", q.bits, q.group_size),
                spec: spec.to_owned(),
                dtype,
                quant: QuantConfig::Uniform(q),
                plan_file: None,
            });
        }
        let path = Path::new(spec);
        let looks_like_a_file = spec.ends_with(".json") || spec.contains(std::path::MAIN_SEPARATOR);
        if !path.is_file() {
            return Err(if looks_like_a_file {
                ConfigurationError::MissingPlan(path.to_owned())
            } else {
                ConfigurationError::Unknown {
                    spec: spec.to_owned(),
                }
            });
        }
        let quant =
            QuantConfig::parse(spec, group_size).map_err(|source| ConfigurationError::Quant {
                spec: spec.to_owned(),
                source,
            })?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "plan".to_owned());
        Ok(Self {
            name,
            spec: spec.to_owned(),
            dtype,
            quant,
            plan_file: Some(path.to_owned()),
        })
    }

    /// Parses every `--config` value and checks that their names (folders) differ.
    pub fn parse_all(
        specs: &[String],
        dtype: ModelDtype,
        group_size: i32,
    ) -> Result<Vec<Self>, ConfigurationError> {
        let mut out: Vec<Self> = Vec::new();
        for spec in specs {
            let c = Self::parse(spec, dtype, group_size)?;
            if let Some(first) = out.iter().find(|o| o.name == c.name) {
                return Err(ConfigurationError::DuplicateName {
                    name: c.name,
                    first: first.spec.clone(),
                    second: spec.clone(),
                });
            }
            out.push(c);
        }
        Ok(out)
    }

    /// Checks that a plan names only layers `mmdit` has (in every bucket), before any model is
    /// loaded or anything written.
    pub fn check_layers(&self, mmdit: &MmditConfig) -> Result<(), ConfigurationError> {
        let QuantConfig::Plan(plan) = &self.quant else {
            return Ok(());
        };
        let known: Vec<String> = mmdit_layer_ids(mmdit.depth)
            .into_iter()
            .map(|id| id.name())
            .collect();
        let named = plan
            .layers
            .keys()
            .chain(plan.buckets.values().flat_map(|m| m.keys()));
        for layer in named {
            if !known.contains(layer) {
                return Err(ConfigurationError::Quant {
                    spec: self.spec.clone(),
                    source: QuantError::UnknownLayer {
                        layer: layer.clone(),
                    },
                });
            }
        }
        Ok(())
    }

    /// What this configuration is, for its folder's record.
    pub fn identity(&self) -> ConfigurationIdentity {
        let quantization = match &self.quant {
            QuantConfig::None => serde_json::json!({"kind": "float"}),
            QuantConfig::Uniform(q) => {
                serde_json::json!({"kind": "uniform", "bits": q.bits, "group_size": q.group_size})
            }
            // The plan's content, not where it was read from: `./plan.json` and `plan.json`
            // (or a copy elsewhere) are the same configuration.
            QuantConfig::Plan(plan) => serde_json::json!({
                "kind": "plan",
                "per_bucket": !plan.buckets.is_empty(),
                "layers": plan.layers.len(),
                "plan": {"layers": plan.layers, "buckets": plan.buckets},
            }),
        };
        ConfigurationIdentity {
            name: self.name.clone(),
            dtype: self.dtype,
            quantization,
        }
    }
}

/// `w4`, `w4:g64`, `w4g64` → (4, Some(64)); `w4` → (4, None).
fn parse_uniform(spec: &str) -> Option<(i32, Option<i32>)> {
    let rest = spec.strip_prefix('w')?;
    let (bits, group) = match rest.split_once('g') {
        Some((b, g)) => (b.strip_suffix(':').unwrap_or(b), Some(g)),
        None => (rest, None),
    };
    let bits = bits.parse().ok()?;
    let group = match group {
        Some(g) => Some(g.parse().ok()?),
        None => None,
    };
    Some((bits, group))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precisions_uniform_widths_and_plans_get_their_names() {
        let f32 = ModelDtype::Float32;
        let p = |s: &str| Configuration::parse(s, f32, 64);
        assert_eq!(p("fp16").unwrap().dtype, ModelDtype::Float16);
        assert_eq!(p("bf16").unwrap().name, "bf16");
        for (spec, name, bits, group) in [
            ("w4", "w4g64", 4, 64),
            ("w8:g128", "w8g128", 8, 128),
            ("w3g32", "w3g32", 3, 32),
        ] {
            let c = p(spec).unwrap();
            assert_eq!(c.name, name);
            assert_eq!(c.dtype, f32);
            assert_eq!(
                c.quant,
                QuantConfig::Uniform(LayerQuant {
                    bits,
                    group_size: group
                })
            );
        }
        assert!(matches!(p("w7"), Err(ConfigurationError::Quant { .. })));
        assert!(
            p("w4:g48")
                .unwrap_err()
                .to_string()
                .contains("group size 48")
        );
        let unknown = p("int4").unwrap_err().to_string();
        assert!(
            unknown.contains("'int4' is not a configuration"),
            "{unknown}"
        );
        assert!(matches!(
            p("missing-plan.json"),
            Err(ConfigurationError::MissingPlan(_))
        ));

        let dir = tempfile::tempdir().unwrap();
        let plan = dir.path().join("mixed-4.5.json");
        std::fs::write(
            &plan,
            r#"{"schema": "sd3lab.plan/1", "layers": {"x_embedder.proj": {"bits": 4}}}"#,
        )
        .unwrap();
        let c = p(plan.to_str().unwrap()).unwrap();
        assert_eq!(c.name, "mixed-4.5");
        assert_eq!(c.identity().quantization["kind"], "plan");
        assert_eq!(c.identity().quantization["layers"], 1);
        std::fs::write(&plan, "{not json").unwrap();
        let bad = p(plan.to_str().unwrap()).unwrap_err().to_string();
        assert!(bad.contains("mixed-4.5.json"), "{bad}");

        let specs = ["w4".to_owned(), "w4:g64".to_owned()];
        let dup = Configuration::parse_all(&specs, f32, 64)
            .unwrap_err()
            .to_string();
        assert!(
            dup.contains("two configurations are named 'w4g64'"),
            "{dup}"
        );
    }
}
