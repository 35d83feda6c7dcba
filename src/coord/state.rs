//! The coordinator's decisions: registration, the key-value store, barriers, liveness, the
//! watchdog and the stop agreement, as one state that the server's threads change under a lock.
//! Nothing here touches a socket except to queue frames for a connection's writer.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::server::ServerOptions;
use super::wire::{Answer, Call, Hello, ToClient, ToServer};
use super::{after, fmt_ids, secs, SHUTDOWN_BARRIER};
use crate::error::{Error, StatusCode};

/// What the reader, writer and state share about one connection.
#[derive(Default)]
pub(super) struct ConnFlags {
    /// When the last byte arrived, in ms since the server started.
    pub(super) seen_ms: AtomicU64,
    /// Registered: frames may be up to MAX_FRAME.
    pub(super) registered: AtomicBool,
    /// The state decided to close it: stop reading.
    pub(super) closing: AtomicBool,
}

/// What a connection's writer is asked to do.
pub(super) enum Out {
    Frame(Vec<u8>),
    /// Send nothing more and close the sending side.
    Close,
}

pub(super) struct Conn {
    peer: SocketAddr,
    out: Sender<Out>,
    pub(super) stream: TcpStream,
    flags: Arc<ConnFlags>,
    opened: Instant,
    process: Option<usize>,
}

/// A registered process.
struct Proc {
    conn: u64,
    peer: SocketAddr,
    /// Until when it waits for the others to register (before the job is formed).
    registration_deadline: Instant,
    heartbeat_timeout: Duration,
    step: Option<u64>,
    step_changed: Instant,
    /// Passed the shutdown barrier: its disconnect is not a failure.
    left: bool,
    /// Entered the shutdown barrier: done stepping.
    finishing: bool,
}

struct Waiter {
    conn: u64,
    id: u64,
    deadline: Instant,
    timeout: Duration,
}

#[derive(Default)]
struct Barrier {
    /// How many times each process has entered this barrier: its next call joins that instance.
    calls: HashMap<usize, u64>,
    instances: BTreeMap<u64, Instance>,
}

#[derive(Default)]
struct Instance {
    waiting: BTreeMap<usize, (Waiter, u64)>,
    /// Every process that has entered it (waiting or already answered).
    entered: BTreeSet<usize>,
    failed: Option<String>,
}

pub(super) struct State {
    n: usize,
    opts: ServerOptions,
    started: Instant,
    next_conn: u64,
    pub(super) conns: HashMap<u64, Conn>,
    procs: Vec<Option<Proc>>,
    formed: Option<Instant>,
    failed: Option<(StatusCode, String)>,
    kv: HashMap<String, Vec<u8>>,
    gets: HashMap<String, Vec<Waiter>>,
    barriers: HashMap<String, Barrier>,
    stop_notice: Option<(u32, String)>,
    /// After a stop notice: the step each process was at when it got it.
    stop_steps: BTreeMap<usize, Option<u64>>,
    /// The agreed stop step, once every process has reported.
    stop_at: Option<u64>,
    pub(super) stopping: bool,
}

impl State {
    pub(super) fn new(n: usize, opts: ServerOptions, now: Instant) -> State {
        State {
            n,
            opts,
            started: now,
            next_conn: 0,
            conns: HashMap::new(),
            procs: (0..n).map(|_| None).collect(),
            formed: None,
            failed: None,
            kv: HashMap::new(),
            gets: HashMap::new(),
            barriers: HashMap::new(),
            stop_notice: None,
            stop_steps: BTreeMap::new(),
            stop_at: None,
            stopping: false,
        }
    }

    pub(super) fn unregistered(&self) -> usize {
        self.conns.values().filter(|c| c.process.is_none()).count()
    }

    pub(super) fn add_conn(
        &mut self,
        peer: SocketAddr,
        out: Sender<Out>,
        stream: TcpStream,
        flags: Arc<ConnFlags>,
    ) -> u64 {
        self.next_conn += 1;
        let opened = Instant::now();
        let conn = Conn {
            peer,
            out,
            stream,
            flags,
            opened,
            process: None,
        };
        self.conns.insert(self.next_conn, conn);
        self.next_conn
    }

    fn send(&self, conn: u64, msg: &ToClient) {
        if let Some(c) = self.conns.get(&conn) {
            let _ = c.out.send(Out::Frame(msg.encode()));
        }
    }

    fn reply(&self, conn: u64, id: u64, result: std::result::Result<Answer, (StatusCode, String)>) {
        self.send(conn, &ToClient::Reply { id, result });
    }

    /// Sends an error and closes the connection. A registered process closed this way is lost
    /// to the job, which then fails when its reader sees the close.
    pub(super) fn refuse(&mut self, conn: u64, code: StatusCode, message: &str) {
        if let Some(c) = self.conns.get(&conn) {
            let msg = ToClient::Refused {
                code,
                message: message.to_string(),
            };
            let _ = c.out.send(Out::Frame(msg.encode()));
            let _ = c.out.send(Out::Close);
            c.flags.closing.store(true, Ordering::SeqCst);
        }
    }

    fn peer(&self, conn: u64) -> String {
        self.conns
            .get(&conn)
            .map_or_else(|| "?".into(), |c| c.peer.to_string())
    }

    pub(super) fn on_frame(&mut self, conn: u64, body: &[u8], now: Instant) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        if c.flags.closing.load(Ordering::SeqCst) {
            return;
        }
        let process = c.process;
        let msg = match ToServer::decode(body) {
            Ok(m) => m,
            Err(m) => {
                let text = format!("malformed message from {}: {}", c.peer, m.0);
                return self.refuse(conn, StatusCode::InvalidArgument, &text);
            }
        };
        match (process, msg) {
            (None, ToServer::Hello(h)) => self.on_hello(conn, h, now),
            (None, _) => {
                let text = format!(
                    "{} sent a request before registering; a process first sends its hello",
                    self.peer(conn)
                );
                self.refuse(conn, StatusCode::InvalidArgument, &text)
            }
            (Some(p), ToServer::Hello(_)) => {
                let text = format!("process {p} sent a second hello");
                self.refuse(conn, StatusCode::InvalidArgument, &text)
            }
            (Some(p), _) if self.formed.is_none() => {
                let text = format!("process {p} sent a request before every process registered");
                self.refuse(conn, StatusCode::InvalidArgument, &text)
            }
            (Some(p), ToServer::Heartbeat { step }) => {
                self.on_step(p, step, now);
                self.send(conn, &ToClient::HeartbeatAck);
            }
            (Some(p), ToServer::Call { id, call }) => self.on_call(p, conn, id, call, now),
            (Some(p), ToServer::StopStep { step }) => self.on_stop_step(p, step),
        }
    }

    /// Checks a hello and registers its process; forms the job when all are in.
    fn on_hello(&mut self, conn: u64, h: Hello, now: Instant) {
        if let Err((code, msg)) = self.check_hello(&h) {
            return self.refuse(conn, code, &msg);
        }
        let p = h.process_id as usize;
        if let Some(other) = &self.procs[p] {
            let msg = format!(
                "process id {p} is already registered (by {}); give every process a distinct \
                 --process-id (BASIC_PROCESS_ID) from 0 to {}",
                other.peer,
                self.n - 1
            );
            return self.refuse(conn, StatusCode::AlreadyExists, &msg);
        }
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.process = Some(p);
        c.flags.registered.store(true, Ordering::SeqCst);
        self.procs[p] = Some(Proc {
            conn,
            peer: c.peer,
            registration_deadline: after(now, Duration::from_millis(h.registration_ms)),
            heartbeat_timeout: Duration::from_millis(h.heartbeat_timeout_ms),
            step: None,
            step_changed: now,
            left: false,
            finishing: false,
        });
        if self.procs.iter().all(Option::is_some) {
            self.formed = Some(now);
            for pr in self.procs.iter_mut().flatten() {
                pr.step_changed = now;
                if let Some(c) = self.conns.get(&pr.conn) {
                    // Heartbeats are counted from the formation, not from the hello.
                    c.flags.seen_ms.store(
                        now.duration_since(self.started).as_millis() as u64,
                        Ordering::SeqCst,
                    );
                }
            }
            let conns: Vec<u64> = self.procs.iter().flatten().map(|p| p.conn).collect();
            for c in conns {
                self.send(c, &ToClient::Welcome);
            }
        }
    }

    fn check_hello(&self, h: &Hello) -> std::result::Result<(), (StatusCode, String)> {
        let token_ok = match &self.opts.job_token {
            Some(t) => same_token(t.as_bytes(), h.token.as_bytes()),
            None => h.token.is_empty(),
        };
        if !token_ok {
            let msg = if self.opts.job_token.is_none() {
                format!(
                    "process {} presented a job token but the coordinator has none; set the same \
                     BASIC_JOB_TOKEN on every process, process 0 included",
                    h.process_id
                )
            } else {
                format!(
                    "process {} did not present this job's token; set the same BASIC_JOB_TOKEN \
                     on every process (a process of another job cannot join)",
                    h.process_id
                )
            };
            return Err((StatusCode::PermissionDenied, msg));
        }
        if h.num_processes as usize != self.n {
            return Err((
                StatusCode::InvalidArgument,
                format!(
                    "process {} was started for a job of {} processes but the coordinator for {}; \
                     give every process the same --num-processes (BASIC_NUM_PROCESSES)",
                    h.process_id, h.num_processes, self.n
                ),
            ));
        }
        if h.process_id as usize >= self.n {
            return Err((
                StatusCode::InvalidArgument,
                format!(
                    "process id {} is out of range for a job of {} processes; ids go from 0 to {}",
                    h.process_id,
                    self.n,
                    self.n - 1
                ),
            ));
        }
        if h.heartbeat_interval_ms == 0 || h.heartbeat_timeout_ms <= h.heartbeat_interval_ms {
            return Err((
                StatusCode::InvalidArgument,
                format!(
                    "process {} asked for heartbeats every {} ms with a timeout of {} ms; the \
                     timeout must be longer than the interval",
                    h.process_id, h.heartbeat_interval_ms, h.heartbeat_timeout_ms
                ),
            ));
        }
        if let Some((_, msg)) = &self.failed {
            return Err((StatusCode::Aborted, format!("the job has failed: {msg}")));
        }
        Ok(())
    }

    fn on_step(&mut self, p: usize, step: Option<u64>, now: Instant) {
        if let (Some(pr), Some(s)) = (self.procs[p].as_mut(), step) {
            if pr.step != Some(s) {
                pr.step = Some(s);
                pr.step_changed = now;
            }
        }
    }

    fn on_call(&mut self, p: usize, conn: u64, id: u64, call: Call, now: Instant) {
        if let Some((code, msg)) = &self.failed {
            let msg = format!("the job has failed: {msg}");
            return self.reply(conn, id, Err((*code, msg)));
        }
        match call {
            Call::Put { key, value } => self.on_put(conn, id, key, value),
            Call::TryGet { key } => {
                let r = match self.kv.get(&key) {
                    Some(v) => Ok(Answer::Value(v.clone())),
                    None => Err(code_msg(&crate::runtime::kv::not_found(&key))),
                };
                self.reply(conn, id, r)
            }
            Call::Get { key, timeout_ms } => {
                if let Some(v) = self.kv.get(&key) {
                    return self.reply(conn, id, Ok(Answer::Value(v.clone())));
                }
                let timeout = Duration::from_millis(timeout_ms);
                let w = Waiter {
                    conn,
                    id,
                    deadline: after(now, timeout),
                    timeout,
                };
                self.gets.entry(key).or_default().push(w);
            }
            Call::Barrier {
                name,
                timeout_ms,
                value,
            } => self.on_barrier(p, conn, id, name, timeout_ms, value, now),
            Call::RequestStop { reason } => {
                // The notice goes out before the reply: when `request_stop` returns, the
                // requester's own client has the notice.
                if self.stop_notice.is_none() {
                    self.stop_notice = Some((p as u32, reason.clone()));
                    let by = p as u32;
                    self.broadcast(&ToClient::Stop { by, reason });
                }
                self.reply(conn, id, Ok(Answer::Done));
            }
            Call::Abort { message } => {
                self.reply(conn, id, Ok(Answer::Done));
                let msg = format!("process {p} failed: {message}");
                self.fail(StatusCode::Aborted, msg);
            }
        }
    }

    /// Records where process `p` was when the stop notice reached it; once all have, the job
    /// stops at the largest step plus one (orbax's rule): every process can still reach it, as
    /// none has gone past the step it reported.
    fn on_stop_step(&mut self, p: usize, step: Option<u64>) {
        if self.stop_notice.is_none() || self.stop_at.is_some() {
            return;
        }
        self.stop_steps.insert(p, step);
        if self.stop_steps.len() < self.n {
            return;
        }
        let top = self.stop_steps.values().flatten().max();
        let at = top.map_or(0, |s| s.saturating_add(1));
        self.stop_at = Some(at);
        self.broadcast(&ToClient::StopAt { step: at });
    }

    fn on_put(&mut self, conn: u64, id: u64, key: String, value: Vec<u8>) {
        if self.kv.contains_key(&key) {
            let e = crate::runtime::kv::already_set(&key);
            return self.reply(conn, id, Err(code_msg(&e)));
        }
        for w in self.gets.remove(&key).unwrap_or_default() {
            self.reply(w.conn, w.id, Ok(Answer::Value(value.clone())));
        }
        self.kv.insert(key, value);
        self.reply(conn, id, Ok(Answer::Done));
    }

    #[allow(clippy::too_many_arguments)]
    fn on_barrier(
        &mut self,
        p: usize,
        conn: u64,
        id: u64,
        name: String,
        timeout_ms: u64,
        value: u64,
        now: Instant,
    ) {
        if name == SHUTDOWN_BARRIER {
            if let Some(pr) = self.procs[p].as_mut() {
                pr.finishing = true;
            }
        }
        let n = self.n;
        let b = self.barriers.entry(name.clone()).or_default();
        let count = b.calls.entry(p).or_insert(0);
        let gen = *count;
        *count += 1;
        let inst = b.instances.entry(gen).or_default();
        inst.entered.insert(p);
        if let Some(msg) = inst.failed.clone() {
            if inst.entered.len() == n {
                b.instances.remove(&gen);
            }
            return self.reply(conn, id, Err((StatusCode::DeadlineExceeded, msg)));
        }
        let timeout = Duration::from_millis(timeout_ms);
        let w = Waiter {
            conn,
            id,
            deadline: after(now, timeout),
            timeout,
        };
        inst.waiting.insert(p, (w, value));
        if inst.waiting.len() < n {
            return;
        }
        let Some(inst) = b.instances.remove(&gen) else {
            return;
        };
        let max = inst.waiting.values().map(|(_, v)| *v).max().unwrap_or(0);
        for (w, _) in inst.waiting.values() {
            self.reply(w.conn, w.id, Ok(Answer::Number(max)));
        }
        if name == SHUTDOWN_BARRIER {
            for pr in self.procs.iter_mut().flatten() {
                pr.left = true;
            }
        }
    }

    fn broadcast(&self, msg: &ToClient) {
        for pr in self.procs.iter().flatten() {
            self.send(pr.conn, msg);
        }
    }

    /// Fails the job: every process gets the failure now and with every later call.
    fn fail(&mut self, code: StatusCode, message: String) {
        if self.failed.is_some() || self.stopping {
            return;
        }
        self.broadcast(&ToClient::Failed {
            code,
            message: message.clone(),
        });
        self.failed = Some((code, message));
        self.gets.clear();
        self.barriers.clear();
    }

    pub(super) fn on_closed(&mut self, conn: u64, reason: &str, _now: Instant) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        let Some(p) = c.process else {
            return;
        };
        // The id may have been given up (a registration timeout) and taken again since.
        let Some(pr) = self.procs[p].as_ref().filter(|pr| pr.conn == conn) else {
            return;
        };
        if self.formed.is_none() {
            // Before the job forms, a process that goes away frees its id (it may retry).
            self.procs[p] = None;
            return;
        }
        if pr.left {
            return;
        }
        let msg = format!(
            "process {p} ({}) lost its connection to the coordinator ({reason}): it exited, \
             crashed or was killed. The job cannot go on without it; restart every process",
            c.peer
        );
        self.fail(StatusCode::Aborted, msg);
    }

    /// Periodic work: deadlines of hellos, registrations, gets and barriers; heartbeats; the
    /// step watchdog. `since` turns a connection's last-byte stamp into the time since.
    pub(super) fn tick(&mut self, now: Instant, since: impl Fn(u64) -> Duration) {
        self.expire_connections(now);
        self.expire_gets(now);
        self.expire_barriers(now);
        if self.formed.is_none() || self.failed.is_some() {
            return;
        }
        for p in 0..self.n {
            let Some(pr) = &self.procs[p] else { continue };
            let Some(c) = self.conns.get(&pr.conn) else {
                continue;
            };
            let silent = since(c.flags.seen_ms.load(Ordering::SeqCst));
            if !pr.left && silent > pr.heartbeat_timeout {
                let msg = format!(
                    "process {p} ({}) sent nothing for {} (its heartbeat timeout): its host is \
                     down, hung or cut off from the coordinator",
                    pr.peer,
                    secs(silent)
                );
                return self.fail(StatusCode::Aborted, msg);
            }
        }
        if let Some(msg) = self.opts.stuck_timeout.and_then(|t| self.stuck(now, t)) {
            self.fail(StatusCode::Aborted, msg);
        }
    }

    fn expire_connections(&mut self, now: Instant) {
        let hello = self.opts.hello_timeout;
        let late: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.process.is_none() && now.duration_since(c.opened) > hello)
            .filter(|(_, c)| !c.flags.closing.load(Ordering::SeqCst))
            .map(|(&id, _)| id)
            .collect();
        for id in late {
            let msg = format!(
                "{} sent no hello within {}; the coordinator only serves basic processes",
                self.peer(id),
                secs(hello)
            );
            self.refuse(id, StatusCode::DeadlineExceeded, &msg);
        }
        if self.formed.is_some() {
            return;
        }
        // Registration is a barrier: the first deadline that passes fails every process
        // waiting, with one message naming those that never came.
        let expired = self
            .procs
            .iter()
            .flatten()
            .any(|pr| now >= pr.registration_deadline);
        if !expired {
            return;
        }
        let (missing, present) = self.registration_lists();
        let msg = format!(
            "registration timed out: process(es) {missing} did not register with the \
             coordinator (registered: {present}); start every process with the same \
             coordinator address and --num-processes {}",
            self.n
        );
        for p in 0..self.n {
            if let Some(pr) = self.procs[p].take() {
                self.refuse(pr.conn, StatusCode::DeadlineExceeded, &msg);
            }
        }
    }

    fn registration_lists(&self) -> (String, String) {
        let (present, missing): (Vec<usize>, Vec<usize>) =
            (0..self.n).partition(|&p| self.procs[p].is_some());
        (fmt_ids(&missing), fmt_ids(&present))
    }

    fn expire_gets(&mut self, now: Instant) {
        let mut expired = Vec::new();
        for (key, ws) in self.gets.iter_mut() {
            ws.retain(|w| {
                let keep = now < w.deadline;
                if !keep {
                    let e = crate::runtime::kv::not_set_within(key, w.timeout);
                    expired.push((w.conn, w.id, code_msg(&e)));
                }
                keep
            });
        }
        self.gets.retain(|_, ws| !ws.is_empty());
        for (conn, id, e) in expired {
            self.reply(conn, id, Err(e));
        }
    }

    fn expire_barriers(&mut self, now: Instant) {
        let n = self.n;
        let mut replies = Vec::new();
        for (name, b) in self.barriers.iter_mut() {
            for inst in b.instances.values_mut() {
                let Some((who, (w, _))) = inst.waiting.iter().find(|(_, (w, _))| now >= w.deadline)
                else {
                    continue;
                };
                let arrived: Vec<usize> = inst.entered.iter().copied().collect();
                let missing: Vec<usize> = (0..n).filter(|p| !inst.entered.contains(p)).collect();
                let msg = format!(
                    "barrier `{name}` timed out after {} (the deadline of process {who}): \
                     process(es) {} did not arrive (arrived: {}); they are slow, stuck or \
                     running a different program",
                    secs(w.timeout),
                    fmt_ids(&missing),
                    fmt_ids(&arrived)
                );
                for (w, _) in std::mem::take(&mut inst.waiting).into_values() {
                    replies.push((w.conn, w.id, msg.clone()));
                }
                inst.failed = Some(msg);
            }
        }
        for (conn, id, msg) in replies {
            self.reply(conn, id, Err((StatusCode::DeadlineExceeded, msg)));
        }
    }

    /// The watchdog: the message that fails the job, if a process is stuck. A process is stuck
    /// when its step has not changed for `limit` while another process's step is higher; the
    /// job is hung when no process's step has changed for `limit`. Armed once any process has
    /// reported a step; processes in the shutdown barrier are done and not watched.
    fn stuck(&self, now: Instant, limit: Duration) -> Option<String> {
        let procs: Vec<(usize, &Proc)> = self
            .procs
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().map(|p| (i, p)))
            .collect();
        let top = procs.iter().filter_map(|(_, p)| p.step).max()?;
        let leader = procs.iter().find(|(_, p)| p.step == Some(top))?.0;
        let watched: Vec<&(usize, &Proc)> = procs.iter().filter(|(_, p)| !p.finishing).collect();
        for (i, p) in &watched {
            let still = now.duration_since(p.step_changed);
            if p.step.is_none_or(|s| s < top) && still > limit {
                let at = match p.step {
                    Some(s) => format!("its step has stayed at {s}"),
                    None => "it has reported no step".to_string(),
                };
                return Some(format!(
                    "process {i} is stuck: {at} for {} while process {leader} reached step {top}; \
                     it still sends heartbeats, so it is alive but not progressing (a hang in its \
                     data loading or host code). The job stops instead of hanging",
                    secs(still)
                ));
            }
        }
        let finishing = procs.iter().any(|(_, p)| p.finishing);
        let last = procs.iter().map(|(_, p)| p.step_changed).max()?;
        let still = now.duration_since(last);
        if finishing || still <= limit {
            return None;
        }
        let steps: Vec<String> = procs
            .iter()
            .map(|(i, p)| match p.step {
                Some(s) => format!("process {i} at {s}"),
                None => format!("process {i} at none"),
            })
            .collect();
        Some(format!(
            "the job is hung: no process has advanced its step for {} ({}); the processes at \
             the lowest step are the likeliest cause",
            secs(still),
            steps.join(", ")
        ))
    }
}

fn code_msg(e: &Error) -> (StatusCode, String) {
    (
        e.status_code().unwrap_or(StatusCode::Internal),
        e.to_string(),
    )
}

/// Compares tokens in time that depends only on their lengths.
fn same_token(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
