//! The Samples tab driven headless with egui_kittest: errors of opening a folder worded as
//! sentences and shown in the status bar until a success clears them, messages of a previous
//! folder cleared when another opens, numbers refused with the reason, the set the Generate
//! tab just wrote offered and opened, Enter in the folder field, reports named after their
//! folder and numbered, the decode on the job board, the CFG half of the conditioning heatmap,
//! and the previews kept inside a 1000 px window.

use std::path::PathBuf;

use egui::accesskit::Role;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use sd3lab::app::preview::CfgHalf;
use sd3lab::app::samples_tab::{DECODE_JOB, OPEN};
use sd3lab::app::{GuiOptions, SdApp, Tab};

mod app_common;
use app_common::*;

fn options(calib_dir: Option<PathBuf>) -> GuiOptions {
    GuiOptions {
        tab: Some(Tab::Samples),
        persist: false,
        calib_dir,
        model: Some(tiny_model()),
        ..GuiOptions::default()
    }
}

fn settled(a: &SdApp) -> bool {
    a.samples.set.is_some() && !a.busy() && !a.samples.waiting_for_previews()
}

/// The status bar's error text, when it shows one of the Samples tab.
fn status_error(h: &Harness<'static, SdApp>) -> Option<String> {
    let e = h.state().shared.errors.latest()?;
    let text = format!("error ({})", e.headline());
    (e.place.tab == Tab::Samples && h.query_by_label(&text).is_some()).then_some(text)
}

/// A missing folder is named as missing (not "not a directory"), in the tab and in the status
/// bar; opening a good folder clears both.
#[test]
fn a_missing_folder_does_not_exist_until_a_good_one_opens() {
    let root = tempfile::tempdir().unwrap();
    let missing = root.path().join("missing");
    let mut h = harness(options(Some(missing.clone())));
    wait_until(&mut h, "the open to fail", |a| {
        !a.busy() && a.samples.error.is_some()
    });
    let sentence = format!("{} does not exist", missing.display());
    assert_eq!(h.state().samples.error.as_deref(), Some(sentence.as_str()));
    assert!(
        h.query_by_label(&format!("error: {sentence}")).is_some(),
        "the tab says it"
    );
    assert!(
        h.query_by_label_contains("error (Samples tab, ").is_some(),
        "the status bar shows the Samples tab's error"
    );
    let bar = status_error(&h).unwrap();
    assert!(bar.ends_with(&format!("{sentence})")), "{bar}");
    assert_eq!(h.state().shared.errors.latest().unwrap().place, OPEN);

    let good = root.path().join("calib");
    calibration(&good, 1, 2);
    h.state_mut().persisted.samples.calib_dir = good.display().to_string();
    h.get_by_label("Open").click();
    wait_until(&mut h, "the good folder", settled);
    assert_eq!(h.state().samples.error, None);
    assert!(h.query_by_label_contains("error:").is_none());
    assert!(
        h.query_by_label_contains("error (Samples tab").is_none(),
        "a success clears the status bar"
    );
    assert!(h.state().shared.errors.latest().is_none());
}

/// A report is named after its folder and never overwritten; its "wrote" link goes when
/// another folder opens (it was about the previous one).
#[test]
fn reports_are_numbered_and_their_message_clears_with_the_folder() {
    let root = tempfile::tempdir().unwrap();
    let (a, b) = (root.path().join("a"), root.path().join("b"));
    calibration(&a, 1, 2);
    calibration(&b, 1, 2);
    let mut h = harness(options(Some(a.clone())));
    wait_until(&mut h, "folder a", settled);
    for expected in ["a-samples-report.html", "a-samples-report-2.html"] {
        h.get_by_label("Report (HTML)").click();
        wait_until(&mut h, "the report", |a| {
            !a.busy() && a.samples.report_message.is_some()
        });
        let file = root.path().join(expected);
        assert!(file.is_file(), "{} written", file.display());
        assert!(
            h.query_by_label(&file.display().to_string()).is_some(),
            "the written path is shown as a link"
        );
    }

    h.state_mut().persisted.samples.calib_dir = b.display().to_string();
    h.get_by_label("Open").click();
    h.run_steps(1);
    assert!(
        h.state().samples.report_message.is_none(),
        "the previous folder's message is gone at once"
    );
    wait_until(&mut h, "folder b", settled);
    assert!(h.query_by_label("wrote").is_none());
    assert!(h.query_by_label_contains("a-samples").is_none());
}

/// A stride of 0 or a negative image count is refused with the reason; the value is kept
/// (it used to be clamped: "-5 became 16").
#[test]
fn bad_numbers_are_refused_with_the_reason() {
    let mut h = harness(options(None));
    h.run_steps(3);
    let stride = h.get_by_role_and_label(Role::TextInput, "Step stride");
    stride.focus();
    h.run_steps(1);
    h.get_by_role_and_label(Role::TextInput, "Step stride")
        .set_text_value_accesskit("0");
    h.run_steps(2);
    assert!(
        h.query_by_label("must be between 1 and 1000; keeps 1")
            .is_some()
    );
    assert_eq!(h.state().persisted.samples.step_stride, 1);
    h.get_by_role_and_label(Role::TextInput, "Step stride")
        .set_text_value_accesskit("4");
    h.run_steps(2);
    assert_eq!(h.state().persisted.samples.step_stride, 4);
    assert!(h.query_by_label_contains("must be between").is_none());

    h.get_by_role_and_label(Role::TextInput, "Max images (0 = all)")
        .focus();
    h.run_steps(1);
    h.get_by_role_and_label(Role::TextInput, "Max images (0 = all)")
        .set_text_value_accesskit("-5");
    h.run_steps(2);
    assert!(
        h.query_by_label("must be between 0 and 1000000; keeps 0")
            .is_some()
    );
    assert_eq!(h.state().persisted.samples.max_images, 0);
}

/// The folder the Generate tab just wrote is offered, and a click opens it; the offer goes
/// once it is the open folder.
#[test]
fn the_fresh_calibration_is_offered_and_opens() {
    let root = tempfile::tempdir().unwrap();
    let fresh = root.path().join("fresh");
    calibration(&fresh, 1, 2);
    let mut h = harness(options(None));
    h.run_steps(3);
    let offer = format!("Open the set just generated: {}", fresh.display());
    assert!(h.query_by_label(&offer).is_none());
    h.state_mut().shared.fresh_calibration = Some(fresh.clone());
    h.run_steps(2);
    h.get_by_label(&offer).click();
    wait_until(&mut h, "the fresh folder", settled);
    assert_eq!(h.state().samples.set.as_ref().unwrap().dir(), fresh);
    assert_eq!(
        h.state().persisted.samples.calib_dir,
        fresh.display().to_string()
    );
    assert!(
        h.query_by_label(&offer).is_none(),
        "no offer of the open folder"
    );
}

/// Enter in the folder field opens the typed folder.
#[test]
fn enter_opens_the_typed_folder() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("typed");
    calibration(&dir, 1, 2);
    let mut h = harness(options(None));
    h.run_steps(3);
    assert!(
        h.query_by_label_contains("Base folder: ").is_some(),
        "an empty field shows the base of relative folders"
    );
    h.get_by_role_and_label(Role::TextInput, "Calibration folder")
        .focus();
    h.run_steps(1);
    h.get_by_role_and_label(Role::TextInput, "Calibration folder")
        .set_text_value_accesskit(&dir.display().to_string());
    h.run_steps(1);
    assert!(h.state().samples.set.is_none() && !h.state().samples.is_loading());
    h.key_press(egui::Key::Enter);
    wait_until(&mut h, "the typed folder", settled);
    assert_eq!(h.state().samples.set.as_ref().unwrap().dir(), dir);
    assert!(h.query_by_label_contains("Base folder: ").is_none());
}

/// At 1000 px wide the decoded image and the latent grid sit inside the window; the decode
/// went through the job board under its name; the heatmap says which CFG half it shows and
/// switches to the other.
#[test]
fn previews_fit_1000_px_and_the_heatmap_names_its_half() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("calib");
    calibration(&dir, 2, 2);
    let mut h = harness_sized(options(Some(dir)), [1000.0, 700.0]);
    let mut on_board = false;
    wait_until(&mut h, "the folder and its previews", |a| {
        if let Some(id) = a.samples.decode_job() {
            on_board |= a
                .shared
                .jobs
                .get(id)
                .is_some_and(|j| j.label == DECODE_JOB && j.tab == Tab::Samples);
        }
        settled(a)
    });
    assert!(on_board, "the decode was on the job board");
    assert!(h.state().shared.jobs.is_empty(), "and left it when done");
    assert!(matches!(
        h.state().samples.decoded("samples/000000_000.npz"),
        Some(Ok(_))
    ));
    let list = h.get_by_label_contains("img    1 step   1").rect();
    let [vae, grid] = ["VAE preview", "latent channels"].map(|name| h.get_by_label(name).rect());
    for (name, r) in [("VAE preview", vae), ("latent channels", grid)] {
        assert!(
            r.min.x > list.max.x && r.max.x <= 1000.0 && r.width() >= 180.0,
            "{name} at {r:?} fits the 1000 px window beside the list ending at {}",
            list.max.x
        );
    }
    assert!(!vae.intersects(grid), "{vae:?} and {grid:?} do not overlap");
    assert!(
        h.query_by_label("Sample: image 1 of 2, step 1 of 2")
            .is_some(),
        "numbered from 1"
    );
    assert!(
        h.query_by_label_contains("showing the prompt (batch row 1 of 2)")
            .is_some()
    );
    assert!(
        h.query_by_label_contains("colour scale symmetric at +-")
            .is_some()
    );
    h.get_by_role_and_label(Role::ComboBox, "Conditioning half")
        .scroll_to_me();
    h.run_steps(2);
    h.get_by_role_and_label(Role::ComboBox, "Conditioning half")
        .click_accesskit();
    h.run_steps(2);
    h.get_by_label("negative prompt (batch row 2 of 2)").click();
    h.run_steps(3);
    assert_eq!(h.state().persisted.samples.cfg_half, CfgHalf::Negative);
    assert!(
        h.query_by_label_contains("showing the negative prompt (batch row 2 of 2)")
            .is_some()
    );
}
