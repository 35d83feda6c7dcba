//! Small PNG line plots of training curves (no plotting library): axes, a light grid, the
//! series as a polyline, written as an 8-bit RGB PNG.

use std::path::Path;

use crate::error::Result;

const W: usize = 640;
const H: usize = 400;
const PAD: usize = 40;

fn put(img: &mut [u8], x: i64, y: i64, c: [u8; 3]) {
    if x >= 0 && y >= 0 && (x as usize) < W && (y as usize) < H {
        let i = (y as usize * W + x as usize) * 3;
        img[i..i + 3].copy_from_slice(&c);
    }
}

fn line(img: &mut [u8], (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: [u8; 3]) {
    let n = (x1 - x0).abs().max((y1 - y0).abs()).max(1);
    for k in 0..=n {
        let x = x0 + (x1 - x0) * k / n;
        let y = y0 + (y1 - y0) * k / n;
        put(img, x, y, c);
        put(img, x, y + 1, c);
    }
}

/// Plots `(x, y)` points to `path`. Returns the y range drawn.
pub fn plot(path: &Path, points: &[(f64, f64)]) -> Result<(f64, f64)> {
    let mut img = vec![255u8; W * H * 3];
    let pts: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    let (xmin, xmax) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (ymin, ymax) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let (xmin, xmax) = if xmax > xmin {
        (xmin, xmax)
    } else {
        (xmin - 1.0, xmin + 1.0)
    };
    let (ymin, ymax) = if ymax > ymin {
        (ymin, ymax)
    } else {
        (ymin - 1.0, ymin + 1.0)
    };
    let (pw, ph) = ((W - 2 * PAD) as f64, (H - 2 * PAD) as f64);
    let to_px = |(x, y): (f64, f64)| {
        (
            (PAD as f64 + (x - xmin) / (xmax - xmin) * pw) as i64,
            (H as f64 - PAD as f64 - (y - ymin) / (ymax - ymin) * ph) as i64,
        )
    };
    let grey = [225, 225, 225];
    for k in 0..=4 {
        let y = (PAD as f64 + ph * k as f64 / 4.0) as i64;
        line(&mut img, (PAD as i64, y), ((W - PAD) as i64, y), grey);
        let x = (PAD as f64 + pw * k as f64 / 4.0) as i64;
        line(&mut img, (x, PAD as i64), (x, (H - PAD) as i64), grey);
    }
    let black = [0, 0, 0];
    line(
        &mut img,
        (PAD as i64, (H - PAD) as i64),
        ((W - PAD) as i64, (H - PAD) as i64),
        black,
    );
    line(
        &mut img,
        (PAD as i64, PAD as i64),
        (PAD as i64, (H - PAD) as i64),
        black,
    );
    let blue = [31, 119, 180];
    for w in pts.windows(2) {
        line(&mut img, to_px(w[0]), to_px(w[1]), blue);
    }
    if pts.len() == 1 {
        let (x, y) = to_px(pts[0]);
        for d in -2..=2 {
            put(&mut img, x + d, y, blue);
            put(&mut img, x, y + d, blue);
        }
    }
    let png = crate::data::image::encode_png(W as u32, H as u32, 3, &img)?;
    crate::fs::write_atomic(path, &png)?;
    Ok((ymin, ymax))
}
