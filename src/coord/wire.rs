//! The coordinator's wire format: length-prefixed binary frames over TCP.
//!
//! A frame is a 4-byte big-endian body length, then the body: a tag byte and the message's
//! fields (integers big-endian, byte strings as a 4-byte length and the bytes). Every length is
//! checked against its bound before anything is allocated for it: a frame against the bound of
//! the connection's state ([`MAX_HELLO_FRAME`] before registration, [`MAX_FRAME`] after), a key
//! against [`MAX_KEY`], a value against [`MAX_VALUE`]. A body with a field past its end, an
//! unknown tag or bytes left over is malformed; the server answers it with an error and closes
//! the connection.
//!
//! The first frame of a client is its hello, which starts with [`MAGIC`] (that also carries the
//! protocol version), so a stray program that connects is told what it reached.

use std::io::{ErrorKind, Read, Write};

use crate::error::StatusCode;

/// The first bytes of a hello: `BASICCO` and the protocol version.
pub(crate) const MAGIC: &[u8; 8] = b"BASICCO\x01";
/// The longest key or barrier name, in bytes.
pub const MAX_KEY: usize = 4096;
/// The largest value, in bytes.
pub const MAX_VALUE: usize = 64 << 20;
/// The longest token, reason or error message, in bytes.
pub const MAX_TEXT: usize = 4096;
/// The largest frame of a registered process: a put of the largest key and value.
pub(crate) const MAX_FRAME: usize = MAX_VALUE + MAX_KEY + 64;
/// The largest frame before registration (a hello): an unregistered peer gets no more memory.
pub(crate) const MAX_HELLO_FRAME: usize = 16 * 1024;

/// A process's first frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Hello {
    pub process_id: u32,
    pub num_processes: u32,
    /// Empty when the process has no token.
    pub token: String,
    pub registration_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub heartbeat_timeout_ms: u64,
}

/// A request that gets a [`ToClient::Reply`] with the same id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Call {
    Put {
        key: String,
        value: Vec<u8>,
    },
    Get {
        key: String,
        timeout_ms: u64,
    },
    TryGet {
        key: String,
    },
    /// Returns the largest `value` contributed by the participants.
    Barrier {
        name: String,
        timeout_ms: u64,
        value: u64,
    },
    RequestStop {
        reason: String,
    },
    /// Fails the job with this process's error.
    Abort {
        message: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ToServer {
    Hello(Hello),
    Call {
        id: u64,
        call: Call,
    },
    /// Also carries the last step the process reported (for the watchdog).
    Heartbeat {
        step: Option<u64>,
    },
    /// The step a process was at when the stop notice reached it (`None`: none begun yet).
    StopStep {
        step: Option<u64>,
    },
}

/// What a successful call returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    Done,
    Value(Vec<u8>),
    Number(u64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ToClient {
    /// Every process has registered: the job is formed.
    Welcome,
    /// Registration or the connection was refused; the server closes it after this frame.
    Refused {
        code: StatusCode,
        message: String,
    },
    Reply {
        id: u64,
        result: Result<Answer, (StatusCode, String)>,
    },
    HeartbeatAck,
    /// A process asked the job to stop (preemption).
    Stop {
        by: u32,
        reason: String,
    },
    /// Every process reported its step: the job stops at this one.
    StopAt {
        step: u64,
    },
    /// The job has failed; every later call fails with this.
    Failed {
        code: StatusCode,
        message: String,
    },
}

/// A frame that cannot be decoded: names the field and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Malformed(pub String);

struct Enc(Vec<u8>);

impl Enc {
    fn new(tag: u8) -> Enc {
        Enc(vec![0, 0, 0, 0, tag])
    }
    fn u8(&mut self, v: u8) -> &mut Enc {
        self.0.push(v);
        self
    }
    fn u32(&mut self, v: u32) -> &mut Enc {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Enc {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// Callers bound `b` (keys, values, texts) far below `u32::MAX` before encoding.
    fn bytes(&mut self, b: &[u8]) -> &mut Enc {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
        self
    }
    fn finish(&mut self) -> Vec<u8> {
        let mut v = std::mem::take(&mut self.0);
        let n = (v.len() - 4) as u32;
        v[..4].copy_from_slice(&n.to_be_bytes());
        v
    }
}

struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], Malformed> {
        if self.buf.len() - self.pos < n {
            return Err(Malformed(format!(
                "{what} runs past the end of the frame ({} byte(s) needed, {} left)",
                n,
                self.buf.len() - self.pos
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self, what: &str) -> Result<u8, Malformed> {
        Ok(self.take(1, what)?[0])
    }
    fn u32(&mut self, what: &str) -> Result<u32, Malformed> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &str) -> Result<u64, Malformed> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_be_bytes(a))
    }
    /// A length-prefixed byte string of at most `max` bytes; the bound is checked first.
    fn bytes(&mut self, max: usize, what: &str) -> Result<Vec<u8>, Malformed> {
        let n = self.u32(what)? as usize;
        if n > max {
            return Err(Malformed(format!(
                "{what} is {n} bytes, more than the {max} allowed"
            )));
        }
        Ok(self.take(n, what)?.to_vec())
    }
    fn text(&mut self, max: usize, what: &str) -> Result<String, Malformed> {
        String::from_utf8(self.bytes(max, what)?)
            .map_err(|_| Malformed(format!("{what} is not UTF-8")))
    }
    fn code(&mut self) -> Result<StatusCode, Malformed> {
        let c = self.u8("status code")?;
        code_from_u8(c).ok_or_else(|| Malformed(format!("unknown status code {c}")))
    }
    fn done(&self) -> Result<(), Malformed> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(Malformed(format!(
                "{} byte(s) left over after the message",
                self.buf.len() - self.pos
            )))
        }
    }
}

const CODES: [StatusCode; 8] = [
    StatusCode::InvalidArgument,
    StatusCode::DeadlineExceeded,
    StatusCode::NotFound,
    StatusCode::AlreadyExists,
    StatusCode::PermissionDenied,
    StatusCode::Aborted,
    StatusCode::Unavailable,
    StatusCode::Internal,
];

fn code_to_u8(c: StatusCode) -> u8 {
    CODES.iter().position(|&k| k == c).expect("listed") as u8
}

fn code_from_u8(c: u8) -> Option<StatusCode> {
    CODES.get(c as usize).copied()
}

/// Truncates `s` to at most `max` bytes on a character boundary (reasons and messages that a
/// process sends are cut, not refused).
pub(crate) fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

impl ToServer {
    /// The frame, length prefix included.
    pub(crate) fn encode(&self) -> Vec<u8> {
        match self {
            ToServer::Hello(h) => {
                let mut e = Enc::new(1);
                e.0.extend_from_slice(MAGIC);
                e.u32(h.process_id)
                    .u32(h.num_processes)
                    .bytes(h.token.as_bytes())
                    .u64(h.registration_ms)
                    .u64(h.heartbeat_interval_ms)
                    .u64(h.heartbeat_timeout_ms)
                    .finish()
            }
            ToServer::Call { id, call } => {
                let mut e = Enc::new(2);
                e.u64(*id);
                encode_call(&mut e, call);
                e.finish()
            }
            ToServer::Heartbeat { step } => encode_step(Enc::new(3), *step),
            ToServer::StopStep { step } => encode_step(Enc::new(4), *step),
        }
    }

    /// Decodes a frame body (without its length prefix).
    pub(crate) fn decode(body: &[u8]) -> Result<ToServer, Malformed> {
        let mut d = Dec { buf: body, pos: 0 };
        let msg = match d.u8("message tag")? {
            1 => ToServer::Hello(decode_hello(&mut d)?),
            2 => {
                let id = d.u64("call id")?;
                ToServer::Call {
                    id,
                    call: decode_call(&mut d)?,
                }
            }
            3 => ToServer::Heartbeat {
                step: decode_step(&mut d)?,
            },
            4 => ToServer::StopStep {
                step: decode_step(&mut d)?,
            },
            t => return Err(Malformed(format!("unknown message tag {t}"))),
        };
        d.done()?;
        Ok(msg)
    }
}

fn encode_step(mut e: Enc, step: Option<u64>) -> Vec<u8> {
    match step {
        Some(s) => e.u8(1).u64(s),
        None => e.u8(0).u64(0),
    };
    e.finish()
}

fn decode_step(d: &mut Dec<'_>) -> Result<Option<u64>, Malformed> {
    let has = d.u8("step flag")?;
    let step = d.u64("step")?;
    match (has, step) {
        (0, 0) => Ok(None),
        (0, s) => Err(Malformed(format!(
            "a message without a step carries step {s}"
        ))),
        (1, s) => Ok(Some(s)),
        (f, _) => Err(Malformed(format!("step flag {f} is neither 0 nor 1"))),
    }
}

fn decode_hello(d: &mut Dec<'_>) -> Result<Hello, Malformed> {
    let magic = d.take(MAGIC.len(), "protocol magic")?;
    if magic[..7] != MAGIC[..7] {
        return Err(Malformed(
            "this is not a basic coordinator client (wrong protocol magic)".into(),
        ));
    }
    if magic[7] != MAGIC[7] {
        return Err(Malformed(format!(
            "the process speaks coordinator protocol {} but the coordinator speaks {}; run the \
             same basic build on every host",
            magic[7], MAGIC[7]
        )));
    }
    Ok(Hello {
        process_id: d.u32("process id")?,
        num_processes: d.u32("number of processes")?,
        token: d.text(MAX_TEXT, "job token")?,
        registration_ms: d.u64("registration timeout")?,
        heartbeat_interval_ms: d.u64("heartbeat interval")?,
        heartbeat_timeout_ms: d.u64("heartbeat timeout")?,
    })
}

fn encode_call(e: &mut Enc, call: &Call) {
    match call {
        Call::Put { key, value } => e.u8(1).bytes(key.as_bytes()).bytes(value),
        Call::Get { key, timeout_ms } => e.u8(2).bytes(key.as_bytes()).u64(*timeout_ms),
        Call::TryGet { key } => e.u8(3).bytes(key.as_bytes()),
        Call::Barrier {
            name,
            timeout_ms,
            value,
        } => e.u8(4).bytes(name.as_bytes()).u64(*timeout_ms).u64(*value),
        Call::RequestStop { reason } => e.u8(5).bytes(reason.as_bytes()),
        Call::Abort { message } => e.u8(6).bytes(message.as_bytes()),
    };
}

fn decode_call(d: &mut Dec<'_>) -> Result<Call, Malformed> {
    Ok(match d.u8("call tag")? {
        1 => Call::Put {
            key: d.text(MAX_KEY, "key")?,
            value: d.bytes(MAX_VALUE, "value")?,
        },
        2 => Call::Get {
            key: d.text(MAX_KEY, "key")?,
            timeout_ms: d.u64("timeout")?,
        },
        3 => Call::TryGet {
            key: d.text(MAX_KEY, "key")?,
        },
        4 => Call::Barrier {
            name: d.text(MAX_KEY, "barrier name")?,
            timeout_ms: d.u64("timeout")?,
            value: d.u64("barrier value")?,
        },
        5 => Call::RequestStop {
            reason: d.text(MAX_TEXT, "stop reason")?,
        },
        6 => Call::Abort {
            message: d.text(MAX_TEXT, "abort message")?,
        },
        t => return Err(Malformed(format!("unknown call tag {t}"))),
    })
}

impl ToClient {
    pub(crate) fn encode(&self) -> Vec<u8> {
        match self {
            ToClient::Welcome => Enc::new(1).finish(),
            ToClient::Refused { code, message } => Enc::new(2)
                .u8(code_to_u8(*code))
                .bytes(clip(message, MAX_TEXT).as_bytes())
                .finish(),
            ToClient::Reply { id, result } => {
                let mut e = Enc::new(3);
                e.u64(*id);
                match result {
                    Ok(Answer::Done) => e.u8(0),
                    Ok(Answer::Value(v)) => e.u8(1).bytes(v),
                    Ok(Answer::Number(n)) => e.u8(2).u64(*n),
                    Err((code, msg)) => e
                        .u8(3)
                        .u8(code_to_u8(*code))
                        .bytes(clip(msg, MAX_TEXT).as_bytes()),
                };
                e.finish()
            }
            ToClient::HeartbeatAck => Enc::new(4).finish(),
            ToClient::Stop { by, reason } => Enc::new(5)
                .u32(*by)
                .bytes(clip(reason, MAX_TEXT).as_bytes())
                .finish(),
            ToClient::Failed { code, message } => Enc::new(6)
                .u8(code_to_u8(*code))
                .bytes(clip(message, MAX_TEXT).as_bytes())
                .finish(),
            ToClient::StopAt { step } => Enc::new(7).u64(*step).finish(),
        }
    }

    pub(crate) fn decode(body: &[u8]) -> Result<ToClient, Malformed> {
        let mut d = Dec { buf: body, pos: 0 };
        let msg = match d.u8("message tag")? {
            1 => ToClient::Welcome,
            2 => ToClient::Refused {
                code: d.code()?,
                message: d.text(MAX_TEXT, "message")?,
            },
            3 => {
                let id = d.u64("call id")?;
                let result = match d.u8("reply kind")? {
                    0 => Ok(Answer::Done),
                    1 => Ok(Answer::Value(d.bytes(MAX_VALUE, "value")?)),
                    2 => Ok(Answer::Number(d.u64("number")?)),
                    3 => Err((d.code()?, d.text(MAX_TEXT, "message")?)),
                    k => return Err(Malformed(format!("unknown reply kind {k}"))),
                };
                ToClient::Reply { id, result }
            }
            4 => ToClient::HeartbeatAck,
            5 => ToClient::Stop {
                by: d.u32("process id")?,
                reason: d.text(MAX_TEXT, "stop reason")?,
            },
            6 => ToClient::Failed {
                code: d.code()?,
                message: d.text(MAX_TEXT, "message")?,
            },
            7 => ToClient::StopAt {
                step: d.u64("stop step")?,
            },
            t => return Err(Malformed(format!("unknown message tag {t}"))),
        };
        d.done()?;
        Ok(msg)
    }
}

/// What one [`FrameReader::poll`] saw.
#[derive(Debug)]
pub(crate) enum Polled {
    /// A complete frame body.
    Frame(Vec<u8>),
    /// Some bytes of a frame, not all yet.
    Bytes,
    /// Nothing arrived before the socket's read timeout.
    Idle,
}

/// Why reading stopped.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The peer closed the connection; `mid_frame` when it did so inside a frame.
    Closed {
        mid_frame: bool,
    },
    /// A frame longer than the connection's bound; nothing was allocated for it.
    TooLarge {
        len: usize,
        max: usize,
    },
    Io(std::io::Error),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Closed { mid_frame: false } => write!(f, "the connection was closed"),
            ReadError::Closed { mid_frame: true } => {
                write!(f, "the connection was closed in the middle of a message")
            }
            ReadError::TooLarge { len, max } => {
                write!(
                    f,
                    "a message of {len} bytes is larger than the {max} allowed"
                )
            }
            ReadError::Io(e) => write!(f, "{e}"),
        }
    }
}

/// Reads frames incrementally from a socket with a read timeout, so the reading thread can do
/// other work (heartbeats, deadlines, stopping) between reads. The body grows as bytes arrive:
/// a peer that announces a large frame and sends nothing gets no memory for it.
#[derive(Default)]
pub(crate) struct FrameReader {
    head: [u8; 4],
    head_len: usize,
    body: Vec<u8>,
    want: Option<usize>,
}

/// The most read into the body per call.
const CHUNK: usize = 1 << 20;

impl FrameReader {
    /// One read from `r`, with frames bounded by `max` bytes.
    pub(crate) fn poll(&mut self, r: &mut impl Read, max: usize) -> Result<Polled, ReadError> {
        let mid_frame = self.head_len > 0;
        let got = match self.want {
            None => read_some(r, &mut self.head[self.head_len..]),
            Some(want) => {
                let old = self.body.len();
                let n = (want - old).min(CHUNK);
                self.body.resize(old + n, 0);
                let got = read_some(r, &mut self.body[old..]);
                self.body
                    .truncate(old + got.as_ref().ok().copied().flatten().unwrap_or(0));
                got
            }
        };
        let n = match got? {
            None => return Ok(Polled::Idle),
            Some(0) => return Err(ReadError::Closed { mid_frame }),
            Some(n) => n,
        };
        if self.want.is_none() {
            self.head_len += n;
            if self.head_len < 4 {
                return Ok(Polled::Bytes);
            }
            let len = u32::from_be_bytes(self.head) as usize;
            if len > max {
                return Err(ReadError::TooLarge { len, max });
            }
            self.want = Some(len);
            self.body = Vec::with_capacity(len.min(CHUNK));
        }
        if self.body.len() == self.want.unwrap_or(0) {
            self.head_len = 0;
            self.want = None;
            return Ok(Polled::Frame(std::mem::take(&mut self.body)));
        }
        Ok(Polled::Bytes)
    }
}

/// `Ok(None)` when the read timed out; `Ok(Some(0))` at end of stream.
fn read_some(r: &mut impl Read, buf: &mut [u8]) -> Result<Option<usize>, ReadError> {
    match r.read(buf) {
        Ok(n) => Ok(Some(n)),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(None),
        Err(e) if e.kind() == ErrorKind::Interrupted => Ok(None),
        Err(e) => Err(ReadError::Io(e)),
    }
}

/// Writes one encoded frame.
pub(crate) fn write_frame(w: &mut impl Write, frame: &[u8]) -> std::io::Result<()> {
    w.write_all(frame)?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            process_id: 3,
            num_processes: 4,
            token: "t0k".into(),
            registration_ms: 1000,
            heartbeat_interval_ms: 100,
            heartbeat_timeout_ms: 1000,
        }
    }

    #[test]
    fn every_message_round_trips() {
        let to_server = [
            ToServer::Hello(hello()),
            ToServer::Heartbeat { step: None },
            ToServer::Heartbeat { step: Some(7) },
            ToServer::StopStep { step: Some(12) },
            ToServer::StopStep { step: None },
            ToServer::Call {
                id: 9,
                call: Call::Put {
                    key: "k".into(),
                    value: vec![0, 1, 255],
                },
            },
            ToServer::Call {
                id: 10,
                call: Call::Barrier {
                    name: "b".into(),
                    timeout_ms: 5,
                    value: u64::MAX,
                },
            },
        ];
        for m in to_server {
            let f = m.encode();
            assert_eq!(
                u32::from_be_bytes([f[0], f[1], f[2], f[3]]) as usize,
                f.len() - 4
            );
            assert_eq!(ToServer::decode(&f[4..]).unwrap(), m);
        }
        let to_client = [
            ToClient::Welcome,
            ToClient::Reply {
                id: 1,
                result: Ok(Answer::Value(vec![1, 2])),
            },
            ToClient::Reply {
                id: 2,
                result: Err((StatusCode::NotFound, "no".into())),
            },
            ToClient::Failed {
                code: StatusCode::Aborted,
                message: "process 2 died".into(),
            },
            ToClient::Stop {
                by: 2,
                reason: "SIGTERM".into(),
            },
            ToClient::StopAt { step: 13 },
        ];
        for m in to_client {
            let f = m.encode();
            assert_eq!(ToClient::decode(&f[4..]).unwrap(), m);
        }
    }

    #[test]
    fn every_truncation_of_a_frame_is_malformed_not_a_panic() {
        let f = ToServer::Call {
            id: 1,
            call: Call::Put {
                key: "key".into(),
                value: vec![7; 10],
            },
        }
        .encode();
        for cut in 0..f.len() - 4 {
            assert!(ToServer::decode(&f[4..4 + cut]).is_err(), "cut at {cut}");
        }
        let mut extra = f[4..].to_vec();
        extra.push(0);
        let e = ToServer::decode(&extra).unwrap_err();
        assert!(e.0.contains("left over"), "{e:?}");
    }

    #[test]
    fn field_lengths_are_bounded_before_reading() {
        // A put whose key claims 4 GiB: refused on the length alone.
        let mut body = vec![2];
        body.extend_from_slice(&1u64.to_be_bytes());
        body.push(1);
        body.extend_from_slice(&u32::MAX.to_be_bytes());
        let e = ToServer::decode(&body).unwrap_err();
        assert!(e.0.contains("key is 4294967295 bytes"), "{e:?}");
    }

    #[test]
    fn a_wrong_magic_or_version_is_named() {
        let mut f = ToServer::Hello(hello()).encode();
        f[4 + 1 + 7] = 9;
        let e = ToServer::decode(&f[4..]).unwrap_err();
        assert!(e.0.contains("protocol 9"), "{e:?}");
        f[4 + 1] = b'X';
        let e = ToServer::decode(&f[4..]).unwrap_err();
        assert!(e.0.contains("not a basic coordinator client"), "{e:?}");
    }

    #[test]
    fn frame_reader_reassembles_byte_by_byte_and_bounds_length() {
        let a = ToServer::Heartbeat { step: Some(3) }.encode();
        let b = ToServer::Hello(hello()).encode();
        let all: Vec<u8> = a.iter().chain(&b).copied().collect();
        // A reader that returns one byte per call.
        struct OneByte<'a>(&'a [u8]);
        impl Read for OneByte<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.0.is_empty() || buf.is_empty() {
                    return Ok(0);
                }
                buf[0] = self.0[0];
                self.0 = &self.0[1..];
                Ok(1)
            }
        }
        let mut src = OneByte(&all);
        let mut r = FrameReader::default();
        let mut frames = vec![];
        loop {
            match r.poll(&mut src, 1024) {
                Ok(Polled::Frame(f)) => frames.push(f),
                Ok(_) => {}
                Err(ReadError::Closed { mid_frame }) => {
                    assert!(!mid_frame);
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(frames, vec![a[4..].to_vec(), b[4..].to_vec()]);

        let mut r = FrameReader::default();
        let mut big = &(2_000_000u32.to_be_bytes())[..];
        // A reader given all four bytes at once sees the length and refuses it.
        match r.poll(&mut big, 1024) {
            Err(ReadError::TooLarge {
                len: 2_000_000,
                max: 1024,
            }) => {}
            other => panic!("{other:?}"),
        }
        let mut cut = &a[..a.len() - 1];
        let mut r = FrameReader::default();
        let end = loop {
            if let Err(e) = r.poll(&mut cut, 1024) {
                break e;
            }
        };
        assert!(
            matches!(end, ReadError::Closed { mid_frame: true }),
            "{end}"
        );
    }
}
