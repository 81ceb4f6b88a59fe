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
        String::from_utf8_lossy(&o.stderr).contains("below the smallest reachable average"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
