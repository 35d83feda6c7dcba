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

// ---------------------------------------------------------------- the launch files

/// A file of `launch/`.
fn launch_file(name: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("launch")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `bash -n`: the script parses.
fn bash_parses(name: &str) {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("launch")
        .join(name);
    let out = std::process::Command::new("bash")
        .arg("-n")
        .arg(&p)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `--flags` of a `basic train` command line exist: `basic train --help` lists each.
fn train_flags_exist(what: &str, words: &[String]) {
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_basic"))
        .args(["train", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let flags: Vec<&String> = words.iter().filter(|w| w.starts_with("--")).collect();
    assert!(flags.len() > 5, "{what}: {words:?}");
    for f in flags {
        let name = f.split('=').next().unwrap();
        assert!(
            help.contains(&format!("{name} ")) || help.contains(&format!("{name}\n")),
            "{what}: `basic train` has no {name}"
        );
    }
}

/// The words of the `basic train ...` command in a shell script (its continued lines joined).
fn train_words(script: &str) -> Vec<String> {
    let joined = script.replace("\\\n", " ");
    let line = joined
        .lines()
        .find(|l| l.contains("basic train"))
        .expect("a basic train command");
    let after = &line[line.find("basic train").unwrap() + "basic train".len()..];
    after
        .split_whitespace()
        .map(|w| w.trim_matches(|c| c == '"' || c == '\'').to_string())
        .collect()
}

/// `launch/slurm.sbatch` parses; with the node count its `#SBATCH` lines ask for, every task of
/// `srun` finds its id, the task count and the first node's coordinator, as discovery reads them.
#[test]
fn the_slurm_script_parses_and_its_tasks_find_their_places() {
    bash_parses("slurm.sbatch");
    let s = launch_file("slurm.sbatch");
    let directive = |key: &str| -> String {
        s.lines()
            .filter_map(|l| l.strip_prefix("#SBATCH "))
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no #SBATCH {key}"))
            .to_string()
    };
    let nodes: usize = directive("--nodes").parse().unwrap();
    let per: usize = directive("--ntasks-per-node").parse().unwrap();
    assert_eq!(per, 1, "one process per node");
    assert!(
        directive("--signal").starts_with("TERM@"),
        "SIGTERM before the limit"
    );
    assert!(s.contains("srun "), "tasks started by srun");
    let words = train_words(&s);
    train_flags_exist("slurm.sbatch", &words);
    assert!(!words
        .iter()
        .any(|w| w == "--coordinator" || w == "--process-id"));
    let n = (nodes * per).to_string();
    for id in 0..nodes * per {
        let spec = found(
            &Explicit::default(),
            &[
                ("SLURM_PROCID", &id.to_string()),
                ("SLURM_NTASKS", &n),
                ("SLURM_STEP_NODELIST", "gpu-[017-020]"),
                ("SLURM_JOB_ID", "4100"),
            ],
        );
        assert_eq!(layout(&spec), ("gpu-017:61444", nodes * per, id));
    }
}

/// `launch/gke-jobset.yaml` parses; its pods, named as JobSet names them, find their id, the
/// process count and process 0's pod through the JobSet's headless service.
#[test]
fn the_gke_jobset_parses_and_its_pods_find_their_places() {
    use yaml_rust2::{Yaml, YamlLoader};
    let docs = YamlLoader::load_from_str(&launch_file("gke-jobset.yaml")).unwrap();
    let y = &docs[0];
    assert_eq!(y["kind"].as_str(), Some("JobSet"));
    assert_eq!(
        y["spec"]["network"]["enableDNSHostnames"].as_bool(),
        Some(true)
    );
    let name = y["metadata"]["name"].as_str().unwrap();
    let rj = &y["spec"]["replicatedJobs"][0];
    let rj_name = rj["name"].as_str().unwrap();
    let job = &rj["template"]["spec"];
    assert_eq!(job["completionMode"].as_str(), Some("Indexed"));
    let n = job["parallelism"].as_i64().unwrap();
    assert_eq!(job["completions"].as_i64(), Some(n));
    let c = &job["template"]["spec"]["containers"][0];
    let env_of = |k: &str| -> &Yaml {
        c["env"]
            .as_vec()
            .unwrap()
            .iter()
            .find(|e| e["name"].as_str() == Some(k))
            .unwrap_or_else(|| panic!("no {k} in the container's env"))
    };
    let count = env_of("BASIC_NUM_PROCESSES")["value"].as_str().unwrap();
    assert_eq!(
        count,
        n.to_string(),
        "BASIC_NUM_PROCESSES is the parallelism"
    );
    assert_eq!(
        env_of("JOBSET_NAME")["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        Some("metadata.labels['jobset.sigs.k8s.io/jobset-name']")
    );
    assert_eq!(c["ports"][0]["containerPort"].as_i64(), Some(8482));
    let command: Vec<String> = c["command"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap().to_string())
        .collect();
    assert_eq!(&command[..2], ["basic", "train"]);
    train_flags_exist("gke-jobset.yaml", &command[2..]);
    // JobSet names pod i of job 0 `<jobset>-<replicated job>-0-<i>`; the label holds <jobset>.
    for id in 0..n as usize {
        let host = format!("{name}-{rj_name}-0-{id}");
        let spec = found(
            &Explicit::default(),
            &[
                ("JOB_COMPLETION_INDEX", &id.to_string()),
                ("HOSTNAME", &host),
                ("JOBSET_NAME", name),
                ("BASIC_NUM_PROCESSES", count),
            ],
        );
        let coordinator = format!("{name}-{rj_name}-0-0.{name}:8482");
        assert_eq!(layout(&spec), (coordinator.as_str(), n as usize, id));
    }
}

/// `launch/tpu-vm.sh` parses and runs one `basic train` on every worker with no process flags;
/// each worker, answered by its metadata server, finds its number, the slice's host count and
/// host 0's coordinator.
#[test]
fn the_tpu_vm_script_parses_and_its_workers_find_their_places() {
    bash_parses("tpu-vm.sh");
    let s = launch_file("tpu-vm.sh");
    let joined = s.replace("\\\n", " ");
    let train = joined.lines().find(|l| l.contains("basic train")).unwrap();
    assert!(
        train.contains("gcloud compute tpus tpu-vm ssh") && train.contains("--worker=all"),
        "{train}"
    );
    let words = train_words(&s);
    train_flags_exist("tpu-vm.sh", &words);
    assert!(words
        .windows(2)
        .any(|w| w[0] == "--backend" && w[1] == "tpu"));
    assert!(!words
        .iter()
        .any(|w| w == "--coordinator" || w == "--process-id"));
    // tpu-v4:4x8x8: 64 hosts.
    let endpoints: Vec<String> = (0..64)
        .map(|i| format!("w-{i}:8470:10.130.{}.{}", i / 200, 2 + i % 200))
        .collect();
    let endpoints = endpoints.join(",");
    for worker in [0, 1, 63] {
        let w = worker.to_string();
        let md = MetadataStandIn::start(
            &[
                ("agent-worker-number", &w),
                ("worker-network-endpoints", &endpoints),
            ],
            true,
        );
        let e = env(&[("GCE_METADATA_HOST", &md.addr)]);
        let s = discover(&Explicit::default(), &e, true).unwrap().unwrap();
        assert_eq!(layout(&s), ("10.130.0.2:8482", 64, worker));
    }
}
