//! PNG encoding: the one encoder behind every picture the program writes (generated images,
//! calibration images, report figures, app screenshots), 8 bits per channel, default
//! compression, so the same pixels always give the same bytes.

use std::path::Path;

/// How the pixel bytes are laid out: 3 or 4 bytes per pixel, row-major, no padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    Rgb,
    Rgba,
}

impl PixelFormat {
    fn color_type(self) -> png::ColorType {
        match self {
            Self::Rgb => png::ColorType::Rgb,
            Self::Rgba => png::ColorType::Rgba,
        }
    }
}

/// The pixels as PNG bytes. Fails if `pixels` does not hold exactly `width × height` pixels.
pub fn encode_png(
    width: u32,
    height: u32,
    format: PixelFormat,
    pixels: &[u8],
) -> Result<Vec<u8>, png::EncodingError> {
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, width, height);
        enc.set_color(format.color_type());
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header()?;
        w.write_image_data(pixels)?;
    }
    Ok(bytes)
}

/// Writes the pixels as a PNG file, atomically (see [`crate::fsutil::write_atomic`]).
pub fn write_png(
    path: &Path,
    width: u32,
    height: u32,
    format: PixelFormat,
    pixels: &[u8],
) -> std::io::Result<()> {
    let bytes = encode_png(width, height, format, pixels).map_err(std::io::Error::other)?;
    crate::fsutil::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_rgb_and_rgba_and_refuses_a_wrong_length() {
        for (format, channels) in [(PixelFormat::Rgb, 3), (PixelFormat::Rgba, 4)] {
            let pixels: Vec<u8> = (0..2 * 3 * channels).map(|i| (i * 11) as u8).collect();
            let bytes = encode_png(2, 3, format, &pixels).unwrap();
            let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
                .read_info()
                .unwrap();
            let mut buf = vec![0; reader.output_buffer_size().unwrap()];
            let info = reader.next_frame(&mut buf).unwrap();
            assert_eq!((info.width, info.height), (2, 3));
            assert_eq!(info.color_type, format.color_type());
            assert_eq!(&buf[..info.buffer_size()], &pixels[..]);
        }
        assert!(encode_png(2, 3, PixelFormat::Rgb, &[0; 17]).is_err());
    }

    #[test]
    fn writes_the_encoded_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.png");
        let rgb = [255, 0, 0, 0, 255, 0];
        write_png(&path, 2, 1, PixelFormat::Rgb, &rgb).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            encode_png(2, 1, PixelFormat::Rgb, &rgb).unwrap()
        );
    }
}
