//! Plots and reports from plain data, so the app's plots and the exported files show the same
//! numbers: a figure is described once ([`Figure`]: lines, heatmap or bars) and rendered to SVG
//! or PNG with plotters and an embedded font (Ubuntu Light from egui's fonts: the same pixels on
//! Linux and macOS, no system fonts). Reports are self-contained HTML (SVG inline) or Markdown
//! (PNG files beside it), with the data as CSV and JSON beside them.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

pub mod benchmark;
pub mod colormap;

use crate::calib::Bucket;
use crate::model::MmditConfig;
use crate::model::registry::mmdit_layer_ids;
use crate::quant::plan::{BuiltPlan, Objective, build_plan};
use crate::quant::sensitivity::{MAX_SQNR_DB, SensitivityReport};

/// Why rendering or writing failed.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("drawing {0}: {1}")]
    Draw(String, String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the sensitivity report has no bit widths")]
    NoBitWidths,
    #[error(transparent)]
    Plan(#[from] crate::quant::plan::PlanError),
    #[error("serialising the report's data: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Manifest(#[from] Box<crate::calib::CalibError>),
    #[error("{path}: no such file")]
    NoManifest { path: PathBuf },
    #[error("{path}: the run's generation settings are invalid: {source}")]
    Generation {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: a report is written as .html or .md")]
    Extension { path: PathBuf },
    #[error("{}: writing the CSV: {reason}", path.display())]
    Csv { path: PathBuf, reason: String },
    #[error(
        "no configuration {} in this benchmark (it has: {})",
        unknown.join(", "),
        if available.is_empty() { "none".to_owned() } else { available.join(", ") }
    )]
    UnknownConfiguration {
        unknown: Vec<String>,
        available: Vec<String>,
    },
    #[error("the number of worst prompts to show must be at least 1")]
    NoWorst,
    #[error(
        "{path} is one of this report's inputs ({input}): writing there would replace it; choose another output"
    )]
    OutputIsInput { path: PathBuf, input: PathBuf },
    #[error("{path}: {} is a file, not a folder", folder.display())]
    NotAFolder { path: PathBuf, folder: PathBuf },
    #[error(
        "the sensitivity run has no {bits}-bit results (it measured {})",
        available.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(", ")
    )]
    NoSuchBits { bits: i32, available: Vec<i32> },
}

/// A report's files, assembled in memory and written only once every one of them is ready and
/// every destination checked: a request that fails (a bit width the run lacks, a folder where
/// a file goes, an output that is one of the inputs) writes nothing.
#[derive(Debug, Default)]
pub struct Staged {
    files: Vec<(PathBuf, Vec<u8>)>,
    inputs: Vec<PathBuf>,
}

impl Staged {
    /// Records that the report reads `path`: no output may replace it.
    pub fn input(&mut self, path: &Path) {
        self.inputs.push(path.to_owned());
    }

    /// Reads an input file (recorded as one).
    pub fn read_input(&mut self, path: &Path) -> Result<Vec<u8>, ReportError> {
        self.input(path);
        std::fs::read(path).map_err(|source| ReportError::Io {
            path: path.to_owned(),
            source,
        })
    }

    /// Adds a file to write (a second one for the same path replaces the first).
    pub fn add(&mut self, path: PathBuf, bytes: Vec<u8>) {
        match self.files.iter_mut().find(|(p, _)| *p == path) {
            Some(f) => f.1 = bytes,
            None => self.files.push((path, bytes)),
        }
    }

    /// The files to write, in order.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.files.iter().map(|(p, _)| p.clone()).collect()
    }

    /// Moves `other`'s files and inputs into this one.
    pub fn extend(&mut self, other: Staged) {
        self.inputs.extend(other.inputs);
        for (p, b) in other.files {
            self.add(p, b);
        }
    }

    /// Refuses what cannot be written: a destination that is a folder, FIFO or device (through
    /// symbolic links), a folder on the way that is a file, an output that is an input.
    pub fn check(&self) -> Result<(), ReportError> {
        use crate::fsutil::FileIdentity;
        let inputs: Vec<(&PathBuf, FileIdentity)> = self
            .inputs
            .iter()
            .map(|i| (i, FileIdentity::of(i)))
            .collect();
        for (path, _) in &self.files {
            crate::fsutil::destination(path).map_err(|source| ReportError::Io {
                path: path.clone(),
                source,
            })?;
            let mut folder = path.parent();
            while let Some(f) = folder.filter(|f| !f.as_os_str().is_empty()) {
                match std::fs::metadata(f) {
                    Ok(m) if m.is_dir() => break,
                    Ok(_) => {
                        return Err(ReportError::NotAFolder {
                            path: path.clone(),
                            folder: f.to_owned(),
                        });
                    }
                    Err(_) => folder = f.parent(),
                }
            }
            let output = FileIdentity::of(path);
            if let Some((input, _)) = inputs.iter().find(|(_, id)| output.same(id)) {
                return Err(ReportError::OutputIsInput {
                    path: path.clone(),
                    input: (*input).clone(),
                });
            }
        }
        Ok(())
    }

    /// Checks, then writes every file (each atomically). Should a write fail midway (a full
    /// disk), the files and folders this call created are removed again. Returns the paths.
    pub fn commit(self) -> Result<Vec<PathBuf>, ReportError> {
        self.check()?;
        let mut created_files = Vec::new();
        let mut created_dirs = Vec::new();
        for (path, bytes) in &self.files {
            let mut missing = Vec::new();
            let mut folder = path.parent();
            while let Some(f) = folder.filter(|f| !f.as_os_str().is_empty() && !f.exists()) {
                missing.push(f.to_owned());
                folder = f.parent();
            }
            let existed = std::fs::symlink_metadata(path).is_ok();
            if let Err(e) = write(path, bytes) {
                // Best effort: what cannot be removed is left as it is.
                for f in created_files.iter().rev() {
                    let _ = std::fs::remove_file(f);
                }
                for d in missing.iter().chain(created_dirs.iter().rev()) {
                    let _ = std::fs::remove_dir(d);
                }
                return Err(e);
            }
            created_dirs.extend(missing.into_iter().rev());
            if !existed {
                created_files.push(path.clone());
            }
        }
        Ok(self.paths())
    }
}

/// One named line.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A figure, independent of where it is drawn.
#[derive(Debug, Clone, PartialEq)]
pub enum Figure {
    Lines {
        title: String,
        x_label: String,
        y_label: String,
        series: Vec<Series>,
        /// Highlighted points with a label.
        markers: Vec<(String, (f64, f64))>,
        /// The x axis counts whole units (bits, steps): ticks only at integers, labelled
        /// without decimals.
        integer_x: bool,
        /// The y axis is logarithmic (MSEs span decades): points are drawn at `log10(y)` (see
        /// [`plotted_y`]) and the ticks are labelled with the values.
        log_y: bool,
    },
    Heatmap {
        title: String,
        rows: Vec<String>,
        cols: Vec<String>,
        /// `values[row][col]`; NaN cells are left blank.
        values: Vec<Vec<f64>>,
        /// What the colours mean, with its unit (the colour bar's label).
        value_label: String,
    },
    /// Horizontal bars, first label on top.
    Bars {
        title: String,
        labels: Vec<String>,
        values: Vec<f64>,
        value_label: String,
    },
}

impl Figure {
    pub fn title(&self) -> &str {
        match self {
            Self::Lines { title, .. } | Self::Heatmap { title, .. } | Self::Bars { title, .. } => {
                title
            }
        }
    }
}

const FONT: &str = "sans-serif";

// Text sizes of the rendered figures, in pixels. All even: plotters' ab_glyph renderer puts
// each glyph's top at `size / 2 + top` converted with `as i32`, which truncates toward zero,
// so with an odd size the glyphs reaching above that line (digits) and those below it (a '.')
// are rounded in opposite directions and the decimal point floats a pixel above the baseline.
/// A figure's title.
const TITLE_SIZE: u32 = 24;
/// Axis descriptions and the colour bar's unit.
const DESC_SIZE: u32 = 16;
/// Tick labels of line figures.
const TICK_SIZE: u32 = 16;
/// Row and column labels of heatmaps and bar charts, and legend entries (many to a figure).
const SMALL_SIZE: u32 = 14;
/// Width in pixels of one character of `SMALL_SIZE` text (for label areas).
const SMALL_CHAR_WIDTH: u32 = 8;

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid TrueType font compiled into egui; failure would be a build bug.
        let _ = plotters::style::register_font(
            FONT,
            FontStyle::Normal,
            epaint_default_fonts::UBUNTU_LIGHT,
        );
    });
}

/// A colour per series index (Tableau 10).
pub fn palette(i: usize) -> (u8, u8, u8) {
    const C: [(u8, u8, u8); 10] = [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
    ];
    C[i % C.len()]
}

fn err<E: std::fmt::Debug>(what: &str) -> impl FnOnce(E) -> ReportError + '_ {
    move |e| ReportError::Draw(what.to_owned(), format!("{e:?}"))
}

fn span(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if lo > hi {
        (0.0, 1.0)
    } else if lo == hi {
        (lo - 1.0, hi + 1.0)
    } else {
        let pad = (hi - lo) * 0.05;
        (lo - pad, hi + pad)
    }
}

/// `x` as a whole number, or nothing between whole numbers (axes that count bits or steps).
fn integer_label(x: f64) -> String {
    let i = x.round();
    if (x - i).abs() < 1e-6 {
        format!("{i:.0}")
    } else {
        String::new()
    }
}

/// Where a point of value `y` is drawn: `log10(y)` on a logarithmic axis (None for a value a
/// log axis cannot show: zero, negative, not finite), `y` itself otherwise.
pub fn plotted_y(y: f64, log_y: bool) -> Option<f64> {
    if !log_y {
        return Some(y);
    }
    (y > 0.0 && y.is_finite()).then(|| y.log10())
}

/// The series as drawn: y through [`plotted_y`], points a log axis cannot show dropped.
pub fn plotted_series(series: &[Series], log_y: bool) -> Vec<Series> {
    series
        .iter()
        .map(|s| Series {
            name: s.name.clone(),
            points: s
                .points
                .iter()
                .filter_map(|&(x, y)| plotted_y(y, log_y).map(|y| (x, y)))
                .collect(),
        })
        .collect()
}

/// The label of a tick at `v` (= log10 of the value) on a logarithmic axis: the value, in
/// scientific notation ("1e-4", "3.2e-5").
pub fn log_tick_label(v: f64) -> String {
    let value = 10f64.powf(v);
    let text = format!("{value:.1e}");
    // "1.0e-4" reads better as "1e-4".
    text.replace(".0e", "e")
}

/// A corner of a figure's plotting area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corner {
    LeftTop,
    RightTop,
    LeftBottom,
    RightBottom,
}

/// A corner where a legend covers no data: one whose region (`legend`: the
/// legend's width and height as fractions of the plotting area's) holds no point of the lines
/// drawn (each segment sampled, so a line crossing a corner counts). Preferred: the
/// right bottom, then right top, left top, left bottom. None when every corner holds data:
/// the legend then goes outside the plot, on its right. `series` and `markers` as plotted
/// (see [`plotted_series`]).
pub fn legend_corner(
    series: &[Series],
    markers: &[(String, (f64, f64))],
    legend: (f64, f64),
) -> Option<Corner> {
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let ys = series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let (x0, x1) = span(xs.chain(markers.iter().map(|m| m.1.0)));
    let (y0, y1) = span(ys.chain(markers.iter().map(|m| m.1.1)));
    let mut samples: Vec<(f64, f64)> = Vec::new();
    for s in series {
        samples.extend(s.points.iter().copied());
        for w in s.points.windows(2) {
            let ((ax, ay), (bx, by)) = (w[0], w[1]);
            samples.extend((1..10).map(|i| {
                let t = i as f64 / 10.0;
                (ax + (bx - ax) * t, ay + (by - ay) * t)
            }));
        }
    }
    samples.extend(markers.iter().map(|m| m.1));
    let normalised: Vec<(f64, f64)> = samples
        .iter()
        .map(|&(x, y)| ((x - x0) / (x1 - x0), (y - y0) / (y1 - y0)))
        .collect();
    let (w, h) = legend;
    let count = |corner: Corner| {
        let (left, top) = match corner {
            Corner::LeftTop => (true, true),
            Corner::RightTop => (false, true),
            Corner::LeftBottom => (true, false),
            Corner::RightBottom => (false, false),
        };
        normalised
            .iter()
            .filter(|&&(x, y)| {
                let in_x = if left { x <= w } else { x >= 1.0 - w };
                let in_y = if top { y >= 1.0 - h } else { y <= h };
                in_x && in_y
            })
            .count()
    };
    [
        Corner::RightBottom,
        Corner::RightTop,
        Corner::LeftTop,
        Corner::LeftBottom,
    ]
    .into_iter()
    .find(|&c| count(c) == 0)
}

/// The legend of a line figure drawn at `size` pixels, as fractions of the plotting area:
/// one row of `SMALL_SIZE` text per entry, as wide as the longest name with its sample line.
fn legend_size(
    series: &[Series],
    markers: &[(String, (f64, f64))],
    size: (u32, u32),
) -> (f64, f64) {
    let entries = series.len() + markers.len();
    let longest = longest_legend_entry(series, markers);
    // The plotting area: the figure less the label areas, the caption and the margins.
    let (w, h) = (
        size.0.saturating_sub(84 + 24),
        size.1.saturating_sub(52 + 48 + 24),
    );
    legend_fraction(
        entries,
        longest,
        (SMALL_CHAR_WIDTH as f64, SMALL_SIZE as f64 + 8.0, 40.0),
        (w as f64, h as f64),
    )
}

/// A legend's size as fractions of a plotting area of `area` (width, height): `entries` rows
/// of `row_height`, the longest name of `longest` characters of `char_width` plus `extra`
/// (its sample and padding). `metrics` = (char width, row height, extra), all in pixels.
pub fn legend_fraction(
    entries: usize,
    longest: usize,
    metrics: (f64, f64, f64),
    area: (f64, f64),
) -> (f64, f64) {
    let (char_width, row_height, extra) = metrics;
    let w = (longest as f64 * char_width + extra) / area.0.max(1.0);
    // Plus its padding and its distance from the plot's edge.
    let h = (entries as f64 * row_height + 30.0) / area.1.max(1.0);
    (w.clamp(0.05, 1.0), h.clamp(0.05, 1.0))
}

/// The length in characters of a legend's longest entry (a series or a marker).
pub fn longest_legend_entry(series: &[Series], markers: &[(String, (f64, f64))]) -> usize {
    series
        .iter()
        .map(|s| s.name.len())
        .chain(markers.iter().map(|m| m.0.len()))
        .max()
        .unwrap_or(0)
}

/// Width in pixels of a legend drawn beside a line figure: its longest name and its sample.
fn legend_strip_width(series: &[Series], markers: &[(String, (f64, f64))]) -> u32 {
    longest_legend_entry(series, markers) as u32 * SMALL_CHAR_WIDTH + 48
}

/// A Pareto front as the step function it is: between two optimal plans the best reachable
/// error stays that of the cheaper one, so each point is reached by a horizontal run at the
/// previous error and a vertical one at its own x. Points are taken in order of x; points
/// sharing an x make a vertical run (never a diagonal).
pub fn staircase(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut sorted = points.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut out: Vec<(f64, f64)> = Vec::with_capacity(sorted.len() * 2);
    for (x, y) in sorted {
        if let Some(&(prev_x, prev_y)) = out.last()
            && prev_x != x
            && prev_y != y
        {
            out.push((x, prev_y));
        }
        out.push((x, y));
    }
    out
}

/// A tick label on a colour bar spanning `lo..hi`: as many decimals as the tick spacing
/// needs (35, 0.15), scientific notation for very small or large magnitudes (MSEs).
pub fn bar_label(v: f64, lo: f64, hi: f64) -> String {
    let magnitude = lo.abs().max(hi.abs());
    if magnitude != 0.0 && !(1e-3..1e5).contains(&magnitude) {
        return format!("{v:.1e}");
    }
    // About six ticks: one decimal per power of ten below the spacing.
    let spacing = (hi - lo) / 6.0;
    let decimals = if spacing > 0.0 {
        (-spacing.log10().floor()).clamp(0.0, 6.0) as usize
    } else {
        2
    };
    format!("{v:.decimals$}")
}

/// Width in pixels of a heatmap's colour bar with its tick labels and unit.
const COLOUR_BAR_WIDTH: u32 = 110;

/// The viridis scale from `lo` (bottom) to `hi` (top), labelled with values and `label`
/// (the unit), so a heatmap's colours can be read back from the file alone.
fn colour_bar<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    lo: f64,
    hi: f64,
    label: &str,
    title: &str,
) -> Result<(), ReportError>
where
    DB::ErrorType: 'static,
{
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .margin_left(0)
        .x_label_area_size(36)
        .right_y_label_area_size(76)
        .build_cartesian_2d(0f64..1f64, lo..hi)
        .map_err(err(title))?;
    chart
        .configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_labels(6)
        .y_label_formatter(&|v| bar_label(*v, lo, hi))
        .y_desc(label)
        .label_style((FONT, SMALL_SIZE))
        .axis_desc_style((FONT, DESC_SIZE))
        .draw()
        .map_err(err(title))?;
    const STEPS: usize = 128;
    let step = (hi - lo) / STEPS as f64;
    chart
        .draw_series((0..STEPS).map(|i| {
            let y = lo + step * i as f64;
            let [r, g, b] = colormap::viridis((i as f32 + 0.5) / STEPS as f32);
            Rectangle::new([(0.0, y), (1.0, y + step)], RGBColor(r, g, b).filled())
        }))
        .map_err(err(title))?;
    chart
        .draw_series([Rectangle::new(
            [(0.0, lo), (1.0, hi)],
            BLACK.stroke_width(1),
        )])
        .map_err(err(title))?;
    Ok(())
}

fn draw<DB: DrawingBackend>(
    fig: &Figure,
    root: DrawingArea<DB, plotters::coord::Shift>,
) -> Result<(), ReportError>
where
    DB::ErrorType: 'static,
{
    let title = fig.title().to_owned();
    root.fill(&WHITE).map_err(err(&title))?;
    match fig {
        Figure::Lines {
            x_label,
            y_label,
            series,
            markers,
            integer_x,
            log_y,
            ..
        } => {
            let plotted = plotted_series(series, *log_y);
            let plotted_markers: Vec<(String, (f64, f64))> = markers
                .iter()
                .filter_map(|(l, (x, y))| plotted_y(*y, *log_y).map(|y| (l.clone(), (*x, y))))
                .collect();
            let xs = plotted.iter().flat_map(|s| s.points.iter().map(|p| p.0));
            let ys = plotted.iter().flat_map(|s| s.points.iter().map(|p| p.1));
            let (x0, x1) = span(xs.chain(plotted_markers.iter().map(|m| m.1.0)));
            let (y0, y1) = span(ys.chain(plotted_markers.iter().map(|m| m.1.1)));
            // Several markers (a benchmark's configurations) cannot be told apart in a legend
            // of identical red dots: each is labelled beside its point instead, and the
            // legend lists the lines only.
            let label_markers = plotted_markers.len() > 1;
            // Labelled dots get twice the margin, so that a dot and its label at the edge of
            // the data stay clear of the axes.
            let widen = |(lo, hi): (f64, f64)| {
                let pad = if label_markers { (hi - lo) * 0.05 } else { 0.0 };
                (lo - pad, hi + pad)
            };
            let ((x0, x1), (y0, y1)) = (widen((x0, x1)), widen((y0, y1)));
            let legend_markers: &[(String, (f64, f64))] =
                if label_markers { &[] } else { &plotted_markers };
            let corner = legend_corner(
                &plotted,
                &plotted_markers,
                legend_size(&plotted, legend_markers, root.dim_in_pixel()),
            );
            // No corner free of data: the legend gets a strip of its own on the right.
            let (chart_area, legend_area) = match corner {
                Some(_) => (root.clone(), None),
                None => {
                    let width = root.dim_in_pixel().0;
                    let strip = legend_strip_width(&plotted, legend_markers).min(width / 3);
                    let (c, l) = root.split_horizontally(width - strip);
                    (c, Some(l))
                }
            };
            let mut chart = ChartBuilder::on(&chart_area)
                .caption(&title, (FONT, TITLE_SIZE))
                .margin(12)
                .x_label_area_size(52)
                .y_label_area_size(84)
                .build_cartesian_2d(x0..x1, y0..y1)
                .map_err(err(&title))?;
            let whole = |x: &f64| integer_label(*x);
            let log_label = |y: &f64| log_tick_label(*y);
            let mut mesh = chart.configure_mesh();
            mesh.x_desc(x_label.as_str())
                .y_desc(y_label.as_str())
                .label_style((FONT, TICK_SIZE))
                .axis_desc_style((FONT, DESC_SIZE));
            if *integer_x {
                // As many ticks as there are integers in range: plotters then steps by 1 (or
                // a coarser whole step on a long axis), and the formatter drops any fraction.
                let integers = (x1.floor() - x0.ceil()).max(0.0) as usize + 1;
                mesh.x_labels(integers.clamp(2, 12))
                    .x_label_formatter(&whole);
            }
            if *log_y {
                mesh.y_label_formatter(&log_label);
            }
            mesh.draw().map_err(err(&title))?;
            for (i, s) in plotted.iter().enumerate() {
                let (r, g, b) = palette(i);
                let color = RGBColor(r, g, b);
                chart
                    .draw_series(LineSeries::new(
                        s.points.iter().copied(),
                        color.stroke_width(2),
                    ))
                    .map_err(err(&title))?
                    .label(s.name.clone())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                    });
                if s.points.len() < 40 {
                    chart
                        .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                        .map_err(err(&title))?;
                }
            }
            for (label, p) in &plotted_markers {
                let drawn = chart
                    .draw_series([Circle::new(*p, 6, RED.filled())])
                    .map_err(err(&title))?;
                if !label_markers {
                    drawn
                        .label(label.clone())
                        .legend(|(x, y)| Circle::new((x + 9, y), 5, RED.filled()));
                }
            }
            if label_markers {
                // Each label above its point (below it near the top), on the side facing the
                // plot's middle, so that none runs past the plot's edge; on a white ground,
                // readable over the lines through its point.
                let middle = (x0 + x1) / 2.0;
                let near_top = y1 - (y1 - y0) * 0.15;
                let text = TextStyle::from((FONT, SMALL_SIZE).into_font()).color(&BLACK);
                chart
                    .draw_series(plotted_markers.iter().map(|(label, p)| {
                        let (dx, h) = if p.0 > middle {
                            (-8, HPos::Right)
                        } else {
                            (8, HPos::Left)
                        };
                        let (dy, v) = if p.1 > near_top {
                            (8, VPos::Top)
                        } else {
                            (-8, VPos::Bottom)
                        };
                        let style = text.pos(Pos::new(h, v));
                        let width = label.chars().count() as i32 * SMALL_CHAR_WIDTH as i32;
                        let (left, right) = if dx < 0 {
                            (dx - width - 2, dx + 2)
                        } else {
                            (dx - 2, dx + width + 2)
                        };
                        let (top, bottom) = if dy < 0 {
                            (dy - SMALL_SIZE as i32 - 2, dy + 2)
                        } else {
                            (dy - 2, dy + SMALL_SIZE as i32 + 2)
                        };
                        EmptyElement::at(*p)
                            + Rectangle::new(
                                [(left, top), (right, bottom)],
                                WHITE.mix(0.85).filled(),
                            )
                            + Text::new(label.clone(), (dx, dy), style)
                    }))
                    .map_err(err(&title))?;
            }
            if let Some(corner) = corner
                && !series.is_empty()
            {
                let position = match corner {
                    Corner::LeftTop => SeriesLabelPosition::UpperLeft,
                    Corner::RightTop => SeriesLabelPosition::UpperRight,
                    Corner::LeftBottom => SeriesLabelPosition::LowerLeft,
                    Corner::RightBottom => SeriesLabelPosition::LowerRight,
                };
                chart
                    .configure_series_labels()
                    .label_font((FONT, SMALL_SIZE))
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .position(position)
                    .draw()
                    .map_err(err(&title))?;
            }
            if let Some(area) = legend_area {
                let row = (SMALL_SIZE + 8) as i32;
                let top = TITLE_SIZE as i32 + 24;
                let text = TextStyle::from((FONT, SMALL_SIZE).into_font()).color(&BLACK);
                for (i, s) in plotted.iter().enumerate() {
                    let (r, g, b) = palette(i);
                    let y = top + row * i as i32;
                    area.draw(&PathElement::new(
                        vec![(4, y), (24, y)],
                        RGBColor(r, g, b).stroke_width(2),
                    ))
                    .map_err(err(&title))?;
                    area.draw_text(&s.name, &text, (30, y - SMALL_SIZE as i32 / 2))
                        .map_err(err(&title))?;
                }
                for (i, (label, _)) in legend_markers.iter().enumerate() {
                    let y = top + row * (plotted.len() + i) as i32;
                    area.draw(&Circle::new((14, y), 5, RED.filled()))
                        .map_err(err(&title))?;
                    area.draw_text(label, &text, (30, y - SMALL_SIZE as i32 / 2))
                        .map_err(err(&title))?;
                }
            }
        }
        Figure::Heatmap {
            rows,
            cols,
            values,
            value_label,
            ..
        } => {
            let (lo, hi) = span(values.iter().flatten().copied());
            let n_rows = rows.len().max(1);
            let n_cols = cols.len().max(1);
            let label_width =
                rows.iter().map(|r| r.len()).max().unwrap_or(4) as u32 * SMALL_CHAR_WIDTH + 12;
            // The title spans the cells and the colour bar, which sits on the right and
            // carries the unit.
            let area = root
                .titled(&title, (FONT, TITLE_SIZE))
                .map_err(err(&title))?;
            let width = area.dim_in_pixel().0;
            let (cells_area, bar_area) =
                area.split_horizontally(width.saturating_sub(COLOUR_BAR_WIDTH));
            colour_bar(&bar_area, lo, hi, value_label, &title)?;
            let mut chart = ChartBuilder::on(&cells_area)
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(label_width.min(420))
                .build_cartesian_2d(-0.5f64..n_cols as f64 - 0.5, -0.5f64..n_rows as f64 - 0.5)
                .map_err(err(&title))?;
            // Cell centres sit on integers; label only those.
            let at = |v: f64, n: usize| -> Option<usize> {
                let i = v.round();
                ((v - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < n).then_some(i as usize)
            };
            let rows_c = rows.clone();
            let cols_c = cols.clone();
            chart
                .configure_mesh()
                .disable_mesh()
                .x_labels(n_cols)
                .y_labels(n_rows.min(60))
                // `.get`: an empty heatmap (no layer to show) still draws its axes.
                .x_label_formatter(&|x| {
                    at(*x, n_cols)
                        .and_then(|i| cols_c.get(i).cloned())
                        .unwrap_or_default()
                })
                .y_label_formatter(&|y| {
                    at(*y, n_rows)
                        .and_then(|i| rows_c.get(n_rows - 1 - i).cloned())
                        .unwrap_or_default()
                })
                .label_style((FONT, SMALL_SIZE))
                .draw()
                .map_err(err(&title))?;
            let cells = values.iter().enumerate().flat_map(|(r, row)| {
                row.iter()
                    .enumerate()
                    .filter_map(move |(c, v)| v.is_finite().then_some((r, c, *v)))
            });
            chart
                .draw_series(cells.map(|(r, c, v)| {
                    let t = ((v - lo) / (hi - lo)) as f32;
                    let [cr, cg, cb] = colormap::viridis(t);
                    let y = (n_rows - 1 - r) as f64;
                    Rectangle::new(
                        [(c as f64 - 0.5, y - 0.5), (c as f64 + 0.5, y + 0.5)],
                        RGBColor(cr, cg, cb).filled(),
                    )
                }))
                .map_err(err(&title))?;
        }
        Figure::Bars {
            labels,
            values,
            value_label,
            ..
        } => {
            let n = labels.len().max(1);
            let (lo, hi) = span(values.iter().copied().chain([0.0]));
            let label_width =
                labels.iter().map(|r| r.len()).max().unwrap_or(4) as u32 * SMALL_CHAR_WIDTH + 12;
            let mut chart = ChartBuilder::on(&root)
                .caption(&title, (FONT, TITLE_SIZE))
                .margin(12)
                .x_label_area_size(52)
                .y_label_area_size(label_width.min(420))
                .build_cartesian_2d(lo.min(0.0)..hi, -0.5f64..n as f64 - 0.5)
                .map_err(err(&title))?;
            let labels_c = labels.clone();
            chart
                .configure_mesh()
                .disable_y_mesh()
                .y_labels(n.min(60))
                .x_desc(value_label.as_str())
                .y_label_formatter(&|y| {
                    let i = y.round();
                    if (y - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < n {
                        labels_c
                            .get(n - 1 - i as usize)
                            .cloned()
                            .unwrap_or_default()
                    } else {
                        String::new()
                    }
                })
                .label_style((FONT, SMALL_SIZE))
                .draw()
                .map_err(err(&title))?;
            let (r, g, b) = palette(0);
            chart
                .draw_series(values.iter().enumerate().map(|(i, &v)| {
                    let y = (n - 1 - i) as f64;
                    Rectangle::new([(0.0, y - 0.35), (v, y + 0.35)], RGBColor(r, g, b).filled())
                }))
                .map_err(err(&title))?;
        }
    }
    root.present().map_err(err(&title))?;
    Ok(())
}

/// The figure as an SVG document.
pub fn render_svg(fig: &Figure, size: (u32, u32)) -> Result<String, ReportError> {
    register_font();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        draw(fig, root)?;
    }
    Ok(svg)
}

/// The figure as PNG bytes.
pub fn render_png(fig: &Figure, size: (u32, u32)) -> Result<Vec<u8>, ReportError> {
    register_font();
    let mut rgb = vec![255u8; (size.0 * size.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area();
        draw(fig, root)?;
    }
    crate::image::encode_png(size.0, size.1, crate::image::PixelFormat::Rgb, &rgb)
        .map_err(|e| ReportError::Draw(fig.title().into(), e.to_string()))
}

/// Plot labels of a model's layers
/// ([`LayerId::short_name`](crate::model::LayerId::short_name)), looked up by full name.
pub struct LayerLabels(HashMap<String, String>);

impl LayerLabels {
    pub fn new(cfg: &MmditConfig) -> Self {
        Self(
            mmdit_layer_ids(cfg.depth)
                .into_iter()
                .map(|id| (id.name(), id.short_name()))
                .collect(),
        )
    }

    /// The short label of layer `name`; a name the model does not have (a report edited by
    /// hand, another tool's file) is shown in full rather than guessed at.
    pub fn get(&self, name: &str) -> String {
        self.0.get(name).cloned().unwrap_or_else(|| name.to_owned())
    }
}

/// Which metric a sensitivity figure shows.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    Default,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    #[default]
    Sqnr,
    Mse,
}

impl Metric {
    pub fn label(self) -> &'static str {
        match self {
            Self::Sqnr => "SQNR (dB)",
            Self::Mse => "MSE",
        }
    }

    pub fn of(self, r: &crate::quant::sensitivity::BucketResult) -> f64 {
        match self {
            Self::Sqnr => r.sqnr_db,
            Self::Mse => r.mse,
        }
    }

    /// The standard error of an estimated result in this metric's units (`linearized`
    /// reports): the MSE's own, or for SQNR its first-order image, 10/ln 10 · σ/MSE dB.
    pub fn stderr_of(self, r: &crate::quant::sensitivity::BucketResult) -> Option<f64> {
        let se = r.mse_stderr?;
        match self {
            Self::Mse => Some(se),
            Self::Sqnr => (r.mse > 0.0).then(|| 10.0 / std::f64::consts::LN_10 * se / r.mse),
        }
    }

    /// Orders "more sensitive first".
    fn worse_first(self, a: f64, b: f64) -> std::cmp::Ordering {
        match self {
            Self::Sqnr => a.total_cmp(&b),
            Self::Mse => b.total_cmp(&a),
        }
    }
}

/// Which layers a sensitivity view covers (the app's block and kind filters); empty: all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerFilter {
    pub block: Option<usize>,
    pub kind: Option<crate::model::registry::LayerKind>,
}

impl LayerFilter {
    pub fn keeps(&self, layer: &crate::quant::sensitivity::LayerResult) -> bool {
        self.block.is_none_or(|b| layer.block == Some(b))
            && self.kind.is_none_or(|k| layer.kind == k)
    }

    /// "block 1, kind mlp"; empty when it keeps every layer.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(b) = self.block {
            parts.push(format!("block {b}"));
        }
        if let Some(k) = self.kind {
            parts.push(format!("kind {}", k.name()));
        }
        parts.join(", ")
    }
}

/// The layers `filter` keeps that have results for `bits` in `bucket`, most sensitive first:
/// `(name, value)`.
pub fn ranking(
    report: &SensitivityReport,
    bits: i32,
    bucket: Bucket,
    metric: Metric,
    filter: &LayerFilter,
) -> Vec<(String, f64)> {
    let mut v: Vec<(String, f64)> = report
        .layers
        .iter()
        .filter(|l| filter.keeps(l))
        .filter_map(|l| {
            l.results
                .iter()
                .find(|r| r.bits == bits && r.bucket == bucket)
                .map(|r| (l.name.clone(), metric.of(r)))
        })
        .collect();
    v.sort_by(|a, b| metric.worse_first(a.1, b.1));
    v
}

/// Metric vs bits, one line per layer.
pub fn bits_figure(
    report: &SensitivityReport,
    layers: &[String],
    bucket: Bucket,
    metric: Metric,
) -> Figure {
    let labels = LayerLabels::new(&report.settings.model_config);
    let series = layers
        .iter()
        .filter_map(|name| report.layers.iter().find(|l| &l.name == name))
        .map(|l| Series {
            name: labels.get(&l.name),
            points: l
                .results
                .iter()
                .filter(|r| r.bucket == bucket)
                .map(|r| (r.bits as f64, metric.of(r)))
                .collect(),
        })
        .collect();
    Figure::Lines {
        title: format!("{} vs bits ({bucket})", metric.label()),
        x_label: "bits".into(),
        y_label: metric.label().into(),
        series,
        markers: Vec::new(),
        integer_x: true,
        // MSEs span decades across bit widths.
        log_y: metric == Metric::Mse,
    }
}

/// Layers × buckets at one bit width.
pub fn bucket_heatmap(
    report: &SensitivityReport,
    layers: &[String],
    bits: i32,
    metric: Metric,
) -> Figure {
    let labels = LayerLabels::new(&report.settings.model_config);
    let buckets = Bucket::GROUPS;
    let mut rows = Vec::new();
    let mut values = Vec::new();
    for name in layers {
        let Some(l) = report.layers.iter().find(|l| &l.name == name) else {
            continue;
        };
        rows.push(labels.get(name));
        values.push(
            buckets
                .iter()
                .map(|b| {
                    l.results
                        .iter()
                        .find(|r| r.bits == bits && r.bucket == *b)
                        // A capped SQNR means "did not move the output": blank, off the scale.
                        .filter(|r| !(metric == Metric::Sqnr && r.sqnr_db >= MAX_SQNR_DB))
                        .map_or(f64::NAN, |r| metric.of(r))
                })
                .collect(),
        );
    }
    Figure::Heatmap {
        title: format!("layer x bucket at {bits} bits (blank: no effect)"),
        rows,
        cols: buckets.iter().map(|b| b.to_string()).collect(),
        values,
        value_label: metric.label().into(),
    }
}

/// The `n` most sensitive layers at `bits` among those `filter` keeps.
pub fn ranking_figure(
    report: &SensitivityReport,
    bits: i32,
    bucket: Bucket,
    metric: Metric,
    n: usize,
    filter: &LayerFilter,
) -> Figure {
    let labels = LayerLabels::new(&report.settings.model_config);
    let top: Vec<(String, f64)> = ranking(report, bits, bucket, metric, filter)
        .into_iter()
        .take(n)
        .collect();
    Figure::Bars {
        title: format!("most sensitive layers at {bits} bits ({bucket})"),
        labels: top.iter().map(|t| labels.get(&t.0)).collect(),
        values: top.iter().map(|t| t.1).collect(),
        value_label: metric.label().into(),
    }
}

/// The Pareto front of plans with the chosen plan marked.
pub fn pareto_figure(built: &BuiltPlan, objective: Objective) -> Figure {
    let label = match objective {
        Objective::Sqnr => "summed SQNR (dB)",
        Objective::Mse => "summed MSE",
    };
    Figure::Lines {
        title: "optimal plans: error vs average bits".into(),
        x_label: "average bits per weight (scales included)".into(),
        y_label: label.into(),
        series: vec![Series {
            name: "Pareto front".into(),
            points: staircase(&built.pareto),
        }],
        markers: vec![(
            format!("plan at {:.3} bits", built.average_bits),
            (built.average_bits, built.predicted_error),
        )],
        // Average bits are fractional (e.g. 4.5 with the scales).
        integer_x: false,
        log_y: objective == Objective::Mse,
    }
}

/// What a sensitivity report shows.
#[derive(Debug, Clone)]
pub struct SensitivityReportOptions {
    pub metric: Metric,
    pub bucket: Bucket,
    /// Bit width of the heatmap and the ranking (default: the lowest measured).
    pub bits: Option<i32>,
    /// Layers in the bits plot (default: the `top` most sensitive).
    pub layers: Vec<String>,
    pub top: usize,
    /// Add a plan and its Pareto front at this target.
    pub plan_target_bits: Option<f64>,
    /// What that plan optimises.
    pub plan_objective: Objective,
    /// Only these layers in the ranking, the heatmap and the default bits plot.
    pub filter: LayerFilter,
    /// At most this many (the most sensitive) layers in the heatmap; None: all.
    pub heatmap_rows: Option<usize>,
}

impl SensitivityReportOptions {
    /// The bit width of the heatmap and the ranking: the chosen one, else the lowest measured.
    fn shown_bits(&self, report: &SensitivityReport) -> Result<i32, ReportError> {
        let bits = self
            .bits
            .or_else(|| report.lowest_bits())
            .ok_or(ReportError::NoBitWidths)?;
        if !report.settings.bits.contains(&bits) {
            return Err(ReportError::NoSuchBits {
                bits,
                available: crate::quant::sensitivity::normalized_bits(&report.settings.bits),
            });
        }
        Ok(bits)
    }
}

impl Default for SensitivityReportOptions {
    fn default() -> Self {
        Self {
            metric: Metric::Sqnr,
            bucket: Bucket::All,
            bits: None,
            layers: Vec::new(),
            top: 10,
            plan_target_bits: None,
            plan_objective: Objective::Sqnr,
            filter: LayerFilter::default(),
            heatmap_rows: None,
        }
    }
}

/// The figures of a sensitivity report, by file stem.
pub fn sensitivity_figures(
    report: &SensitivityReport,
    opts: &SensitivityReportOptions,
) -> Result<Vec<(String, Figure)>, ReportError> {
    let bits = opts.shown_bits(report)?;
    let ranked = ranking(report, bits, opts.bucket, opts.metric, &opts.filter);
    let layers: Vec<String> = if opts.layers.is_empty() {
        ranked.iter().take(opts.top).map(|r| r.0.clone()).collect()
    } else {
        opts.layers.clone()
    };
    let heatmap_layers: Vec<String> = ranked
        .iter()
        .take(opts.heatmap_rows.unwrap_or(usize::MAX))
        .map(|r| r.0.clone())
        .collect();
    let mut figs = vec![
        (
            "bits".to_owned(),
            bits_figure(report, &layers, opts.bucket, opts.metric),
        ),
        (
            "heatmap".to_owned(),
            bucket_heatmap(report, &heatmap_layers, bits, opts.metric),
        ),
        (
            "ranking".to_owned(),
            ranking_figure(
                report,
                bits,
                opts.bucket,
                opts.metric,
                opts.top,
                &opts.filter,
            ),
        ),
    ];
    if let Some(target) = opts.plan_target_bits {
        let built = build_plan(report, target, &[], opts.plan_objective)?;
        figs.push((
            "pareto".to_owned(),
            pareto_figure(&built, opts.plan_objective),
        ));
    }
    Ok(figs)
}

pub(crate) fn write(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(|source| ReportError::Io {
            path: dir.to_owned(),
            source,
        })?;
    }
    crate::fsutil::write_atomic(path, bytes).map_err(|source| ReportError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Writes every figure as `<dir>/<stem>.svg` and `.png`; returns the paths. On an error,
/// nothing is written.
pub fn export_figures(
    figs: &[(String, Figure)],
    dir: &Path,
    size: (u32, u32),
) -> Result<Vec<PathBuf>, ReportError> {
    let mut staged = Staged::default();
    stage_figures(figs, dir, size, &mut staged)?;
    staged.commit()
}

/// Renders every figure as `<dir>/<stem>.svg` and `.png` into `staged`.
pub fn stage_figures(
    figs: &[(String, Figure)],
    dir: &Path,
    size: (u32, u32),
    staged: &mut Staged,
) -> Result<(), ReportError> {
    if let Ok(meta) = std::fs::metadata(dir)
        && !meta.is_dir()
    {
        return Err(ReportError::NotAFolder {
            path: dir.to_owned(),
            folder: dir.to_owned(),
        });
    }
    for (stem, fig) in figs {
        let svg = dir.join(format!("{stem}.svg"));
        staged.add(svg, render_svg(fig, size)?.into_bytes());
        let png = dir.join(format!("{stem}.png"));
        staged.add(png, render_png(fig, size)?);
    }
    Ok(())
}

pub(crate) fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Writes a sensitivity report: `output` ending in `.html` (self-contained, SVG inline) or
/// `.md` (PNG figures in `<stem>_files/`), with `<stem>_data.csv` and `<stem>_data.json`
/// beside it. Returns every file written; on an error, nothing is written.
pub fn write_sensitivity_report(
    report: &SensitivityReport,
    output: &Path,
    opts: &SensitivityReportOptions,
) -> Result<Vec<PathBuf>, ReportError> {
    sensitivity_report_files(report, output, opts)?.commit()
}

/// The files of [`write_sensitivity_report`], checked and rendered but not written (add the
/// figures with [`stage_figures`] and [`Staged::input`] the report file read, then commit).
pub fn sensitivity_report_files(
    report: &SensitivityReport,
    output: &Path,
    opts: &SensitivityReportOptions,
) -> Result<Staged, ReportError> {
    check_extension(output)?;
    let bits = opts.shown_bits(report)?;
    let figs = sensitivity_figures(report, opts)?;
    let json = serde_json::to_value(report)?;
    let mut doc = Doc::new(output, "SD3 Lab sensitivity report");
    let written = stage_data(
        &mut doc.staged,
        output,
        &crate::quant::sensitivity::report_csv(report),
        &json,
    )?;
    let s = &report.settings;
    doc.table(
        &["", ""],
        &[
            vec!["model".into(), s.model.clone()],
            vec![
                "calibration directory".into(),
                s.calib_dir.display().to_string(),
            ],
            vec!["samples".into(), s.samples.len().to_string()],
            vec!["scope".into(), s.metric_scope.name().into()],
            vec!["bit widths".into(), format!("{:?}", s.bits)],
            vec!["group size".into(), s.group_size.to_string()],
            vec!["layers measured".into(), coverage(report).describe()],
        ],
    );
    let filter = opts.filter.describe();
    if !filter.is_empty() {
        doc.text(&format!(
            "The ranking, the heatmap and the bits plot show only the layers of {filter}."
        ));
    }
    for (stem, fig) in &figs {
        doc.figure(stem, fig)?;
    }
    doc.heading(&format!(
        "Most sensitive layers at {bits} bits ({})",
        opts.bucket
    ));
    let top: Vec<Vec<String>> = ranking(report, bits, opts.bucket, opts.metric, &opts.filter)
        .into_iter()
        .take(opts.top)
        .map(|(name, v)| vec![name, format!("{v:.4}")])
        .collect();
    doc.table(&["layer", opts.metric.label()], &top);
    doc.text(&format!(
        "The data are in {} beside this report.",
        file_names(&written)
    ));
    Ok(doc.finish(output))
}

/// Per-bucket counts as a bar figure (the Samples tab's report).
pub fn bucket_counts_figure(counts: &BTreeMap<Bucket, usize>) -> Figure {
    Figure::Bars {
        title: "samples per step bucket".into(),
        // In step order (early, mid, late), as the buckets are ordered.
        labels: counts.keys().map(|b| b.name().to_owned()).collect(),
        values: counts.values().map(|&v| v as f64).collect(),
        value_label: "samples".into(),
    }
}

/// Standard base64 (for images embedded in HTML reports).
pub fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

/// A report being assembled as HTML or Markdown.
pub(crate) struct Doc {
    pub(crate) html: bool,
    pub(crate) body: String,
    /// Where Markdown's PNGs go (`<stem>_files/`), and the files written.
    pub(crate) files_dir: PathBuf,
    pub(crate) files_rel: String,
    /// Everything the report writes (its figures, thumbnails and data; the document itself
    /// last) and reads.
    pub(crate) staged: Staged,
}

impl Doc {
    pub(crate) fn new(output: &Path, title: &str) -> Self {
        let html = output
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("html") || e.eq_ignore_ascii_case("htm"));
        let stem = output
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "report".into());
        let dir = output.parent().unwrap_or(Path::new("")).to_path_buf();
        let body = if html {
            format!(
                "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{0}</title>\n<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 8px;text-align:left}}figure{{margin:1em 0;display:inline-block}}</style></head><body>\n<h1>{0}</h1>\n",
                html_escape(title)
            )
        } else {
            format!("# {title}\n\n")
        };
        Self {
            html,
            body,
            files_dir: dir.join(format!("{stem}_files")),
            files_rel: format!("{stem}_files"),
            staged: Staged::default(),
        }
    }

    pub(crate) fn heading(&mut self, text: &str) {
        if self.html {
            self.body
                .push_str(&format!("<h2>{}</h2>\n", html_text(text)));
        } else {
            self.body.push_str(&format!("## {text}\n\n"));
        }
    }

    pub(crate) fn table(&mut self, header: &[&str], rows: &[Vec<String>]) {
        if self.html {
            self.body.push_str("<table><tr>");
            for h in header {
                self.body.push_str(&format!("<th>{}</th>", html_escape(h)));
            }
            self.body.push_str("</tr>\n");
            for r in rows {
                self.body.push_str("<tr>");
                for c in r {
                    self.body.push_str(&format!("<td>{}</td>", html_escape(c)));
                }
                self.body.push_str("</tr>\n");
            }
            self.body.push_str("</table>\n");
        } else {
            self.body.push_str(&format!("| {} |\n", header.join(" | ")));
            self.body
                .push_str(&format!("|{}\n", "---|".repeat(header.len())));
            for r in rows {
                self.body.push_str(&format!(
                    "| {} |\n",
                    r.iter()
                        .map(|c| c.replace('|', "\\|"))
                        .collect::<Vec<_>>()
                        .join(" | ")
                ));
            }
            self.body.push('\n');
        }
    }

    pub(crate) fn figure(&mut self, stem: &str, fig: &Figure) -> Result<(), ReportError> {
        if self.html {
            self.body.push_str(&format!(
                "<figure><figcaption>{}</figcaption>\n{}\n</figure>\n",
                html_escape(fig.title()),
                render_svg(fig, (900, 420))?
            ));
        } else {
            let png = self.files_dir.join(format!("{stem}.png"));
            self.staged.add(png, render_png(fig, (900, 420))?);
            self.body.push_str(&format!(
                "![{}]({}/{stem}.png)\n\n",
                fig.title(),
                self.files_rel
            ));
        }
        Ok(())
    }

    /// An image file: embedded (HTML) or copied beside (Markdown).
    fn image(&mut self, path: &Path, caption: &str) -> Result<(), ReportError> {
        let bytes = self.staged.read_input(path)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if self.html {
            self.body.push_str(&format!(
                "<figure><img width=\"192\" src=\"data:image/png;base64,{}\"><figcaption>{}</figcaption></figure>\n",
                base64(&bytes),
                html_escape(caption)
            ));
        } else {
            let dest = self.files_dir.join(&name);
            self.staged.add(dest, bytes);
            self.body.push_str(&format!(
                "![{}]({}/{name}) {}\n\n",
                caption.replace(']', ")"),
                self.files_rel,
                caption
            ));
        }
        Ok(())
    }

    pub(crate) fn text(&mut self, text: &str) {
        if self.html {
            self.body.push_str(&format!("<p>{}</p>\n", html_text(text)));
        } else {
            self.body.push_str(&format!("{text}\n\n"));
        }
    }

    /// The document's files, the document itself last; nothing is written yet.
    pub(crate) fn finish(mut self, output: &Path) -> Staged {
        if self.html {
            self.body.push_str("</body></html>\n");
        }
        self.staged.add(output.to_owned(), self.body.into_bytes());
        self.staged
    }
}

/// "`a.csv` and `b.json`": the file names of `paths`, as a report names the files beside it.
pub(crate) fn file_names(paths: &[PathBuf]) -> String {
    let names: Vec<String> = paths
        .iter()
        .map(|p| {
            format!(
                "`{}`",
                p.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            )
        })
        .collect();
    match names.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
    }
}

/// Bytes as KB/MB/GB (decimal units, as disks are sold and file browsers show them).
pub fn human_bytes(b: u64) -> String {
    if b < 1000 {
        return format!("{b} B");
    }
    let b = b as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else {
        format!("{:.0} KB", b / 1e3)
    }
}

/// Text for HTML: escaped, with `code spans` (as Markdown writes them, which the same texts
/// are in the Markdown report) as `<code>`, and a backtick left without a partner dropped.
pub(crate) fn html_text(s: &str) -> String {
    let escaped = html_escape(s);
    let parts: Vec<&str> = escaped.split('`').collect();
    let mut out = String::with_capacity(escaped.len());
    let paired = parts.len() % 2 == 1;
    for (i, part) in parts.iter().enumerate() {
        // Odd parts sit between two backticks (when every backtick has a partner).
        if i % 2 == 1 && (paired || i + 1 < parts.len()) {
            out.push_str("<code>");
            out.push_str(part);
            out.push_str("</code>");
        } else {
            out.push_str(part);
        }
    }
    out
}

/// How much of the model a sensitivity report covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coverage {
    /// Layers with an entry in the report.
    pub measured: usize,
    /// The quantizable layers of the report's model (its configuration says which).
    pub model_layers: usize,
    /// Measured layers without results: their input width is not a multiple of the group
    /// size, so they cannot be grouped and stay float (not plotted, not ranked).
    pub ungrouped: Vec<String>,
    pub group_size: i32,
}

impl Coverage {
    /// A sweep of every layer has one entry per layer of the model. Fewer: it was cancelled
    /// or failed before the end (or it was restricted by a layer pattern, which the report
    /// does not record).
    pub fn is_complete(&self) -> bool {
        self.measured >= self.model_layers
    }

    /// "32 of 32 (1 cannot be grouped by 64: left float)".
    pub fn describe(&self) -> String {
        let mut text = format!("{} of {}", self.measured, self.model_layers);
        if !self.ungrouped.is_empty() {
            text.push_str(&format!(
                " ({} cannot be grouped by {}: left float)",
                self.ungrouped.len(),
                self.group_size
            ));
        }
        text
    }
}

/// The report's coverage of its model's layers.
pub fn coverage(report: &SensitivityReport) -> Coverage {
    let model = mmdit_layer_ids(report.settings.model_config.depth);
    let names: std::collections::HashSet<String> = model.iter().map(|id| id.name()).collect();
    Coverage {
        measured: report
            .layers
            .iter()
            .filter(|l| names.contains(&l.name))
            .count(),
        model_layers: names.len(),
        ungrouped: report
            .layers
            .iter()
            .filter(|l| l.results.is_empty())
            .map(|l| l.name.clone())
            .collect(),
        group_size: report.settings.group_size,
    }
}

/// What a report named `<stem>.html|md` writes beside itself: the other format's file (so the
/// HTML and Markdown reports of one export share no data file), its figures folder
/// (Markdown) and its data.
const REPORT_FILES: [&str; 5] = [".html", ".md", "_files", "_data.csv", "_data.json"];

/// `dir/<stem>.<ext>`, or `dir/<stem>-2.<ext>`…: the first name none of whose companion files
/// ([`REPORT_FILES`]) exists, so a report never replaces any file of an earlier one. Reads
/// the disk: call it on the thread that writes.
pub fn numbered_report_path(dir: &Path, stem: &str, ext: &str) -> PathBuf {
    dir.join(format!(
        "{}.{ext}",
        crate::fsutil::free_stem(dir, stem, &REPORT_FILES)
    ))
}

/// `<stem>_data.csv` and `<stem>_data.json` beside `output`: where a report's data go.
pub(crate) fn data_paths(output: &Path) -> (PathBuf, PathBuf) {
    let stem = output
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "report".into());
    let dir = output.parent().unwrap_or(Path::new(""));
    (
        dir.join(format!("{stem}_data.csv")),
        dir.join(format!("{stem}_data.json")),
    )
}

/// Stages `<stem>_data.csv` and `<stem>_data.json` beside `output`; returns their paths.
fn stage_data(
    staged: &mut Staged,
    output: &Path,
    csv: &str,
    json: &serde_json::Value,
) -> Result<Vec<PathBuf>, ReportError> {
    let (c, j) = data_paths(output);
    staged.add(c.clone(), csv.as_bytes().to_vec());
    let text = serde_json::to_string_pretty(json)?;
    staged.add(j.clone(), text.into_bytes());
    Ok(vec![c, j])
}

/// Refuses an output that is neither `.html` nor `.md`.
fn check_extension(output: &Path) -> Result<(), ReportError> {
    let ext = output
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase());
    if matches!(ext.as_deref(), Some("html" | "htm" | "md")) {
        Ok(())
    } else {
        Err(ReportError::Extension {
            path: output.to_owned(),
        })
    }
}

/// The Samples tab's report: a calibration folder's summary, per-bucket counts, the timestep
/// schedule, the problems found; the selected samples as CSV/JSON beside it.
pub fn write_samples_report(
    set: &crate::calib::CalibrationSet,
    filter: &crate::calib::SampleFilter,
    output: &Path,
) -> Result<Vec<PathBuf>, ReportError> {
    check_extension(output)?;
    let selected = set.select(filter);
    let listing = crate::calib::listing::Listing::new(set, filter, &selected);
    let mut doc = Doc::new(output, "SD3 Lab calibration samples");
    doc.staged.input(&crate::calib::Manifest::path(set.dir()));
    for m in &selected {
        doc.staged.input(&m.path);
    }
    let s = &listing.summary;
    doc.table(
        &["", ""],
        &[
            vec!["folder".into(), set.dir().display().to_string()],
            vec![
                "images x steps".into(),
                format!("{} x {}", set.num_images(), set.num_steps()),
            ],
            vec![
                "samples selected".into(),
                format!("{} of {}", s.samples, set.samples().len()),
            ],
            vec!["size on disk".into(), human_bytes(s.bytes)],
            vec!["problems".into(), set.problems().len().to_string()],
        ],
    );
    doc.figure("buckets", &bucket_counts_figure(&s.buckets))?;
    let first = selected.first().map(|m| m.image);
    let schedule = Figure::Lines {
        title: "timestep by step".into(),
        x_label: "step".into(),
        y_label: "timestep".into(),
        series: vec![Series {
            name: format!("image {}", first.unwrap_or(0)),
            points: selected
                .iter()
                .filter(|m| Some(m.image) == first)
                .map(|m| (m.step as f64, m.timestep))
                .collect(),
        }],
        markers: Vec::new(),
        integer_x: true,
        log_y: false,
    };
    doc.figure("schedule", &schedule)?;
    doc.heading("Tensors");
    let rows: Vec<Vec<String>> = set
        .reference_tensors()
        .iter()
        .map(|(k, t)| {
            vec![
                k.name().to_owned(),
                format!("{:?}", t.shape),
                format!("{:?}", t.dtype),
            ]
        })
        .collect();
    doc.table(&["array", "shape", "dtype"], &rows);
    if !set.problems().is_empty() {
        doc.heading("Problems");
        let rows: Vec<Vec<String>> = set
            .problems()
            .iter()
            .map(|p| {
                vec![
                    p.file
                        .as_ref()
                        .map_or(String::new(), |f| f.display().to_string()),
                    p.message.clone(),
                ]
            })
            .collect();
        doc.table(&["file", "problem"], &rows);
    }
    let mut csv = String::from("file,image,step,bucket,timestep,sigma,bytes\n");
    for m in &selected {
        csv.push_str(&format!(
            "{},{},{},{},{},{},{}\n",
            m.file,
            m.image,
            m.step,
            m.bucket.name(),
            m.timestep,
            m.sigma,
            m.file_size
        ));
    }
    let json = serde_json::to_value(&listing)?;
    let data = stage_data(&mut doc.staged, output, &csv, &json)?;
    doc.text(&format!(
        "The selected samples are in {} beside this report (the JSON has the schema of the samples listing's JSON export).",
        file_names(&data)
    ));
    doc.finish(output).commit()
}

/// The Generate tab's report: a calibration run's settings (from its manifest) and its images
/// with their prompts; the image list as CSV/JSON beside it.
pub fn write_calibration_report(dir: &Path, output: &Path) -> Result<Vec<PathBuf>, ReportError> {
    use crate::calibrate::GenerationSettings;
    check_extension(output)?;
    let manifest_path = crate::calib::Manifest::path(dir);
    let manifest = crate::calib::Manifest::read(dir)
        .map_err(Box::new)?
        .ok_or_else(|| ReportError::NoManifest {
            path: manifest_path.clone(),
        })?;
    // A manifest without settings (the seed's layout) gets an empty settings table.
    let g = GenerationSettings::from_manifest(&manifest)
        .transpose()
        .map_err(|source| ReportError::Generation {
            path: manifest_path,
            source,
        })?;
    let mut doc = Doc::new(output, "SD3 Lab calibration run");
    doc.staged.input(&crate::calib::Manifest::path(dir));
    let field = |f: fn(&GenerationSettings) -> String| g.as_ref().map_or(String::new(), f);
    doc.table(
        &["", ""],
        &[
            vec!["folder".into(), dir.display().to_string()],
            vec!["model".into(), field(|g| g.model.name.clone())],
            vec![
                "images completed".into(),
                manifest
                    .n_completed
                    .map_or(String::new(), |n| n.to_string()),
            ],
            vec!["steps".into(), field(|g| g.num_steps.to_string())],
            // As the manifest writes it (`7.0`, not `7`).
            vec![
                "CFG weight".into(),
                field(|g| serde_json::to_string(&g.cfg_weight).unwrap_or_default()),
            ],
            vec![
                "size".into(),
                format!(
                    "{} x {}",
                    field(|g| g.width.to_string()),
                    field(|g| g.height.to_string())
                ),
            ],
            vec!["dtype".into(), field(|g| g.dtype.name().into())],
            vec!["seed".into(), field(|g| g.seed.to_string())],
            vec!["prompts".into(), field(|g| g.prompt_source.clone())],
            vec![
                "tool".into(),
                format!(
                    "{} {}",
                    field(|g| g.tool.clone()),
                    field(|g| g.tool_version.clone())
                ),
            ],
        ],
    );
    doc.heading("Images");
    let (prompts, seeds) = g.map_or((Vec::new(), Vec::new()), |g| (g.prompts, g.seeds));
    let mut csv = String::from("image,file,seed,prompt\n");
    let mut rows = Vec::new();
    for (i, prompt) in prompts.iter().enumerate() {
        let rel = crate::calibrate::image_file_name(i);
        let path = dir.join(&rel);
        if path.is_file() {
            doc.image(&path, &format!("#{i} {prompt}"))?;
        }
        let seed = seeds.get(i).copied().unwrap_or(0);
        csv.push_str(&format!(
            "{i},{rel},{seed},\"{}\"\n",
            prompt.replace('"', "\"\"")
        ));
        rows.push(serde_json::json!({"image": i, "file": rel, "seed": seed, "prompt": prompt}));
    }
    stage_data(
        &mut doc.staged,
        output,
        &csv,
        &serde_json::json!({"manifest": manifest, "images": rows}),
    )?;
    doc.finish(output).commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_calibration_report_shows_the_recorded_settings_as_the_manifest_writes_them() {
        use crate::calibrate::{GenerationSettings, ModelIdentity};
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("calib");
        std::fs::create_dir_all(&dir).unwrap();
        let settings = GenerationSettings {
            tool: "sd3lab".into(),
            tool_version: "1.2".into(),
            model: ModelIdentity {
                name: "tiny".into(),
                config: crate::model::Preset::Tiny.config(None),
                checkpoint_bytes: 1,
            },
            num_steps: 3,
            cfg_weight: 7.0,
            height: 64,
            width: 32,
            dtype: crate::model::config::ModelDtype::Float16,
            negative_prompt: String::new(),
            seed: 5,
            prompt_source: "prompts.csv".into(),
            images_only: false,
            prompts: vec!["a \"cat\"".into(), "a dog".into()],
            seeds: vec![5, 6],
        };
        let mut manifest = crate::calib::Manifest {
            n_completed: Some(2),
            ..Default::default()
        };
        settings.record_in(&mut manifest).unwrap();
        manifest.write(&dir).unwrap();
        let out = root.path().join("calibration.md");
        write_calibration_report(&dir, &out).unwrap();
        let md = std::fs::read_to_string(&out).unwrap();
        for row in [
            "| model | tiny |",
            "| images completed | 2 |",
            "| steps | 3 |",
            "| CFG weight | 7.0 |",
            "| size | 32 x 64 |",
            "| dtype | float16 |",
            "| seed | 5 |",
            "| prompts | prompts.csv |",
            "| tool | sd3lab 1.2 |",
        ] {
            assert!(md.contains(row), "{row} missing from\n{md}");
        }
        let csv = std::fs::read_to_string(root.path().join("calibration_data.csv")).unwrap();
        assert_eq!(
            csv,
            "image,file,seed,prompt\n0,images/000000.png,5,\"a \"\"cat\"\"\"\n1,images/000001.png,6,\"a dog\"\n"
        );

        // Settings that are not settings are refused, naming the file.
        manifest
            .extra
            .insert("generation".into(), serde_json::json!({"seed": "x"}));
        manifest.write(&dir).unwrap();
        let err = write_calibration_report(&dir, &out)
            .unwrap_err()
            .to_string();
        assert!(err.contains("manifest.json"), "{err}");
    }

    fn lines() -> Figure {
        Figure::Lines {
            title: "SQNR vs bits".into(),
            x_label: "bits".into(),
            y_label: "dB".into(),
            series: vec![
                Series {
                    name: "0.image.mlp.fc1".into(),
                    points: vec![(2.0, 5.0), (4.0, 17.0), (8.0, 40.0)],
                },
                Series {
                    name: "1.text.attn.q_proj".into(),
                    points: vec![(2.0, 9.0), (4.0, 21.0), (8.0, 45.0)],
                },
            ],
            markers: vec![("plan".into(), (4.0, 19.0))],
            integer_x: true,
            log_y: false,
        }
    }

    #[test]
    fn svg_holds_titles_series_and_is_deterministic() {
        let svg = render_svg(&lines(), (640, 400)).unwrap();
        for text in [
            "SQNR vs bits",
            "0.image.mlp.fc1",
            "1.text.attn.q_proj",
            "plan",
            "bits",
        ] {
            assert!(svg.contains(text), "{text} missing");
        }
        assert!(svg.contains("<polyline") || svg.contains("<path"));
        assert_eq!(svg, render_svg(&lines(), (640, 400)).unwrap());
    }

    #[test]
    fn png_draws_the_series_colours() {
        let png = render_png(&lines(), (640, 400)).unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(&png));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (640, 400));
        let count = |c: (u8, u8, u8)| buf.chunks(3).filter(|p| (p[0], p[1], p[2]) == c).count();
        assert!(count(palette(0)) > 50 && count(palette(1)) > 50);
        // Text was rasterised with the embedded font: dark pixels beyond the axes' lines.
        assert!(
            buf.chunks(3)
                .filter(|p| p[0] < 80 && p[1] < 80 && p[2] < 80)
                .count()
                > 500
        );
    }

    #[test]
    fn heatmap_has_a_colour_bar_and_bits_axes_whole_ticks() {
        let texts = |svg: &str| -> Vec<String> {
            svg.split("</text>")
                .filter_map(|p| p.rsplit_once('>').map(|(_, t)| t.trim().to_owned()))
                .collect()
        };
        let heat = Figure::Heatmap {
            title: "layer x bucket".into(),
            rows: vec!["a".into(), "b".into()],
            cols: vec!["early".into(), "late".into()],
            values: vec![vec![10.0, 20.0], vec![30.0, f64::NAN]],
            value_label: "SQNR (dB)".into(),
        };
        let t = texts(&render_svg(&heat, (640, 400)).unwrap());
        assert!(
            t.contains(&"SQNR (dB)".to_owned()),
            "the colour bar's unit: {t:?}"
        );
        assert!(
            t.contains(&"20".to_owned()),
            "the colour bar's ticks: {t:?}"
        );
        let t = texts(&render_svg(&lines(), (640, 400)).unwrap());
        for tick in ["2", "3", "4", "8"] {
            assert!(t.contains(&tick.to_owned()), "{tick} missing: {t:?}");
        }
        assert!(!t.iter().any(|s| s == "2.0" || s == "2.5"), "{t:?}");
        assert_eq!(bar_label(0.15, 0.0, 0.2), "0.15");
        assert_eq!(bar_label(35.0, 8.0, 40.0), "35");
        assert_eq!(bar_label(2e-5, 0.0, 4e-5), "2.0e-5");
    }

    #[test]
    fn a_report_without_bit_widths_is_refused_rather_than_shown_at_an_invented_width() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sensitivity-tiny.json");
        let mut report: SensitivityReport =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("report.md");
        let opts = SensitivityReportOptions::default();
        assert_eq!(opts.shown_bits(&report).unwrap(), 2);
        report.settings.bits.clear();
        assert!(matches!(
            write_sensitivity_report(&report, &out, &opts),
            Err(ReportError::NoBitWidths)
        ));
        assert!(!out.exists());
        // A chosen width must be one the run measured (an unmeasured one used to panic halfway
        // through writing the report): refused, and nothing written.
        report.settings.bits = vec![2, 4];
        let opts = SensitivityReportOptions {
            bits: Some(4),
            ..opts
        };
        assert_eq!(opts.shown_bits(&report).unwrap(), 4);
        let opts = SensitivityReportOptions {
            bits: Some(8),
            ..opts
        };
        let e = write_sensitivity_report(&report, &out, &opts).unwrap_err();
        assert!(
            matches!(&e, ReportError::NoSuchBits { bits: 8, available } if available == &[2, 4]),
            "{e:?}"
        );
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
    }

    #[test]
    fn an_empty_heatmap_renders_instead_of_panicking() {
        let heat = Figure::Heatmap {
            title: "nothing to show".into(),
            rows: Vec::new(),
            cols: Vec::new(),
            values: Vec::new(),
            value_label: "dB".into(),
        };
        assert!(
            render_svg(&heat, (640, 400))
                .unwrap()
                .contains("nothing to show")
        );
        assert!(!render_png(&heat, (640, 400)).unwrap().is_empty());
    }

    #[test]
    fn short_names() {
        let labels = LayerLabels::new(&MmditConfig::sd3_medium());
        assert_eq!(
            labels.get("multimodal_transformer_blocks.3.image_transformer_block.attn.q_proj"),
            "3.image.attn.q_proj"
        );
        assert_eq!(
            labels.get(
                "multimodal_transformer_blocks.12.text_transformer_block.adaLN_modulation.layers.1"
            ),
            "12.text.adaLN"
        );
        assert_eq!(labels.get("t_embedder.mlp.layers.0"), "t_embedder.0");
        // Not a layer of this model: shown in full.
        for foreign in [
            "multimodal_transformer_blocks.24.image_transformer_block.attn.q_proj",
            "some.other.layer",
        ] {
            assert_eq!(labels.get(foreign), foreign);
        }
    }

    #[test]
    fn bucket_counts_are_plotted_in_step_order() {
        let counts: BTreeMap<Bucket, usize> =
            [(Bucket::Late, 3), (Bucket::Early, 1), (Bucket::Mid, 2)]
                .into_iter()
                .collect();
        let Figure::Bars { labels, values, .. } = bucket_counts_figure(&counts) else {
            panic!("a bar chart");
        };
        assert_eq!(labels, ["early", "mid", "late"]);
        assert_eq!(values, [1.0, 2.0, 3.0]);
    }

    /// The short names of the report's layers.
    fn labels_of(report: &SensitivityReport) -> Vec<String> {
        let labels = LayerLabels::new(&report.settings.model_config);
        ranking(
            report,
            2,
            Bucket::All,
            Metric::Sqnr,
            &LayerFilter::default(),
        )
        .iter()
        .map(|r| labels.get(&r.0))
        .collect()
    }

    fn fixture_report() -> SensitivityReport {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sensitivity-tiny.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    /// The lowest inked row of `text` rendered alone at `size` at a fixed position (top = 0).
    fn text_bottom(text: &str, size: u32) -> u32 {
        register_font();
        let (w, h) = (60u32, 60u32);
        let mut buf = vec![255u8; (w * h * 3) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
            let style = TextStyle::from((FONT, size).into_font()).color(&BLACK);
            root.draw_text(text, &style, (5, 10)).unwrap();
        }
        (0..h)
            .filter(|&y| (0..w).any(|x| buf[((y * w + x) * 3) as usize] < 200))
            .max()
            .unwrap()
    }

    #[test]
    fn decimal_points_sit_on_the_digits_baseline_at_every_text_size() {
        // '1' and '.' both end on the baseline (round glyphs would overshoot it).
        for size in [TITLE_SIZE, DESC_SIZE, TICK_SIZE, SMALL_SIZE] {
            assert_eq!(
                text_bottom(".", size),
                text_bottom("1", size),
                "the '.' at size {size}"
            );
        }
        // The cause: at an odd size plotters rounds the two apart.
        assert_ne!(text_bottom(".", 13), text_bottom("1", 13));
    }

    #[test]
    fn the_legend_goes_where_there_is_no_data() {
        // SQNR rises with bits: the 8-bit points are top right, the bottom right is empty.
        let rising = vec![Series {
            name: "a".into(),
            points: vec![(2.0, 5.0), (4.0, 20.0), (8.0, 60.0)],
        }];
        assert_eq!(
            legend_corner(&rising, &[], (0.4, 0.45)),
            Some(Corner::RightBottom)
        );
        // MSE falls with bits: the bottom right holds the 8-bit points.
        let falling = vec![Series {
            name: "a".into(),
            points: vec![(2.0, 60.0), (4.0, 20.0), (8.0, 1.0)],
        }];
        assert_eq!(
            legend_corner(&falling, &[], (0.4, 0.45)),
            Some(Corner::RightTop)
        );
        let report = fixture_report();
        // The app's default plot: the ten most sensitive layers at 2 bits.
        let layers: Vec<String> = ranking(
            &report,
            2,
            Bucket::All,
            Metric::Sqnr,
            &LayerFilter::default(),
        )
        .into_iter()
        .take(10)
        .map(|r| r.0)
        .collect();
        let Figure::Lines { series, log_y, .. } =
            bits_figure(&report, &layers, Bucket::All, Metric::Sqnr)
        else {
            panic!("lines")
        };
        let plotted = plotted_series(&series, log_y);
        // A tall legend (ten entries over most of the height) covers data in every corner,
        // the 8-bit points on the right among them: it goes outside the plot.
        let tall = legend_fraction(10, 18, (7.5, 18.0, 40.0), (700.0, 270.0));
        assert_eq!(legend_corner(&plotted, &[], tall), None);
        // A short one fits a corner free of data.
        let short = legend_fraction(2, 18, (7.5, 18.0, 40.0), (700.0, 270.0));
        let corner = legend_corner(&plotted[..2], &[], short);
        assert!(corner.is_some(), "{short:?}");
        // The export draws that legend outside: its names right of the plot's last tick.
        let svg = render_svg(
            &bits_figure(&report, &layers, Bucket::All, Metric::Sqnr),
            (900, 520),
        )
        .unwrap();
        assert!(svg.contains(&labels_of(&report)[0]));
        assert_eq!(
            legend_fraction(10, 20, (8.0, 18.0, 40.0), (800.0, 420.0)),
            (0.25, 0.5)
        );
    }

    #[test]
    fn mse_is_plotted_on_a_log_scale() {
        let report = fixture_report();
        let layers: Vec<String> = report.layers.iter().map(|l| l.name.clone()).collect();
        let Figure::Lines { series, log_y, .. } =
            bits_figure(&report, &layers[1..3], Bucket::All, Metric::Mse)
        else {
            panic!("lines")
        };
        assert!(log_y);
        let plotted = plotted_series(&series, log_y);
        let (raw, drawn) = (series[0].points[0].1, plotted[0].points[0].1);
        assert!(
            (drawn - raw.log10()).abs() < 1e-12,
            "{raw} drawn at {drawn}"
        );
        assert_eq!(plotted_y(0.0, true), None);
        assert_eq!(plotted_y(-3.0, false), Some(-3.0));
        assert_eq!(log_tick_label(-4.0), "1e-4");
        let Figure::Lines { log_y, .. } =
            bits_figure(&report, &layers[1..3], Bucket::All, Metric::Sqnr)
        else {
            panic!("lines")
        };
        assert!(!log_y, "SQNR is in dB already");
        // The SVG's y ticks are values, not their logarithms.
        let svg = render_svg(
            &bits_figure(&report, &layers[1..3], Bucket::All, Metric::Mse),
            (640, 400),
        )
        .unwrap();
        assert!(svg.contains("e-"), "scientific tick labels");
    }

    #[test]
    fn the_pareto_front_is_drawn_as_steps_never_diagonals() {
        let points = [(2.5, 10.0), (3.0, 20.0), (3.0, 25.0), (4.0, 30.0)];
        let steps = staircase(&points);
        assert_eq!(
            steps,
            [
                (2.5, 10.0),
                (3.0, 10.0),
                (3.0, 20.0),
                (3.0, 25.0),
                (4.0, 25.0),
                (4.0, 30.0)
            ]
        );
        for w in steps.windows(2) {
            assert!(w[0].0 == w[1].0 || w[0].1 == w[1].1, "diagonal {w:?}");
        }
        let report = fixture_report();
        let built = build_plan(&report, 4.5, &[], Objective::Sqnr).unwrap();
        let Figure::Lines { series, .. } = pareto_figure(&built, Objective::Sqnr) else {
            panic!("lines")
        };
        for w in series[0].points.windows(2) {
            assert!(w[0].0 == w[1].0 || w[0].1 == w[1].1, "diagonal {w:?}");
        }
    }

    #[test]
    fn the_html_report_names_only_files_that_exist_and_has_no_backticks() {
        let report = fixture_report();
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("sens-report.html");
        let written = write_sensitivity_report(
            &report,
            &out,
            &SensitivityReportOptions {
                plan_target_bits: Some(4.5),
                ..Default::default()
            },
        )
        .unwrap();
        let html = std::fs::read_to_string(&out).unwrap();
        assert!(!html.contains('`'), "raw backticks");
        // Every data file named in the text exists beside the report.
        let named: Vec<&str> = html
            .split("<code>")
            .skip(1)
            .filter_map(|p| p.split_once("</code>").map(|(n, _)| n))
            .collect();
        assert_eq!(named, ["sens-report_data.csv", "sens-report_data.json"]);
        for n in named {
            assert!(root.path().join(n).is_file(), "{n}");
            assert!(written.contains(&root.path().join(n)));
        }
        assert!(!html.contains(" _data"), "a name without its stem");
        assert!(html.contains("<td>32 of 32 (1 cannot be grouped by 64: left float)</td>"));
        assert_eq!(html_text("run `x` and `y"), "run <code>x</code> and y");
    }

    #[test]
    fn byte_counts_are_formatted() {
        assert_eq!(human_bytes(1_234), "1 KB");
        assert_eq!(human_bytes(5_600_000), "5.6 MB");
        assert_eq!(human_bytes(2_500_000_000), "2.50 GB");
        assert_eq!(human_bytes(312), "312 B");
    }

    #[test]
    fn a_numbered_report_shares_no_file_with_an_earlier_one() {
        let dir = tempfile::tempdir().unwrap();
        let html = numbered_report_path(dir.path(), "r", "html");
        assert_eq!(html, dir.path().join("r.html"));
        std::fs::write(&html, "").unwrap();
        std::fs::write(dir.path().join("r_data.csv"), "").unwrap();
        // The Markdown report of the same export would write r_data.csv too: it is numbered.
        assert_eq!(
            numbered_report_path(dir.path(), "r", "md"),
            dir.path().join("r-2.md")
        );
    }

    #[test]
    fn coverage_says_how_much_of_the_model_a_report_measured() {
        let mut report = fixture_report();
        let full = coverage(&report);
        assert!(full.is_complete());
        assert_eq!(full.ungrouped, ["y_embedder.mlp.layers.0"]);
        report.layers.truncate(10);
        let partial = coverage(&report);
        assert!(!partial.is_complete());
        assert_eq!((partial.measured, partial.model_layers), (10, 32));
    }

    #[test]
    fn base64_matches_the_rfc_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected);
        }
    }
}
