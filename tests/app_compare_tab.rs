//! The Compare tab's runs and summary driven headless with egui_kittest: a real tiny benchmark
//! opened shows its configurations and the numbers of its folder; a benchmark started from the
//! tab writes its folder and shows it; a run cancelled after its first image keeps its images
//! and Start resumes it; a run given Inception weights in the tab computes its metrics; a
//! folder that is not a benchmark is refused in words; the layout at the smallest window.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use sd3lab::app::compare_tab::{CANCEL_LABEL, INCEPTION_LABEL, START_LABEL};
use sd3lab::app::{GuiOptions, MIN_WINDOW_SIZE, SdApp, Tab};
use sd3lab::bench::BenchFolder;
use sd3lab::model::config::ModelDtype;

mod app_common;
use app_common::*;

/// The fixture benchmark (fp32, w8g64, w4g64; 4 images with metrics), made once per test
/// binary in a kept temporary folder (it takes ~20 s).
fn fixture() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = tempfile::tempdir().unwrap().keep();
        benchmark_fixture(&root)
    })
}

fn opened(dir: &Path) -> GuiOptions {
    GuiOptions {
        tab: Some(Tab::Compare),
        benchmark: Some(dir.to_owned()),
        persist: false,
        ..GuiOptions::default()
    }
}

fn options() -> GuiOptions {
    GuiOptions {
        tab: Some(Tab::Compare),
        persist: false,
        ..GuiOptions::default()
    }
}

fn shows(h: &Harness<'static, SdApp>, text: &str) -> bool {
    h.query_all_by_label(text).next().is_some()
}

fn message(h: &Harness<'static, SdApp>) -> String {
    format!("{:?}", h.state().compare.message)
}

/// Asserts that the summary table's row of `name` shows `cells` (the folder's own
/// `SummaryRow::cells`, `name` first) in its own row, left to right: a cell such as `-` or
/// `1.00x` elsewhere in the window does not count.
fn row_shows(h: &Harness<'static, SdApp>, name: &str, cells: &[String]) {
    assert_eq!(cells[0], name);
    // The table is above the image views, which may name the configuration too.
    let first = h
        .query_all_by_label(name)
        .min_by(|a, b| a.rect().top().total_cmp(&b.rect().top()))
        .unwrap_or_else(|| panic!("{name} is not shown"));
    let row = first.rect();
    let y = row.center().y;
    let mut left = row.left();
    for cell in &cells[1..] {
        let next = h
            .query_all_by_label(cell)
            .map(|n| n.rect())
            .filter(|r| r.top() <= y && y <= r.bottom() && r.left() > left)
            .min_by(|a, b| a.left().total_cmp(&b.left()))
            .unwrap_or_else(|| {
                panic!("{name}'s row lacks {cell:?} right of x = {left} (of {cells:?})")
            });
        left = next.left();
    }
}

/// Waits until the run clicked has been sent (or has already ended).
fn wait_started(h: &mut Harness<'static, SdApp>) {
    wait_until(h, "the benchmark to start", |a| {
        a.compare.is_running() || a.compare.message.is_some()
    });
}

/// Images on disk of the benchmark in `dir`, read independently of the app.
fn images_in(dir: &Path) -> usize {
    BenchFolder::open(dir)
        .map(|f| f.configurations.iter().map(|c| c.images.len()).sum())
        .unwrap_or(0)
}

/// The tab's run options for a tiny run (64×64, 2 steps, float32, metrics skipped) of
/// `configurations` against `reference` into `out`.
fn tiny_run(
    h: &mut Harness<'static, SdApp>,
    reference: &Path,
    out: &Path,
    configurations: &[&str],
    images: usize,
) {
    let o = &mut h.state_mut().persisted.compare;
    o.model = tiny_model();
    o.reference_dir = reference.display().to_string();
    o.output_dir = out.display().to_string();
    o.configurations = configurations.iter().map(|c| c.to_string()).collect();
    o.num_images = images;
    o.num_steps = 2;
    o.cfg_weight = 5.0;
    o.size = 64;
    o.dtype = Some(ModelDtype::Float32);
    o.skip_metrics = true;
}

#[test]
fn an_opened_benchmark_shows_its_configurations_and_the_folders_numbers() {
    let dir = fixture();
    let mut h = harness(opened(dir));
    wait_until(&mut h, "the benchmark to be read", |a| {
        a.compare.folder.is_some()
    });
    let folder = BenchFolder::open(dir).unwrap();
    let rows = folder.summary();
    let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["fp32", "w8g64", "w4g64"]);
    for name in names {
        assert!(shows(&h, name), "{name} is in the table");
    }
    // Every cell of the summary as the folder's own rows format it (not re-derived), in
    // w4g64's own row.
    let w4 = rows[2].cells();
    assert!(w4[1] != "-", "the fixture has FID");
    row_shows(&h, "w4g64", &w4);
    // The headers say what they are.
    assert!(shows(&h, "FID") && shows(&h, "vs fp32"));
    // LPIPS has no weights in tests: the tab says why its column is empty.
    assert!(
        h.query_all_by_label_contains("LPIPS not measured")
            .next()
            .is_some(),
        "the missing LPIPS is explained"
    );
}

#[test]
fn a_folder_that_is_not_a_benchmark_is_refused_in_the_tab_and_the_status_bar() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("notes.txt"), "not a benchmark").unwrap();
    let mut h = harness(opened(root.path()));
    wait_until(&mut h, "the folder to be read", |a| !a.compare.is_loading());
    assert!(h.state().compare.folder.is_none());
    let m = message(&h);
    assert!(
        m.contains("is not a benchmark folder") && m.contains("results.json"),
        "{m}"
    );
    let latest = h.state().shared.errors.latest().map(|e| e.headline());
    assert!(
        latest
            .as_deref()
            .is_some_and(|l| l.contains("is not a benchmark folder")),
        "{latest:?}"
    );
    assert!(
        h.query_all_by_label_contains("is not a benchmark folder")
            .count()
            >= 2,
        "said in the tab and in the status bar"
    );
}

#[test]
fn a_benchmark_started_from_the_tab_writes_its_folder_and_shows_it() {
    let root = tempfile::tempdir().unwrap();
    let reference = root.path().join("reference");
    reference_set(&reference, 2);
    let out = root.path().join("bench");
    let mut h = harness(options());
    tiny_run(&mut h, &reference, &out, &["fp32", "w4"], 2);
    h.run_steps(2);
    h.get_by_label(START_LABEL).click();
    wait_started(&mut h);
    wait_until(&mut h, "the benchmark to finish", |a| {
        !a.compare.is_running()
    });
    wait_until(&mut h, "the results to be read", |a| {
        !a.compare.is_loading()
    });
    let m = message(&h);
    assert!(m.contains("Ok(\"done"), "{m}");
    assert!(out.join("results.json").is_file());
    assert_eq!(images_in(&out), 4);
    let folder = h.state().compare.folder.clone().expect("the run is shown");
    assert_eq!(folder.dir, out);
    assert!(shows(&h, "w4g64") && shows(&h, "fp32"));
    // Metrics were skipped: the table says so.
    assert!(
        h.query_all_by_label_contains("no image-quality metrics in this run")
            .next()
            .is_some()
    );
    // The field shows the run: Start again resumes it.
    assert_eq!(
        h.state().persisted.compare.benchmark_dir,
        out.display().to_string()
    );
}

#[test]
fn a_cancelled_benchmark_keeps_its_images_and_start_resumes_it() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("bench");
    let mut h = harness(options());
    // No reference (the shipped prompts; metrics skipped) and 24 steps an image: each image
    // takes long enough that Cancel lands while the run is in its first images.
    tiny_run(&mut h, Path::new(""), &out, &["fp32", "w4"], 6);
    h.state_mut().persisted.compare.num_steps = 24;
    h.run_steps(2);
    h.get_by_label(START_LABEL).click();
    wait_started(&mut h);
    // Cancel as soon as the first image is done: the run stops after the image being
    // generated then.
    wait_until(&mut h, "the first image", |a| {
        a.compare.progress.images_done > 0 || !a.compare.is_running()
    });
    assert!(h.state().compare.is_running(), "{}", message(&h));
    h.get_by_label(CANCEL_LABEL).click();
    h.run_steps(2);
    assert!(
        shows(&h, "cancelling...") || !h.state().compare.is_running(),
        "Cancel says so at once: {}",
        h.state().compare.progress.text()
    );
    wait_until(&mut h, "the benchmark to stop", |a| !a.compare.is_running());
    wait_until(&mut h, "the results to be read", |a| {
        !a.compare.is_loading()
    });
    let m = message(&h);
    assert!(m.contains("Ok(\"cancelled"), "{m}");
    let kept = images_in(&out);
    assert!((1..12).contains(&kept), "{kept} of 12 images kept");
    // The images kept are shown.
    let folder = h.state().compare.folder.clone().expect("the run is shown");
    let shown: usize = folder.configurations.iter().map(|c| c.images.len()).sum();
    assert_eq!(shown, kept);
    // Starting again into the same folder resumes: only the rest are generated.
    h.get_by_label(START_LABEL).click();
    wait_started(&mut h);
    wait_until(&mut h, "the resumed benchmark to finish", |a| {
        !a.compare.is_running()
    });
    wait_until(&mut h, "the results to be read", |a| {
        !a.compare.is_loading()
    });
    let m = message(&h);
    assert!(m.contains("Ok(\"done"), "{m}");
    assert_eq!(h.state().compare.progress.done_before, kept);
    assert_eq!(images_in(&out), 12);
    let folder = h.state().compare.folder.clone().unwrap();
    assert!(folder.configurations.iter().all(|c| c.result.images == 6));
}

#[test]
fn a_run_with_inception_weights_typed_in_the_tab_computes_its_metrics() {
    let root = tempfile::tempdir().unwrap();
    let reference = root.path().join("reference");
    reference_set(&reference, 2);
    let weights = synthetic_inception(root.path());
    let out = root.path().join("bench");
    let mut h = harness(options());
    tiny_run(&mut h, &reference, &out, &["fp32", "w4"], 2);
    h.state_mut().persisted.compare.skip_metrics = false;
    h.run_steps(2);
    let field = h.get_by_label(INCEPTION_LABEL);
    field.focus();
    field.type_text(&weights.display().to_string());
    h.run_steps(1);
    assert_eq!(
        h.state().persisted.compare.inception_weights,
        weights.display().to_string()
    );
    h.get_by_label(START_LABEL).click();
    wait_started(&mut h);
    wait_until(&mut h, "the benchmark to finish", |a| {
        !a.compare.is_running()
    });
    wait_until(&mut h, "the results to be read", |a| {
        !a.compare.is_loading()
    });
    let m = message(&h);
    assert!(m.contains("Ok(\"done"), "{m}");
    let rows = BenchFolder::open(&out).unwrap().summary();
    let w4 = rows
        .iter()
        .find(|r| r.name == "w4g64")
        .expect("w4g64 ran")
        .cells();
    assert!(w4[1] != "-", "w4g64 has a FID: {w4:?}");
    row_shows(&h, "w4g64", &w4);
}

#[test]
fn at_the_smallest_window_the_views_get_room_under_the_summary() {
    let dir = fixture();
    let mut h = harness_sized(opened(dir), MIN_WINDOW_SIZE);
    wait_until(&mut h, "the benchmark to be read", |a| {
        a.compare.folder.is_some()
    });
    let [w, hgt] = MIN_WINDOW_SIZE;
    for label in ["Open", "Summary table", "Plots", "w4g64"] {
        let r = h.query_all_by_label(label).next().unwrap().rect();
        assert!(
            r.right() <= w && r.bottom() <= hgt,
            "{label} clipped: {r:?}"
        );
    }
    // The summary's table stops in the top part of the window: the image views below it
    // keep most of the height.
    let table_bottom = h
        .query_all_by_label("w4g64")
        .next()
        .unwrap()
        .rect()
        .bottom();
    assert!(
        table_bottom < hgt * 0.6,
        "the summary takes {table_bottom} of {hgt}"
    );
}

#[test]
fn the_exports_write_the_report_and_the_plots_with_the_configurations() {
    let dir = fixture();
    let folder = BenchFolder::open(dir).unwrap();
    let rows = folder.summary();
    let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    let w4_fid = rows[2].cells()[1].clone();
    let mut h = harness(opened(dir));
    wait_until(&mut h, "the benchmark to be read", |a| {
        a.compare.folder.is_some()
    });
    let export = |h: &mut Harness<'static, SdApp>, button: &str| -> PathBuf {
        h.state_mut().compare.written = None;
        h.get_by_label(button).click();
        wait_until(h, button, |a| {
            !a.compare.is_loading() && a.compare.written.is_some()
        });
        let m = message(h);
        assert!(m.contains("Ok(\"wrote"), "{button}: {m}");
        let written = h.state().compare.written.clone().unwrap();
        assert!(
            shows(h, &written.display().to_string()),
            "the written path is a link"
        );
        written
    };
    for (button, ext) in [("Report (HTML)", "html"), ("Report (Markdown)", "md")] {
        let path = export(&mut h, button);
        assert_eq!(path.extension().unwrap(), ext);
        // Beside the benchmark, named after it.
        assert_eq!(path.parent(), dir.parent());
        assert!(
            path.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("bench-benchmark-report"),
            "{path:?}"
        );
        let text = std::fs::read_to_string(&path).unwrap();
        for name in &names {
            assert!(text.contains(name), "{ext} names {name}");
        }
        assert!(text.contains(&w4_fid), "{ext} has w4g64's FID {w4_fid}");
    }
    let figures = export(&mut h, "Plots (PNG + SVG)");
    assert!(figures.is_dir() && figures.parent() == dir.parent());
    for stem in ["quality-vs-weights", "latency", "peak-memory"] {
        let svg = std::fs::read_to_string(figures.join(format!("{stem}.svg"))).unwrap();
        for name in &names {
            // fp32's FID is on the quality plot too: every configuration is labelled.
            assert!(svg.contains(name), "{stem}.svg names {name}");
        }
        let png = image::open(figures.join(format!("{stem}.png"))).unwrap();
        assert_eq!((png.width(), png.height()), (900, 520));
    }
    // A second export never replaces the first.
    let again = export(&mut h, "Plots (PNG + SVG)");
    assert_ne!(again, figures);
}

#[test]
fn match_the_reference_fills_the_run_with_its_settings_and_the_run_is_accepted() {
    let root = tempfile::tempdir().unwrap();
    let reference = root.path().join("reference");
    reference_set(&reference, 2);
    let out = root.path().join("bench");
    let mut h = harness(options());
    tiny_run(&mut h, &reference, &out, &["fp32"], 5);
    {
        // Settings the reference was not made with: a run would be refused.
        let o = &mut h.state_mut().persisted.compare;
        o.num_steps = 7;
        o.size = 128;
        o.cfg_weight = 2.0;
        o.dtype = None;
    }
    // The run panel is open: no benchmark folder is shown.
    h.run_steps(2);
    h.get_by_label("Match the reference").click();
    wait_until(&mut h, "the reference to be read", |a| {
        a.persisted.compare.num_steps == 2
    });
    let o = h.state().persisted.compare.clone();
    assert_eq!((o.num_steps, o.size, o.cfg_weight), (2, 64, 5.0));
    assert_eq!(o.dtype, Some(ModelDtype::Float32));
    assert_eq!(o.num_images, 2, "the reference has 2 images");
    assert!(
        message(&h).contains("settings of the reference"),
        "{}",
        message(&h)
    );
    h.get_by_label(START_LABEL).click();
    wait_started(&mut h);
    wait_until(&mut h, "the benchmark to finish", |a| {
        !a.compare.is_running()
    });
    let m = message(&h);
    assert!(m.contains("Ok(\"done"), "{m}");
    assert_eq!(images_in(&out), 2);
    // A plain folder has no settings to match: said, nothing changed.
    let plain = root.path().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    std::fs::copy(reference.join("images/000000.png"), plain.join("a.png")).unwrap();
    h.state_mut().persisted.compare.reference_dir = plain.display().to_string();
    h.run_steps(2);
    h.get_by_label("Match the reference").click();
    wait_until(
        &mut h,
        "the refusal",
        |a| matches!(&a.compare.message, Some(Err(e)) if e.contains("no manifest")),
    );
    assert_eq!(h.state().persisted.compare.num_steps, 2);
}
