//! The quantization workflow end to end through the CLI: calibrate → sensitivity → plan →
//! generate with the plan; the plan meets its budget exactly as recomputed from the report.

mod common;

use std::path::Path;
use std::process::Output;

fn sd3lab(cache: &Path, args: &[&str]) -> Output {
    common::sd3lab_command(cache, args)
        .output()
        .expect("run sd3lab")
}

fn ok(o: Output) -> Output {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o
}

#[test]
fn calibrate_sensitivity_plan_generate() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let calib = r.join("calib");
    let sens = r.join("sens");
    let plan = r.join("plan.json");
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    ok(sd3lab(
        r,
        &[
            "calibrate",
            "--model",
            "tiny",
            "--num-images",
            "2",
            "--num-steps",
            "3",
            "--height",
            "64",
            "--width",
            "64",
            "--calib-dir",
            &s(&calib),
        ],
    ));
    ok(sd3lab(
        r,
        &[
            "sensitivity",
            "--model",
            "tiny",
            "--calib-dir",
            &s(&calib),
            "--bits",
            "2,4,8",
            "--output-dir",
            &s(&sens),
        ],
    ));
    let out = ok(sd3lab(
        r,
        &[
            "plan",
            "--sensitivity",
            &s(&sens.join("sensitivity.json")),
            "--target-bits",
            "5",
            "--output",
            &s(&plan),
        ],
    ));
    assert!(String::from_utf8_lossy(&out.stdout).contains("average"));
    assert!(r.join("pareto.csv").is_file(), "pareto.csv beside the plan");

    // The budget, recomputed from the report's parameter counts: Σ params·(bits + 32/64) / Σ params ≤ 5.
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sens.join("sensitivity.json")).unwrap())
            .unwrap();
    let p: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&plan).unwrap()).unwrap();
    let params = |name: &str| {
        report["layers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == name)
            .unwrap()["params"]
            .as_f64()
            .unwrap()
    };
    let (mut weighted, mut total) = (0.0, 0.0);
    for (name, q) in p["layers"].as_object().unwrap() {
        let n = params(name);
        weighted += n * (q["bits"].as_f64().unwrap() + 0.5);
        total += n;
    }
    let average = weighted / total;
    assert!(average <= 5.0 + 1e-12, "average {average}");
    assert!(
        (average - p["average_bits"].as_f64().unwrap()).abs() < 1e-9,
        "the plan reports its true average"
    );
    let bits: Vec<i64> = p["layers"]
        .as_object()
        .unwrap()
        .values()
        .map(|q| q["bits"].as_i64().unwrap())
        .collect();
    assert!(
        bits.iter().any(|&b| b < 8) && bits.iter().any(|&b| b > 2),
        "a real mix at 5 bits: {bits:?}"
    );

    let png = r.join("q.png");
    let out = ok(sd3lab(
        r,
        &[
            "generate",
            "--model",
            "tiny",
            "--prompt",
            "a red fox in snow",
            "--num-steps",
            "2",
            "--height",
            "64",
            "--width",
            "64",
            "--quant",
            &s(&plan),
            "--output",
            &s(&png),
            "--json",
        ],
    ));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        doc["quant"]["quantized_layers"].as_u64().unwrap() as usize,
        p["layers"].as_object().unwrap().len()
    );

    // A budget below 2 bits + scales cannot be met.
    let o = sd3lab(
        r,
        &[
            "plan",
            "--sensitivity",
            &s(&sens.join("sensitivity.json")),
            "--target-bits",
            "2.1",
            "--output",
            &s(&plan),
        ],
    );
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("below the smallest reachable average")
            && String::from_utf8_lossy(&o.stderr).contains("; pass a --target-bits of at least"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // --validate needs samples the sweep did not use: here it used them all.
    let o = sd3lab(
        r,
        &[
            "plan",
            "--sensitivity",
            &s(&sens.join("sensitivity.json")),
            "--target-bits",
            "5",
            "--validate",
            "--output",
            &s(&r.join("v.json")),
        ],
    );
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("held-out samples"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        !r.join("v.json").exists(),
        "no plan written when validation fails"
    );

    // A sweep on image 0 only; per-bucket plans validated on image 1.
    let sens1 = r.join("sens1");
    ok(sd3lab(
        r,
        &[
            "sensitivity",
            "--model",
            "tiny",
            "--calib-dir",
            &s(&calib),
            "--bits",
            "2,4,8",
            "--max-images",
            "1",
            "--output-dir",
            &s(&sens1),
        ],
    ));
    let bucket_plan = r.join("bucket-plan.json");
    let out = ok(sd3lab(
        r,
        &[
            "plan",
            "--sensitivity",
            &s(&sens1.join("sensitivity.json")),
            "--target-bits",
            "4.5",
            "--per-bucket",
            "--validate",
            "--output",
            &s(&bucket_plan),
        ],
    ));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("held-out"), "{text}");
    let p: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&bucket_plan).unwrap()).unwrap();
    let report1: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sens1.join("sensitivity.json")).unwrap())
            .unwrap();
    // Each bucket's map meets the budget on its own, recomputed from the parameter counts.
    let buckets = p["buckets"].as_object().unwrap();
    assert_eq!(
        buckets.keys().collect::<Vec<_>>(),
        vec!["early", "late", "mid"]
    );
    for (bucket, layers) in buckets {
        let (mut weighted, mut total) = (0.0, 0.0);
        for (name, q) in layers.as_object().unwrap() {
            let n = report1["layers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|l| l["name"] == *name)
                .unwrap()["params"]
                .as_f64()
                .unwrap();
            weighted += n * (q["bits"].as_f64().unwrap() + 0.5);
            total += n;
        }
        assert!(
            weighted / total <= 4.5 + 1e-12,
            "{bucket}: {}",
            weighted / total
        );
        let predicted = p["buckets_predicted"][bucket]["average_bits"]
            .as_f64()
            .unwrap();
        assert!((predicted - weighted / total).abs() < 1e-9);
    }
    // Validation: the held-out samples are exactly image 1's three steps, one per bucket.
    let v = &p["validation"];
    let held: Vec<&str> = v["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    let used: Vec<&str> = report1["settings"]["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert_eq!(held.len(), 3, "{held:?}");
    assert!(held.iter().all(|h| !used.contains(h)));
    for row in v["rows"].as_array().unwrap() {
        let mse = row["mse"].as_f64().unwrap();
        let predicted = row["predicted_mse"].as_f64().unwrap();
        assert!(mse > 0.0 && predicted > 0.0, "{row}");
        // Per-layer errors roughly add up on this model (the ratio is what the user reads).
        assert!(
            (0.1..10.0).contains(&(mse / predicted)),
            "measured {mse} vs predicted {predicted}"
        );
    }

    // generate switches MMDiTs per bucket: it differs from the float image and from the
    // early bucket's map applied to every step.
    let gen_args = |quant: &str, out: &Path| -> Vec<String> {
        [
            "generate",
            "--model",
            "tiny",
            "--prompt",
            "a red fox in snow",
            "--num-steps",
            "3",
            "--height",
            "64",
            "--width",
            "64",
            "--quant",
            quant,
            "--latent-out",
        ]
        .iter()
        .map(|x| x.to_string())
        .chain([
            s(out),
            "--output".into(),
            s(&out.with_extension("png")),
            "--json".into(),
        ])
        .collect()
    };
    let run = |quant: &str, name: &str| -> Vec<f32> {
        let out = r.join(name);
        let args = gen_args(quant, &out);
        let args: Vec<&str> = args.iter().map(|x| x.as_str()).collect();
        ok(sd3lab(r, &args));
        common::read_npy(&out).data.to_f32_vec()
    };
    let early_only = r.join("early-only.json");
    let mut e = serde_json::json!({"schema": "sd3lab.plan/1", "layers": p["buckets"]["early"]});
    e["schema"] = "sd3lab.plan/1".into();
    std::fs::write(&early_only, e.to_string()).unwrap();
    let per_bucket = run(&s(&bucket_plan), "pb.npy");
    let early = run(&s(&early_only), "early.npy");
    let float = run("none", "float.npy");
    let differs = |a: &[f32], b: &[f32]| a.iter().zip(b).any(|(x, y)| x != y);
    assert!(
        p["buckets"]["early"] != p["buckets"]["late"]
            || p["buckets"]["early"] != p["buckets"]["mid"],
        "the buckets' sensitivities differ, so do their optimal maps"
    );
    assert!(
        differs(&per_bucket, &early),
        "bucket maps differ, so must the latents"
    );
    assert!(differs(&per_bucket, &float));
}
