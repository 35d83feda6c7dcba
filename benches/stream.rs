//! Streaming throughput: the loader reading one pass over `--data`-style shards (a local folder,
//! `gs://`, `s3://`, ...) into batches of 32 at 224 px (eval preprocessing), as `basic train`
//! does. `benches/stream.sh` runs it against local disk and fake-gcs-server, and
//! `benches/stream_torch.py` (webdataset + a PyTorch DataLoader) on the same shards, in
//! interleaved rounds.
//!
//! Usage: `cargo bench --bench stream -- SPEC LABEL [WORKERS]`. One JSON line: images per
//! second of wall time and per CPU-second of this process (all its threads: readers, storage
//! runtime, decoders).

use std::sync::Arc;
use std::time::Instant;

use basic::data::{Loader, LoaderOptions, Position, Tokenizer};

/// CPU seconds of this process so far (user + system, all threads).
fn process_cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command's closing parenthesis; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |r| r.1);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok());
    let ticks = 100.0; // USER_HZ on Linux
    field(11)
        .zip(field(12))
        .map_or(f64::NAN, |(u, s)| (u + s) / ticks)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let spec = args.first().expect("usage: stream SPEC LABEL [WORKERS]");
    let label = args.get(1).map_or("basic", String::as_str);
    let workers: usize = args.get(2).and_then(|w| w.parse().ok()).unwrap_or(2);
    let data = basic::data::source::parse(spec, "train", None).expect("the shards");
    let tmp = std::env::temp_dir().join(format!("basic-stream-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("a temporary folder");
    let corpus = tmp.join("captions.txt");
    std::fs::write(&corpus, "a photo of a cat.\na photo of a rocket.\n").expect("captions");
    let tok = Arc::new(
        Tokenizer::train(
            &corpus,
            basic::data::tokenizer::Kind::WordLevel,
            64,
            &tmp.join("tokenizer.json"),
        )
        .expect("a tokenizer"),
    );
    let o = LoaderOptions {
        seed: 1,
        mean: vec![0.485, 0.456, 0.406],
        std: vec![0.229, 0.224, 0.225],
        workers,
        prefetch: 2,
        data_streams: data.shards.len().min(4),
        shuffle_buffer: 64,
        ..LoaderOptions::new(32, 224, 3, 16)
    };
    let (t, cpu) = (Instant::now(), process_cpu_s());
    let mut l = Loader::new(&data, tok, o, Position::default()).expect("a loader");
    let mut n = 0;
    for _ in 0..l.batches_per_epoch {
        n += l.next_batch().expect("a batch").labels.len();
    }
    let (wall, cpu) = (t.elapsed().as_secs_f64(), process_cpu_s() - cpu);
    println!(
        "{{\"impl\": \"basic\", \"source\": \"{label}\", \"workers\": {workers}, \"images\": {n}, \"images_per_s\": {:.1}, \"images_per_cpu_s\": {:.1}}}",
        n as f64 / wall,
        n as f64 / cpu
    );
    std::fs::remove_dir_all(&tmp).ok();
}
