//! `sd3lab samples`: a calibration folder's samples and summary.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use sd3lab::calib::listing::{Listing, ProblemEntry};
use sd3lab::calib::{Bucket, CalibrationSet, OpenOptions, SampleFilter, SampleMeta};

#[derive(Args)]
pub struct SamplesArgs {
    /// Calibration directory.
    #[arg(long, default_value = "calibration_data")]
    calib_dir: PathBuf,
    #[command(flatten)]
    filter: SampleFilterArgs,
    /// Print one JSON document (schema `sd3lab.samples/1`, see docs/FORMATS.md).
    #[arg(long)]
    json: bool,
    /// Fail on the first bad file instead of skipping it.
    #[arg(long)]
    strict: bool,
    /// Also read every tensor of the selected samples and report those holding NaN or infinity
    /// (reads whole files: slow on a large set).
    #[arg(long)]
    check_values: bool,
}

impl SamplesArgs {
    fn to_config(&self) -> (OpenOptions, SampleFilter) {
        let options = OpenOptions {
            strict: self.strict,
            ..OpenOptions::default()
        };
        (options, self.filter.to_filter())
    }
}

/// `sd3lab samples`: the table (or `sd3lab.samples/1` JSON) and a summary; problems on stderr.
pub fn run(args: &SamplesArgs) -> anyhow::Result<ExitCode> {
    let (options, filter) = args.to_config();
    // The error names files: escaped like everything else this command prints.
    let set = CalibrationSet::open(&args.calib_dir, &options)
        .map_err(|e| anyhow::anyhow!("{}", terminal_safe(&e.to_string())))?;
    let selected = set.select(&filter);
    let mut listing = Listing::new(&set, &filter, &selected);
    let value_problems = if args.check_values {
        set.check_values(&selected, &mut |_| {})
    } else {
        Vec::new()
    };
    if args.strict && !value_problems.is_empty() {
        anyhow::bail!(
            "{} problem(s) in {} (strict mode); first: {}",
            value_problems.len(),
            terminal_safe(&set.dir().display().to_string()),
            terminal_safe(&value_problems[0].to_string())
        );
    }
    listing
        .problems
        .extend(value_problems.iter().map(|p| ProblemEntry {
            file: p.file.clone(),
            message: p.to_string(),
        }));
    if args.json {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        serde_json::to_writer(&mut out, &listing)?;
        writeln!(out)?;
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    print_table(&set, &listing, &selected)?;
    for p in set.problems().iter().chain(&value_problems) {
        eprintln!("problem: {}", terminal_safe(&p.to_string()));
    }
    Ok(ExitCode::SUCCESS)
}

/// `text` with its control characters (escape sequences, bells, carriage returns from file
/// names) written as `\u{1b}`-style escapes: a file name cannot drive the terminal.
fn terminal_safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The selected samples, one a line, then the folder's and the selection's summary.
fn print_table(
    set: &CalibrationSet,
    listing: &Listing,
    selected: &[&SampleMeta],
) -> std::io::Result<()> {
    let summary = &listing.summary;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:>6} {:>5} {:<6} {:>10} {:>10}  file",
        "image", "step", "bucket", "timestep", "sigma"
    )?;
    for s in selected {
        writeln!(
            out,
            "{:>6} {:>5} {:<6} {:>10.4} {:>10.6}  {}",
            s.image,
            s.step,
            s.bucket,
            s.timestep,
            s.sigma,
            terminal_safe(&s.file)
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "directory   {}",
        terminal_safe(&set.dir().display().to_string())
    )?;
    let manifest = match set.manifest() {
        Some(m) => {
            let show = |v: Option<u64>| v.map_or("absent".to_owned(), |n| n.to_string());
            format!(
                "manifest.json (n_completed {}, num_steps {})",
                show(m.n_completed),
                show(m.num_steps)
            )
        }
        None => "no manifest.json (steps and images inferred from the files)".to_owned(),
    };
    writeln!(out, "manifest    {manifest}")?;
    writeln!(
        out,
        "set         {} images × {} steps, {} samples",
        set.num_images(),
        set.num_steps(),
        set.samples().len()
    )?;
    for (key, t) in set.reference_tensors() {
        writeln!(out, "  {:<20} {:?} {}", key.name(), t.shape, t.dtype)?;
    }
    let buckets: Vec<String> = summary
        .buckets
        .iter()
        .map(|(b, n)| format!("{b} {n}"))
        .collect();
    writeln!(
        out,
        "selected    {} samples of {} images ({}), {:.1} MB",
        summary.samples,
        summary.images,
        buckets.join(", "),
        summary.bytes as f64 / 1e6
    )?;
    writeln!(out, "problems    {}", listing.problems.len())
}

/// Which samples of a calibration folder (`samples`, `report samples`).
#[derive(Args)]
pub(super) struct SampleFilterArgs {
    /// Only the first N images.
    #[arg(long)]
    max_images: Option<usize>,
    /// Every k-th step of each image, starting at step 0.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    step_stride: Option<u64>,
    /// Only samples of this step bucket (early, mid, late, all).
    #[arg(long)]
    bucket: Option<Bucket>,
}

impl SampleFilterArgs {
    pub(super) fn to_filter(&self) -> SampleFilter {
        SampleFilter {
            max_images: self.max_images,
            step_stride: self.step_stride.map(|k| k as usize),
            bucket: self.bucket,
        }
    }
}
