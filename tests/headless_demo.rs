//! `sd3lab` with no subcommand where there is no display: it says so and runs the app's
//! workflow headless on the tiny model (whose picture the pixel judge recognises); `sd3lab gui`
//! fails clearly instead.

mod common;

#[test]
fn no_display_runs_the_headless_demo() {
    let root = tempfile::tempdir().unwrap();
    let out = common::sd3lab_command(root.path(), &[])
        .current_dir(root.path())
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("no display found"), "{stderr}");
    let demo = root.path().join("sd3lab-demo");
    for f in [
        "circle.png",
        "calibration_data/manifest.json",
        "sensitivity/sensitivity.json",
        "plan.json",
        "report.html",
        "report_data.csv",
    ] {
        assert!(demo.join(f).is_file(), "{f} missing");
    }
    // The demo model draws what the prompt asks for, by the pixel judge.
    let picture = image::open(demo.join("circle.png")).unwrap().to_rgb8();
    let side = picture.width() as usize;
    assert_eq!(side, sd3lab::demo::DEMO_SIDE);
    let scene = sd3lab::demo::Scene::parse(sd3lab::demo::DEMO_PROMPT).unwrap();
    let verdict = sd3lab::demo::judge(&scene, picture.as_raw(), side);
    assert!(verdict.passed(), "{verdict:?}");
    // The calibration set used the demo captions.
    let manifest = std::fs::read_to_string(demo.join("calibration_data/manifest.json")).unwrap();
    assert!(manifest.contains("assets/demo-prompts.csv"), "{manifest}");

    let html = std::fs::read_to_string(demo.join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("Pareto front"));

    let gui = common::sd3lab_command(root.path(), &["gui"])
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .output()
        .unwrap();
    assert!(!gui.status.success());
    assert!(String::from_utf8_lossy(&gui.stderr).contains("no display found"));
}
