//! Tensor previews as pictures, computed from plain data (no MLX): a latent's channels as a
//! grid, a conditioning heatmap (tokens × features), value histograms, the colour maps and a
//! texture cache with a byte budget; PNG files decoded for display.

use std::collections::HashMap;

/// An RGB picture (row-major, 3 bytes per pixel).
#[derive(Debug, Clone, PartialEq)]
pub struct Picture {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

impl Picture {
    fn new(width: usize, height: usize, fill: u8) -> Self {
        Self {
            width,
            height,
            rgb: vec![fill; width * height * 3],
        }
    }

    fn set(&mut self, x: usize, y: usize, c: [u8; 3]) {
        let i = (y * self.width + x) * 3;
        self.rgb[i..i + 3].copy_from_slice(&c);
    }

    /// As an egui image.
    pub fn to_color_image(&self) -> egui::ColorImage {
        egui::ColorImage::from_rgb([self.width, self.height], &self.rgb)
    }
}

pub use crate::report::colormap::{diverging, viridis};

/// A latent's layout: `(channels, height, width)` and how to index it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatentLayout {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// Channels last (MLX/DiffusionKit NHWC) or first (NCHW).
    pub channels_last: bool,
}

impl LatentLayout {
    /// From a shape `(1, h, w, c)` (NHWC, c ≤ 64) or `(1, c, h, w)`.
    pub fn from_shape(shape: &[usize]) -> Option<Self> {
        let s: Vec<usize> = if shape.len() == 4 {
            shape[1..].to_vec()
        } else if shape.len() == 3 {
            shape.to_vec()
        } else {
            return None;
        };
        // SD3 latents have 16 channels; NHWC (what MLX and DiffusionKit write) wins ties.
        let channels_last = s[2] == 16 || (s[0] != 16 && s[2] <= 64 && s[2] < s[0]);
        if channels_last {
            Some(Self {
                channels: s[2],
                height: s[0],
                width: s[1],
                channels_last: true,
            })
        } else {
            Some(Self {
                channels: s[0],
                height: s[1],
                width: s[2],
                channels_last: false,
            })
        }
    }

    fn at(&self, data: &[f32], c: usize, y: usize, x: usize) -> f32 {
        let i = if self.channels_last {
            (y * self.width + x) * self.channels + c
        } else {
            (c * self.height + y) * self.width + x
        };
        data.get(i).copied().unwrap_or(0.0)
    }

    /// The first batch row in NHWC order (what the VAE takes).
    pub fn to_nhwc(&self, data: &[f32]) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.channels * self.height * self.width);
        for y in 0..self.height {
            for x in 0..self.width {
                for c in 0..self.channels {
                    out.push(self.at(data, c, y, x));
                }
            }
        }
        out
    }
}

/// Value range per channel, or one shared range.
pub fn channel_ranges(data: &[f32], l: &LatentLayout, shared: bool) -> Vec<(f32, f32)> {
    let mut ranges = vec![(f32::INFINITY, f32::NEG_INFINITY); l.channels];
    for (c, r) in ranges.iter_mut().enumerate() {
        for y in 0..l.height {
            for x in 0..l.width {
                let v = l.at(data, c, y, x);
                if v.is_finite() {
                    r.0 = r.0.min(v);
                    r.1 = r.1.max(v);
                }
            }
        }
    }
    if shared {
        let lo = ranges.iter().map(|r| r.0).fold(f32::INFINITY, f32::min);
        let hi = ranges.iter().map(|r| r.1).fold(f32::NEG_INFINITY, f32::max);
        ranges.iter_mut().for_each(|r| *r = (lo, hi));
    }
    ranges
}

/// The channels as a grid of viridis images (`cols` per row, 1-pixel gaps), each scaled to
/// its range from [`channel_ranges`].
pub fn latent_grid(data: &[f32], l: &LatentLayout, ranges: &[(f32, f32)], cols: usize) -> Picture {
    let cols = cols.clamp(1, l.channels.max(1));
    let rows = l.channels.div_ceil(cols);
    let (cw, ch) = (l.width + 1, l.height + 1);
    let mut p = Picture::new(cols * cw - 1, rows * ch - 1, 40);
    for c in 0..l.channels {
        let (gx, gy) = ((c % cols) * cw, (c / cols) * ch);
        let (lo, hi) = ranges.get(c).copied().unwrap_or((0.0, 1.0));
        let span = if hi > lo { hi - lo } else { 1.0 };
        for y in 0..l.height {
            for x in 0..l.width {
                let v = l.at(data, c, y, x);
                p.set(gx + x, gy + y, viridis((v - lo) / span));
            }
        }
    }
    p
}

/// Which half of a classifier-free-guidance batch: calibration stores `conditioning` as
/// `(2, tokens, features)` with the prompt's row first and the negative prompt's second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CfgHalf {
    #[default]
    Prompt,
    Negative,
}

impl CfgHalf {
    pub const ALL: [CfgHalf; 2] = [Self::Prompt, Self::Negative];

    /// The batch row of this half.
    pub fn row(self) -> usize {
        match self {
            Self::Prompt => 0,
            Self::Negative => 1,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Prompt => "prompt (batch row 1 of 2)",
            Self::Negative => "negative prompt (batch row 2 of 2)",
        }
    }
}

/// The percentile of the non-zero cells' magnitudes that the heatmap's colour scale ends at:
/// CLIP hidden states have a few outlier features hundreds of times larger than the rest, and a
/// scale set by them paints every other feature white.
pub const HEATMAP_PERCENTILE: f32 = 0.99;

/// A conditioning heatmap and what a reader needs to read it.
#[derive(Debug, Clone, PartialEq)]
pub struct Heatmap {
    /// Tokens down, feature groups across.
    pub picture: Picture,
    /// The colour scale: `-scale` is the darkest blue, `+scale` the darkest red (values beyond
    /// are drawn at the ends); 0 when every value is zero.
    pub scale: f32,
    /// The largest magnitude (the outliers the scale leaves out).
    pub max_abs: f32,
    /// The tensor's tokens and features per token.
    pub tokens: usize,
    pub features: usize,
    /// The tokens and features drawn: up to the last that is non-zero in this row (the
    /// padding after them, zero by construction, is left out so the values have the room).
    pub tokens_shown: usize,
    pub features_shown: usize,
    /// Features per column (each column shows its group's value of largest magnitude).
    pub per_column: usize,
    /// The batch row shown and the batch size.
    pub row: usize,
    pub rows: usize,
}

/// A conditioning tensor `(batch, tokens, features)` (or `(tokens, features)`) as a heatmap of
/// batch row `row`: tokens down, features across in at most `max_cols` columns, each showing
/// the value of largest magnitude in its group of features (a mean would cancel signs and fade
/// to white), on the diverging map with a symmetric scale at the [`HEATMAP_PERCENTILE`] of the
/// non-zero magnitudes. Trailing all-zero tokens and features (SD3's zero padding of CLIP's
/// 2048 features to 4096 and its zero T5 tokens) are not drawn.
pub fn conditioning_heatmap(data: &[f32], shape: &[usize], row: usize, max_cols: usize) -> Heatmap {
    let (rows, tokens, features) = match shape {
        [b, t, f] => (*b, *t, *f),
        [t, f] => (1, *t, *f),
        _ => (0, 0, 0),
    };
    let row = row.min(rows.saturating_sub(1));
    let offset = row * tokens * features;
    let token_values = |t: usize| {
        let a = (offset + t * features).min(data.len());
        let b = (offset + (t + 1) * features).min(data.len());
        &data[a..b]
    };
    // The extent of the non-zero values (all of it when every value is zero).
    let (mut last_token, mut last_feature) = (0, 0);
    for t in 0..tokens {
        if let Some(f) = token_values(t).iter().rposition(|v| *v != 0.0) {
            last_token = t + 1;
            last_feature = last_feature.max(f + 1);
        }
    }
    let (tokens_shown, features_shown) = if last_token == 0 {
        (tokens, features)
    } else {
        (last_token, last_feature)
    };
    if tokens == 0 || features == 0 {
        return Heatmap {
            picture: Picture::new(1, 1, 255),
            scale: 0.0,
            max_abs: 0.0,
            tokens,
            features,
            tokens_shown,
            features_shown,
            per_column: 1,
            row,
            rows,
        };
    }
    let cols = features_shown.min(max_cols.max(1));
    let per = features_shown.div_ceil(cols);
    let cols = features_shown.div_ceil(per);
    let mut cells = vec![0f32; tokens_shown * cols];
    for t in 0..tokens_shown {
        let token = &token_values(t)[..features_shown.min(token_values(t).len())];
        for c in 0..cols {
            let (lo, hi) = ((c * per).min(token.len()), ((c + 1) * per).min(token.len()));
            cells[t * cols + c] = token[lo..hi]
                .iter()
                .copied()
                .filter(|v| v.is_finite())
                .fold(0f32, |m, v| if v.abs() > m.abs() { v } else { m });
        }
    }
    let mut magnitudes: Vec<f32> = cells.iter().map(|v| v.abs()).filter(|v| *v > 0.0).collect();
    let max_abs = magnitudes.iter().copied().fold(0f32, f32::max);
    let scale = if magnitudes.is_empty() {
        0.0
    } else {
        let k = ((magnitudes.len() - 1) as f32 * HEATMAP_PERCENTILE).round() as usize;
        *magnitudes.select_nth_unstable_by(k, f32::total_cmp).1
    };
    let mut picture = Picture::new(cols, tokens_shown, 255);
    for t in 0..tokens_shown {
        for c in 0..cols {
            let v = cells[t * cols + c];
            picture.set(c, t, diverging(if scale > 0.0 { v / scale } else { 0.0 }));
        }
    }
    Heatmap {
        picture,
        scale,
        max_abs,
        tokens,
        features,
        tokens_shown,
        features_shown,
        per_column: per,
        row,
        rows,
    }
}

/// `bins` equal-width bins over the finite values: `(bin centre, count)`, plus the range.
pub fn histogram(data: &[f32], bins: usize) -> (Vec<(f64, u64)>, (f32, f32)) {
    let finite = data.iter().copied().filter(|v| v.is_finite());
    let (lo, hi) = finite
        .clone()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if lo > hi {
        return (Vec::new(), (0.0, 0.0));
    }
    let bins = bins.max(1);
    let width = if hi > lo {
        (hi - lo) / bins as f32
    } else {
        1.0
    };
    let mut counts = vec![0u64; bins];
    for v in finite {
        let i = (((v - lo) / width) as usize).min(bins - 1);
        counts[i] += 1;
    }
    let out = counts
        .iter()
        .enumerate()
        .map(|(i, &n)| ((lo + (i as f32 + 0.5) * width) as f64, n))
        .collect();
    (out, (lo, hi))
}

/// A colour bar picture (left to right) for a map.
pub fn colour_bar(map: fn(f32) -> [u8; 3], width: usize, signed: bool) -> Picture {
    let mut p = Picture::new(width.max(2), 1, 255);
    for x in 0..p.width {
        let t = x as f32 / (p.width - 1) as f32;
        p.set(x, 0, map(if signed { 2.0 * t - 1.0 } else { t }));
    }
    p
}

/// GPU textures by key, evicting the least recently used beyond a byte budget.
pub struct TextureCache {
    budget: usize,
    used: usize,
    clock: u64,
    entries: HashMap<String, (egui::TextureHandle, usize, u64)>,
}

impl TextureCache {
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            used: 0,
            clock: 0,
            entries: HashMap::new(),
        }
    }

    /// The texture for `key`, made by `make` when missing.
    pub fn get_or_insert(
        &mut self,
        ctx: &egui::Context,
        key: &str,
        options: egui::TextureOptions,
        make: impl FnOnce() -> egui::ColorImage,
    ) -> egui::TextureHandle {
        self.clock += 1;
        if let Some(e) = self.entries.get_mut(key) {
            e.2 = self.clock;
            return e.0.clone();
        }
        let image = make();
        let bytes = image.pixels.len() * 4;
        let handle = ctx.load_texture(key, image, options);
        self.used += bytes;
        self.entries
            .insert(key.to_owned(), (handle.clone(), bytes, self.clock));
        self.evict(key);
        handle
    }

    fn evict(&mut self, keep: &str) {
        while self.used > self.budget && self.entries.len() > 1 {
            let Some(oldest) = self
                .entries
                .iter()
                .filter(|(k, _)| k.as_str() != keep)
                .min_by_key(|(_, e)| e.2)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some((_, bytes, _)) = self.entries.remove(&oldest) {
                self.used -= bytes;
            }
        }
    }

    /// The texture for `key` when cached (counting as a use). The Compare view decodes on
    /// helper threads and inserts when done, so it asks without a way to make one.
    pub fn get(&mut self, key: &str) -> Option<egui::TextureHandle> {
        self.clock += 1;
        let e = self.entries.get_mut(key)?;
        e.2 = self.clock;
        Some(e.0.clone())
    }

    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.used
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Reads an 8-bit RGB or RGBA PNG.
pub fn read_png(path: &std::path::Path) -> Option<egui::ColorImage> {
    decode_png(&std::fs::read(path).ok()?)
}

/// Decodes an 8-bit RGB or RGBA PNG.
pub fn decode_png(bytes: &[u8]) -> Option<egui::ColorImage> {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().ok()?;
    let mut buf = vec![0; reader.output_buffer_size()?];
    let info = reader.next_frame(&mut buf).ok()?;
    let (w, h) = (info.width as usize, info.height as usize);
    match info.color_type {
        png::ColorType::Rgb => Some(egui::ColorImage::from_rgb([w, h], &buf[..w * h * 3])),
        png::ColorType::Rgba => Some(egui::ColorImage::from_rgba_unmultiplied(
            [w, h],
            &buf[..w * h * 4],
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latent_layouts_and_grid() {
        let small = LatentLayout::from_shape(&[1, 8, 8, 16]).unwrap();
        assert!(small.channels_last && small.channels == 16);
        let l = LatentLayout::from_shape(&[1, 8, 6, 16]).unwrap();
        assert!(l.channels_last && l.channels == 16 && l.height == 8 && l.width == 6);
        let l2 = LatentLayout::from_shape(&[1, 16, 8, 6]).unwrap();
        assert!(!l2.channels_last && l2.channels == 16 && l2.height == 8);
        // Channel c holds the constant c in NHWC; the grid's cells follow it.
        let data: Vec<f32> = (0..8 * 6 * 16).map(|i| (i % 16) as f32).collect();
        let shared = channel_ranges(&data, &l, true);
        assert!(shared.iter().all(|r| *r == (0.0, 15.0)));
        let g = latent_grid(&data, &l, &shared, 4);
        assert_eq!((g.width, g.height), (4 * 7 - 1, 4 * 9 - 1));
        let px = |x: usize, y: usize| &g.rgb[(y * g.width + x) * 3..(y * g.width + x) * 3 + 3];
        assert_eq!(px(0, 0), viridis(0.0));
        assert_eq!(px(3 * 7, 3 * 9), viridis(1.0)); // channel 15, bottom right cell
        assert_eq!(px(6, 0), [40, 40, 40]); // the gap
        let nhwc = l2.to_nhwc(&(0..16 * 8 * 6).map(|i| i as f32).collect::<Vec<_>>());
        assert_eq!(nhwc[1], (8 * 6) as f32); // (y0, x0, c1) of NCHW
    }

    #[test]
    fn texture_cache_stays_within_its_byte_budget() {
        let ctx = egui::Context::default();
        // 16×16 RGBA = 1024 bytes per texture; room for three.
        let mut cache = TextureCache::new(3 * 1024);
        let image = || egui::ColorImage::filled([16, 16], egui::Color32::RED);
        for i in 0..5 {
            let _ =
                cache.get_or_insert(&ctx, &format!("t{i}"), egui::TextureOptions::NEAREST, image);
            assert!(
                cache.bytes() <= 3 * 1024,
                "{} bytes after {i}",
                cache.bytes()
            );
        }
        assert_eq!(cache.len(), 3);
        // The least recently used went first; touching t2 keeps it over t3.
        assert!(!cache.contains("t0") && !cache.contains("t1") && cache.contains("t4"));
        let _ = cache.get_or_insert(&ctx, "t2", egui::TextureOptions::NEAREST, image);
        let _ = cache.get_or_insert(&ctx, "t5", egui::TextureOptions::NEAREST, image);
        assert!(cache.contains("t2") && !cache.contains("t3"));
    }

    #[test]
    fn heatmap_shows_the_zero_half_and_histogram_counts() {
        // 4 tokens × 8 features; tokens 2..4 are zero (the T5 half).
        let mut data = vec![0f32; 4 * 8];
        for (i, v) in data.iter_mut().take(16).enumerate() {
            *v = if i % 2 == 0 { 1.0 } else { -0.5 };
        }
        let h = conditioning_heatmap(&data, &[1, 4, 8], 0, 8);
        let p = &h.picture;
        // The zero tokens are not drawn; the tensor's size is still told.
        assert_eq!((p.width, p.height, h.scale), (8, 2, 1.0));
        assert_eq!((h.tokens, h.tokens_shown, h.features_shown), (4, 2, 8));
        assert_eq!(&p.rgb[0..3], &diverging(1.0));
        assert_eq!(&p.rgb[3..6], &diverging(-0.5));
        // Zero padding of the features (the last 4 of 8) is cut as well.
        let mut padded = vec![0f32; 3 * 8];
        padded[2] = 1.0;
        padded[8 + 3] = -1.0;
        let h = conditioning_heatmap(&padded, &[3, 8], 0, 8);
        assert_eq!((h.tokens_shown, h.features_shown), (2, 4));
        assert_eq!((h.picture.width, h.picture.height), (4, 2));
        assert_eq!(
            pixel(&h.picture, 0, 0),
            diverging(0.0),
            "a zero inside stays"
        );
        // All zero: drawn whole, white.
        let zero = conditioning_heatmap(&[0.0; 8], &[2, 4], 0, 8);
        assert_eq!(
            (zero.scale, zero.picture.width, zero.picture.height),
            (0.0, 4, 2)
        );
        let (h, range) = histogram(&[0.0, 0.1, 0.9, 1.0, f32::NAN], 2);
        assert_eq!(range, (0.0, 1.0));
        assert_eq!(h.iter().map(|b| b.1).collect::<Vec<_>>(), vec![2, 2]);
    }

    const WHITE: [u8; 3] = [247, 247, 247];

    fn pixel(p: &Picture, x: usize, y: usize) -> [u8; 3] {
        let i = (y * p.width + x) * 3;
        [p.rgb[i], p.rgb[i + 1], p.rgb[i + 2]]
    }

    /// CLIP features are small beside a few outlier features; scaled by the largest magnitude
    /// they all came out white. At the 99th percentile they keep their colour (and the
    /// outliers saturate).
    #[test]
    fn small_nonzero_features_are_not_white() {
        let (tokens, features) = (20, 400);
        let mut data: Vec<f32> = (0..tokens * features)
            .map(|i| if i % 3 == 0 { 0.02 } else { -0.01 })
            .collect();
        data[5] = 300.0; // one outlier feature
        assert_eq!(diverging(0.0), WHITE);
        let h = conditioning_heatmap(&data, &[1, tokens, features], 0, 400);
        assert!(h.scale > 0.0 && h.scale < 0.05, "scale {}", h.scale);
        assert_eq!(h.max_abs, 300.0);
        let p = &h.picture;
        let coloured = (0..p.height)
            .flat_map(|y| (0..p.width).map(move |x| (x, y)))
            .filter(|&(x, y)| {
                let c = pixel(p, x, y);
                c.iter().zip(WHITE).any(|(a, b)| a.abs_diff(b) > 40)
            })
            .count();
        assert_eq!(
            coloured,
            p.width * p.height,
            "every non-zero cell has a colour"
        );
        // Red for positive, blue for negative.
        assert!(pixel(p, 0, 0)[0] > pixel(p, 0, 0)[2]);
        assert!(pixel(p, 1, 0)[2] > pixel(p, 1, 0)[0]);
        // Pooled columns keep the value of largest magnitude, so signs do not cancel.
        let pooled = conditioning_heatmap(&data, &[1, tokens, features], 0, 100);
        assert_eq!((pooled.picture.width, pooled.per_column), (100, 4));
        assert_ne!(pixel(&pooled.picture, 10, 10), WHITE);
    }

    #[test]
    fn the_half_selection_picks_its_batch_row() {
        // Row 0 (prompt) positive, row 1 (negative) negative.
        let (tokens, features) = (3, 4);
        let mut data = vec![1.0f32; tokens * features];
        data.extend(vec![-1.0f32; tokens * features]);
        let shape = [2, tokens, features];
        let prompt = conditioning_heatmap(&data, &shape, CfgHalf::Prompt.row(), 4);
        let negative = conditioning_heatmap(&data, &shape, CfgHalf::Negative.row(), 4);
        assert_eq!((prompt.row, prompt.rows, negative.row), (0, 2, 1));
        assert_eq!(pixel(&prompt.picture, 0, 0), diverging(1.0));
        assert_eq!(pixel(&negative.picture, 2, 2), diverging(-1.0));
        // A batch of one shows its only row whichever half is asked for.
        let single = conditioning_heatmap(&data[..12], &[1, tokens, features], 1, 4);
        assert_eq!(single.row, 0);
        assert_eq!(pixel(&single.picture, 0, 0), diverging(1.0));
    }
}
