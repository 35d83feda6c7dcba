//! Image decoding (PNG, JPEG) and preprocessing: channels, resize of the short side, centre
//! crop, normalisation. Every error names the image.

use crate::error::{Error, Result};

/// A decoded image: `h × w × c` floats in [0, 1].
#[derive(Clone, Debug)]
pub struct Image {
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub data: Vec<f32>,
}

fn bad(name: &str, why: impl std::fmt::Display) -> Error {
    Error::InvalidArgument {
        what: format!("image `{name}`"),
        fix: format!("{why}; it is not a readable PNG or JPEG"),
    }
}

/// Decodes PNG or JPEG bytes (by their signature); `name` appears in errors.
pub fn decode(bytes: &[u8], name: &str) -> Result<Image> {
    if bytes.starts_with(b"\x89PNG") {
        let mut dec = png::Decoder::new(bytes);
        dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
        let mut reader = dec.read_info().map_err(|e| bad(name, e))?;
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).map_err(|e| bad(name, e))?;
        let c = match info.color_type {
            png::ColorType::Grayscale => 1,
            png::ColorType::GrayscaleAlpha => 2,
            png::ColorType::Rgb => 3,
            png::ColorType::Rgba => 4,
            png::ColorType::Indexed => return Err(bad(name, "indexed colour was not expanded")),
        };
        let (w, h) = (info.width as usize, info.height as usize);
        let data = buf[..w * h * c]
            .iter()
            .map(|&b| f32::from(b) / 255.0)
            .collect();
        Ok(Image { h, w, c, data })
    } else if bytes.starts_with(&[0xFF, 0xD8]) {
        let mut dec = jpeg_decoder::Decoder::new(bytes);
        let pixels = dec.decode().map_err(|e| bad(name, e))?;
        let info = dec
            .info()
            .ok_or_else(|| bad(name, "no image information"))?;
        let c = match info.pixel_format {
            jpeg_decoder::PixelFormat::L8 => 1,
            jpeg_decoder::PixelFormat::RGB24 => 3,
            other => {
                return Err(bad(
                    name,
                    format!("pixel format {other:?} is not supported"),
                ))
            }
        };
        let (w, h) = (info.width as usize, info.height as usize);
        if pixels.len() < w * h * c {
            return Err(bad(name, "the JPEG data is truncated"));
        }
        Ok(Image {
            h,
            w,
            c,
            data: pixels[..w * h * c]
                .iter()
                .map(|&b| f32::from(b) / 255.0)
                .collect(),
        })
    } else {
        Err(bad(name, "unknown file signature"))
    }
}

impl Image {
    /// Converts to `c` channels: grey ↔ RGB, alpha composited on white.
    pub fn to_channels(&self, c: usize) -> Image {
        let mut out = Vec::with_capacity(self.h * self.w * c);
        for px in self.data.chunks_exact(self.c) {
            let (rgb, a) = match self.c {
                1 => ([px[0]; 3], 1.0),
                2 => ([px[0]; 3], px[1]),
                3 => ([px[0], px[1], px[2]], 1.0),
                _ => ([px[0], px[1], px[2]], px[3]),
            };
            let rgb = rgb.map(|v| v * a + (1.0 - a));
            if c == 1 {
                out.push(0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]);
            } else {
                out.extend_from_slice(&rgb[..c.min(3)]);
            }
        }
        Image {
            h: self.h,
            w: self.w,
            c,
            data: out,
        }
    }

    /// Bilinear resize to `h × w` (pixel centres aligned).
    pub fn resize(&self, h: usize, w: usize) -> Image {
        if h == self.h && w == self.w {
            return self.clone();
        }
        let mut out = vec![0f32; h * w * self.c];
        let sy = self.h as f32 / h as f32;
        let sx = self.w as f32 / w as f32;
        for y in 0..h {
            let fy = ((y as f32 + 0.5) * sy - 0.5).clamp(0.0, (self.h - 1) as f32);
            let (y0, ty) = (fy.floor() as usize, fy - fy.floor());
            let y1 = (y0 + 1).min(self.h - 1);
            for x in 0..w {
                let fx = ((x as f32 + 0.5) * sx - 0.5).clamp(0.0, (self.w - 1) as f32);
                let (x0, tx) = (fx.floor() as usize, fx - fx.floor());
                let x1 = (x0 + 1).min(self.w - 1);
                for ch in 0..self.c {
                    let p = |yy: usize, xx: usize| self.data[(yy * self.w + xx) * self.c + ch];
                    let top = p(y0, x0) * (1.0 - tx) + p(y0, x1) * tx;
                    let bot = p(y1, x0) * (1.0 - tx) + p(y1, x1) * tx;
                    out[(y * w + x) * self.c + ch] = top * (1.0 - ty) + bot * ty;
                }
            }
        }
        Image {
            h,
            w,
            c: self.c,
            data: out,
        }
    }

    /// Resizes the short side to `size`, then crops the centre `size × size`.
    pub fn resize_center_crop(&self, size: usize) -> Image {
        let scale = size as f32 / self.h.min(self.w) as f32;
        let nh = ((self.h as f32 * scale).round() as usize).max(size);
        let nw = ((self.w as f32 * scale).round() as usize).max(size);
        let r = self.resize(nh, nw);
        let (oy, ox) = ((nh - size) / 2, (nw - size) / 2);
        let mut out = Vec::with_capacity(size * size * self.c);
        for y in 0..size {
            let row = ((oy + y) * nw + ox) * self.c;
            out.extend_from_slice(&r.data[row..row + size * self.c]);
        }
        Image {
            h: size,
            w: size,
            c: self.c,
            data: out,
        }
    }

    /// `(x - mean) / std` per channel (a single value applies to every channel).
    pub fn normalize(&mut self, mean: &[f64], std: &[f64]) {
        for (i, v) in self.data.iter_mut().enumerate() {
            let ch = i % self.c;
            let m = mean.get(ch).or(mean.first()).copied().unwrap_or(0.0) as f32;
            let s = std.get(ch).or(std.first()).copied().unwrap_or(1.0) as f32;
            *v = (*v - m) / s;
        }
    }
}

impl Image {
    /// Inception-style random-resized crop: a window of 8–100% of the area with aspect ratio in
    /// [3/4, 4/3] at a random place, resized to `size × size`. `r` yields uniforms in [0, 1).
    pub fn random_resized_crop(&self, size: usize, r: &mut impl FnMut() -> f64) -> Image {
        let area = (self.h * self.w) as f64;
        for _ in 0..10 {
            let target = area * (0.08 + 0.92 * r());
            let ratio =
                ((3.0f64 / 4.0).ln() + r() * ((4.0f64 / 3.0).ln() - (3.0f64 / 4.0).ln())).exp();
            let w = (target * ratio).sqrt().round() as usize;
            let h = (target / ratio).sqrt().round() as usize;
            if w >= 1 && h >= 1 && w <= self.w && h <= self.h {
                let y0 = ((self.h - h) as f64 * r()) as usize;
                let x0 = ((self.w - w) as f64 * r()) as usize;
                let mut data = Vec::with_capacity(h * w * self.c);
                for y in y0..y0 + h {
                    let row = (y * self.w + x0) * self.c;
                    data.extend_from_slice(&self.data[row..row + w * self.c]);
                }
                return Image {
                    h,
                    w,
                    c: self.c,
                    data,
                }
                .resize(size, size);
            }
        }
        self.resize_center_crop(size)
    }
}

/// Decodes, augments with a random-resized crop seeded by `seed`, and normalises.
pub fn preprocess_augmented(
    bytes: &[u8],
    name: &str,
    size: usize,
    channels: usize,
    mean: &[f64],
    std: &[f64],
    seed: u64,
) -> Result<Vec<f32>> {
    let mut rng = crate::seed::SplitMix(seed);
    let mut img = decode(bytes, name)?
        .to_channels(channels)
        .random_resized_crop(size, &mut || rng.uniform());
    img.normalize(mean, std);
    Ok(img.data)
}

/// Decodes and preprocesses to the model's input: `size × size × channels`, normalised.
pub fn preprocess(
    bytes: &[u8],
    name: &str,
    size: usize,
    channels: usize,
    mean: &[f64],
    std: &[f64],
) -> Result<Vec<f32>> {
    let img = decode(bytes, name)?
        .to_channels(channels)
        .resize_center_crop(size);
    let mut img = img;
    img.normalize(mean, std);
    Ok(img.data)
}

/// Encodes 8-bit grey or RGB pixels as PNG.
pub fn encode_png(w: u32, h: u32, channels: usize, pixels: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(if channels == 1 {
            png::ColorType::Grayscale
        } else {
            png::ColorType::Rgb
        });
        enc.set_depth(png::BitDepth::Eight);
        let mut wr = enc
            .write_header()
            .map_err(|e| Error::Array(format!("PNG encoding: {e}")))?;
        wr.write_image_data(pixels)
            .map_err(|e| Error::Array(format!("PNG encoding: {e}")))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient_png(w: u32, h: u32) -> Vec<u8> {
        let px: Vec<u8> = (0..w * h)
            .map(|i| ((i % w) * 255 / (w - 1)) as u8)
            .collect();
        encode_png(w, h, 1, &px).unwrap()
    }

    #[test]
    fn decode_resize_and_crop() {
        let png = gradient_png(8, 4);
        let img = decode(&png, "g").unwrap();
        assert_eq!((img.h, img.w, img.c), (4, 8, 1));
        assert_eq!(img.data[0], 0.0);
        assert_eq!(img.data[7], 1.0);
        // The short side becomes 2, then the centre 2×2 of a 4-wide row is kept.
        let c = img.resize_center_crop(2);
        assert_eq!((c.h, c.w), (2, 2));
        assert!(c.data[0] > 0.2 && c.data[1] < 0.8, "{:?}", c.data);
        let rgb = img.to_channels(3);
        assert_eq!(rgb.data[21..24], [1.0, 1.0, 1.0]);
        assert!(decode(b"GIF89a....", "x").is_err());
    }

    #[test]
    fn random_resized_crops_are_reproducible_by_seed() {
        let png = gradient_png(16, 16);
        let a = preprocess_augmented(&png, "g", 8, 1, &[0.0], &[1.0], 7).unwrap();
        let b = preprocess_augmented(&png, "g", 8, 1, &[0.0], &[1.0], 7).unwrap();
        let c = preprocess_augmented(&png, "g", 8, 1, &[0.0], &[1.0], 8).unwrap();
        assert_eq!(a.len(), 64);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
