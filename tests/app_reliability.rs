//! The app's side of issue 17 (reliability), driven headless with egui_kittest: a sweep refused
//! over a folder holding another run is started over only by one deliberate click, a plan from
//! a sweep that did not finish is said so and never saved without a deliberate choice, and
//! control characters from file names are shown escaped, never raw.

use std::path::Path;

use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use sd3lab::app::sensitivity_tab::View;
use sd3lab::app::{GuiOptions, SdApp, Tab};
use sd3lab::quant::sensitivity::read_report;

mod app_common;
use app_common::*;

fn options() -> GuiOptions {
    GuiOptions {
        tab: Some(Tab::Sensitivity),
        persist: false,
        ..GuiOptions::default()
    }
}

fn message(h: &Harness<'static, SdApp>) -> String {
    format!("{:?}", h.state().sensitivity.message)
}

/// Clicks Start / Resume sweep and waits for the sweep to end.
fn sweep(h: &mut Harness<'static, SdApp>) {
    h.get_by_label("Start / Resume sweep").click();
    wait_until(h, "the sweep to end", |a| {
        !a.sensitivity.is_running() && a.shared.jobs.is_empty()
    });
}

const START_OVER: &str = "Start over (replace the earlier sweep)";

#[test]
fn a_sweep_refused_over_another_run_starts_over_only_with_one_deliberate_click() {
    let root = tempfile::tempdir().unwrap();
    let calib = root.path().join("calib");
    calibration(&calib, 1, 2);
    let out = root.path().join("sweep");
    let json = out.join("sensitivity.json");
    let mut h = harness(options());
    {
        let o = &mut h.state_mut().persisted.sensitivity;
        o.model = tiny_model();
        o.calib_dir = calib.display().to_string();
        o.output_dir = out.display().to_string();
        o.layers = "^final_layer".into();
        o.bits = vec![2];
    }
    sweep(&mut h);
    assert_eq!(
        read_report(&json).unwrap().settings.bits,
        vec![2],
        "{}",
        message(&h)
    );
    assert!(
        h.query_by_label(START_OVER).is_none(),
        "no offer after a success"
    );

    // Other bit widths into the same folder: refused with the difference, nothing replaced.
    h.state_mut().persisted.sensitivity.bits = vec![4];
    sweep(&mut h);
    let msg = message(&h);
    assert!(
        msg.starts_with("Some(Err(") && msg.contains("bits: [2] -> [4]"),
        "{msg}"
    );
    assert_eq!(read_report(&json).unwrap().settings.bits, vec![2]);
    assert!(
        h.query_by_label(START_OVER).is_some(),
        "the refusal offers to start over"
    );

    // The offer is for the settings that were refused: other settings hide it (Start checks
    // them against the folder again).
    h.state_mut().persisted.sensitivity.bits = vec![8];
    h.run_steps(2);
    assert!(h.query_by_label(START_OVER).is_none());
    h.state_mut().persisted.sensitivity.bits = vec![4];
    h.run_steps(2);

    // One click replaces the earlier sweep with the refused settings.
    h.get_by_label(START_OVER).click();
    wait_until(&mut h, "the sweep to end", |a| {
        !a.sensitivity.is_running() && a.shared.jobs.is_empty()
    });
    let report = read_report(&json).unwrap();
    assert_eq!(report.settings.bits, vec![4], "{}", message(&h));
    assert!(!report.layers.is_empty() && report.pending.is_empty());
    assert!(message(&h).starts_with("Some(Ok("), "{}", message(&h));
    assert!(h.query_by_label(START_OVER).is_none(), "the offer is gone");
    assert!(
        h.state().shared.errors.latest().is_none(),
        "the success clears the error"
    );
}

/// The fixture sweep cut after `measured` layers, the others recorded as pending (a sweep
/// that was cancelled or killed).
fn unfinished_sweep(root: &Path, measured: usize) -> std::path::PathBuf {
    let json = sweep_fixture(root, None);
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let layers = v["layers"].as_array_mut().unwrap();
    let pending: Vec<serde_json::Value> = layers
        .split_off(measured)
        .into_iter()
        .map(|l| l["name"].clone())
        .collect();
    v["pending"] = serde_json::Value::Array(pending);
    std::fs::write(&json, serde_json::to_string(&v).unwrap()).unwrap();
    json
}

fn plans_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("plan-"))
        .collect()
}

#[test]
fn a_plan_from_a_sweep_that_did_not_finish_is_said_so_and_saved_only_by_choice() {
    let root = tempfile::tempdir().unwrap();
    let json = unfinished_sweep(root.path(), 20);
    let sens = json.parent().unwrap().to_owned();
    let mut h = harness(GuiOptions {
        sensitivity: Some(json.clone()),
        ..options()
    });
    wait_until(&mut h, "the report", |a| {
        a.sensitivity.report.is_some() && !a.busy()
    });
    h.state_mut().persisted.sensitivity.view = View::Plan;
    h.run_steps(2);
    assert!(
        h.query_by_label_contains(
            "This sweep did not finish: 12 of 32 layers are missing; a plan leaves them at full precision"
        )
        .is_some(),
        "the plan builder says the sweep is unfinished"
    );
    // Save plan does nothing until the choice is made.
    h.get_by_label("Save plan").click();
    h.run_steps(2);
    wait_until(&mut h, "any write", |a| !a.busy());
    assert_eq!(plans_in(&sens), Vec::<String>::new(), "{}", message(&h));

    // The deliberate choice: the plan is saved, and the message says what it is.
    h.get_by_label_contains("Plan from the measured layers only")
        .click();
    h.run_steps(2);
    h.get_by_label("Save plan").click();
    wait_until(&mut h, "the plan", |a| !a.busy());
    h.run_steps(1);
    let plans = plans_in(&sens);
    assert!(
        plans.contains(&"plan-sqnr-4.50bits.json".to_string()),
        "{plans:?}: {}",
        message(&h)
    );
    let msg = message(&h);
    assert!(
        msg.contains("12 layers not measured stay at full precision"),
        "{msg}"
    );

    // Another report: the choice was for that sweep only.
    let other = unfinished_sweep(&root.path().join("other"), 20);
    h.state_mut().sensitivity.open(&other.display().to_string());
    wait_until(&mut h, "the other report", |a| {
        a.sensitivity.report_file.as_deref() == Some(other.as_path()) && !a.busy()
    });
    h.get_by_label("Save plan").click();
    h.run_steps(2);
    wait_until(&mut h, "any write", |a| !a.busy());
    assert_eq!(plans_in(other.parent().unwrap()), Vec::<String>::new());
}

#[test]
fn control_characters_of_a_file_name_are_shown_escaped() {
    let root = tempfile::tempdir().unwrap();
    let bad = root.path().join("bad\x1b[31mname\u{202e}.json");
    let mut h = harness(options());
    h.state_mut().persisted.sensitivity.report_path = bad.display().to_string();
    h.run_steps(1);
    h.get_by_label("Open").click();
    wait_until(&mut h, "the open", |a| {
        !a.busy() && a.sensitivity.message.is_some()
    });
    let logged = h
        .state()
        .shared
        .errors
        .latest()
        .expect("the error is logged")
        .text
        .clone();
    assert!(
        logged.contains("bad\\x1b[31mname\\u{202e}.json: does not exist"),
        "{logged:?}"
    );
    assert!(
        !logged.contains('\x1b') && !logged.contains('\u{202e}'),
        "{logged:?}"
    );
    // What is drawn, the tab's message and the status bar's line: escaped, never raw.
    let escaped = "bad\\x1b[31mname\\u{202e}.json: does not exist";
    assert!(
        h.query_all_by_label_contains(escaped).count() >= 2,
        "the tab's message and the status bar show the escaped name"
    );
    assert_eq!(
        h.query_all_by_label_contains("\x1b").count(),
        0,
        "no raw escape is drawn"
    );
    assert_eq!(
        h.query_all_by_label_contains("\u{202e}").count(),
        0,
        "no raw override is drawn"
    );
}
