//! The reference set a benchmark is matched to: the images of a `calibrate` run (its manifest
//! gives every image's prompt and seed and the settings they were made with), or a plain folder
//! of PNG/JPEG files made by another tool (paired by sorted file name; prompts and seeds from
//! the benchmark's own options, and a warning that the settings cannot be verified).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::calib::Manifest;
use crate::calibrate::{GenerationSettings, image_file_name};
use crate::metrics::images::ImagesError;

/// One reference image and what made it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceImage {
    pub index: usize,
    pub path: PathBuf,
    /// From the manifest, or `None` for a plain folder (the benchmark supplies them).
    pub prompt: Option<String>,
    pub seed: Option<u32>,
}

/// Where a reference set's pairing comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReferenceKind {
    /// A `calibrate` run's manifest: prompts, seeds and settings recorded.
    Manifest,
    /// Image files only: paired by sorted file name.
    Folder,
}

/// A reference set, opened.
#[derive(Debug, Clone)]
pub struct ReferenceSet {
    /// The images folder as given.
    pub dir: PathBuf,
    pub kind: ReferenceKind,
    /// The folder holding the manifest (`dir` or its parent when `dir` is `…/images`).
    pub manifest_dir: Option<PathBuf>,
    /// How the images were generated (`None` for a plain folder).
    pub settings: Option<GenerationSettings>,
    pub images: Vec<ReferenceImage>,
}

/// Why a reference set cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("reference folder {0} does not exist")]
    Missing(PathBuf),
    #[error("reference {0} is not a folder")]
    NotAFolder(PathBuf),
    #[error("reference folder {0} holds no PNG or JPEG images")]
    Empty(PathBuf),
    #[error(transparent)]
    Listing(ImagesError),
    #[error(transparent)]
    Manifest(Box<crate::calib::CalibError>),
    #[error("{path}: the generation settings in the manifest cannot be read: {source}")]
    Settings {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: reference image {index} listed by the manifest is missing")]
    MissingImage { path: PathBuf, index: usize },
    #[error("{path}: cannot read the image: {message}")]
    Unreadable { path: PathBuf, message: String },
    #[error("{path} is {actual_w}×{actual_h}, but the benchmark generates {w}×{h}")]
    Size {
        path: PathBuf,
        actual_w: u32,
        actual_h: u32,
        w: usize,
        h: usize,
    },
}

impl ReferenceSet {
    /// Opens `dir`: a calibration folder, its `images/` subfolder, or any folder of images.
    pub fn open(dir: &Path) -> Result<Self, ReferenceError> {
        if !dir.exists() {
            return Err(ReferenceError::Missing(dir.to_owned()));
        }
        if !dir.is_dir() {
            return Err(ReferenceError::NotAFolder(dir.to_owned()));
        }
        // The seed passes `calibration_data_100/images`; a calibration folder itself works too.
        let candidates = [
            Some(dir.to_owned()),
            (dir.file_name().is_some_and(|n| n == "images"))
                .then(|| dir.parent().map(Path::to_owned))
                .flatten(),
        ];
        for manifest_dir in candidates.into_iter().flatten() {
            let manifest =
                Manifest::read(&manifest_dir).map_err(|e| ReferenceError::Manifest(Box::new(e)))?;
            let Some(manifest) = manifest else { continue };
            let Some(settings) = GenerationSettings::from_manifest(&manifest) else {
                // Another tool's manifest: the images are used as a plain folder.
                continue;
            };
            let settings = settings.map_err(|source| ReferenceError::Settings {
                path: Manifest::path(&manifest_dir),
                source,
            })?;
            let n = (manifest.n_completed.unwrap_or(0) as usize)
                .min(settings.prompts.len())
                .min(settings.seeds.len());
            let images = (0..n)
                .map(|i| {
                    let path = manifest_dir.join(image_file_name(i));
                    if !path.is_file() {
                        return Err(ReferenceError::MissingImage { path, index: i });
                    }
                    Ok(ReferenceImage {
                        index: i,
                        path,
                        prompt: Some(settings.prompts[i].clone()),
                        seed: Some(settings.seeds[i]),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            if images.is_empty() {
                return Err(ReferenceError::Empty(dir.to_owned()));
            }
            return Ok(Self {
                dir: dir.to_owned(),
                kind: ReferenceKind::Manifest,
                manifest_dir: Some(manifest_dir),
                settings: Some(settings),
                images,
            });
        }
        // Listed as the metrics list it (torch-fidelity's rules), so that pairing by position
        // and scoring by folder see the same order.
        let files = crate::metrics::images::list_images(dir).map_err(|e| match e {
            ImagesError::Empty { .. } => ReferenceError::Empty(dir.to_owned()),
            other => ReferenceError::Listing(other),
        })?;
        Ok(Self {
            dir: dir.to_owned(),
            kind: ReferenceKind::Folder,
            manifest_dir: None,
            settings: None,
            images: files
                .into_iter()
                .enumerate()
                .map(|(index, path)| ReferenceImage {
                    index,
                    path,
                    prompt: None,
                    seed: None,
                })
                .collect(),
        })
    }

    /// Checks that the first `n` images decode as `width`×`height` images (reads headers only).
    pub fn check_sizes(&self, n: usize, width: usize, height: usize) -> Result<(), ReferenceError> {
        for image in self.images.iter().take(n) {
            let (w, h) =
                ::image::image_dimensions(&image.path).map_err(|e| ReferenceError::Unreadable {
                    path: image.path.clone(),
                    message: e.to_string(),
                })?;
            if (w as usize, h as usize) != (width, height) {
                return Err(ReferenceError::Size {
                    path: image.path.clone(),
                    actual_w: w,
                    actual_h: h,
                    w: width,
                    h: height,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_folder_pairs_images_by_sorted_name_and_checks_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let png = |name: &str, w: u32, h: u32| {
            crate::image::write_png(
                &dir.path().join(name),
                w,
                h,
                crate::image::PixelFormat::Rgb,
                &vec![7u8; (w * h * 3) as usize],
            )
            .unwrap();
        };
        png("b.png", 16, 16);
        png("a.PNG", 16, 16);
        png("c.png", 32, 16);
        std::fs::write(dir.path().join("notes.txt"), "not an image").unwrap();
        let set = ReferenceSet::open(dir.path()).unwrap();
        assert_eq!(set.kind, ReferenceKind::Folder);
        let names: Vec<_> = set
            .images
            .iter()
            .map(|i| i.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.PNG", "b.png", "c.png"]);
        set.check_sizes(2, 16, 16).unwrap();
        let err = set.check_sizes(3, 16, 16).unwrap_err().to_string();
        assert!(
            err.contains("c.png is 32×16, but the benchmark generates 16×16"),
            "{err}"
        );

        std::fs::write(dir.path().join("a.PNG"), b"not a png").unwrap();
        let err = set.check_sizes(1, 16, 16).unwrap_err().to_string();
        assert!(err.contains("a.PNG: cannot read the image"), "{err}");

        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            ReferenceSet::open(empty.path()),
            Err(ReferenceError::Empty(_))
        ));
        assert!(matches!(
            ReferenceSet::open(&empty.path().join("nothing")),
            Err(ReferenceError::Missing(_))
        ));
    }
}
