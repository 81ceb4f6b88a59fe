//! The benchmark report (`sd3lab report benchmark`, the Compare tab's export) and its figures:
//! a benchmark folder's settings, its summary table, image quality against the MMDiT's weight
//! bytes with the trade-off frontier, latency and peak memory, and for each configuration the
//! prompts where it strays furthest from the reference, as reference / configuration /
//! difference thumbnails. Every number comes from `BenchFolder::summary` and the folder's
//! paired metrics, so the report and the tab show the same values.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::colormap::difference_rgb;
use super::{Doc, Figure, ReportError, Series, Staged, html_escape};
use crate::bench::{BenchFolder, PairedMetric, SummaryRow};
use crate::image::{PixelFormat, encode_png};
use crate::metrics::images::{ImagesError, Rgb8Image, load_rgb};
use crate::metrics::paired::{PairedError, RgbView, abs_difference};

/// The image-quality number a benchmark's trade-off plot shows against weight bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum QualityMetric {
    Fid,
    Kid,
    Psnr,
    Ssim,
    Lpips,
}

impl QualityMetric {
    pub const ALL: [Self; 5] = [Self::Fid, Self::Kid, Self::Psnr, Self::Ssim, Self::Lpips];

    /// The name with its unit, as an axis shows it.
    pub fn label(self) -> &'static str {
        match self {
            Self::Fid => "FID",
            Self::Kid => "KID (mean)",
            Self::Psnr => "PSNR (dB)",
            Self::Ssim => "SSIM",
            Self::Lpips => "LPIPS",
        }
    }

    /// The short name (`fid`, as on the command line).
    pub fn name(self) -> &'static str {
        match self {
            Self::Fid => "fid",
            Self::Kid => "kid",
            Self::Psnr => "psnr",
            Self::Ssim => "ssim",
            Self::Lpips => "lpips",
        }
    }

    /// The configuration's value (`None`: not measured; PSNR also when every image is
    /// identical to its twin, an infinite PSNR no plot can show).
    pub fn of(self, row: &SummaryRow) -> Option<f64> {
        let v = match self {
            Self::Fid => row.fid,
            Self::Kid => row.kid.map(|k| k.0),
            Self::Psnr => row.psnr,
            Self::Ssim => row.ssim,
            Self::Lpips => row.lpips,
        };
        v.filter(|v| v.is_finite())
    }

    /// PSNR and SSIM grow as images get closer to the reference; FID, KID and LPIPS are
    /// distances.
    pub fn higher_is_better(self) -> bool {
        matches!(self, Self::Psnr | Self::Ssim)
    }

    /// FID when any configuration has one (it judges the images as a set, which is what a
    /// quantized model is for), else PSNR.
    pub fn default_for(rows: &[SummaryRow]) -> Self {
        if rows.iter().any(|r| Self::Fid.of(r).is_some()) {
            Self::Fid
        } else {
            Self::Psnr
        }
    }

    /// Whether quality `a` is at least as good as `b`.
    fn at_least_as_good(self, a: f64, b: f64) -> bool {
        if self.higher_is_better() {
            a >= b
        } else {
            a <= b
        }
    }
}

/// The points of `points` (x: weight bytes, y: quality) that no other point beats on both:
/// none is at most as large and at least as good, and strictly smaller or better in one.
/// Indices into `points`, by increasing x (ties: better quality first).
pub fn frontier(points: &[(f64, f64)], quality: QualityMetric) -> Vec<usize> {
    let dominates = |a: (f64, f64), b: (f64, f64)| {
        a.0 <= b.0 && quality.at_least_as_good(a.1, b.1) && (a.0 < b.0 || a.1 != b.1)
    };
    let mut keep: Vec<usize> = (0..points.len())
        .filter(|&i| !points.iter().any(|&p| dominates(p, points[i])))
        .collect();
    keep.sort_by(|&a, &b| {
        let (pa, pb) = (points[a], points[b]);
        pa.0.total_cmp(&pb.0).then_with(|| {
            if quality.higher_is_better() {
                pb.1.total_cmp(&pa.1)
            } else {
                pa.1.total_cmp(&pb.1)
            }
        })
    });
    keep
}

/// Weight bytes on the plot's x axis: decimal megabytes, as `human_bytes` writes them.
fn megabytes(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// Quality against weight bytes: each configuration a labelled point, and the frontier of
/// those no other configuration beats on both. `None` when no configuration has the value.
fn quality_figure(rows: &[SummaryRow], quality: QualityMetric) -> Option<Figure> {
    let measured: Vec<(&SummaryRow, f64)> = rows
        .iter()
        .filter_map(|r| Some((r, quality.of(r)?)))
        .collect();
    if measured.is_empty() {
        return None;
    }
    let points: Vec<(f64, f64)> = measured
        .iter()
        .map(|(r, v)| (megabytes(r.weight_bytes), *v))
        .collect();
    // Straight segments between the frontier's configurations: their dots are the
    // configurations' own (a staircase would add dots where no configuration is).
    let front: Vec<(f64, f64)> = frontier(&points, quality)
        .into_iter()
        .map(|i| points[i])
        .collect();
    let direction = if quality.higher_is_better() {
        "higher is better"
    } else {
        "lower is better"
    };
    Some(Figure::Lines {
        title: format!("{} vs MMDiT weight size", quality.label()),
        x_label: "MMDiT weights (MB)".into(),
        y_label: format!("{}, {direction}", quality.label()),
        series: vec![Series {
            name: "frontier: not beaten on both size and quality".into(),
            points: front,
        }],
        markers: measured
            .iter()
            .zip(&points)
            .map(|((r, _), &p)| (r.name.clone(), p))
            .collect(),
        integer_x: false,
        log_y: false,
    })
}

/// Why the quality plot leaves configurations out (or is left out entirely); `None` when
/// every configuration is on it.
pub fn quality_note(folder: &BenchFolder, quality: QualityMetric) -> Option<String> {
    let rows = folder.summary();
    let why = |row: &SummaryRow| -> String {
        let metrics = folder
            .configuration(&row.name)
            .and_then(|c| c.result.metrics.as_ref());
        match metrics {
            None => "the run computed no image-quality metrics".into(),
            Some(m) if quality == QualityMetric::Lpips && m.lpips_missing.is_some() => {
                m.lpips_missing.clone().unwrap_or_default()
            }
            Some(_)
                if quality == QualityMetric::Psnr
                    && row.psnr.is_none()
                    && row.identical.is_some_and(|n| n > 0) =>
            {
                "every image is identical to its reference twin: infinite PSNR".into()
            }
            Some(_) => "not measured".into(),
        }
    };
    let missing: Vec<&SummaryRow> = rows.iter().filter(|r| quality.of(r).is_none()).collect();
    if missing.is_empty() {
        return None;
    }
    if missing.len() == rows.len() {
        // One reason when they share it (they usually do: the run's settings).
        let reasons: BTreeSet<String> = missing.iter().map(|r| why(r)).collect();
        let reasons: Vec<String> = reasons.into_iter().collect();
        return Some(format!(
            "No configuration has a {} value ({}), so there is no quality plot.",
            quality.label(),
            reasons.join("; ")
        ));
    }
    let listed: Vec<String> = missing
        .iter()
        .map(|r| format!("{} ({})", r.name, why(r)))
        .collect();
    Some(format!(
        "Not on the {} plot: {}.",
        quality.label(),
        listed.join(", ")
    ))
}

/// The benchmark's figures by file stem: `quality-vs-weights` (left out when no configuration
/// has a `quality` value; [`quality_note`] says why), `latency` and `peak-memory` (each left
/// out when nothing was measured).
pub fn benchmark_figures(folder: &BenchFolder, quality: QualityMetric) -> Vec<(String, Figure)> {
    let rows = folder.summary();
    let mut figs = Vec::new();
    if let Some(f) = quality_figure(&rows, quality) {
        figs.push(("quality-vs-weights".to_owned(), f));
    }
    let timed: Vec<(&SummaryRow, f64)> = rows
        .iter()
        .filter_map(|r| Some((r, r.seconds_per_image?)))
        .collect();
    if !timed.is_empty() {
        figs.push((
            "latency".to_owned(),
            Figure::Bars {
                title: "latency per image".into(),
                labels: timed.iter().map(|(r, _)| r.name.clone()).collect(),
                values: timed.iter().map(|(_, v)| *v).collect(),
                value_label: "seconds per image (mean over the timed images)".into(),
            },
        ));
    }
    let peak = rows.iter().map(|r| r.peak_mlx_bytes).max().unwrap_or(0);
    if peak > 0 {
        let (unit, scale) = if peak >= 1_000_000_000 {
            ("GB", 1e9)
        } else {
            ("MB", 1e6)
        };
        figs.push((
            "peak-memory".to_owned(),
            Figure::Bars {
                title: "peak MLX memory".into(),
                labels: rows.iter().map(|r| r.name.clone()).collect(),
                values: rows
                    .iter()
                    .map(|r| r.peak_mlx_bytes as f64 / scale)
                    .collect(),
                value_label: format!("peak MLX memory ({unit})"),
            },
        ));
    }
    figs
}

/// What a benchmark report shows.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchmarkReportOptions {
    /// How many prompts each configuration's "furthest from the reference" section shows.
    pub worst: usize,
    /// The paired metric that orders those prompts.
    pub metric: PairedMetric,
    /// The quality axis of the trade-off plot (default: [`QualityMetric::default_for`]).
    pub quality: Option<QualityMetric>,
    /// Only these configurations (empty: all).
    pub configurations: Vec<String>,
}

impl Default for BenchmarkReportOptions {
    fn default() -> Self {
        Self {
            worst: 10,
            metric: PairedMetric::Psnr,
            quality: None,
            configurations: Vec::new(),
        }
    }
}

/// The difference thumbnails' amplification: |Δ| × 8 (a change of 32 levels of 255 is
/// already the brightest colour), so the small changes quantization makes are visible.
pub const DIFFERENCE_GAIN: f32 = 8.0;

/// The longest side of a report's thumbnails, in pixels.
pub const THUMBNAIL_SIZE: u32 = 256;

/// The size (pixels) the benchmark's figures are exported at, by the CLI and the Compare tab.
pub const BENCHMARK_FIGURE_SIZE: (u32, u32) = (900, 520);

/// Why a difference picture could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DifferenceError {
    #[error(transparent)]
    Read(#[from] ImagesError),
    #[error("{} against {}: {source}", image.display(), reference.display())]
    Compare {
        reference: PathBuf,
        image: PathBuf,
        source: PairedError,
    },
}

/// |`image` − `reference`| of two PNGs (`metrics::paired::abs_difference`: the largest channel
/// |Δ| of each pixel, row-major): (width, height, |Δ|). The Compare tab's difference view and
/// the report's difference thumbnails both come from here, so they agree.
pub fn difference_image(
    reference: &Path,
    image: &Path,
) -> Result<(u32, u32, Vec<u8>), DifferenceError> {
    let a = load_rgb(reference)?;
    let b = load_rgb(image)?;
    let diff = difference_of(&a, &b).map_err(|source| DifferenceError::Compare {
        reference: reference.to_owned(),
        image: image.to_owned(),
        source,
    })?;
    Ok((a.width, a.height, diff))
}

/// |`image` − `reference`| of two decoded images (see [`difference_image`]).
fn difference_of(reference: &Rgb8Image, image: &Rgb8Image) -> Result<Vec<u8>, PairedError> {
    let va = RgbView::new(reference.width, reference.height, &reference.data)?;
    let vb = RgbView::new(image.width, image.height, &image.data)?;
    abs_difference(&vb, &va)
}

/// The size of a `w` × `h` image fitted within `max` × `max`: a larger one shrunk to `max` on
/// its longest side (the other rounded, at least 1), a smaller one enlarged by the largest whole
/// factor that fits (so its pixels stay whole blocks). Computed in u64: `h * max` overflows u32
/// for huge images.
pub fn fit_within(w: u32, h: u32, max: u32) -> (u32, u32) {
    let longest = u64::from(w.max(h).max(1));
    let max64 = u64::from(max);
    if longest > max64 {
        let side = |x: u32| ((u64::from(x) * max64 + longest / 2) / longest).clamp(1, max64) as u32;
        (side(w), side(h))
    } else {
        let k = (max64 / longest).max(1) as u32;
        (w.saturating_mul(k), h.saturating_mul(k))
    }
}

/// The report's summary CSV: the table's numbers unformatted, one row per configuration.
fn summary_csv(rows: &[SummaryRow], path: &Path) -> Result<String, ReportError> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| v.to_string());
    let csv_err = |e: csv::Error| ReportError::Csv {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    w.write_record([
        "configuration",
        "fid",
        "kid_mean",
        "kid_std",
        "is_mean",
        "is_std",
        "psnr_db",
        "identical_pairs",
        "ssim",
        "lpips",
        "mmdit_weight_bytes",
        "ratio_vs_fp32",
        "ratio_vs_fp16",
        "seconds_per_image",
        "peak_mlx_bytes",
        "peak_rss_bytes",
        "images",
    ])
    .map_err(csv_err)?;
    for r in rows {
        w.write_record([
            r.name.clone(),
            opt(r.fid),
            opt(r.kid.map(|k| k.0)),
            opt(r.kid.map(|k| k.1)),
            opt(r.isc.map(|k| k.0)),
            opt(r.isc.map(|k| k.1)),
            opt(r.psnr),
            r.identical.map_or(String::new(), |n| n.to_string()),
            opt(r.ssim),
            opt(r.lpips),
            r.weight_bytes.to_string(),
            r.ratio_fp32.to_string(),
            r.ratio_fp16.to_string(),
            opt(r.seconds_per_image),
            r.peak_mlx_bytes.to_string(),
            r.peak_rss_bytes.to_string(),
            r.images.to_string(),
        ])
        .map_err(csv_err)?;
    }
    let bytes = w.into_inner().map_err(|e| ReportError::Csv {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The run's `results.json` as the benchmark wrote it, byte for byte (a JSON value written
/// again would round some floats differently); written again from what was read only when
/// the file is gone. Any other read error is the caller's.
fn results_json(folder: &BenchFolder) -> Result<Vec<u8>, ReportError> {
    let path = folder.dir.join(crate::bench::RESULTS_JSON);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(serde_json::to_string_pretty(&folder.results)?.into_bytes())
        }
        Err(source) => Err(ReportError::Io { path, source }),
    }
}

/// Stages `<stem>_data.csv` (the summary of `rows`) and `<stem>_data.json` (`json`, bytes as
/// they are) beside `output`; returns their paths.
fn stage_data(
    staged: &mut Staged,
    output: &Path,
    rows: &[SummaryRow],
    json: Vec<u8>,
) -> Result<Vec<PathBuf>, ReportError> {
    let (c, j) = super::data_paths(output);
    staged.add(c.clone(), summary_csv(rows, &c)?.into_bytes());
    staged.add(j.clone(), json);
    Ok(vec![c, j])
}

/// Markdown text that shows `s` literally: its markup characters backslash-escaped (inline
/// HTML such as a prompt's `<script>` included), line breaks as spaces. `|` is left to the
/// table writer in cells (`in_table`), which escapes it itself.
fn md_escape(s: &str, in_table: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '&' | '~' | '#' | '!' => {
                out.push('\\');
                out.push(ch);
            }
            '|' if !in_table => out.push_str("\\|"),
            '\n' | '\r' => out.push(' '),
            _ => out.push(ch),
        }
    }
    out
}

/// User text (prompts, names, paths) escaped for the report's format, for a paragraph.
fn lit(doc: &Doc, s: &str) -> String {
    if doc.html {
        html_escape(s).replace('"', "&quot;")
    } else {
        md_escape(s, false)
    }
}

/// User text for a table cell (the table writer escapes HTML itself).
fn cell(doc: &Doc, s: &str) -> String {
    if doc.html {
        s.to_owned()
    } else {
        md_escape(s, true)
    }
}

/// A paragraph of already escaped text.
fn paragraph(doc: &mut Doc, text: &str) {
    if doc.html {
        doc.body.push_str(&format!("<p>{text}</p>\n"));
    } else {
        doc.body.push_str(&format!("{text}\n\n"));
    }
}

/// A heading of already escaped text (`level` 2 or 3).
fn heading(doc: &mut Doc, level: usize, text: &str) {
    if doc.html {
        doc.body.push_str(&format!("<h{level}>{text}</h{level}>\n"));
    } else {
        doc.body
            .push_str(&format!("{} {text}\n\n", "#".repeat(level)));
    }
}

/// A file name as code.
fn code(doc: &Doc, name: &str) -> String {
    if doc.html {
        format!("<code>{}</code>", html_escape(name))
    } else {
        // A name with a backtick would end the span: such a name is shown as plain text.
        if name.contains('`') {
            md_escape(name, false)
        } else {
            format!("`{name}`")
        }
    }
}

/// `img` scaled to fit [`THUMBNAIL_SIZE`]: larger images shrunk (triangle filter), smaller
/// ones enlarged by a whole factor (nearest: each pixel a crisp block, so a tiny model's
/// 64×64 images can be read pixel by pixel). Returns (width, height, RGB).
fn thumbnail(img: &Rgb8Image) -> (u32, u32, Vec<u8>) {
    let (w, h) = fit_within(img.width, img.height, THUMBNAIL_SIZE);
    let filter = if img.width.max(img.height) > THUMBNAIL_SIZE {
        image::imageops::FilterType::Triangle
    } else {
        image::imageops::FilterType::Nearest
    };
    if (w, h) == (img.width, img.height) {
        return (w, h, img.data.clone());
    }
    let Some(buffer) = image::RgbImage::from_raw(img.width, img.height, img.data.clone()) else {
        // `load_rgb` returns width × height RGB pixels: this cannot happen.
        return (img.width, img.height, img.data.clone());
    };
    let resized = image::imageops::resize(&buffer, w, h, filter);
    (w, h, resized.into_raw())
}

/// A thumbnail as PNG bytes.
fn thumbnail_png(img: &Rgb8Image, what: &str) -> Result<Vec<u8>, ReportError> {
    let (w, h, rgb) = thumbnail(img);
    encode_png(w, h, PixelFormat::Rgb, &rgb)
        .map_err(|e| ReportError::Draw(what.to_owned(), e.to_string()))
}

/// One thumbnail of a worst-N row: its caption and PNG, or why it is missing.
struct Thumb {
    caption: String,
    /// File name in `<stem>_files/` (Markdown).
    file: String,
    png: Result<Vec<u8>, String>,
}

/// A file-name-safe form of a configuration's name.
fn safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Writes a row of thumbnails: inline base64 PNGs (HTML) or PNG files in `<stem>_files/`
/// (Markdown; a file already written by an earlier row, the reference, is reused).
fn thumbnails(
    doc: &mut Doc,
    thumbs: &[Thumb],
    written: &mut BTreeSet<String>,
) -> Result<(), ReportError> {
    let mut problems = Vec::new();
    if doc.html {
        doc.body
            .push_str("<div class=\"strip\" style=\"display:flex;gap:8px\">");
    }
    let mut md_images = Vec::new();
    for t in thumbs {
        let png = match &t.png {
            Ok(png) => png,
            Err(problem) => {
                problems.push(format!("{}: {problem}", t.caption));
                continue;
            }
        };
        if doc.html {
            doc.body.push_str(&format!(
                "<figure><img alt=\"{0}\" src=\"data:image/png;base64,{1}\"><figcaption>{0}</figcaption></figure>",
                lit(doc, &t.caption),
                super::base64(png)
            ));
        } else {
            if written.insert(t.file.clone()) {
                let path = doc.files_dir.join(&t.file);
                doc.staged.add(path, png.clone());
            }
            md_images.push(format!(
                "![{}]({}/{})",
                md_escape(&t.caption, false),
                doc.files_rel,
                t.file
            ));
        }
    }
    if doc.html {
        doc.body.push_str("</div>\n");
    } else if !md_images.is_empty() {
        let captions: Vec<String> = thumbs
            .iter()
            .filter(|t| t.png.is_ok())
            .map(|t| md_escape(&t.caption, false))
            .collect();
        doc.body.push_str(&format!(
            "{}\n\n{}\n\n",
            md_images.join(" "),
            captions.join(" · ")
        ));
    }
    for p in problems {
        let text = format!("Not shown: {}", lit(doc, &p));
        paragraph(doc, &text);
    }
    Ok(())
}

/// The reference / configuration / difference thumbnails of image `index` of configuration
/// `c` (number `ci` in the report). Images that cannot be read are named, not fatal.
fn worst_thumbnails(folder: &BenchFolder, ci: usize, name: &str, index: usize) -> Vec<Thumb> {
    let c = folder.configuration(name);
    let read = |path: Option<&PathBuf>, missing: &str| -> Result<Rgb8Image, String> {
        let path = path.ok_or_else(|| missing.to_owned())?;
        load_rgb(path).map_err(|e| e.to_string())
    };
    let missing_reference = folder
        .reference_problem
        .clone()
        .unwrap_or_else(|| "the run has no reference image for it".into());
    let reference_path = folder.reference.get(index).and_then(|r| r.as_ref());
    let image_path = c.and_then(|c| c.images.get(&index));
    let reference = read(reference_path, &missing_reference);
    let image = read(image_path, "the image was not generated");
    // From the two images just read, not read again.
    let difference = match (reference_path, image_path, &reference, &image) {
        (Some(r), Some(i), Ok(a), Ok(b)) => difference_of(a, b)
            .map(|diff| Rgb8Image {
                width: a.width,
                height: a.height,
                data: difference_rgb(&diff, DIFFERENCE_GAIN),
            })
            .map_err(|source| {
                DifferenceError::Compare {
                    reference: r.clone(),
                    image: i.clone(),
                    source,
                }
                .to_string()
            }),
        _ => Err("needs both images".into()),
    };
    let png = |img: &Result<Rgb8Image, String>, what: &str| {
        img.as_ref()
            .map_err(Clone::clone)
            .and_then(|i| thumbnail_png(i, what).map_err(|e| e.to_string()))
    };
    let stem = format!("c{ci}-{}-{index:06}", safe(name));
    vec![
        Thumb {
            caption: "reference".into(),
            file: format!("reference-{index:06}.png"),
            png: png(&reference, "reference thumbnail"),
        },
        Thumb {
            caption: name.to_owned(),
            file: format!("{stem}.png"),
            png: png(&image, "thumbnail"),
        },
        Thumb {
            caption: format!("|Δ| × {DIFFERENCE_GAIN}"),
            file: format!("{stem}-difference.png"),
            png: png(&difference, "difference thumbnail"),
        },
    ]
}

/// `folder` with only the configurations `names` (all when empty); a name the folder does not
/// have is refused (a typo would otherwise give a report of nothing).
fn shown_configurations(
    folder: &BenchFolder,
    names: &[String],
) -> Result<BenchFolder, ReportError> {
    let unknown: Vec<String> = names
        .iter()
        .filter(|n| folder.configuration(n).is_none())
        .cloned()
        .collect();
    if !unknown.is_empty() {
        return Err(ReportError::UnknownConfiguration {
            unknown,
            available: folder
                .configurations
                .iter()
                .map(|c| c.name.clone())
                .collect(),
        });
    }
    let mut shown = folder.clone();
    if !names.is_empty() {
        shown.configurations.retain(|c| names.contains(&c.name));
    }
    Ok(shown)
}

/// Checks `opts` against `folder`: every configuration named must be in it, `worst` at least 1.
/// Returns the folder with only the configurations shown.
fn checked(
    folder: &BenchFolder,
    opts: &BenchmarkReportOptions,
) -> Result<BenchFolder, ReportError> {
    if opts.worst == 0 {
        return Err(ReportError::NoWorst);
    }
    shown_configurations(folder, &opts.configurations)
}

/// The quality axis `opts` asks for, or the default for the configurations of `shown`.
fn quality_of(shown: &BenchFolder, opts: &BenchmarkReportOptions) -> QualityMetric {
    opts.quality
        .unwrap_or_else(|| QualityMetric::default_for(&shown.summary()))
}

/// Figures by file stem, and the note on what the quality plot leaves out.
pub type FiguresWithNote = (Vec<(String, Figure)>, Option<String>);

/// The report's figures for `opts` (its configurations, its quality axis or the default) and
/// the note on what the quality plot leaves out ([`quality_note`]): what the report shows and
/// `sd3lab report benchmark --figures` exports.
pub fn figures_for(
    folder: &BenchFolder,
    opts: &BenchmarkReportOptions,
) -> Result<FiguresWithNote, ReportError> {
    let shown = checked(folder, opts)?;
    let quality = quality_of(&shown, opts);
    Ok((
        benchmark_figures(&shown, quality),
        quality_note(&shown, quality),
    ))
}

/// The run's settings as rows of the report's first table.
fn settings_rows(doc: &Doc, folder: &BenchFolder) -> Vec<Vec<String>> {
    let s = &folder.results.settings;
    let g = &s.generation;
    let mut rows = vec![
        vec!["folder".into(), folder.dir.display().to_string()],
        vec!["model".into(), g.model.name.clone()],
        vec!["steps".into(), g.num_steps.to_string()],
        vec!["CFG weight".into(), g.cfg_weight.to_string()],
        vec!["size".into(), format!("{} x {}", g.width, g.height)],
        vec!["dtype".into(), g.dtype.name().into()],
        vec!["images".into(), folder.prompts.len().to_string()],
        vec!["warmup images".into(), s.warmup.to_string()],
    ];
    if !g.negative_prompt.is_empty() {
        rows.push(vec!["negative prompt".into(), g.negative_prompt.clone()]);
    }
    match &s.reference {
        None => rows.push(vec!["reference".into(), "none".into()]),
        Some(r) => {
            let kind = match r.kind {
                crate::bench::ReferenceKind::Manifest => "a calibration run",
                crate::bench::ReferenceKind::Folder => "a folder of images",
            };
            rows.push(vec![
                "reference".into(),
                format!("{} ({kind}, {} images)", r.dir.display(), r.images),
            ]);
            let verified = if r.verified {
                "yes: its recorded settings match the run's".to_owned()
            } else {
                "no: it records no settings to compare".to_owned()
            };
            rows.push(vec!["reference verified".into(), verified]);
            if !r.differences.is_empty() {
                rows.push(vec![
                    "reference differs in".into(),
                    r.differences.join(", "),
                ]);
            }
        }
    }
    if let Some(p) = &folder.reference_problem {
        rows.push(vec![
            "reference images".into(),
            format!("cannot be shown: {p}"),
        ]);
    }
    rows.into_iter()
        .map(|r| r.iter().map(|c| cell(doc, c)).collect())
        .collect()
}

/// The metrics' notes (and why LPIPS is missing), each once, with the configurations that
/// carry it.
fn notes(folder: &BenchFolder) -> Vec<String> {
    let mut by_note: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for c in &folder.configurations {
        let Some(m) = &c.result.metrics else { continue };
        let lpips = m
            .lpips_missing
            .as_ref()
            .map(|why| format!("LPIPS not measured: {why}"));
        for note in m.notes.iter().cloned().chain(lpips) {
            by_note.entry(note).or_default().push(&c.name);
        }
    }
    let all = folder.configurations.len();
    by_note
        .into_iter()
        .map(|(note, names)| {
            if names.len() == all {
                note
            } else {
                format!("{} ({note})", names.join(", "))
            }
        })
        .collect()
}

/// Writes a benchmark report: `output` ending `.html` (self-contained: SVG figures inline,
/// thumbnails as base64 PNGs) or `.md` (PNG figures and thumbnails in `<stem>_files/`), with
/// `<stem>_data.json` (the run's `results.json`) and `<stem>_data.csv` (the summary table)
/// beside it. Returns every file written; on an error, nothing is written.
pub fn write_benchmark_report(
    folder: &BenchFolder,
    output: &Path,
    opts: &BenchmarkReportOptions,
) -> Result<Vec<PathBuf>, ReportError> {
    benchmark_report_files(folder, output, opts)?.commit()
}

/// The files of [`write_benchmark_report`], checked and rendered but not written (add the
/// figures with [`super::stage_figures`], then commit).
pub fn benchmark_report_files(
    folder: &BenchFolder,
    output: &Path,
    opts: &BenchmarkReportOptions,
) -> Result<Staged, ReportError> {
    let ext = output
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase());
    if !matches!(ext.as_deref(), Some("html" | "md")) {
        return Err(ReportError::Extension {
            path: output.to_owned(),
        });
    }
    let shown = checked(folder, opts)?;
    let rows = shown.summary();
    let quality = quality_of(&shown, opts);
    let figs = benchmark_figures(&shown, quality);
    let mut doc = Doc::new(output, "SD3 Lab benchmark report");
    // What the report reads: no output may replace it.
    for file in [crate::bench::RESULTS_JSON, crate::bench::PER_IMAGE_CSV] {
        doc.staged.input(&folder.dir.join(file));
    }
    for path in folder
        .reference
        .iter()
        .flatten()
        .chain(folder.configurations.iter().flat_map(|c| c.images.values()))
    {
        doc.staged.input(path);
    }
    let written = stage_data(&mut doc.staged, output, &rows, results_json(folder)?)?;
    let settings = settings_rows(&doc, folder);
    doc.table(&["", ""], &settings);
    let notes = notes(&shown);
    if !notes.is_empty() {
        let items: Vec<String> = notes.iter().map(|n| lit(&doc, n)).collect();
        if doc.html {
            doc.body.push_str(&format!(
                "<p>Notes:</p><ul>{}</ul>\n",
                items
                    .iter()
                    .map(|n| format!("<li>{n}</li>"))
                    .collect::<String>()
            ));
        } else {
            doc.body.push_str("Notes:\n\n");
            for n in items {
                doc.body.push_str(&format!("- {n}\n"));
            }
            doc.body.push('\n');
        }
    }

    heading(&mut doc, 2, "Summary");
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.cells().iter().map(|c| cell(&doc, c)).collect())
        .collect();
    doc.table(&SummaryRow::COLUMNS, &table);
    let about = lit(
        &doc,
        "FID, KID and IS judge each configuration's images as a set against the reference \
             set's; PSNR, SSIM and LPIPS compare each image with its reference twin (PSNR's mean \
             leaves out identical pairs, whose PSNR is infinite). 'vs fp32' and 'vs fp16': how \
             many times smaller the MMDiT's weights are than in float32 and float16.",
    );
    paragraph(&mut doc, &about);
    if let Some(note) = quality_note(&shown, quality) {
        let text = lit(&doc, &note);
        paragraph(&mut doc, &text);
    }
    for (stem, fig) in &figs {
        doc.figure(stem, fig)?;
    }

    let mut files = BTreeSet::new();
    for (ci, c) in shown.configurations.iter().enumerate() {
        if c.paired.is_empty() {
            continue;
        }
        let all = shown.worst_first(&c.name, opts.metric);
        // Identical pairs (infinite PSNR) are never among the worst.
        let order: Vec<(usize, f64)> = all.iter().copied().filter(|(_, v)| v.is_finite()).collect();
        let title = format!(
            "{}: the prompts furthest from the reference by {}",
            lit(&doc, &c.name),
            opts.metric.label()
        );
        heading(&mut doc, 2, &title);
        if order.is_empty() && !all.is_empty() {
            paragraph(
                &mut doc,
                "Every image is identical to its reference twin (infinite PSNR).",
            );
            continue;
        }
        if order.is_empty() {
            let text = format!(
                "No image has a {} value{}.",
                opts.metric.label(),
                c.result
                    .metrics
                    .as_ref()
                    .and_then(|m| m.lpips_missing.as_ref())
                    .filter(|_| opts.metric == PairedMetric::Lpips)
                    .map_or(String::new(), |why| format!(": {}", lit(&doc, why)))
            );
            paragraph(&mut doc, &text);
            continue;
        }
        let shown_n = order.len().min(opts.worst);
        let identical = all.len() - order.len();
        let identical = if identical > 0 {
            format!(" ({identical} identical to their twins left out)")
        } else {
            String::new()
        };
        let text = format!(
            "The {shown_n} worst of {} images{identical}, worst first. Difference: per pixel, \
             the largest |Δ| over R, G and B, times {DIFFERENCE_GAIN}, through viridis (dark: \
             unchanged; yellow: |Δ| of {:.0} levels of 255 or more).",
            all.len(),
            255.0 / DIFFERENCE_GAIN
        );
        let text = lit(&doc, &text);
        paragraph(&mut doc, &text);
        for &(index, value) in order.iter().take(opts.worst) {
            let (prompt, seed) = shown
                .prompts
                .get(index)
                .map_or((String::new(), 0), |p| (p.prompt.clone(), p.seed));
            let title = format!(
                "image {index} (seed {seed}): {} {}",
                opts.metric.label(),
                opts.metric.format(value)
            );
            let title = lit(&doc, &title);
            heading(&mut doc, 3, &title);
            let text = format!("Prompt: {}", lit(&doc, &prompt));
            paragraph(&mut doc, &text);
            let thumbs = worst_thumbnails(&shown, ci, &c.name, index);
            thumbnails(&mut doc, &thumbs, &mut files)?;
        }
    }
    let names: Vec<String> = written
        .iter()
        .filter_map(|p| p.file_name())
        .map(|n| code(&doc, &n.to_string_lossy()))
        .collect();
    let text = format!(
        "The summary table is in {} and the run's results.json in {}, beside this report.",
        names.first().cloned().unwrap_or_default(),
        names.get(1).cloned().unwrap_or_default()
    );
    paragraph(&mut doc, &text);
    Ok(doc.finish(output))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frontier_keeps_what_nothing_beats_on_both_size_and_quality() {
        // (MB, PSNR): 1 is beaten by 2 (smaller and better); 3 and 0 trade off.
        let points = [(8.0, 40.0), (4.0, 20.0), (3.0, 25.0), (2.0, 10.0)];
        assert_eq!(frontier(&points, QualityMetric::Psnr), [3, 2, 0]);
        // The same numbers as FIDs (lower is better): the smallest is also the best.
        assert_eq!(frontier(&points, QualityMetric::Fid), [3]);
        // Equal points beat neither each other; a same-size worse one is beaten.
        let ties = [(2.0, 5.0), (2.0, 5.0), (2.0, 4.0)];
        assert_eq!(frontier(&ties, QualityMetric::Ssim), [0, 1]);
        assert!(frontier(&[], QualityMetric::Psnr).is_empty());
    }

    #[test]
    fn metric_directions() {
        for q in QualityMetric::ALL {
            let expected = matches!(q, QualityMetric::Psnr | QualityMetric::Ssim);
            assert_eq!(q.higher_is_better(), expected, "{q:?}");
            assert!(q.at_least_as_good(1.0, 1.0));
            assert_eq!(q.at_least_as_good(2.0, 1.0), expected, "{q:?}");
        }
        assert_eq!(
            serde_json::to_string(&QualityMetric::Lpips).unwrap(),
            "\"lpips\""
        );
    }

    fn row(name: &str, bytes: u64, fid: Option<f64>, psnr: Option<f64>) -> SummaryRow {
        SummaryRow {
            name: name.into(),
            fid,
            kid: None,
            isc: None,
            psnr,
            identical: Some(0),
            ssim: None,
            lpips: None,
            weight_bytes: bytes,
            ratio_fp32: 1.0,
            ratio_fp16: 1.0,
            seconds_per_image: None,
            peak_mlx_bytes: 0,
            peak_rss_bytes: 0,
            images: 4,
        }
    }

    #[test]
    fn the_quality_plot_labels_each_configuration_and_draws_its_frontier() {
        let rows = [
            row("fp32", 8_000_000, Some(1.0), None),
            row("w8", 2_000_000, Some(2.0), Some(40.0)),
            row("w4", 1_000_000, Some(9.0), Some(20.0)),
            row("w4-bad", 1_500_000, Some(12.0), Some(18.0)),
        ];
        assert_eq!(QualityMetric::default_for(&rows), QualityMetric::Fid);
        let Some(Figure::Lines {
            series, markers, ..
        }) = quality_figure(&rows, QualityMetric::Fid)
        else {
            panic!("lines")
        };
        let names: Vec<&str> = markers.iter().map(|m| m.0.as_str()).collect();
        assert_eq!(names, ["fp32", "w8", "w4", "w4-bad"]);
        assert_eq!(markers[1].1, (2.0, 2.0));
        assert_eq!(series[0].points, [(1.0, 9.0), (2.0, 2.0), (8.0, 1.0)]);
        // PSNR: fp32 has none (identical images); it is left off the plot, not drawn at 0.
        let Some(Figure::Lines { markers, .. }) = quality_figure(&rows, QualityMetric::Psnr) else {
            panic!("lines")
        };
        assert_eq!(markers.len(), 3);
        // No value anywhere: no figure.
        assert!(quality_figure(&rows, QualityMetric::Lpips).is_none());
        let none: Vec<SummaryRow> = rows
            .iter()
            .map(|r| SummaryRow {
                fid: None,
                ..r.clone()
            })
            .collect();
        assert_eq!(QualityMetric::default_for(&none), QualityMetric::Psnr);
    }

    /// The number in attribute `name="…"` of the SVG element `line`.
    fn attr(line: &str, name: &str) -> f64 {
        let start = line.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
        let rest = &line[start..];
        rest[..rest.find('"').unwrap()].parse().unwrap()
    }

    #[test]
    fn labelled_points_stay_inside_the_plot_even_when_they_share_one_size() {
        // Every configuration the same size (an axis of zero width before padding), then
        // spread out with the long name in the top right corner.
        let same = [
            row("fp16-long-name", 4_000_000, Some(0.5), None),
            row("w8", 4_000_000, Some(2.0), None),
            row("w4", 4_000_000, Some(9.0), None),
        ];
        let spread = [
            row("fp16-long-name", 8_000_000, Some(9.0), None),
            row("w8", 4_000_000, Some(2.0), None),
            row("w4", 1_000_000, Some(0.5), None),
        ];
        for rows in [same, spread] {
            labels_inside(&rows);
        }
    }

    fn labels_inside(rows: &[SummaryRow]) {
        let fig = quality_figure(rows, QualityMetric::Fid).unwrap();
        let (width, height) = (900, 420);
        let svg = super::super::render_svg(&fig, (width, height)).unwrap();
        let lines: Vec<&str> = svg.lines().collect();
        for r in rows {
            let at = lines
                .iter()
                .position(|l| l.trim() == r.name)
                .unwrap_or_else(|| panic!("{} not drawn", r.name));
            // The label's white ground just before its text: inside the plotting area (right
            // of the y labels' 84 px, left of the 12 px margin), below the title.
            let ground = lines[at - 2];
            assert!(ground.starts_with("<rect"), "{ground}");
            let (x, w) = (attr(ground, "x"), attr(ground, "width"));
            let (y, h) = (attr(ground, "y"), attr(ground, "height"));
            assert!(
                x >= 84.0 && x + w <= (width - 12) as f64,
                "{}: {ground}",
                r.name
            );
            assert!(
                y >= 40.0 && y + h <= (height - 52) as f64,
                "{}: {ground}",
                r.name
            );
        }
        // The x axis spans the sizes with room on both sides (around the one size when they
        // are all equal): a tick at 4 MB.
        assert!(
            svg.contains(">\n4.0\n<") || svg.contains(">4.0<"),
            "a tick at 4.0"
        );
    }

    #[test]
    fn markdown_escaping_shows_markup_literally() {
        assert_eq!(
            md_escape("<script>a*b_c</script> | x", false),
            "\\<script\\>a\\*b\\_c\\</script\\> \\| x"
        );
        assert_eq!(md_escape("a|b\\", true), "a|b\\\\");
        assert_eq!(safe("plan:4.5 bits"), "plan_4_5_bits");
    }

    #[test]
    fn thumbnails_fit_the_size_enlarging_by_whole_factors() {
        let small = Rgb8Image {
            width: 64,
            height: 32,
            data: vec![7; 64 * 32 * 3],
        };
        let (w, h, rgb) = thumbnail(&small);
        assert_eq!((w, h), (256, 128));
        assert!(rgb.iter().all(|&v| v == 7));
        let big = Rgb8Image {
            width: 1024,
            height: 512,
            data: vec![9; 1024 * 512 * 3],
        };
        let (w, h, _) = thumbnail(&big);
        assert_eq!((w, h), (256, 128));
    }

    #[test]
    fn fit_within_keeps_the_aspect_without_overflowing() {
        // 300 × 200 into 128: 200·128/300 = 85.3, rounded.
        assert_eq!(fit_within(300, 200, 128), (128, 85));
        assert_eq!(fit_within(200, 300, 128), (85, 128));
        // h · max would overflow u32 (100 000 · 100 000 > 4.29e9).
        assert_eq!(fit_within(100_000, 100_000, 100_000 - 1), (99_999, 99_999));
        assert_eq!(fit_within(4_000_000_000, 3_000_000_000, 256), (256, 192));
        // A sliver keeps at least one pixel; a small image grows by a whole factor.
        assert_eq!(fit_within(10_000, 1, 100), (100, 1));
        assert_eq!(fit_within(64, 48, 256), (256, 192));
        assert_eq!(fit_within(100, 60, 256), (200, 120));
    }
}
