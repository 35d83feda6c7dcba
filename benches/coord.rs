//! The coordinator under a pod's worth of processes: N clients (threads of this process, each
//! with its own TCP connection to a server on 127.0.0.1, as N hosts would have) register,
//! exchange K keys (each put by one client and read by the next) and pass B barriers.
//!
//! Usage: `cargo bench --bench coord -- [CLIENTS] [KEYS] [BARRIERS]` (default 1024 10000 100).
//! One JSON line: registration time (from the first connect to the last client's return),
//! key exchange time, and barrier latency as each client sees it (median, p99 over all
//! CLIENTS × BARRIERS calls) and per barrier from the last arrival to the last release (median,
//! p99 over BARRIERS).
//!
//! Each client holds a socket (two descriptors: its reader's clone) and a background thread, and
//! the server three descriptors and two threads per connection: with the client's own thread,
//! about 5 descriptors and 4 threads per client in this process, so 1,024 clients need
//! `ulimit -n` above about 5,300 (checked at start) and `ulimit -u` above about 4,200.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use basic::coord::{Client, ClientOptions, Server, ServerOptions};

/// The soft limit on open descriptors of this process (`ulimit -n`), from /proc.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Open descriptors and threads of this process now, from /proc.
fn fds_and_threads() -> (usize, usize) {
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    let threads = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0);
    (fds, threads)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1e3
}

/// What one client measured: when it returned from `connect`, how long each barrier call took,
/// and when it entered and left each barrier.
struct Seen {
    registered: Instant,
    exchanged: Instant,
    calls: Vec<Duration>,
    entered: Vec<Instant>,
    left: Vec<Instant>,
}

fn client(
    addr: String,
    id: usize,
    n: usize,
    keys: usize,
    barriers: usize,
    go: Arc<Barrier>,
) -> Seen {
    let opts = ClientOptions {
        registration_timeout: Duration::from_secs(120),
        heartbeat_interval: Duration::from_secs(1),
        heartbeat_timeout: Duration::from_secs(60),
        ..Default::default()
    };
    go.wait();
    let c = Client::connect(&addr, id, n, opts).expect("registration");
    let registered = Instant::now();
    // Keys id, id + n, id + 2n, ... are this client's to put; the previous client's to read.
    for k in (id..keys).step_by(n) {
        c.put(&format!("key/{k}"), &k.to_le_bytes()).expect("put");
    }
    let from = (id + n - 1) % n;
    for k in (from..keys).step_by(n) {
        let v = c
            .get(&format!("key/{k}"), Duration::from_secs(60))
            .expect("get");
        assert_eq!(v, k.to_le_bytes());
    }
    let exchanged = Instant::now();
    let (mut calls, mut entered, mut left) = (vec![], vec![], vec![]);
    for b in 0..barriers {
        let t = Instant::now();
        c.barrier(&format!("b{b}"), Duration::from_secs(60))
            .expect("barrier");
        let done = Instant::now();
        calls.push(done - t);
        entered.push(t);
        left.push(done);
    }
    c.shutdown(Duration::from_secs(120)).expect("shutdown");
    Seen {
        registered,
        exchanged,
        calls,
        entered,
        left,
    }
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(1024);
    let keys = args.get(1).copied().unwrap_or(10_000);
    let barriers = args.get(2).copied().unwrap_or(100);
    let need = 5 * n as u64 + 200;
    if let Some(limit) = open_files_limit() {
        assert!(
            limit >= need,
            "{n} clients need about {need} open descriptors in this process but `ulimit -n` is \
             {limit}: raise it (ulimit -n {need}) or run fewer clients"
        );
    }
    let server = Server::start("127.0.0.1:0", n, ServerOptions::default()).expect("the server");
    let addr = server.local_addr().to_string();
    let go = Arc::new(Barrier::new(n + 1));
    let threads: Vec<_> = (0..n)
        .map(|id| {
            let (addr, go) = (addr.clone(), go.clone());
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || client(addr, id, n, keys, barriers, go))
                .expect("a client thread")
        })
        .collect();
    // The most descriptors and threads in use, sampled while the clients run.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut most = (0, 0);
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let (f, t) = fds_and_threads();
                most = (most.0.max(f), most.1.max(t));
                std::thread::sleep(Duration::from_millis(50));
            }
            most
        })
    };
    go.wait();
    let start = Instant::now();
    let seen: Vec<Seen> = threads
        .into_iter()
        .map(|t| t.join().expect("a client"))
        .collect();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (most_fds, most_threads) = sampler.join().expect("the sampler");
    let registration = seen.iter().map(|s| s.registered).max().unwrap() - start;
    let exchange = seen.iter().map(|s| s.exchanged).max().unwrap()
        - seen.iter().map(|s| s.registered).max().unwrap();
    let mut calls: Vec<Duration> = seen.iter().flat_map(|s| s.calls.iter().copied()).collect();
    calls.sort();
    // Per barrier: from the last client's arrival to the last client's release.
    let mut rounds: Vec<Duration> = (0..barriers)
        .map(|b| {
            let last_in = seen.iter().map(|s| s.entered[b]).max().unwrap();
            let last_out = seen.iter().map(|s| s.left[b]).max().unwrap();
            last_out.saturating_duration_since(last_in)
        })
        .collect();
    rounds.sort();
    println!(
        "{{\"clients\": {n}, \"keys\": {keys}, \"barriers\": {barriers}, \
         \"registration_s\": {:.3}, \"key_exchange_s\": {:.3}, \
         \"barrier_call_ms\": {{\"median\": {:.2}, \"p99\": {:.2}}}, \
         \"barrier_release_ms\": {{\"median\": {:.2}, \"p99\": {:.2}}}, \
         \"open_files_limit\": {}, \"most_open_files\": {most_fds}, \"most_threads\": {most_threads}}}",
        registration.as_secs_f64(),
        exchange.as_secs_f64(),
        percentile(&calls, 0.5),
        percentile(&calls, 0.99),
        percentile(&rounds, 0.5),
        percentile(&rounds, 0.99),
        open_files_limit().map_or("null".into(), |l| l.to_string()),
    );
    drop(server);
}
