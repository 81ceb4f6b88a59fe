//! `sd3lab rank-agreement`: how well proxy scopes rank layers like the reference run (Spearman's
//! rho, and how many of its 10 most sensitive layers they find).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

#[derive(Args)]
pub struct RankAgreementArgs {
    /// The reference sensitivity.json (usually `--scope model`).
    reference: PathBuf,
    /// sensitivity.json files to compare with it (e.g. the block and layer scopes).
    #[arg(required = true)]
    proxies: Vec<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Spearman rank agreement of layer rankings between sensitivity runs, per bit width.
pub fn run(args: &RankAgreementArgs) -> anyhow::Result<ExitCode> {
    use sd3lab::quant::sensitivity::{rank_agreement, read_report};
    let reference = read_report(&args.reference)?;
    let mut rows = Vec::new();
    for p in &args.proxies {
        let proxy = read_report(p)?;
        for a in rank_agreement(&reference, &proxy) {
            rows.push(serde_json::json!({
                "proxy": p.display().to_string(),
                "scope": proxy.settings.metric_scope,
                "bits": a.bits,
                "spearman": if a.spearman.is_finite() { serde_json::json!(a.spearman) } else { serde_json::Value::Null },
                "layers": a.layers,
                "top10_overlap": a.top_overlap,
            }));
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "reference": args.reference.display().to_string(),
                "reference_scope": reference.settings.metric_scope,
                "agreement": rows,
            }))?
        );
    } else {
        println!(
            "{:<40} {:<10} {:>4} {:>9} {:>7} {:>6}",
            "proxy", "scope", "bits", "spearman", "layers", "top-10"
        );
        for r in &rows {
            println!(
                "{:<40} {:<10} {:>4} {:>9} {:>7} {:>6}",
                r["proxy"].as_str().unwrap_or(""),
                r["scope"].as_str().unwrap_or(""),
                r["bits"],
                r["spearman"]
                    .as_f64()
                    .map_or("n/a".into(), |v| format!("{v:.3}")),
                r["layers"],
                r["top10_overlap"]
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
