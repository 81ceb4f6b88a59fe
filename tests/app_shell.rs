//! The app's shell driven headless with egui_kittest: the job board (a queued run says what it
//! waits behind, Cancel answers at once), the error model in the status bar, number fields
//! that refuse instead of clamping, reports written beside their folder under numbered names,
//! and every tab at the smallest window the app allows.

use std::path::Path;

use egui::accesskit::Role;
use egui_kittest::Harness;
use egui_kittest::kittest::{NodeT, Queryable};
use sd3lab::app::worker::Command;
use sd3lab::app::{GuiOptions, MIN_WINDOW_SIZE, SdApp, Tab};
use sd3lab::job::CancelToken;

mod app_common;
use app_common::*;

fn options(tab: Tab) -> GuiOptions {
    GuiOptions {
        tab: Some(tab),
        persist: false,
        model: Some(tiny_model()),
        ..GuiOptions::default()
    }
}

fn shows(h: &Harness<'static, SdApp>, text: &str) -> bool {
    h.query_all_by_label_contains(text).next().is_some()
}

/// The Generate tab set for a small run into `dir`.
fn small_run(h: &mut Harness<'static, SdApp>, dir: &Path, images: usize) {
    let g = &mut h.state_mut().persisted.generate;
    g.calib_dir = dir.display().to_string();
    g.num_images = images;
    g.num_steps = 3;
    // Big enough that a step takes a while: the test sees the run between its steps.
    g.height = 256;
    g.width = 256;
}

/// Puts another tab's long job on the worker (sent as a tab sends one, and on the board) and
/// waits until it runs: its cancel token and id.
fn occupy_worker(h: &mut Harness<'static, SdApp>, dir: &Path) -> (CancelToken, u64) {
    let other = CancelToken::new();
    let other_id = {
        let shared = &mut h.state_mut().shared;
        let id = shared.next_job_id();
        shared.jobs.submit(id, Tab::Sensitivity, "long test job");
        assert!(shared.worker.send(Command::Calibrate {
            id,
            config: calib_config(dir, 200, 3),
            single_prompt: None,
            cancel: other.clone(),
        }));
        id
    };
    wait_until(h, "the other job to start", |a| {
        a.shared.jobs.current().map(|j| j.id) == Some(other_id)
    });
    (other, other_id)
}

#[test]
fn a_queued_run_says_what_it_waits_behind_and_cancel_answers_at_once() {
    let root = tempfile::tempdir().unwrap();
    let mut h = harness(options(Tab::Generate));
    small_run(&mut h, &root.path().join("run"), 40);
    h.run_steps(2);
    let (other, other_id) = occupy_worker(&mut h, &root.path().join("other"));
    h.get_by_label("Start").click();
    h.run_steps(2);
    let ours = h.state().generate.job_id().expect("the run was sent");
    assert!(
        shows(
            &h,
            "queued behind the long test job of the Sensitivity tab; it starts when that ends"
        ),
        "the run says what it waits behind"
    );
    assert!(
        !shows(&h, "image 1 of") && !shows(&h, "step 0 of"),
        "no progress for a run that has not started"
    );
    assert!(shows(&h, "running: long test job (Sensitivity tab)"));
    assert!(shows(&h, "1 queued"));

    // The other job ends: ours runs, and the status bar names it.
    other.cancel();
    h.state_mut().shared.jobs.cancelling(other_id);
    wait_until(&mut h, "our run to start", |a| {
        a.shared.jobs.current().map(|j| j.id) == Some(ours) && a.generate.progress.images_done >= 1
    });
    assert!(shows(&h, "running: calibration run (Generate tab)"));
    assert!(!shows(&h, "queued behind"));
    assert!(shows(&h, " of 40"), "the run's progress");

    // Cancel: said at once, and the button cannot be clicked again.
    h.get_by_label("Cancel").click();
    h.run_steps(2);
    assert!(shows(&h, "cancelling..."), "cancelling is shown at once");
    assert!(
        h.get_by_label("Cancel").accesskit_node().is_disabled(),
        "Cancel is disabled while cancelling"
    );
    wait_until(&mut h, "the cancellation", |a| !a.generate.is_running());
    assert!(!shows(&h, "cancelling..."));
    let msg = format!("{:?}", h.state().generate.message);
    assert!(msg.contains("cancelled"), "{msg}");
    assert!(
        h.state().shared.fresh_calibration.is_none(),
        "a cancelled run is not offered as a finished set"
    );
}

/// A run cancelled while it still waits shows no progress of a run that never began.
#[test]
fn a_run_cancelled_while_queued_says_so_without_progress() {
    let root = tempfile::tempdir().unwrap();
    let mut h = harness(options(Tab::Generate));
    small_run(&mut h, &root.path().join("run"), 4);
    h.run_steps(2);
    let (other, _) = occupy_worker(&mut h, &root.path().join("other"));
    h.get_by_label("Start").click();
    h.run_steps(2);
    assert!(shows(&h, "queued behind the long test job"));
    h.get_by_label("Cancel").click();
    h.run_steps(2);
    assert!(shows(&h, "(it had not started)"), "said at once");
    assert!(
        !shows(&h, "image 1 of") && !shows(&h, "step 0 of"),
        "no progress for a run that never began"
    );
    other.cancel();
    wait_until(&mut h, "both jobs to end", |a| {
        !a.generate.is_running() && a.shared.jobs.is_empty()
    });
    assert!(!shows(&h, "cancelling..."));
}

#[test]
fn a_finished_run_is_offered_by_its_absolute_folder() {
    let root = tempfile::tempdir().unwrap();
    let mut h = harness(options(Tab::Generate));
    let dir = root.path().join("run");
    small_run(&mut h, &dir, 1);
    h.run_steps(2);
    h.get_by_label("Start").click();
    wait_until(&mut h, "the run", |a| !a.generate.is_running());
    assert_eq!(h.state().shared.fresh_calibration.as_deref(), Some(&*dir));
    // Numbered from 1 everywhere, and counted in the singular.
    assert!(shows(&h, "image 1: "), "the large image's caption");
    assert!(shows(&h, "gallery: 1 image") && shows(&h, "done: 1 of 1 image in"));
    assert!(!shows(&h, "1 images") && !shows(&h, "1 steps"));
}

#[test]
fn an_invalid_number_is_refused_at_the_field_and_keeps_the_value() {
    let mut h = harness(options(Tab::Generate));
    h.run_steps(2);
    let before = h.state().persisted.generate.num_images;
    let type_into = |h: &mut Harness<'static, SdApp>, label: &str, text: &str| {
        h.get_by_label(label).focus();
        h.step();
        h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::A);
        h.step();
        h.get_by_label(label).type_text(text);
        h.run_steps(2);
    };
    type_into(&mut h, "Images", "-5");
    assert!(
        shows(&h, &format!("must be between 1 and 100000; keeps {before}")),
        "the field says why"
    );
    assert_eq!(
        h.state().persisted.generate.num_images,
        before,
        "not clamped"
    );
    type_into(&mut h, "Steps", "ten");
    assert!(shows(&h, "not a number; keeps 28"));
    assert_eq!(h.state().persisted.generate.num_steps, 28);
    type_into(&mut h, "Height", "2.5");
    assert!(shows(
        &h,
        "must be a whole number between 16 and 2048; keeps 64"
    ));
    type_into(&mut h, "Images", "7");
    assert_eq!(h.state().persisted.generate.num_images, 7);
    assert!(!shows(&h, "must be between 1 and 100000"));
}

#[test]
fn reports_are_numbered_beside_their_folder_and_shown_as_links() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("calib");
    calibration(&dir, 1, 2);
    let mut h = harness(GuiOptions {
        calib_dir: Some(dir.clone()),
        ..options(Tab::Generate)
    });
    wait_until(&mut h, "the folder", |a| !a.busy());
    h.get_by_label("Report (HTML)").click();
    wait_until(&mut h, "the report", |a| !a.busy());
    let first = root.path().join("calib-calibration-report.html");
    let first_text = std::fs::read_to_string(&first).unwrap();
    h.get_by_label("Report (HTML)").click();
    wait_until(&mut h, "the second report", |a| !a.busy());
    let second = root.path().join("calib-calibration-report-2.html");
    assert!(second.is_file(), "the second report gets a new name");
    assert_eq!(
        std::fs::read_to_string(&first).unwrap(),
        first_text,
        "the first is kept"
    );
    let second_label = second.display().to_string();
    let link = h.get_by_label(&second_label);
    assert_eq!(link.accesskit_node().role(), Role::Link);
    assert!(shows(&h, "wrote"));

    // Another folder: the message about the last one goes.
    h.state_mut().persisted.generate.calib_dir = root.path().join("other").display().to_string();
    wait_until(&mut h, "the other folder", |a| !a.busy());
    assert!(h.query_by_label(&second.display().to_string()).is_none());
    assert!(h.state().generate.report.is_none());
}

#[test]
fn a_missing_folder_does_not_exist_and_its_error_is_dismissed_or_cleared() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("missing");
    let mut h = harness(GuiOptions {
        calib_dir: Some(dir.clone()),
        ..options(Tab::Generate)
    });
    wait_until(&mut h, "the folder", |a| !a.busy());
    h.get_by_label("Report (HTML)").click();
    wait_until(&mut h, "the report", |a| !a.busy());
    let sentence = format!("{} does not exist", dir.display());
    assert!(
        shows(&h, &format!("error: no report: {sentence}")),
        "the tab says it"
    );
    assert!(
        shows(&h, "error (Generate tab, ") && shows(&h, &sentence),
        "the status bar says it"
    );
    h.get_by_label("Dismiss").click();
    h.run_steps(2);
    assert!(!shows(&h, "error (Generate tab, "), "dismissed");
    assert!(h.state().shared.errors.latest().is_none());

    // Again; then the folder is made and the report written: the success clears the error.
    h.get_by_label("Report (HTML)").click();
    wait_until(&mut h, "the report", |a| !a.busy());
    assert!(shows(&h, "error (Generate tab, "));
    calibration(&dir, 1, 2);
    h.get_by_label("Report (HTML)").click();
    wait_until(&mut h, "the report", |a| !a.busy());
    assert!(
        root.path()
            .join("missing-calibration-report.html")
            .is_file()
    );
    assert!(
        !shows(&h, "error (Generate tab, "),
        "cleared by the success"
    );
    assert!(!shows(&h, "does not exist"));
}

/// Every button that starts inside the window ends inside it: nothing is cut at the right or
/// bottom edge (buttons wholly below it sit in a scroll area).
fn assert_nothing_clipped(h: &Harness<'static, SdApp>, tab: Tab, essential: &[&str]) {
    let [w, hgt] = MIN_WINDOW_SIZE;
    for label in essential {
        let r = h.get_by_label(label).rect();
        assert!(
            r.max.x <= w + 0.5 && r.max.y <= hgt + 0.5,
            "{tab:?}: {label} at {r:?} is outside the {w}x{hgt} window"
        );
    }
    for role in [Role::Button, Role::Link, Role::CheckBox] {
        for n in h.query_all_by_role(role) {
            let r = n.rect();
            if r.min.y < hgt && r.min.x < w {
                assert!(
                    r.max.x <= w + 0.5,
                    "{tab:?}: {:?} at {r:?} is cut at the window's right edge",
                    n.accesskit_node().label()
                );
            }
        }
    }
}

#[test]
fn every_tab_fits_the_smallest_window() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("calib");
    calibration(&dir, 2, 2);
    // A sweep loaded, so the Sensitivity tab shows its widest toolbars.
    let sweep = sweep_fixture(root.path(), None);
    let mut h = harness_sized(
        GuiOptions {
            calib_dir: Some(dir.clone()),
            sensitivity: Some(sweep),
            ..options(Tab::Generate)
        },
        MIN_WINDOW_SIZE,
    );
    wait_until(&mut h, "the tab", |a| !a.busy());
    // An error in the status bar, the longest it gets.
    h.state_mut().shared.errors.report(
        sd3lab::app::feedback::Place::new(Tab::Generate, "report"),
        "a long error text ".repeat(20),
    );
    h.run_steps(2);
    assert_nothing_clipped(
        &h,
        Tab::Generate,
        &[
            "Start / Resume",
            "Cancel",
            "Report (HTML)",
            "Report (Markdown)",
            "Dismiss",
            "Sensitivity",
        ],
    );
    for tab in [Tab::Samples, Tab::Sensitivity] {
        h.get_by_label(tab.label()).click();
        wait_until(&mut h, tab.label(), |a| !a.busy());
        assert_nothing_clipped(&h, tab, &["Dismiss"]);
    }
}

#[test]
fn a_typed_output_folder_is_applied_on_enter() {
    let root = tempfile::tempdir().unwrap();
    let (one, two) = (root.path().join("one"), root.path().join("two"));
    calibration(&one, 1, 2);
    calibration(&two, 2, 2);
    let mut h = harness(GuiOptions {
        calib_dir: Some(one.clone()),
        ..options(Tab::Generate)
    });
    wait_until(&mut h, "the folder", |a| {
        !a.busy() && a.generate.gallery.len() == 1
    });
    h.get_by_label("Output folder").focus();
    h.step();
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::A);
    h.step();
    h.get_by_label("Output folder")
        .type_text(&two.display().to_string());
    h.run_steps(3);
    assert_eq!(
        h.state().persisted.generate.calib_dir,
        two.display().to_string()
    );
    assert_eq!(
        h.state().generate.gallery.len(),
        1,
        "nothing is scanned while the path is being typed"
    );
    h.key_press(egui::Key::Enter);
    wait_until(&mut h, "the typed folder", |a| {
        !a.busy() && a.generate.gallery.len() == 2
    });
    assert!(shows(&h, "gallery: 2 images"));
}

/// Hovers `node` until a tooltip containing `tip` shows (or fails after ~100 frames).
fn tooltip_of(h: &mut Harness<'static, SdApp>, role: Role, label: &str, tip: &str) {
    h.get_by_role_and_label(role, label).hover();
    for _ in 0..100 {
        h.step();
        if h.query_by_label_contains(tip).is_some() {
            return;
        }
    }
    panic!("hovering \"{label}\" shows no tooltip with \"{tip}\"");
}

/// Controls whose labels are short or technical explain themselves when hovered, in every tab.
#[test]
fn short_and_technical_controls_have_tooltips() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("calib");
    calibration(&dir, 1, 2);
    let sweep = sweep_fixture(root.path(), None);
    let mut h = harness(GuiOptions {
        calib_dir: Some(dir),
        sensitivity: Some(sweep),
        ..options(Tab::Generate)
    });
    wait_until(&mut h, "the tabs", |a| !a.busy());
    for (role, label, tip) in [
        (Role::TextInput, "Seed", "image i uses seed + i"),
        (Role::TextInput, "CFG weight", "Classifier-free guidance"),
        (Role::TextInput, "Steps", "Denoising steps per image"),
    ] {
        tooltip_of(&mut h, role, label, tip);
    }
    h.get_by_label("Samples").click();
    wait_until(&mut h, "the Samples tab", |a| !a.busy());
    tooltip_of(
        &mut h,
        Role::Label,
        "Bucket",
        "Which third of the sampling schedule",
    );
    tooltip_of(&mut h, Role::TextInput, "Step stride", "Keep every Nth");
    h.get_by_label("Sensitivity").click();
    wait_until(&mut h, "the Sensitivity tab", |a| !a.busy());
    tooltip_of(
        &mut h,
        Role::Label,
        "Bits (heatmap, ranking)",
        "the bit width the heatmap and the ranking show",
    );
    tooltip_of(&mut h, Role::Label, "Scope", "where the error is measured");
}
