//! The coordinator that process 0 serves: a write-once key-value store, named barriers, liveness
//! and the step watchdog, over TCP, on background threads.
//!
//! Threads: one accepts connections, one ticks every [`TICK`] (deadlines, heartbeats, watchdog),
//! and each connection has a reader (decodes frames, applies them to the shared [`State`]) and a
//! writer (sends what the state queued for it, so that one slow peer never stalls the others).
//! All decisions are made by [`State`] under one lock; threads only move bytes.

use std::io::Read;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::state::{ConnFlags, Out, State};
use super::wire::{FrameReader, Polled, ReadError, MAX_FRAME, MAX_HELLO_FRAME};
use crate::error::{Error, Result, StatusCode};

/// How often the server checks deadlines, heartbeats and the watchdog; also the read timeout of
/// its sockets, so every thread notices a stop within this.
const TICK: Duration = Duration::from_millis(25);
/// Connections that have not registered yet, at most; more are closed at once.
const MAX_UNREGISTERED: usize = 256;
/// How long a write to one peer may block before the peer is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopping server keeps sending what it had queued.
const FLUSH: Duration = Duration::from_secs(2);
/// Stack of every server thread: they hold little.
const STACK: usize = 256 * 1024;

/// Settings of the coordinator. Heartbeat settings come from each process's own options.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// When set, a process must present the same token (`BASIC_JOB_TOKEN`) or is refused.
    pub job_token: Option<String>,
    /// Fail the job when a process's reported step stays unchanged for this long while another
    /// process is ahead of it, or when no process advances for this long (see
    /// [`super::Client::report_step`]). `None` turns the watchdog off. Choose it longer than
    /// the longest pause every process takes at once (the first step's compilation, an
    /// evaluation, a checkpoint), or report steps during those too.
    pub stuck_timeout: Option<Duration>,
    /// How long a new connection may take to send its hello before it is closed.
    pub hello_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> ServerOptions {
        ServerOptions {
            job_token: None,
            stuck_timeout: None,
            hello_timeout: Duration::from_secs(10),
        }
    }
}

/// The running coordinator. Stops (closing its listener and every connection) on [`stop`] or
/// drop; process 0 keeps it until its own client's shutdown barrier has passed, so it outlives
/// the other processes' last calls.
///
/// [`stop`]: Server::stop
pub struct Server {
    shared: Arc<Shared>,
    addr: SocketAddr,
    threads: Vec<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    stop: AtomicBool,
    epoch: Instant,
    conn_threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Server {
    /// Binds exactly `addr` (e.g. `0.0.0.0:8482`, or `127.0.0.1:0` for an ephemeral port) and
    /// serves a job of `num_processes` processes.
    pub fn start(addr: &str, num_processes: usize, opts: ServerOptions) -> Result<Server> {
        if num_processes == 0 || num_processes > super::MAX_PROCESSES {
            return Err(Error::invalid(
                format!("number of processes {num_processes}"),
                format!(
                    "a job has from 1 to {} processes (one per host)",
                    super::MAX_PROCESSES
                ),
            ));
        }
        if opts
            .job_token
            .as_ref()
            .is_some_and(|t| t.len() > super::wire::MAX_TEXT)
        {
            return Err(Error::invalid(
                "job token (BASIC_JOB_TOKEN)",
                format!("use a token of at most {} bytes", super::wire::MAX_TEXT),
            ));
        }
        let listener = TcpListener::bind(addr).map_err(|e| {
            Error::coord(
                StatusCode::Unavailable,
                format!(
                    "the coordinator cannot listen on {addr}: {e}; pick a free port (another \
                     job may hold this one) or an address of this host"
                ),
            )
        })?;
        let local = listener.local_addr().map_err(|e| Error::io(addr, e))?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(num_processes, opts, Instant::now())),
            stop: AtomicBool::new(false),
            epoch: Instant::now(),
            conn_threads: Mutex::new(Vec::new()),
        });
        let mut threads = Vec::new();
        for (name, job) in [("accept", 0), ("tick", 1)] {
            let s = shared.clone();
            let l = listener.try_clone().map_err(|e| Error::io(addr, e))?;
            let h = std::thread::Builder::new()
                .name(format!("coord-{name}"))
                .stack_size(STACK)
                .spawn(move || {
                    if job == 0 {
                        accept_loop(s, l)
                    } else {
                        tick_loop(s)
                    }
                })
                .map_err(|e| super::spawn_failed("the coordinator", e))?;
            threads.push(h);
        }
        Ok(Server {
            shared,
            addr: local,
            threads,
        })
    }

    /// The address it listens on (with the port chosen when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving: closes the listener, sends what is still queued (the last barrier's
    /// replies) for up to [`FLUSH`], then closes every connection and joins the threads. The
    /// processes still connected see the coordinator lost.
    pub fn stop(&mut self) {
        if self.shared.stop.swap(true, Ordering::SeqCst) {
            return;
        }
        // The accept thread blocks in `accept`: a connection of our own wakes it.
        let _ = TcpStream::connect_timeout(&wake_addr(self.addr), Duration::from_secs(1));
        let until = Instant::now() + FLUSH;
        while Instant::now() < until && self.threads.iter().any(|h| !h.is_finished()) {
            std::thread::sleep(Duration::from_millis(5));
        }
        for h in self.threads.drain(..) {
            if h.is_finished() {
                let _ = h.join();
            } else {
                // The wake-up connection did not arrive (a firewall on the loopback?): leave the
                // thread; it ends at the next connection. Never hang the caller.
                eprintln!(
                    "warning: the coordinator's accept thread on {} did not stop",
                    self.addr
                );
            }
        }
        let streams: Vec<TcpStream> = {
            let mut st = self.shared.lock();
            st.stopping = true;
            // Dropping the senders lets each writer finish its queue and exit.
            st.conns.drain().map(|(_, c)| c.stream).collect()
        };
        let until = Instant::now() + FLUSH;
        while Instant::now() < until && self.shared.threads_lock().iter().any(|h| !h.is_finished())
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        for s in &streams {
            let _ = s.shutdown(Shutdown::Both);
        }
        let handles = std::mem::take(&mut *self.shared.threads_lock());
        for h in handles {
            let _ = h.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every state change is completed under the lock before anything can panic; a poisoned
        // lock (a bug) still holds a consistent state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn threads_lock(&self) -> MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.conn_threads.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// Accepts in a blocking `accept`, so that a burst of processes connecting at once is taken as
/// fast as it comes (a polling loop lets the kernel's backlog of 128 fill, and the connections
/// past it wait a second for their SYN to be retried). [`Server::stop`] wakes it.
fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let accepted = listener.accept();
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        match accepted {
            Ok((stream, peer)) => admit(&shared, stream, peer),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // Out of descriptors or a connection reset before accept: wait and go on.
            Err(_) => std::thread::sleep(TICK),
        }
        shared.threads_lock().retain(|h| !h.is_finished());
    }
}

/// Where to connect to reach a listener bound to `addr`: its own address, or the loopback of its
/// family when it is bound to every interface.
fn wake_addr(addr: SocketAddr) -> SocketAddr {
    let mut a = addr;
    if a.ip().is_unspecified() {
        a.set_ip(match a {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    a
}

/// Registers a new connection and starts its reader and writer.
fn admit(shared: &Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    // Accepted sockets may inherit the listener's non-blocking mode on some systems.
    let setup = stream
        .set_nonblocking(false)
        .and_then(|_| stream.set_read_timeout(Some(TICK)))
        .and_then(|_| stream.set_write_timeout(Some(WRITE_TIMEOUT)))
        .and_then(|_| stream.set_nodelay(true));
    let (Ok(()), Ok(w), Ok(keep)) = (setup, stream.try_clone(), stream.try_clone()) else {
        return;
    };
    let flags = Arc::new(ConnFlags::default());
    flags.seen_ms.store(shared.now_ms(), Ordering::SeqCst);
    let (tx, rx) = channel();
    let id = {
        let mut st = shared.lock();
        if st.unregistered() >= MAX_UNREGISTERED {
            return;
        }
        st.add_conn(peer, tx, keep, flags.clone())
    };
    let s = shared.clone();
    let f = flags.clone();
    let reader = std::thread::Builder::new()
        .name("coord-conn".into())
        .stack_size(STACK)
        .spawn(move || read_loop(s, id, stream, f));
    let writer = std::thread::Builder::new()
        .name("coord-send".into())
        .stack_size(STACK)
        .spawn(move || write_loop(w, rx, flags));
    let mut threads = shared.threads_lock();
    match (reader, writer) {
        (Ok(r), Ok(w)) => threads.extend([r, w]),
        (r, w) => {
            // No thread left to serve it: forget the connection (its sockets close on drop).
            drop(threads);
            shared.lock().conns.remove(&id);
            threads_push(shared, r.ok());
            threads_push(shared, w.ok());
        }
    }
}

fn threads_push(shared: &Shared, h: Option<JoinHandle<()>>) {
    if let Some(h) = h {
        shared.threads_lock().push(h);
    }
}

fn read_loop(shared: Arc<Shared>, conn: u64, mut stream: TcpStream, flags: Arc<ConnFlags>) {
    let mut reader = FrameReader::default();
    let reason = loop {
        if shared.stop.load(Ordering::SeqCst) {
            break "the coordinator stopped".to_string();
        }
        if flags.closing.load(Ordering::SeqCst) {
            drain(&mut stream);
            break "the coordinator closed the connection".to_string();
        }
        let max = if flags.registered.load(Ordering::SeqCst) {
            MAX_FRAME
        } else {
            MAX_HELLO_FRAME
        };
        match reader.poll(&mut stream, max) {
            Ok(Polled::Idle) => {}
            Ok(Polled::Bytes) => flags.seen_ms.store(shared.now_ms(), Ordering::SeqCst),
            Ok(Polled::Frame(body)) => {
                flags.seen_ms.store(shared.now_ms(), Ordering::SeqCst);
                shared.lock().on_frame(conn, &body, Instant::now());
            }
            Err(ReadError::TooLarge { len, max }) => {
                let msg = format!(
                    "a message of {len} bytes is larger than the {max} allowed here; values are \
                     at most {} bytes",
                    super::wire::MAX_VALUE
                );
                shared
                    .lock()
                    .refuse(conn, StatusCode::InvalidArgument, &msg);
                drain(&mut stream);
                break msg;
            }
            Err(e) => break e.to_string(),
        }
    };
    shared.lock().on_closed(conn, &reason, Instant::now());
}

/// Reads and discards what the peer still sends, for a moment, so that closing does not reset
/// the connection before the peer has read the error frame queued for it.
fn drain(stream: &mut TcpStream) {
    let until = Instant::now() + Duration::from_millis(300);
    let mut buf = [0u8; 4096];
    while Instant::now() < until {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return,
        }
    }
}

fn write_loop(mut stream: TcpStream, rx: Receiver<Out>, flags: Arc<ConnFlags>) {
    while let Ok(out) = rx.recv() {
        match out {
            Out::Frame(f) => {
                if super::wire::write_frame(&mut stream, &f).is_err() {
                    flags.closing.store(true, Ordering::SeqCst);
                    let _ = stream.shutdown(Shutdown::Both);
                    return;
                }
            }
            Out::Close => {
                flags.closing.store(true, Ordering::SeqCst);
                let _ = stream.shutdown(Shutdown::Write);
                return;
            }
        }
    }
}

fn tick_loop(shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        std::thread::sleep(TICK);
        let now_ms = shared.now_ms();
        let now = Instant::now();
        shared.lock().tick(now, |seen| {
            // The time since a connection's last byte, from its atomic.
            Duration::from_millis(now_ms.saturating_sub(seen))
        });
    }
}
