//! Where training and evaluation data come from: `--data` specs, their shards, and their size.
//!
//! A spec is one or more sources joined by `::`; each source is
//! - a folder, local or remote (`gs://b/d/`, `s3://b/d/`: a trailing slash): its `SPLIT-*.tar`
//!   (and `.tar.gz`, `.tgz`) shards, sorted; its `tokenizer.json`, `captions.txt`, `classes.txt`,
//!   `templates.txt` are the run's;
//! - a JSONL manifest (`{"image": PATH, "caption": TEXT[, "label": N]}` a line): one shard;
//! - a text file (`.txt`, `.list`, `.shards`) listing shard URLs, one a line (`#` comments);
//! - `pipe:COMMAND`: the command's standard output is one shard (webdataset's convention);
//! - shard paths or URLs with brace ranges and choices (`d/train-{000000..004095}.tar`,
//!   `{a,b}`), as webdataset's `braceexpand`.

use std::io::Read;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::io::storage::{self, Location};

use super::shards::Sample;
use super::webdataset;

/// One shard: read from a URL (a local path, a bucket object, `pipe:COMMAND`), or samples
/// already in memory (tests, benchmarks).
#[derive(Clone, Debug)]
pub enum Shard {
    Url(String),
    Memory(Arc<Vec<Sample>>),
}

impl Shard {
    pub fn name(&self) -> String {
        match self {
            Shard::Url(u) => u.clone(),
            Shard::Memory(s) => format!("<{} samples in memory>", s.len()),
        }
    }
}

/// What `--data` names: its shards (all sources, in order), each shard's weight, and the folder
/// the run's auxiliary files come from.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub shards: Vec<Shard>,
    /// The sampling weight of each shard (its source's `--data-weights` entry).
    pub weights: Vec<f64>,
    /// The first source's folder (`tokenizer.json`, `classes.txt`, ... and the test split), when
    /// it is one.
    pub root: Option<String>,
}

impl Dataset {
    /// Samples already in memory, cut into shards of `per_shard`.
    pub fn in_memory(samples: Vec<Sample>, per_shard: usize) -> Dataset {
        let shards: Vec<Shard> = samples
            .chunks(per_shard.max(1))
            .map(|c| Shard::Memory(Arc::new(c.to_vec())))
            .collect();
        Dataset {
            weights: vec![1.0; shards.len()],
            shards,
            root: None,
        }
    }
}

/// The most names one pattern expands to (the largest public webdataset corpora have about a
/// million shards).
pub const MAX_EXPANDED: usize = 1 << 20;
/// The most bytes of names one pattern expands to.
const MAX_EXPANDED_BYTES: usize = 64 << 20;

/// Expands webdataset's brace patterns: `{000..123}` (zero-padded like its first bound) and
/// `{a,b,c}`, any number of them. The number of names and their total length are computed from
/// the groups and bounded ([`MAX_EXPANDED`]) before any name is made.
pub fn brace_expand(s: &str) -> Result<Vec<String>> {
    // The pattern as literal text between brace groups: text, group, text, ..., group, text.
    let mut texts = Vec::new();
    let mut groups: Vec<Group> = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find('{') {
        let close = rest[open..]
            .find('}')
            .map(|i| i + open)
            .ok_or_else(|| Error::invalid(format!("shard pattern `{s}`"), "a `{` is not closed"))?;
        texts.push(&rest[..open]);
        groups.push(Group::parse(&rest[open + 1..close], s)?);
        rest = &rest[close + 1..];
    }
    texts.push(rest);
    let too_many = || {
        Error::invalid(
            format!("shard pattern `{s}`"),
            format!(
                "it expands to more than {MAX_EXPANDED} names or {MAX_EXPANDED_BYTES} bytes of \
                 names; split the data into several patterns or a shard list"
            ),
        )
    };
    // Names and bytes, each bounded before it can overflow.
    let (mut count, mut bytes) = (1usize, texts.iter().map(|t| t.len()).sum::<usize>());
    for g in &groups {
        // Every name so far, followed by each of the group's items.
        let n = g.len();
        count = count.checked_mul(n).ok_or_else(too_many)?;
        bytes = bytes
            .checked_mul(n)
            .and_then(|b| b.checked_add(count.checked_mul(g.max_len())?))
            .ok_or_else(too_many)?;
        if count > MAX_EXPANDED || bytes > MAX_EXPANDED_BYTES {
            return Err(too_many());
        }
    }
    let mut out = vec![texts[0].to_string()];
    for (g, text) in groups.iter().zip(&texts[1..]) {
        let mut next = Vec::with_capacity(out.len() * g.len());
        for head in &out {
            for i in 0..g.len() {
                let mut name = String::with_capacity(head.len() + g.max_len() + text.len());
                name.push_str(head);
                g.push_item(i, &mut name);
                name.push_str(text);
                next.push(name);
            }
        }
        out = next;
    }
    Ok(out)
}

/// One `{...}` of a shard pattern.
enum Group<'a> {
    /// `{FIRST..LAST}`, zero-padded to `width`.
    Range {
        first: u64,
        last: u64,
        width: usize,
    },
    List(Vec<&'a str>),
}

impl<'a> Group<'a> {
    fn parse(body: &'a str, pattern: &str) -> Result<Group<'a>> {
        let Some((a, b)) = body.split_once("..") else {
            return Ok(Group::List(body.split(',').collect()));
        };
        let bad = || {
            Error::invalid(
                format!("brace range `{{{body}}}` in `{pattern}`"),
                format!(
                    "write it as {{FIRST..LAST}} with FIRST <= LAST, decimal numbers, at most \
                     {MAX_EXPANDED} apart"
                ),
            )
        };
        let (first, last): (u64, u64) =
            (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
        if first > last || last - first >= MAX_EXPANDED as u64 {
            return Err(bad());
        }
        Ok(Group::Range {
            first,
            last,
            width: a.len(),
        })
    }

    fn len(&self) -> usize {
        match self {
            Group::Range { first, last, .. } => (last - first) as usize + 1,
            Group::List(items) => items.len(),
        }
    }

    /// The longest item, in bytes.
    fn max_len(&self) -> usize {
        match self {
            Group::Range { last, width, .. } => (*width).max(last.to_string().len()),
            Group::List(items) => items.iter().map(|i| i.len()).max().unwrap_or(0),
        }
    }

    /// Appends item `i` to `out`.
    fn push_item(&self, i: usize, out: &mut String) {
        use std::fmt::Write;
        match self {
            Group::Range { first, width, .. } => {
                let _ = write!(out, "{:0w$}", first + i as u64, w = width);
            }
            Group::List(items) => out.push_str(items[i]),
        }
    }
}

fn is_shard_name(n: &str) -> bool {
    n.ends_with(".tar") || n.ends_with(".tar.gz") || n.ends_with(".tgz")
}

/// Parses `--data` for `split` (`train` or `test`). `weights`, when given, has one entry per
/// `::`-joined source.
pub fn parse(spec: &str, split: &str, weights: Option<&[f64]>) -> Result<Dataset> {
    let parts: Vec<&str> = spec.split("::").filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        return Err(Error::invalid(
            "--data ``",
            "name a folder, shards or a URL",
        ));
    }
    if let Some(w) = weights {
        if w.len() != parts.len() {
            return Err(Error::invalid(
                format!("--data-weights with {} entries", w.len()),
                format!(
                    "--data has {} sources joined by `::`: give one weight each",
                    parts.len()
                ),
            ));
        }
        if w.iter().any(|x| !x.is_finite() || *x <= 0.0) {
            return Err(Error::invalid(
                "--data-weights",
                "every weight must be positive",
            ));
        }
    }
    let mut d = Dataset {
        shards: Vec::new(),
        weights: Vec::new(),
        root: None,
    };
    for (i, part) in parts.iter().enumerate() {
        let (shards, root) = source(part, split)?;
        if d.root.is_none() {
            d.root = root;
        }
        let w = weights.map_or(1.0, |w| w[i]);
        d.weights.extend(std::iter::repeat_n(w, shards.len()));
        d.shards.extend(shards.into_iter().map(Shard::Url));
    }
    Ok(d)
}

/// The shards of one source, and its folder where it is one.
fn source(part: &str, split: &str) -> Result<(Vec<String>, Option<String>)> {
    if part.starts_with("pipe:") {
        return Ok((brace_expand(part)?, None));
    }
    if storage::is_remote(part) {
        if part.ends_with('/') {
            let listed = storage::list(&format!("{part}{split}-"))?;
            let shards: Vec<String> = listed
                .into_iter()
                .map(|(u, _)| u)
                .filter(|u| is_shard_name(u))
                .collect();
            if shards.is_empty() {
                return Err(Error::invalid(
                    format!("data folder `{part}`"),
                    format!("it has no `{split}-*.tar` shards"),
                ));
            }
            return Ok((shards, Some(part.to_string())));
        }
        return Ok((brace_expand(part)?, None));
    }
    let path = std::path::Path::new(part);
    if path.is_dir() {
        let mut shards: Vec<String> =
            storage::list(&format!("{}/{split}-", part.trim_end_matches('/')))?
                .into_iter()
                .map(|(u, _)| u)
                .filter(|u| is_shard_name(u))
                .collect();
        shards.sort();
        if shards.is_empty() {
            return Err(Error::invalid(
                format!("dataset folder `{part}`"),
                format!("it has no `{split}-*.tar` shards; make them with `basic data fashion-mnist --out {part}`"),
            ));
        }
        return Ok((shards, Some(format!("{}/", part.trim_end_matches('/')))));
    }
    if path.is_file() && !is_shard_name(part) {
        if part.ends_with(".jsonl") {
            let root = path.parent().map(|p| format!("{}/", p.display()));
            return Ok((vec![part.to_string()], root));
        }
        return shard_list(path).map(|s| (s, None));
    }
    let shards = brace_expand(part)?;
    for s in &shards {
        if !std::path::Path::new(s).is_file() {
            return Err(Error::invalid(
                format!("shard `{s}`"),
                "it does not exist: give a folder, shard paths (with {000..999} ranges), a list file, gs://, s3://, https:// or pipe:COMMAND",
            ));
        }
    }
    Ok((shards, None))
}

/// A file of shard URLs, one a line; relative paths are relative to the file's folder.
fn shard_list(path: &std::path::Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let base = path.parent().unwrap_or(std::path::Path::new("."));
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        for s in brace_expand(line)? {
            let relative = !storage::is_remote(&s)
                && !s.starts_with("pipe:")
                && !s.starts_with('/')
                && !s.starts_with("file://");
            out.push(if relative {
                base.join(&s).display().to_string()
            } else {
                s
            });
        }
    }
    if out.is_empty() {
        return Err(Error::invalid(
            format!("shard list `{}`", path.display()),
            "it lists no shards (one URL or path a line)",
        ));
    }
    Ok(out)
}

/// A command's standard output as a reader. At its end the exit status is checked: a failure
/// is a read error carrying the status and the end of the command's standard error. Exit 141
/// (SIGPIPE, after its reader stopped early) is not a failure. Dropped early, the command is
/// killed (by its pid) and reaped.
pub struct PipeReader {
    command: String,
    child: std::process::Child,
    stdout: Option<std::process::ChildStdout>,
    stderr: Arc<Mutex<Vec<u8>>>,
    /// Closed by the thread that reads standard error when it is done.
    errs_done: std::sync::mpsc::Receiver<()>,
    finished: bool,
    /// The command's failure, repeated by every later read.
    failure: Option<String>,
}

impl PipeReader {
    pub fn start(command: &str) -> Result<PipeReader> {
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| {
                Error::invalid(
                    format!("pipe:{command}"),
                    format!("it cannot be started: {e}"),
                )
            })?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| Error::Internal("no stdout".into()))?;
        let mut err = child
            .stderr
            .take()
            .ok_or_else(|| Error::Internal("no stderr".into()))?;
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let tail = stderr.clone();
        let (done_tx, errs_done) = std::sync::mpsc::channel::<()>();
        // The last 4 KiB of standard error, kept for the error message.
        std::thread::spawn(move || {
            let _done = done_tx;
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut t) = tail.lock() {
                    t.extend_from_slice(&buf[..n]);
                    let extra = t.len().saturating_sub(4096);
                    t.drain(..extra);
                }
            }
        });
        Ok(PipeReader {
            command: command.to_string(),
            child,
            stdout: Some(stdout),
            stderr,
            errs_done,
            finished: false,
            failure: None,
        })
    }

    /// Waits for the command; its failure as an error message.
    fn finish(&mut self) -> std::io::Result<()> {
        self.finished = true;
        let status = self.child.wait()?;
        // Standard error is complete when its writers are gone (a process the command left in
        // the background may hold it: then what came within a second is reported).
        let _ = self
            .errs_done
            .recv_timeout(std::time::Duration::from_secs(1));
        #[cfg(unix)]
        let sigpipe = std::os::unix::process::ExitStatusExt::signal(&status) == Some(13);
        #[cfg(not(unix))]
        let sigpipe = false;
        if status.success() || status.code() == Some(141) || sigpipe {
            return Ok(());
        }
        let tail = self.stderr.lock().map(|t| t.clone()).unwrap_or_default();
        let tail = String::from_utf8_lossy(&tail).trim().to_string();
        Err(std::io::Error::other(format!(
            "command `{}` failed ({status}){}",
            self.command,
            if tail.is_empty() {
                String::new()
            } else {
                format!("; its standard error ends: {tail}")
            }
        )))
    }
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(f) = &self.failure {
            return Err(std::io::Error::other(f.clone()));
        }
        if self.finished {
            return Ok(0);
        }
        let n = match self.stdout.as_mut() {
            Some(out) => out.read(buf)?,
            None => 0,
        };
        if n == 0 && !buf.is_empty() {
            if let Err(e) = self.finish() {
                self.failure = Some(e.to_string());
                return Err(e);
            }
        }
        Ok(n)
    }
}

impl Drop for PipeReader {
    fn drop(&mut self) {
        // Closing the pipe first ends the command's writers with SIGPIPE (`sh -c` may have
        // children of its own that killing the shell would leave running).
        drop(self.stdout.take());
        if !self.finished {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A reader of a shard's bytes.
pub fn open(url: &str) -> Result<Box<dyn Read + Send>> {
    if let Some(cmd) = url.strip_prefix("pipe:") {
        return Ok(Box::new(PipeReader::start(cmd)?));
    }
    Location::parse(url)?.reader(0)
}

/// The number of usable samples of `d`'s shards, without reading their data where possible:
/// a `sizes.json` beside the shards (`{"NAME.tar": N, ...}`, open_clip's convention; `basic
/// data` writes one), else img2dataset's `NAME_stats.json` (`successes`), else, for local
/// shards, their tar headers. A shard of unknown size (`pipe:`, a remote one without those
/// files) is an error that says to pass `--samples-per-epoch`.
pub fn count(d: &Dataset, skip_bad: bool) -> Result<u64> {
    let mut sizes: std::collections::HashMap<String, Option<serde_json::Value>> =
        Default::default();
    let mut total = 0;
    for s in &d.shards {
        let url = match s {
            Shard::Memory(m) => {
                total += m.len() as u64;
                continue;
            }
            Shard::Url(u) => u,
        };
        total += count_one(url, &mut sizes, skip_bad)?;
    }
    Ok(total)
}

fn count_one(
    url: &str,
    sizes: &mut std::collections::HashMap<String, Option<serde_json::Value>>,
    skip_bad: bool,
) -> Result<u64> {
    let unknown = || {
        Error::invalid(
            format!("the size of shard `{url}`"),
            "it is not known without reading it: pass --samples-per-epoch N, or put a sizes.json ({\"NAME.tar\": N, ...}) beside the shards",
        )
    };
    if url.starts_with("pipe:") || url.ends_with(".jsonl") {
        if url.ends_with(".jsonl") {
            let text = std::fs::read_to_string(url).map_err(|e| Error::io(url, e))?;
            return Ok(text.lines().filter(|l| !l.trim().is_empty()).count() as u64);
        }
        return Err(unknown());
    }
    let (dir, name) = url.rsplit_once('/').unwrap_or((".", url));
    if !sizes.contains_key(dir) {
        let v = Location::parse(&format!("{dir}/sizes.json"))?
            .get_if_exists()?
            .map(|b| {
                serde_json::from_slice::<serde_json::Value>(&b).map_err(|e| {
                    Error::invalid(
                        format!("`{dir}/sizes.json`"),
                        format!("it is not JSON: {e}"),
                    )
                })
            })
            .transpose()?;
        sizes.insert(dir.to_string(), v);
    }
    if let Some(n) = sizes[dir].as_ref().and_then(|v| v[name].as_u64()) {
        return Ok(n);
    }
    let stem = name.split('.').next().unwrap_or(name);
    if let Some(b) = Location::parse(&format!("{dir}/{stem}_stats.json"))?.get_if_exists()? {
        if let Some(n) = serde_json::from_slice::<serde_json::Value>(&b)
            .ok()
            .and_then(|v| v["successes"].as_u64())
        {
            return Ok(n);
        }
    }
    if storage::is_remote(url) {
        return Err(unknown());
    }
    match webdataset::count_samples(open(url)?) {
        Ok(n) => Ok(n),
        // Its samples before the damage still stream; the epoch counts none of them.
        Err(d) if skip_bad => {
            eprintln!("counting the samples of damaged shard `{url}`: {d}; counted as 0 (--skip-bad)");
            Ok(0)
        }
        Err(d) => Err(Error::invalid(
            format!("shard `{url}`"),
            format!("{d}; pass --skip-bad to skip shards that are damaged or cannot be read (they are counted)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn braces_lists_and_joined_sources() {
        assert_eq!(
            brace_expand("d/s-{008..011}.tar").unwrap(),
            ["d/s-008.tar", "d/s-009.tar", "d/s-010.tar", "d/s-011.tar"]
        );
        assert_eq!(
            brace_expand("{a,b}-{1..2}").unwrap(),
            ["a-1", "a-2", "b-1", "b-2"]
        );
        for bad in ["x{1..", "x{3..1}", "x{a..b}"] {
            let e = brace_expand(bad).unwrap_err().to_string();
            assert!(e.contains(bad.split('{').next().unwrap()), "{e}");
        }
        // Sizes are bounded before anything is made: the product of the groups, and the bytes
        // of the names (a zero-padded range of very wide numbers).
        for huge in [
            "s-{0..99999999999}.tar",
            "s-{0..9999}-{0..9999}.tar",
            &format!("s-{{{}..999999}}.tar", "0".repeat(1000)),
        ] {
            let e = brace_expand(huge).unwrap_err().to_string();
            assert!(e.contains("at most") || e.contains("more than"), "{e}");
        }
        assert_eq!(
            brace_expand(&"{a}".repeat(10_000)).unwrap(),
            ["a".repeat(10_000)]
        );
        let dir = std::env::temp_dir().join(format!("basic-source-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("f")).unwrap();
        for n in [
            "f/train-0.tar",
            "f/train-1.tar",
            "f/test-0.tar",
            "a.tar",
            "b.tar",
        ] {
            std::fs::write(dir.join(n), b"").unwrap();
        }
        let list = dir.join("shards.txt");
        std::fs::write(&list, "# two\na.tar\n\nb.tar\ngs://bkt/x-{0..1}.tar\n").unwrap();
        let spec = format!(
            "{}::{}::pipe:cat {}/{{a,b}}.tar",
            dir.join("f").display(),
            list.display(),
            dir.display()
        );
        let d = parse(&spec, "train", Some(&[1.0, 3.0, 2.0])).unwrap();
        let names: Vec<String> = d.shards.iter().map(Shard::name).collect();
        let p = |n: &str| dir.join(n).display().to_string();
        assert_eq!(
            names,
            [
                p("f/train-0.tar"),
                p("f/train-1.tar"),
                p("a.tar"),
                p("b.tar"),
                "gs://bkt/x-0.tar".into(),
                "gs://bkt/x-1.tar".into(),
                format!("pipe:cat {}/a.tar", dir.display()),
                format!("pipe:cat {}/b.tar", dir.display()),
            ]
        );
        assert_eq!(d.weights, [1.0, 1.0, 3.0, 3.0, 3.0, 3.0, 2.0, 2.0]);
        assert_eq!(d.root, Some(format!("{}/", dir.join("f").display())));
        let e = parse(&spec, "train", Some(&[1.0])).unwrap_err().to_string();
        assert!(e.contains("3 sources"), "{e}");
        let e = parse(&p("nope-{0..1}.tar"), "train", None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("nope-0.tar") && e.contains("does not exist"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failing_command_says_its_status_and_stderr_and_sigpipe_is_fine() {
        let mut r = PipeReader::start("echo partial; echo 'no such bucket' >&2; exit 3").unwrap();
        let mut s = Vec::new();
        let e = r.read_to_end(&mut s).unwrap_err().to_string();
        assert_eq!(s, b"partial\n");
        assert!(
            e.contains("exit status: 3") && e.contains("no such bucket"),
            "{e}"
        );
        // Stopped early: the writer dies of SIGPIPE, which is not an error.
        let mut r = PipeReader::start("yes").unwrap();
        let mut buf = [0u8; 10];
        r.read_exact(&mut buf).unwrap();
        drop(r);
        let mut r = PipeReader::start("head -c 100000 /dev/zero; exit 141").unwrap();
        let mut all = Vec::new();
        r.read_to_end(&mut all).unwrap();
        assert_eq!(all.len(), 100000);
    }
}
