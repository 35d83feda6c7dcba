//! Which process of which job this is: explicit values, `BASIC_*` variables, or the cluster's
//! own environment (SLURM, GKE TPU, a Kubernetes indexed Job or JobSet, a Cloud TPU VM's
//! metadata server), in that order, field by field.
//!
//! The environment is passed in as a map (see [`env_map`]) so that tests are hermetic.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::error::{Error, Result};

/// The most processes a job may have: more than any pod slice or cluster has hosts, and a bound
/// on what the coordinator allocates per process.
pub const MAX_PROCESSES: usize = 1 << 16;

/// The coordinator's port when nothing names one (JAX's, since it moved from 8476).
pub const DEFAULT_PORT: u16 = 8482;

/// Where this process stands in its job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessSpec {
    /// `host:port` of process 0's coordinator.
    pub coordinator: String,
    pub num_processes: usize,
    pub process_id: usize,
    /// `BASIC_JOB_TOKEN`, when set.
    pub job_token: Option<String>,
    /// `BASIC_COORDINATOR_BIND` (`host:port`), when set: the one address process 0's server
    /// listens on, instead of every interface.
    pub bind: Option<String>,
    /// Where the values came from, for logs: e.g. `SLURM (SLURM_PROCID, ...)`.
    pub source: String,
}

impl ProcessSpec {
    /// The coordinator's port.
    pub fn port(&self) -> u16 {
        split_port(&self.coordinator)
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(DEFAULT_PORT)
    }

    /// Where process 0's server listens: `BASIC_COORDINATOR_BIND` when set, else every
    /// interface on the coordinator's port (as JAX's coordinator does; the other hosts must
    /// reach it at the address they were given, which may name any of this host's interfaces).
    pub fn listen_addr(&self) -> String {
        match &self.bind {
            Some(b) => b.clone(),
            None => format!("0.0.0.0:{}", self.port()),
        }
    }
}

/// Values given on the command line (`--coordinator`, `--num-processes`, `--process-id`); they
/// win over every variable.
#[derive(Clone, Debug, Default)]
pub struct Explicit {
    pub coordinator: Option<String>,
    pub num_processes: Option<usize>,
    pub process_id: Option<usize>,
}

/// A snapshot of the process's environment.
pub fn env_map() -> HashMap<String, String> {
    std::env::vars().collect()
}

/// One resolved value and where it came from.
#[derive(Clone, Debug)]
struct Got<T> {
    value: T,
    from: String,
}

fn got<T>(value: T, from: impl Into<String>) -> Option<Got<T>> {
    Some(Got {
        value,
        from: from.into(),
    })
}

/// The layout a cluster environment gives; any field may be missing.
#[derive(Default)]
struct Layout {
    coordinator: Option<Got<String>>,
    num_processes: Option<Got<usize>>,
    process_id: Option<Got<usize>>,
    /// Set when the environment was recognised.
    name: Option<&'static str>,
}

/// Finds this process's place in a multi-process job, or `None` for a single-process run (no
/// setting at all, or a job of one process).
///
/// Each of coordinator, count and id comes from the first source that has it: `explicit`, then
/// `BASIC_COORDINATOR` / `BASIC_NUM_PROCESSES` / `BASIC_PROCESS_ID`, then the first cluster
/// environment recognised: SLURM (`SLURM_PROCID`), GKE TPU (`TPU_WORKER_ID`), a Kubernetes
/// indexed Job or JobSet (`JOB_COMPLETION_INDEX`), and, only when `query_metadata` (on TPU: the
/// query costs a connection attempt elsewhere), a Cloud TPU VM's metadata server. Some but not
/// all of the three, or values that disagree, are one error naming the variables.
pub fn discover(
    explicit: &Explicit,
    env: &HashMap<String, String>,
    query_metadata: bool,
) -> Result<Option<ProcessSpec>> {
    let basic = basic_layout(explicit, env)?;
    let complete =
        basic.coordinator.is_some() && basic.num_processes.is_some() && basic.process_id.is_some();
    let cluster = if complete {
        Layout::default()
    } else {
        cluster_layout(env, query_metadata)?
    };
    let coordinator = basic.coordinator.or(cluster.coordinator);
    let num = basic.num_processes.or(cluster.num_processes);
    let id = basic.process_id.or(cluster.process_id);
    let (coordinator, num, id) = match (coordinator, num, id) {
        (None, None, None) => return Ok(None),
        (Some(c), Some(n), Some(i)) => (c, n, i),
        (c, n, i) => return Err(incomplete(c, n, i, cluster.name)),
    };
    if num.value > MAX_PROCESSES {
        return Err(Error::invalid(
            format!("number of processes {} (from {})", num.value, num.from),
            format!("a job has at most {MAX_PROCESSES} processes (one per host)"),
        ));
    }
    if num.value == 0 {
        return Err(Error::invalid(
            format!("number of processes 0 (from {})", num.from),
            "a job has at least one process",
        ));
    }
    if id.value >= num.value {
        return Err(Error::invalid(
            format!(
                "process id {} (from {}) for a job of {} processes (from {})",
                id.value, id.from, num.value, num.from
            ),
            format!("ids go from 0 to {}", num.value - 1),
        ));
    }
    if num.value == 1 {
        return Ok(None);
    }
    let mut sources = vec![coordinator.from, num.from, id.from];
    sources.dedup();
    Ok(Some(ProcessSpec {
        coordinator: with_port(&coordinator.value, "the coordinator address")?,
        num_processes: num.value,
        process_id: id.value,
        job_token: env
            .get("BASIC_JOB_TOKEN")
            .filter(|t| !t.is_empty())
            .cloned(),
        bind: nonempty(env, "BASIC_COORDINATOR_BIND")
            .map(|b| bind_addr(&b))
            .transpose()?,
        source: sources.join(", "),
    }))
}

fn incomplete(
    c: Option<Got<String>>,
    n: Option<Got<usize>>,
    i: Option<Got<usize>>,
    cluster: Option<&'static str>,
) -> Error {
    let mut have = vec![];
    let mut missing = vec![];
    for (name, from, flag) in [
        (
            "coordinator",
            c.map(|g| g.from),
            "--coordinator / BASIC_COORDINATOR",
        ),
        (
            "number of processes",
            n.map(|g| g.from),
            "--num-processes / BASIC_NUM_PROCESSES",
        ),
        (
            "process id",
            i.map(|g| g.from),
            "--process-id / BASIC_PROCESS_ID",
        ),
    ] {
        match from {
            Some(f) => have.push(format!("the {name} (from {f})")),
            None => missing.push(format!("the {name} ({flag})")),
        }
    }
    let place = match cluster {
        Some(name) => format!("this {name} environment gives"),
        None => "no cluster environment was recognised, and the settings give".to_string(),
    };
    Error::invalid(
        format!(
            "multi-process settings: {place} {} but not {}",
            have.join(" and "),
            missing.join(" nor ")
        ),
        "set all three for a multi-process job, or none to run a single process",
    )
}

fn basic_layout(explicit: &Explicit, env: &HashMap<String, String>) -> Result<Layout> {
    let coordinator = match &explicit.coordinator {
        Some(c) => got(c.clone(), "--coordinator"),
        None => nonempty(env, "BASIC_COORDINATOR").and_then(|c| got(c, "BASIC_COORDINATOR")),
    };
    let num_processes = match explicit.num_processes {
        Some(n) => got(n, "--num-processes"),
        None => number(env, "BASIC_NUM_PROCESSES")?,
    };
    let process_id = match explicit.process_id {
        Some(i) => got(i, "--process-id"),
        None => number(env, "BASIC_PROCESS_ID")?,
    };
    Ok(Layout {
        coordinator,
        num_processes,
        process_id,
        name: None,
    })
}

fn nonempty(env: &HashMap<String, String>, var: &str) -> Option<String> {
    env.get(var)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// A non-negative integer variable, if set.
fn number(env: &HashMap<String, String>, var: &str) -> Result<Option<Got<usize>>> {
    match nonempty(env, var) {
        None => Ok(None),
        Some(v) => v.parse::<usize>().map(|n| got(n, var)).map_err(|_| {
            Error::invalid(
                format!("{var}={v:?}"),
                format!("set {var} to a non-negative integer"),
            )
        }),
    }
}

fn required(env: &HashMap<String, String>, var: &str, cluster: &str) -> Result<String> {
    nonempty(env, var).ok_or_else(|| {
        Error::invalid(
            format!("{cluster} environment: {var} is not set"),
            format!("run inside a complete {cluster} job, or set the BASIC_* variables"),
        )
    })
}

fn cluster_layout(env: &HashMap<String, String>, query_metadata: bool) -> Result<Layout> {
    if env.contains_key("SLURM_PROCID") {
        return slurm(env);
    }
    if env.contains_key("TPU_WORKER_ID") {
        return gke_tpu(env);
    }
    if env.contains_key("JOB_COMPLETION_INDEX") {
        return k8s_indexed(env);
    }
    if query_metadata {
        return tpu_vm(env);
    }
    Ok(Layout::default())
}

/// SLURM: `SLURM_PROCID`, `SLURM_NTASKS`, the first host of `SLURM_STEP_NODELIST`. The port is
/// derived from `SLURM_JOB_ID` in 61440..=65535 (as JAX does), so two jobs whose first node is
/// the same do not collide; 8482 without a job id.
fn slurm(env: &HashMap<String, String>) -> Result<Layout> {
    let id = required(env, "SLURM_PROCID", "SLURM")?;
    let n = required(env, "SLURM_NTASKS", "SLURM")?;
    let nodes = required(env, "SLURM_STEP_NODELIST", "SLURM")?;
    let host = first_host(&nodes).map_err(|why| {
        Error::invalid(
            format!("SLURM_STEP_NODELIST={nodes:?}"),
            format!("{why}; expected a SLURM node list such as `node[001-004,010],other`"),
        )
    })?;
    let port = match nonempty(env, "SLURM_JOB_ID").map(|j| j.parse::<u64>()) {
        Some(Ok(job)) => 61440 + (job % 4096) as u16,
        Some(Err(_)) => {
            return Err(Error::invalid(
                format!("SLURM_JOB_ID={:?}", env["SLURM_JOB_ID"]),
                "SLURM job ids are integers; run under a real SLURM job",
            ))
        }
        None => DEFAULT_PORT,
    };
    Ok(Layout {
        coordinator: got(format!("{host}:{port}"), "SLURM_STEP_NODELIST"),
        num_processes: got(parse(&n, "SLURM_NTASKS")?, "SLURM_NTASKS"),
        process_id: got(parse(&id, "SLURM_PROCID")?, "SLURM_PROCID"),
        name: Some("SLURM"),
    })
}

fn parse(v: &str, var: &str) -> Result<usize> {
    v.parse().map_err(|_| {
        Error::invalid(
            format!("{var}={v:?}"),
            format!("{var} must be a non-negative integer"),
        )
    })
}

/// The first host of a SLURM node list: `node[001-004,010],other` gives `node001`; several
/// bracket groups (`rack[1-2]-n[01-04]`) each give their first value, zero padding kept.
pub(crate) fn first_host(list: &str) -> std::result::Result<String, String> {
    let mut depth = 0usize;
    let first = list
        .split(|c: char| {
            match c {
                '[' => depth += 1,
                ']' => depth = depth.saturating_sub(1),
                _ => {}
            }
            c == ',' && depth == 0
        })
        .next()
        .unwrap_or("")
        .trim();
    let mut host = String::new();
    let mut rest = first;
    while let Some(open) = rest.find('[') {
        host.push_str(&rest[..open]);
        let close = rest[open..]
            .find(']')
            .map(|c| open + c)
            .ok_or("a `[` is never closed")?;
        let group = &rest[open + 1..close];
        let item = group.split(',').next().unwrap_or("");
        let start = item.split('-').next().unwrap_or("").trim();
        if start.is_empty() || !start.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!("`[{group}]` does not start with a number"));
        }
        host.push_str(start);
        rest = &rest[close + 1..];
    }
    if rest.contains(']') {
        return Err("a `]` has no `[`".into());
    }
    host.push_str(rest);
    if host.is_empty() {
        return Err("it names no host".into());
    }
    Ok(host)
}

/// GKE TPU: `TPU_WORKER_ID` and the comma list `TPU_WORKER_HOSTNAMES`, whose first host runs
/// process 0.
fn gke_tpu(env: &HashMap<String, String>) -> Result<Layout> {
    let id = required(env, "TPU_WORKER_ID", "GKE TPU")?;
    let hosts = required(env, "TPU_WORKER_HOSTNAMES", "GKE TPU")?;
    multislice_unsupported(env)?;
    let list: Vec<&str> = hosts.split(',').map(str::trim).collect();
    if list.iter().any(|h| h.is_empty()) {
        return Err(Error::invalid(
            format!("TPU_WORKER_HOSTNAMES={hosts:?}"),
            "it must be a comma-separated list of host names without empty entries",
        ));
    }
    Ok(Layout {
        coordinator: got(
            format!("{}:{DEFAULT_PORT}", list[0]),
            "TPU_WORKER_HOSTNAMES",
        ),
        num_processes: got(list.len(), "TPU_WORKER_HOSTNAMES"),
        process_id: got(parse(&id, "TPU_WORKER_ID")?, "TPU_WORKER_ID"),
        name: Some("GKE TPU"),
    })
}

fn multislice_unsupported(env: &HashMap<String, String>) -> Result<()> {
    match nonempty(env, "MEGASCALE_NUM_SLICES").map(|v| v.parse::<usize>()) {
        Some(Ok(n)) if n > 1 => Err(Error::invalid(
            format!("MEGASCALE_NUM_SLICES={n} (a multislice job)"),
            "basic runs one slice per job; run on a single slice",
        )),
        _ => Ok(()),
    }
}

/// A Kubernetes indexed Job or JobSet: the id is `JOB_COMPLETION_INDEX`. A pod is not told its
/// Job's size, so the count must come from `BASIC_NUM_PROCESSES` in the manifest. The
/// coordinator is `BASIC_COORDINATOR`, or else the index-0 pod: the pod's `HOSTNAME` is
/// `<job-name>-<index>` and index 0 answers as `<job-name>-0.<subdomain>`, where the subdomain
/// is JobSet's default, the JobSet's name, read from `JOBSET_NAME` (the manifest passes it from
/// the label `jobset.sigs.k8s.io/jobset-name`).
fn k8s_indexed(env: &HashMap<String, String>) -> Result<Layout> {
    let index = required(env, "JOB_COMPLETION_INDEX", "Kubernetes indexed Job")?;
    let id = parse(&index, "JOB_COMPLETION_INDEX")?;
    let mut layout = Layout {
        process_id: got(id, "JOB_COMPLETION_INDEX"),
        name: Some("Kubernetes indexed Job"),
        ..Layout::default()
    };
    if env.contains_key("BASIC_COORDINATOR") {
        return Ok(layout);
    }
    let Some(subdomain) = nonempty(env, "JOBSET_NAME") else {
        return Ok(layout);
    };
    let host = required(env, "HOSTNAME", "Kubernetes indexed Job")?;
    let suffix = format!("-{id}");
    let Some(job) = host.strip_suffix(&suffix) else {
        return Err(Error::invalid(
            format!("HOSTNAME={host:?} with JOB_COMPLETION_INDEX={id}"),
            format!(
                "the pod of an indexed Job is named `<job-name>-{id}`; set BASIC_COORDINATOR \
                 to process 0's `host:port`"
            ),
        ));
    };
    layout.coordinator = got(
        format!("{job}-0.{subdomain}:{DEFAULT_PORT}"),
        "HOSTNAME and JOBSET_NAME",
    );
    Ok(layout)
}

/// A Cloud TPU VM: `agent-worker-number` and `worker-network-endpoints` from the metadata
/// server (`GCE_METADATA_HOST` overrides its address, as Google's libraries allow). No server
/// (not on Google Cloud) or no such attribute (not a TPU VM) is no layout.
fn tpu_vm(env: &HashMap<String, String>) -> Result<Layout> {
    let host = nonempty(env, "GCE_METADATA_HOST").unwrap_or_else(|| "169.254.169.254".into());
    let Some(worker) = metadata(&host, "agent-worker-number")? else {
        return Ok(Layout::default());
    };
    let endpoints = metadata(&host, "worker-network-endpoints")?.ok_or_else(|| {
        Error::invalid(
            "the TPU VM metadata attribute worker-network-endpoints",
            "the metadata server has agent-worker-number but not it; set the BASIC_* variables",
        )
    })?;
    let ips = endpoint_ips(&endpoints).ok_or_else(|| {
        Error::invalid(
            format!("the TPU VM metadata attribute worker-network-endpoints={endpoints:?}"),
            "expected a comma list of `name:id:ip` or ip entries; set the BASIC_* variables",
        )
    })?;
    let id = parse(worker.trim(), "metadata agent-worker-number")?;
    Ok(Layout {
        coordinator: got(
            format!("{}:{DEFAULT_PORT}", ips[0]),
            "metadata worker-network-endpoints",
        ),
        num_processes: got(ips.len(), "metadata worker-network-endpoints"),
        process_id: got(id, "metadata agent-worker-number"),
        name: Some("Cloud TPU VM"),
    })
}

/// The IPs of `worker-network-endpoints`: entries are `name:id:ip` or a bare IPv4 address.
pub(crate) fn endpoint_ips(list: &str) -> Option<Vec<String>> {
    let ips: Vec<String> = list
        .split(',')
        .map(str::trim)
        .map(|e| match e.split(':').collect::<Vec<_>>()[..] {
            [ip] => ip.to_string(),
            [_, _, ip, ..] => ip.to_string(),
            _ => String::new(),
        })
        .collect();
    (!ips.is_empty() && ips.iter().all(|ip| !ip.is_empty())).then_some(ips)
}

/// Short, so that a machine off Google Cloud is not slowed.
const METADATA_CONNECT: Duration = Duration::from_millis(500);
const METADATA_READ: Duration = Duration::from_secs(2);
const METADATA_MAX: usize = 64 * 1024;

/// One metadata attribute: `None` when the server cannot be reached or does not have it.
fn metadata(host: &str, key: &str) -> Result<Option<String>> {
    let hostport = if split_port(host).is_some() {
        host.to_string()
    } else {
        format!("{host}:80")
    };
    let Some(addr) = hostport.to_socket_addrs().ok().and_then(|mut a| a.next()) else {
        return Ok(None);
    };
    let Ok(mut s) = TcpStream::connect_timeout(&addr, METADATA_CONNECT) else {
        return Ok(None);
    };
    let bad = |why: String| {
        Error::invalid(
            format!("the metadata server at {hostport} (attribute {key})"),
            format!("{why}; unset GCE_METADATA_HOST or set the BASIC_* variables"),
        )
    };
    let path = format!("/computeMetadata/v1/instance/attributes/{key}");
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nMetadata-Flavor: Google\r\nConnection: close\r\n\r\n"
    );
    let mut raw = Vec::new();
    let io = s
        .set_read_timeout(Some(METADATA_READ))
        .and_then(|_| s.set_write_timeout(Some(METADATA_READ)))
        .and_then(|_| s.write_all(request.as_bytes()))
        .and_then(|_| (&mut s).take(METADATA_MAX as u64 + 1).read_to_end(&mut raw));
    if let Err(e) = io {
        return Err(bad(format!("reading its answer failed: {e}")));
    }
    if raw.len() > METADATA_MAX {
        return Err(bad(format!(
            "its answer is longer than {METADATA_MAX} bytes"
        )));
    }
    metadata_answer(&raw).map_err(bad)
}

/// What a metadata server's HTTP answer says: the attribute's value (`200`), `None` for `404` or
/// a server that is not Google's (no `Metadata-Flavor: Google`), else why it cannot be read.
pub(crate) fn metadata_answer(raw: &[u8]) -> std::result::Result<Option<String>, String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("its answer is not HTTP")?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .ok_or("its answer has no status line")?;
    let google = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("metadata-flavor") && v.trim() == "Google"
        })
    });
    match status {
        // Not Google's server (another cloud's answers at the same address): not a TPU VM.
        _ if !google => Ok(None),
        "200" => Ok(Some(body.trim().to_string())),
        "404" => Ok(None),
        other => Err(format!("it answered HTTP {}", super::wire::clip(other, 64))),
    }
}

/// `host` and `port` of `host:port` or `[v6]:port`; `None` without a port.
fn split_port(addr: &str) -> Option<(&str, &str)> {
    if let Some(rest) = addr.strip_prefix('[') {
        let (h, tail) = rest.split_once(']')?;
        return tail.strip_prefix(':').map(|p| (h, p));
    }
    match addr.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Some((h, p)),
        _ => None,
    }
}

/// `BASIC_COORDINATOR_BIND`: an address with a port, checked here so that a typo is named before
/// the server starts.
fn bind_addr(addr: &str) -> Result<String> {
    let what = "BASIC_COORDINATOR_BIND";
    match split_port(addr) {
        Some((_, p)) if p.parse::<u16>().is_ok() => Ok(addr.to_string()),
        _ => Err(Error::invalid(
            format!("{what}={addr:?}"),
            "give the address process 0's coordinator listens on as host:port (0.0.0.0:8482 \
             for every interface, an IPv6 address as [addr]:port)",
        )),
    }
}

/// `addr` with a valid port: the default added when it has none.
fn with_port(addr: &str, what: &str) -> Result<String> {
    let addr = addr.trim();
    match split_port(addr) {
        Some((h, p)) => {
            if h.is_empty() || p.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(Error::invalid(
                    format!("{what} `{addr}`"),
                    "write it as host:port with a port from 1 to 65535",
                ));
            }
            Ok(addr.to_string())
        }
        None if addr.is_empty() || addr.contains(':') && !addr.starts_with('[') => {
            Err(Error::invalid(
                format!("{what} `{addr}`"),
                "write it as host:port (an IPv6 address as [addr]:port)",
            ))
        }
        None => Ok(format!("{addr}:{DEFAULT_PORT}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_host_of_node_lists() {
        for (list, want) in [
            ("node001", "node001"),
            ("node001,host2", "node001"),
            ("node[001-004,010],other", "node001"),
            ("node[007,009-015],host2", "node007"),
            ("rack[1-2]-n[01-04]", "rack1-n01"),
            (" gpu[0042] ", "gpu0042"),
        ] {
            assert_eq!(first_host(list).as_deref(), Ok(want), "{list}");
        }
        for bad in ["node[001-004", "node]1", "node[a-b]", ""] {
            assert!(first_host(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn endpoints_and_ports() {
        assert_eq!(
            endpoint_ips("w-0:8470:10.0.0.2,w-1:8470:10.0.0.3").unwrap(),
            vec!["10.0.0.2", "10.0.0.3"]
        );
        assert_eq!(endpoint_ips("10.0.0.2, 10.0.0.3").unwrap().len(), 2);
        assert!(endpoint_ips("a:b").is_none());
        assert_eq!(with_port("h", "x").unwrap(), "h:8482");
        assert_eq!(with_port("h:1", "x").unwrap(), "h:1");
        assert_eq!(with_port("[::1]:9", "x").unwrap(), "[::1]:9");
        assert_eq!(with_port("[::1]", "x").unwrap(), "[::1]:8482");
        assert!(with_port("h:0", "x").is_err());
        assert!(with_port("h:port", "x").is_err());
        assert!(with_port("::1", "x").is_err());
    }
}
