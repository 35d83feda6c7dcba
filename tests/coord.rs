//! The coordinator with real OS processes on 127.0.0.1: semantics across four processes, a
//! killed, a frozen and a stuck process, a killed coordinator, refusals, and hostile raw peers.
//!
//! Child processes are this test binary run again with `BASIC_COORD_TEST_ROLE` set, selecting
//! [`child_process_entry`] (ignored in a normal run). Every child is killed by a guard on drop
//! and exits by itself after [`CHILD_LIFETIME`]; every test body runs under [`within`], which
//! kills the test's children and fails it past its deadline. Times printed are wall-clock on
//! this machine, measured from the kill to each survivor's error.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use basic::coord::{Client, ClientOptions, Server, ServerOptions};
use basic::StatusCode;

const ROLE: &str = "BASIC_COORD_TEST_ROLE";
const CHILD_LIFETIME: Duration = Duration::from_secs(90);
const HB_INTERVAL_MS: u64 = 100;
/// Short, so the failure tests are quick; long enough that a child starved of CPU by the rest
/// of the suite for a moment is not taken for dead.
const HB_TIMEOUT_MS: u64 = 2000;
/// For the tests where nobody should fail.
const HB_TIMEOUT_CALM_MS: u64 = 10_000;

// ---------------------------------------------------------------- harness (parent side)

/// Runs `f` on a thread; past `secs` kills the children it started and fails the test.
fn within<T: Send + 'static>(secs: u64, f: impl FnOnce(Procs) -> T + Send + 'static) -> T {
    let procs = Procs::default();
    let p = procs.clone();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(p)));
        let _ = tx.send(r);
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(Ok(v)) => v,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => {
            procs.kill_all();
            panic!("test did not finish within {secs} s; its child processes were killed");
        }
    }
}

/// The pids a test started, for its deadline to kill.
#[derive(Clone, Default)]
struct Procs(Arc<Mutex<Vec<u32>>>);

impl Procs {
    fn kill_all(&self) {
        for pid in self.0.lock().unwrap().iter() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }

    /// Starts a child in `role` with `env`.
    fn spawn(&self, role: &str, env: &[(&str, String)]) -> Peer {
        let exe = std::env::current_exe().unwrap();
        let mut cmd = Command::new(exe);
        cmd.args([
            "child_process_entry",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, role)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn a child process");
        self.0.lock().unwrap().push(child.id());
        let out = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Peer {
            child,
            lines,
            role: role.to_string(),
        }
    }
}

/// A child process; killed and reaped on drop whatever happened.
struct Peer {
    child: Child,
    lines: Receiver<String>,
    role: String,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Peer {
    /// The rest of the first line starting with `prefix`, waiting up to `secs`. A `FAIL` line
    /// fails the test with the child's message.
    fn expect(&self, prefix: &str, secs: u64) -> String {
        let until = Instant::now() + Duration::from_secs(secs);
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with("FAIL") => panic!("child {} failed: {l}", self.role),
                Ok(l) if l.starts_with(prefix) => return l[prefix.len()..].trim().to_string(),
                Ok(_) => {}
                Err(_) => panic!(
                    "child {} printed no `{prefix}` line within {secs} s",
                    self.role
                ),
            }
        }
    }

    /// Every line up to `last`, or the child's `FAIL` line (or silence) as an error.
    fn lines_until(&self, last: &str, secs: u64) -> Result<Vec<String>, String> {
        let until = Instant::now() + Duration::from_secs(secs);
        let mut v = vec![];
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with("FAIL") => return Err(format!("{}: {l}", self.role)),
                Ok(l) if l == last => return Ok(v),
                Ok(l) => v.push(l),
                Err(_) => return Err(format!("{}: no `{last}` within {secs} s", self.role)),
            }
        }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

fn env_of(
    addr: &str,
    id: usize,
    n: usize,
    extra: &[(&str, String)],
) -> Vec<(&'static str, String)> {
    let mut v: Vec<(&'static str, String)> = vec![
        ("COORD_ADDR", addr.to_string()),
        ("COORD_ID", id.to_string()),
        ("COORD_N", n.to_string()),
    ];
    for (k, val) in extra {
        let k: &'static str = Box::leak(k.to_string().into_boxed_str());
        v.push((k, val.clone()));
    }
    v
}

/// Starts process 0 (which serves) and processes 1..n, all in `scenario`; returns them in id
/// order once every one has printed `READY`.
fn start_job(procs: &Procs, scenario: &str, n: usize, extra: &[(&str, String)]) -> Vec<Peer> {
    let mut env = env_of("", 0, n, extra);
    env.push(("COORD_SCENARIO", scenario.to_string()));
    env.push(("COORD_SERVE", "1".into()));
    let p0 = procs.spawn(&format!("{scenario}#0"), &env);
    let addr = p0.expect("ADDR", 20);
    let mut peers = vec![p0];
    for id in 1..n {
        let mut env = env_of(&addr, id, n, extra);
        env.push(("COORD_SCENARIO", scenario.to_string()));
        peers.push(procs.spawn(&format!("{scenario}#{id}"), &env));
    }
    for p in &peers {
        p.expect("READY", 30);
    }
    peers
}

// ---------------------------------------------------------------- the child side

/// Not a test: the body of the child processes the tests start (ignored in a normal run; it
/// returns at once when run without its role).
#[test]
#[ignore]
fn child_process_entry() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    // libtest has printed `test child_process_entry ... ` without a newline: end that line so
    // every line of ours starts with its tag.
    println!();
    // Whatever happens, a child does not outlive its test.
    std::thread::spawn(|| {
        std::thread::sleep(CHILD_LIFETIME);
        std::process::exit(3);
    });
    let code = match child(&role) {
        Ok(()) => 0,
        Err(e) => {
            println!("FAIL {e}");
            1
        }
    };
    std::process::exit(code);
}

fn var(k: &str) -> String {
    std::env::var(k).unwrap_or_default()
}

fn child(role: &str) -> Result<(), String> {
    let n: usize = var("COORD_N").parse().map_err(|_| "COORD_N")?;
    let id: usize = var("COORD_ID").parse().map_err(|_| "COORD_ID")?;
    let scenario = var("COORD_SCENARIO");
    let mut addr = var("COORD_ADDR");
    let server = if var("COORD_SERVE") == "1" {
        let opts = ServerOptions {
            stuck_timeout: var("COORD_STUCK_MS")
                .parse()
                .ok()
                .map(Duration::from_millis),
            ..Default::default()
        };
        let s = Server::start("127.0.0.1:0", n, opts).map_err(|e| e.to_string())?;
        addr = s.local_addr().to_string();
        println!("ADDR {addr}");
        Some(s)
    } else {
        None
    };
    let opts = ClientOptions {
        registration_timeout: Duration::from_secs(20),
        heartbeat_interval: Duration::from_millis(HB_INTERVAL_MS),
        heartbeat_timeout: Duration::from_millis(if scenario == "semantics" {
            HB_TIMEOUT_CALM_MS
        } else {
            HB_TIMEOUT_MS
        }),
        ..Default::default()
    };
    let c = Client::connect(&addr, id, n, opts).map_err(|e| format!("{role}: {e}"))?;
    c.barrier("ready", Duration::from_secs(20))
        .map_err(|e| e.to_string())?;
    println!("READY");
    match scenario.as_str() {
        "semantics" => semantics(&c, id, n)?,
        "wait" => wait_for_failure(&c, None),
        "stuck" => wait_for_failure(&c, Some(var("COORD_STUCK_AT").parse().unwrap_or(5))),
        other => return Err(format!("unknown scenario {other}")),
    }
    drop(server);
    Ok(())
}

fn check(ok: bool, what: impl Into<String>) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(what.into())
    }
}

fn code_of(r: &basic::Error) -> Option<StatusCode> {
    r.status_code()
}

/// Every semantic the plugins and the trainer rely on, from each of `n` processes.
fn semantics(c: &Client, id: usize, n: usize) -> Result<(), String> {
    let t = Duration::from_secs(10);
    let e = |e: basic::Error| e.to_string();
    c.put(&format!("own/{id}"), format!("value-{id}").as_bytes())
        .map_err(e)?;
    let again = c.put(&format!("own/{id}"), b"other").unwrap_err();
    check(
        code_of(&again) == Some(StatusCode::AlreadyExists),
        format!("second put: {again}"),
    )?;
    // Every process races to set one key: exactly one wins, all read the winner's value.
    match c.put("shared", format!("from-{id}").as_bytes()) {
        Ok(()) => println!("WON"),
        Err(x) if code_of(&x) == Some(StatusCode::AlreadyExists) => {}
        Err(x) => return Err(format!("racing put: {x}")),
    }
    c.barrier("after-puts", t).map_err(e)?;
    for j in 0..n {
        let v = c.get(&format!("own/{j}"), t).map_err(e)?;
        check(
            v == format!("value-{j}").as_bytes(),
            format!("own/{j} = {v:?}"),
        )?;
    }
    let shared = c.try_get("shared").map_err(e)?;
    println!("SHARED {}", String::from_utf8_lossy(&shared));
    let miss = c.try_get("never").unwrap_err();
    check(
        code_of(&miss) == Some(StatusCode::NotFound),
        format!("try_get: {miss}"),
    )?;
    let start = Instant::now();
    let late = c.get("never", Duration::from_millis(300)).unwrap_err();
    let took = start.elapsed();
    check(
        code_of(&late) == Some(StatusCode::DeadlineExceeded)
            && late.to_string().contains("`never`"),
        format!("get timeout: {late}"),
    )?;
    check(
        took >= Duration::from_millis(290) && took < Duration::from_secs(3),
        format!("get timeout took {took:?}"),
    )?;
    // A value set while another process waits wakes it.
    if id == 1 {
        std::thread::sleep(Duration::from_millis(200));
        c.put("late", b"here").map_err(e)?;
    } else {
        check(c.get("late", t).map_err(e)? == b"here", "late value")?;
    }
    for _ in 0..3 {
        c.barrier("again", t).map_err(e)?;
    }
    partial_barrier(c, id)?;
    stop_agreement(c, id)?;
    c.shutdown(t).map_err(e)?;
    println!("OK");
    Ok(())
}

/// Process 3 skips barrier `partial`: the others time out naming it, and its late call fails
/// at once with the same error.
fn partial_barrier(c: &Client, id: usize) -> Result<(), String> {
    let t = Duration::from_secs(10);
    let e = |e: basic::Error| e.to_string();
    if id == 3 {
        c.barrier("after-partial", t).map_err(e)?;
        let start = Instant::now();
        let late = c.barrier("partial", t).unwrap_err();
        check(
            start.elapsed() < Duration::from_secs(1),
            "late barrier waited",
        )?;
        check(
            late.to_string().contains("did not arrive"),
            format!("late: {late}"),
        )?;
    } else {
        let err = c
            .barrier("partial", Duration::from_millis(500))
            .unwrap_err();
        let msg = err.to_string();
        check(
            code_of(&err) == Some(StatusCode::DeadlineExceeded)
                && msg.contains("process(es) 3 did not arrive")
                && msg.contains("`partial`"),
            format!("partial barrier: {msg}"),
        )?;
        c.barrier("after-partial", t).map_err(e)?;
    }
    Ok(())
}

/// Steps in lockstep (each step ends in a barrier, as collectives would hold the processes
/// together; process 1 is the slow host), process 2 posts a stop at its step 15, and every
/// process stops at the same step, max(reported) + 1, though some are blocked in the step's
/// "collective" while the others wait for the agreement.
fn stop_agreement(c: &Client, id: usize) -> Result<(), String> {
    let t = Duration::from_secs(10);
    let e = |e: basic::Error| e.to_string();
    // Nobody posts before everyone has passed this barrier.
    check(c.stop_requested().is_none(), "stop before any request")?;
    c.barrier("before-stop", t).map_err(e)?;
    let start = Instant::now();
    let mut step = 10u64;
    while !c.begin_step(step).map_err(e)? {
        if id == 2 && step == 15 {
            c.request_stop("test preemption").map_err(e)?;
        }
        if id == 1 {
            std::thread::sleep(Duration::from_millis(30));
        }
        c.barrier("step", t).map_err(e)?;
        step += 1;
        check(start.elapsed() < t, "no stop within 10 s")?;
    }
    let notice = c.stop_requested().ok_or("stopped without a notice")?;
    check(
        notice.by == 2 && notice.reason == "test preemption",
        format!("{notice:?}"),
    )?;
    check(
        c.stop_step() == Some(step),
        format!("{:?} vs {step}", c.stop_step()),
    )?;
    println!("STOP_STEP {step}");
    Ok(())
}

/// Reports steps (stopping at `stuck_at`, still heartbeating) and waits in a get that is never
/// satisfied; prints `DEAD <unix ms> <code> <message>` when the job fails, once both the
/// pending call and `health()` say so.
fn wait_for_failure(c: &Client, stuck_at: Option<u64>) {
    let waiter = c.clone();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let r = waiter.get("never", Duration::from_secs(60));
        let _ = tx.send((unix_ms(), r));
    });
    let mut step = 0u64;
    loop {
        if stuck_at.is_none_or(|s| step <= s) {
            c.report_step(step);
            step += 1;
        }
        if let Ok((at, r)) = rx.try_recv() {
            let err = match r {
                Ok(v) => {
                    println!("FAIL the get returned {v:?}");
                    return;
                }
                Err(e) => e,
            };
            let health = c.health().err().map(|e| e.to_string()).unwrap_or_default();
            if health != err.to_string() {
                println!("FAIL health() says {health:?} but the call {err}");
                return;
            }
            println!("DEAD {at} {:?} {err}", err.status_code());
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------- tests over processes

#[test]
fn four_processes_share_keys_barriers_and_a_stop_step() {
    within(90, |procs| {
        let peers = start_job(&procs, "semantics", 4, &[]);
        let outputs: Vec<_> = peers.iter().map(|p| p.lines_until("OK", 30)).collect();
        let failures: Vec<&String> = outputs.iter().filter_map(|o| o.as_ref().err()).collect();
        assert!(failures.is_empty(), "{failures:#?}");
        let mut won = 0;
        let mut shared = vec![];
        let mut steps = vec![];
        for lines in outputs.into_iter().map(Result::unwrap) {
            won += lines.iter().filter(|l| *l == "WON").count();
            shared.extend(
                lines
                    .iter()
                    .filter_map(|l| l.strip_prefix("SHARED "))
                    .map(String::from),
            );
            steps.extend(
                lines
                    .iter()
                    .filter_map(|l| l.strip_prefix("STOP_STEP "))
                    .map(String::from),
            );
        }
        assert_eq!(won, 1, "exactly one process wins the race for `shared`");
        assert_eq!(shared.len(), 4);
        assert!(shared.iter().all(|s| s == &shared[0]), "{shared:?}");
        assert_eq!(steps.len(), 4);
        assert!(steps.iter().all(|s| s == &steps[0]), "{steps:?}");
        let at: u64 = steps[0].parse().unwrap();
        assert!((16..=18).contains(&at), "stopped at {at}, posted at 15");
        println!("every process stopped at step {at} (stop posted at step 15)");
    });
}

/// Kills (or freezes) process `victim` of four after registration and returns, per survivor,
/// the seconds from the kill to its error and the error line.
fn fail_one(procs: &Procs, victim: usize, signal: &str) -> Vec<(usize, f64, String)> {
    let peers = start_job(procs, "wait", 4, &[]);
    std::thread::sleep(Duration::from_millis(300));
    let killed_at = unix_ms();
    let st = Command::new("kill")
        .args([signal, &peers[victim].pid()])
        .status()
        .unwrap();
    assert!(st.success());
    let mut out = vec![];
    for (i, p) in peers.iter().enumerate() {
        if i == victim {
            continue;
        }
        let line = p.expect("DEAD", 20);
        let (at, rest) = line.split_once(' ').unwrap();
        let secs = (at.parse::<u128>().unwrap().saturating_sub(killed_at)) as f64 / 1000.0;
        println!(
            "process {i}: failed {secs:.3} s after `kill {signal}` of process {victim}: {rest}"
        );
        out.push((i, secs, rest.to_string()));
    }
    out
}

#[test]
fn a_killed_process_fails_every_other_process_naming_it() {
    within(90, |procs| {
        let bound = (HB_TIMEOUT_MS as f64) / 1000.0 + 3.0;
        for (i, secs, line) in fail_one(&procs, 2, "-9") {
            assert!(line.contains("process 2 ("), "process {i}: {line}");
            assert!(line.contains("lost its connection"), "process {i}: {line}");
            assert!(line.starts_with("Some(Aborted)"), "process {i}: {line}");
            assert!(secs < bound, "process {i} took {secs} s (bound {bound})");
        }
    });
}

#[test]
fn a_frozen_process_is_found_by_its_missing_heartbeats() {
    within(90, |procs| {
        // SIGSTOP keeps its sockets open: only the heartbeat timeout can tell.
        let timeout = HB_TIMEOUT_MS as f64 / 1000.0;
        for (i, secs, line) in fail_one(&procs, 1, "-STOP") {
            assert!(line.contains("process 1 ("), "process {i}: {line}");
            assert!(line.contains("sent nothing for"), "process {i}: {line}");
            assert!(
                secs >= timeout - 0.3 && secs < timeout + 3.0,
                "process {i} took {secs} s"
            );
        }
    });
}

#[test]
fn a_killed_coordinator_fails_every_process_naming_its_address() {
    within(90, |procs| {
        let peers = start_job(&procs, "wait", 4, &[]);
        std::thread::sleep(Duration::from_millis(300));
        let killed_at = unix_ms();
        Command::new("kill")
            .args(["-9", &peers[0].pid()])
            .status()
            .unwrap();
        for (i, p) in peers.iter().enumerate().skip(1) {
            let line = p.expect("DEAD", 20);
            let (at, rest) = line.split_once(' ').unwrap();
            let secs = (at.parse::<u128>().unwrap() - killed_at) as f64 / 1000.0;
            println!("process {i}: failed {secs:.3} s after kill -9 of the coordinator: {rest}");
            assert!(rest.starts_with("Some(Unavailable)"), "{rest}");
            assert!(
                rest.contains("lost the coordinator at 127.0.0.1:"),
                "{rest}"
            );
            assert!(secs < HB_TIMEOUT_MS as f64 / 1000.0 + 3.0, "{secs}");
        }
    });
}

#[test]
fn a_stuck_process_trips_the_watchdog_naming_it_and_its_step() {
    within(90, |procs| {
        let extra = [
            ("COORD_STUCK_MS", "1500".to_string()),
            ("COORD_STUCK_AT", "5".to_string()),
        ];
        // Process 3 stops reporting steps at 5 (its heartbeats go on); the others keep going.
        let mut env0 = env_of("", 0, 4, &extra);
        env0.push(("COORD_SCENARIO", "stuck".into()));
        env0.push(("COORD_SERVE", "1".into()));
        env0.retain(|(k, _)| *k != "COORD_STUCK_AT");
        env0.push(("COORD_STUCK_AT", "1000000".into()));
        let p0 = procs.spawn("stuck#0", &env0);
        let addr = p0.expect("ADDR", 20);
        let mut peers = vec![p0];
        for id in 1..4 {
            let at = if id == 3 { "5" } else { "1000000" };
            let mut env = env_of(&addr, id, 4, &[("COORD_STUCK_AT", at.to_string())]);
            env.push(("COORD_SCENARIO", "stuck".into()));
            peers.push(procs.spawn(&format!("stuck#{id}"), &env));
        }
        let start = Instant::now();
        for (i, p) in peers.iter().enumerate() {
            let line = p.expect("DEAD", 30);
            println!("process {i}: {line}");
            assert!(line.contains("process 3 is stuck"), "process {i}: {line}");
            assert!(line.contains("stayed at 5"), "process {i}: {line}");
            assert!(line.contains("Some(Aborted)"), "process {i}: {line}");
        }
        let took = start.elapsed();
        assert!(took > Duration::from_millis(1500), "fired after {took:?}");
    });
}

// ---------------------------------------------------------------- in-process clients

fn quick() -> ClientOptions {
    ClientOptions {
        registration_timeout: Duration::from_secs(5),
        heartbeat_interval: Duration::from_millis(HB_INTERVAL_MS),
        heartbeat_timeout: Duration::from_millis(HB_TIMEOUT_CALM_MS),
        ..Default::default()
    }
}

fn connect_bg(
    addr: &str,
    id: usize,
    n: usize,
    opts: ClientOptions,
) -> std::thread::JoinHandle<basic::Result<Client>> {
    let addr = addr.to_string();
    std::thread::spawn(move || Client::connect(&addr, id, n, opts))
}

#[test]
fn an_unreachable_coordinator_is_named_within_the_registration_deadline() {
    within(30, |_| {
        // A port that was free a moment ago: nothing listens there.
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let opts = ClientOptions {
            registration_timeout: Duration::from_millis(1500),
            ..quick()
        };
        let start = Instant::now();
        let err = Client::connect(&addr, 1, 2, opts).unwrap_err();
        let took = start.elapsed();
        println!("unreachable coordinator: error after {took:?}: {err}");
        assert_eq!(err.status_code(), Some(StatusCode::Unavailable));
        assert!(
            err.to_string().contains(&format!("coordinator at {addr}")),
            "{err}"
        );
        assert!(err.to_string().contains("Connection refused"), "{err}");
        assert!(took >= Duration::from_millis(1400) && took < Duration::from_secs(4));
    });
}

#[test]
fn duplicate_out_of_range_and_mismatched_processes_are_refused() {
    within(30, |_| {
        let server = Server::start("127.0.0.1:0", 2, ServerOptions::default()).unwrap();
        let addr = server.local_addr().to_string();
        let first = connect_bg(&addr, 0, 2, quick());
        std::thread::sleep(Duration::from_millis(200));
        let dup = Client::connect(&addr, 0, 2, quick()).unwrap_err();
        assert_eq!(dup.status_code(), Some(StatusCode::AlreadyExists), "{dup}");
        assert!(
            dup.to_string()
                .contains("process id 0 is already registered"),
            "{dup}"
        );
        let count = Client::connect(&addr, 1, 3, quick()).unwrap_err();
        assert_eq!(
            count.status_code(),
            Some(StatusCode::InvalidArgument),
            "{count}"
        );
        assert!(count
            .to_string()
            .contains("job of 3 processes but the coordinator for 2"));
        let range = Client::connect(&addr, 5, 2, quick()).unwrap_err();
        assert!(range.to_string().contains("process id 5"), "{range}");
        // The server's own check, for a peer that skips the client's: a raw hello for id 5.
        let reply = raw_exchange(&addr, &hello_frame(5, 2, ""));
        assert!(reply.contains("process id 5 is out of range"), "{reply}");
        // The job still forms with the right second process.
        let second = Client::connect(&addr, 1, 2, quick()).unwrap();
        let first = first.join().unwrap().unwrap();
        first.put("k", b"v").unwrap();
        assert_eq!(second.get("k", Duration::from_secs(2)).unwrap(), b"v");
        let (a, b) = (first.clone(), second.clone());
        let t = std::thread::spawn(move || a.shutdown(Duration::from_secs(5)));
        b.shutdown(Duration::from_secs(5)).unwrap();
        t.join().unwrap().unwrap();
    });
}

#[test]
fn a_wrong_or_missing_job_token_is_refused() {
    within(30, |_| {
        let opts = ServerOptions {
            job_token: Some("s3cret".into()),
            ..Default::default()
        };
        let server = Server::start("127.0.0.1:0", 2, opts).unwrap();
        let addr = server.local_addr().to_string();
        for token in [None, Some("wrong")] {
            let opts = ClientOptions {
                job_token: token.map(String::from),
                ..quick()
            };
            let err = Client::connect(&addr, 1, 2, opts).unwrap_err();
            assert_eq!(
                err.status_code(),
                Some(StatusCode::PermissionDenied),
                "{err}"
            );
            assert!(err.to_string().contains("BASIC_JOB_TOKEN"), "{err}");
        }
        let with = || ClientOptions {
            job_token: Some("s3cret".into()),
            ..quick()
        };
        let a = connect_bg(&addr, 0, 2, with());
        let b = Client::connect(&addr, 1, 2, with()).unwrap();
        let a = a.join().unwrap().unwrap();
        b.put("x", b"1").unwrap();
        assert_eq!(a.try_get("x").unwrap(), b"1");
    });
}

#[test]
fn registration_times_out_naming_the_missing_processes() {
    within(30, |_| {
        let server = Server::start("127.0.0.1:0", 3, ServerOptions::default()).unwrap();
        let addr = server.local_addr().to_string();
        let opts = ClientOptions {
            registration_timeout: Duration::from_millis(800),
            ..quick()
        };
        let a = connect_bg(&addr, 0, 3, opts.clone());
        let start = Instant::now();
        let err = Client::connect(&addr, 2, 3, opts).unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(4));
        assert_eq!(
            err.status_code(),
            Some(StatusCode::DeadlineExceeded),
            "{err}"
        );
        assert!(
            err.to_string().contains("process(es) 1 did not register"),
            "{err}"
        );
        let a = a.join().unwrap().unwrap_err();
        assert!(a.to_string().contains("did not register"), "{a}");
    });
}

// ---------------------------------------------------------------- hostile raw peers

/// A hello as the wire format defines it (hand-encoded: an independent check of the format).
fn hello_frame(id: u32, n: u32, token: &str) -> Vec<u8> {
    hello_frame_with(id, n, token, 5000)
}

fn hello_frame_with(id: u32, n: u32, token: &str, registration_ms: u64) -> Vec<u8> {
    let mut b = vec![1u8];
    b.extend_from_slice(b"BASICCO\x01");
    b.extend_from_slice(&id.to_be_bytes());
    b.extend_from_slice(&n.to_be_bytes());
    b.extend_from_slice(&(token.len() as u32).to_be_bytes());
    b.extend_from_slice(token.as_bytes());
    for v in [registration_ms, 100, 10_000] {
        b.extend_from_slice(&v.to_be_bytes());
    }
    frame(&b)
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

/// A put of `key` = `value` as a call frame.
fn put_frame(key: &str, value: &[u8]) -> Vec<u8> {
    let mut b = vec![2u8];
    b.extend_from_slice(&7u64.to_be_bytes());
    b.push(1);
    b.extend_from_slice(&(key.len() as u32).to_be_bytes());
    b.extend_from_slice(key.as_bytes());
    b.extend_from_slice(&(value.len() as u32).to_be_bytes());
    b.extend_from_slice(value);
    frame(&b)
}

/// Sends `bytes` from a raw TCP peer and reads until the server closes (within 5 s); returns
/// the text of what came back. Fails the test if the server keeps the connection open.
fn raw_exchange(addr: &str, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(bytes);
    read_to_close(&mut s)
}

fn read_to_close(s: &mut TcpStream) -> String {
    let mut got = vec![];
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => got.extend_from_slice(&buf[..k]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the server kept a hostile connection open: {e}"),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn hostile_raw_peers_get_an_error_and_a_closed_connection_and_the_job_goes_on() {
    within(60, |_| {
        let opts = ServerOptions {
            hello_timeout: Duration::from_millis(500),
            ..Default::default()
        };
        let server = Server::start("127.0.0.1:0", 2, opts).unwrap();
        let addr = server.local_addr().to_string();
        let a = connect_bg(&addr, 0, 2, quick());
        let b = Client::connect(&addr, 1, 2, quick()).unwrap();
        let a = a.join().unwrap().unwrap();
        a.put("kept", b"original").unwrap();

        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "http",
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
                "larger than",
            ),
            (
                "oversized length",
                vec![0xff, 0xff, 0xff, 0xff, 1, 2],
                "larger than",
            ),
            (
                "put before hello",
                put_frame("kept", b"overwritten"),
                "before registering",
            ),
            ("random body", frame(&[9, 8, 7, 6, 5]), "malformed"),
            (
                "wrong magic",
                frame(b"\x01NOTBASIC........................"),
                "not a basic coordinator",
            ),
            ("empty frame", frame(&[]), "malformed"),
        ];
        for (what, bytes, want) in cases {
            let reply = raw_exchange(&addr, &bytes);
            assert!(reply.contains(want), "{what}: got {reply:?}");
        }
        // A frame cut short: the server closes without waiting for the rest.
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&[0, 0, 0, 100, 1, 2, 3]).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        read_to_close(&mut s);
        // A peer that says nothing is closed after the hello timeout.
        let start = Instant::now();
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let reply = read_to_close(&mut s);
        assert!(reply.contains("no hello"), "{reply:?}");
        assert!(start.elapsed() < Duration::from_secs(3));

        // The job is intact: the store unchanged, calls and barriers served, no failure.
        assert_eq!(b.get("kept", Duration::from_secs(2)).unwrap(), b"original");
        b.put("after", b"1").unwrap();
        assert_eq!(a.get("after", Duration::from_secs(2)).unwrap(), b"1");
        let a2 = a.clone();
        let t = std::thread::spawn(move || a2.barrier("still", Duration::from_secs(5)));
        b.barrier("still", Duration::from_secs(5)).unwrap();
        t.join().unwrap().unwrap();
        a.health().unwrap();
        b.health().unwrap();
    });
}

/// Two in-process clients of a fresh two-process job.
fn pair(opts: ServerOptions, client: ClientOptions) -> (Server, Client, Client) {
    let server = Server::start("127.0.0.1:0", 2, opts).unwrap();
    let addr = server.local_addr().to_string();
    let a = connect_bg(&addr, 0, 2, client.clone());
    let b = Client::connect(&addr, 1, 2, client).unwrap();
    (server, a.join().unwrap().unwrap(), b)
}

#[test]
fn an_abort_fails_the_job_with_the_message_and_tells_the_callback() {
    within(30, |_| {
        let (tx, rx) = channel();
        let tx = Mutex::new(tx);
        let opts = ClientOptions {
            on_failure: Some(Arc::new(move |e: &basic::Error| {
                let _ = tx.lock().unwrap().send(e.to_string());
            })),
            ..quick()
        };
        let (_server, a, b) = pair(ServerOptions::default(), opts);
        let waiter = a.clone();
        let pending = std::thread::spawn(move || waiter.get("never", Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(100));
        b.abort("disk full writing shard 3").unwrap();
        let err = pending.join().unwrap().unwrap_err();
        assert_eq!(err.status_code(), Some(StatusCode::Aborted));
        assert!(
            err.to_string()
                .contains("process 1 failed: disk full writing shard 3"),
            "{err}"
        );
        for _ in 0..2 {
            let told = rx.recv_timeout(Duration::from_secs(5)).unwrap();
            assert!(told.contains("disk full"), "{told}");
        }
        assert!(a.health().is_err() && b.health().is_err());
        let later = a.put("x", b"1").unwrap_err();
        assert!(later.to_string().contains("disk full"), "{later}");
    });
}

#[test]
fn a_clean_shutdown_fails_nobody() {
    within(30, |_| {
        let (tx, rx) = channel::<String>();
        let tx = Mutex::new(tx);
        let opts = ClientOptions {
            on_failure: Some(Arc::new(move |e: &basic::Error| {
                let _ = tx.lock().unwrap().send(e.to_string());
            })),
            ..quick()
        };
        let (mut server, a, b) = pair(ServerOptions::default(), opts);
        let t = std::thread::spawn(move || b.shutdown(Duration::from_secs(5)));
        a.shutdown(Duration::from_secs(5)).unwrap();
        // Process 0 stops its server as soon as its own shutdown returns.
        server.stop();
        t.join().unwrap().unwrap();
        assert!(rx.recv_timeout(Duration::from_millis(500)).is_err());
        let after = a.try_get("x").unwrap_err();
        assert!(after.to_string().contains("shut down"), "{after}");
    });
}

#[test]
fn a_job_whose_steps_all_stop_is_reported_hung() {
    within(30, |_| {
        let opts = ServerOptions {
            stuck_timeout: Some(Duration::from_millis(600)),
            ..Default::default()
        };
        let (_server, a, b) = pair(opts, quick());
        a.report_step(3);
        b.report_step(3);
        let start = Instant::now();
        let err = loop {
            if let Err(e) = a.health() {
                break e;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "no watchdog");
            std::thread::sleep(Duration::from_millis(20));
        };
        let msg = err.to_string();
        assert!(msg.contains("the job is hung"), "{msg}");
        assert!(msg.contains("process 0 at 3, process 1 at 3"), "{msg}");
        assert!(start.elapsed() >= Duration::from_millis(500));
    });
}

/// `COORD_LOAD_N` sets the number of clients (64 by default) for a load measurement.
#[test]
fn many_clients_exchange_keys_and_pass_barriers() {
    within(120, |_| {
        let n: usize = std::env::var("COORD_LOAD_N")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(64);
        let server = Server::start("127.0.0.1:0", n, ServerOptions::default()).unwrap();
        let addr = server.local_addr().to_string();
        let start = Instant::now();
        let handles: Vec<_> = (0..n)
            .map(|id| {
                let addr = addr.clone();
                std::thread::spawn(move || {
                    let opts = ClientOptions {
                        registration_timeout: Duration::from_secs(60),
                        ..quick()
                    };
                    let c = Client::connect(&addr, id, n, opts).unwrap();
                    let registered = start.elapsed();
                    c.put(&format!("k/{id}"), &id.to_be_bytes()).unwrap();
                    let mut barrier = vec![];
                    for round in 0..10 {
                        let t = Instant::now();
                        c.barrier(&format!("round-{round}"), Duration::from_secs(60))
                            .unwrap();
                        barrier.push(t.elapsed());
                    }
                    for j in 0..n {
                        let v = c.get(&format!("k/{j}"), Duration::from_secs(30)).unwrap();
                        assert_eq!(v, j.to_be_bytes());
                    }
                    c.shutdown(Duration::from_secs(60)).unwrap();
                    (registered, barrier)
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let reg = results.iter().map(|r| r.0).max().unwrap();
        let mut lat: Vec<Duration> = results.iter().flat_map(|r| r.1.iter().copied()).collect();
        lat.sort();
        println!(
            "{n} clients: all registered after {reg:?}; barrier latency median {:?}, p99 {:?}",
            lat[lat.len() / 2],
            lat[lat.len() * 99 / 100]
        );
    });
}

#[test]
fn a_flood_of_idle_connections_is_capped_and_the_job_is_served() {
    within(60, |_| {
        let (server, a, b) = pair(ServerOptions::default(), quick());
        let addr = server.local_addr().to_string();
        // Past 256 connections waiting for their hello, new ones are closed at once.
        let start = Instant::now();
        let flood: Vec<TcpStream> = (0..300)
            .map(|_| TcpStream::connect(&addr).unwrap())
            .collect();
        println!("300 connections opened in {:?}", start.elapsed());
        a.put("during", b"flood").unwrap();
        assert_eq!(b.get("during", Duration::from_secs(2)).unwrap(), b"flood");
        let closed = flood
            .iter()
            .filter(|s| {
                s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
                matches!((&mut &**s).read(&mut [0u8; 1]), Ok(0))
            })
            .count();
        assert!(
            closed >= 300 - 256,
            "{closed} of 300 idle connections were closed"
        );
        assert!(
            closed < 300 - 200,
            "{closed} of 300 idle connections were closed"
        );
        drop(flood);
        a.health().unwrap();
        b.health().unwrap();
    });
}

#[test]
fn huge_timeouts_from_a_raw_peer_do_not_break_the_server() {
    within(30, |_| {
        let server = Server::start("127.0.0.1:0", 2, ServerOptions::default()).unwrap();
        let addr = server.local_addr().to_string();
        // A peer that registers by hand as process 1 with a registration deadline of u64::MAX ms.
        let mut raw = TcpStream::connect(&addr).unwrap();
        raw.write_all(&hello_frame_with(1, 2, "", u64::MAX))
            .unwrap();
        let a = Client::connect(&addr, 0, 2, quick()).unwrap();
        // A get of u64::MAX ms from it: the server caps the deadline instead of overflowing.
        let mut get = vec![2u8];
        get.extend_from_slice(&1u64.to_be_bytes());
        get.push(2);
        get.extend_from_slice(&3u32.to_be_bytes());
        get.extend_from_slice(b"key");
        get.extend_from_slice(&u64::MAX.to_be_bytes());
        raw.write_all(&frame(&get)).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        a.put("key", b"v").unwrap();
        a.health().unwrap();
        // Its departure is noticed by the (still running) server and named.
        drop(raw);
        let start = Instant::now();
        let err = loop {
            if let Err(e) = a.health() {
                break e;
            }
            assert!(start.elapsed() < Duration::from_secs(5), "no failure");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(err.to_string().contains("process 1 (127.0.0.1:"), "{err}");
    });
}

#[test]
fn a_stop_before_any_step_stops_at_the_first_one() {
    within(30, |_| {
        let (_server, a, b) = pair(ServerOptions::default(), quick());
        a.request_stop("SIGTERM before the first step").unwrap();
        // Resumed at step 500: no process has begun a step when the notice arrives.
        assert!(a.begin_step(500).unwrap());
        // The other process learns of it a moment later.
        let start = Instant::now();
        while b.stop_requested().is_none() {
            assert!(start.elapsed() < Duration::from_secs(5), "no notice");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(b.begin_step(500).unwrap());
        assert_eq!(a.stop_step(), Some(0));
        let notice = b.stop_requested().unwrap();
        assert_eq!(
            (notice.by, notice.reason.as_str()),
            (0, "SIGTERM before the first step")
        );
        // A second request changes nothing.
        b.request_stop("again").unwrap();
        assert_eq!(a.stop_requested().unwrap().by, 0);
    });
}

// ---------------------------------------------------------------- hostile peers: the gaps

#[test]
fn the_server_listens_only_on_the_address_it_was_given() {
    within(30, |_| {
        let server = Server::start("127.0.0.1:0", 2, ServerOptions::default()).unwrap();
        let port = server.local_addr().port();
        assert_eq!(server.local_addr().ip().to_string(), "127.0.0.1");
        // Another loopback address of this host: nothing listens there on that port.
        let other = format!("127.0.0.2:{port}");
        let err = TcpStream::connect_timeout(&other.parse().unwrap(), Duration::from_secs(2))
            .expect_err("the server must not listen on 127.0.0.2");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
        // An address of another host is refused at once, naming it.
        let e = Server::start("192.0.2.1:0", 2, ServerOptions::default())
            .err()
            .expect("TEST-NET-1 is no address of this host");
        assert!(
            e.to_string().contains("cannot listen on 192.0.2.1:0"),
            "{e}"
        );
    });
}

#[test]
fn a_stray_process_of_another_job_can_neither_join_nor_write_keys() {
    within(60, |_| {
        let token = |t: &str| ClientOptions {
            job_token: Some(t.into()),
            ..quick()
        };
        let opts = ServerOptions {
            job_token: Some("job-a".into()),
            ..Default::default()
        };
        let server = Server::start("127.0.0.1:0", 2, opts).unwrap();
        let addr = server.local_addr().to_string();
        // Before the job forms: another job's process takes no id (its hello and the put that
        // follows it in the same write are refused), so the real process 1 still registers.
        let mut stray = hello_frame(1, 2, "job-b");
        stray.extend(put_frame("shared", b"from job b"));
        let reply = raw_exchange(&addr, &stray);
        assert!(
            reply.contains("did not present this job's token"),
            "{reply}"
        );
        let reply = raw_exchange(&addr, &hello_frame(1, 2, ""));
        assert!(reply.contains("BASIC_JOB_TOKEN"), "{reply}");
        let a = connect_bg(&addr, 0, 2, token("job-a"));
        let b = Client::connect(&addr, 1, 2, token("job-a")).unwrap();
        let a = a.join().unwrap().unwrap();
        assert!(
            a.try_get("shared").is_err(),
            "the stray's put reached the store"
        );
        a.put("shared", b"from job a").unwrap();
        // After it forms: a stray with the right token and a taken id is refused too, and the
        // value stays the job's own.
        let mut late = hello_frame(0, 2, "job-a");
        late.extend(put_frame("shared", b"overwritten"));
        let reply = raw_exchange(&addr, &late);
        assert!(reply.contains("already registered"), "{reply}");
        assert_eq!(
            b.get("shared", Duration::from_secs(2)).unwrap(),
            b"from job a"
        );
        a.health().unwrap();
        b.health().unwrap();
    });
}

/// A SplitMix64 stream for the hostile peers below (deterministic: a failure reproduces).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A damaged copy of a valid stream of frames: bytes flipped, cut, duplicated or inserted.
fn mutate(r: &mut Rng, valid: &[u8]) -> Vec<u8> {
    let mut v = valid.to_vec();
    for _ in 0..1 + r.below(4) {
        if v.is_empty() {
            v.push(r.next() as u8);
        }
        let at = r.below(v.len());
        match r.below(5) {
            0 => v[at] ^= 1 << r.below(8),
            1 => v[at] = r.next() as u8,
            2 => v.truncate(at),
            3 => v.insert(at, r.next() as u8),
            _ => {
                let end = (at + 1 + r.below(16)).min(v.len());
                let dup = v[at..end].to_vec();
                v.splice(at..at, dup);
            }
        }
    }
    v
}

#[test]
fn hundreds_of_damaged_conversations_leave_process_0_and_the_store_intact() {
    within(120, |_| {
        let opts = ServerOptions {
            job_token: Some("tok".into()),
            hello_timeout: Duration::from_millis(300),
            ..Default::default()
        };
        let opts_c = ClientOptions {
            job_token: Some("tok".into()),
            ..quick()
        };
        let (server, a, b) = pair(opts, opts_c);
        let addr = server.local_addr().to_string();
        a.put("kept", b"original").unwrap();
        // Valid conversations of a peer: hellos (the ids are taken: refused), calls, heartbeats.
        let mut call = vec![2u8];
        call.extend_from_slice(&1u64.to_be_bytes());
        call.push(4);
        call.extend_from_slice(&4u32.to_be_bytes());
        call.extend_from_slice(b"sync");
        call.extend_from_slice(&100u64.to_be_bytes());
        call.extend_from_slice(&0u64.to_be_bytes());
        let valid: Vec<Vec<u8>> = vec![
            [hello_frame(1, 2, "tok"), put_frame("kept", b"x")].concat(),
            [hello_frame(0, 2, "tok"), frame(&call)].concat(),
            [
                put_frame("new", b"y"),
                frame(&[3, 1, 0, 0, 0, 0, 0, 0, 0, 9]),
            ]
            .concat(),
        ];
        let mut r = Rng(20261205);
        let start = Instant::now();
        let (mut closed, mut with_error) = (0, 0);
        for i in 0..300 {
            let bytes = mutate(&mut r, &valid[i % valid.len()]);
            let mut s = TcpStream::connect(&addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = s.write_all(&bytes);
            // Half the peers hang up at once, half wait for the server to close.
            if i % 2 == 0 {
                let _ = s.shutdown(std::net::Shutdown::Write);
            }
            let reply = read_to_close(&mut s);
            closed += 1;
            with_error += usize::from(!reply.is_empty());
        }
        println!(
            "300 damaged conversations in {:?}: all closed, {with_error} with an error frame",
            start.elapsed()
        );
        assert_eq!(closed, 300);
        // Process 0's server is alive and the store intact: the job goes on.
        assert_eq!(b.get("kept", Duration::from_secs(2)).unwrap(), b"original");
        assert!(a.try_get("new").is_err(), "a hostile put reached the store");
        b.put("after", b"1").unwrap();
        assert_eq!(a.get("after", Duration::from_secs(2)).unwrap(), b"1");
        let a2 = a.clone();
        let t = std::thread::spawn(move || a2.barrier("still", Duration::from_secs(5)));
        b.barrier("still", Duration::from_secs(5)).unwrap();
        t.join().unwrap().unwrap();
        a.health().unwrap();
        b.health().unwrap();
    });
}

#[test]
fn a_registered_process_that_sends_garbage_fails_the_job_naming_it_and_the_server_lives() {
    within(30, |_| {
        let server = Server::start("127.0.0.1:0", 2, ServerOptions::default()).unwrap();
        let addr = server.local_addr().to_string();
        let mut raw = TcpStream::connect(&addr).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        raw.write_all(&hello_frame(1, 2, "")).unwrap();
        let a = Client::connect(&addr, 0, 2, quick()).unwrap();
        a.put("kept", b"v").unwrap();
        // Process 1 (the raw peer) sends a call with an unknown tag.
        raw.write_all(&frame(&[2, 0, 0, 0, 0, 0, 0, 0, 1, 99]))
            .unwrap();
        let reply = read_to_close(&mut raw);
        assert!(reply.contains("unknown call tag 99"), "{reply}");
        let start = Instant::now();
        let err = loop {
            if let Err(e) = a.health() {
                break e;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "the job did not fail"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(err.to_string().contains("process 1"), "{err}");
        // The server still answers: a new peer is told the job has failed.
        let reply = raw_exchange(&addr, &hello_frame(1, 2, ""));
        assert!(reply.contains("the job has failed"), "{reply}");
        drop(server);
    });
}
