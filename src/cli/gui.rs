//! `sd3lab gui`: the desktop app with a starting state, or a screenshot.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

#[derive(Args)]
pub struct GuiArgs {
    /// Open this calibration folder in the Samples tab.
    #[arg(long)]
    calib_dir: Option<PathBuf>,
    /// Model for every tab (tiny, sd3-medium, a folder).
    #[arg(long)]
    model: Option<String>,
    /// Open this sweep (its output folder or its sensitivity.json) in the Sensitivity tab.
    #[arg(long)]
    sensitivity: Option<PathBuf>,
    /// Open this benchmark folder (`sd3lab benchmark`'s output) in the Compare tab.
    #[arg(long)]
    benchmark: Option<PathBuf>,
    /// The Compare tab's image view: side by side, swipe, difference or the grid.
    #[arg(long, value_enum)]
    compare_view: Option<sd3lab::app::compare_view::ViewMode>,
    /// The tab to show.
    #[arg(long, value_enum)]
    tab: Option<sd3lab::app::Tab>,
    /// Render, save the window as this PNG and exit (used for the README's screenshots).
    #[arg(long)]
    screenshot: Option<PathBuf>,
    /// Window size, WIDTHxHEIGHT.
    #[arg(long, default_value = "1280x800")]
    size: String,
    /// Log every frame's UI time to this CSV on exit and print the percentiles.
    #[arg(long)]
    frame_stats: Option<PathBuf>,
    /// Start the tab's job at launch (a calibration run on the Generate tab).
    #[arg(long)]
    start_job: bool,
    /// Quit when no job is running (after the one --start-job started).
    #[arg(long)]
    exit_when_idle: bool,
    /// Neither load nor save the persisted state.
    #[arg(long)]
    no_persist: bool,
}

impl GuiArgs {
    fn to_config(&self) -> anyhow::Result<sd3lab::app::GuiOptions> {
        let (w, h) = self
            .size
            .split_once('x')
            .and_then(|(w, h)| Some((w.parse::<f32>().ok()?, h.parse::<f32>().ok()?)))
            .filter(|(w, h)| (200.0..=8192.0).contains(w) && (200.0..=8192.0).contains(h))
            .ok_or_else(|| {
                anyhow::anyhow!("--size {}: expected WIDTHxHEIGHT, e.g. 1280x800", self.size)
            })?;
        Ok(sd3lab::app::GuiOptions {
            calib_dir: self.calib_dir.clone(),
            model: self.model.clone(),
            sensitivity: self.sensitivity.clone(),
            benchmark: self.benchmark.clone(),
            compare_view: self.compare_view,
            tab: self.tab,
            screenshot: self.screenshot.clone(),
            size: [w, h],
            frame_stats: self.frame_stats.clone(),
            start_job: self.start_job,
            exit_when_idle: self.exit_when_idle,
            persist: !self.no_persist && self.screenshot.is_none(),
            model_locations: None,
        })
    }
}

/// `sd3lab gui`.
pub fn run(args: &GuiArgs) -> anyhow::Result<ExitCode> {
    let options = args.to_config()?;
    // The files written on exit: a FIFO, a device or a folder is refused before the window
    // opens, not after the session.
    for (flag, path) in [
        ("--screenshot", &options.screenshot),
        ("--frame-stats", &options.frame_stats),
    ] {
        if let Some(path) = path {
            sd3lab::fsutil::destination(path)
                .with_context(|| format!("{flag} {}", path.display()))?;
        }
    }
    anyhow::ensure!(
        sd3lab::app::display_available(),
        "no display found (neither DISPLAY nor WAYLAND_DISPLAY is set); run it in a desktop session, or under `xvfb-run -a`"
    );
    let screenshot = options.screenshot.clone();
    sd3lab::app::run_gui(options).map_err(|e| anyhow::anyhow!("the window could not open: {e}"))?;
    if let Some(p) = screenshot {
        anyhow::ensure!(p.is_file(), "no screenshot was saved to {}", p.display());
        println!("wrote {}", p.display());
    }
    Ok(ExitCode::SUCCESS)
}
