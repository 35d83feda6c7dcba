//! Webdataset shards as they stream: a tar archive (plain or gzip-compressed) whose consecutive
//! members sharing a key (the file name up to its first dot) make one sample — `KEY.jpg|jpeg|
//! png|webp` the image, `KEY.txt` the caption, `KEY.cls` the class, other members ignored, as
//! img2dataset writes them. The tar reader is basic's own, so that a damaged archive is told
//! apart from a finished one (an archive must end with its zero blocks; one that stops before
//! them is truncated) and every error can name the byte where it happened.

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::shards::Sample;

const BLOCK: usize = 512;
/// The largest member read (16 GiB); larger sizes in a header are damage.
const MAX_MEMBER: u64 = 1 << 34;
/// Member data is read this much at a time.
const CHUNK: usize = 1 << 20;

/// A damaged archive: what was wrong, and the byte of the tar stream (and, when compressed, of
/// the file) where it was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    pub offset: u64,
    pub file_offset: Option<u64>,
    pub what: String,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.file_offset {
            Some(fo) => write!(
                f,
                "{} (at byte {} of the decompressed tar stream, byte {fo} of the gzip file)",
                self.what, self.offset
            ),
            None => write!(f, "{} (at byte {})", self.what, self.offset),
        }
    }
}

/// Counts the bytes read through it (the compressed position under a decoder).
struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// One member of an archive: its name and contents.
pub struct Member {
    pub name: String,
    pub data: Vec<u8>,
}

/// A streaming tar reader (ustar, GNU long names, pax `path` records).
pub struct TarReader {
    r: Box<dyn Read + Send>,
    /// Bytes of the tar stream consumed.
    offset: u64,
    /// Bytes of the underlying file consumed, where the stream is decompressed.
    compressed: Option<Arc<AtomicU64>>,
    done: bool,
    /// A read error met while looking for gzip's signature, reported by the first read.
    failed: Option<std::io::Error>,
}

impl TarReader {
    /// Reads `r`, decompressing it when it starts with gzip's signature.
    pub fn new(r: Box<dyn Read + Send>) -> TarReader {
        let mut r = std::io::BufReader::with_capacity(1 << 16, r);
        let (gz, failed) = match std::io::BufRead::fill_buf(&mut r) {
            Ok(b) => (b.starts_with(&[0x1f, 0x8b]), None),
            Err(e) => (false, Some(e)),
        };
        if gz {
            let count = Arc::new(AtomicU64::new(0));
            let counted = Counting {
                inner: r,
                count: count.clone(),
            };
            let dec = flate2::read::MultiGzDecoder::new(counted);
            TarReader {
                r: Box::new(std::io::BufReader::with_capacity(1 << 16, dec)),
                offset: 0,
                compressed: Some(count),
                done: false,
                failed,
            }
        } else {
            TarReader {
                r: Box::new(r),
                offset: 0,
                compressed: None,
                done: false,
                failed,
            }
        }
    }

    fn damage(&self, what: impl Into<String>) -> Damage {
        Damage {
            offset: self.offset,
            file_offset: self.compressed.as_ref().map(|c| c.load(Ordering::Relaxed)),
            what: what.into(),
        }
    }

    /// Fills `buf` whole; `Ok(false)` at a clean end of input before its first byte.
    fn fill(&mut self, buf: &mut [u8]) -> Result<bool, Damage> {
        if let Some(e) = self.failed.take() {
            return Err(self.damage(format!("reading failed: {e}")));
        }
        let mut got = 0;
        while got < buf.len() {
            match self.r.read(&mut buf[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => {
                    self.offset += got as u64;
                    return Err(self.damage("the archive is truncated"));
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.offset += got as u64;
                    return Err(self.damage(format!("reading failed: {e}")));
                }
            }
        }
        self.offset += got as u64;
        Ok(true)
    }

    /// Reads `n` bytes of member data and the padding after them. The buffer grows as the bytes
    /// arrive, so a header that claims more than the archive holds costs no memory.
    fn data(&mut self, n: u64) -> Result<Vec<u8>, Damage> {
        if n > MAX_MEMBER {
            return Err(self.damage(format!(
                "a member claims {n} bytes, more than the {MAX_MEMBER} a shard's member may have"
            )));
        }
        let mut v = Vec::with_capacity((n as usize).min(CHUNK));
        while (v.len() as u64) < n {
            let old = v.len();
            v.resize(old + (n as usize - old).min(CHUNK), 0);
            if !self.fill(&mut v[old..])? {
                return Err(self.damage("the archive is truncated"));
            }
        }
        let pad = (BLOCK - (n as usize % BLOCK)) % BLOCK;
        let mut p = [0u8; BLOCK];
        if pad > 0 && !self.fill(&mut p[..pad])? {
            return Err(self.damage("the archive is truncated"));
        }
        Ok(v)
    }

    /// The next regular file, or `None` after the end-of-archive blocks.
    pub fn next_member(&mut self) -> Result<Option<Member>, Damage> {
        let mut long_name: Option<String> = None;
        loop {
            if self.done {
                return Ok(None);
            }
            let at = self.offset;
            let mut h = [0u8; BLOCK];
            if !self.fill(&mut h)? {
                return Err(self.damage(
                    "the archive is truncated (it ends without tar's end-of-archive blocks)",
                ));
            }
            if h.iter().all(|&b| b == 0) {
                self.done = true;
                return Ok(None);
            }
            let header = Header::parse(&h).map_err(|w| Damage {
                offset: at,
                ..self.damage(w)
            })?;
            match header.kind {
                b'L' | b'x' => {
                    if header.size > MAX_NAME_RECORD {
                        return Err(Damage {
                            offset: at,
                            ..self.damage(format!(
                                "a long-name or pax header claims {} bytes, more than the \
                                 {MAX_NAME_RECORD} such a record may have",
                                header.size
                            ))
                        });
                    }
                    let d = self.data(header.size)?;
                    long_name = if header.kind == b'L' {
                        Some(cstr(&d))
                    } else {
                        pax_path(&d)
                            .map_err(|w| Damage {
                                offset: at,
                                ..self.damage(format!("a pax header is malformed: {w}"))
                            })?
                            .or(long_name)
                    };
                }
                b'0' | 0 | b'7' => {
                    let data = self.data(header.size)?;
                    let name = long_name.take().unwrap_or(header.name);
                    return Ok(Some(Member { name, data }));
                }
                _ => {
                    self.data(header.size)?;
                    long_name = None;
                }
            }
        }
    }

    /// Reads what follows the end-of-archive blocks: a pipe's writer must see its output read,
    /// and a compressed stream is read to its end, where gzip's checksum of the whole archive is
    /// checked (a flipped bit in the compressed data can decompress without a complaint until
    /// then). A plain archive's trailing bytes (tar pads to whole records) are not checked.
    pub fn drain(&mut self) -> Result<(), Damage> {
        match std::io::copy(&mut self.r, &mut std::io::sink()) {
            Err(e) if self.compressed.is_some() => Err(self.damage(format!(
                "the gzip stream is damaged after the archive's end ({e}): its data cannot be \
                 trusted"
            ))),
            _ => Ok(()),
        }
    }
}

/// The fields of a tar header that matter here.
struct Header {
    name: String,
    size: u64,
    kind: u8,
}

impl Header {
    fn parse(h: &[u8; BLOCK]) -> Result<Header, String> {
        let stored = octal(&h[148..156]).ok_or("a tar header has no readable checksum")?;
        let sum: u64 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| u64::from(if (148..156).contains(&i) { b' ' } else { b }))
            .sum();
        if sum != stored {
            return Err(format!(
                "a tar header's checksum is wrong ({stored}, the bytes sum to {sum}): the archive is corrupt"
            ));
        }
        let size = if h[124] & 0x80 != 0 {
            // GNU base-256 for sizes of 8 GiB and more (saturating: a reader bounds it).
            h[125..136].iter().fold(0u64, |a, &b| {
                a.saturating_mul(256).saturating_add(u64::from(b))
            })
        } else {
            octal(&h[124..136]).ok_or("a tar header has no readable size")?
        };
        let mut name = cstr(&h[..100]);
        if &h[257..262] == b"ustar" && h[345] != 0 {
            name = format!("{}/{name}", cstr(&h[345..500]));
        }
        Ok(Header {
            name,
            size,
            kind: h[156],
        })
    }
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn octal(b: &[u8]) -> Option<u64> {
    let t = cstr(b);
    let t = t.trim_matches(|c: char| c == ' ' || c == '\0');
    if t.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(t, 8).ok()
}

/// The longest GNU long name or pax header read.
const MAX_NAME_RECORD: u64 = 1 << 20;

/// The `path` of a pax extended header (records `LEN key=value\n`, LEN counting the whole
/// record), or what is wrong with its records.
fn pax_path(d: &[u8]) -> Result<Option<String>, String> {
    let mut rest = d;
    let mut path = None;
    while !rest.is_empty() {
        let sp = rest
            .iter()
            .position(|&c| c == b' ')
            .ok_or("a record has no length")?;
        let len: usize = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|l| l.parse().ok())
            .ok_or("a record's length is not a number")?;
        if len <= sp + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err(format!(
                "a record of {len} bytes does not fit its `LEN key=value\\n` form"
            ));
        }
        if let Some(v) = rest[sp + 1..len - 1].strip_prefix(b"path=") {
            path = Some(String::from_utf8_lossy(v).into_owned());
        }
        rest = &rest[len..];
    }
    Ok(path)
}

/// `(key, extension)` of a member name, webdataset's way: the key is everything up to the first
/// dot of the file name (folders included), the extension the rest, lower-cased.
pub fn split_name(name: &str) -> Option<(&str, String)> {
    let file_start = name.rfind('/').map_or(0, |i| i + 1);
    let dot = name[file_start..].find('.')? + file_start;
    Some((&name[..dot], name[dot + 1..].to_ascii_lowercase()))
}

/// What reading a shard gives, in order.
#[derive(Debug)]
pub enum Item {
    Sample(Sample),
    /// A sample that cannot be used, and why (counted, never silently dropped).
    Skipped(String),
}

/// The members of one key, being gathered.
#[derive(Default)]
struct Parts {
    key: String,
    image: Option<Vec<u8>>,
    caption: Option<String>,
    label: Option<i64>,
    bad_label: Option<String>,
}

impl Parts {
    fn finish(self) -> Item {
        let why = match (&self.image, &self.caption, &self.bad_label) {
            (None, _, _) => "no image (KEY.jpg, .jpeg, .png or .webp)".to_string(),
            (_, None, _) => "no caption (KEY.txt)".to_string(),
            (_, _, Some(b)) => format!("its .cls is not a class index: `{b}`"),
            _ => {
                return Item::Sample(Sample {
                    key: self.key,
                    image: Arc::new(self.image.unwrap_or_default()),
                    caption: self.caption.unwrap_or_default(),
                    label: self.label,
                })
            }
        };
        Item::Skipped(format!("sample `{}` has {why}", self.key))
    }
}

/// The samples of a tar stream, grouped by key as they come.
pub struct Samples {
    tar: TarReader,
    parts: Option<Parts>,
    finished: bool,
}

impl Samples {
    pub fn new(r: Box<dyn Read + Send>) -> Samples {
        Samples {
            tar: TarReader::new(r),
            parts: None,
            finished: false,
        }
    }

    /// The next sample (or skipped one); `Ok(None)` at the end of the archive.
    pub fn next_item(&mut self) -> Result<Option<Item>, Damage> {
        loop {
            if self.finished {
                return Ok(self.parts.take().map(Parts::finish));
            }
            let Some(m) = self.tar.next_member()? else {
                self.finished = true;
                self.tar.drain()?;
                continue;
            };
            let Some((key, ext)) = split_name(&m.name) else {
                continue;
            };
            let out = match &self.parts {
                Some(p) if p.key != key => self.parts.take().map(Parts::finish),
                _ => None,
            };
            let p = self.parts.get_or_insert_with(|| Parts {
                key: key.to_string(),
                ..Default::default()
            });
            match ext.as_str() {
                "jpg" | "jpeg" | "png" | "webp" => p.image = Some(m.data),
                "txt" => p.caption = Some(String::from_utf8_lossy(&m.data).trim().to_string()),
                "cls" => {
                    let t = String::from_utf8_lossy(&m.data).trim().to_string();
                    match t.parse() {
                        Ok(l) => p.label = Some(l),
                        Err(_) => p.bad_label = Some(t),
                    }
                }
                _ => {}
            }
            if out.is_some() {
                return Ok(out);
            }
        }
    }
}

/// The number of usable samples (keys with an image and a caption) of a tar stream, from its
/// headers alone: member data is skipped, not kept.
pub fn count_samples(r: Box<dyn Read + Send>) -> Result<u64, Damage> {
    let mut tar = TarReader::new(r);
    let mut n = 0;
    let mut current: Option<(String, bool, bool)> = None;
    let done = |c: &Option<(String, bool, bool)>| u64::from(matches!(c, Some((_, true, true))));
    while let Some(m) = tar.next_member()? {
        let Some((key, ext)) = split_name(&m.name) else {
            continue;
        };
        if current.as_ref().is_none_or(|c| c.0 != key) {
            n += done(&current);
            current = Some((key.to_string(), false, false));
        }
        if let Some(c) = current.as_mut() {
            match ext.as_str() {
                "jpg" | "jpeg" | "png" | "webp" => c.1 = true,
                "txt" => c.2 = true,
                _ => {}
            }
        }
    }
    tar.drain()?;
    Ok(n + done(&current))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in members {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn items(bytes: Vec<u8>) -> (Vec<String>, Option<Damage>) {
        let mut s = Samples::new(Box::new(std::io::Cursor::new(bytes)));
        let mut out = Vec::new();
        loop {
            match s.next_item() {
                Ok(Some(Item::Sample(x))) => out.push(format!("{}:{}", x.key, x.caption)),
                Ok(Some(Item::Skipped(w))) => out.push(format!("skip {w}")),
                Ok(None) => return (out, None),
                Err(d) => return (out, Some(d)),
            }
        }
    }

    #[test]
    fn members_group_by_key_and_incomplete_samples_are_said() {
        let long = format!("{}/k3.jpg", "d".repeat(120));
        let t = tar(&[
            ("k1.jpg", b"\xff\xd8"),
            ("k1.txt", b"one "),
            ("k1.json", b"{}"),
            ("k2.json", b"{}"),
            ("k2.txt", b"two"),
            (&long, b"\xff\xd8"),
            (&long.replace(".jpg", ".TXT"), b"three"),
            ("k4.png", b"\x89PNG"),
            ("k4.txt", b"four"),
            ("k4.cls", b"x"),
        ]);
        let (got, err) = items(t.clone());
        assert!(err.is_none(), "{err:?}");
        assert_eq!(got[0], "k1:one");
        assert!(
            got[1].starts_with("skip sample `k2` has no image"),
            "{got:?}"
        );
        assert_eq!(got[2], format!("{}/k3:three", "d".repeat(120)));
        assert!(got[3].contains("not a class index"), "{got:?}");
        assert_eq!(count_samples(Box::new(std::io::Cursor::new(t))).unwrap(), 3);
    }

    #[test]
    fn truncation_and_corruption_name_the_byte_compressed_or_not() {
        let t = tar(&[("a.jpg", &[7u8; 1000]), ("a.txt", b"x"), ("b.jpg", b"1")]);
        // Cut inside the second member's data: the first sample's members came whole.
        let (_, err) = items(t[..512 * 4 + 100].to_vec());
        let d = err.unwrap();
        assert!(
            d.what.contains("truncated") && d.offset == 512 * 4 + 100,
            "{d}"
        );
        // Cut at a member boundary, before the end blocks: still truncated.
        let (got, err) = items(t[..512 * 5].to_vec());
        assert!(err.unwrap().what.contains("end-of-archive"), "{got:?}");
        // A flipped byte in a header.
        let mut c = t.clone();
        c[512 * 3 + 10] ^= 0x55;
        let d = items(c).1.unwrap();
        assert!(d.what.contains("checksum") && d.offset == 512 * 3, "{d}");
        // Gzip: a damaged stream names both positions.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &t).unwrap();
        let mut z = gz.finish().unwrap();
        let (got, err) = items(z.clone());
        assert!(err.is_none() && got.len() == 2, "{got:?} {err:?}");
        let n = z.len();
        z[n / 2] ^= 0xff;
        z[n / 2 + 1] ^= 0xff;
        let d = items(z).1.unwrap();
        assert!(d.file_offset.is_some(), "{d}");
        assert!(d.to_string().contains("gzip"), "{d}");
    }
}
