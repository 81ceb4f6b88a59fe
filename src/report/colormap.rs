//! Colour maps shared by the app's previews and the exported figures.

/// Viridis, from its published control points (t in [0, 1]).
pub fn viridis(t: f32) -> [u8; 3] {
    const P: [[f32; 3]; 9] = [
        [68.0, 1.0, 84.0],
        [71.0, 44.0, 122.0],
        [59.0, 81.0, 139.0],
        [44.0, 113.0, 142.0],
        [33.0, 144.0, 141.0],
        [39.0, 173.0, 129.0],
        [92.0, 200.0, 99.0],
        [170.0, 220.0, 50.0],
        [253.0, 231.0, 37.0],
    ];
    interpolate(&P, t)
}

/// A blue–white–red diverging map for signed values (t in [-1, 1]).
pub fn diverging(t: f32) -> [u8; 3] {
    const P: [[f32; 3]; 5] = [
        [33.0, 102.0, 172.0],
        [146.0, 197.0, 222.0],
        [247.0, 247.0, 247.0],
        [244.0, 165.0, 130.0],
        [178.0, 24.0, 43.0],
    ];
    interpolate(&P, (t + 1.0) / 2.0)
}

/// A difference map as RGB pixels: |Δ| (0..=255) times `gain`, saturating at 255, through
/// viridis (dark: unchanged; yellow: |Δ|·gain ≥ 255). The colour bar of this view runs from 0
/// to `255 / gain` levels of |Δ|.
pub fn difference_rgb(diff: &[u8], gain: f32) -> Vec<u8> {
    // 256 entries: one per |Δ| level.
    let lut: Vec<[u8; 3]> = (0..=255u16)
        .map(|d| viridis(d as f32 * gain / 255.0))
        .collect();
    diff.iter().flat_map(|&d| lut[d as usize]).collect()
}

fn interpolate(points: &[[f32; 3]], t: f32) -> [u8; 3] {
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = t * (points.len() - 1) as f32;
    let i = (x.floor() as usize).min(points.len() - 2);
    let f = x - i as f32;
    let (a, b) = (points[i], points[i + 1]);
    [0, 1, 2].map(|k| (a[k] + (b[k] - a[k]) * f).round() as u8)
}
