//! [`CalibrationSet`]: one calibration directory, indexed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::CalibError;
use super::manifest::{MAX_NUM_STEPS, Manifest};
use super::npy::NpyArray;
use super::npz::{DEFAULT_MAX_ARRAY_BYTES, NpzReader};
use super::sample::{Bucket, SampleFileInfo, SampleKey, TensorInfo, read_sample_info};
use crate::fsutil::{DataRoot, PathError};

/// How to open a directory.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Fail on the first problem instead of skipping bad files.
    pub strict: bool,
    /// Threads reading file metadata (0: one per available core).
    pub threads: usize,
    /// Largest array (bytes) a member may hold.
    pub max_array_bytes: u64,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            strict: false,
            threads: 0,
            max_array_bytes: DEFAULT_MAX_ARRAY_BYTES,
        }
    }
}

/// A problem found while indexing: the file it concerns (if any) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub file: Option<PathBuf>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.file {
            // Errors from the readers already start with the path.
            Some(p) if !self.message.starts_with(&p.display().to_string()) => {
                write!(f, "{}: {}", p.display(), self.message)
            }
            _ => f.write_str(&self.message),
        }
    }
}

/// One usable sample of the set.
#[derive(Debug, Clone, Serialize)]
pub struct SampleMeta {
    /// Path relative to the calibration directory.
    pub file: String,
    #[serde(skip)]
    pub path: PathBuf,
    pub image: usize,
    pub step: usize,
    pub bucket: Bucket,
    pub timestep: f64,
    pub sigma: f64,
    pub file_size: u64,
    pub tensors: BTreeMap<SampleKey, TensorInfo>,
}

/// Which samples to use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SampleFilter {
    /// Only the first N images.
    pub max_images: Option<usize>,
    /// Every k-th step of each image, starting at step 0 (1 or `None`: all).
    pub step_stride: Option<usize>,
    pub bucket: Option<Bucket>,
}

impl SampleFilter {
    pub fn accepts(&self, s: &SampleMeta) -> bool {
        self.max_images.is_none_or(|n| s.image < n)
            && self
                .step_stride
                .is_none_or(|k| s.step.is_multiple_of(k.max(1)))
            && self.bucket.is_none_or(|b| b.contains(s.bucket))
    }
}

/// Counts over a selection of samples.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub samples: usize,
    pub images: usize,
    pub buckets: BTreeMap<Bucket, usize>,
    pub bytes: u64,
}

/// An indexed calibration directory. Holds metadata only; tensors load on demand.
#[derive(Debug, Clone)]
pub struct CalibrationSet {
    dir: PathBuf,
    manifest: Option<Manifest>,
    num_steps: usize,
    num_images: usize,
    samples: Vec<SampleMeta>,
    /// The shape and dtype every sample agrees on, per array.
    reference: BTreeMap<SampleKey, TensorInfo>,
    problems: Vec<Problem>,
    max_array_bytes: u64,
}

impl CalibrationSet {
    /// Indexes `dir`: resolves the sample files, reads their metadata (in parallel), assigns
    /// images and steps, and checks everything against the manifest and each other.
    pub fn open(dir: &Path, options: &OpenOptions) -> Result<Self, CalibError> {
        if !dir.is_dir() {
            return Err(CalibError::NotADirectory {
                path: dir.to_owned(),
            });
        }
        let manifest = Manifest::read(dir)?;
        let mut problems = Vec::new();
        let files = resolve_files(dir, manifest.as_ref(), &mut problems)?;
        if files.is_empty() && problems.is_empty() {
            return Err(CalibError::NoSamples {
                path: dir.to_owned(),
            });
        }
        let infos = read_all(&files, options);

        let mut good: Vec<(String, SampleFileInfo)> = Vec::with_capacity(infos.len());
        for ((rel, path), info) in files.into_iter().zip(infos) {
            match info {
                Ok(info) => good.push((rel, info)),
                Err(e) => problems.push(Problem {
                    file: Some(path),
                    message: e.to_string(),
                }),
            }
        }
        let reference = reference_tensors(&good);
        good.retain(|(_, info)| {
            let mismatch = SampleKey::ALL.into_iter().find_map(|key| {
                let (t, r) = (&info.tensors[&key], &reference[&key]);
                (t.shape != r.shape).then(|| {
                    format!(
                        "'{key}' has shape {:?}, the other samples {:?}",
                        t.shape, r.shape
                    )
                })
            });
            if let Some(message) = &mismatch {
                problems.push(Problem {
                    file: Some(info.path.clone()),
                    message: message.clone(),
                });
            }
            mismatch.is_none()
        });

        // A step count past any run's is a damaged manifest: it would put every step in the
        // early bucket. Said, and the count is inferred from the files instead.
        let manifest_steps = match manifest.as_ref().and_then(|m| m.num_steps) {
            Some(n) if n > MAX_NUM_STEPS as u64 || n == 0 => {
                problems.push(Problem {
                    file: Some(Manifest::path(dir)),
                    message: format!(
                        "num_steps = {n} is not a step count (a run takes 1 to {MAX_NUM_STEPS} \
                         steps); the step count is inferred from the files"
                    ),
                });
                None
            }
            n => n.map(|n| n as usize),
        };
        good.retain(|(_, info)| {
            let bad = if info.step_index < 0 {
                Some(format!("step_index {} is negative", info.step_index))
            } else {
                manifest_steps
                    .filter(|&n| info.step_index as usize >= n)
                    .map(|n| {
                        format!(
                            "step_index {} is out of range: the manifest says num_steps = {n}",
                            info.step_index
                        )
                    })
            };
            if let Some(message) = &bad {
                problems.push(Problem {
                    file: Some(info.path.clone()),
                    message: message.clone(),
                });
            }
            bad.is_none()
        });
        let num_steps = manifest_steps.unwrap_or_else(|| {
            good.iter()
                .map(|(_, i)| i.step_index as usize + 1)
                .max()
                .unwrap_or(0)
        });
        // Without a manifest the step count and the images are guesses from the files: a run
        // killed during its first image (before runs wrote their manifest first) leaves step
        // files that look like a complete set with fewer steps, and the buckets come out wrong.
        if manifest.is_none() && !good.is_empty() {
            problems.push(Problem {
                file: Some(Manifest::path(dir)),
                message: format!(
                    "missing: the sample files have no manifest from the run that wrote them, \
                     so the step count ({num_steps}) and the images are inferred from the files \
                     and may be wrong (an interrupted run leaves such files)"
                ),
            });
        }

        // Image-major order: a new image starts where step_index does not increase.
        let mut samples = Vec::with_capacity(good.len());
        let mut image = 0usize;
        let mut last_step: Option<usize> = None;
        for (rel, info) in good {
            let step = info.step_index as usize;
            if last_step.is_some_and(|l| step <= l) {
                image += 1;
            }
            last_step = Some(step);
            samples.push(SampleMeta {
                file: rel,
                path: info.path,
                image,
                step,
                bucket: Bucket::of(step, num_steps),
                timestep: info.timestep,
                sigma: info.sigma,
                file_size: info.file_size,
                tensors: info.tensors,
            });
        }
        let mut num_images = if samples.is_empty() { 0 } else { image + 1 };
        check_against_manifest(
            manifest.as_ref(),
            num_steps,
            &mut samples,
            &mut num_images,
            &mut problems,
        );

        if options.strict && !problems.is_empty() {
            return Err(CalibError::Strict {
                dir: dir.to_owned(),
                count: problems.len(),
                first: problems[0].to_string(),
            });
        }
        Ok(Self {
            dir: dir.to_owned(),
            manifest,
            num_steps,
            num_images,
            samples,
            reference,
            problems,
            max_array_bytes: options.max_array_bytes,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> Option<&Manifest> {
        self.manifest.as_ref()
    }

    pub fn num_steps(&self) -> usize {
        self.num_steps
    }

    pub fn num_images(&self) -> usize {
        self.num_images
    }

    /// Every usable sample, image-major.
    pub fn samples(&self) -> &[SampleMeta] {
        &self.samples
    }

    /// The shape and dtype of each array that the samples share.
    pub fn reference_tensors(&self) -> &BTreeMap<SampleKey, TensorInfo> {
        &self.reference
    }

    /// Problems found while indexing (bad files are skipped unless strict).
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// The samples `filter` accepts, image-major.
    pub fn select(&self, filter: &SampleFilter) -> Vec<&SampleMeta> {
        self.samples.iter().filter(|s| filter.accepts(s)).collect()
    }

    /// Counts over `samples`.
    pub fn summarize(samples: &[&SampleMeta]) -> Summary {
        let mut buckets: BTreeMap<Bucket, usize> = Bucket::STEPS.iter().map(|b| (*b, 0)).collect();
        for s in samples {
            *buckets.entry(s.bucket).or_default() += 1;
        }
        let mut images: Vec<usize> = samples.iter().map(|s| s.image).collect();
        images.dedup();
        Summary {
            samples: samples.len(),
            images: images.len(),
            buckets,
            bytes: samples.iter().map(|s| s.file_size).sum(),
        }
    }

    /// Loads one array of a sample from disk.
    pub fn load(&self, sample: &SampleMeta, key: SampleKey) -> Result<NpyArray, CalibError> {
        let mut npz = NpzReader::open(&sample.path)?.with_max_array_bytes(self.max_array_bytes);
        Ok(npz.read(&sample.tensors[&key].member)?)
    }

    /// Reads every tensor of `samples` and reports each one holding NaN or infinity (file and
    /// key), and each that cannot be read. Reads whole files: slow on a large set, so opt-in
    /// (`sd3lab samples --check-values`); `on_sample` sees each sample as it is done.
    pub fn check_values(
        &self,
        samples: &[&SampleMeta],
        on_sample: &mut dyn FnMut(usize),
    ) -> Vec<Problem> {
        let mut problems = Vec::new();
        for (i, sample) in samples.iter().enumerate() {
            for key in SampleKey::ALL {
                let problem = match self.load(sample, key) {
                    Ok(array) => non_finite(&array.data).map(|(count, first)| {
                        format!(
                            "'{}' holds {count} non-finite value(s) of {} (NaN or infinity; the \
                             first at element {first})",
                            sample.tensors[&key].member,
                            array.data.len()
                        )
                    }),
                    Err(e) => Some(e.to_string()),
                };
                if let Some(message) = problem {
                    problems.push(Problem {
                        file: Some(sample.path.clone()),
                        message,
                    });
                }
            }
            on_sample(i + 1);
        }
        problems
    }

    /// The final image of `image`, if the generator wrote it (`images/NNNNNN.png` or
    /// `images/image_N.png`).
    pub fn image_png(&self, image: usize) -> Option<PathBuf> {
        let dir = self.dir.join("images");
        [
            format!("{image:06}.png"),
            format!("{image:05}.png"),
            format!("image_{image}.png"),
            format!("{image}.png"),
        ]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
    }
}

/// A problem's message for a file or folder skipped because it leaves the data folder (the
/// problem names the file already).
fn skipped_link(e: &PathError) -> String {
    match e {
        PathError::LeavesThroughLink { target, .. } => format!(
            "leaves the data folder through a symbolic link (to {}); skipped",
            target.display()
        ),
        other => format!("{other}; skipped"),
    }
}

/// The sample files of `dir`: the manifest's `sample_files`, else `samples/*.npz`, else `*.npz`.
fn resolve_files(
    dir: &Path,
    manifest: Option<&Manifest>,
    problems: &mut Vec<Problem>,
) -> Result<Vec<(String, PathBuf)>, CalibError> {
    let root = DataRoot::new(dir);
    if let Some(list) = manifest.and_then(|m| m.sample_files.as_ref()) {
        let manifest_path = Manifest::path(dir);
        unlisted_files(dir, list, problems);
        let mut files = Vec::with_capacity(list.len());
        for rel in list {
            match root.resolve(rel) {
                Ok(path) if path.is_file() => files.push((rel.clone(), path)),
                Ok(path) => problems.push(Problem {
                    file: Some(path),
                    message: "listed in manifest.json sample_files but missing".into(),
                }),
                Err(reason) => problems.push(Problem {
                    file: Some(manifest_path.clone()),
                    message: format!("sample_files entry refused: {reason}"),
                }),
            }
        }
        return Ok(files);
    }
    let mut list_npz = |sub: &Path| -> Result<Vec<(String, PathBuf)>, CalibError> {
        let read = match std::fs::read_dir(sub) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(CalibError::Io {
                    path: sub.to_owned(),
                    source,
                });
            }
        };
        if let Err(e) = root.check_real(sub) {
            problems.push(Problem {
                file: Some(sub.to_owned()),
                message: skipped_link(&e),
            });
            return Ok(Vec::new());
        }
        // (name, is a symbolic link): only links need their real path checked.
        let mut names: Vec<(String, bool)> = read
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let kind = e.file_type().ok()?;
                let name = e.file_name().into_string().ok()?;
                (kind.is_file() || kind.is_symlink()).then_some((name, kind.is_symlink()))
            })
            .filter(|(n, _)| n.ends_with(".npz") && !n.starts_with('.'))
            .collect();
        names.sort();
        let prefix = sub.strip_prefix(dir).unwrap_or(Path::new(""));
        let mut out = Vec::with_capacity(names.len());
        for (name, is_link) in names {
            let path = sub.join(&name);
            let checked = if is_link {
                root.check_real(&path)
            } else {
                Ok(())
            };
            match checked {
                Err(e) => problems.push(Problem {
                    message: skipped_link(&e),
                    file: Some(path),
                }),
                Ok(()) => out.push((prefix.join(&name).to_string_lossy().into_owned(), path)),
            }
        }
        Ok(out)
    };
    let in_samples = list_npz(&dir.join("samples"))?;
    if !in_samples.is_empty() {
        return Ok(in_samples);
    }
    list_npz(dir)
}

/// Reports the `samples/*.npz` files the manifest does not list (an unfinished image's, or
/// another run's): they are not part of the set, and nothing else would say they are there.
fn unlisted_files(dir: &Path, list: &[String], problems: &mut Vec<Problem>) {
    let Ok(entries) = std::fs::read_dir(dir.join("samples")) else {
        return;
    };
    // `./samples/x.npz` and `samples/x.npz` name the same file.
    let normal = |p: &Path| -> PathBuf {
        p.components()
            .filter(|c| *c != std::path::Component::CurDir)
            .collect()
    };
    let listed: std::collections::HashSet<PathBuf> =
        list.iter().map(|rel| normal(Path::new(rel))).collect();
    let mut unlisted: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".npz") && !n.starts_with('.'))
        .filter(|n| !listed.contains(&Path::new("samples").join(n)))
        .collect();
    if unlisted.is_empty() {
        return;
    }
    unlisted.sort();
    problems.push(Problem {
        file: Some(dir.join("samples")),
        message: format!(
            "{} sample file(s) are not listed in manifest.json sample_files (an unfinished \
             image's?) and were left out, the first {:?}",
            unlisted.len(),
            unlisted[0]
        ),
    });
}

/// Reads every file's metadata on `options.threads` threads, keeping the input order.
fn read_all(
    files: &[(String, PathBuf)],
    options: &OpenOptions,
) -> Vec<Result<SampleFileInfo, super::sample::SampleError>> {
    let threads = match options.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
    .min(files.len().max(1));
    let chunk = files.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|(_, p)| read_sample_info(p, options.max_array_bytes))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

/// The most common shape (and its dtype) of each array among the readable samples.
fn reference_tensors(good: &[(String, SampleFileInfo)]) -> BTreeMap<SampleKey, TensorInfo> {
    let mut reference = BTreeMap::new();
    for key in SampleKey::ALL {
        let mut counts: Vec<(&TensorInfo, usize)> = Vec::new();
        for (_, info) in good {
            let t = &info.tensors[&key];
            match counts.iter_mut().find(|(r, _)| r.shape == t.shape) {
                Some((_, n)) => *n += 1,
                None => counts.push((t, 1)),
            }
        }
        if let Some((t, _)) = counts.iter().max_by_key(|(_, n)| *n) {
            reference.insert(key, (*t).clone());
        }
    }
    reference
}

/// Checks the images found against the manifest's `n_completed` and `num_steps`; samples of
/// images past `n_completed` (an unfinished image) are set aside.
fn check_against_manifest(
    manifest: Option<&Manifest>,
    num_steps: usize,
    samples: &mut Vec<SampleMeta>,
    num_images: &mut usize,
    problems: &mut Vec<Problem>,
) {
    let Some(manifest) = manifest else { return };
    if let Some(done) = manifest.n_completed.map(|n| n as usize) {
        if *num_images > done {
            let extra = samples.iter().filter(|s| s.image >= done).count();
            problems.push(Problem {
                file: None,
                message: format!(
                    "manifest.json says n_completed = {done} but the files hold {} images; the {extra} sample(s) of images {done}.. are an unfinished run and were set aside",
                    *num_images
                ),
            });
            samples.retain(|s| s.image < done);
            *num_images = done;
        } else if *num_images < done {
            problems.push(Problem {
                file: None,
                message: format!(
                    "manifest.json says n_completed = {done} but the files hold only {} images",
                    *num_images
                ),
            });
        }
    }
    if manifest.num_steps.is_some() && manifest.sample_files.is_none() {
        let mut per_image: BTreeMap<usize, usize> = BTreeMap::new();
        for s in samples.iter() {
            *per_image.entry(s.image).or_default() += 1;
        }
        for (image, n) in per_image.into_iter().filter(|(_, n)| *n != num_steps) {
            problems.push(Problem {
                file: None,
                message: format!(
                    "image {image} has {n} step files, manifest.json says num_steps = {num_steps}"
                ),
            });
        }
    }
}

/// How many elements of `data` are NaN or infinite, and the first one's index; `None` when all
/// are finite (integer data always is).
fn non_finite(data: &super::NpyData) -> Option<(usize, usize)> {
    use super::NpyData as D;
    fn scan<T: Copy>(v: &[T], finite: impl Fn(T) -> bool) -> Option<(usize, usize)> {
        let first = v.iter().position(|&x| !finite(x))?;
        Some((v[first..].iter().filter(|&&x| !finite(x)).count(), first))
    }
    match data {
        D::Float16(v) => scan(v, |x| x.is_finite()),
        D::Bfloat16(v) => scan(v, |x| x.is_finite()),
        D::Float32(v) => scan(v, f32::is_finite),
        D::Float64(v) => scan(v, f64::is_finite),
        _ => None,
    }
}
