//! Objects by URL, blocking: local paths (`file://` or plain), `gs://bucket/key`, `s3://bucket/key`,
//! `http(s)://host/key`, through the `object_store` crate on a runtime of this module's own (two
//! threads), so callers stay synchronous. Reads stream with read-ahead and resume after a broken
//! connection at the byte they reached; every request is retried with exponential backoff on
//! transient errors. Every error names the URL.
//!
//! Credentials and endpoints come from the environment the services' own tools read:
//! - GCS: application default credentials (`GOOGLE_APPLICATION_CREDENTIALS`, the gcloud user's
//!   file, or the VM's metadata server); `GOOGLE_SERVICE_ACCOUNT` / `GOOGLE_SERVICE_ACCOUNT_KEY`;
//!   `STORAGE_EMULATOR_HOST=http://HOST:PORT` sends every request there, unauthenticated (the
//!   convention of Google's client libraries, for fake-gcs-server).
//! - S3: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` (default
//!   `us-east-1`), web identity and instance credentials; `AWS_ENDPOINT_URL` for S3-compatible
//!   stores and emulators (an `http://` endpoint is allowed as given), path-style requests then.
//!
//! `BASIC_STORAGE_RETRY_SECONDS` (default 120) bounds how long one request or one broken read is
//! retried before its error is reported.

use std::collections::HashMap;
use std::io::Read;
use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path as ObjPath;
use object_store::{
    BackoffConfig, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
    PutPayload, RetryConfig,
};

use crate::error::{Error, Result};

/// Objects larger than this are uploaded in parts of `PART_BYTES`, `PARTS_AT_ONCE` at a time.
const MULTIPART_ABOVE: usize = 64 << 20;
const PART_BYTES: usize = 16 << 20;
const PARTS_AT_ONCE: usize = 8;

/// The runtime every storage request runs on.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("basic-storage")
            .enable_all()
            .build()
            .expect("a tokio runtime (threads and timers) could not be created")
    })
}

/// How long one request, or one interrupted read, is retried.
pub fn retry_window() -> Duration {
    let s = std::env::var("BASIC_STORAGE_RETRY_SECONDS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)
        .unwrap_or(120.0);
    Duration::from_secs_f64(s)
}

fn retry_config() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(15),
            base: 2.0,
        },
        max_retries: 10,
        retry_timeout: retry_window(),
    }
}

/// An object: where it is, and the store that holds it.
#[derive(Clone)]
pub struct Location {
    url: String,
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    Local(PathBuf),
    Remote {
        store: Arc<dyn ObjectStore>,
        path: ObjPath,
    },
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.url)
    }
}

fn err(url: &str, what: impl std::fmt::Display) -> Error {
    Error::invalid(format!("object `{url}`"), what.to_string())
}

/// The error of a failed request, naming the URL; `NotFound` says so plainly.
fn request_err(url: &str, e: object_store::Error) -> Error {
    match e {
        object_store::Error::NotFound { .. } => err(url, "it does not exist"),
        e => err(url, format!("the request failed: {e}")),
    }
}

/// Whether `s` names an object in a remote store rather than a local file.
pub fn is_remote(s: &str) -> bool {
    ["gs://", "s3://", "http://", "https://"]
        .iter()
        .any(|p| s.starts_with(p))
}

/// The stores made so far, by scheme and bucket (each holds a connection pool).
fn stores() -> &'static Mutex<HashMap<String, Arc<dyn ObjectStore>>> {
    static S: OnceLock<Mutex<HashMap<String, Arc<dyn ObjectStore>>>> = OnceLock::new();
    S.get_or_init(Default::default)
}

fn store_for(scheme: &str, bucket: &str, url: &str) -> Result<Arc<dyn ObjectStore>> {
    let key = format!("{scheme}://{bucket}");
    let mut m = stores()
        .lock()
        .map_err(|_| Error::Internal("the storage table was poisoned".into()))?;
    if let Some(s) = m.get(&key) {
        return Ok(s.clone());
    }
    let s = build_store(scheme, bucket).map_err(|e| match e {
        Error::InvalidArgument { .. } => e,
        e => err(url, e),
    })?;
    m.insert(key, s.clone());
    Ok(s)
}

fn build_store(scheme: &str, bucket: &str) -> Result<Arc<dyn ObjectStore>> {
    let cfg = |e: object_store::Error| {
        Error::invalid(
            format!("storage for `{scheme}://{bucket}`"),
            format!("it cannot be set up from the environment: {e}"),
        )
    };
    Ok(match scheme {
        "gs" => {
            let mut b = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(bucket)
                .with_retry(retry_config());
            if let Ok(host) = std::env::var("STORAGE_EMULATOR_HOST") {
                let base = if host.contains("://") {
                    host
                } else {
                    format!("http://{host}")
                };
                let anonymous =
                    object_store::StaticCredentialProvider::new(object_store::gcp::GcpCredential {
                        bearer: String::new(),
                    });
                b = b
                    .with_base_url(base.trim_end_matches('/'))
                    .with_credentials(Arc::new(anonymous))
                    .with_client_options(object_store::ClientOptions::new().with_allow_http(true));
            }
            Arc::new(b.build().map_err(cfg)?)
        }
        "s3" => {
            let mut b = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_retry(retry_config());
            if std::env::var("AWS_REGION").is_err() && std::env::var("AWS_DEFAULT_REGION").is_err()
            {
                b = b.with_region("us-east-1");
            } else if let Ok(r) = std::env::var("AWS_DEFAULT_REGION") {
                if std::env::var("AWS_REGION").is_err() {
                    b = b.with_region(r);
                }
            }
            if let Ok(ep) = std::env::var("AWS_ENDPOINT_URL") {
                b = b
                    .with_endpoint(ep.trim_end_matches('/'))
                    .with_allow_http(ep.starts_with("http://"))
                    .with_virtual_hosted_style_request(false);
            }
            Arc::new(b.build().map_err(cfg)?)
        }
        "http" | "https" => Arc::new(
            object_store::http::HttpBuilder::new()
                .with_url(format!("{scheme}://{bucket}"))
                .with_client_options(object_store::ClientOptions::new().with_allow_http(true))
                .with_retry(retry_config())
                .build()
                .map_err(cfg)?,
        ),
        other => {
            return Err(Error::invalid(
                format!("storage scheme `{other}://`"),
                "use a local path, gs://, s3://, http:// or https://",
            ))
        }
    })
}

impl Location {
    /// Parses a URL or local path. Remote stores are made on first use of their bucket (host).
    pub fn parse(url: &str) -> Result<Location> {
        if let Some(p) = url.strip_prefix("file://") {
            return Ok(Location::local(FsPath::new(p)));
        }
        if !url.contains("://") {
            return Ok(Location::local(FsPath::new(url)));
        }
        let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(err(url, "it names no bucket (host)"));
        }
        let store = store_for(scheme, bucket, url)?;
        let path = ObjPath::parse(key).map_err(|e| err(url, format!("bad object key: {e}")))?;
        Ok(Location {
            url: url.to_string(),
            kind: Kind::Remote { store, path },
        })
    }

    fn local(p: &FsPath) -> Location {
        Location {
            url: p.display().to_string(),
            kind: Kind::Local(p.to_path_buf()),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The object `name` next to this one (in the same folder).
    pub fn sibling(&self, name: &str) -> Result<Location> {
        match self.url.rfind('/') {
            Some(i) => Location::parse(&format!("{}/{name}", &self.url[..i])),
            None => Location::parse(name),
        }
    }

    /// A streaming reader of the whole object from byte `offset`.
    pub fn reader(&self, offset: u64) -> Result<Box<dyn Read + Send>> {
        match &self.kind {
            Kind::Local(p) => {
                let mut f = std::fs::File::open(p).map_err(|e| Error::io(p, e))?;
                if offset > 0 {
                    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(offset))
                        .map_err(|e| Error::io(p, e))?;
                }
                Ok(Box::new(std::io::BufReader::with_capacity(1 << 20, f)))
            }
            Kind::Remote { store, path } => Ok(Box::new(ObjectReader::start(
                self.url.clone(),
                store.clone(),
                path.clone(),
                offset,
            ))),
        }
    }

    /// The whole object.
    pub fn get(&self) -> Result<Vec<u8>> {
        match &self.kind {
            Kind::Local(p) => std::fs::read(p).map_err(|e| Error::io(p, e)),
            Kind::Remote { store, path } => runtime()
                .block_on(async { store.get(path).await?.bytes().await })
                .map(|b| b.to_vec())
                .map_err(|e| request_err(&self.url, e)),
        }
    }

    /// The object, or `None` where it does not exist.
    pub fn get_if_exists(&self) -> Result<Option<Vec<u8>>> {
        match &self.kind {
            Kind::Local(p) if !p.exists() => Ok(None),
            Kind::Local(_) => self.get().map(Some),
            Kind::Remote { store, path } => {
                match runtime().block_on(async { store.get(path).await?.bytes().await }) {
                    Ok(b) => Ok(Some(b.to_vec())),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(request_err(&self.url, e)),
                }
            }
        }
    }

    /// Bytes `range` of the object.
    pub fn get_range(&self, range: Range<u64>) -> Result<Vec<u8>> {
        match &self.kind {
            Kind::Local(p) => {
                let mut f = std::fs::File::open(p).map_err(|e| Error::io(p, e))?;
                std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(range.start))
                    .map_err(|e| Error::io(p, e))?;
                let mut v = vec![0; (range.end - range.start) as usize];
                f.read_exact(&mut v).map_err(|e| Error::io(p, e))?;
                Ok(v)
            }
            Kind::Remote { store, path } => runtime()
                .block_on(store.get_range(path, range))
                .map(|b| b.to_vec())
                .map_err(|e| request_err(&self.url, e)),
        }
    }

    /// The object's size in bytes.
    pub fn size(&self) -> Result<u64> {
        match &self.kind {
            Kind::Local(p) => std::fs::metadata(p)
                .map(|m| m.len())
                .map_err(|e| Error::io(p, e)),
            Kind::Remote { store, path } => runtime()
                .block_on(store.head(path))
                .map(|m| m.size)
                .map_err(|e| request_err(&self.url, e)),
        }
    }

    /// Writes the object whole, replacing any: readers see the old object or the new one, never
    /// a part.
    pub fn put(&self, data: Vec<u8>) -> Result<()> {
        self.put_mode(data, PutMode::Overwrite).map(|_| ())
    }

    /// Writes the object only if none exists (atomically: of two writers, one wins); returns
    /// whether this call wrote it. Commit markers use it.
    pub fn put_if_absent(&self, data: Vec<u8>) -> Result<bool> {
        self.put_mode(data, PutMode::Create)
    }

    fn put_mode(&self, data: Vec<u8>, mode: PutMode) -> Result<bool> {
        match &self.kind {
            Kind::Local(p) => put_local(p, &data, matches!(mode, PutMode::Create)),
            // A large object (a checkpoint's data file) goes up in parts, several at once: one
            // request is limited (5 GB on S3) and slow.
            Kind::Remote { store, path }
                if data.len() > MULTIPART_ABOVE && matches!(mode, PutMode::Overwrite) =>
            {
                let upload = async {
                    let up = store.put_multipart(path).await?;
                    let mut w = object_store::WriteMultipart::new_with_chunk_size(up, PART_BYTES);
                    let all = Bytes::from(data);
                    let mut at = 0;
                    while at < all.len() {
                        let end = (at + PART_BYTES).min(all.len());
                        w.wait_for_capacity(PARTS_AT_ONCE).await?;
                        w.put(all.slice(at..end));
                        at = end;
                    }
                    w.finish().await
                };
                runtime()
                    .block_on(upload)
                    .map(|_| true)
                    .map_err(|e| request_err(&self.url, e))
            }
            Kind::Remote { store, path } => {
                let opts = PutOptions {
                    mode,
                    ..Default::default()
                };
                match runtime().block_on(store.put_opts(path, PutPayload::from(data), opts)) {
                    Ok(_) => Ok(true),
                    Err(object_store::Error::AlreadyExists { .. })
                    | Err(object_store::Error::Precondition { .. }) => Ok(false),
                    Err(e) => Err(request_err(&self.url, e)),
                }
            }
        }
    }

    /// Removes the object (a missing one is not an error).
    pub fn delete(&self) -> Result<()> {
        match &self.kind {
            Kind::Local(p) => match std::fs::remove_file(p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(p, e)),
                _ => Ok(()),
            },
            Kind::Remote { store, path } => match runtime().block_on(store.delete(path)) {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(request_err(&self.url, e)),
            },
        }
    }
}

/// Writes a local file through a temporary file and a rename (or, for put-if-absent, a hard
/// link, which fails when the name exists).
fn put_local(p: &FsPath, data: &[u8], if_absent: bool) -> Result<bool> {
    if let Some(d) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    let name = p
        .file_name()
        .map_or("object".into(), |n| n.to_string_lossy());
    let tmp = p.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, data)?;
        f.sync_all()
    };
    write().map_err(|e| Error::io(&tmp, e))?;
    let done = if if_absent {
        std::fs::hard_link(&tmp, p)
    } else {
        std::fs::rename(&tmp, p)
    };
    let _ = std::fs::remove_file(&tmp);
    match done {
        Ok(()) => Ok(true),
        Err(e) if if_absent && e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(Error::io(p, e)),
    }
}

/// The objects under a prefix (`gs://b/dir/`, `s3://b/dir/x-`, a local folder), as URLs with
/// their sizes, sorted.
pub fn list(prefix: &str) -> Result<Vec<(String, u64)>> {
    if !is_remote(prefix) {
        let p = prefix.strip_prefix("file://").unwrap_or(prefix);
        return list_local(FsPath::new(p));
    }
    let (scheme, rest) = prefix.split_once("://").unwrap_or(("", prefix));
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    let store = store_for(scheme, bucket, prefix)?;
    // object_store lists whole path segments: list the folder, keep the names under the prefix.
    let (dir, _) = key.rsplit_once('/').unwrap_or(("", key));
    let dir_path = ObjPath::parse(dir).map_err(|e| err(prefix, format!("bad prefix: {e}")))?;
    let metas: Vec<object_store::ObjectMeta> = runtime()
        .block_on(async {
            store
                .list(Some(&dir_path))
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<object_store::Result<Vec<_>>>()
        })
        .map_err(|e| request_err(prefix, e))?;
    let mut out: Vec<(String, u64)> = metas
        .into_iter()
        .filter(|m| m.location.as_ref().starts_with(key))
        .map(|m| (format!("{scheme}://{bucket}/{}", m.location), m.size))
        .collect();
    out.sort();
    Ok(out)
}

fn list_local(p: &FsPath) -> Result<Vec<(String, u64)>> {
    let (dir, start) = if p.is_dir() {
        (p.to_path_buf(), String::new())
    } else {
        let dir = p.parent().unwrap_or(FsPath::new(".")).to_path_buf();
        let start = p
            .file_name()
            .map_or(String::new(), |n| n.to_string_lossy().into_owned());
        (dir, start)
    };
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir)
        .map_err(|e| Error::io(&dir, e))?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        let meta = e.metadata().map_err(|x| Error::io(e.path(), x))?;
        if meta.is_file() && name.starts_with(&start) {
            out.push((e.path().display().to_string(), meta.len()));
        }
    }
    out.sort();
    Ok(out)
}

/// What the fetching task hands the reader.
type Chunk = std::result::Result<Bytes, String>;

/// A streaming reader of a remote object: a task on the storage runtime fetches it with one
/// ranged GET, up to `AHEAD` chunks ahead of the reader; a connection that breaks is reopened
/// at the byte reached, with backoff, until the retry window is spent.
pub struct ObjectReader {
    rx: tokio::sync::mpsc::Receiver<Chunk>,
    current: Bytes,
    task: tokio::task::JoinHandle<()>,
    /// The fetch's final error, repeated by every later read.
    failure: Option<String>,
}

/// Chunks fetched ahead of the reader (each as the connection delivers it, typically 8–64 KiB;
/// the HTTP client buffers a little more).
const AHEAD: usize = 64;

impl ObjectReader {
    fn start(url: String, store: Arc<dyn ObjectStore>, path: ObjPath, offset: u64) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(AHEAD);
        let task = runtime().spawn(fetch(url, store, path, offset, tx));
        ObjectReader {
            rx,
            current: Bytes::new(),
            task,
            failure: None,
        }
    }
}

impl Drop for ObjectReader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Streams `path` from `offset` into `tx`, resuming after failures; ends with an error message
/// naming the URL and the byte reached once retries are spent.
async fn fetch(
    url: String,
    store: Arc<dyn ObjectStore>,
    path: ObjPath,
    mut offset: u64,
    tx: tokio::sync::mpsc::Sender<Chunk>,
) {
    let window = retry_window();
    let mut failing_since: Option<Instant> = None;
    let mut backoff = Duration::from_millis(100);
    loop {
        let opts = GetOptions {
            range: (offset > 0).then_some(GetRange::Offset(offset)),
            ..Default::default()
        };
        let failure = match store.get_opts(&path, opts).await {
            Ok(r) => {
                let mut s = r.into_stream();
                let mut failure = None;
                while let Some(c) = s.next().await {
                    match c {
                        Ok(b) => {
                            failing_since = None;
                            backoff = Duration::from_millis(100);
                            offset += b.len() as u64;
                            if tx.send(Ok(b)).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            failure = Some(e.to_string());
                            break;
                        }
                    }
                }
                match failure {
                    None => return,
                    Some(f) => f,
                }
            }
            Err(object_store::Error::NotFound { .. }) => {
                let _ = tx.send(Err(format!("`{url}` does not exist"))).await;
                return;
            }
            Err(e) => e.to_string(),
        };
        let since = *failing_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= window {
            let msg = format!(
                "reading `{url}` failed at byte {offset} and kept failing for {:.0} s (BASIC_STORAGE_RETRY_SECONDS): {failure}",
                since.elapsed().as_secs_f64()
            );
            let _ = tx.send(Err(msg)).await;
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(15));
    }
}

impl Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            if let Some(f) = &self.failure {
                return Err(std::io::Error::other(f.clone()));
            }
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.current = b,
                Some(Err(msg)) => self.failure = Some(msg),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_objects_put_get_range_list_and_put_if_absent() {
        let dir = std::env::temp_dir().join(format!("basic-storage-{}", std::process::id()));
        let a = Location::parse(dir.join("sub/a.bin").to_str().unwrap()).unwrap();
        a.put(b"hello world".to_vec()).unwrap();
        assert_eq!(a.get().unwrap(), b"hello world");
        assert_eq!(a.get_range(6..11).unwrap(), b"world");
        assert_eq!(a.size().unwrap(), 11);
        let mut r = a.reader(6).unwrap();
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        assert_eq!(s, "world");
        let m = a.sibling("marker").unwrap();
        assert!(m.put_if_absent(b"1".to_vec()).unwrap());
        assert!(!m.put_if_absent(b"2".to_vec()).unwrap());
        assert_eq!(m.get().unwrap(), b"1");
        let listed = list(&format!("{}/", dir.join("sub").display())).unwrap();
        assert_eq!(listed.len(), 2, "{listed:?}");
        m.delete().unwrap();
        m.delete().unwrap();
        assert_eq!(m.get_if_exists().unwrap(), None);
        let e = Location::parse("ftp://x/y").err().unwrap().to_string();
        assert!(e.contains("ftp://"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
