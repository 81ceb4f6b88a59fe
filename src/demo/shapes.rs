//! The demo model's captioned pictures: one or two flat shapes (circle, square, triangle,
//! star, ring) of a colour, size and place on a plain background, drawn anti-aliased at any
//! size, with the caption that says exactly that ("a small red star at the top left on a blue
//! background", "two large white rings on a black background").
//!
//! Captions and scenes convert both ways ([`Scene::caption`], [`Scene::parse`]), so a
//! generated image can be judged against its prompt alone. Some (shape, colour, background)
//! combinations never appear in training ([`is_held_out`]): the evaluation prompts use only
//! those, so a model that passes has composed attributes it learned apart.

use std::fmt;

use crate::rng::NumpyRandomState;

/// What is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shape {
    Circle,
    Square,
    Triangle,
    Star,
    Ring,
}

impl Shape {
    pub const ALL: [Shape; 5] = [
        Shape::Circle,
        Shape::Square,
        Shape::Triangle,
        Shape::Star,
        Shape::Ring,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Circle => "circle",
            Self::Square => "square",
            Self::Triangle => "triangle",
            Self::Star => "star",
            Self::Ring => "ring",
        }
    }

    /// Whether the point (`dx`, `dy`), relative to the centre in units of the shape's
    /// radius (y down), is inside. Every shape spans about the same box, so a size reads the
    /// same whatever the shape.
    fn contains(self, dx: f32, dy: f32) -> bool {
        match self {
            Self::Circle => dx * dx + dy * dy <= 1.0,
            Self::Square => dx.abs() <= 0.88 && dy.abs() <= 0.88,
            Self::Ring => {
                let d2 = dx * dx + dy * dy;
                (0.55 * 0.55..=1.0).contains(&d2)
            }
            Self::Triangle => {
                // Pointing up, its centroid at the centre.
                let (top, base) = (-1.05, 0.75);
                let half = (base - top) / 3f32.sqrt();
                dy >= top && dy <= base && dx.abs() <= half * (dy - top) / (base - top)
            }
            Self::Star => inside_polygon(&star_points(), dx, dy),
        }
    }
}

/// The five-pointed star's outline, first point up.
fn star_points() -> [(f32, f32); 10] {
    let mut points = [(0.0, 0.0); 10];
    for (i, p) in points.iter_mut().enumerate() {
        let r = if i % 2 == 0 { 1.12 } else { 0.48 };
        let a = std::f32::consts::PI * (i as f32 / 5.0 - 0.5);
        *p = (r * a.cos(), r * a.sin());
    }
    points
}

/// Even-odd rule.
fn inside_polygon(points: &[(f32, f32)], x: f32, y: f32) -> bool {
    let mut inside = false;
    let mut j = points.len() - 1;
    for i in 0..points.len() {
        let ((xi, yi), (xj, yj)) = (points[i], points[j]);
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

/// A colour of the palette: the shapes' and the backgrounds'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Colour {
    Red,
    Green,
    Blue,
    Yellow,
    Purple,
    Orange,
    White,
    Black,
}

impl Colour {
    pub const ALL: [Colour; 8] = [
        Colour::Red,
        Colour::Green,
        Colour::Blue,
        Colour::Yellow,
        Colour::Purple,
        Colour::Orange,
        Colour::White,
        Colour::Black,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Red => "red",
            Self::Green => "green",
            Self::Blue => "blue",
            Self::Yellow => "yellow",
            Self::Purple => "purple",
            Self::Orange => "orange",
            Self::White => "white",
            Self::Black => "black",
        }
    }

    pub fn rgb(self) -> [u8; 3] {
        match self {
            Self::Red => [215, 38, 38],
            Self::Green => [34, 160, 60],
            Self::Blue => [38, 78, 215],
            Self::Yellow => [240, 210, 40],
            Self::Purple => [135, 55, 175],
            Self::Orange => [245, 135, 25],
            Self::White => [245, 245, 240],
            Self::Black => [22, 22, 26],
        }
    }

    /// The palette colour nearest to `rgb` (squared RGB distance).
    pub fn nearest(rgb: [f32; 3]) -> Colour {
        let mut best = (f32::INFINITY, Colour::Red);
        for c in Colour::ALL {
            let d = distance2(rgb, c.rgb());
            if d < best.0 {
                best = (d, c);
            }
        }
        best.1
    }
}

pub(crate) fn distance2(a: [f32; 3], b: [u8; 3]) -> f32 {
    (0..3).map(|i| (a[i] - b[i] as f32).powi(2)).sum()
}

/// How big: the shape's radius as a fraction of the picture's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Size {
    Small,
    Large,
}

impl Size {
    pub const ALL: [Size; 2] = [Size::Small, Size::Large];

    pub fn name(self) -> &'static str {
        match self {
            Self::Small => "small",
            Self::Large => "large",
        }
    }

    fn radius(self) -> f32 {
        match self {
            Self::Small => 0.13,
            Self::Large => 0.21,
        }
    }
}

/// Where a single shape stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Place {
    Centre,
    Left,
    Right,
    Top,
    Bottom,
    TopLeft,
    TopRight,
    BottomLeft,
    BottomRight,
}

impl Place {
    pub const ALL: [Place; 9] = [
        Place::Centre,
        Place::Left,
        Place::Right,
        Place::Top,
        Place::Bottom,
        Place::TopLeft,
        Place::TopRight,
        Place::BottomLeft,
        Place::BottomRight,
    ];

    /// The words in a caption.
    pub fn phrase(self) -> &'static str {
        match self {
            Self::Centre => "in the centre",
            Self::Left => "on the left",
            Self::Right => "on the right",
            Self::Top => "at the top",
            Self::Bottom => "at the bottom",
            Self::TopLeft => "at the top left",
            Self::TopRight => "at the top right",
            Self::BottomLeft => "at the bottom left",
            Self::BottomRight => "at the bottom right",
        }
    }

    /// The centre, as fractions of the side (y down).
    fn centre(self) -> (f32, f32) {
        let (lo, mid, hi) = (0.28, 0.5, 0.72);
        match self {
            Self::Centre => (mid, mid),
            Self::Left => (lo, mid),
            Self::Right => (hi, mid),
            Self::Top => (mid, lo),
            Self::Bottom => (mid, hi),
            Self::TopLeft => (lo, lo),
            Self::TopRight => (hi, lo),
            Self::BottomLeft => (lo, hi),
            Self::BottomRight => (hi, hi),
        }
    }
}

/// One or two shapes: a single one stands at a place, a pair side by side across the middle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    One(Place),
    Two,
}

/// What a caption says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scene {
    pub shape: Shape,
    pub colour: Colour,
    pub size: Size,
    pub layout: Layout,
    pub background: Colour,
}

/// A caption that is not one of the demo's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("\"{caption}\" is not a demo caption: {problem}")]
pub struct CaptionError {
    pub caption: String,
    pub problem: String,
}

impl Scene {
    /// "a small red star at the top left on a blue background",
    /// "two large white rings on a black background".
    pub fn caption(&self) -> String {
        let (size, colour, shape) = (self.size.name(), self.colour.name(), self.shape.name());
        let background = self.background.name();
        let on = format!("on {} {background} background", article(background));
        match self.layout {
            Layout::One(place) => format!("a {size} {colour} {shape} {} {on}", place.phrase()),
            Layout::Two => format!("two {size} {colour} {shape}s {on}"),
        }
    }

    /// The scene a caption of [`Scene::caption`]'s grammar says.
    pub fn parse(caption: &str) -> Result<Scene, CaptionError> {
        let fail = |problem: &str| CaptionError {
            caption: caption.to_owned(),
            problem: problem.to_owned(),
        };
        let words: Vec<&str> = caption.split_whitespace().collect();
        let rest = words.join(" ");
        let (head, said, background) =
            match (rest.rsplit_once(" on a "), rest.rsplit_once(" on an ")) {
                (Some((h, b)), _) => (h, "a", b),
                (None, Some((h, b))) => (h, "an", b),
                (None, None) => return Err(fail("it does not end \"on a COLOUR background\"")),
            };
        let background = background
            .strip_suffix(" background")
            .and_then(colour_named)
            .ok_or_else(|| fail("the background is not a palette colour"))?;
        if said != article(background.name()) {
            return Err(fail(&format!(
                "\"on {said} {}\" should be \"on {} {}\"",
                background.name(),
                article(background.name()),
                background.name()
            )));
        }
        let head: Vec<&str> = head.split(' ').collect();
        let [count, size, colour, shape, place @ ..] = head.as_slice() else {
            return Err(fail(
                "it does not start \"a SIZE COLOUR SHAPE\" or \"two ...\"",
            ));
        };
        let size = Size::ALL
            .into_iter()
            .find(|s| s.name() == *size)
            .ok_or_else(|| fail("the size is not \"small\" or \"large\""))?;
        let colour =
            colour_named(colour).ok_or_else(|| fail("the colour is not in the palette"))?;
        let layout = match *count {
            "a" => Layout::One(
                Place::ALL
                    .into_iter()
                    .find(|p| p.phrase() == place.join(" "))
                    .ok_or_else(|| fail("the place is not one of the nine"))?,
            ),
            "two" if place.is_empty() => Layout::Two,
            "two" => return Err(fail("a pair has no place")),
            _ => return Err(fail("the count is not \"a\" or \"two\"")),
        };
        let shape_word = match layout {
            Layout::One(_) => Some(*shape),
            Layout::Two => shape.strip_suffix('s'),
        };
        let shape = shape_word
            .and_then(|w| Shape::ALL.into_iter().find(|s| s.name() == w))
            .ok_or_else(|| fail("the shape is not one of the five"))?;
        if colour == background {
            return Err(fail("the shape has the background's colour"));
        }
        Ok(Scene {
            shape,
            colour,
            size,
            layout,
            background,
        })
    }

    /// The shapes' centres and radius, as fractions of the side, with no jitter.
    pub fn placements(&self) -> Vec<Placement> {
        let radius = self.size.radius();
        let centres = match self.layout {
            Layout::One(place) => vec![place.centre()],
            Layout::Two => vec![(0.27, 0.5), (0.73, 0.5)],
        };
        centres
            .into_iter()
            .map(|(x, y)| Placement { x, y, radius })
            .collect()
    }

    /// Draws the scene at its exact placements.
    pub fn draw(&self, side: usize) -> Vec<u8> {
        self.draw_at(&self.placements(), side)
    }

    /// Draws the shapes at `placements` (fractions of the side): RGB bytes, row-major, each
    /// pixel's colour mixed by its coverage (5×5 samples).
    pub fn draw_at(&self, placements: &[Placement], side: usize) -> Vec<u8> {
        let (fg, bg) = (self.colour.rgb(), self.background.rgb());
        let coverage = self.coverage(placements, side);
        let mut rgb = Vec::with_capacity(side * side * 3);
        for c in coverage {
            for ch in 0..3 {
                let v = bg[ch] as f32 + (fg[ch] as f32 - bg[ch] as f32) * c;
                rgb.push(v.round().clamp(0.0, 255.0) as u8);
            }
        }
        rgb
    }

    /// The pixels the exact placements cover by half or more: what a picture of this caption
    /// should show in the shapes' colour.
    pub fn mask(&self, side: usize) -> Vec<bool> {
        self.coverage(&self.placements(), side)
            .into_iter()
            .map(|c| c >= 0.5)
            .collect()
    }

    /// Each pixel's covered fraction, from 5×5 samples (an odd count: never exactly half).
    fn coverage(&self, placements: &[Placement], side: usize) -> Vec<f32> {
        const SUB: usize = 5;
        let scale = side as f32;
        let mut out = vec![0.0; side * side];
        for (i, value) in out.iter_mut().enumerate() {
            let (px, py) = ((i % side) as f32, (i / side) as f32);
            let mut hits = 0;
            for s in 0..SUB * SUB {
                let x = (px + ((s % SUB) as f32 + 0.5) / SUB as f32) / scale;
                let y = (py + ((s / SUB) as f32 + 0.5) / SUB as f32) / scale;
                if placements.iter().any(|p| {
                    self.shape
                        .contains((x - p.x) / p.radius, (y - p.y) / p.radius)
                }) {
                    hits += 1;
                }
            }
            *value = hits as f32 / (SUB * SUB) as f32;
        }
        out
    }
}

impl fmt::Display for Scene {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.caption())
    }
}

/// "an" before a vowel, else "a".
fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

fn colour_named(name: &str) -> Option<Colour> {
    Colour::ALL.into_iter().find(|c| c.name() == name)
}

/// A shape's centre and radius, as fractions of the picture's side.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    pub x: f32,
    pub y: f32,
    pub radius: f32,
}

/// Whether the (shape, colour, background) combination is kept out of training, for the
/// evaluation prompts: about one in six, fixed (no seed), chosen so every shape, colour and
/// background still appears in training in other combinations.
pub fn is_held_out(shape: Shape, colour: Colour, background: Colour) -> bool {
    let (s, c, b) = (shape as usize, colour as usize, background as usize);
    (s * 5 + c * 3 + b * 7) % 6 == 0
}

/// Every scene a caption can say (colour ≠ background).
pub fn all_scenes() -> impl Iterator<Item = Scene> {
    Shape::ALL.into_iter().flat_map(|shape| {
        Colour::ALL.into_iter().flat_map(move |colour| {
            Colour::ALL
                .into_iter()
                .filter(move |b| *b != colour)
                .flat_map(move |background| {
                    Size::ALL.into_iter().flat_map(move |size| {
                        Place::ALL
                            .into_iter()
                            .map(Layout::One)
                            .chain([Layout::Two])
                            .map(move |layout| Scene {
                                shape,
                                colour,
                                size,
                                layout,
                                background,
                            })
                    })
                })
        })
    })
}

/// Which scenes a draw may give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Combinations that are not held out.
    Train,
    /// Held-out combinations only.
    HeldOut,
}

impl Split {
    fn admits(self, s: &Scene) -> bool {
        is_held_out(s.shape, s.colour, s.background) == (self == Split::HeldOut)
    }
}

/// Item `index` of the set drawn with `seed`: the same scene and placements whatever else is
/// drawn (each item has its own generator). Training items are jittered (centres by up to
/// ±2 % of the side, radii by up to ±5 %) so the model learns shapes rather than stamps.
pub fn item(seed: u32, index: u64, split: Split) -> (Scene, Vec<Placement>) {
    let mut rng = NumpyRandomState::new(item_seed(seed, index, split));
    let scenes: Vec<Scene> = all_scenes().filter(|s| split.admits(s)).collect();
    let scene = scenes[(rng.next_f64() * scenes.len() as f64) as usize % scenes.len()];
    let mut placements = scene.placements();
    if split == Split::Train {
        for p in &mut placements {
            p.x += (rng.next_f64() as f32 * 2.0 - 1.0) * 0.02;
            p.y += (rng.next_f64() as f32 * 2.0 - 1.0) * 0.02;
            p.radius *= 1.0 + (rng.next_f64() as f32 * 2.0 - 1.0) * 0.05;
        }
    }
    (scene, placements)
}

/// `n` evaluation scenes drawn with `seed` from the held-out combinations, no two alike.
pub fn held_out_scenes(seed: u32, n: usize) -> Vec<Scene> {
    let mut out: Vec<Scene> = Vec::with_capacity(n);
    let mut index = 0;
    let total = all_scenes().filter(|s| Split::HeldOut.admits(s)).count();
    while out.len() < n.min(total) {
        let (scene, _) = item(seed, index, Split::HeldOut);
        if !out.contains(&scene) {
            out.push(scene);
        }
        index += 1;
    }
    out
}

/// The caption list written beside a picture set: one JSON object per line, `file` and
/// `caption`.
pub const CAPTIONS_JSONL: &str = "captions.jsonl";

/// The same captions as a prompt list (`prompt,file`), for `--prompt-csv`.
pub const PROMPTS_CSV: &str = "prompts.csv";

/// Writes items `0..count` of the set drawn with `seed` from `split` (held out: distinct
/// scenes, [`held_out_scenes`], as long as there are new ones) into `dir` as
/// `000000.png`… (`side`×`side`), [`CAPTIONS_JSONL`] and [`PROMPTS_CSV`], each file
/// atomically; `progress` is called after each picture with the number written. Returns the
/// scenes.
pub fn write_pictures(
    dir: &std::path::Path,
    seed: u32,
    count: usize,
    side: usize,
    split: Split,
    mut progress: impl FnMut(usize),
) -> std::io::Result<Vec<Scene>> {
    std::fs::create_dir_all(dir)?;
    let mut lines = String::new();
    // Captions hold neither commas nor quotes: no field needs quoting.
    let mut csv = String::from("prompt,file\n");
    let mut scenes = Vec::with_capacity(count);
    // Held-out pictures are evaluation prompts: no caption twice while there are new ones.
    let distinct = match split {
        Split::HeldOut => held_out_scenes(seed, count),
        Split::Train => Vec::new(),
    };
    for i in 0..count {
        let (scene, placements) = match distinct.get(i) {
            Some(scene) => (*scene, scene.placements()),
            None => item(seed, i as u64, split),
        };
        let file = format!("{i:06}.png");
        let rgb = scene.draw_at(&placements, side);
        crate::image::write_png(
            &dir.join(&file),
            side as u32,
            side as u32,
            crate::image::PixelFormat::Rgb,
            &rgb,
        )?;
        let line = serde_json::json!({"file": file, "caption": scene.caption()});
        lines.push_str(&line.to_string());
        lines.push('\n');
        csv.push_str(&format!("{},{file}\n", scene.caption()));
        scenes.push(scene);
        progress(i + 1);
    }
    crate::fsutil::write_atomic(&dir.join(CAPTIONS_JSONL), lines.as_bytes())?;
    crate::fsutil::write_atomic(&dir.join(PROMPTS_CSV), csv.as_bytes())?;
    Ok(scenes)
}

/// A per-item seed from the set's seed, the index and the split (splitmix64's finaliser).
fn item_seed(seed: u32, index: u64, split: Split) -> u32 {
    let mut z = ((seed as u64) << 32 ^ index).wrapping_add(0x9E37_79B9_7F4A_7C15);
    if split == Split::HeldOut {
        z ^= 0xD1B5_4A32_D192_ED03;
    }
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_caption_parses_back_to_its_scene() {
        let mut n = 0;
        for scene in all_scenes() {
            assert_eq!(Scene::parse(&scene.caption()), Ok(scene), "{scene}");
            n += 1;
        }
        // 5 shapes × 8 colours × 7 backgrounds × 2 sizes × 10 layouts.
        assert_eq!(n, 5 * 8 * 7 * 2 * 10);
        let s = Scene::parse("  two large   white rings on a black background ").unwrap();
        assert_eq!(s.caption(), "two large white rings on a black background");
        let s = Scene::parse("a small red star in the centre on an orange background").unwrap();
        assert_eq!(s.background, Colour::Orange);
    }

    #[test]
    fn captions_outside_the_grammar_are_refused_saying_why() {
        for (caption, why) in [
            ("a photo of a cat", "does not end"),
            ("a small red star on a blue background", "place"),
            (
                "a small red star in the centre on a red background",
                "background's colour",
            ),
            ("a tiny red star in the centre on a blue background", "size"),
            ("two small red star on a blue background", "shape"),
            ("three small red stars on a blue background", "count"),
            (
                "a small red star in the centre on a cyan background",
                "background is not",
            ),
        ] {
            let e = Scene::parse(caption).unwrap_err();
            assert!(e.to_string().contains(why), "{caption}: {e}");
            assert!(e.to_string().contains(caption), "{e}");
        }
    }

    #[test]
    fn held_out_combinations_leave_every_attribute_in_training() {
        let held: Vec<Scene> = all_scenes()
            .filter(|s| is_held_out(s.shape, s.colour, s.background))
            .collect();
        let share = held.len() as f64 / all_scenes().count() as f64;
        assert!((0.1..0.25).contains(&share), "{share}");
        for shape in Shape::ALL {
            assert!(all_scenes().any(|s| s.shape == shape && Split::Train.admits(&s)));
            assert!(held.iter().any(|s| s.shape == shape), "{shape:?} held out");
        }
        for c in Colour::ALL {
            assert!(all_scenes().any(|s| s.colour == c && Split::Train.admits(&s)));
            assert!(all_scenes().any(|s| s.background == c && Split::Train.admits(&s)));
        }
    }

    #[test]
    fn items_depend_only_on_seed_index_and_split() {
        let a: Vec<_> = (0..50).map(|i| item(7, i, Split::Train)).collect();
        let b: Vec<_> = (0..50).rev().map(|i| item(7, i, Split::Train)).collect();
        assert!(a.iter().eq(b.iter().rev()));
        assert_ne!(
            a,
            (0..50)
                .map(|i| item(8, i, Split::Train))
                .collect::<Vec<_>>()
        );
        assert!(a.iter().all(|(s, _)| Split::Train.admits(s)));
        let distinct: std::collections::HashSet<_> = a.iter().map(|(s, _)| *s).collect();
        assert!(distinct.len() > 40, "{}", distinct.len());
        let held = held_out_scenes(3, 40);
        assert_eq!(held.len(), 40);
        assert!(held.iter().all(|s| Split::HeldOut.admits(s)));
        assert_eq!(held, held_out_scenes(3, 40));
    }

    #[test]
    fn drawings_put_the_colours_where_the_mask_says() {
        let scene =
            Scene::parse("a large red square at the top left on a blue background").unwrap();
        let side = 64;
        let rgb = scene.draw(side);
        let mask = scene.mask(side);
        assert_eq!(rgb.len(), side * side * 3);
        let pixel = |x: usize, y: usize| &rgb[(y * side + x) * 3..(y * side + x) * 3 + 3];
        // The square spans 0.28 ± 0.21·0.88 of the side: pixels 6..=29.
        assert_eq!(pixel(18, 18), Colour::Red.rgb());
        assert_eq!(pixel(50, 50), Colour::Blue.rgb());
        assert!(mask[18 * side + 18] && !mask[50 * side + 50]);
        let covered = mask.iter().filter(|m| **m).count();
        let expected = (0.21f32 * 0.88 * 2.0 * 64.0).powi(2);
        assert!(
            (covered as f32 - expected).abs() < 0.06 * expected,
            "{covered} vs {expected}"
        );
        // Every shape covers a comparable area at one size, and a ring less than a circle.
        let area = |shape| {
            Scene { shape, ..scene }
                .mask(side)
                .iter()
                .filter(|m| **m)
                .count() as f32
        };
        for shape in Shape::ALL {
            let a = area(shape) / area(Shape::Circle);
            assert!((0.45..1.3).contains(&a), "{shape:?}: {a}");
        }
        assert!(area(Shape::Ring) < area(Shape::Circle));
        // Edges are mixed, not jagged: some pixels are neither colour.
        assert!(
            rgb.chunks(3)
                .any(|p| p != Colour::Red.rgb() && p != Colour::Blue.rgb())
        );
    }

    #[test]
    fn a_written_set_reads_back_as_its_captions_and_drawings() {
        let dir = tempfile::tempdir().unwrap();
        let mut seen = Vec::new();
        let scenes =
            write_pictures(dir.path(), 4, 3, 32, Split::HeldOut, |n| seen.push(n)).unwrap();
        assert_eq!(seen, [1, 2, 3]);
        let lines = std::fs::read_to_string(dir.path().join(CAPTIONS_JSONL)).unwrap();
        for (i, (line, scene)) in lines.lines().zip(&scenes).enumerate() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["file"], format!("{i:06}.png"));
            assert_eq!(
                Scene::parse(v["caption"].as_str().unwrap()).unwrap(),
                *scene
            );
            let image =
                crate::metrics::images::load_rgb(&dir.path().join(format!("{i:06}.png"))).unwrap();
            assert_eq!(image.data, scene.draw(32));
        }
        assert_eq!(lines.lines().count(), 3);
        let csv = std::fs::read_to_string(dir.path().join(PROMPTS_CSV)).unwrap();
        let prompts = crate::calib::prompts::parse_prompts(&csv, PROMPTS_CSV).unwrap();
        assert_eq!(
            prompts,
            scenes.iter().map(Scene::caption).collect::<Vec<_>>()
        );
    }
}
