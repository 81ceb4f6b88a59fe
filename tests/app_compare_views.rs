//! The Compare tab's image views on a real tiny benchmark (fp32 identical to the reference,
//! w8g64 and w4g64 not): selecting a prompt shows its images and values, sorting puts the worst
//! first, the difference of identical images is zero, the swipe divider follows a drag, the
//! keyboard moves the selection (not while a text field has it), a grid click opens the
//! comparison, and re-opening the folder keeps the selection and zoom.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use egui::accesskit::Role;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use sd3lab::app::compare_view::ViewMode;
use sd3lab::app::{GuiOptions, SdApp, Tab};
use sd3lab::bench::{BenchFolder, PairedMetric};

mod app_common;
use app_common::*;

/// The benchmark fixture, made once per test binary (it takes ~20 s) in a kept folder.
fn fixture() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = tempfile::tempdir().unwrap().keep();
        benchmark_fixture(&root)
    })
}

/// The app on the Compare tab with the fixture open in `view`, its images decoded.
fn open(view: ViewMode) -> Harness<'static, SdApp> {
    let mut h = harness(GuiOptions {
        tab: Some(Tab::Compare),
        benchmark: Some(fixture().to_owned()),
        compare_view: Some(view),
        persist: false,
        ..Default::default()
    });
    wait_until(&mut h, "the benchmark folder", |a| {
        a.compare.folder.is_some()
    });
    settle(&mut h);
    h
}

/// Steps until the shown images are decoded.
fn settle(h: &mut Harness<'static, SdApp>) {
    wait_until(h, "the images", |a| !a.compare.waiting_for_images());
}

fn folder(h: &Harness<'static, SdApp>) -> Arc<BenchFolder> {
    h.state().compare.folder.clone().unwrap()
}

/// The prompt list's row of image `i`.
fn row_label(i: usize) -> String {
    format!("#{i}  seed {i}  ")
}

#[test]
fn selecting_a_prompt_shows_its_images_and_values() {
    let mut h = open(ViewMode::Side);
    let f = folder(&h);
    assert_eq!(f.prompts.len(), 4);
    assert_eq!(h.state().compare.view.selected, 0);
    h.get_by_label_contains(&row_label(2)).click();
    settle(&mut h);
    assert_eq!(h.state().compare.view.selected, 2);
    let p = &f.prompts[2];
    h.get_by_label_contains(&format!("Prompt #2 (seed {}): {}", p.seed, p.prompt));
    // Each configuration's caption carries this image's own values.
    for c in &f.configurations {
        let v = &c.paired[&2];
        let psnr = PairedMetric::Psnr.format(PairedMetric::Psnr.of(v).unwrap());
        let ssim = PairedMetric::Ssim.format(v.ssim);
        let caption = format!("PSNR {psnr}  SSIM {ssim}  LPIPS -");
        assert!(
            h.query_all_by_label(&caption).count() >= 1,
            "{}: {caption}",
            c.name
        );
    }
    let w4 = &f.configuration("w4g64").unwrap().paired;
    assert_ne!(w4[&0].psnr, w4[&2].psnr, "the fixture's images differ");
    assert!(
        h.query_by_label(&format!(
            "PSNR {}  SSIM {}  LPIPS -",
            PairedMetric::Psnr.format(w4[&0].psnr.unwrap()),
            PairedMetric::Ssim.format(w4[&0].ssim)
        ))
        .is_none(),
        "image 0's values are no longer shown"
    );
}

#[test]
fn sorting_by_psnr_lists_the_worst_first() {
    let mut h = open(ViewMode::Side);
    let f = folder(&h);
    h.state_mut().persisted.compare.view.focus = "w4g64".into();
    h.run_steps(2);
    h.get_by_role_and_label(Role::ComboBox, "Sort:").click();
    h.run_steps(2);
    h.get_by_label("worst PSNR first").click();
    h.run_steps(3);
    assert_eq!(
        h.state().persisted.compare.view.sort,
        Some(PairedMetric::Psnr)
    );
    let want: Vec<usize> = f
        .worst_first("w4g64", PairedMetric::Psnr)
        .iter()
        .map(|p| p.0)
        .collect();
    assert_eq!(want.len(), 4);
    assert_ne!(
        want,
        vec![0, 1, 2, 3],
        "the fixture's order must differ from index order"
    );
    assert_eq!(h.state().compare.view.order(), want.as_slice());
    // Choosing the sort selects the worst prompt.
    assert_eq!(h.state().compare.view.selected, want[0]);
    // The rows are drawn in that order, top to bottom.
    let tops: Vec<f32> = want
        .iter()
        .map(|&i| h.get_by_label_contains(&row_label(i)).rect().top())
        .collect();
    assert!(tops.windows(2).all(|w| w[0] < w[1]), "{tops:?}");
}

#[test]
fn the_difference_of_identical_images_is_zero() {
    let mut h = open(ViewMode::Diff);
    let f = folder(&h);
    let gain = h.state().persisted.compare.view.gain;
    for name in ["fp32", "w4g64"] {
        h.state_mut().persisted.compare.view.focus = name.into();
        settle(&mut h);
        let d = h
            .state()
            .compare
            .view
            .difference(&f, 0, name)
            .unwrap_or_else(|| panic!("{name}'s difference was not computed"))
            .clone()
            .unwrap();
        // Independently: the largest channel |Δ| of each pixel of the two PNGs.
        let a = image::open(f.reference[0].as_ref().unwrap())
            .unwrap()
            .into_rgb8();
        let b = image::open(&f.configuration(name).unwrap().images[&0])
            .unwrap()
            .into_rgb8();
        let want: Vec<u8> = a
            .pixels()
            .zip(b.pixels())
            .map(|(p, q)| (0..3).map(|k| p[k].abs_diff(q[k])).max().unwrap())
            .collect();
        assert_eq!(d.diff, want, "{name}");
        assert_eq!((d.width, d.height), (64, 64));
        if name == "fp32" {
            assert!(d.diff.iter().all(|&v| v == 0));
            assert_eq!(d.max, 0);
            h.get_by_label_contains("identical: max |Δ| 0");
        } else {
            assert!(d.max > 0);
            assert_eq!(d.max, *want.iter().max().unwrap());
            h.get_by_label_contains(&format!("max |Δ| {} of 255", d.max));
        }
    }
    h.get_by_label_contains(&format!("|Δ| (0-255) × gain {gain}"));
    // Another gain recolours the same |Δ|: not computed again.
    let before = h
        .state()
        .compare
        .view
        .difference(&f, 0, "w4g64")
        .unwrap()
        .clone()
        .unwrap();
    let other = if gain == 2.0 { 4.0 } else { 2.0 };
    h.state_mut().persisted.compare.view.gain = other;
    settle(&mut h);
    h.get_by_label_contains(&format!("|Δ| (0-255) × gain {other}"));
    let after = h
        .state()
        .compare
        .view
        .difference(&f, 0, "w4g64")
        .unwrap()
        .clone()
        .unwrap();
    assert!(Arc::ptr_eq(&before, &after));
    assert!(!h.state().compare.view.waiting_for_images());
}

#[test]
fn the_swipe_divider_follows_a_drag() {
    let mut h = open(ViewMode::Swipe);
    let before = h.state().compare.view.swipe_position();
    assert_eq!(before, 0.5);
    let handle = h.state().compare.view.swipe_handle().unwrap();
    let from = handle.center();
    let to = from - egui::vec2(150.0, 0.0);
    h.hover_at(from);
    h.step();
    h.event(egui::Event::PointerButton {
        pos: from,
        button: egui::PointerButton::Primary,
        pressed: true,
        modifiers: egui::Modifiers::NONE,
    });
    h.step();
    for k in 1..=5 {
        h.hover_at(from + (to - from) * k as f32 / 5.0);
        h.step();
    }
    h.event(egui::Event::PointerButton {
        pos: to,
        button: egui::PointerButton::Primary,
        pressed: false,
        modifiers: egui::Modifiers::NONE,
    });
    h.run_steps(2);
    let after = h.state().compare.view.swipe_position();
    assert!(after < before - 0.05, "{before} -> {after}");
    // The divider is drawn where it was dropped.
    let moved = h.state().compare.view.swipe_handle().unwrap();
    assert!((moved.center().x - to.x).abs() < 1.0, "{moved:?} {to:?}");
}

#[test]
fn the_keyboard_moves_the_selection_but_not_from_a_text_field() {
    let mut h = open(ViewMode::Side);
    h.key_press(egui::Key::ArrowDown);
    h.run_steps(2);
    h.key_press(egui::Key::J);
    h.run_steps(2);
    assert_eq!(h.state().compare.view.selected, 2);
    h.key_press(egui::Key::ArrowUp);
    h.run_steps(2);
    assert_eq!(h.state().compare.view.selected, 1);
    h.key_press(egui::Key::B);
    h.run_steps(2);
    assert!(h.state().compare.view.blinking());
    // Typing in the folder field keeps its keys.
    h.get_by_role_and_label(Role::TextInput, "Benchmark folder")
        .click();
    h.run_steps(2);
    h.key_press(egui::Key::ArrowDown);
    h.run_steps(2);
    assert_eq!(h.state().compare.view.selected, 1);
}

#[test]
fn a_grid_click_opens_the_comparison() {
    let mut h = open(ViewMode::Grid);
    // The summary table folded away, so that every row of the grid is on screen.
    h.get_by_label("Hide").click();
    settle(&mut h);
    let f = folder(&h);
    // Every cell of reference + the three configurations, for each prompt.
    for i in 0..f.prompts.len() {
        h.get_by_label(&format!("#{i} reference"));
        for c in &f.configurations {
            h.get_by_label(&format!("#{i} {}", c.name));
        }
    }
    h.get_by_label("#3 w4g64").click();
    settle(&mut h);
    assert_eq!(h.state().persisted.compare.view.mode, ViewMode::Side);
    assert_eq!(h.state().compare.view.selected, 3);
    h.get_by_label_contains("Prompt #3 (seed 3)");
}

#[test]
fn reopening_the_folder_keeps_the_selection_and_zoom() {
    let mut h = open(ViewMode::Side);
    h.get_by_label_contains(&row_label(3)).click();
    h.run_steps(2);
    h.get_by_label("1:1").click();
    h.run_steps(2);
    let zoom = h.state().compare.view.zoom();
    assert!(zoom.is_some());
    let old = folder(&h);
    let ctx = h.ctx.clone();
    h.state_mut()
        .compare
        .open(&ctx, &fixture().display().to_string());
    wait_until(&mut h, "the folder read again", |a| {
        a.compare
            .folder
            .as_ref()
            .is_some_and(|f| !Arc::ptr_eq(f, &old))
    });
    settle(&mut h);
    assert_eq!(h.state().compare.view.selected, 3);
    assert_eq!(h.state().compare.view.zoom(), zoom);
}
