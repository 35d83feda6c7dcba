//! Image decoding (PNG, JPEG, WebP) and preprocessing: channels, resize of the short side, centre
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
    Error::invalid(
        format!("image `{name}`"),
        format!("{why}; it is not a readable PNG, JPEG or WebP"),
    )
}

/// Decoded 8-bit samples as the file stores them: `h × w × c`, `c` being 1 (grey), 2 (grey and
/// alpha), 3 (RGB) or 4 (RGBA).
#[derive(Clone, Debug)]
pub struct Pixels {
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub data: Vec<u8>,
}

/// `b / 255` for every byte `b`: the float each 8-bit sample decodes to.
static UNIT: [f32; 256] = {
    let mut t = [0f32; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = i as f32 / 255.0;
        i += 1;
    }
    t
};

/// What [`Image::to_channels`] makes of a grey byte converted to grey: the luma mix of three
/// equal values, which is not always the value itself in floats.
static GREY: [f32; 256] = {
    let mut t = [0f32; 256];
    let mut i = 0;
    while i < 256 {
        // Compositing on white with alpha 1 (`v * 1 + 0`) leaves `v` as it is.
        let v = UNIT[i];
        t[i] = 0.299 * v + 0.587 * v + 0.114 * v;
        i += 1;
    }
    t
};

/// The most pixels an image may have (8192 × 8192): its header is checked against this before
/// anything is allocated for the pixels, so a small file that claims a huge image is refused.
pub const MAX_PIXELS: u64 = 1 << 26;

/// Refuses an image of `w × h` pixels past [`MAX_PIXELS`], or with no pixels.
fn check_size(name: &str, w: u64, h: u64) -> Result<()> {
    if w == 0 || h == 0 || w.saturating_mul(h) > MAX_PIXELS {
        return Err(bad(
            name,
            format!(
                "it claims {w}×{h} pixels; basic decodes images of 1 to {MAX_PIXELS} pixels \
                 (resize larger ones when making the shards)"
            ),
        ));
    }
    Ok(())
}

/// Decodes PNG, JPEG or WebP bytes (by their signature) to 8-bit samples; `name` appears in errors.
pub fn decode_pixels(bytes: &[u8], name: &str) -> Result<Pixels> {
    if bytes.starts_with(b"\x89PNG") {
        let mut dec = png::Decoder::new(bytes);
        dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
        let mut reader = dec.read_info().map_err(|e| bad(name, e))?;
        let info = reader.info();
        check_size(name, info.width.into(), info.height.into())?;
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
        buf.truncate(w * h * c);
        Ok(Pixels { h, w, c, data: buf })
    } else if bytes.starts_with(&[0xFF, 0xD8]) {
        // jpeg-decoder, not the 17% faster zune-jpeg: zune's IDCT rounds differently (up to
        // 4/255 per sample, 0.015 after 224 px preprocessing), and basic's pixels must stay the
        // ones it trained on (benches/pipeline.rs measures both).
        let mut dec = jpeg_decoder::Decoder::new(bytes);
        dec.read_info().map_err(|e| bad(name, e))?;
        let info = dec
            .info()
            .ok_or_else(|| bad(name, "no image information"))?;
        check_size(name, info.width.into(), info.height.into())?;
        // Planes and coefficients of up to four components, beside the output.
        dec.set_max_decoding_buffer_size((MAX_PIXELS * 16) as usize);
        let data = dec.decode().map_err(|e| bad(name, e))?;
        let info = dec
            .info()
            .ok_or_else(|| bad(name, "no image information"))?;
        let c = match info.pixel_format {
            jpeg_decoder::PixelFormat::L8 => 1,
            jpeg_decoder::PixelFormat::RGB24 => 3,
            other => {
                return Err(bad(
                    name,
                    format!("colour space {other:?} is not supported"),
                ))
            }
        };
        let (w, h) = (info.width as usize, info.height as usize);
        if data.len() < w * h * c {
            return Err(bad(name, "the JPEG data is truncated"));
        }
        let mut data = data;
        data.truncate(w * h * c);
        Ok(Pixels { h, w, c, data })
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        decode_webp(bytes, name)
    } else {
        Err(bad(name, "unknown file signature"))
    }
}

/// WebP (img2dataset's `--output_format webdataset --encode_format webp`) through `image-webp`,
/// the pure-Rust decoder of the image-rs project; an animation gives its first frame.
fn decode_webp(bytes: &[u8], name: &str) -> Result<Pixels> {
    let mut dec =
        image_webp::WebPDecoder::new(std::io::Cursor::new(bytes)).map_err(|e| bad(name, e))?;
    let (w, h) = dec.dimensions();
    check_size(name, w.into(), h.into())?;
    let c = if dec.has_alpha() { 4 } else { 3 };
    let n = dec
        .output_buffer_size()
        .ok_or_else(|| bad(name, "the WebP image is too large"))?;
    let mut data = vec![0; n];
    dec.read_image(&mut data).map_err(|e| bad(name, e))?;
    let (w, h) = (w as usize, h as usize);
    if data.len() < w * h * c {
        return Err(bad(name, "the WebP data is truncated"));
    }
    data.truncate(w * h * c);
    Ok(Pixels { h, w, c, data })
}

/// Decodes PNG or JPEG bytes (by their signature) to floats in [0, 1]; `name` appears in errors.
pub fn decode(bytes: &[u8], name: &str) -> Result<Image> {
    Ok(decode_pixels(bytes, name)?.to_image())
}

impl Pixels {
    /// The samples as floats in [0, 1].
    pub fn to_image(&self) -> Image {
        Image {
            h: self.h,
            w: self.w,
            c: self.c,
            data: self.data.iter().map(|&b| UNIT[usize::from(b)]).collect(),
        }
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
        let p = Plan::center(self.h, self.w, size);
        let r = self.resize(p.nh, p.nw);
        let mut out = Vec::with_capacity(size * size * self.c);
        for y in 0..size {
            let row = ((p.oy + y) * p.nw + p.ox) * self.c;
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
        let (m, s) = per_channel(mean, std, self.c);
        for (i, v) in self.data.iter_mut().enumerate() {
            let ch = i % self.c;
            *v = (*v - m[ch]) / s[ch];
        }
    }

    /// Inception-style random-resized crop: a window of 8–100% of the area with aspect ratio in
    /// [3/4, 4/3] at a random place, resized to `size × size`. `r` yields uniforms in [0, 1).
    pub fn random_resized_crop(&self, size: usize, r: &mut impl FnMut() -> f64) -> Image {
        let Some(Window { y0, x0, h, w }) = random_window(self.h, self.w, r) else {
            return self.resize_center_crop(size);
        };
        let mut data = Vec::with_capacity(h * w * self.c);
        for y in y0..y0 + h {
            let row = (y * self.w + x0) * self.c;
            data.extend_from_slice(&self.data[row..row + w * self.c]);
        }
        Image {
            h,
            w,
            c: self.c,
            data,
        }
        .resize(size, size)
    }
}

/// Per-channel mean and standard deviation as floats (a single value applies to every channel;
/// none means 0 and 1).
pub(crate) fn per_channel(mean: &[f64], std: &[f64], c: usize) -> (Vec<f32>, Vec<f32>) {
    let pick =
        |v: &[f64], ch: usize, or: f64| v.get(ch).or(v.first()).copied().unwrap_or(or) as f32;
    (
        (0..c).map(|ch| pick(mean, ch, 0.0)).collect(),
        (0..c).map(|ch| pick(std, ch, 1.0)).collect(),
    )
}

/// A rectangle of an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Window {
    y0: usize,
    x0: usize,
    h: usize,
    w: usize,
}

/// The random-resized crop's window of an `h × w` image, or `None` when ten tries found none
/// (the crop then falls back to the centre crop). Draws from `r` in a fixed order.
fn random_window(h: usize, w: usize, r: &mut impl FnMut() -> f64) -> Option<Window> {
    let area = (h * w) as f64;
    for _ in 0..10 {
        let target = area * (0.08 + 0.92 * r());
        let ratio = ((3.0f64 / 4.0).ln() + r() * ((4.0f64 / 3.0).ln() - (3.0f64 / 4.0).ln())).exp();
        let cw = (target * ratio).sqrt().round() as usize;
        let ch = (target / ratio).sqrt().round() as usize;
        if cw >= 1 && ch >= 1 && cw <= w && ch <= h {
            let y0 = ((h - ch) as f64 * r()) as usize;
            let x0 = ((w - cw) as f64 * r()) as usize;
            return Some(Window {
                y0,
                x0,
                h: ch,
                w: cw,
            });
        }
    }
    None
}

/// What a preprocessed image samples: the window `src` of the source, resized to `nh × nw`, of
/// which the output is the `size × size` square at `(oy, ox)`.
#[derive(Clone, Copy, Debug)]
struct Plan {
    src: Window,
    nh: usize,
    nw: usize,
    oy: usize,
    ox: usize,
    size: usize,
}

impl Plan {
    /// The short side resized to `size`, the centre `size × size` kept.
    fn center(h: usize, w: usize, size: usize) -> Plan {
        let scale = size as f32 / h.min(w) as f32;
        let nh = ((h as f32 * scale).round() as usize).max(size);
        let nw = ((w as f32 * scale).round() as usize).max(size);
        Plan {
            src: Window { y0: 0, x0: 0, h, w },
            nh,
            nw,
            oy: (nh - size) / 2,
            ox: (nw - size) / 2,
            size,
        }
    }

    /// The window resized to `size × size`.
    fn window(src: Window, size: usize) -> Plan {
        Plan {
            src,
            nh: size,
            nw: size,
            oy: 0,
            ox: 0,
            size,
        }
    }
}

/// One output position's two source neighbours along an axis and their weights.
#[derive(Clone, Copy, Debug)]
struct Tap {
    i0: usize,
    i1: usize,
    w0: f32,
    w1: f32,
}

/// The taps of outputs `from..from + n` when `len` samples starting at `at` resize to `to`:
/// pixel centres aligned, clamped at the edges, in the same float steps as [`Image::resize`].
fn taps(at: usize, len: usize, to: usize, from: usize, n: usize) -> Vec<Tap> {
    let s = len as f32 / to as f32;
    (from..from + n)
        .map(|i| {
            let f = ((i as f32 + 0.5) * s - 0.5).clamp(0.0, (len - 1) as f32);
            let (i0, t) = (f.floor() as usize, f - f.floor());
            Tap {
                i0: at + i0,
                i1: at + (i0 + 1).min(len - 1),
                w0: 1.0 - t,
                w1: t,
            }
        })
        .collect()
}

/// A source sample as a float in [0, 1].
/// Bytes map through a table of 256 values (the conversion the reference makes of each);
/// floats are taken as they are.
trait Unit: Copy {
    fn unit(self, table: &[f32; 256]) -> f32;
}

impl Unit for u8 {
    #[inline(always)]
    fn unit(self, table: &[f32; 256]) -> f32 {
        table[usize::from(self)]
    }
}

impl Unit for f32 {
    #[inline(always)]
    fn unit(self, _: &[f32; 256]) -> f32 {
        self
    }
}

/// One source row resampled horizontally at the taps: `C` channels per pixel.
fn horizontal<T: Unit, const C: usize>(row: &[T], table: &[f32; 256], xs: &[Tap], out: &mut [f32]) {
    for (t, o) in xs.iter().zip(out.chunks_exact_mut(C)) {
        let (a, b) = (&row[t.i0 * C..t.i0 * C + C], &row[t.i1 * C..t.i1 * C + C]);
        for ch in 0..C {
            o[ch] = a[ch].unit(table) * t.w0 + b[ch].unit(table) * t.w1;
        }
    }
}

/// [`horizontal`] for any channel count.
fn horizontal_any<T: Unit>(row: &[T], table: &[f32; 256], c: usize, xs: &[Tap], out: &mut [f32]) {
    match c {
        1 => horizontal::<T, 1>(row, table, xs, out),
        2 => horizontal::<T, 2>(row, table, xs, out),
        3 => horizontal::<T, 3>(row, table, xs, out),
        4 => horizontal::<T, 4>(row, table, xs, out),
        _ => {
            for (t, o) in xs.iter().zip(out.chunks_exact_mut(c)) {
                for (ch, v) in o.iter_mut().enumerate() {
                    *v = row[t.i0 * c + ch].unit(table) * t.w0
                        + row[t.i1 * c + ch].unit(table) * t.w1;
                }
            }
        }
    }
}

/// Bilinear resampling by `p` of an image `w` pixels wide with `c` channels, normalised, into
/// `out` (`size × size × oc`). `oc` is `c`, or 3 from a grey source (the grey value in each
/// channel). The horizontal pass runs on the source rows the output needs (each once, while it is
/// one of the two last used), the vertical pass and the normalisation on the output: the same float
/// operations in the same order as [`Image::resize`] then [`Image::normalize`], so the same values.
#[allow(clippy::too_many_arguments)]
fn resample<T: Unit>(
    src: &[T],
    table: &[f32; 256],
    w: usize,
    c: usize,
    oc: usize,
    p: &Plan,
    mean: &[f32],
    std: &[f32],
    out: &mut [f32],
) {
    let size = p.size;
    let xs = taps(p.src.x0, p.src.w, p.nw, p.ox, size);
    let ys = taps(p.src.y0, p.src.h, p.nh, p.oy, size);
    let n = size * c;
    let mut rows = [(usize::MAX, vec![0f32; n]), (usize::MAX, vec![0f32; n])];
    let fill = |rows: &mut [(usize, Vec<f32>); 2], slot: usize, y: usize| {
        horizontal_any(
            &src[y * w * c..(y + 1) * w * c],
            table,
            c,
            &xs,
            &mut rows[slot].1,
        );
        rows[slot].0 = y;
    };
    // The mean and deviation for each output value of a row, so that the vertical pass is one
    // flat loop.
    let (mrow, srow): (Vec<f32>, Vec<f32>) =
        (0..size * oc).map(|i| (mean[i % oc], std[i % oc])).unzip();
    for (t, o) in ys.iter().zip(out.chunks_exact_mut(size * oc)) {
        let a = match rows.iter().position(|r| r.0 == t.i0) {
            Some(s) => s,
            None => {
                let s = usize::from(rows[0].0 == t.i1);
                fill(&mut rows, s, t.i0);
                s
            }
        };
        let b = match rows.iter().position(|r| r.0 == t.i1) {
            Some(s) => s,
            None => {
                fill(&mut rows, 1 - a, t.i1);
                1 - a
            }
        };
        let (top, bot) = (&rows[a].1, &rows[b].1);
        if oc == c {
            for i in 0..n {
                o[i] = (top[i] * t.w0 + bot[i] * t.w1 - mrow[i]) / srow[i];
            }
        } else {
            for (x, px) in o.chunks_exact_mut(oc).enumerate() {
                let v = top[x] * t.w0 + bot[x] * t.w1;
                for (ch, q) in px.iter_mut().enumerate() {
                    *q = (v - mean[ch]) / std[ch];
                }
            }
        }
    }
}

/// Preprocesses decoded samples to the model's input into `out` (`size × size × channels`,
/// normalised): with `seed`, a random-resized crop drawn from it, else the short side resized
/// to `size` and the centre kept. `name` appears in errors.
#[allow(clippy::too_many_arguments)]
pub fn preprocess_pixels_into(
    px: &Pixels,
    name: &str,
    size: usize,
    channels: usize,
    mean: &[f64],
    std: &[f64],
    seed: Option<u64>,
    out: &mut [f32],
) -> Result<()> {
    if out.len() != size * size * channels {
        return Err(Error::Internal(format!(
            "image `{name}`: an output of {} values for {size}×{size}×{channels}",
            out.len()
        )));
    }
    let plan = match seed {
        None => Plan::center(px.h, px.w, size),
        Some(seed) => {
            let mut rng = crate::seed::SplitMix(seed);
            match random_window(px.h, px.w, &mut || rng.uniform()) {
                Some(win) => Plan::window(win, size),
                None => Plan::center(px.h, px.w, size),
            }
        }
    };
    let (m, s) = per_channel(mean, std, channels);
    match (px.c, channels) {
        // Channel conversions that map each byte to one value: resample the bytes.
        (1, 1) => resample(&px.data, &GREY, px.w, 1, 1, &plan, &m, &s, out),
        (3, 3) | (1, 3) => resample(&px.data, &UNIT, px.w, px.c, channels, &plan, &m, &s, out),
        // Compositing alpha and mixing colours to grey need several samples: convert first.
        _ => {
            let img = px.to_image().to_channels(channels);
            resample(&img.data, &UNIT, img.w, img.c, img.c, &plan, &m, &s, out)
        }
    }
    Ok(())
}

/// Decodes and preprocesses to the model's input into `out` (`size × size × channels`,
/// normalised): the short side resized to `size`, the centre kept.
pub fn preprocess_into(
    bytes: &[u8],
    name: &str,
    size: usize,
    channels: usize,
    mean: &[f64],
    std: &[f64],
    out: &mut [f32],
) -> Result<()> {
    let px = decode_pixels(bytes, name)?;
    preprocess_pixels_into(&px, name, size, channels, mean, std, None, out)
}

/// [`preprocess_into`] with a random-resized crop seeded by `seed` instead of the centre crop.
#[allow(clippy::too_many_arguments)]
pub fn preprocess_augmented_into(
    bytes: &[u8],
    name: &str,
    size: usize,
    channels: usize,
    mean: &[f64],
    std: &[f64],
    seed: u64,
    out: &mut [f32],
) -> Result<()> {
    let px = decode_pixels(bytes, name)?;
    preprocess_pixels_into(&px, name, size, channels, mean, std, Some(seed), out)
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
    let mut out = vec![0f32; size * size * channels];
    preprocess_augmented_into(bytes, name, size, channels, mean, std, seed, &mut out)?;
    Ok(out)
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
    let mut out = vec![0f32; size * size * channels];
    preprocess_into(bytes, name, size, channels, mean, std, &mut out)?;
    Ok(out)
}

/// The reference pipeline: decode to floats, convert channels, resize the whole image, crop,
/// normalise, one step after another. [`preprocess`] and [`preprocess_augmented`] give the same
/// values faster; tests and the pipeline bench compare the two.
#[allow(clippy::too_many_arguments)]
pub fn preprocess_reference(
    img: &Image,
    size: usize,
    channels: usize,
    mean: &[f64],
    std: &[f64],
    seed: Option<u64>,
) -> Vec<f32> {
    let img = img.to_channels(channels);
    let mut img = match seed {
        None => img.resize_center_crop(size),
        Some(seed) => {
            let mut rng = crate::seed::SplitMix(seed);
            img.random_resized_crop(size, &mut || rng.uniform())
        }
    };
    img.normalize(mean, std);
    img.data
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
    fn webp_decodes_to_its_pixels() {
        let (w, h) = (7u32, 5u32);
        let px: Vec<u8> = (0..w * h * 3).map(|i| (i * 37 % 256) as u8).collect();
        let mut webp = Vec::new();
        image_webp::WebPEncoder::new(&mut webp)
            .encode(&px, w, h, image_webp::ColorType::Rgb8)
            .unwrap();
        let got = decode_pixels(&webp, "k.webp").unwrap();
        assert_eq!((got.w, got.h, got.c), (7, 5, 3));
        assert_eq!(got.data, px, "lossless WebP gives its pixels back");
        let e = decode_pixels(&webp[..webp.len() / 2], "cut.webp")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cut.webp"), "{e}");
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

    /// PNG bytes of `c`-channel 8-bit samples (grey, grey + alpha, RGB, RGBA).
    fn png_of(w: u32, h: u32, c: usize, px: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(match c {
            1 => png::ColorType::Grayscale,
            2 => png::ColorType::GrayscaleAlpha,
            3 => png::ColorType::Rgb,
            _ => png::ColorType::Rgba,
        });
        enc.set_depth(png::BitDepth::Eight);
        enc.write_header().unwrap().write_image_data(px).unwrap();
        out
    }

    /// Noise over a smooth gradient, so that neighbouring samples differ.
    fn photo_like(w: usize, h: usize, c: usize, seed: u64) -> Vec<u8> {
        let mut r = crate::seed::SplitMix(seed);
        (0..w * h * c)
            .map(|i| {
                let (x, y) = ((i / c) % w, (i / c) / w);
                let base = (x * 255 / w.max(2) + y * 128 / h.max(2)) % 256;
                ((base as f64 + 60.0 * (r.uniform() - 0.5)).clamp(0.0, 255.0)) as u8
            })
            .collect()
    }

    #[test]
    fn the_byte_tables_are_the_reference_conversions() {
        let grey = Image {
            h: 1,
            w: 256,
            c: 1,
            data: (0..=255u8).map(|b| f32::from(b) / 255.0).collect(),
        };
        let mixed = grey.to_channels(1);
        for b in 0..=255u8 {
            let i = usize::from(b);
            assert_eq!(UNIT[i].to_bits(), grey.data[i].to_bits(), "{b}");
            assert_eq!(GREY[i].to_bits(), mixed.data[i].to_bits(), "{b}");
        }
    }

    /// The fused resampler gives exactly the reference pipeline's values (decode to floats,
    /// convert channels, resize the whole image, crop, normalise), for every channel conversion,
    /// downscaling, upscaling and the identity, centre and random-resized crops.
    #[test]
    fn the_fast_pipeline_equals_the_reference_exactly() {
        let (mean, std) = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
        let shapes = [
            (37, 100),
            (100, 37),
            (24, 24),
            (5, 7),
            (1, 9),
            (64, 48),
            (300, 451),
        ];
        for (k, &(h, w)) in shapes.iter().enumerate() {
            for c in 1..=4 {
                let png = png_of(w as u32, h as u32, c, &photo_like(w, h, c, k as u64));
                let reference = decode(&png, "p").unwrap();
                for channels in [1, 3] {
                    for size in [24, 7] {
                        for seed in [None, Some(1), Some(2), Some(99)] {
                            let want =
                                preprocess_reference(&reference, size, channels, &mean, &std, seed);
                            let got = match seed {
                                None => preprocess(&png, "p", size, channels, &mean, &std),
                                Some(s) => {
                                    preprocess_augmented(&png, "p", size, channels, &mean, &std, s)
                                }
                            }
                            .unwrap();
                            let same = want
                                .iter()
                                .zip(&got)
                                .all(|(a, b)| a.to_bits() == b.to_bits());
                            assert!(
                                same && want.len() == got.len(),
                                "{h}×{w}×{c} → {size}×{size}×{channels}, seed {seed:?}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn errors_name_the_image() {
        let png = gradient_png(8, 4);
        for bad in [
            &b"GIF89a...."[..],
            &png[..png.len() / 2],
            &[0xFF, 0xD8, 0xFF, 0xE0, 0, 4],
        ] {
            let e = preprocess(bad, "shard-3/key-17", 4, 3, &[0.5], &[0.5])
                .unwrap_err()
                .to_string();
            assert!(e.contains("shard-3/key-17"), "{e}");
        }
        let mut out = vec![0f32; 5];
        let e = preprocess_into(&png, "key-9", 4, 3, &[0.5], &[0.5], &mut out).unwrap_err();
        assert!(e.to_string().contains("key-9"), "{e}");
    }
}
