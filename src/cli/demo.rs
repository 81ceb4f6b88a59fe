//! `sd3lab` alone: the desktop app, or (without a display) the app's workflow headless on the
//! tiny model, each step one `sd3lab` subcommand run as a child process.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use sd3lab::demo::{DEMO_CFG, DEMO_PROMPT, DEMO_SIDE, DEMO_STEPS};

/// `sd3lab` without a subcommand: the desktop app; where there is no display (or the window
/// cannot open), the same workflow headless through the CLI on the tiny model.
pub fn default_action() -> anyhow::Result<ExitCode> {
    if sd3lab::app::display_available() {
        match sd3lab::app::run_gui(sd3lab::app::GuiOptions::default()) {
            Ok(()) => return Ok(ExitCode::SUCCESS),
            Err(e) => eprintln!(
                "sd3lab: the window could not open ({e}); running the headless demo instead."
            ),
        }
    } else {
        eprintln!(
            "sd3lab: no display found (neither DISPLAY nor WAYLAND_DISPLAY is set), so the desktop app cannot open; running the same work headless on the built-in tiny model instead."
        );
    }
    headless_demo()
}

/// The app's workflow on the tiny model, into `sd3lab-demo/`: each step runs this same binary
/// as a child process with one of the CLI's subcommands.
fn headless_demo() -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("locating the sd3lab executable")?;
    let out = PathBuf::from("sd3lab-demo");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    for (what, args) in demo_steps(&out) {
        eprintln!("\n== {what}: sd3lab {}", args.join(" "));
        let status = std::process::Command::new(&exe)
            .args(&args)
            .status()
            .with_context(|| format!("running sd3lab {}", args.join(" ")))?;
        if !status.success() {
            eprintln!("sd3lab: the demo step '{what}' failed");
            return Ok(ExitCode::FAILURE);
        }
    }
    eprintln!(
        "\nDone: see {} (circle.png, calibration data, sensitivity.json, plan.json, report.html).",
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The demo model's own size, steps and guidance as flags.
fn demo_settings() -> Vec<String> {
    let side = DEMO_SIDE.to_string();
    [
        "--height",
        &side,
        "--width",
        &side,
        "--num-steps",
        &DEMO_STEPS.to_string(),
        "--cfg-weight",
        &DEMO_CFG.to_string(),
    ]
    .iter()
    .map(|x| x.to_string())
    .collect()
}

/// The demo's steps, `(what, sd3lab arguments)`, writing into `out`.
fn demo_steps(out: &Path) -> Vec<(&'static str, Vec<String>)> {
    let s = |p: &Path| p.display().to_string();
    let calib = out.join("calibration_data");
    let sens = out.join("sensitivity");
    vec![
        (
            "self-check",
            vec!["doctor".into(), "--seconds".into(), "0.3".into()],
        ),
        (
            "one picture",
            [
                "generate",
                "--model",
                "tiny",
                "--prompt",
                DEMO_PROMPT,
                "--seed",
                "1",
            ]
            .iter()
            .map(|x| x.to_string())
            .chain(demo_settings())
            .chain(["--output".into(), s(&out.join("circle.png"))])
            .collect(),
        ),
        (
            "calibration data (the demo captions)",
            ["calibrate", "--model", "tiny", "--num-images", "2"]
                .iter()
                .map(|x| x.to_string())
                .chain(demo_settings())
                .chain(["--calib-dir".into(), s(&calib)])
                .collect(),
        ),
        (
            "browse",
            vec![
                "samples".into(),
                "--calib-dir".into(),
                s(&calib),
                "--step-stride".into(),
                "3".into(),
            ],
        ),
        (
            "sensitivity sweep",
            [
                "sensitivity",
                "--model",
                "tiny",
                "--bits",
                "2,4,8",
                "--calib-dir",
            ]
            .iter()
            .map(|x| x.to_string())
            .chain([s(&calib), "--output-dir".into(), s(&sens)])
            .collect(),
        ),
        (
            "plan",
            vec![
                "plan".into(),
                "--sensitivity".into(),
                s(&sens.join(sd3lab::quant::sensitivity::REPORT_JSON)),
                "--target-bits".into(),
                "5".into(),
                "--output".into(),
                s(&out.join("plan.json")),
            ],
        ),
        (
            "report",
            vec![
                "report".into(),
                "sensitivity".into(),
                s(&sens),
                "--plan-target-bits".into(),
                "5".into(),
                "--output".into(),
                s(&out.join("report.html")),
            ],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    /// Every step is a valid command line (a renamed flag would otherwise only show when the
    /// demo runs).
    #[test]
    fn every_demo_step_parses() {
        let steps = super::demo_steps(std::path::Path::new("out"));
        assert_eq!(steps.len(), 7);
        for (what, args) in steps {
            let argv = std::iter::once("sd3lab".to_owned()).chain(args);
            if let Err(e) = crate::cli::Cli::try_parse_from(argv) {
                panic!("demo step '{what}': {e}");
            }
        }
    }
}
