//! `sd3lab samples`: a calibration folder's samples and summary.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use sd3lab::calib::listing::Listing;
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
    let set = CalibrationSet::open(&args.calib_dir, &options)?;
    let selected = set.select(&filter);
    let listing = Listing::new(&set, &filter, &selected);
    if args.json {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        serde_json::to_writer(&mut out, &listing)?;
        writeln!(out)?;
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    print_table(&set, &listing, &selected)?;
    for p in set.problems() {
        eprintln!("problem: {p}");
    }
    Ok(ExitCode::SUCCESS)
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
            s.image, s.step, s.bucket, s.timestep, s.sigma, s.file
        )?;
    }
    writeln!(out)?;
    writeln!(out, "directory   {}", set.dir().display())?;
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
    writeln!(out, "problems    {}", set.problems().len())
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
