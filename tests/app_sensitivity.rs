//! The Sensitivity tab driven headless with egui_kittest: a sweep queued behind another job and
//! cancelled, an incomplete sweep said so after reopening, Save plan and the exports beside the
//! sweep with numbered names, Open with a sweep's folder and Enter, relative paths resolved
//! against the base folder shown, number fields that refuse bad input, and the toolbar at
//! 1000 px wide.

use std::path::Path;
use std::time::Duration;

use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use sd3lab::app::sensitivity_tab::{self, View};
use sd3lab::app::worker::Command;
use sd3lab::app::{GuiOptions, SdApp, Tab};
use sd3lab::calibrate::CalibrateConfig;
use sd3lab::job::CancelToken;

mod app_common;
use app_common::*;

fn options() -> GuiOptions {
    GuiOptions {
        tab: Some(Tab::Sensitivity),
        persist: false,
        ..GuiOptions::default()
    }
}

fn opened(path: &Path) -> GuiOptions {
    GuiOptions {
        sensitivity: Some(path.to_owned()),
        ..options()
    }
}

fn message(h: &Harness<'static, SdApp>) -> String {
    format!("{:?}", h.state().sensitivity.message)
}

#[test]
fn a_sweep_started_while_another_job_runs_says_it_is_queued_and_cancel_answers_at_once() {
    let root = tempfile::tempdir().unwrap();
    let mut h = harness(options());
    // Keep the worker busy with a long calibration run, as the Generate tab would.
    let cancel_calibration = CancelToken::new();
    let id = h.state_mut().shared.next_job_id();
    let config = CalibrateConfig {
        images_only: true,
        ..calib_config(&root.path().join("calib"), 500, 20)
    };
    let s = &mut h.state_mut().shared;
    assert!(s.worker.send(Command::Calibrate {
        id,
        config,
        single_prompt: Some("a cat".into()),
        cancel: cancel_calibration.clone(),
    }));
    s.jobs.submit(id, Tab::Generate, "calibration run");
    wait_until(&mut h, "the calibration run to start", |a| {
        a.shared.jobs.current().is_some()
    });
    {
        let o = &mut h.state_mut().persisted.sensitivity;
        o.model = tiny_model();
        o.calib_dir = root.path().join("calib").display().to_string();
        o.output_dir = root.path().join("sweep").display().to_string();
    }
    h.get_by_label("Start / Resume sweep").click();
    h.run_steps(3);
    assert!(
        h.query_by_label_contains("queued behind the calibration run of the Generate tab")
            .is_some(),
        "the sweep says what it waits for"
    );
    assert!(
        h.query_by_label_contains("of 0 layers").is_none()
            && h.query_by_label_contains("0 / 0").is_none(),
        "no empty progress bar while queued"
    );
    // Cancel says so at once and cannot be clicked twice.
    h.get_by_label("Cancel sweep").click();
    h.run_steps(2);
    assert!(h.query_by_label("cancelling...").is_some());
    assert!(h.query_by_label("Cancel sweep").is_none());
    assert!(
        h.query_by_label_contains("the sweep stops after the current layer")
            .is_some()
    );
    cancel_calibration.cancel();
    wait_until(&mut h, "both jobs to end", |a| {
        !a.sensitivity.is_running() && a.shared.jobs.is_empty()
    });
}

#[test]
fn relative_paths_are_resolved_against_the_base_folder_shown() {
    let mut h = harness(options());
    let base = std::env::current_dir().unwrap();
    assert!(
        h.query_by_label_contains(&format!("Base folder: {}", base.display()))
            .is_some()
    );
    let root = tempfile::tempdir().unwrap();
    let relative = format!("no-such-calibration-{}", std::process::id());
    {
        let o = &mut h.state_mut().persisted.sensitivity;
        o.model = tiny_model();
        o.calib_dir = relative.clone();
        o.output_dir = root.path().join("sweep").display().to_string();
    }
    h.get_by_label("Start / Resume sweep").click();
    wait_until(&mut h, "the sweep to fail", |a| !a.sensitivity.is_running());
    let msg = message(&h);
    assert!(
        msg.contains(&base.join(&relative).display().to_string()),
        "the error names the resolved folder: {msg}"
    );
    let latest = h
        .state()
        .shared
        .errors
        .latest()
        .expect("the error is logged");
    assert_eq!(latest.place.tab, Tab::Sensitivity);
}

#[test]
fn a_partial_sweep_reopened_says_it_is_incomplete() {
    let root = tempfile::tempdir().unwrap();
    let json = sweep_fixture(root.path(), Some(10));
    let mut h = harness(opened(&json));
    wait_until(&mut h, "the report", |a| {
        a.sensitivity.report.is_some() && !a.busy()
    });
    assert!(
        h.query_by_label_contains("incomplete: 10 of 32 layers measured")
            .is_some(),
        "a cancelled sweep reads as incomplete"
    );
    // The whole sweep does not.
    let json = sweep_fixture(root.path(), None);
    h.state_mut().sensitivity.open(&json.display().to_string());
    wait_until(&mut h, "the report", |a| {
        a.sensitivity
            .report
            .as_ref()
            .is_some_and(|r| r.layers.len() == 32)
            && !a.busy()
    });
    assert!(h.query_by_label_contains("incomplete").is_none());
    // The layer that cannot be grouped explains 32 measured, 31 plotted.
    assert!(
        h.query_by_label_contains("1 layer of the 32 measured cannot be grouped by 64")
            .is_some()
    );
}

#[test]
fn open_takes_a_sweeps_folder_and_enter_opens_what_was_typed() {
    let root = tempfile::tempdir().unwrap();
    let json = sweep_fixture(root.path(), None);
    let folder = json.parent().unwrap().to_owned();
    let mut h = harness(options());
    h.run_steps(2);
    // A folder that does not exist: said as a sentence, logged as the tab's error.
    let field = h.get_by_label("Report");
    field.focus();
    field.type_text(&root.path().join("nope").display().to_string());
    h.run_steps(1);
    h.get_by_label("Open").click();
    wait_until(&mut h, "the open", |a| !a.busy());
    let msg = message(&h);
    assert!(msg.contains("nope: does not exist"), "{msg}");
    assert!(!msg.contains("os error"), "{msg}");
    assert_eq!(
        h.state().shared.errors.latest().map(|e| e.place.action),
        Some("open")
    );
    // The sweep's folder, opened with Enter.
    h.state_mut().persisted.sensitivity.report_path.clear();
    h.run_steps(1);
    let field = h.get_by_label("Report");
    field.focus();
    field.type_text(&folder.display().to_string());
    h.run_steps(1);
    h.key_press(egui::Key::Enter);
    wait_until(&mut h, "the report", |a| {
        a.sensitivity.report.is_some() && !a.busy()
    });
    assert_eq!(
        h.state().sensitivity.report_file.as_deref(),
        Some(json.as_path())
    );
    assert!(
        h.state().shared.errors.latest().is_none(),
        "success clears the open error"
    );
    assert!(
        h.state().sensitivity.message.is_none(),
        "the old error is stale"
    );
}

#[test]
fn save_plan_and_exports_go_beside_the_sweep_numbered_and_shown_as_links() {
    let root = tempfile::tempdir().unwrap();
    let json = sweep_fixture(root.path(), None);
    let sens = json.parent().unwrap().to_owned();
    let cwd_plan = std::env::current_dir().unwrap().join("plan.json");
    let cwd_plan_before = cwd_plan.exists();
    let mut h = harness(opened(&json));
    wait_until(&mut h, "the report", |a| {
        a.sensitivity.report.is_some() && !a.busy()
    });
    h.state_mut().persisted.sensitivity.view = View::Plan;
    h.run_steps(2);
    let stem = sensitivity_tab::plan_stem(sd3lab::quant::plan::Objective::Sqnr, 4.5);
    assert_eq!(stem, "plan-sqnr-4.50bits");
    for expected in [format!("{stem}.json"), format!("{stem}-2.json")] {
        h.get_by_label("Save plan").click();
        wait_until(&mut h, "the plan", |a| !a.busy());
        let path = sens.join(&expected);
        assert!(
            path.is_file(),
            "{} missing: {}",
            path.display(),
            message(&h)
        );
        assert_eq!(
            h.state().sensitivity.written.as_deref(),
            Some(path.as_path())
        );
        // The path is a link (that opens its folder).
        h.get_by_label(&path.display().to_string()).click();
        h.run_steps(1);
    }
    // Each plan's Pareto front is named after it: the second plan's is a file of its own.
    assert!(sens.join(format!("{stem}.pareto.csv")).is_file());
    assert!(sens.join(format!("{stem}-2.pareto.csv")).is_file());
    assert_eq!(
        cwd_plan.exists(),
        cwd_plan_before,
        "nothing written into the cwd"
    );
    // Reports and figures: identifying names, never overwritten.
    for expected in ["report-sqnr-2bit.html", "report-sqnr-2bit-2.html"] {
        h.get_by_label("Report (HTML)").click();
        wait_until(&mut h, "the report", |a| !a.busy());
        assert!(sens.join(expected).is_file(), "{expected}: {}", message(&h));
    }
    assert!(sens.join("report-sqnr-2bit-2_data.csv").is_file());
    for expected in ["figures-sqnr-2bit", "figures-sqnr-2bit-2"] {
        h.get_by_label("Export plots (PNG + SVG)").click();
        wait_until(&mut h, "the figures", |a| !a.busy());
        assert!(
            sens.join(expected).join("bits.png").is_file(),
            "{expected}: {}",
            message(&h)
        );
    }
    assert!(h.state().shared.errors.latest().is_none());
}

#[test]
fn number_fields_refuse_bad_input_and_say_why() {
    let mut h = harness(options());
    h.run_steps(2);
    let field = h.get_by_label(sensitivity_tab::STEP_STRIDE_LABEL);
    field.focus();
    field.type_text("5000");
    h.run_steps(2);
    assert!(
        h.query_by_label_contains("must be between 1 and 1000; keeps 1")
            .is_some()
    );
    assert_eq!(h.state().persisted.sensitivity.step_stride, 1);
    let field = h.get_by_label(sensitivity_tab::MAX_IMAGES_LABEL);
    field.focus();
    field.type_text("x");
    h.run_steps(2);
    assert!(h.query_by_label_contains("not a number; keeps 0").is_some());
    assert_eq!(h.state().persisted.sensitivity.max_images, 0);
}

#[test]
fn at_1000_px_the_toolbar_keeps_its_last_button_and_labels_precede_their_boxes() {
    let root = tempfile::tempdir().unwrap();
    let json = sweep_fixture(root.path(), None);
    let mut h = harness_sized(opened(&json), [1000.0, 800.0]);
    wait_until(&mut h, "the report", |a| {
        a.sensitivity.report.is_some() && !a.busy()
    });
    let last = h.get_by_label("Report (Markdown)").rect();
    assert!(last.right() <= 1000.0, "clipped: {last:?}");
    // "Block [all]  Kind [all]": each label (a text node) just left of its box (the box is
    // labelled by it).
    for name in ["Block", "Kind"] {
        let label = h
            .query_all_by_value(name)
            .next()
            .unwrap_or_else(|| panic!("the {name} label"))
            .rect();
        let combo = h.get_by_label(name).rect();
        assert!(
            combo.left() >= label.right() && combo.left() - label.right() < 20.0,
            "{name}: label {label:?}, box {combo:?}"
        );
    }
    // Counts read as words.
    assert!(h.query_by_label_contains("1 layers").is_none());
}

#[test]
fn the_eta_extrapolates_the_time_per_layer() {
    assert_eq!(
        sensitivity_tab::eta_text(4, 8, Duration::from_secs(60)),
        Some("about 2 min 0 s left".into())
    );
    assert_eq!(
        sensitivity_tab::eta_text(0, 8, Duration::from_secs(60)),
        None
    );
}

#[test]
fn heatmap_cells_say_their_value_when_hovered() {
    use sensitivity_tab::{heatmap_cell_at, heatmap_cell_text};
    // The header row and the label column are no cells.
    assert_eq!(heatmap_cell_at(egui::vec2(10.0, 30.0), 3, 4), None);
    assert_eq!(heatmap_cell_at(egui::vec2(230.0, 5.0), 3, 4), None);
    assert_eq!(heatmap_cell_at(egui::vec2(230.0, 20.0), 3, 4), Some((0, 0)));
    assert_eq!(heatmap_cell_at(egui::vec2(300.0, 50.0), 3, 4), Some((2, 1)));
    assert_eq!(heatmap_cell_at(egui::vec2(300.0, 80.0), 3, 4), None);
    assert_eq!(
        heatmap_cell_text("0.image.attn.q_proj", "early", 12.5, "SQNR (dB)"),
        "0.image.attn.q_proj, early: 12.5000 SQNR (dB)"
    );
    assert!(heatmap_cell_text("a", "late", f64::NAN, "MSE").contains("no effect"));
}

#[test]
fn the_set_just_generated_is_offered() {
    let root = tempfile::tempdir().unwrap();
    let mut h = harness(options());
    h.run_steps(2);
    assert!(
        h.query_by_label_contains("Use the set just generated")
            .is_none()
    );
    let fresh = root.path().join("calib-new");
    h.state_mut().shared.fresh_calibration = Some(fresh.clone());
    h.run_steps(2);
    h.get_by_label(&format!("Use the set just generated: {}", fresh.display()))
        .click();
    h.run_steps(2);
    assert_eq!(
        h.state().persisted.sensitivity.calib_dir,
        fresh.display().to_string()
    );
    // Offered only while it is not the folder in use.
    assert!(
        h.query_by_label_contains("Use the set just generated")
            .is_none()
    );
}

#[test]
fn a_sweep_without_results_yet_is_an_empty_state_not_an_error() {
    let root = tempfile::tempdir().unwrap();
    // The first layer a sweep measures cannot be grouped: no results yet.
    let json = sweep_fixture(root.path(), Some(1));
    let mut h = harness(opened(&json));
    wait_until(&mut h, "the report", |a| {
        a.sensitivity.report.is_some() && !a.busy()
    });
    h.state_mut().persisted.sensitivity.view = View::Plan;
    h.run_steps(2);
    assert!(h.query_by_label("no results to plan with yet").is_some());
    assert!(
        h.query_by_label_contains("the sensitivity report has no results")
            .is_none()
    );
    h.state_mut().persisted.sensitivity.view = View::Plots;
    h.run_steps(2);
    assert!(
        h.query_by_label_contains("no results at 2 bits (all) for these filters yet")
            .is_some()
    );
    assert!(
        h.query_by_label_contains("incomplete: 1 of 32 layers measured")
            .is_some()
    );
}
