//! Discovery of a process's place in its job from each environment: flags, `BASIC_*`, SLURM
//! (a bracketed node list), GKE TPU, a Kubernetes indexed Job and a JobSet, and a Cloud TPU VM
//! whose metadata server is a stand-in on 127.0.0.1. The environment is a map: nothing here
//! reads or changes the test process's own.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use basic::coord::{discover, Explicit, ProcessSpec};

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn found(explicit: &Explicit, pairs: &[(&str, &str)]) -> ProcessSpec {
    discover(explicit, &env(pairs), false)
        .unwrap_or_else(|e| panic!("{e}"))
        .expect("a multi-process layout")
}

fn error(explicit: &Explicit, pairs: &[(&str, &str)]) -> String {
    discover(explicit, &env(pairs), false)
        .unwrap_err()
        .to_string()
}

fn layout(s: &ProcessSpec) -> (&str, usize, usize) {
    (s.coordinator.as_str(), s.num_processes, s.process_id)
}

#[test]
fn nothing_set_is_a_single_process_run() {
    assert_eq!(
        discover(&Explicit::default(), &env(&[]), false).unwrap(),
        None
    );
    let one = [
        ("BASIC_COORDINATOR", "h:1"),
        ("BASIC_NUM_PROCESSES", "1"),
        ("BASIC_PROCESS_ID", "0"),
    ];
    assert_eq!(
        discover(&Explicit::default(), &env(&one), false).unwrap(),
        None
    );
}

#[test]
fn flags_and_basic_variables_field_by_field() {
    let flags = Explicit {
        coordinator: Some("host0".into()),
        num_processes: Some(4),
        process_id: Some(3),
    };
    let s = found(&flags, &[]);
    assert_eq!(layout(&s), ("host0:8482", 4, 3));
    assert_eq!(s.listen_addr(), "0.0.0.0:8482");

    let vars = [
        ("BASIC_COORDINATOR", "10.0.0.1:9000"),
        ("BASIC_NUM_PROCESSES", "8"),
        ("BASIC_PROCESS_ID", "5"),
        ("BASIC_JOB_TOKEN", "s3cret"),
    ];
    let s = found(&Explicit::default(), &vars);
    assert_eq!(layout(&s), ("10.0.0.1:9000", 8, 5));
    assert_eq!(s.job_token.as_deref(), Some("s3cret"));
    assert_eq!(s.port(), 9000);

    // A flag wins over its variable; the others still come from the variables.
    let one_flag = Explicit {
        process_id: Some(7),
        ..Default::default()
    };
    let s = found(&one_flag, &vars);
    assert_eq!(layout(&s), ("10.0.0.1:9000", 8, 7));
    assert!(s.source.contains("--process-id") && s.source.contains("BASIC_NUM_PROCESSES"));
}

#[test]
fn the_bind_address_is_where_process_0_listens_and_counts_are_bounded() {
    let base = [
        ("BASIC_COORDINATOR", "10.0.0.1:9000"),
        ("BASIC_NUM_PROCESSES", "4"),
        ("BASIC_PROCESS_ID", "0"),
    ];
    assert_eq!(
        found(&Explicit::default(), &base).listen_addr(),
        "0.0.0.0:9000"
    );
    let mut bound = base.to_vec();
    bound.push(("BASIC_COORDINATOR_BIND", "10.0.0.1:9000"));
    let s = found(&Explicit::default(), &bound);
    assert_eq!(s.listen_addr(), "10.0.0.1:9000");
    assert_eq!(s.coordinator, "10.0.0.1:9000");
    let mut typo = base.to_vec();
    typo.push(("BASIC_COORDINATOR_BIND", "10.0.0.1"));
    let e = error(&Explicit::default(), &typo);
    assert!(
        e.contains("BASIC_COORDINATOR_BIND") && e.contains("host:port"),
        "{e}"
    );
    // A count from a variable is bounded before anything is sized by it.
    let huge = [
        ("BASIC_COORDINATOR", "h:1"),
        ("BASIC_NUM_PROCESSES", "1000000000000000"),
        ("BASIC_PROCESS_ID", "0"),
    ];
    let e = error(&Explicit::default(), &huge);
    assert!(
        e.contains("number of processes 1000000000000000 (from BASIC_NUM_PROCESSES)"),
        "{e}"
    );
    assert!(e.contains(&basic::coord::MAX_PROCESSES.to_string()), "{e}");
}

#[test]
fn partial_and_conflicting_settings_are_one_error_naming_the_variables() {
    let e = error(&Explicit::default(), &[("BASIC_PROCESS_ID", "1")]);
    assert!(e.contains("the process id (from BASIC_PROCESS_ID)"), "{e}");
    assert!(e.contains("--coordinator / BASIC_COORDINATOR"), "{e}");
    assert!(e.contains("--num-processes / BASIC_NUM_PROCESSES"), "{e}");

    let e = error(
        &Explicit::default(),
        &[
            ("BASIC_COORDINATOR", "h"),
            ("BASIC_NUM_PROCESSES", "4"),
            ("BASIC_PROCESS_ID", "4"),
        ],
    );
    assert!(e.contains("process id 4 (from BASIC_PROCESS_ID)"), "{e}");
    assert!(e.contains("4 processes (from BASIC_NUM_PROCESSES)"), "{e}");
    assert!(e.contains("from 0 to 3"), "{e}");

    let e = error(&Explicit::default(), &[("BASIC_NUM_PROCESSES", "four")]);
    assert!(e.contains("BASIC_NUM_PROCESSES=\"four\""), "{e}");

    let e = error(
        &Explicit::default(),
        &[
            ("BASIC_COORDINATOR", "h:99999"),
            ("BASIC_NUM_PROCESSES", "2"),
            ("BASIC_PROCESS_ID", "0"),
        ],
    );
    assert!(e.contains("`h:99999`"), "{e}");
}

#[test]
fn slurm_with_a_bracketed_node_list() {
    let s = found(
        &Explicit::default(),
        &[
            ("SLURM_PROCID", "3"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_STEP_NODELIST", "node[001-004,010],other"),
            ("SLURM_JOB_ID", "12345"),
        ],
    );
    // Port 61440 + 12345 % 4096.
    assert_eq!(layout(&s), ("node001:61497", 8, 3));
    assert!(s.source.contains("SLURM_PROCID"), "{}", s.source);

    let e = error(
        &Explicit::default(),
        &[("SLURM_PROCID", "0"), ("SLURM_STEP_NODELIST", "n1")],
    );
    assert!(e.contains("SLURM_NTASKS is not set"), "{e}");
    let e = error(
        &Explicit::default(),
        &[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "2"),
            ("SLURM_STEP_NODELIST", "node[001-"),
        ],
    );
    assert!(e.contains("SLURM_STEP_NODELIST"), "{e}");
    // Explicit values still win over SLURM's.
    let s = found(
        &Explicit {
            coordinator: Some("login:7000".into()),
            ..Default::default()
        },
        &[
            ("SLURM_PROCID", "1"),
            ("SLURM_NTASKS", "2"),
            ("SLURM_STEP_NODELIST", "n[1-2]"),
        ],
    );
    assert_eq!(layout(&s), ("login:7000", 2, 1));
}

#[test]
fn gke_tpu_workers() {
    let s = found(
        &Explicit::default(),
        &[
            ("TPU_WORKER_ID", "2"),
            ("TPU_WORKER_HOSTNAMES", "w-0.svc,w-1.svc,w-2.svc,w-3.svc"),
        ],
    );
    assert_eq!(layout(&s), ("w-0.svc:8482", 4, 2));
    let e = error(&Explicit::default(), &[("TPU_WORKER_ID", "0")]);
    assert!(e.contains("TPU_WORKER_HOSTNAMES is not set"), "{e}");
    let e = error(
        &Explicit::default(),
        &[
            ("TPU_WORKER_ID", "0"),
            ("TPU_WORKER_HOSTNAMES", "a,b"),
            ("MEGASCALE_NUM_SLICES", "2"),
        ],
    );
    assert!(e.contains("MEGASCALE_NUM_SLICES=2"), "{e}");
}

#[test]
fn kubernetes_indexed_job_and_jobset() {
    // An indexed Job: the manifest names the count and the coordinator.
    let s = found(
        &Explicit::default(),
        &[
            ("JOB_COMPLETION_INDEX", "1"),
            ("BASIC_NUM_PROCESSES", "4"),
            ("BASIC_COORDINATOR", "train-0.train-svc:8482"),
        ],
    );
    assert_eq!(layout(&s), ("train-0.train-svc:8482", 4, 1));
    // A JobSet: the coordinator is the index-0 pod under the JobSet's subdomain.
    let s = found(
        &Explicit::default(),
        &[
            ("JOB_COMPLETION_INDEX", "2"),
            ("HOSTNAME", "basic-workers-0-2"),
            ("JOBSET_NAME", "basic"),
            ("BASIC_NUM_PROCESSES", "4"),
        ],
    );
    assert_eq!(layout(&s), ("basic-workers-0-0.basic:8482", 4, 2));
    // A pod is not told its Job's size.
    let e = error(&Explicit::default(), &[("JOB_COMPLETION_INDEX", "0")]);
    assert!(
        e.contains("Kubernetes indexed Job environment gives the process id"),
        "{e}"
    );
    assert!(e.contains("BASIC_NUM_PROCESSES"), "{e}");
    let e = error(
        &Explicit::default(),
        &[
            ("JOB_COMPLETION_INDEX", "2"),
            ("HOSTNAME", "elsewhere"),
            ("JOBSET_NAME", "basic"),
            ("BASIC_NUM_PROCESSES", "4"),
        ],
    );
    assert!(e.contains("HOSTNAME=\"elsewhere\""), "{e}");
}

// ---------------------------------------------------------------- TPU VM metadata stand-in

/// A metadata server on 127.0.0.1 answering `attributes` like Google's: only requests with
/// `Metadata-Flavor: Google` are served, answers carry the same header (unless `google` is
/// false), unknown attributes are 404. Stopped and joined on drop.
struct MetadataStandIn {
    addr: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl MetadataStandIn {
    fn start(attributes: &[(&str, &str)], google: bool) -> MetadataStandIn {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(vec![]));
        let attrs: HashMap<String, String> = attributes
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (s, r) = (stop.clone(), requests.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((c, _)) => serve(c, &attrs, google, &r),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        MetadataStandIn {
            addr,
            stop,
            thread: Some(thread),
            requests,
        }
    }
}

impl Drop for MetadataStandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    mut c: TcpStream,
    attrs: &HashMap<String, String>,
    google: bool,
    log: &Mutex<Vec<String>>,
) {
    c.set_nonblocking(false).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut req = vec![];
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16384 {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&req).into_owned();
    log.lock().unwrap().push(text.clone());
    let path = text.split_whitespace().nth(1).unwrap_or("");
    let flavored = text
        .lines()
        .any(|l| l.eq_ignore_ascii_case("metadata-flavor: google"));
    let key = path.strip_prefix("/computeMetadata/v1/instance/attributes/");
    let (status, body) = match (flavored, key.and_then(|k| attrs.get(k))) {
        (false, _) => (
            "403 Forbidden",
            String::from("missing Metadata-Flavor header"),
        ),
        (true, Some(v)) => ("200 OK", v.clone()),
        (true, None) => ("404 Not Found", String::from("not found")),
    };
    let flavor = if google {
        "Metadata-Flavor: Google\r\n"
    } else {
        ""
    };
    let _ = write!(
        c,
        "HTTP/1.1 {status}\r\n{flavor}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

#[test]
fn a_cloud_tpu_vm_from_its_metadata_server() {
    let md = MetadataStandIn::start(
        &[
            ("agent-worker-number", "1"),
            (
                "worker-network-endpoints",
                "w-0:8470:10.130.0.2,w-1:8470:10.130.0.3,w-2:8470:10.130.0.4,w-3:8470:10.130.0.5",
            ),
        ],
        true,
    );
    let e = env(&[("GCE_METADATA_HOST", &md.addr)]);
    let s = discover(&Explicit::default(), &e, true).unwrap().unwrap();
    assert_eq!(layout(&s), ("10.130.0.2:8482", 4, 1));
    assert!(
        s.source.contains("metadata agent-worker-number"),
        "{}",
        s.source
    );
    let reqs = md.requests.lock().unwrap().clone();
    assert!(
        reqs.iter().all(|r| r.contains("Metadata-Flavor: Google")),
        "{reqs:?}"
    );
    // Asked only on request (on TPU); otherwise never contacted.
    let before = reqs.len();
    assert_eq!(discover(&Explicit::default(), &e, false).unwrap(), None);
    assert_eq!(md.requests.lock().unwrap().len(), before);
}

#[test]
fn a_machine_that_is_not_a_tpu_vm_is_a_single_process_run_quickly() {
    // A Google VM without the TPU attributes.
    let md = MetadataStandIn::start(&[], true);
    let e = env(&[("GCE_METADATA_HOST", &md.addr)]);
    assert_eq!(discover(&Explicit::default(), &e, true).unwrap(), None);
    // Another cloud's server at the address: its answers lack the Google header.
    let other = MetadataStandIn::start(&[("agent-worker-number", "0")], false);
    let e = env(&[("GCE_METADATA_HOST", &other.addr)]);
    assert_eq!(discover(&Explicit::default(), &e, true).unwrap(), None);
    // No server at all: nothing listens on a port that was free a moment ago.
    let free = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let e = env(&[("GCE_METADATA_HOST", &free.to_string())]);
    let start = Instant::now();
    assert_eq!(discover(&Explicit::default(), &e, true).unwrap(), None);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn a_tpu_vm_with_damaged_metadata_is_an_error_naming_it() {
    let md = MetadataStandIn::start(
        &[
            ("agent-worker-number", "1"),
            ("worker-network-endpoints", "a:b"),
        ],
        true,
    );
    let e = env(&[("GCE_METADATA_HOST", &md.addr)]);
    let err = discover(&Explicit::default(), &e, true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("worker-network-endpoints=\"a:b\""), "{err}");
}
