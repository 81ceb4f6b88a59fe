//! The linearized sensitivity scope on the tiny model: its gradients match finite differences,
//! its estimate converges to the exact first-order error (a JVP computed here) as probes grow
//! and tracks the measured error at 8 bits, it ranks layers like the exact `model` scope, it
//! resumes to the same file, and bad settings fail clearly.

use std::path::Path;

use mlx_rs::{Array, Dtype};
use sd3lab::calib::{Bucket, CalibrationSet, OpenOptions, SampleFilter, SampleKey};
use sd3lab::job::CancelToken;
use sd3lab::model::config::ModelDtype;
use sd3lab::model::cpu_kernels::PlainMlx;
use sd3lab::model::mmdit::Mmdit;
use sd3lab::model::registry::{LayerId, mmdit_linear_layers};
use sd3lab::quant::linearized::{DenoiserInputs, STATE_FILE, output_gradients};
use sd3lab::quant::sensitivity::{
    Scope, SensitivityConfig, SensitivityError, SensitivityEvent, SensitivityReport,
    rank_agreement, run_sensitivity,
};
use sd3lab::quant::{LayerQuant, fake_quantize};

mod common;

fn config(model: &str, calib: &Path, out: &Path) -> SensitivityConfig {
    SensitivityConfig {
        model: model.to_owned(),
        calib_dir: calib.to_owned(),
        bits: vec![2, 4, 8],
        group_size: 64,
        max_images: None,
        step_stride: None,
        layers: None,
        output_dir: out.to_owned(),
        use_cache: true,
        dtype: ModelDtype::Float32,
        scope: Scope::Linearized,
        batch_size: 1,
        overwrite: false,
        probes: None,
        probe_seed: 0,
    }
}

fn load_model(model: &str) -> Mmdit {
    let files = sd3lab::model::source::resolve(model, &CancelToken::new(), &mut |_| {}).unwrap();
    sd3lab::model::source::load_mmdit_inferred(&files.checkpoint, Dtype::Float32).unwrap()
}

/// The records a sweep over `calib` reads, as the sweep batches them one at a time: latent
/// (duplicated to the CFG pair), text, pooled text and one timestep per row.
fn records(calib: &Path, max_images: usize) -> Vec<[Array; 4]> {
    let set = CalibrationSet::open(calib, &OpenOptions::default()).unwrap();
    let metas = set.select(&SampleFilter {
        max_images: Some(max_images),
        step_stride: None,
        bucket: None,
    });
    metas
        .iter()
        .map(|m| {
            let load = |k| {
                sd3lab::model::tensor_io::from_npy(&set.load(m, k).unwrap(), Dtype::Float32)
                    .unwrap()
            };
            let context = load(SampleKey::Conditioning);
            let rows = context.shape()[0];
            let x = load(SampleKey::X);
            let x = if x.shape()[0] == rows {
                x
            } else {
                mlx_rs::ops::concatenate(&vec![x; rows as usize], 0).unwrap()
            };
            let t = Array::from_slice(&vec![m.timestep as f32; rows as usize], &[rows]);
            [x, context, load(SampleKey::PooledConditioning), t]
        })
        .collect()
}

fn inputs(r: &[Array; 4]) -> DenoiserInputs<'_> {
    DenoiserInputs {
        x: &r[0],
        context: &r[1],
        pooled: &r[2],
        timestep: &r[3],
    }
}

fn values(a: &Array) -> Vec<f32> {
    sd3lab::model::nn::to_vec_f32(a).unwrap()
}

#[test]
fn gradients_of_every_linear_weight_match_finite_differences() {
    let root = tempfile::tempdir().unwrap();
    let (model, calib) = common::tiny_model_and_calibration(root.path(), 1, 2);
    let m = load_model(&model);
    let record = &records(&calib, 1)[0];
    let ids: Vec<LayerId> = mmdit_linear_layers(&m.config)
        .iter()
        .map(|l| l.id)
        .collect();
    let weights = m.weights_of(&ids).unwrap();
    let out_shape = m
        .denoise(&record[0], &record[1], &record[2], &record[3])
        .unwrap()
        .shape()
        .to_vec();
    let n: usize = out_shape.iter().map(|&d| d as usize).product();
    let v = Array::from_slice(
        &sd3lab::quant::linearized::probe_values(3, 0, 0, n),
        &out_shape,
    );
    let grads = output_gradients(&m, &ids, &weights, inputs(record), &v).unwrap();
    assert_eq!(grads.len(), ids.len());
    // L(W) = v · f(W), in float64 sums of the float32 outputs.
    let loss = |id: LayerId, w: &Array| -> f64 {
        let _plain = PlainMlx::enter();
        let out = m
            .with_weights(&[id], std::slice::from_ref(w))
            .unwrap()
            .denoise(&record[0], &record[1], &record[2], &record[3])
            .unwrap();
        values(&out)
            .iter()
            .zip(values(&v))
            .map(|(&y, v)| y as f64 * v as f64)
            .sum()
    };
    let mut checked = 0;
    for ((id, w), g) in ids.iter().zip(&weights).zip(&grads) {
        assert_eq!(g.shape(), w.shape(), "{}", id.name());
        let gv = values(g);
        let wv = values(w);
        // The two entries with the largest gradient (a finite difference of a tiny one is
        // rounding noise in float32).
        let mut order: Vec<usize> = (0..gv.len()).collect();
        order.sort_by(|&a, &b| gv[b].abs().total_cmp(&gv[a].abs()));
        let scale = gv[order[0]].abs() as f64;
        // The last block's text queries are computed and discarded (only its keys and values
        // reach the image stream): their gradient is zero, and so is the difference.
        let discarded = matches!(
            id,
            LayerId::Block { block, stream: sd3lab::model::registry::Stream::Text, kind: sd3lab::model::registry::LayerKind::AttnQ }
                if *block + 1 == m.config.depth
        );
        assert_eq!(
            scale == 0.0,
            discarded,
            "{}: largest gradient {scale}",
            id.name()
        );
        for &i in &order[..2] {
            // Large enough for float32 rounding of the loss (about 1e-4) to stay below 1 %,
            // small enough for the curvature: measured, the difference is flat from 1.5e-3 to
            // 5e-3 and noise below 5e-4.
            let eps = 4e-3f32;
            let shifted = |d: f32| {
                let mut x = wv.clone();
                x[i] += d;
                Array::from_slice(&x, w.shape())
            };
            let fd = (loss(*id, &shifted(eps)) - loss(*id, &shifted(-eps))) / (2.0 * eps as f64);
            let ad = gv[i] as f64;
            assert!(
                (fd - ad).abs() <= 0.03 * ad.abs() + 1e-3 * scale && (!discarded || fd == 0.0),
                "{} entry {i}: autograd {ad} vs finite difference {fd}",
                id.name()
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 2 * ids.len());
}

/// The exact first-order squared error of layer `id` at `bits` over the records, as an MSE:
/// Σ ‖J ΔW‖² / elements, with J ΔW from a JVP.
fn first_order_mse(m: &Mmdit, recs: &[[Array; 4]], id: LayerId, bits: i32) -> f64 {
    let w = m.weights_of(&[id]).unwrap().remove(0);
    let dw = fake_quantize(
        &w,
        LayerQuant {
            bits,
            group_size: 64,
        },
    )
    .unwrap()
    .subtract(&w)
    .unwrap();
    let (mut sum, mut elements) = (0.0, 0usize);
    for r in recs {
        let _plain = PlainMlx::enter();
        let f = |p: &[Array]| -> Result<Vec<Array>, mlx_rs::error::Exception> {
            Ok(vec![
                m.with_weights(&[id], p)?
                    .denoise(&r[0], &r[1], &r[2], &r[3])?,
            ])
        };
        let (_, tangents) = mlx_rs::transforms::fallible_jvp(
            f,
            std::slice::from_ref(&w),
            std::slice::from_ref(&dw),
        )
        .unwrap();
        let t = values(&tangents[0]);
        sum += t.iter().map(|&x| x as f64 * x as f64).sum::<f64>();
        elements += t.len();
    }
    sum / elements as f64
}

fn all_bucket(r: &SensitivityReport, name: &str, bits: i32) -> (f64, f64) {
    let (mse, se) = all_bucket_measured(r, name, bits);
    (mse, se.unwrap())
}

/// A layer's `all` row at `bits`: the MSE and its standard error (estimates only).
fn all_bucket_measured(r: &SensitivityReport, name: &str, bits: i32) -> (f64, Option<f64>) {
    let row = r
        .layers
        .iter()
        .find(|l| l.name == name)
        .unwrap()
        .results
        .iter()
        .find(|x| x.bits == bits && x.bucket == Bucket::All)
        .unwrap();
    (row.mse, row.mse_stderr)
}

#[test]
fn the_estimate_converges_to_the_first_order_error_and_tracks_the_measured_one() {
    let root = tempfile::tempdir().unwrap();
    let (model, calib) = common::tiny_model_and_calibration(root.path(), 2, 2);
    let m = load_model(&model);
    let recs = records(&calib, 1);
    // An embedder (its error reaches the output through every adaLN), a block layer and the
    // final projection.
    let names = [
        "t_embedder.mlp.layers.2",
        "multimodal_transformer_blocks.1.image_transformer_block.mlp.fc1",
        "final_layer.linear",
    ];
    let run = |probes: usize, dir: &str| {
        let mut cfg = config(&model, &calib, &root.path().join(dir));
        cfg.max_images = Some(1);
        cfg.bits = vec![4, 8];
        cfg.layers = Some(format!("^({})$", names.join("|").replace('.', r"\.")));
        cfg.probes = Some(probes);
        run_sensitivity(&cfg, &CancelToken::new(), &mut |_| {}).unwrap()
    };
    let few = run(4, "few");
    let many = run(200, "many");
    let exact_model = {
        let mut cfg = config(&model, &calib, &root.path().join("exact"));
        cfg.max_images = Some(1);
        cfg.bits = vec![8];
        cfg.scope = Scope::Model;
        cfg.layers = Some(format!("^({})$", names.join("|").replace('.', r"\.")));
        run_sensitivity(&cfg, &CancelToken::new(), &mut |_| {}).unwrap()
    };
    for name in names {
        let id = mmdit_linear_layers(&m.config)
            .into_iter()
            .find(|l| l.name == name)
            .unwrap()
            .id;
        for bits in [4, 8] {
            let exact = first_order_mse(&m, &recs, id, bits);
            let (est_few, se_few) = all_bucket(&few, name, bits);
            let (est, se) = all_bucket(&many, name, bits);
            eprintln!(
                "{name} w{bits}: first order {exact:.4e}; 4 probes {est_few:.4e} ± {se_few:.1e}; 200 probes {est:.4e} ± {se:.1e}"
            );
            // 50× the probes: about a seventh of the standard error (√(2/400) ≈ 7 % of the
            // value), and the estimate within a few standard errors of the first-order value.
            assert!(
                se < se_few / 3.0 && se < 0.12 * est,
                "{name} w{bits}: error bars {se} vs {se_few}"
            );
            assert!(
                (est - exact).abs() <= 4.0 * se,
                "{name} w{bits}: estimate {est} ± {se} vs first order {exact}"
            );
        }
        // At 8 bits the error is small enough for first order to be the measured error.
        let (est, se) = all_bucket(&many, name, 8);
        let (measured, _) = all_bucket_measured(&exact_model, name, 8);
        assert!(
            (est - measured).abs() <= 4.0 * se + 0.05 * measured,
            "{name} w8: linearized {est} ± {se} vs measured {measured}"
        );
    }
}

#[test]
fn it_ranks_layers_like_the_exact_model_scope() {
    let root = tempfile::tempdir().unwrap();
    let (model, calib) = common::tiny_model_and_calibration(root.path(), 2, 3);
    let mut exact = config(&model, &calib, &root.path().join("exact"));
    exact.scope = Scope::Model;
    exact.bits = vec![2, 4];
    let exact = run_sensitivity(&exact, &CancelToken::new(), &mut |_| {}).unwrap();
    let mut lin = config(&model, &calib, &root.path().join("lin"));
    lin.bits = vec![2, 4];
    let lin = run_sensitivity(&lin, &CancelToken::new(), &mut |_| {}).unwrap();
    // 6 records: the default is 3 probes each (16 passes or more in all).
    assert_eq!(lin.settings.probes.as_ref().unwrap().per_pass, 3);
    assert_eq!(lin.settings.metric_scope, Scope::Linearized);
    assert!(lin.pending.is_empty());
    assert!(!root.path().join("lin").join(STATE_FILE).exists());
    let agreement = rank_agreement(&exact, &lin);
    assert_eq!(agreement.len(), 2);
    for a in &agreement {
        eprintln!("{a:?}");
        assert!(a.layers > 25, "{a:?}");
        assert!(a.spearman >= 0.85, "{a:?}");
        assert!(a.top_overlap >= 7, "{a:?}");
    }
    // Batches of 2 records (one step bucket each): every bucket's rows, whose records add up
    // to `all`'s, and a ranking that still agrees.
    let mut batched = config(&model, &calib, &root.path().join("batched"));
    batched.bits = vec![2, 4];
    batched.batch_size = 2;
    let batched = run_sensitivity(&batched, &CancelToken::new(), &mut |_| {}).unwrap();
    let rows = &batched
        .layers
        .iter()
        .find(|l| !l.results.is_empty())
        .unwrap()
        .results;
    let n = |b: Bucket| {
        rows.iter()
            .find(|r| r.bits == 2 && r.bucket == b)
            .map(|r| r.n_samples)
            .unwrap()
    };
    assert_eq!(
        (
            n(Bucket::Early),
            n(Bucket::Mid),
            n(Bucket::Late),
            n(Bucket::All)
        ),
        (2, 2, 2, 6)
    );
    for a in rank_agreement(&exact, &batched) {
        assert!(a.spearman >= 0.8, "batch size 2: {a:?}");
    }
    // Estimates carry their standard error and no cosine; measured results the reverse.
    let row = &lin
        .layers
        .iter()
        .find(|l| !l.results.is_empty())
        .unwrap()
        .results[0];
    assert!(row.cosine.is_none() && row.mse_stderr.is_some_and(|e| e > 0.0));
    let row = &exact
        .layers
        .iter()
        .find(|l| !l.results.is_empty())
        .unwrap()
        .results[0];
    assert!(row.cosine.is_some() && row.mse_stderr.is_none());
    let csv = std::fs::read_to_string(root.path().join("lin/sensitivity.csv")).unwrap();
    let first = csv.lines().nth(1).unwrap();
    let cells: Vec<&str> = first.split(',').collect();
    assert_eq!(cells.len(), 12, "{first}");
    assert!(cells[9].is_empty() && !cells[11].is_empty(), "{first}");

    // `plan` takes the report, predicts additively, and `--validate` measures the plan.
    let out = common::sd3lab_command(
        root.path(),
        &[
            "plan",
            "--sensitivity",
            root.path().join("lin/sensitivity.json").to_str().unwrap(),
            "--target-bits",
            "3",
            "--output",
            root.path().join("plan.json").to_str().unwrap(),
        ],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.path().join("plan.json")).unwrap()).unwrap();
    assert!(
        plan["average_bits"].as_f64().unwrap() <= 3.0 + 1e-9,
        "{plan}"
    );
}

#[test]
fn plan_refines_with_exact_measurements_and_validates_a_linearized_plan() {
    let root = tempfile::tempdir().unwrap();
    let (model, calib) = common::tiny_model_and_calibration(root.path(), 2, 2);
    let mut cfg = config(&model, &calib, &root.path().join("lin"));
    cfg.max_images = Some(1);
    cfg.bits = vec![2, 4, 8];
    let lin = run_sensitivity(&cfg, &CancelToken::new(), &mut |_| {}).unwrap();
    // The exact sweep of two layers, same data and settings, refines the estimates.
    let two = r"^(final_layer\.linear|multimodal_transformer_blocks\.0\.image_transformer_block\.mlp\.fc2)$";
    let mut exact_cfg = config(&model, &calib, &root.path().join("exact"));
    exact_cfg.scope = Scope::Model;
    exact_cfg.max_images = Some(1);
    exact_cfg.layers = Some(two.into());
    let exact = run_sensitivity(&exact_cfg, &CancelToken::new(), &mut |_| {}).unwrap();
    let mut refined = lin.clone();
    assert_eq!(
        sd3lab::quant::linearized::refine(&mut refined, &exact).unwrap(),
        2
    );
    for l in &refined.layers {
        let want = match exact.layers.iter().find(|e| e.name == l.name) {
            Some(e) => &e.results,
            None => {
                &lin.layers
                    .iter()
                    .find(|e| e.name == l.name)
                    .unwrap()
                    .results
            }
        };
        assert_eq!(&l.results, want, "{}", l.name);
    }
    // Another run (other bit widths) is refused, saying why.
    let mut other_cfg = exact_cfg.clone();
    other_cfg.bits = vec![2, 4];
    other_cfg.output_dir = root.path().join("other");
    let other = run_sensitivity(&other_cfg, &CancelToken::new(), &mut |_| {}).unwrap();
    let e = sd3lab::quant::linearized::refine(&mut lin.clone(), &other).unwrap_err();
    assert!(e.to_string().contains("bits"), "{e}");
    let plan = root.path().join("plan.json");
    let out = common::sd3lab_command(
        root.path(),
        &[
            "plan",
            "--sensitivity",
            root.path().join("lin/sensitivity.json").to_str().unwrap(),
            "--refine",
            root.path().join("exact/sensitivity.json").to_str().unwrap(),
            "--target-bits",
            "4",
            "--validate",
            "--output",
            plan.to_str().unwrap(),
        ],
    )
    .output()
    .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 layers' estimates replaced"));

    // The CLI's sweep says how to measure its 10 most sensitive layers exactly, and the
    // pattern it prints selects them.
    let cli = common::sd3lab_command(
        root.path(),
        &[
            "sensitivity",
            "--model",
            &model,
            "--calib-dir",
            calib.to_str().unwrap(),
            "--max-images",
            "1",
            "--bits",
            "2,4,8",
            "--dtype",
            "float32",
            "--scope",
            "linearized",
            "--output-dir",
            root.path().join("cli").to_str().unwrap(),
        ],
    )
    .output()
    .unwrap();
    let said = String::from_utf8_lossy(&cli.stdout);
    assert!(cli.status.success(), "{said}");
    let pattern = said
        .split("--layers '")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .unwrap_or_else(|| panic!("no --layers suggestion in {said}"));
    let top = sd3lab::quant::sensitivity::most_sensitive(&lin, 2, 10);
    assert_eq!(top.len(), 10);
    let re = regex::Regex::new(pattern).unwrap();
    let selected: Vec<String> = lin
        .layers
        .iter()
        .filter(|l| re.is_match(&l.name))
        .map(|l| l.name.clone())
        .collect();
    let mut expected = top.clone();
    expected.sort_by_key(|n| lin.layers.iter().position(|l| &l.name == n));
    assert_eq!(selected, expected);
    // The most sensitive layer has the lowest SQNR of all at 2 bits.
    assert!(
        lin.layers
            .iter()
            .filter(|l| !l.results.is_empty())
            .all(|l| {
                let first = lin.layers.iter().find(|x| x.name == top[0]).unwrap();
                let at = |x: &sd3lab::quant::sensitivity::LayerResult| {
                    x.results
                        .iter()
                        .find(|r| r.bits == 2 && r.bucket == Bucket::All)
                        .unwrap()
                        .sqnr_db
                };
                at(first) <= at(l)
            })
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&std::fs::read(&plan).unwrap()).unwrap();
    let rows = plan["validation"]["rows"].as_array().unwrap();
    let all = rows.iter().find(|r| r["bucket"] == "all").unwrap();
    // Measured on the held-out image, with the additive prediction from the estimates.
    assert_eq!(all["n_samples"], 2);
    let (mse, predicted) = (
        all["mse"].as_f64().unwrap(),
        all["predicted_mse"].as_f64().unwrap(),
    );
    assert!(mse > 0.0 && predicted > 0.0, "{all}");
    assert!(
        predicted / mse > 0.2 && predicted / mse < 5.0,
        "measured {mse} vs predicted {predicted}"
    );
}

#[test]
fn a_cancelled_run_resumes_to_the_same_file_and_other_settings_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let (model, calib) = common::tiny_model_and_calibration(root.path(), 2, 2);
    let whole_dir = root.path().join("whole");
    let whole = config(&model, &calib, &whole_dir);
    run_sensitivity(&whole, &CancelToken::new(), &mut |_| {}).unwrap();

    let dir = root.path().join("resumed");
    let cfg = config(&model, &calib, &dir);
    let cancel = CancelToken::new();
    let report = run_sensitivity(&cfg, &cancel, &mut |e| {
        if let SensitivityEvent::BatchDone { done: 2, .. } = e {
            cancel.cancel();
        }
    })
    .unwrap();
    // Cancelled: nothing reported yet, every layer pending, the sums of 2 batches kept.
    assert!(report.layers.is_empty() && !report.pending.is_empty());
    let on_disk = sd3lab::quant::sensitivity::read_report(&dir.join("sensitivity.json")).unwrap();
    assert_eq!(on_disk.pending.len(), report.pending.len());
    assert!(dir.join(STATE_FILE).exists());

    // Other probes are another run: refused, naming the difference, and nothing replaced.
    let mut other = cfg.clone();
    other.probes = Some(7);
    let state = std::fs::read(dir.join(STATE_FILE)).unwrap();
    match run_sensitivity(&other, &CancelToken::new(), &mut |_| {}) {
        Err(SensitivityError::SettingsDiffer { differences, .. }) => {
            assert!(differences.contains("probes"), "{differences}")
        }
        r => panic!("{r:?}"),
    }
    assert_eq!(std::fs::read(dir.join(STATE_FILE)).unwrap(), state);

    // The same settings resume after the 2 saved batches and end equal, byte for byte.
    let mut resumed_from = None;
    run_sensitivity(&cfg, &CancelToken::new(), &mut |e| {
        if let SensitivityEvent::Probing { already_done, .. } = e {
            resumed_from = Some(already_done);
        }
    })
    .unwrap();
    assert_eq!(resumed_from, Some(2));
    for f in ["sensitivity.json", "sensitivity.csv"] {
        assert_eq!(
            std::fs::read(dir.join(f)).unwrap(),
            std::fs::read(whole_dir.join(f)).unwrap(),
            "{f}"
        );
    }
    assert!(!dir.join(STATE_FILE).exists());
    // A finished run is not redone.
    let mut probed = false;
    run_sensitivity(&cfg, &CancelToken::new(), &mut |e| {
        probed |= matches!(e, SensitivityEvent::BatchDone { .. });
    })
    .unwrap();
    assert!(!probed);

    // A damaged state file is refused, naming it; --overwrite starts over.
    let cancel = CancelToken::new();
    let mut fresh = cfg.clone();
    fresh.overwrite = true;
    run_sensitivity(&fresh, &cancel, &mut |e| {
        if let SensitivityEvent::BatchDone { done: 1, .. } = e {
            cancel.cancel();
        }
    })
    .unwrap();
    std::fs::write(dir.join(STATE_FILE), b"{\"schema\": 3").unwrap();
    match run_sensitivity(&cfg, &CancelToken::new(), &mut |_| {}) {
        Err(e @ SensitivityError::UnreadablePrevious { .. }) => {
            assert!(e.to_string().contains(STATE_FILE), "{e}")
        }
        r => panic!("{r:?}"),
    }
    run_sensitivity(&fresh, &CancelToken::new(), &mut |_| {}).unwrap();
    assert_eq!(
        std::fs::read(dir.join("sensitivity.json")).unwrap(),
        std::fs::read(whole_dir.join("sensitivity.json")).unwrap()
    );

    // A finished run asked for layers it did not estimate is refused, not silently kept.
    let mut wider = cfg.clone();
    wider.layers = None;
    let mut narrower = cfg.clone();
    narrower.layers = Some("^final_layer".into());
    let narrow_dir = root.path().join("narrow");
    narrower.output_dir = narrow_dir.clone();
    run_sensitivity(&narrower, &CancelToken::new(), &mut |_| {}).unwrap();
    wider.output_dir = narrow_dir;
    match run_sensitivity(&wider, &CancelToken::new(), &mut |_| {}) {
        Err(SensitivityError::SettingsDiffer { differences, .. }) => {
            assert!(differences.contains("layers"), "{differences}")
        }
        r => panic!("{r:?}"),
    }
    // Probes with another scope are refused.
    let mut exact = cfg.clone();
    exact.scope = Scope::Model;
    exact.probes = Some(4);
    assert!(matches!(
        run_sensitivity(&exact, &CancelToken::new(), &mut |_| {}),
        Err(SensitivityError::ProbesNeedLinearized(Scope::Model))
    ));

    // Probes out of range are refused before any work.
    let mut bad = cfg.clone();
    bad.probes = Some(0);
    assert!(matches!(
        run_sensitivity(&bad, &CancelToken::new(), &mut |_| {}),
        Err(SensitivityError::ProbesOutOfRange(0))
    ));
    let out = common::sd3lab_command(
        root.path(),
        &[
            "sensitivity",
            "--model",
            &model,
            "--calib-dir",
            calib.to_str().unwrap(),
            "--scope",
            "linearized",
            "--probes",
            "0",
            "--output-dir",
            root.path().join("cli").to_str().unwrap(),
        ],
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--probes"));
}
