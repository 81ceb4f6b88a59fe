//! The Compare tab's image views: for one prompt at a time, the reference image and the chosen
//! configurations' images side by side, a swipe between the reference and one configuration,
//! a blink toggle and a difference view (|Δ| amplified, with its colour bar), all with one
//! synchronised zoom and pan; the prompt list with each configuration's PSNR / SSIM / LPIPS,
//! sortable worst first; and the grid of prompts × configurations coloured by a paired metric.
//! Images are decoded on helper threads and shown through the byte-budgeted texture cache.
//!
//! Memory: a full image of 512×512 is 1 MiB as a texture and at most 1 + configurations of
//! them are shown at once; a grid thumbnail is at most [`THUMB`]² × 4 = 64 KiB, so even all
//! 150 prompts × (reference + 6 configurations) of them would be 67 MiB, within the app's
//! 256 MiB texture budget. Only the grid's visible rows are decoded, and the cache evicts the
//! least recently used beyond its budget; the CPU side keeps no decoded images (they go
//! straight to textures), only the last [`DIFF_CACHE`] difference maps.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::Shared;
use super::preview::TextureCache;
use crate::bench::{BenchFolder, ConfigurationImages, PairedMetric};
use crate::metrics::images::load_rgb;
use crate::report::benchmark::{difference_image, fit_within};
use crate::report::colormap::difference_rgb;

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

/// The difference view's amplifications.
pub const GAINS: [f32; 6] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0];

/// The longest side of a grid thumbnail (pixels).
pub const THUMB: u32 = 128;

/// Decodes running at once (the machine's cores are shared with the worker's job).
const MAX_DECODES: usize = 3;

/// Difference maps kept (|Δ|, one byte per pixel; their colours at each gain are textures).
const DIFF_CACHE: usize = 12;

/// Half a blink: the reference, then the focus configuration, this long each.
const BLINK_SECONDS: f64 = 0.5;

/// The image views' options (persisted with the tab's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ViewOptions {
    pub mode: ViewMode,
    /// The metric the prompt list is sorted by (worst first); `None`: prompts in index order.
    pub sort: Option<PairedMetric>,
    /// The configuration whose values sort the list, the swipe's and the difference's
    /// configuration (empty: the first).
    pub focus: String,
    /// Configurations hidden from the side-by-side view and the grid.
    pub hidden: Vec<String>,
    /// The difference view's amplification.
    pub gain: f32,
    /// The metric the grid's cells are coloured by.
    pub grid_metric: PairedMetric,
}

impl Default for ViewOptions {
    fn default() -> Self {
        Self {
            mode: ViewMode::Side,
            sort: None,
            focus: String::new(),
            hidden: Vec::new(),
            gain: 8.0,
            grid_metric: PairedMetric::Psnr,
        }
    }
}

impl ViewOptions {
    /// The focus configuration: the one named; when none is (or it is not in the folder), the
    /// one furthest from the reference by mean SSIM, or the last without metrics: where a
    /// user looks first is where quantization hurts most, not at an fp32 twin.
    pub fn focus<'a>(&self, folder: &'a BenchFolder) -> Option<&'a ConfigurationImages> {
        folder.configuration(&self.focus).or_else(|| {
            folder
                .configurations
                .iter()
                .filter_map(|c| Some((c, c.result.metrics.as_ref()?.ssim_mean?)))
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(c, _)| c)
                .or_else(|| folder.configurations.last())
        })
    }

    /// The configurations shown (not hidden), in the folder's order.
    pub fn shown<'a>(&self, folder: &'a BenchFolder) -> Vec<&'a ConfigurationImages> {
        folder
            .configurations
            .iter()
            .filter(|c| !self.hidden.contains(&c.name))
            .collect()
    }
}

/// The prompts in list order: index order, or worst first by `sort` of the focus
/// configuration (`BenchFolder::worst_first`), the prompts it has no value for after, by index.
pub fn prompt_order(folder: &BenchFolder, o: &ViewOptions) -> Vec<usize> {
    let all = 0..folder.prompts.len();
    let (Some(metric), Some(focus)) = (o.sort, o.focus(folder)) else {
        return all.collect();
    };
    let mut order: Vec<usize> = folder
        .worst_first(&focus.name, metric)
        .into_iter()
        .map(|(i, _)| i)
        .filter(|&i| i < folder.prompts.len())
        .collect();
    let seen: HashSet<usize> = order.iter().copied().collect();
    order.extend(all.filter(|i| !seen.contains(i)));
    order
}

/// A picture decoded for a texture: a full image, or a thumbnail of at most `max_side`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ImageKey {
    path: PathBuf,
    max_side: Option<u32>,
}

impl ImageKey {
    fn texture_key(&self) -> String {
        match self.max_side {
            None => format!("compare:{}", self.path.display()),
            Some(s) => format!("compare:{}@{s}", self.path.display()),
        }
    }
}

/// How an image looks this frame.
enum Picture {
    Ready(egui::TextureHandle),
    Pending,
    /// A placeholder with its reason (missing, unreadable).
    Missing(String),
}

type Decoded = (ImageKey, Result<egui::ColorImage, String>);

/// A helper thread's answer for `key`: sent by [`Reply::send`], or, when the thread panics
/// before it does, an error sent as the guard drops; so the key always leaves the waiting
/// set (`in_flight`, `pending`) and the screenshot never waits forever.
struct Reply<K: Clone, T> {
    tx: crossbeam_channel::Sender<(K, Result<T, String>)>,
    key: K,
    ctx: egui::Context,
    sent: bool,
}

impl<K: Clone, T> Reply<K, T> {
    fn new(
        tx: crossbeam_channel::Sender<(K, Result<T, String>)>,
        key: K,
        ctx: egui::Context,
    ) -> Self {
        Self {
            tx,
            key,
            ctx,
            sent: false,
        }
    }

    fn send(mut self, result: Result<T, String>) {
        self.sent = true;
        // The view may be gone (the tab closed): nobody to tell.
        let _ = self.tx.send((self.key.clone(), result));
        self.ctx.request_repaint();
    }
}

impl<K: Clone, T> Drop for Reply<K, T> {
    fn drop(&mut self) {
        if !self.sent {
            let _ = self.tx.send((
                self.key.clone(),
                Err("the helper thread failed (panicked); see the log".to_owned()),
            ));
            self.ctx.request_repaint();
        }
    }
}

/// PNG decoding on helper threads, at most [`MAX_DECODES`] at once, into the texture cache.
/// Each frame asks again for what it shows; what is asked and not cached is queued, newest
/// frame's requests only, so scrolled-past thumbnails are never decoded.
struct Images {
    tx: crossbeam_channel::Sender<Decoded>,
    rx: crossbeam_channel::Receiver<Decoded>,
    in_flight: HashSet<ImageKey>,
    wanted: Vec<ImageKey>,
    failed: HashMap<ImageKey, String>,
    /// Some image asked for this frame is not there yet.
    missing: bool,
}

impl Default for Images {
    fn default() -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        Self {
            tx,
            rx,
            in_flight: HashSet::new(),
            wanted: Vec::new(),
            failed: HashMap::new(),
            missing: false,
        }
    }
}

/// Zoomed in, each image pixel shows as a block (nearest); zoomed out, smoothed (linear).
const FULL_OPTIONS: egui::TextureOptions = egui::TextureOptions {
    magnification: egui::TextureFilter::Nearest,
    ..egui::TextureOptions::LINEAR
};

fn decode(key: &ImageKey) -> Result<egui::ColorImage, String> {
    let rgb = load_rgb(&key.path).map_err(|e| super::feedback::error_sentence(&e))?;
    let (w, h) = (rgb.width, rgb.height);
    match key.max_side {
        Some(side) if w.max(h) > side => {
            let buffer = image::RgbImage::from_raw(w, h, rgb.data)
                .ok_or_else(|| format!("{}: pixels do not fit its size", key.path.display()))?;
            let (tw, th) = fit_within(w, h, side);
            let small = image::imageops::thumbnail(&buffer, tw, th);
            Ok(egui::ColorImage::from_rgb(
                [tw as usize, th as usize],
                small.as_raw(),
            ))
        }
        _ => Ok(egui::ColorImage::from_rgb(
            [w as usize, h as usize],
            &rgb.data,
        )),
    }
}

impl Images {
    /// Takes finished decodes into the texture cache.
    fn poll(&mut self, ctx: &egui::Context, textures: &mut TextureCache) {
        while let Ok((key, result)) = self.rx.try_recv() {
            self.in_flight.remove(&key);
            match result {
                Ok(image) => {
                    let options = if key.max_side.is_some() {
                        egui::TextureOptions::LINEAR
                    } else {
                        FULL_OPTIONS
                    };
                    let _ = textures.get_or_insert(ctx, &key.texture_key(), options, || image);
                }
                Err(e) => {
                    self.failed.insert(key, e);
                }
            }
        }
        self.wanted.clear();
        self.missing = false;
    }

    /// The picture of `path` (None: the image does not exist: `absent` says why).
    fn get(
        &mut self,
        textures: &mut TextureCache,
        path: Option<&Path>,
        max_side: Option<u32>,
        absent: &str,
    ) -> Picture {
        let Some(path) = path else {
            return Picture::Missing(absent.to_owned());
        };
        let key = ImageKey {
            path: path.to_owned(),
            max_side,
        };
        if let Some(t) = textures.get(&key.texture_key()) {
            return Picture::Ready(t);
        }
        if let Some(e) = self.failed.get(&key) {
            return Picture::Missing(e.clone());
        }
        self.missing = true;
        if !self.wanted.contains(&key) {
            self.wanted.push(key);
        }
        Picture::Pending
    }

    /// Starts decodes for what this frame asked for, up to the cap.
    fn pump(&mut self, ctx: &egui::Context) {
        for key in std::mem::take(&mut self.wanted) {
            if self.in_flight.len() >= MAX_DECODES {
                break;
            }
            if !self.in_flight.insert(key.clone()) {
                continue;
            }
            let reply = Reply::new(self.tx.clone(), key, ctx.clone());
            std::thread::spawn(move || {
                let result = decode(&reply.key);
                reply.send(result);
            });
        }
    }
}

/// A difference map of one image (one prompt of one configuration) against its reference
/// twin. Not of the gain: a new gain recolours the map, it does not decode again.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DiffKey {
    reference: PathBuf,
    image: PathBuf,
}

/// |configuration − reference| of one image (`report::benchmark::difference_image`, as the
/// report's); coloured per gain by `report::colormap::difference_rgb` when drawn.
#[derive(Debug, Clone)]
pub struct Difference {
    pub width: usize,
    pub height: usize,
    /// The largest channel |Δ| of each pixel, row-major.
    pub diff: Vec<u8>,
    /// The largest |Δ| of the image (0: identical).
    pub max: u8,
}

fn difference(key: &DiffKey) -> Result<Difference, String> {
    let (w, h, diff) = difference_image(&key.reference, &key.image)
        .map_err(|e| super::feedback::error_sentence(&e))?;
    Ok(Difference {
        width: w as usize,
        height: h as usize,
        max: diff.iter().copied().max().unwrap_or(0),
        diff,
    })
}

type DiffDone = (DiffKey, Result<Arc<Difference>, String>);

/// Difference maps computed on helper threads, at most [`MAX_DECODES`] at once (a map asked
/// for while they run is asked again next frame: only what is still shown then starts), the
/// last [`DIFF_CACHE`] kept.
struct Differences {
    tx: crossbeam_channel::Sender<DiffDone>,
    rx: crossbeam_channel::Receiver<DiffDone>,
    done: HashMap<DiffKey, Result<Arc<Difference>, String>>,
    order: VecDeque<DiffKey>,
    pending: HashSet<DiffKey>,
}

impl Default for Differences {
    fn default() -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        Self {
            tx,
            rx,
            done: HashMap::new(),
            order: VecDeque::new(),
            pending: HashSet::new(),
        }
    }
}

impl Differences {
    fn poll(&mut self) {
        while let Ok((key, result)) = self.rx.try_recv() {
            self.pending.remove(&key);
            self.order.push_back(key.clone());
            self.done.insert(key, result);
            while self.order.len() > DIFF_CACHE {
                if let Some(old) = self.order.pop_front() {
                    self.done.remove(&old);
                }
            }
        }
    }

    /// The map of `key`, started on a helper thread when missing and a thread is free (None
    /// until computed).
    fn get(
        &mut self,
        ctx: &egui::Context,
        key: DiffKey,
    ) -> Option<&Result<Arc<Difference>, String>> {
        if !self.done.contains_key(&key)
            && self.pending.len() < MAX_DECODES
            && self.pending.insert(key.clone())
        {
            let reply = Reply::new(self.tx.clone(), key.clone(), ctx.clone());
            std::thread::spawn(move || {
                let result = difference(&reply.key).map(Arc::new);
                reply.send(result);
            });
        }
        self.done.get(&key)
    }
}

/// The zoom and pan every image view shares: `scale` points per image pixel (None: each
/// image fits its slot) and the image point (0..1 of its width and height) at the slots'
/// centres.
#[derive(Debug, Clone, Copy, PartialEq)]
struct ZoomPan {
    scale: Option<f32>,
    centre: egui::Vec2,
}

impl Default for ZoomPan {
    fn default() -> Self {
        Self {
            scale: None,
            centre: egui::vec2(0.5, 0.5),
        }
    }
}

fn fit_scale(slot: egui::Rect, size: egui::Vec2) -> f32 {
    (slot.width() / size.x)
        .min(slot.height() / size.y)
        .max(1e-3)
}

impl ZoomPan {
    fn scale_in(&self, slot: egui::Rect, size: egui::Vec2) -> f32 {
        self.scale.unwrap_or_else(|| fit_scale(slot, size))
    }

    /// Where an image of `size` pixels lies on screen in `slot`.
    fn placement(&self, slot: egui::Rect, size: egui::Vec2) -> egui::Rect {
        let s = self.scale_in(slot, size);
        let c = if self.scale.is_some() {
            self.centre
        } else {
            egui::vec2(0.5, 0.5)
        };
        egui::Rect::from_min_size(
            slot.center() - egui::vec2(c.x * size.x * s, c.y * size.y * s),
            size * s,
        )
    }

    /// Drag pans, the wheel (or ctrl+wheel, a pinch) zooms around the pointer.
    fn interact(&mut self, ui: &egui::Ui, r: &egui::Response, slot: egui::Rect, size: egui::Vec2) {
        let s = self.scale_in(slot, size);
        if self.scale.is_none() && (r.dragged() || r.hovered()) {
            // Zooming or panning from "fit" starts from what is on screen.
            let (zoom, scroll) = ui.input(|i| (i.zoom_delta(), i.smooth_scroll_delta.y));
            if r.dragged() || zoom != 1.0 || scroll != 0.0 {
                self.scale = Some(s);
                self.centre = egui::vec2(0.5, 0.5);
            }
        }
        if r.dragged() {
            let d = r.drag_delta();
            self.centre -= egui::vec2(d.x / (size.x * s), d.y / (size.y * s));
        }
        if r.hovered() {
            let (zoom, scroll) = ui.input(|i| (i.zoom_delta(), i.smooth_scroll_delta.y));
            let factor = zoom * (scroll / 200.0).exp();
            if factor != 1.0
                && let Some(p) = r.hover_pos()
            {
                self.zoom_at(slot, size, p, factor);
            }
        }
    }

    /// Multiplies the scale by `factor`, keeping the image point under `p` under it.
    fn zoom_at(&mut self, slot: egui::Rect, size: egui::Vec2, p: egui::Pos2, factor: f32) {
        let s = self.scale_in(slot, size);
        if self.scale.is_none() {
            self.centre = egui::vec2(0.5, 0.5);
        }
        let to = (s * factor).clamp(0.02, 64.0);
        let off = p - slot.center();
        let under = self.centre + egui::vec2(off.x / (size.x * s), off.y / (size.y * s));
        self.centre = under - egui::vec2(off.x / (size.x * to), off.y / (size.y * to));
        self.scale = Some(to);
    }
}

/// The views' state: the selected prompt, zoom and pan, pending decodes.
pub struct CompareView {
    /// The selected prompt's image index.
    pub selected: usize,
    zoom: ZoomPan,
    /// The swipe divider, 0..1 of the view's width from the left.
    swipe: f32,
    /// The divider's handle on screen, last frame (for tests).
    swipe_handle: Option<egui::Rect>,
    blink: bool,
    images: Images,
    diffs: Differences,
    /// The list's order, last frame.
    order: Vec<usize>,
    /// The selection moved by keyboard: scroll the list to it.
    scroll_to_selected: bool,
    /// The difference shown, last frame: waiting for it counts as waiting for images.
    diff_missing: bool,
    /// The folder whose failed decodes are remembered (another folder forgets them).
    folder_dir: PathBuf,
    /// The list's sort and focus last frame: a new sort selects its first (worst) prompt.
    sorted_by: Option<(Option<PairedMetric>, String)>,
}

impl Default for CompareView {
    fn default() -> Self {
        Self {
            selected: 0,
            zoom: ZoomPan::default(),
            swipe: 0.5,
            swipe_handle: None,
            blink: false,
            images: Images::default(),
            diffs: Differences::default(),
            order: Vec::new(),
            scroll_to_selected: false,
            diff_missing: false,
            folder_dir: PathBuf::new(),
            sorted_by: None,
        }
    }
}

/// A configuration's paired values of image `index` as one line.
fn values_line(c: &ConfigurationImages, index: usize) -> String {
    match c.paired.get(&index) {
        None if c.images.contains_key(&index) => "not scored".to_owned(),
        None => "no image yet".to_owned(),
        Some(v) => PairedMetric::ALL
            .iter()
            .map(|m| {
                let value = m.of(v).map(|x| m.format(x)).unwrap_or_else(|| "-".into());
                format!("{} {value}", m.name().to_uppercase())
            })
            .collect::<Vec<_>>()
            .join("  "),
    }
}

fn truncate(text: &str, chars: usize) -> String {
    if text.chars().count() <= chars {
        text.to_owned()
    } else {
        format!("{}...", text.chars().take(chars).collect::<String>())
    }
}

/// Green (best) through yellow to red (worst), `t` in 0..1.
fn quality_colour(t: f32) -> egui::Color32 {
    let t = t.clamp(0.0, 1.0);
    let (r, g) = if t < 0.5 {
        (t * 2.0, 1.0)
    } else {
        (1.0, 1.0 - (t - 0.5) * 2.0)
    };
    egui::Color32::from_rgb((r * 220.0) as u8, (g * 190.0) as u8, 40)
}

const PLACEHOLDER: egui::Color32 = egui::Color32::from_gray(60);

impl CompareView {
    /// True while images the view shows are being decoded (the screenshot waits for them).
    pub fn waiting_for_images(&self) -> bool {
        self.images.missing || self.diff_missing
    }

    /// The swipe divider's position, 0..1 of the view's width from the left.
    pub fn swipe_position(&self) -> f32 {
        self.swipe
    }

    /// The swipe divider's handle on screen (when the swipe view was drawn last frame).
    pub fn swipe_handle(&self) -> Option<egui::Rect> {
        self.swipe_handle
    }

    /// The prompt list's order as drawn last frame.
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    pub fn blinking(&self) -> bool {
        self.blink
    }

    /// Points per image pixel (None: fit).
    pub fn zoom(&self) -> Option<f32> {
        self.zoom.scale
    }

    /// The difference map of image `index` of configuration `config`, once computed.
    pub fn difference(
        &self,
        folder: &BenchFolder,
        index: usize,
        config: &str,
    ) -> Option<&Result<Arc<Difference>, String>> {
        let key = Self::diff_key(folder, index, config)?;
        self.diffs.done.get(&key)
    }

    fn diff_key(folder: &BenchFolder, index: usize, config: &str) -> Option<DiffKey> {
        Some(DiffKey {
            reference: folder.reference.get(index)?.clone()?,
            image: folder.configuration(config)?.images.get(&index)?.clone(),
        })
    }

    /// Draws the views of `folder`.
    pub fn ui(
        &mut self,
        ui: &mut egui::Ui,
        folder: &BenchFolder,
        o: &mut ViewOptions,
        shared: &mut Shared,
    ) {
        let ctx = ui.ctx().clone();
        if self.folder_dir != folder.dir {
            self.folder_dir = folder.dir.clone();
            self.images.failed.clear();
        }
        self.images.poll(&ctx, &mut shared.textures);
        self.diffs.poll();
        self.diff_missing = false;
        self.swipe_handle = None;
        self.order = prompt_order(folder, o);
        let sorted_by = Some((o.sort, o.focus.clone()));
        if self.sorted_by != sorted_by {
            // Sorted worst first, the worst is what one wants to see first.
            if self.sorted_by.is_some()
                && o.sort.is_some()
                && let Some(&first) = self.order.first()
            {
                self.selected = first;
                self.scroll_to_selected = true;
            }
            self.sorted_by = sorted_by;
        }
        if !self.order.is_empty() && self.selected >= folder.prompts.len() {
            self.selected = 0;
        }
        self.keyboard(ui);
        self.toolbar(ui, folder, o);
        ui.separator();
        if folder.prompts.is_empty() {
            ui.label("This benchmark has no images yet.");
            return;
        }
        if o.mode == ViewMode::Grid {
            self.grid(ui, folder, o, &mut shared.textures);
        } else {
            egui::Panel::left("compare-prompts")
                .default_size(320.0)
                .min_size(220.0)
                .show(ui, |ui| self.prompt_list(ui, folder, o));
            egui::CentralPanel::default_margins().show(ui, |ui| {
                self.prompt_header(ui, folder);
                match o.mode {
                    ViewMode::Side => self.side(ui, folder, o, &mut shared.textures),
                    ViewMode::Swipe => self.swipe_view(ui, folder, o, &mut shared.textures),
                    ViewMode::Diff => self.diff_view(ui, folder, o, &mut shared.textures),
                    ViewMode::Grid => {}
                }
            });
        }
        self.images.pump(&ctx);
        if self.blink && o.mode == ViewMode::Side {
            let t = ctx.input(|i| i.time);
            let left = BLINK_SECONDS - t.rem_euclid(BLINK_SECONDS);
            ctx.request_repaint_after(std::time::Duration::from_secs_f64(left));
        }
    }

    /// Up/Down and k/j move the selection in list order; B toggles the blink. Not while a
    /// text field has the keyboard.
    fn keyboard(&mut self, ui: &egui::Ui) {
        if ui.ctx().egui_wants_keyboard_input() {
            return;
        }
        let (down, up, blink) = ui.input(|i| {
            (
                i.key_pressed(egui::Key::ArrowDown) || i.key_pressed(egui::Key::J),
                i.key_pressed(egui::Key::ArrowUp) || i.key_pressed(egui::Key::K),
                i.key_pressed(egui::Key::B),
            )
        });
        if blink {
            self.blink = !self.blink;
        }
        if (down || up) && !self.order.is_empty() {
            // From a selection not in the list, either key goes to its first prompt.
            let to = match self.order.iter().position(|&i| i == self.selected) {
                None => 0,
                Some(at) if down => (at + 1).min(self.order.len() - 1),
                Some(at) => at.saturating_sub(1),
            };
            self.selected = self.order[to];
            self.scroll_to_selected = true;
        }
    }

    fn toolbar(&mut self, ui: &mut egui::Ui, folder: &BenchFolder, o: &mut ViewOptions) {
        ui.horizontal_wrapped(|ui| {
            for mode in ViewMode::ALL {
                ui.selectable_value(&mut o.mode, mode, mode.label());
            }
            ui.separator();
            ui.label("Show:");
            for c in &folder.configurations {
                let mut shown = !o.hidden.contains(&c.name);
                if ui
                    .checkbox(&mut shown, &c.name)
                    .on_hover_text("Show this configuration in the side-by-side view and the grid")
                    .changed()
                {
                    if shown {
                        o.hidden.retain(|h| h != &c.name);
                    } else {
                        o.hidden.push(c.name.clone());
                    }
                }
            }
            ui.separator();
            let focus = o.focus(folder).map(|c| c.name.clone()).unwrap_or_default();
            super::labelled(ui, "Focus:", |ui| {
                egui::ComboBox::from_id_salt("compare-focus")
                    .selected_text(&focus)
                    .show_ui(ui, |ui| {
                        for c in &folder.configurations {
                            ui.selectable_value(&mut o.focus, c.name.clone(), &c.name);
                        }
                    })
                    .response
            })
            .on_hover_text(
                "The configuration the list is sorted by, and the swipe's, blink's and \
                     difference's configuration",
            );
            let sort_text = |s: Option<PairedMetric>| match s {
                None => "index order".to_owned(),
                Some(m) => format!("worst {} first", m.name().to_uppercase()),
            };
            super::labelled(ui, "Sort:", |ui| {
                egui::ComboBox::from_id_salt("compare-sort")
                    .selected_text(sort_text(o.sort))
                    .show_ui(ui, |ui| {
                        ui.selectable_value(&mut o.sort, None, sort_text(None));
                        for m in PairedMetric::ALL {
                            ui.add_enabled_ui(folder.has_metric(m), |ui| {
                                ui.selectable_value(&mut o.sort, Some(m), sort_text(Some(m)))
                                    .on_disabled_hover_text("No image has this metric");
                            });
                        }
                    })
                    .response
            });
            ui.separator();
            match o.mode {
                ViewMode::Grid => {
                    super::labelled(ui, "Colour by:", |ui| {
                        egui::ComboBox::from_id_salt("compare-grid-metric")
                            .selected_text(o.grid_metric.name().to_uppercase())
                            .show_ui(ui, |ui| {
                                for m in PairedMetric::ALL {
                                    ui.selectable_value(
                                        &mut o.grid_metric,
                                        m,
                                        m.name().to_uppercase(),
                                    );
                                }
                            })
                            .response
                    });
                }
                mode => {
                    if ui
                        .button("Fit")
                        .on_hover_text("Each image fits its place")
                        .clicked()
                    {
                        self.zoom = ZoomPan::default();
                    }
                    if ui
                        .button("1:1")
                        .on_hover_text("One image pixel per screen pixel")
                        .clicked()
                    {
                        self.zoom.scale = Some(1.0 / ui.ctx().pixels_per_point());
                    }
                    let zoom = match self.zoom.scale {
                        None => "fit".to_owned(),
                        Some(s) => format!("{:.0}%", s * ui.ctx().pixels_per_point() * 100.0),
                    };
                    ui.label(format!("zoom {zoom}")).on_hover_text(
                        "Wheel or ctrl+wheel over an image zooms around the pointer, drag pans; \
                         every image follows. Zoomed in, pixels show as blocks.",
                    );
                    if mode == ViewMode::Side {
                        ui.toggle_value(&mut self.blink, "Blink (B)")
                            .on_hover_text(format!(
                                "The first image alternates between the reference and the focus \
                             configuration every {BLINK_SECONDS} s, so that changes flicker; \
                             B toggles it"
                            ));
                    }
                    if mode == ViewMode::Diff {
                        super::labelled(ui, "Gain:", |ui| {
                            egui::ComboBox::from_id_salt("compare-gain")
                                .selected_text(format!("× {}", o.gain))
                                .show_ui(ui, |ui| {
                                    for g in GAINS {
                                        ui.selectable_value(&mut o.gain, g, format!("× {g}"));
                                    }
                                })
                                .response
                        })
                        .on_hover_text("|Δ| is multiplied by the gain before colouring");
                    }
                }
            }
        });
    }

    fn prompt_list(&mut self, ui: &mut egui::Ui, folder: &BenchFolder, o: &ViewOptions) {
        let focus = o.focus(folder);
        ui.label(match (o.sort, focus) {
            (Some(m), Some(f)) => format!("Prompts, worst {} of {} first", m.label(), f.name),
            _ => "Prompts".to_owned(),
        });
        let line = ui.text_style_height(&egui::TextStyle::Body);
        let row_h = 2.0 * line + 2.0 * ui.spacing().button_padding.y + ui.spacing().item_spacing.y;
        let mut area = egui::ScrollArea::vertical().auto_shrink([false, false]);
        if std::mem::take(&mut self.scroll_to_selected)
            && let Some(at) = self.order.iter().position(|&i| i == self.selected)
        {
            let height = ui.available_height();
            let id = ui.make_persistent_id("compare-prompts-scroll");
            let offset = egui::scroll_area::State::load(ui.ctx(), id)
                .map(|s| s.clamped_offset().y)
                .unwrap_or(0.0);
            let top = at as f32 * row_h;
            if top < offset {
                area = area.vertical_scroll_offset(top);
            } else if top + row_h > offset + height - row_h {
                area = area.vertical_scroll_offset(top + 2.0 * row_h - height);
            }
        }
        let width = ui.available_width();
        let chars = ((width / (0.55 * line)) as usize)
            .saturating_sub(14)
            .max(12);
        area.id_salt("compare-prompts-scroll").show_rows(
            ui,
            row_h - ui.spacing().item_spacing.y,
            self.order.len(),
            |ui, range| {
                // Two lines per row, cut to the list's width by `truncate` (egui's truncation
                // would keep one line only).
                ui.style_mut().wrap_mode = Some(egui::TextWrapMode::Extend);
                for &i in &self.order[range] {
                    let Some(p) = folder.prompts.get(i) else {
                        continue;
                    };
                    let values = focus
                        .map(|c| format!("{}: {}", c.name, values_line(c, i)))
                        .unwrap_or_default();
                    let text = format!(
                        "#{}  seed {}  {}\n{values}",
                        i,
                        p.seed,
                        truncate(&p.prompt, chars)
                    );
                    let mut tip = format!("image {}, seed {}\n{}\n", i, p.seed, p.prompt);
                    for c in &folder.configurations {
                        tip.push_str(&format!("\n{}: {}", c.name, values_line(c, i)));
                    }
                    tip.push_str("\n\nUp/Down or k/j: previous/next prompt");
                    let r = ui
                        .add(
                            egui::Button::selectable(self.selected == i, text)
                                .min_size(egui::vec2(width, 0.0)),
                        )
                        .on_hover_text(tip);
                    if r.clicked() {
                        self.selected = i;
                    }
                }
            },
        );
    }

    fn prompt_header(&self, ui: &mut egui::Ui, folder: &BenchFolder) {
        if let Some(p) = folder.prompts.get(self.selected) {
            ui.add(
                egui::Label::new(
                    egui::RichText::new(format!(
                        "Prompt #{} (seed {}): {}",
                        p.index, p.seed, p.prompt
                    ))
                    .strong(),
                )
                .truncate(),
            );
        }
    }

    /// The reference's picture of image `index` (a placeholder that says why it is missing).
    fn reference_picture(
        &mut self,
        folder: &BenchFolder,
        index: usize,
        textures: &mut TextureCache,
        max_side: Option<u32>,
    ) -> Picture {
        let why = match &folder.reference_problem {
            Some(p) => format!("reference missing: {p}"),
            None if folder.results.settings.reference.is_none() => {
                "this run has no reference set".to_owned()
            }
            None => "no reference image for this prompt".to_owned(),
        };
        let path = folder.reference.get(index).and_then(|p| p.as_deref());
        self.images.get(textures, path, max_side, &why)
    }

    fn config_picture(
        &mut self,
        c: &ConfigurationImages,
        index: usize,
        textures: &mut TextureCache,
        max_side: Option<u32>,
    ) -> Picture {
        let path = c.images.get(&index).map(PathBuf::as_path);
        self.images
            .get(textures, path, max_side, "not generated yet")
    }

    /// Draws `picture` in `slot` at the shared zoom and pan; returns the slot's response.
    fn draw(&mut self, ui: &mut egui::Ui, slot: egui::Rect, picture: &Picture, id: egui::Id) {
        let r = ui.interact(slot, id, egui::Sense::click_and_drag());
        if let Picture::Ready(t) = picture {
            self.zoom.interact(ui, &r, slot, t.size_vec2());
        }
        self.paint(ui, slot, slot, picture);
    }

    /// Paints `picture`, placed in `slot` by the shared zoom, within `clip` (the swipe's left
    /// part, or the whole slot): the image, or a placeholder saying why there is none.
    fn paint(&self, ui: &egui::Ui, slot: egui::Rect, clip: egui::Rect, picture: &Picture) {
        let painter = ui.painter_at(clip);
        painter.rect_filled(clip, 0.0, egui::Color32::from_gray(24));
        match picture {
            Picture::Ready(t) => {
                let at = self.zoom.placement(slot, t.size_vec2());
                let uv = egui::Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0));
                painter.image(t.id(), at, uv, egui::Color32::WHITE);
            }
            Picture::Pending => placeholder(&painter, clip, "decoding..."),
            Picture::Missing(why) => placeholder(&painter, clip, why),
        }
    }

    /// Slots for `n` images of aspect `aspect` (height / width) with a caption of `caption`
    /// points above each, as large as `area` allows.
    fn layout(area: egui::Rect, n: usize, aspect: f32, caption: f32) -> Vec<egui::Rect> {
        let gap = 8.0;
        let n = n.max(1);
        let (mut best, mut best_w) = (1, 0.0f32);
        for cols in 1..=n {
            let rows = n.div_ceil(cols);
            let w = (area.width() - gap * (cols - 1) as f32) / cols as f32;
            let h = (area.height() - (gap + caption) * rows as f32) / rows as f32;
            let w = w.min(h / aspect).max(16.0);
            if w > best_w {
                (best, best_w) = (cols, w);
            }
        }
        (0..n)
            .map(|k| {
                let (row, col) = (k / best, k % best);
                let min = area.min
                    + egui::vec2(
                        col as f32 * (best_w + gap),
                        row as f32 * (best_w * aspect + caption + gap) + caption,
                    );
                egui::Rect::from_min_size(min, egui::vec2(best_w, best_w * aspect))
            })
            .collect()
    }

    fn caption(ui: &mut egui::Ui, slot: egui::Rect, height: f32, title: &str, values: &str) {
        let rect = egui::Rect::from_min_max(slot.min - egui::vec2(0.0, height), slot.right_top());
        ui.scope_builder(egui::UiBuilder::new().max_rect(rect), |ui| {
            ui.spacing_mut().item_spacing.y = 0.0;
            ui.style_mut().wrap_mode = Some(egui::TextWrapMode::Truncate);
            ui.label(egui::RichText::new(title).strong());
            if !values.is_empty() {
                ui.label(egui::RichText::new(values).small());
            }
        });
    }

    fn side(
        &mut self,
        ui: &mut egui::Ui,
        folder: &BenchFolder,
        o: &ViewOptions,
        textures: &mut TextureCache,
    ) {
        let i = self.selected;
        let shown = o.shown(folder);
        let focus = o.focus(folder);
        let blink_focus = self.blink && (ui.input(|inp| inp.time) / BLINK_SECONDS) as u64 % 2 == 1;
        // (title, values, picture)
        let mut slots: Vec<(String, String, Picture)> = Vec::new();
        match (blink_focus, focus) {
            (true, Some(f)) => {
                let p = self.config_picture(f, i, textures, None);
                slots.push((format!("blink: {}", f.name), values_line(f, i), p));
            }
            _ => {
                let p = self.reference_picture(folder, i, textures, None);
                let title = if self.blink {
                    "blink: reference"
                } else {
                    "reference"
                };
                slots.push((title.to_owned(), String::new(), p));
            }
        }
        for c in shown {
            let p = self.config_picture(c, i, textures, None);
            slots.push((c.name.clone(), values_line(c, i), p));
        }
        let aspect = slots
            .iter()
            .find_map(|(_, _, p)| match p {
                Picture::Ready(t) => Some(t.size_vec2().y / t.size_vec2().x),
                _ => None,
            })
            .unwrap_or(1.0);
        let caption = 2.0 * ui.text_style_height(&egui::TextStyle::Body) + 4.0;
        let area = ui.available_rect_before_wrap();
        let rects = Self::layout(area, slots.len(), aspect, caption);
        for (k, ((title, values, picture), slot)) in slots.iter().zip(&rects).enumerate() {
            Self::caption(ui, *slot, caption, title, values);
            self.draw(ui, *slot, picture, ui.scope_id().with(("compare-side", k)));
        }
        ui.allocate_rect(area, egui::Sense::hover());
    }

    fn swipe_view(
        &mut self,
        ui: &mut egui::Ui,
        folder: &BenchFolder,
        o: &ViewOptions,
        textures: &mut TextureCache,
    ) {
        let i = self.selected;
        let Some(focus) = o.focus(folder) else {
            ui.label("No configuration to compare.");
            return;
        };
        let reference = self.reference_picture(folder, i, textures, None);
        let config = self.config_picture(focus, i, textures, None);
        let caption = 2.0 * ui.text_style_height(&egui::TextStyle::Body) + 4.0;
        let area = ui.available_rect_before_wrap();
        let slot = egui::Rect::from_min_max(area.min + egui::vec2(0.0, caption), area.max);
        ui.scope_builder(
            egui::UiBuilder::new().max_rect(egui::Rect::from_min_max(area.min, slot.right_top())),
            |ui| {
                ui.horizontal(|ui| {
                    ui.label(egui::RichText::new("reference (left)").strong());
                    ui.separator();
                    ui.label(egui::RichText::new(format!("{} (right)", focus.name)).strong());
                    ui.label(egui::RichText::new(values_line(focus, i)).small());
                });
                ui.label(
                    egui::RichText::new("Drag the divider to move it; drag the image to pan.")
                        .small(),
                );
            },
        );
        // The configuration whole, then the reference over it up to the divider.
        self.draw(ui, slot, &config, ui.scope_id().with("compare-swipe"));
        let x = slot.left() + self.swipe * slot.width();
        let left = egui::Rect::from_min_max(slot.min, egui::pos2(x, slot.bottom()));
        self.paint(ui, slot, left, &reference);
        let stroke = egui::Stroke::new(2.0, egui::Color32::WHITE);
        ui.painter().vline(x, slot.y_range(), stroke);
        let handle = egui::Rect::from_center_size(
            egui::pos2(x, slot.center().y),
            egui::vec2(16.0, slot.height()),
        );
        let r = ui
            .interact(
                handle,
                ui.scope_id().with("compare-swipe-divider"),
                egui::Sense::drag(),
            )
            .on_hover_cursor(egui::CursorIcon::ResizeHorizontal);
        if r.dragged()
            && let Some(p) = r.interact_pointer_pos()
        {
            self.swipe = ((p.x - slot.left()) / slot.width()).clamp(0.0, 1.0);
        }
        ui.painter().circle(
            egui::pos2(x, slot.center().y),
            8.0,
            egui::Color32::from_gray(40),
            stroke,
        );
        self.swipe_handle = Some(handle);
        ui.allocate_rect(area, egui::Sense::hover());
    }

    fn diff_view(
        &mut self,
        ui: &mut egui::Ui,
        folder: &BenchFolder,
        o: &ViewOptions,
        textures: &mut TextureCache,
    ) {
        let i = self.selected;
        let Some(focus) = o.focus(folder) else {
            ui.label("No configuration to compare.");
            return;
        };
        let gain = o.gain;
        let key = Self::diff_key(folder, i, &focus.name);
        let picture = match &key {
            None if !focus.images.contains_key(&i) => {
                Picture::Missing(format!("{}: not generated yet", focus.name))
            }
            None => Picture::Missing(match &folder.reference_problem {
                Some(p) => format!("no difference: reference missing: {p}"),
                None => "no difference: no reference image for this prompt".to_owned(),
            }),
            Some(key) => match self.diffs.get(ui.ctx(), key.clone()) {
                None => {
                    self.diff_missing = true;
                    Picture::Pending
                }
                Some(Err(e)) => Picture::Missing(e.clone()),
                Some(Ok(d)) => {
                    let d = d.clone();
                    let name = format!(
                        "compare-diff:{}:{}:{gain}",
                        key.reference.display(),
                        key.image.display()
                    );
                    // Coloured at this gain here: a 512² map is a millisecond's work, and the
                    // texture of each gain stays in the cache.
                    Picture::Ready(textures.get_or_insert(ui.ctx(), &name, FULL_OPTIONS, || {
                        egui::ColorImage::from_rgb(
                            [d.width, d.height],
                            &difference_rgb(&d.diff, gain),
                        )
                    }))
                }
            },
        };
        let max = key
            .as_ref()
            .and_then(|k| self.diffs.done.get(k))
            .and_then(|d| d.as_ref().ok())
            .map(|d| d.max);
        let saturate = 255.0 / gain;
        ui.label(
            egui::RichText::new(format!("|{} - reference|, gain × {gain}", focus.name)).strong(),
        );
        ui.label(match max {
            Some(0) => "identical: max |Δ| 0 (every pixel equals the reference)".to_owned(),
            Some(m) => format!(
                "max |Δ| {m} of 255 ({}: {})",
                focus.name,
                values_line(focus, i)
            ),
            None => "max |Δ|: -".to_owned(),
        });
        let bar_h = 44.0;
        let area = ui.available_rect_before_wrap();
        let slot = egui::Rect::from_min_max(area.min, area.max - egui::vec2(0.0, bar_h));
        self.draw(ui, slot, &picture, ui.scope_id().with("compare-diff"));
        // The colour bar: |Δ| from 0 to where the colours saturate at this gain.
        let bar = egui::Rect::from_min_size(
            egui::pos2(slot.left(), slot.bottom() + 6.0),
            egui::vec2(slot.width().min(420.0), 14.0),
        );
        let top = saturate.min(255.0);
        let levels: Vec<u8> = (0..256)
            .map(|x| (x as f32 / 255.0 * top).round() as u8)
            .collect();
        let colours = difference_rgb(&levels, gain);
        let bar_texture = textures.get_or_insert(
            ui.ctx(),
            &format!("compare-diff-bar:{gain}"),
            egui::TextureOptions::LINEAR,
            || egui::ColorImage::from_rgb([256, 1], &colours),
        );
        ui.painter().image(
            bar_texture.id(),
            bar,
            egui::Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0)),
            egui::Color32::WHITE,
        );
        let text = egui::Rect::from_min_max(
            egui::pos2(bar.left(), bar.bottom() + 2.0),
            egui::pos2(area.right(), area.bottom()),
        );
        ui.scope_builder(egui::UiBuilder::new().max_rect(text), |ui| {
            ui.label(
                egui::RichText::new(format!(
                    "|Δ| (0-255) × gain {gain}: 0 (dark) to {top:.1} (yellow); larger |Δ| stays yellow"
                ))
                .small(),
            );
        });
        ui.allocate_rect(area, egui::Sense::hover());
    }

    fn grid(
        &mut self,
        ui: &mut egui::Ui,
        folder: &BenchFolder,
        o: &mut ViewOptions,
        textures: &mut TextureCache,
    ) {
        let shown = o.shown(folder);
        let metric = o.grid_metric;
        // The colour scale over the shown values: best green, worst red.
        let values: Vec<f64> = shown
            .iter()
            .flat_map(|c| c.paired.values().filter_map(|v| metric.of(v)))
            .filter(|v| v.is_finite())
            .collect();
        let best = values
            .iter()
            .copied()
            .min_by(|a, b| metric.badness(*a).total_cmp(&metric.badness(*b)));
        let worst = values
            .iter()
            .copied()
            .max_by(|a, b| metric.badness(*a).total_cmp(&metric.badness(*b)));
        let position = |v: f64| -> f32 {
            match (best, worst) {
                _ if v.is_infinite() => 0.0,
                (Some(b), Some(w)) if metric.badness(w) > metric.badness(b) => {
                    ((metric.badness(v) - metric.badness(b))
                        / (metric.badness(w) - metric.badness(b))) as f32
                }
                _ => 0.0,
            }
        };
        ui.horizontal(|ui| {
            ui.label(format!("Cells framed by {}:", metric.label()));
            let (rect, _) = ui.allocate_exact_size(egui::vec2(160.0, 12.0), egui::Sense::hover());
            let n = 32;
            for k in 0..n {
                let x0 = rect.left() + rect.width() * k as f32 / n as f32;
                let x1 = rect.left() + rect.width() * (k + 1) as f32 / n as f32;
                ui.painter().rect_filled(
                    egui::Rect::from_x_y_ranges(x0..=x1, rect.y_range()),
                    0.0,
                    quality_colour(k as f32 / (n - 1) as f32),
                );
            }
            match (best, worst) {
                (Some(b), Some(w)) => ui.label(format!(
                    "best {} (green) to worst {} (red); identical images green, unscored grey. \
                     Click an image to compare it.",
                    metric.format(b),
                    metric.format(w)
                )),
                _ => ui.label("no image has this metric (grey); click an image to compare it"),
            };
        });
        let cell = 112.0f32;
        let label_w = 48.0;
        let text_h = ui.text_style_height(&egui::TextStyle::Small) + 2.0;
        let row_h = cell + text_h + 8.0;
        // Column headers.
        ui.horizontal(|ui| {
            ui.add_sized([label_w, text_h], egui::Label::new("prompt"));
            ui.add_sized([cell, text_h], egui::Label::new("reference").truncate());
            for c in &shown {
                ui.add_sized([cell, text_h], egui::Label::new(&c.name).truncate());
            }
        });
        let order = self.order.clone();
        let mut open = None;
        egui::ScrollArea::both()
            .auto_shrink([false, false])
            .show_rows(ui, row_h, order.len(), |ui, range| {
                for &i in &order[range] {
                    ui.horizontal(|ui| {
                        ui.set_height(row_h);
                        let tip = folder
                            .prompts
                            .get(i)
                            .map(|p| format!("#{i}, seed {}: {}", p.seed, p.prompt))
                            .unwrap_or_default();
                        ui.add_sized([label_w, cell], egui::Label::new(format!("#{i}")))
                            .on_hover_text(tip);
                        let p = self.reference_picture(folder, i, textures, Some(THUMB));
                        if thumb(
                            ui,
                            &p,
                            cell,
                            text_h,
                            None,
                            "reference",
                            &format!("#{i} reference"),
                        )
                        .on_hover_text(format!("#{i} reference"))
                        .clicked()
                        {
                            open = Some(i);
                        }
                        for c in &shown {
                            let p = self.config_picture(c, i, textures, Some(THUMB));
                            let value = c.paired.get(&i).and_then(|v| metric.of(v));
                            let colour = value.map(|v| quality_colour(position(v)));
                            let text = value
                                .map(|v| metric.format(v))
                                .unwrap_or_else(|| "-".into());
                            if thumb(
                                ui,
                                &p,
                                cell,
                                text_h,
                                colour,
                                &text,
                                &format!("#{i} {}", c.name),
                            )
                            .on_hover_text(format!("#{i} {}: {}", c.name, values_line(c, i)))
                            .clicked()
                            {
                                open = Some(i);
                            }
                        }
                    });
                }
            });
        if let Some(i) = open {
            self.selected = i;
            o.mode = ViewMode::Side;
        }
    }
}

fn placeholder(painter: &egui::Painter, rect: egui::Rect, text: &str) {
    painter.rect_filled(rect.shrink(2.0), 4.0, PLACEHOLDER);
    let galley = painter.layout(
        text.to_owned(),
        egui::FontId::proportional(12.0),
        egui::Color32::from_gray(220),
        (rect.width() - 12.0).max(20.0),
    );
    let at = rect.center() - galley.size() / 2.0;
    painter.galley(at, galley, egui::Color32::from_gray(220));
}

/// One grid cell: the thumbnail fitted in a `cell`-point square, framed in `frame` (grey when
/// None), `text` under it; clickable.
fn thumb(
    ui: &mut egui::Ui,
    picture: &Picture,
    cell: f32,
    text_h: f32,
    frame: Option<egui::Color32>,
    text: &str,
    name: &str,
) -> egui::Response {
    let (rect, r) = ui.allocate_exact_size(egui::vec2(cell, cell + text_h), egui::Sense::click());
    // Named for screen readers (and the tests): "#3 w4g64".
    r.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Button, true, name));
    let square = egui::Rect::from_min_size(rect.min, egui::vec2(cell, cell));
    let painter = ui.painter_at(rect);
    let colour = frame.unwrap_or(egui::Color32::from_gray(90));
    painter.rect_filled(square, 2.0, colour);
    let inner = square.shrink(4.0);
    match picture {
        Picture::Ready(t) => {
            let size = t.size_vec2();
            let s = fit_scale(inner, size);
            let at = egui::Rect::from_center_size(inner.center(), size * s);
            let uv = egui::Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0));
            painter.image(t.id(), at, uv, egui::Color32::WHITE);
        }
        Picture::Pending => placeholder(&painter, inner, "..."),
        Picture::Missing(why) => placeholder(&painter, inner, why),
    }
    painter.text(
        egui::pos2(rect.center().x, square.bottom() + 1.0),
        egui::Align2::CENTER_TOP,
        text,
        egui::FontId::proportional(11.0),
        ui.visuals().text_color(),
    );
    if r.hovered() {
        painter.rect_stroke(
            square,
            2.0,
            egui::Stroke::new(2.0, ui.visuals().strong_text_color()),
            egui::StrokeKind::Inside,
        );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbnails_are_downscaled_and_full_images_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wide.png");
        let pixels: Vec<u8> = (0..300 * 200 * 3).map(|i| (i % 251) as u8).collect();
        image::RgbImage::from_raw(300, 200, pixels)
            .unwrap()
            .save(&path)
            .unwrap();
        let key = |max_side| ImageKey {
            path: path.clone(),
            max_side,
        };
        let small = decode(&key(Some(THUMB))).unwrap();
        // 128 × 85: 64 KiB at most per thumbnail, the bound the module's comment states.
        assert_eq!(small.size, [128, 85]);
        assert_eq!(decode(&key(None)).unwrap().size, [300, 200]);
        let missing = decode(&ImageKey {
            path: dir.path().join("gone.png"),
            max_side: None,
        });
        assert!(missing.unwrap_err().contains("gone.png"));
    }

    #[test]
    fn a_helper_thread_that_panics_still_releases_its_key() {
        let (tx, rx) = crossbeam_channel::unbounded::<(u32, Result<u8, String>)>();
        let ctx = egui::Context::default();
        let reply = Reply::new(tx.clone(), 7, ctx.clone());
        let joined = std::thread::spawn(move || {
            let _held = reply;
            panic!("decoder bug");
        })
        .join();
        assert!(joined.is_err());
        let (key, result) = rx.try_recv().expect("an answer despite the panic");
        assert_eq!(key, 7);
        assert!(result.unwrap_err().contains("panicked"));
        // A thread that answers sends its answer once, and nothing more on drop.
        Reply::new(tx, 8, ctx).send(Ok(3));
        assert_eq!(rx.try_recv().unwrap(), (8, Ok(3)));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn layout_fills_the_area_without_overlap() {
        let area = egui::Rect::from_min_size(egui::pos2(0.0, 0.0), egui::vec2(1000.0, 400.0));
        let slots = CompareView::layout(area, 4, 1.0, 30.0);
        assert_eq!(slots.len(), 4);
        for (a, s) in slots.iter().enumerate() {
            assert!(area.contains_rect(*s), "{s:?}");
            for t in &slots[a + 1..] {
                assert!(!s.intersects(*t), "{s:?} {t:?}");
            }
        }
        // Four squares in one row fit best in a wide area.
        assert!(
            slots
                .iter()
                .all(|s| (s.top() - slots[0].top()).abs() < 1e-3)
        );
    }

    #[test]
    fn zoom_keeps_the_pointed_pixel_in_place() {
        let slot = egui::Rect::from_min_size(egui::pos2(0.0, 0.0), egui::vec2(200.0, 200.0));
        let size = egui::vec2(100.0, 100.0);
        let mut z = ZoomPan {
            scale: Some(2.0),
            centre: egui::vec2(0.5, 0.5),
        };
        // The pixel under (150, 50) before zooming.
        let pixel = |z: &ZoomPan, p: egui::Pos2| {
            let at = z.placement(slot, size);
            (p - at.min) / z.scale.unwrap()
        };
        let p = egui::pos2(150.0, 50.0);
        let before = pixel(&z, p);
        // (150, 50) is 50 points right of and up from the centre: pixel (75, 25) at 2×.
        assert_eq!(before, egui::vec2(75.0, 25.0));
        z.zoom_at(slot, size, p, 3.0);
        assert_eq!(z.scale, Some(6.0));
        let after = pixel(&z, p);
        assert!((before - after).length() < 1e-3, "{before:?} {after:?}");
        // From "fit" (2 points per pixel here) too.
        let mut fit = ZoomPan::default();
        assert_eq!(fit_scale(slot, size), 2.0);
        fit.zoom_at(slot, size, p, 0.5);
        assert_eq!(fit.scale, Some(1.0));
        assert!((pixel(&fit, p) - before).length() < 1e-3);
    }
}
