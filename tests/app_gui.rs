//! The desktop app driven headless with egui_kittest: tab switching, a calibration folder's
//! counts per bucket and a sample's metadata, a calibration run started and cancelled from the
//! Generate tab, the sensitivity plots, plan builder and exports from a fixture, and snapshots
//! of each tab rendered by wgpu on the software renderer.

use std::path::Path;

use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use sd3lab::app::{GuiOptions, SdApp, Tab};

mod app_common;
use app_common::*;

fn options(tab: Tab) -> GuiOptions {
    GuiOptions {
        tab: Some(tab),
        persist: false,
        ..GuiOptions::default()
    }
}

/// The status bar shows memory figures, the disk estimate free space and the indexing time,
/// which vary by machine and run.
fn mask_varying(h: &mut Harness<'static, SdApp>) {
    h.mask(egui::Rect::from_min_max(
        egui::pos2(0.0, 770.0),
        egui::pos2(1280.0, 800.0),
    ));
    let mut rects: Vec<egui::Rect> = h
        .query_all_by_label_contains("Disk: about")
        .chain(h.query_all_by_label_contains("files in "))
        .map(|n| n.rect())
        .collect();
    // Name the model folder and the working directory: masked to the window's right edge,
    // whatever the path's length.
    rects.extend(
        h.query_all_by_label_contains("decoded through the VAE of")
            .chain(h.query_all_by_label_contains("Base folder: "))
            .map(|n| n.rect().with_max_x(1280.0)),
    );
    // Text fields holding temporary paths.
    for label in [
        "Report",
        "Plan file",
        "Calibration folder",
        "Output folder",
        "VAE of model",
    ] {
        rects.extend(h.query_all_by_label(label).map(|n| n.rect()));
    }
    for r in rects {
        h.mask(r);
    }
}

#[test]
fn switching_tabs_shows_each_tab() {
    let mut h = harness(options(Tab::Generate));
    h.run_steps(3);
    assert!(h.query_by_label("Calibration data").is_some());
    h.get_by_label("Samples").click();
    h.run_steps(2);
    assert_eq!(h.state().persisted.tab, Tab::Samples);
    assert!(
        h.query_by_label("Open a calibration folder to browse its samples.")
            .is_some()
    );
    h.get_by_label("Sensitivity").click();
    h.run_steps(2);
    assert_eq!(h.state().persisted.tab, Tab::Sensitivity);
    assert!(
        h.query_by_label("Open a sweep's folder or its sensitivity.json, or run a sweep.")
            .is_some()
    );
    h.get_by_label("Generate").click();
    h.run_steps(2);
    assert_eq!(h.state().persisted.tab, Tab::Generate);
    wait_until(&mut h, "the worker", |a| !a.busy());
    mask_varying(&mut h);
    h.snapshot("generate_tab");
}

/// `auto` with no sd3-medium in the (empty, test-owned) Hugging Face cache: the Samples tab's
/// VAE decode falls back to the tiny model, and the tab says so, naming its model field.
#[test]
fn samples_tab_warns_when_auto_falls_back_to_the_tiny_model() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("calib");
    calibration(&dir, 1, 2);
    let mut h = harness(GuiOptions {
        calib_dir: Some(dir.clone()),
        model: Some("auto".into()),
        model_locations: Some(sd3lab::model::source::ModelLocations {
            hub_cache: root.path().join("empty-hub"),
            cache_dir: root.path().join("sd3lab-cache"),
            // Nothing is downloaded for `auto`; a refused port if it ever were.
            endpoint: "http://127.0.0.1:9".into(),
            token: None,
        }),
        ..options(Tab::Samples)
    });
    wait_until(&mut h, "the folder and the first previews", |a| {
        a.samples.set.is_some() && !a.busy() && !a.samples.waiting_for_previews()
    });
    assert!(
        h.query_by_label_contains(
            "warning: sd3-medium is not in the Hugging Face cache: using the built-in tiny demo model"
        )
        .is_some(),
        "the fallback warning is shown"
    );
    let warning = h.state().samples.model_notice.warning.clone().unwrap();
    assert!(
        warning.contains("Type sd3-medium or a model folder into \"VAE of model\""),
        "{warning}"
    );
    assert!(!warning.contains("--"), "no CLI flag in the app: {warning}");
    assert_eq!(h.state().samples.model_notice.download, None);
    let decoded = h.state().samples.decoded("samples/000000_000.npz");
    match decoded {
        Some(Ok(img)) => assert_eq!((img.width, img.height), (64, 64)),
        other => panic!("decoded through the tiny model's VAE: {other:?}"),
    }
    assert!(
        root.path().join("sd3lab-cache/models").is_dir(),
        "the tiny model went to the given cache, not the user's"
    );
}

#[test]
fn samples_tab_counts_buckets_and_shows_a_sample() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("calib");
    calibration(&dir, 2, 3);
    let mut h = harness(GuiOptions {
        calib_dir: Some(dir.clone()),
        model: Some(tiny_model()),
        ..options(Tab::Samples)
    });
    wait_until(&mut h, "the folder and the first previews", |a| {
        a.samples.set.is_some() && !a.busy() && !a.samples.waiting_for_previews()
    });
    // 2 images × 3 steps: one step per bucket each.
    assert!(
        h.query_by_label_contains(
            "2 images x 3 steps; 6 samples selected (early 2, mid 2, late 2)"
        )
        .is_some()
    );
    assert!(h.query_by_label("no problems found").is_some());
    // Select the second image's third step (numbered from 1) and read its metadata.
    h.get_by_label_contains("img    2 step   3 late").click();
    wait_until(&mut h, "the sample's previews", |a| {
        a.samples.selected == Some(5) && !a.samples.waiting_for_previews()
    });
    assert!(h.query_by_label("samples/000001_002.npz").is_some());
    assert_eq!(
        h.get_all_by_label("late").count(),
        2,
        "the bucket filter and the sample's bucket"
    );
    assert!(h.query_by_label("[2, 154, 4096] Float32").is_some());
    assert!(
        h.query_by_label_contains("latent x: 16 channels of 8x8")
            .is_some()
    );
    // Keyboard: up goes to the previous sample.
    h.key_press(egui::Key::ArrowUp);
    h.run_steps(2);
    assert_eq!(h.state().samples.selected, Some(4));
    wait_until(&mut h, "previews", |a| !a.samples.waiting_for_previews());
    // The bucket filter narrows the list.
    h.state_mut().persisted.samples.bucket = Some(sd3lab::calib::Bucket::Mid);
    h.run_steps(2);
    assert!(
        h.query_by_label_contains("2 samples selected (early 0, mid 2, late 0)")
            .is_some()
    );
    h.state_mut().persisted.samples.bucket = None;
    // The tab's report, beside the calibration folder and named after it, written on a
    // helper thread.
    h.get_by_label("Report (HTML)").click();
    wait_until(&mut h, "the report", |a| !a.busy());
    let html = std::fs::read_to_string(root.path().join("calib-samples-report.html")).unwrap();
    for needle in [
        "samples per step bucket",
        "timestep by step",
        "conditioning",
        "6 of 6",
        "<svg",
    ] {
        assert!(
            html.contains(needle),
            "{needle} missing from the samples report"
        );
    }
    let csv = std::fs::read_to_string(root.path().join("calib-samples-report_data.csv")).unwrap();
    assert_eq!(csv.lines().count(), 7);
    h.state_mut().samples.report_message = None;
    h.state_mut().samples.selected = Some(0);
    wait_until(&mut h, "previews", |a| !a.samples.waiting_for_previews());
    mask_varying(&mut h);
    h.snapshot("samples_tab");
}

#[test]
fn generate_tab_writes_a_calibration_run_and_cancels_one() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("run");
    let mut h = harness(GuiOptions {
        model: Some(tiny_model()),
        ..options(Tab::Generate)
    });
    {
        let g = &mut h.state_mut().persisted.generate;
        g.calib_dir = dir.display().to_string();
        g.num_images = 2;
        g.num_steps = 3;
        g.height = 64;
        g.width = 64;
    }
    h.run_steps(2);
    h.get_by_label("Start").click();
    h.run_steps(2);
    assert!(h.state().generate.is_running());
    wait_until(&mut h, "the calibration run", |a| !a.generate.is_running());
    let msg = format!("{:?}", h.state().generate.message);
    assert!(msg.contains("done: 2 of 2 images"), "{msg}");
    assert_eq!(
        std::fs::read_dir(dir.join("samples")).unwrap().count(),
        6,
        "one npz per (image, step)"
    );
    assert!(dir.join("images/000001.png").is_file() && dir.join("manifest.json").is_file());
    assert_eq!(h.state().generate.gallery.len(), 2);
    assert!(h.query_by_label_contains("gallery: 2 images").is_some());
    // The run's report: settings and both images embedded with their prompts.
    h.get_by_label("Report (HTML)").click();
    wait_until(&mut h, "the report", |a| !a.busy());
    let html = std::fs::read_to_string(root.path().join("run-calibration-report.html")).unwrap();
    assert_eq!(html.matches("data:image/png;base64,").count(), 2);
    assert!(html.contains("images completed") && html.contains("#1 "));
    assert!(
        root.path()
            .join("run-calibration-report_data.csv")
            .is_file()
    );

    // Other settings in the same folder are refused, pointing at the tab's control (not at a
    // CLI flag); ticking it starts over.
    h.state_mut().persisted.generate.seed = 7;
    wait_until(&mut h, "the disk status", |a| !a.busy());
    h.get_by_label("Start / Resume").click();
    wait_until(&mut h, "the refusal", |a| !a.generate.is_running());
    let msg = format!("{:?}", h.state().generate.message);
    assert!(
        msg.contains("different settings")
            && msg.contains("Start over (delete existing data)")
            && !msg.contains("--"),
        "{msg}"
    );
    h.get_by_label("Start over (delete existing data)").click();
    h.run_steps(2);
    assert!(h.state().persisted.generate.overwrite);
    h.get_by_label("Start / Resume").click();
    h.run_steps(2);
    wait_until(&mut h, "the new run", |a| !a.generate.is_running());
    let msg = format!("{:?}", h.state().generate.message);
    assert!(msg.contains("done: 2 of 2 images"), "{msg}");
    let manifest = sd3lab::calib::Manifest::read(&dir).unwrap().unwrap();
    assert_eq!(manifest.extra["generation"]["seed"], 7);
    h.get_by_label("Start over (delete existing data)").click();
    h.run_steps(2);
    assert!(!h.state().persisted.generate.overwrite);

    // A sensitivity sweep on that run, started from the Sensitivity tab.
    h.get_by_label("Sensitivity").click();
    {
        let s = &mut h.state_mut().persisted.sensitivity;
        s.calib_dir = dir.display().to_string();
        s.output_dir = root.path().join("sens").display().to_string();
        s.layers = "^final_layer|blocks\\.1\\.image.*fc1".into();
    }
    h.run_steps(2);
    h.get_by_label("Start / Resume sweep").click();
    h.run_steps(2);
    assert!(h.state().sensitivity.is_running());
    wait_until(&mut h, "the sweep", |a| {
        !a.sensitivity.is_running() && !a.busy()
    });
    let msg = format!("{:?}", h.state().sensitivity.message);
    assert!(msg.contains("3 layers measured"), "{msg}");
    let report = h
        .state()
        .sensitivity
        .report
        .as_ref()
        .expect("the sweep's report is shown");
    assert_eq!(report.layers.len(), 3);
    assert!(
        h.query_by_label_contains("3 layers | scope model | bits [2, 4, 8]")
            .is_some()
    );
    h.get_by_label("Generate").click();
    h.run_steps(2);

    // A longer run, cancelled after its first new image; Start resumes it later.
    h.state_mut().persisted.generate.num_images = 40;
    h.run_steps(2);
    h.get_by_label("Start / Resume").click();
    wait_until(&mut h, "a new image", |a| {
        a.generate.progress.images_done >= 3
    });
    h.get_by_label("Cancel").click();
    wait_until(&mut h, "the cancellation", |a| !a.generate.is_running());
    let msg = format!("{:?}", h.state().generate.message);
    assert!(msg.contains("cancelled"), "{msg}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let done = manifest["n_completed"].as_u64().unwrap();
    assert!((3..40).contains(&done), "n_completed {done}");
}

/// The texts of an SVG figure (titles, tick labels, legends), trimmed.
fn svg_texts(svg: &str) -> Vec<String> {
    svg.split("</text>")
        .filter_map(|part| part.rsplit_once('>').map(|(_, t)| t.trim().to_owned()))
        .collect()
}

/// The fixture's layers with a 2-bit result over all steps, lowest SQNR (most sensitive) first,
/// read from the JSON directly.
fn by_sqnr_at_2_bits(json: &Path) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    let mut layers: Vec<(f64, String)> = v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| {
            let r = l["results"]
                .as_array()?
                .iter()
                .find(|r| r["bits"] == 2 && r["bucket"] == "all")?;
            Some((r["sqnr_db"].as_f64()?, l["name"].as_str()?.to_owned()))
        })
        .collect();
    layers.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(
        layers.len() > 15,
        "the fixture ranks more layers than the table shows"
    );
    layers.into_iter().map(|l| l.1).collect()
}

#[test]
fn sensitivity_tab_plots_plans_and_exports_from_a_fixture() {
    let root = tempfile::tempdir().unwrap();
    let json = sweep_fixture(root.path(), None);
    let mut h = harness(GuiOptions {
        sensitivity: Some(json.clone()),
        ..options(Tab::Sensitivity)
    });
    wait_until(&mut h, "the report", |a| {
        a.sensitivity.report.is_some() && !a.busy()
    });
    assert!(
        h.query_by_label_contains("32 layers | scope model | bits [2, 4, 8]")
            .is_some()
    );
    assert!(
        h.query_by_label("SQNR (dB) vs bits, the 10 most sensitive of 31 filtered layers (tick layers below to pick others)")
            .is_some()
    );
    // The ranking's rows, top to bottom, are the layers by SQNR at 2 bits (all steps), lowest
    // first, as the fixture's data says.
    let expected = by_sqnr_at_2_bits(&json);
    let heading = h
        .get_by_label("most sensitive layers at 2 bits (all)")
        .rect()
        .bottom();
    let mut rows: Vec<(f32, String)> = expected
        .iter()
        .filter_map(|name| {
            let tops: Vec<f32> = h
                .query_all_by_label(name)
                .map(|n| n.rect().top())
                .filter(|&top| top > heading)
                .collect();
            tops.first().map(|&top| (top, name.clone()))
        })
        .collect();
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    let shown: Vec<String> = rows.into_iter().map(|r| r.1).collect();
    assert_eq!(shown, expected[..15], "the ranking's rows");
    assert_eq!(shown[0], "y_embedder.mlp.layers.2");
    // Pick two layers for the plot by ticking them in the ranking.
    h.state_mut().persisted.sensitivity.pinned = vec![
        "y_embedder.mlp.layers.2".into(),
        "final_layer.linear".into(),
    ];
    h.run_steps(2);
    assert!(
        h.query_by_label("SQNR (dB) vs bits, 2 picked layers")
            .is_some()
    );
    h.get_by_label("Clear picks").click();
    h.run_steps(2);
    assert!(h.state().persisted.sensitivity.pinned.is_empty());
    // Filter by kind.
    h.state_mut().persisted.sensitivity.kind = Some(sd3lab::model::LayerKind::Adaln);
    h.run_steps(2);
    assert!(
        h.query_by_label("SQNR (dB) vs bits, the 5 most sensitive of 5 filtered layers (tick layers below to pick others)")
            .is_some()
    );
    h.state_mut().persisted.sensitivity.kind = None;
    // The heatmap view.
    h.get_by_label("Layer x bucket heatmap").click();
    h.run_steps(2);
    assert!(
        h.query_by_label_contains("layer x bucket at 2 bits (SQNR (dB)), the 31 most sensitive")
            .is_some()
    );
    // The plan builder: save the plan; then export a report.
    h.get_by_label("Plan builder").click();
    h.run_steps(2);
    assert!(
        h.query_by_label_contains("average 4.").is_some(),
        "plan summary"
    );
    // The plan goes beside the report, named by its objective and budget, with its Pareto
    // front beside it (named after it, so another plan's never replaces it).
    h.get_by_label("Save plan").click();
    wait_until(&mut h, "the plan files", |a| !a.busy());
    let plan = root.path().join("sens/plan-sqnr-4.50bits.json");
    let text = std::fs::read_to_string(&plan)
        .unwrap_or_else(|e| panic!("{e}: {:?}", h.state().sensitivity.message));
    let p: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(p["average_bits"].as_f64().unwrap() <= 4.5 + 1e-9);
    assert!(!p["layers"].as_object().unwrap().is_empty());
    let pareto =
        std::fs::read_to_string(root.path().join("sens/plan-sqnr-4.50bits.pareto.csv")).unwrap();
    assert!(
        pareto.starts_with("average_bits,summed_sqnr_db\n"),
        "{pareto}"
    );
    assert!(pareto.lines().count() > 10);
    let msg = format!("{:?}", h.state().sensitivity.message);
    assert!(
        msg.contains("saved ") && msg.contains("plan-sqnr-4.50bits.pareto.csv"),
        "{msg}"
    );
    h.get_by_label("Report (HTML)").click();
    wait_until(&mut h, "the report", |a| !a.busy());
    let html = std::fs::read_to_string(root.path().join("sens/report-sqnr-2bit.html")).unwrap();
    for needle in [
        "<svg",
        "SQNR (dB) vs bits",
        "layer x bucket",
        "y_embedder",
        "Pareto front",
    ] {
        assert!(html.contains(needle), "{needle} missing from the report");
    }
    h.get_by_label("Export plots (PNG + SVG)").click();
    wait_until(&mut h, "the figures", |a| !a.busy());
    // Each export gets its own folder, named by what it shows.
    let folder = std::cell::Cell::new("sens/figures-sqnr-2bit");
    let figure =
        |name: &str| std::fs::read_to_string(root.path().join(folder.get()).join(name)).unwrap();
    let svg = figure("ranking.svg");
    assert!(svg.contains("most sensitive layers at 2 bits") && svg.contains("y_embedder.2"));
    assert!(
        root.path()
            .join("sens/figures-sqnr-2bit/pareto.png")
            .is_file()
    );
    // The heatmap can be read alone: a colour bar labelled with the unit.
    assert!(svg_texts(&figure("heatmap.svg")).contains(&"SQNR (dB)".to_owned()));
    // The bits axis counts bits: whole-number ticks.
    let ticks = svg_texts(&figure("bits.svg"));
    assert!(
        ["2", "4", "8"]
            .iter()
            .all(|t| ticks.contains(&t.to_string()))
            && !ticks.iter().any(|t| t == "4.0"),
        "bits ticks: {ticks:?}"
    );

    // The exports show what the tab shows: its metric, kind filter and picked layers.
    {
        let s = &mut h.state_mut().persisted.sensitivity;
        s.metric = sd3lab::report::Metric::Mse;
        s.kind = Some(sd3lab::model::registry::LayerKind::Adaln);
        s.objective = sd3lab::quant::plan::Objective::Mse;
        s.pinned = vec!["final_layer.linear".into(), "context_embedder".into()];
        s.view = sd3lab::app::sensitivity_tab::View::Plots;
    }
    h.run_steps(2);
    h.get_by_label("Export plots (PNG + SVG)").click();
    wait_until(&mut h, "the figures", |a| !a.busy());
    folder.set("sens/figures-mse-2bit");
    let bits = figure("bits.svg");
    assert!(bits.contains("MSE vs bits"), "the tab's metric");
    assert!(
        bits.contains("final_layer.linear")
            && bits.contains("context_embedder")
            && !bits.contains("y_embedder"),
        "the picked layers"
    );
    let ranking = figure("ranking.svg");
    assert!(
        ranking.contains("adaLN") && !ranking.contains("attn"),
        "the kind filter"
    );
    assert!(svg_texts(&figure("heatmap.svg")).contains(&"MSE".to_owned()));
    assert!(
        figure("pareto.svg").contains("summed MSE"),
        "the plan's objective"
    );
    {
        let s = &mut h.state_mut().persisted.sensitivity;
        s.metric = sd3lab::report::Metric::Sqnr;
        s.kind = None;
        s.objective = sd3lab::quant::plan::Objective::Sqnr;
        s.pinned.clear();
        s.view = sd3lab::app::sensitivity_tab::View::Plan;
    }
    // The last export's link names a temporary folder: not part of the picture.
    h.state_mut().sensitivity.message = None;
    h.state_mut().sensitivity.written = None;
    h.run_steps(2);
    mask_varying(&mut h);
    h.snapshot("sensitivity_tab");
}

#[test]
fn compare_tab_snapshot_of_a_benchmark() {
    let root = tempfile::tempdir().unwrap();
    let dir = benchmark_fixture(root.path());
    let mut h = harness(GuiOptions {
        benchmark: Some(dir),
        ..options(Tab::Compare)
    });
    wait_until(&mut h, "the benchmark and its images", |a| {
        a.compare.folder.is_some() && !a.busy() && !a.compare.waiting_for_images()
    });
    // Another prompt than the first, against the reference.
    h.get_by_label_contains("#2  seed 2").click();
    wait_until(&mut h, "the images", |a| !a.compare.waiting_for_images());
    mask_varying(&mut h);
    // Latency and memory vary by machine and run: their columns are masked, from the s/img
    // header to the right edge, down to the views' toolbar.
    let header = h.get_by_label("s/img").rect();
    let views = h.get_by_label("Side by side").rect();
    let varying = egui::Rect::from_min_max(header.min, egui::pos2(1280.0, views.min.y));
    h.mask(varying);
    h.mask(h.get_by_label("Benchmark folder").rect());
    // Names the user's cache folder.
    let lpips = h.get_by_label_contains("LPIPS not measured").rect();
    h.mask(lpips.with_max_x(1280.0));
    h.snapshot("compare_tab");
}
