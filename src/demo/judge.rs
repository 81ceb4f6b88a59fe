//! The pixel judge: does a picture show what its demo caption says? Computed from the pixels
//! alone, so it can fail: the picture's background must read as the caption's background
//! colour, its shapes' region as the shapes' colour, the pixels nearer the shapes' colour than
//! the background's must overlap the caption's shapes (placed exactly, no jitter) with an
//! intersection over union of at least [`IOU_PASS`], and better than any other shape at the
//! same places would (a square or a ring where a circle belongs overlaps it by 0.7–0.8).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::shapes::{CaptionError, Colour, Scene, Shape, distance2};
use crate::bench::folder::BenchFolder;
use crate::metrics::images::{ImagesError, load_rgb};

/// The overlap a picture needs to pass.
pub const IOU_PASS: f32 = 0.6;

/// What the judge saw in one picture.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// Overlap of the pixels in the shapes' colour with where the caption puts the shapes.
    pub iou: f32,
    /// Where the shapes should be, most pixels not in the background's colour are nearest
    /// (in the palette) to the shapes' colour.
    pub shape_colour: bool,
    /// Elsewhere, most pixels are nearest to the caption's background colour.
    pub background: bool,
    /// No other shape at the caption's places overlaps those pixels more than its shape.
    pub shape: bool,
}

impl Verdict {
    /// Every check: colours, place and size, and the shape itself.
    pub fn passed(&self) -> bool {
        self.placed() && self.shape
    }

    /// The colours, place and size checks without the shape's: the shapes' colour against
    /// the background's and their mask at the caption's place and size (IoU ≥ 0.6), where a
    /// rounded blob in place of a star still counts.
    pub fn placed(&self) -> bool {
        self.shape_colour && self.background && self.iou >= IOU_PASS
    }
}

/// Judges a square RGB picture (`side`×`side`, row-major) against the scene its caption says.
pub fn judge(scene: &Scene, rgb: &[u8], side: usize) -> Verdict {
    debug_assert_eq!(rgb.len(), side * side * 3);
    let expected = scene.mask(side);
    let (fg, bg) = (scene.colour.rgb(), scene.background.rgb());
    // Each pixel votes for its nearest palette colour: where the shapes should be (leaving out
    // background votes, so a thin or slightly moved shape still counts) and elsewhere.
    let (mut inside, mut outside) = (Votes::default(), Votes::default());
    let mut shown = Vec::with_capacity(expected.len());
    for (pixel, &want) in rgb.chunks_exact(3).zip(&expected) {
        let p = [pixel[0] as f32, pixel[1] as f32, pixel[2] as f32];
        let nearest = Colour::nearest(p);
        if !want {
            outside.add(nearest);
        } else if nearest != scene.background {
            inside.add(nearest);
        }
        shown.push(distance2(p, fg) < distance2(p, bg));
    }
    let iou = iou_of(&shown, &expected);
    let best_other = Shape::ALL
        .into_iter()
        .filter(|s| *s != scene.shape)
        .map(|shape| iou_of(&shown, &Scene { shape, ..*scene }.mask(side)))
        .fold(0.0f32, f32::max);
    Verdict {
        iou,
        shape_colour: inside.most() == Some(scene.colour),
        background: outside.most() == Some(scene.background),
        shape: iou >= best_other,
    }
}

/// Intersection over union of two masks (0 when both are empty).
fn iou_of(a: &[bool], b: &[bool]) -> f32 {
    let (mut both, mut either) = (0usize, 0usize);
    for (&x, &y) in a.iter().zip(b) {
        both += (x && y) as usize;
        either += (x || y) as usize;
    }
    if either == 0 {
        0.0
    } else {
        both as f32 / either as f32
    }
}

/// Pixels per nearest palette colour.
#[derive(Default)]
struct Votes([usize; Colour::ALL.len()]);

impl Votes {
    fn add(&mut self, c: Colour) {
        self.0[c as usize] += 1;
    }

    /// The colour with the most votes (the first in palette order on a tie); none without votes.
    fn most(&self) -> Option<Colour> {
        let (i, &n) = self.0.iter().enumerate().rev().max_by_key(|(_, n)| **n)?;
        (n > 0).then(|| Colour::ALL[i])
    }
}

/// The judge's verdicts over a set of pictures.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Score {
    pub pictures: usize,
    /// Pictures that pass every check ([`Verdict::passed`]).
    pub passed: usize,
    /// Pictures with the right colours, place and size ([`Verdict::placed`]).
    pub placed: usize,
    pub mean_iou: f32,
}

impl Score {
    pub fn of(verdicts: &[Verdict]) -> Score {
        let n = verdicts.len();
        Score {
            pictures: n,
            passed: verdicts.iter().filter(|v| v.passed()).count(),
            placed: verdicts.iter().filter(|v| v.placed()).count(),
            mean_iou: if n == 0 {
                0.0
            } else {
                verdicts.iter().map(|v| v.iou).sum::<f32>() / n as f32
            },
        }
    }

    /// The share of pictures that passed (0 for none).
    pub fn pass_rate(&self) -> f32 {
        self.share(self.passed)
    }

    /// The share of pictures with the right colours, place and size (0 for none).
    pub fn placed_rate(&self) -> f32 {
        self.share(self.placed)
    }

    fn share(&self, n: usize) -> f32 {
        if self.pictures == 0 {
            0.0
        } else {
            n as f32 / self.pictures as f32
        }
    }
}

/// Why a benchmark's pictures could not be judged.
#[derive(Debug, thiserror::Error)]
pub enum JudgeError {
    #[error("image {index}'s prompt: {source}")]
    Caption { index: usize, source: CaptionError },
    #[error(transparent)]
    Image(#[from] ImagesError),
    #[error("{path}: the picture is {width}×{height}; the judge reads square pictures")]
    NotSquare {
        path: PathBuf,
        width: u32,
        height: u32,
    },
}

/// The judge's verdicts on one configuration's pictures (or the reference set's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigurationScore {
    pub name: String,
    pub score: Score,
    /// By image index, in index order.
    pub verdicts: Vec<(usize, Verdict)>,
}

impl ConfigurationScore {
    /// The score of `verdicts` (by image index) under `name`.
    pub fn new(name: &str, verdicts: Vec<(usize, Verdict)>) -> Self {
        let score = Score::of(&verdicts.iter().map(|(_, v)| *v).collect::<Vec<_>>());
        Self {
            name: name.to_owned(),
            score,
            verdicts,
        }
    }
}

/// Judges every finished picture of a benchmark against its prompt, configuration by
/// configuration (then the reference set's, named `reference`, when the run has one). Every
/// prompt must be a demo caption.
pub fn judge_benchmark(folder: &BenchFolder) -> Result<Vec<ConfigurationScore>, JudgeError> {
    let scenes = folder
        .prompts
        .iter()
        .map(|row| {
            Scene::parse(&row.prompt).map_err(|source| JudgeError::Caption {
                index: row.index,
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let judge_all = |name: &str, images: Vec<(usize, &PathBuf)>| {
        let verdicts = images
            .into_iter()
            .filter(|(index, _)| *index < scenes.len())
            .map(|(index, path)| Ok((index, judge_file(&scenes[index], path)?)))
            .collect::<Result<Vec<_>, JudgeError>>()?;
        Ok::<_, JudgeError>(ConfigurationScore::new(name, verdicts))
    };
    let mut out = Vec::new();
    for c in &folder.configurations {
        out.push(judge_all(
            &c.name,
            c.images.iter().map(|(i, p)| (*i, p)).collect(),
        )?);
    }
    let reference: Vec<(usize, &PathBuf)> = folder
        .reference
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.as_ref().map(|p| (i, p)))
        .collect();
    if !reference.is_empty() {
        out.push(judge_all("reference", reference)?);
    }
    Ok(out)
}

/// Judges one PNG or JPEG file against a scene.
pub fn judge_file(scene: &Scene, path: &std::path::Path) -> Result<Verdict, JudgeError> {
    let image = load_rgb(path)?;
    if image.width != image.height {
        return Err(JudgeError::NotSquare {
            path: path.to_owned(),
            width: image.width,
            height: image.height,
        });
    }
    Ok(judge(scene, &image.data, image.width as usize))
}

#[cfg(test)]
mod tests {
    use super::super::shapes::{Layout, Place, Split, held_out_scenes, item};
    use super::*;

    #[test]
    fn the_drawings_of_the_data_pass_even_jittered() {
        for i in 0..60 {
            let (scene, placements) = item(11, i, Split::Train);
            for side in [64, 128] {
                let v = judge(&scene, &scene.draw_at(&placements, side), side);
                assert!(v.passed(), "{scene} at {side}: {v:?}");
            }
            // Mixed edge pixels read as the colour that covers more of them.
            let exact = judge(&scene, &scene.draw(64), 64);
            assert!(exact.passed() && exact.iou > 0.99, "{scene}: {exact:?}");
        }
    }

    #[test]
    fn wrong_place_colour_shape_background_or_noise_fail() {
        let side = 64;
        let scene = Scene::parse("a large red circle on the left on a white background").unwrap();
        let judged = |other: Scene| judge(&scene, &other.draw(side), side);
        let moved = judged(Scene {
            layout: Layout::One(Place::Right),
            ..scene
        });
        assert!(!moved.passed() && moved.iou < 0.1, "{moved:?}");
        let recoloured = judged(Scene {
            colour: Colour::Blue,
            ..scene
        });
        assert!(
            !recoloured.passed() && !recoloured.shape_colour,
            "{recoloured:?}"
        );
        let background = judged(Scene {
            background: Colour::Black,
            ..scene
        });
        assert!(
            !background.passed() && !background.background,
            "{background:?}"
        );
        // A square or a ring where a circle should be overlaps it by 0.7–0.8, over the
        // threshold: they fail because the shape they are fits better.
        for shape in [Shape::Square, Shape::Ring, Shape::Star, Shape::Triangle] {
            let other = judged(Scene { shape, ..scene });
            assert!(!other.passed() && !other.shape, "{shape:?}: {other:?}");
        }
        assert!(
            judged(Scene {
                shape: Shape::Ring,
                ..scene
            })
            .iou > IOU_PASS
        );
        // A small circle instead of a large one does not overlap enough.
        let small = judged(Scene {
            size: super::super::shapes::Size::Small,
            ..scene
        });
        assert!(!small.passed() && small.iou < IOU_PASS, "{small:?}");
        // Noise in the two colours: about half the pixels each way.
        let mut state = 12345u32;
        let noise: Vec<u8> = (0..side * side)
            .flat_map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                if state >> 31 == 1 {
                    Colour::Red.rgb()
                } else {
                    Colour::White.rgb()
                }
            })
            .collect();
        let v = judge(&scene, &noise, side);
        assert!(!v.passed() && v.iou < 0.3, "{v:?}");
    }

    #[test]
    fn scores_count_passes_and_average_overlap() {
        let scenes = held_out_scenes(5, 10);
        let mut verdicts: Vec<Verdict> = scenes.iter().map(|s| judge(s, &s.draw(64), 64)).collect();
        verdicts.push(judge(&scenes[0], &scenes[1].draw(64), 64));
        let score = Score::of(&verdicts);
        assert_eq!(score.pictures, 11);
        assert!(verdicts[..10].iter().all(Verdict::passed));
        assert_eq!(score.passed, 10 + verdicts[10].passed() as usize);
        assert!(score.mean_iou < 1.0 && score.mean_iou > 0.85, "{score:?}");
        assert!((score.pass_rate() - score.passed as f32 / 11.0).abs() < 1e-6);
        assert_eq!(Score::of(&[]).pass_rate(), 0.0);
        assert_eq!(Score::of(&[]).placed_rate(), 0.0);
    }

    #[test]
    fn a_circle_in_place_of_a_square_is_placed_but_does_not_pass() {
        // A circle's picture judged against the caption of a square at the same place and
        // size: colours, place and size are right (IoU π/4), the shape is not.
        let square = Scene::parse("a large red square in the centre on a blue background").unwrap();
        let circle = Scene::parse("a large red circle in the centre on a blue background").unwrap();
        let v = judge(&square, &circle.draw(64), 64);
        assert!(v.placed() && !v.shape && !v.passed(), "{v:?}");
        let score = Score::of(&[v, judge(&square, &square.draw(64), 64)]);
        assert_eq!((score.placed, score.passed), (2, 1));
        assert_eq!(score.placed_rate(), 1.0);
    }

    #[test]
    fn files_are_judged_and_bad_ones_named() {
        use crate::image::{PixelFormat, write_png};
        let dir = tempfile::tempdir().unwrap();
        let scene = held_out_scenes(1, 1)[0];
        let good = dir.path().join("good.png");
        write_png(&good, 64, 64, PixelFormat::Rgb, &scene.draw(64)).unwrap();
        assert!(judge_file(&scene, &good).unwrap().passed());
        let wide = dir.path().join("wide.png");
        write_png(
            &wide,
            64,
            32,
            PixelFormat::Rgb,
            &scene.draw(64)[..64 * 32 * 3],
        )
        .unwrap();
        let e = judge_file(&scene, &wide).unwrap_err().to_string();
        assert!(e.contains("wide.png") && e.contains("64×32"), "{e}");
        let bad = dir.path().join("bad.png");
        std::fs::write(&bad, b"not a picture").unwrap();
        let e = judge_file(&scene, &bad).unwrap_err().to_string();
        assert!(e.contains("bad.png"), "{e}");
    }
}
