//! Input pipeline: JPEG decoding and preprocessing of real photographs to the model's 224 px input,
//! on one thread and through the loader on every core. `benches/pipeline.sh` makes the data
//! (`benches/photos.sh`), runs this and `benches/pipeline_torch.py` in interleaved rounds, and
//! prints medians and ratios.
//!
//! `PIPELINE_DATA` (default `runs/photos`) is a folder of `train-*.tar` shards; `PIPELINE_WHAT` is
//! `pixels` (how far the decoders' and pipelines' values lie apart, once), `loader` (the loader's
//! rates only) or `speed` (one round of every rate, the default). One JSON line per measurement.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use basic::data::image::{decode_pixels, preprocess_pixels_into, preprocess_reference, Pixels};
use basic::data::{Dataset, Loader, LoaderOptions, Position, Sample, Tokenizer};

const SIZE: usize = 224;
const MEAN: [f64; 3] = [0.485, 0.456, 0.406];
const STD: [f64; 3] = [0.229, 0.224, 0.225];
/// How long each rate is measured.
const SPAN: Duration = Duration::from_millis(1500);

/// zune-jpeg, the faster decoder the pipeline does not use (its pixels differ by a few levels).
fn decode_zune(bytes: &[u8]) -> Pixels {
    use zune_core::colorspace::ColorSpace;
    let mut dec = zune_jpeg::JpegDecoder::new(zune_core::bytestream::ZCursor::new(bytes));
    dec.decode_headers().expect("a JPEG");
    let (cs, c) = match dec.input_colorspace() {
        Some(ColorSpace::Luma) => (ColorSpace::Luma, 1),
        _ => (ColorSpace::RGB, 3),
    };
    dec.set_options(dec.options().jpeg_set_out_colorspace(cs));
    let (w, h) = dec.dimensions().expect("its header");
    let mut data = vec![0; w * h * c];
    dec.decode_into(&mut data).expect("a JPEG");
    Pixels { h, w, c, data }
}

/// jpeg-decoder, the pipeline's decoder, optionally with DCT scaling.
fn decode_previous(bytes: &[u8], scale_to: Option<usize>) -> Pixels {
    let mut d = jpeg_decoder::Decoder::new(bytes);
    if let Some(size) = scale_to {
        // DCT scaling: the smallest of 1/8, 1/4, 1/2, 1 that keeps the short side ≥ size.
        d.read_info().expect("a JPEG");
        let info = d.info().expect("its header");
        let (w, h) = (usize::from(info.width), usize::from(info.height));
        let short = w.min(h);
        let want = |v: usize| (v * size).div_ceil(short) as u16;
        d.scale(want(w), want(h)).expect("a scale");
    }
    let data = d.decode().expect("a JPEG");
    let info = d.info().expect("its header");
    let c = match info.pixel_format {
        jpeg_decoder::PixelFormat::L8 => 1,
        _ => 3,
    };
    Pixels {
        h: usize::from(info.height),
        w: usize::from(info.width),
        c,
        data,
    }
}

/// Seconds this thread has run on a core (the machine is shared: other processes take cores).
fn thread_cpu_s() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(f64::NAN, |ns| ns * 1e-9)
}

/// Images per second of `f` over the samples, cycled for `SPAN`: per second of wall time and
/// per second this thread ran.
fn rate(samples: &[Sample], mut f: impl FnMut(usize, &Sample)) -> (f64, f64) {
    let (t, cpu) = (Instant::now(), thread_cpu_s());
    let mut n = 0;
    while t.elapsed() < SPAN {
        for s in samples {
            f(n, s);
            n += 1;
        }
    }
    (
        n as f64 / t.elapsed().as_secs_f64(),
        n as f64 / (thread_cpu_s() - cpu),
    )
}

fn line(what: &str, threads: usize, (wall, cpu): (f64, f64)) {
    println!(
        "{{\"impl\": \"basic\", \"what\": \"{what}\", \"threads\": {threads}, \"images_per_s\": {wall:.2}, \"images_per_cpu_s\": {cpu:.2}}}"
    );
}

/// Largest difference of two preprocessed outputs, in units of the [0, 1] samples (the
/// normalisation's scale undone).
fn max_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .enumerate()
        .map(|(i, (x, y))| f64::from((x - y).abs()) * STD[i % 3])
        .fold(0.0, f64::max)
}

/// Largest and mean absolute difference of two decodings, in 8-bit steps.
fn byte_diff(a: &[u8], b: &[u8]) -> (u8, f64) {
    let max = a
        .iter()
        .zip(b)
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0);
    let sum: u64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| u64::from(x.abs_diff(*y)))
        .sum();
    (max, sum as f64 / a.len().max(1) as f64)
}

fn pixels(samples: &[Sample], dir: &Path) {
    let mut out = vec![0f32; SIZE * SIZE * 3];
    for s in samples {
        let new = decode_zune(&s.image);
        let old = decode_previous(&s.image, None);
        assert_eq!((new.h, new.w, new.c), (old.h, old.w, old.c));
        let diffs: Vec<u8> = new
            .data
            .iter()
            .zip(&old.data)
            .map(|(a, b)| a.abs_diff(*b))
            .collect();
        let differ = diffs.iter().filter(|&&d| d > 0).count() as f64 / diffs.len() as f64;
        let decoder_max = diffs.iter().max().copied().unwrap_or(0);
        let mut worst = [0f64; 4];
        for (k, seed) in [None, Some(1), Some(2), Some(3)].into_iter().enumerate() {
            preprocess_pixels_into(&new, &s.key, SIZE, 3, &MEAN, &STD, seed, &mut out)
                .expect("preprocessed");
            let ours_same = {
                let mut o = vec![0f32; out.len()];
                preprocess_pixels_into(&old, &s.key, SIZE, 3, &MEAN, &STD, seed, &mut o)
                    .expect("preprocessed");
                o
            };
            let reference = preprocess_reference(&old.to_image(), SIZE, 3, &MEAN, &STD, seed);
            // The new resampler on the old decoder's pixels: the same values as the old path.
            assert_eq!(ours_same, reference, "{}: resampler differs", s.key);
            worst[k] = max_diff(&out, &reference);
        }
        // Against libjpeg-turbo's decoding (benches/photos.sh writes it), where present.
        let turbo = std::fs::read(dir.join("reference").join(format!("{}.rgb", s.key)))
            .ok()
            .filter(|t| t.len() == new.data.len());
        let (vs_new, vs_old) = turbo.map_or(((0, f64::NAN), (0, f64::NAN)), |t| {
            (byte_diff(&new.data, &t), byte_diff(&old.data, &t))
        });
        println!(
            "{{\"what\": \"decoders vs libjpeg-turbo\", \"image\": \"{}\", \"zune_max_mean\": [{}, {:.4}], \"jpeg_decoder_max_mean\": [{}, {:.4}]}}",
            s.key, vs_new.0, vs_new.1, vs_old.0, vs_old.1
        );
        let scaled = decode_previous(&s.image, Some(SIZE));
        let scaled_out = preprocess_reference(&scaled.to_image(), SIZE, 3, &MEAN, &STD, None);
        let full = preprocess_reference(&old.to_image(), SIZE, 3, &MEAN, &STD, None);
        println!(
            "{{\"what\": \"pixels\", \"image\": \"{}\", \"size\": [{}, {}], \"decoders_max_abs_u8\": {decoder_max}, \
             \"decoders_differing\": {differ:.4}, \"pipeline_max_abs_eval\": {:.5}, \"pipeline_max_abs_augment\": {:.5}, \
             \"resampler_on_same_pixels\": \"identical\", \"dct_scaled\": [{}, {}], \"dct_scaled_max_abs_eval\": {:.5}}}",
            s.key,
            new.w,
            new.h,
            worst[0],
            worst[1..].iter().copied().fold(0.0, f64::max),
            scaled.w,
            scaled.h,
            max_diff(&scaled_out, &full),
        );
    }
}

fn loader_rate(samples: &[Sample], tok: &Arc<Tokenizer>, workers: usize, augment: bool) -> f64 {
    // Enough pairs for several batches: the photos repeated under distinct keys.
    let many: Vec<Sample> = (0..32)
        .flat_map(|i| {
            samples.iter().map(move |s| Sample {
                key: format!("{}-{i}", s.key),
                ..s.clone()
            })
        })
        .collect();
    let o = LoaderOptions {
        seed: 1,
        mean: MEAN.to_vec(),
        std: STD.to_vec(),
        workers,
        prefetch: 2,
        augment,
        ..LoaderOptions::new(32, SIZE, 3, 16)
    };
    let data = Dataset::in_memory(many, 64);
    let mut l = Loader::new(&data, tok.clone(), o, Position::default()).expect("a loader");
    l.next_batch().expect("a batch");
    let t = Instant::now();
    let mut n = 0;
    while t.elapsed() < SPAN {
        n += l.next_batch().expect("a batch").labels.len();
    }
    n as f64 / t.elapsed().as_secs_f64()
}

/// The single-thread figures: each decoder, preprocessing alone, and eval and augment now and
/// as they were.
fn single_thread(samples: &[Sample], out: &mut [f32], sink: &mut usize) {
    line(
        "decode jpeg-decoder",
        1,
        rate(samples, |_, s| {
            *sink += decode_previous(&s.image, None).data.len()
        }),
    );
    line(
        "decode jpeg-decoder dct-scaled",
        1,
        rate(samples, |_, s| {
            *sink += decode_previous(&s.image, Some(SIZE)).data.len()
        }),
    );
    line(
        "decode zune-jpeg",
        1,
        rate(samples, |_, s| *sink += decode_zune(&s.image).data.len()),
    );
    let decoded: Vec<Pixels> = samples
        .iter()
        .map(|s| decode_pixels(&s.image, &s.key).expect("a photo"))
        .collect();
    line(
        "resize+crop+normalise only",
        1,
        rate(samples, |i, s| {
            preprocess_pixels_into(
                &decoded[i % decoded.len()],
                &s.key,
                SIZE,
                3,
                &MEAN,
                &STD,
                None,
                out,
            )
            .expect("preprocessed");
        }),
    );
    for (what, augment) in [("eval", false), ("augment", true)] {
        let seed = |i: usize| augment.then_some(i as u64);
        line(
            &format!("{what} previous"),
            1,
            rate(samples, |i, s| {
                let img = decode_previous(&s.image, None).to_image();
                *sink += preprocess_reference(&img, SIZE, 3, &MEAN, &STD, seed(i)).len();
            }),
        );
        line(
            what,
            1,
            rate(samples, |i, s| {
                let px = decode_pixels(&s.image, &s.key).expect("a photo");
                preprocess_pixels_into(&px, &s.key, SIZE, 3, &MEAN, &STD, seed(i), out)
                    .expect("preprocessed");
            }),
        );
    }
}

fn main() {
    let dir = std::env::var("PIPELINE_DATA").unwrap_or_else(|_| "runs/photos".into());
    let mut samples = Vec::new();
    let data = basic::data::source::parse(&dir, "train", None)
        .expect("the photos: make them with benches/photos.sh");
    basic::data::stream::for_each_sample(&data, false, &mut |s| {
        samples.push(s);
        Ok(true)
    })
    .expect("the photos");
    if std::env::var("PIPELINE_WHAT").as_deref() == Ok("pixels") {
        pixels(&samples, Path::new(&dir));
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut out = vec![0f32; SIZE * SIZE * 3];
    let mut sink = 0usize;
    let only_loader = std::env::var("PIPELINE_WHAT").as_deref() == Ok("loader");
    if !only_loader {
        // On one thread for real: outside a pool, jpeg-decoder hands rows to helper threads.
        basic::data::loader::on_own_thread(|| single_thread(&samples, &mut out, &mut sink));
    }
    // The loader: decoding and tokenizing on its workers, batches of 32.
    let tmp = std::env::temp_dir().join(format!("basic-pipeline-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("a temporary folder");
    let corpus = tmp.join("captions.txt");
    let captions: Vec<&str> = samples.iter().map(|s| s.caption.as_str()).collect();
    std::fs::write(&corpus, captions.join("\n")).expect("the captions");
    let tok = Arc::new(
        Tokenizer::train(
            &corpus,
            basic::data::tokenizer::Kind::WordLevel,
            64,
            &tmp.join("tokenizer.json"),
        )
        .expect("a tokenizer"),
    );
    for (what, augment) in [("eval", false), ("augment", true)] {
        let mut workers = vec![1, cores];
        workers.dedup();
        for w in workers {
            line(
                &format!("loader {what}"),
                w,
                (loader_rate(&samples, &tok, w, augment), f64::NAN),
            );
        }
    }
    std::fs::remove_dir_all(&tmp).ok();
    std::hint::black_box(sink);
}
