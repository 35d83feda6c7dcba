//! Every process's connection to the coordinator (process 0's included).
//!
//! One TCP connection carries all calls, tagged with ids so calls from many threads (the
//! trainer, the plugin's key-value callbacks) wait at once. A background thread reads replies
//! and notices, sends heartbeats, and watches the coordinator's silence. The first failure of the
//! job (a notice from the coordinator, or the coordinator lost) is kept: it ends every pending
//! call at once and every later call, and [`Client::health`] returns it.

use std::collections::HashMap;
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::wire::{
    clip, write_frame, Answer, Call, FrameReader, Hello, Polled, ToClient, ToServer, MAX_FRAME,
    MAX_KEY, MAX_TEXT, MAX_VALUE,
};
use super::{after, secs, spawn_failed, SHUTDOWN_BARRIER};
use crate::error::{Error, Result, StatusCode};

/// Extra time a call waits past its own deadline for the coordinator's answer before calling
/// the coordinator unresponsive (the coordinator enforces the deadline itself).
const GRACE: Duration = Duration::from_secs(2);
/// How often the background thread wakes when nothing arrives.
const POLL: Duration = Duration::from_millis(25);

/// Called once with the job's failure, from the thread that learns it (usually the client's
/// background thread).
pub type FailureCallback = Arc<dyn Fn(&Error) + Send + Sync>;

/// Settings of a process's client.
#[derive(Clone)]
pub struct ClientOptions {
    /// How long to wait for the coordinator to be reachable and for every process to register.
    pub registration_timeout: Duration,
    /// How often to send a heartbeat.
    pub heartbeat_interval: Duration,
    /// A process silent this long is dead to the coordinator, and a coordinator silent this long
    /// is lost to the process. Must exceed the interval.
    pub heartbeat_timeout: Duration,
    /// `BASIC_JOB_TOKEN`: presented to the coordinator, which refuses a wrong one.
    pub job_token: Option<String>,
    /// Told of the job's failure as soon as the client learns it.
    pub on_failure: Option<FailureCallback>,
}

impl Default for ClientOptions {
    /// JAX waits 300 s for registration; heartbeats every 5 s with a 60 s timeout.
    fn default() -> ClientOptions {
        ClientOptions {
            registration_timeout: Duration::from_secs(300),
            heartbeat_interval: Duration::from_secs(5),
            heartbeat_timeout: Duration::from_secs(60),
            job_token: None,
            on_failure: None,
        }
    }
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("registration_timeout", &self.registration_timeout)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("heartbeat_timeout", &self.heartbeat_timeout)
            .field("job_token", &self.job_token.as_ref().map(|_| "set"))
            .field("on_failure", &self.on_failure.as_ref().map(|_| "set"))
            .finish()
    }
}

/// A stop request posted by a process (e.g. on SIGTERM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StopNotice {
    /// The process that asked.
    pub by: usize,
    pub reason: String,
}

/// A process's client of the coordinator. Cheap to clone; the connection closes when the last
/// clone drops. Dropping it without [`shutdown`](Client::shutdown) tells the coordinator this
/// process is gone, which fails the job for the others: that is how an error exit fails fast.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Handle>,
}

struct Handle {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

type Reply = std::result::Result<Answer, (StatusCode, String)>;

/// The stop agreement as one process sees it. The background thread reports `step` when the
/// stop notice arrives and holds `agreeing` until the stop step comes back; meanwhile
/// [`Client::begin_step`] waits, so the process cannot go past the step it reported.
#[derive(Default)]
struct Gate {
    step: Option<u64>,
    agreeing: bool,
    stop_at: Option<u64>,
}

#[derive(Default)]
struct Calls {
    pending: HashMap<u64, SyncSender<Reply>>,
    failure: Option<(StatusCode, String)>,
    closed: bool,
}

struct Shared {
    addr: String,
    process_id: usize,
    num_processes: usize,
    opts: ClientOptions,
    writer: Mutex<TcpStream>,
    calls: Mutex<Calls>,
    next_id: AtomicU64,
    failed: AtomicBool,
    stop_flag: AtomicBool,
    stop: Mutex<Option<StopNotice>>,
    /// The last reported step plus one; 0 when none was reported.
    step: AtomicU64,
    gate: Mutex<Gate>,
    gate_changed: Condvar,
    /// The shutdown barrier has passed (or shutdown began): a closed connection is expected.
    closing: AtomicBool,
    shutdown_call: AtomicU64,
}

impl Client {
    /// Connects to the coordinator at `addr` (`host:port`) as process `process_id` of
    /// `num_processes`, retrying until it is reachable, and returns once every process has
    /// registered. Fails within `opts.registration_timeout` (plus a moment) with an error that
    /// names the address, or the processes that did not register, or why this one was refused.
    pub fn connect(
        addr: &str,
        process_id: usize,
        num_processes: usize,
        opts: ClientOptions,
    ) -> Result<Client> {
        check_options(process_id, num_processes, &opts)?;
        let deadline = after(Instant::now(), opts.registration_timeout);
        let stream = connect_until(addr, deadline, opts.registration_timeout)?;
        let hello = Hello {
            process_id: process_id as u32,
            num_processes: num_processes as u32,
            token: opts.job_token.clone().unwrap_or_default(),
            registration_ms: millis(deadline.saturating_duration_since(Instant::now())),
            heartbeat_interval_ms: millis(opts.heartbeat_interval),
            heartbeat_timeout_ms: millis(opts.heartbeat_timeout),
        };
        let io = |e: std::io::Error| lost(addr, &format!("during registration: {e}"));
        let mut reader = stream.try_clone().map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        stream
            .set_write_timeout(Some(opts.heartbeat_timeout))
            .map_err(io)?;
        reader.set_read_timeout(Some(POLL)).map_err(io)?;
        write_frame(&mut &stream, &ToServer::Hello(hello).encode()).map_err(io)?;
        let mut frames = FrameReader::default();
        await_welcome(
            addr,
            process_id,
            &mut reader,
            &mut frames,
            after(deadline, GRACE),
            &opts,
        )?;
        let shared = Arc::new(Shared {
            addr: addr.to_string(),
            process_id,
            num_processes,
            opts,
            writer: Mutex::new(stream),
            calls: Mutex::new(Calls::default()),
            next_id: AtomicU64::new(1),
            failed: AtomicBool::new(false),
            stop_flag: AtomicBool::new(false),
            stop: Mutex::new(None),
            step: AtomicU64::new(0),
            gate: Mutex::new(Gate::default()),
            gate_changed: Condvar::new(),
            closing: AtomicBool::new(false),
            shutdown_call: AtomicU64::new(0),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("coord-client-{process_id}"))
            .stack_size(256 * 1024)
            .spawn(move || background(s, reader, frames))
            .map_err(|e| spawn_failed("the coordinator client", e))?;
        Ok(Client {
            inner: Arc::new(Handle {
                shared,
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    pub fn process_id(&self) -> usize {
        self.inner.shared.process_id
    }

    pub fn num_processes(&self) -> usize {
        self.inner.shared.num_processes
    }

    /// The coordinator's address, as given.
    pub fn coordinator(&self) -> &str {
        &self.inner.shared.addr
    }

    /// Sets `key` once for the whole job; a second put of it (from any process) is
    /// ALREADY_EXISTS and the first value stays.
    pub fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        check_key(key, "key")?;
        if value.len() > MAX_VALUE {
            return Err(Error::invalid(
                format!("value of key `{key}` ({} bytes)", value.len()),
                format!("store values of at most {MAX_VALUE} bytes"),
            ));
        }
        let call = Call::Put {
            key: key.to_string(),
            value: value.to_vec(),
        };
        self.inner.shared.call(call, Duration::ZERO).map(|_| ())
    }

    /// The value of `key`, waiting up to `timeout` for some process to set it; then
    /// DEADLINE_EXCEEDED naming the key.
    pub fn get(&self, key: &str, timeout: Duration) -> Result<Vec<u8>> {
        check_key(key, "key")?;
        let call = Call::Get {
            key: key.to_string(),
            timeout_ms: millis(timeout),
        };
        value(self.inner.shared.call(call, timeout)?)
    }

    /// The value of `key` now, or NOT_FOUND.
    pub fn try_get(&self, key: &str) -> Result<Vec<u8>> {
        check_key(key, "key")?;
        let call = Call::TryGet {
            key: key.to_string(),
        };
        value(self.inner.shared.call(call, Duration::ZERO)?)
    }

    /// Waits until every process has entered the barrier `name` (its k-th call of a name meets
    /// the others' k-th calls). After `timeout` every waiting process gets DEADLINE_EXCEEDED
    /// naming the processes that did not arrive, and so does each latecomer.
    pub fn barrier(&self, name: &str, timeout: Duration) -> Result<()> {
        check_key(name, "barrier name")?;
        if name.starts_with(super::RESERVED) {
            return Err(Error::invalid(
                format!("barrier name `{name}`"),
                format!(
                    "names starting with `{}` are the coordinator's own",
                    super::RESERVED
                ),
            ));
        }
        self.inner.shared.barrier(name, timeout, 0).map(|_| ())
    }

    /// Reports the step this process is at, for the coordinator's stuck-process watchdog (its
    /// evaluation or checkpoint loops may call it too). Call it when a step *begins* (before
    /// loading its data): a process stuck in host code then shows a lower step than the others,
    /// who are waiting for it inside the next step's collectives, and the watchdog names it.
    /// Free: it travels with the next heartbeat. [`begin_step`](Client::begin_step) calls it.
    pub fn report_step(&self, step: u64) {
        self.inner
            .shared
            .step
            .store(step.saturating_add(1), Ordering::SeqCst);
    }

    /// Call before running training step `step` (steps go up by one). Reports it to the
    /// watchdog, fails with the job's failure if there is one, and says whether the job stops
    /// here: `true` means save the state reached so far and exit instead of running `step`.
    /// Every process gets `true` at the same step.
    ///
    /// How the step is agreed (the protocol of XLA's preemption sync manager): when a stop
    /// notice arrives, this client's background thread reports the step last begun here, and
    /// every call of this function waits until the coordinator has all reports and answers with
    /// the largest plus one. No process can pass its reported step meanwhile, so all reach the
    /// answer; and the reports come from background threads, so a process blocked inside a
    /// collective still answers. The wait is bounded by the heartbeat timeout.
    pub fn begin_step(&self, step: u64) -> Result<bool> {
        self.report_step(step);
        let s = &self.inner.shared;
        let until = after(
            Instant::now(),
            s.opts.heartbeat_timeout.saturating_add(GRACE),
        );
        let mut gate = lock(&s.gate);
        while gate.agreeing {
            self.health()?;
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::coord(
                    StatusCode::DeadlineExceeded,
                    format!(
                        "the processes did not agree on a stop step within {} (the coordinator at \
                         {} has not heard from all of them)",
                        secs(s.opts.heartbeat_timeout.saturating_add(GRACE)),
                        s.addr
                    ),
                ));
            }
            gate = s
                .gate_changed
                .wait_timeout(gate, left.min(POLL))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        self.health()?;
        gate.step = Some(step);
        Ok(gate.stop_at.is_some_and(|at| step >= at))
    }

    /// Asks every process to stop (e.g. on SIGTERM); the first request wins. Every process then
    /// sees [`stop_requested`](Client::stop_requested), and [`begin_step`](Client::begin_step)
    /// returns `true` at the agreed step.
    pub fn request_stop(&self, reason: &str) -> Result<()> {
        let call = Call::RequestStop {
            reason: clip(reason, MAX_TEXT),
        };
        self.inner.shared.call(call, Duration::ZERO).map(|_| ())
    }

    /// The stop request, once any process has posted one. One atomic load when there is none.
    pub fn stop_requested(&self) -> Option<StopNotice> {
        let s = &self.inner.shared;
        if !s.stop_flag.load(Ordering::SeqCst) {
            return None;
        }
        lock(&s.stop).clone()
    }

    /// The step the job stops at, once agreed.
    pub fn stop_step(&self) -> Option<u64> {
        lock(&self.inner.shared.gate).stop_at
    }

    /// `Ok` while the job is healthy; the job's failure (a dead, stuck or failed process, or the
    /// coordinator lost) once it is not. One atomic load when healthy.
    pub fn health(&self) -> Result<()> {
        let s = &self.inner.shared;
        if !s.failed.load(Ordering::SeqCst) {
            return Ok(());
        }
        match &lock(&s.calls).failure {
            Some((code, msg)) => Err(Error::coord(*code, msg.clone())),
            None => Ok(()),
        }
    }

    /// Fails the whole job with this process's error, so that the others stop at once instead
    /// of waiting for its connection to drop.
    pub fn abort(&self, message: &str) -> Result<()> {
        let call = Call::Abort {
            message: clip(message, MAX_TEXT),
        };
        self.inner.shared.call(call, Duration::ZERO).map(|_| ())
    }

    /// Ends this process's part cleanly: waits (up to `timeout`) until every process has called
    /// it, so process 0, which stops its server after this returns, outlives every other
    /// process's last call. Then closes the connection; later calls fail.
    pub fn shutdown(&self, timeout: Duration) -> Result<()> {
        let s = &self.inner.shared;
        let r = s.barrier(SHUTDOWN_BARRIER, timeout, 0).map(|_| ());
        s.closing.store(true, Ordering::SeqCst);
        lock(&s.calls).closed = true;
        let _ = lock(&s.writer).shutdown(Shutdown::Both);
        if let Some(t) = lock(&self.inner.thread).take() {
            let _ = t.join();
        }
        r
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let s = &self.shared;
        s.closing.store(true, Ordering::SeqCst);
        lock(&s.calls).closed = true;
        let _ = lock(&s.writer).shutdown(Shutdown::Both);
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }
}

/// The PJRT key-value store of a multi-process job: give it to the runtime wrapped in a
/// `runtime::kv::Prefixed` per platform.
impl crate::runtime::KeyValueStore for Client {
    fn get(&self, key: &str, timeout: Duration) -> Result<Vec<u8>> {
        Client::get(self, key, timeout)
    }
    fn try_get(&self, key: &str) -> Result<Vec<u8>> {
        Client::try_get(self, key)
    }
    fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        Client::put(self, key, value)
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("coordinator", &self.inner.shared.addr)
            .field("process_id", &self.inner.shared.process_id)
            .field("num_processes", &self.inner.shared.num_processes)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded values are replaced whole, never left half-updated.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

fn value(a: Answer) -> Result<Vec<u8>> {
    match a {
        Answer::Value(v) => Ok(v),
        other => Err(Error::coord(
            StatusCode::Internal,
            format!("the coordinator answered a get with {other:?}"),
        )),
    }
}

fn lost(addr: &str, what: &str) -> Error {
    Error::coord(
        StatusCode::Unavailable,
        format!(
            "lost the coordinator at {addr} {what}; process 0 exited, crashed or was killed (its \
             own log says why), or the network between the hosts failed"
        ),
    )
}

fn check_key(key: &str, what: &str) -> Result<()> {
    if key.len() > MAX_KEY {
        return Err(Error::invalid(
            format!("{what} of {} bytes", key.len()),
            format!("use at most {MAX_KEY} bytes"),
        ));
    }
    Ok(())
}

fn check_options(id: usize, n: usize, o: &ClientOptions) -> Result<()> {
    if n == 0 || n > super::MAX_PROCESSES {
        return Err(Error::invalid(
            format!("number of processes {n}"),
            format!(
                "a job has from 1 to {} processes (one per host)",
                super::MAX_PROCESSES
            ),
        ));
    }
    if id >= n {
        return Err(Error::invalid(
            format!("process id {id} (--process-id / BASIC_PROCESS_ID)"),
            format!("ids of a job of {n} processes go from 0 to {}", n - 1),
        ));
    }
    if o.heartbeat_interval.is_zero() || o.heartbeat_timeout <= o.heartbeat_interval {
        return Err(Error::invalid(
            format!(
                "heartbeat interval {} with timeout {}",
                secs(o.heartbeat_interval),
                secs(o.heartbeat_timeout)
            ),
            "use a timeout several times longer than a non-zero interval",
        ));
    }
    if o.job_token.as_ref().is_some_and(|t| t.len() > MAX_TEXT) {
        return Err(Error::invalid(
            "job token (BASIC_JOB_TOKEN)",
            format!("use a token of at most {MAX_TEXT} bytes"),
        ));
    }
    Ok(())
}

/// Connects to `addr`, retrying (process 0 may start later than the others, and a new pod's
/// name may not resolve yet) until `deadline`.
fn connect_until(addr: &str, deadline: Instant, budget: Duration) -> Result<TcpStream> {
    let mut last = String::from("no attempt finished");
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::coord(
                StatusCode::Unavailable,
                format!(
                    "cannot reach the coordinator at {addr} within {} (last error: {last}); \
                     check that process 0 runs and listens there and that the port is open \
                     between the hosts",
                    secs(budget)
                ),
            ));
        }
        match addr.to_socket_addrs() {
            Ok(addrs) => {
                for a in addrs {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let attempt = left
                        .min(Duration::from_secs(2))
                        .max(Duration::from_millis(1));
                    match TcpStream::connect_timeout(&a, attempt) {
                        Ok(s) => return Ok(s),
                        Err(e) => last = e.to_string(),
                    }
                }
            }
            Err(e) => last = format!("cannot resolve the address: {e}"),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

/// Waits for the coordinator's welcome (every process registered) or its refusal.
fn await_welcome(
    addr: &str,
    id: usize,
    reader: &mut TcpStream,
    frames: &mut FrameReader,
    until: Instant,
    opts: &ClientOptions,
) -> Result<()> {
    loop {
        if Instant::now() >= until {
            return Err(Error::coord(
                StatusCode::DeadlineExceeded,
                format!(
                    "the coordinator at {addr} did not complete the registration of process \
                     {id} within {}",
                    secs(opts.registration_timeout)
                ),
            ));
        }
        let body = match frames.poll(reader, MAX_FRAME) {
            Ok(Polled::Frame(b)) => b,
            Ok(_) => continue,
            Err(e) => return Err(lost(addr, &format!("during registration: {e}"))),
        };
        match ToClient::decode(&body) {
            Ok(ToClient::Welcome) => return Ok(()),
            Ok(ToClient::Refused { code, message }) => {
                return Err(Error::coord(
                    code,
                    format!("the coordinator at {addr} refused process {id}: {message}"),
                ))
            }
            Ok(other) => {
                return Err(Error::coord(
                    StatusCode::Internal,
                    format!("the coordinator at {addr} answered a hello with {other:?}"),
                ))
            }
            Err(m) => {
                return Err(Error::coord(
                    StatusCode::Internal,
                    format!("malformed message from the coordinator at {addr}: {}", m.0),
                ))
            }
        }
    }
}

impl Shared {
    /// Sends `call` and waits for its reply: up to `wait` (the call's own deadline, which the
    /// coordinator enforces) plus the heartbeat timeout and a grace period, after which the
    /// coordinator counts as unresponsive.
    fn call(&self, call: Call, wait: Duration) -> Result<Answer> {
        let (tx, rx) = sync_channel(1);
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let is_shutdown = matches!(&call, Call::Barrier { name, .. } if name == SHUTDOWN_BARRIER);
        {
            let mut c = lock(&self.calls);
            if let Some((code, msg)) = &c.failure {
                return Err(Error::coord(*code, msg.clone()));
            }
            if c.closed {
                return Err(Error::coord(
                    StatusCode::Unavailable,
                    format!(
                        "process {}'s coordinator client has shut down; no call can follow",
                        self.process_id
                    ),
                ));
            }
            c.pending.insert(id, tx);
        }
        if is_shutdown {
            self.shutdown_call.store(id, Ordering::SeqCst);
        }
        let frame = ToServer::Call { id, call }.encode();
        if let Err(e) = write_frame(&mut *lock(&self.writer), &frame) {
            self.fail(
                StatusCode::Unavailable,
                lost_msg(&self.addr, &e.to_string()),
            );
        }
        let limit = wait
            .saturating_add(self.opts.heartbeat_timeout)
            .saturating_add(GRACE);
        match rx.recv_timeout(limit) {
            Ok(r) => r.map_err(|(code, msg)| Error::coord(code, msg)),
            Err(RecvTimeoutError::Timeout) => {
                lock(&self.calls).pending.remove(&id);
                Err(Error::coord(
                    StatusCode::Unavailable,
                    format!(
                        "the coordinator at {} did not answer within {}; it is overloaded or hung",
                        self.addr,
                        secs(limit)
                    ),
                ))
            }
            Err(RecvTimeoutError::Disconnected) => Err(Error::coord(
                StatusCode::Unavailable,
                format!("process {}'s coordinator client closed", self.process_id),
            )),
        }
    }

    fn barrier(&self, name: &str, timeout: Duration, value: u64) -> Result<u64> {
        let call = Call::Barrier {
            name: name.to_string(),
            timeout_ms: millis(timeout),
            value,
        };
        match self.call(call, timeout)? {
            Answer::Number(n) => Ok(n),
            other => Err(Error::coord(
                StatusCode::Internal,
                format!("the coordinator answered barrier `{name}` with {other:?}"),
            )),
        }
    }

    /// Records the job's first failure, ends every pending call with it and tells the callback.
    fn fail(&self, code: StatusCode, message: String) {
        {
            let mut c = lock(&self.calls);
            if c.failure.is_some() || c.closed {
                return;
            }
            // Recorded before any pending call learns of it: a caller whose call just failed
            // must find the same failure in `health()`.
            c.failure = Some((code, message.clone()));
            self.failed.store(true, Ordering::SeqCst);
            for (_, tx) in c.pending.drain() {
                let _ = tx.try_send(Err((code, message.clone())));
            }
        }
        self.gate_changed.notify_all();
        if let Some(cb) = &self.opts.on_failure {
            cb(&Error::coord(code, message));
        }
    }

    fn dispatch(&self, msg: ToClient) {
        match msg {
            ToClient::Reply { id, result } => {
                if result.is_ok() && id == self.shutdown_call.load(Ordering::SeqCst) {
                    self.closing.store(true, Ordering::SeqCst);
                }
                if let Some(tx) = lock(&self.calls).pending.remove(&id) {
                    let _ = tx.try_send(result);
                }
            }
            ToClient::Stop { by, reason } => {
                *lock(&self.stop) = Some(StopNotice {
                    by: by as usize,
                    reason,
                });
                self.stop_flag.store(true, Ordering::SeqCst);
                let step = {
                    let mut gate = lock(&self.gate);
                    gate.agreeing = true;
                    gate.step
                };
                let frame = ToServer::StopStep { step }.encode();
                if let Err(e) = write_frame(&mut *lock(&self.writer), &frame) {
                    self.fail(
                        StatusCode::Unavailable,
                        lost_msg(&self.addr, &e.to_string()),
                    );
                }
            }
            ToClient::StopAt { step } => {
                let mut gate = lock(&self.gate);
                gate.stop_at = Some(step);
                gate.agreeing = false;
                self.gate_changed.notify_all();
            }
            ToClient::Failed { code, message } | ToClient::Refused { code, message } => {
                self.fail(code, message)
            }
            ToClient::HeartbeatAck | ToClient::Welcome => {}
        }
    }

    fn heartbeat(&self) -> std::io::Result<()> {
        let step = match self.step.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s - 1),
        };
        // A writer busy with a large put is itself proof of life: skip this beat.
        match self.writer.try_lock() {
            Ok(mut w) => write_frame(&mut *w, &ToServer::Heartbeat { step }.encode()),
            Err(_) => Ok(()),
        }
    }
}

fn lost_msg(addr: &str, what: &str) -> String {
    lost(addr, &format!("({what})")).to_string()
}

/// The background thread: heartbeats out, replies and notices in, the coordinator's silence
/// watched. Ends when the client closes or the connection is lost.
fn background(s: Arc<Shared>, mut reader: TcpStream, mut frames: FrameReader) {
    let interval = s.opts.heartbeat_interval;
    let mut next_beat = Instant::now();
    let mut last_heard = Instant::now();
    while !s.closing.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now >= next_beat {
            if let Err(e) = s.heartbeat() {
                if !s.closing.load(Ordering::SeqCst) {
                    s.fail(StatusCode::Unavailable, lost_msg(&s.addr, &e.to_string()));
                }
                return;
            }
            next_beat = after(now, interval);
        }
        match frames.poll(&mut reader, MAX_FRAME) {
            Ok(Polled::Frame(body)) => {
                last_heard = Instant::now();
                match ToClient::decode(&body) {
                    Ok(msg) => s.dispatch(msg),
                    Err(m) => {
                        let msg = format!(
                            "malformed message from the coordinator at {}: {}",
                            s.addr, m.0
                        );
                        return s.fail(StatusCode::Internal, msg);
                    }
                }
            }
            Ok(Polled::Bytes) => last_heard = Instant::now(),
            Ok(Polled::Idle) => {}
            Err(e) => {
                if !s.closing.load(Ordering::SeqCst) {
                    s.fail(StatusCode::Unavailable, lost_msg(&s.addr, &e.to_string()));
                }
                return;
            }
        }
        let silent = last_heard.elapsed();
        if silent > s.opts.heartbeat_timeout && !s.closing.load(Ordering::SeqCst) {
            let msg = format!(
                "the coordinator at {} sent nothing for {} (the heartbeat timeout): its host is \
                 down or hung, or the network between the hosts failed",
                s.addr,
                secs(silent)
            );
            return s.fail(StatusCode::Unavailable, msg);
        }
    }
}
