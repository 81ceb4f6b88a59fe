//! Images in, as torch-fidelity 0.4.0 takes them: its folder listing (`glob_samples_paths`:
//! non-recursive, extensions png/jpg/jpeg in any case, real paths sorted as strings), PIL's
//! `open(p).convert("RGB")` (8-bit RGB, alpha dropped, no EXIF rotation), and the Inception
//! extractor's input step: TF1-compatible bilinear resize to 299×299
//! (`interpolate_bilinear_2d_like_tensorflow1x(..., align_corners=False)`, its default "slow"
//! method) followed by `(x − 128) / 128`, in float32 like torch.
//!
//! The order of the listing matters: IS splits and KID subsets are drawn by index.

use std::path::{Path, PathBuf};

/// Side of the square Inception-v3 input.
pub const INCEPTION_SIZE: usize = 299;

/// File extensions torch-fidelity picks up by default (`samples_find_ext`), compared in
/// lower case.
pub const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Why images could not be listed, read or batched.
#[derive(Debug, thiserror::Error)]
pub enum ImagesError {
    #[error("{path}: cannot list the folder: {source}")]
    List {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PNG or JPEG images in the folder")]
    Empty { path: PathBuf },
    #[error("{path}: cannot read the image: {reason}")]
    Decode { path: PathBuf, reason: String },
    #[error(
        "{path}: the image is {width}×{height}, but {first} in the same batch is \
         {first_width}×{first_height}; all images of a batch must share a size"
    )]
    MixedSizes {
        path: PathBuf,
        width: u32,
        height: u32,
        first: PathBuf,
        first_width: u32,
        first_height: u32,
    },
}

/// An 8-bit RGB image, rows top to bottom, pixels interleaved (HWC).
#[derive(Debug, Clone, PartialEq)]
pub struct Rgb8Image {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

/// The images of `dir` as torch-fidelity lists them: regular entries of the folder itself (not
/// its subfolders) whose extension is png, jpg or jpeg in any case, as real paths (symbolic
/// links resolved), sorted by their string (Python's `sorted` of `os.path.realpath`s, which is
/// byte order for UTF-8). An empty result is an error: no metric can be computed from it.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>, ImagesError> {
    let list = |source| ImagesError::List {
        path: dir.to_owned(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(list)? {
        let entry = entry.map_err(list)?;
        let path = entry.path();
        // os.walk lists everything that is not a directory (following links) as a file.
        if path.is_dir() {
            continue;
        }
        let Some(ext) = path.extension().and_then(|e| e.to_str()) else {
            continue;
        };
        if !IMAGE_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str()) {
            continue;
        }
        // realpath of a dangling link is the link's target path; canonicalize fails there, and
        // then the image is kept under its own path so that reading it names it.
        files.push(std::fs::canonicalize(&path).unwrap_or(path));
    }
    if files.is_empty() {
        return Err(ImagesError::Empty {
            path: dir.to_owned(),
        });
    }
    files.sort_by(|a, b| {
        a.as_os_str()
            .as_encoded_bytes()
            .cmp(b.as_os_str().as_encoded_bytes())
    });
    Ok(files)
}

/// Decodes a PNG or JPEG (format from the content, as PIL does) to 8-bit RGB: alpha is
/// dropped, grey is replicated, palettes are expanded (each as PIL's `convert("RGB")`, checked
/// against torch-fidelity's features). EXIF orientation is ignored, as PIL's `open` ignores it.
/// Not matched to PIL: 16-bit PNGs (the `image` crate's 16→8-bit scaling) and JPEG decoding
/// (`zune-jpeg` rather than libjpeg, which may round some pixels differently).
pub fn load_rgb(path: &Path) -> Result<Rgb8Image, ImagesError> {
    let decode = |reason: String| ImagesError::Decode {
        path: path.to_owned(),
        reason,
    };
    let reader = ::image::ImageReader::open(path)
        .map_err(|e| decode(e.to_string()))?
        .with_guessed_format()
        .map_err(|e| decode(e.to_string()))?;
    let img = reader.decode().map_err(|e| decode(e.to_string()))?;
    let rgb = img.into_rgb8();
    let (width, height) = rgb.dimensions();
    if width == 0 || height == 0 {
        return Err(decode("the image has no pixels".into()));
    }
    Ok(Rgb8Image {
        width,
        height,
        data: rgb.into_raw(),
    })
}

/// One axis of TF1's `resize_bilinear(align_corners=False)` as torch-fidelity writes it:
/// `src = o · scale` in float32 with `scale = in/out` (a Python float made float32), `lo =
/// trunc(src)`, `hi = min(lo + 1, in − 1)`, weight `src − lo`. No half-pixel offset.
fn axis(in_size: usize, out_size: usize) -> Vec<(usize, usize, f32)> {
    let scale = (in_size as f64 / out_size as f64) as f32;
    (0..out_size)
        .map(|o| {
            let src = o as f32 * scale;
            let lo = src as usize;
            let hi = (lo + 1).min(in_size - 1);
            (lo, hi, src - lo as f32)
        })
        .collect()
}

/// TF1-compatible bilinear resize of an RGB image to `out_h × out_w`, in float32 (values
/// 0–255), HWC. Interpolates along x first, then y, each step rounded as torch's separate
/// element-wise operations round it: `a + (b − a)·d`. An image already of the output size comes
/// back unchanged.
pub fn resize_tf1(img: &Rgb8Image, out_h: usize, out_w: usize) -> Vec<f32> {
    let (w, h) = (img.width as usize, img.height as usize);
    let xs = axis(w, out_w);
    let ys = axis(h, out_h);
    let px = |y: usize, x: usize, c: usize| img.data[(y * w + x) * 3 + c] as f32;
    let mut out = Vec::with_capacity(out_h * out_w * 3);
    for &(y0, y1, dy) in &ys {
        for &(x0, x1, dx) in &xs {
            for c in 0..3 {
                let (a, b) = (px(y0, x0, c), px(y0, x1, c));
                let top = a + (b - a) * dx;
                let (a, b) = (px(y1, x0, c), px(y1, x1, c));
                let bottom = a + (b - a) * dx;
                out.push(top + (bottom - top) * dy);
            }
        }
    }
    out
}

/// The Inception input of one image: resized to 299×299 and mapped to `(x − 128) / 128`
/// (HWC float32, 299·299·3 values).
pub fn inception_input(img: &Rgb8Image) -> Vec<f32> {
    let mut x = resize_tf1(img, INCEPTION_SIZE, INCEPTION_SIZE);
    for v in &mut x {
        *v = (*v - 128.0) / 128.0;
    }
    x
}

/// A batch of Inception inputs, N×299×299×3 float32 (NHWC).
#[derive(Debug, Clone)]
pub struct InputBatch {
    pub n: usize,
    pub data: Vec<f32>,
}

/// Reads, checks and prepares `paths` as one batch. Like torch-fidelity's data loader (which
/// stacks a batch's images before resizing), every image of a batch must have the size of the
/// first; the error names the first image that differs. Images are decoded on all cores.
pub fn load_batch(paths: &[PathBuf]) -> Result<InputBatch, ImagesError> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(paths.len().max(1));
    let per = paths.len().div_ceil(threads).max(1);
    let mut decoded: Vec<Result<Rgb8Image, ImagesError>> = Vec::with_capacity(paths.len());
    std::thread::scope(|s| {
        let handles: Vec<_> = paths
            .chunks(per)
            .map(|chunk| s.spawn(move || chunk.iter().map(|p| load_rgb(p)).collect::<Vec<_>>()))
            .collect();
        for h in handles {
            match h.join() {
                Ok(v) => decoded.extend(v),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    });
    let mut images = Vec::with_capacity(paths.len());
    for (path, img) in paths.iter().zip(decoded) {
        let img = img?;
        if let Some(first) = images.first() {
            check_same_size(&paths[0], first, path, &img)?;
        }
        images.push(img);
    }
    Ok(batch_of(&images))
}

fn check_same_size(
    first_path: &Path,
    first: &Rgb8Image,
    path: &Path,
    img: &Rgb8Image,
) -> Result<(), ImagesError> {
    if (img.width, img.height) == (first.width, first.height) {
        return Ok(());
    }
    Err(ImagesError::MixedSizes {
        path: path.to_owned(),
        width: img.width,
        height: img.height,
        first: first_path.to_owned(),
        first_width: first.width,
        first_height: first.height,
    })
}

/// The Inception inputs of already decoded images (any sizes), in order.
pub fn batch_of(images: &[Rgb8Image]) -> InputBatch {
    let per = INCEPTION_SIZE * INCEPTION_SIZE * 3;
    let mut data = Vec::with_capacity(images.len() * per);
    for img in images {
        data.extend(inception_input(img));
    }
    InputBatch {
        n: images.len(),
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(width: u32, height: u32, f: impl Fn(u32, u32, u32) -> u8) -> Rgb8Image {
        let mut data = Vec::new();
        for y in 0..height {
            for x in 0..width {
                for c in 0..3 {
                    data.push(f(x, y, c));
                }
            }
        }
        Rgb8Image {
            width,
            height,
            data,
        }
    }

    #[test]
    fn resize_to_the_same_size_is_the_identity() {
        let img = image(7, 5, |x, y, c| (x * 31 + y * 17 + c * 5) as u8);
        let out = resize_tf1(&img, 5, 7);
        let expected: Vec<f32> = img.data.iter().map(|&v| v as f32).collect();
        assert_eq!(out, expected);
    }

    #[test]
    fn resize_follows_tf1_semantics_by_hand() {
        // 4 → 3 columns: scale 4/3, sources 0, 1.333…, 2.666… (no half-pixel offset);
        // 2 → 4 rows: scale 0.5, sources 0, 0.5, 1, 1.5 with the last row clamped.
        let img = image(4, 2, |x, y, _| (x * 10 + y * 100) as u8);
        let out = resize_tf1(&img, 4, 3);
        let at = |y: usize, x: usize| out[(y * 3 + x) * 3];
        let s = 4.0f32 / 3.0;
        assert_eq!(at(0, 0), 0.0);
        assert_eq!(at(0, 1), 10.0 * s);
        assert_eq!(at(0, 2), 20.0 + 10.0 * (2.0 * s - 2.0));
        assert_eq!(at(1, 0), 50.0);
        assert_eq!(at(2, 0), 100.0);
        // Rows past the last source row repeat it (hi is clamped, lo = 1).
        assert_eq!(at(3, 0), 100.0);
    }

    #[test]
    fn inception_input_maps_to_minus_one_one() {
        let img = image(299, 299, |x, _, _| if x == 0 { 0 } else { 255 });
        let x = inception_input(&img);
        assert_eq!(x.len(), 299 * 299 * 3);
        assert_eq!(x[0], -1.0);
        assert_eq!(x[3], 127.0 / 128.0);
    }
}
