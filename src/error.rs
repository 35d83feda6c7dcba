//! The library's one error type. Every variant names the thing that is wrong and, where there is
//! one, the fix; the CLI prints them as they are.

use std::path::PathBuf;

/// Result alias used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No plugin was found for a backend name.
    #[error("no PJRT plugin found for backend `{backend}`; looked in:\n{}\ninstall it with:\n  {install}", .searched.iter().map(|p| format!("  {}", p.display())).collect::<Vec<_>>().join("\n"))]
    PluginNotFound {
        backend: String,
        searched: Vec<PathBuf>,
        install: String,
    },

    /// A file exists (or was named) but cannot be used as a PJRT plugin.
    #[error("cannot load PJRT plugin `{}`: {reason}", .path.display())]
    PluginLoad { path: PathBuf, reason: String },

    /// The plugin's API table is too old for an entry `basic` needs.
    #[error("PJRT plugin `{}` is too old for `{entry}`: its API table (PJRT {version}, {table_size} bytes) does not provide it; use a newer plugin", .path.display())]
    MissingEntry {
        path: PathBuf,
        entry: &'static str,
        table_size: usize,
        version: String,
    },

    /// An error returned by the plugin, with its message and status code.
    #[error("{call} failed ({code}): {message}")]
    Pjrt {
        call: &'static str,
        code: &'static str,
        message: String,
    },

    /// The program text could not be understood before it reached the plugin.
    #[error("program: {0}")]
    Program(String),

    /// Arguments given to an executable do not match what the program declares.
    #[error("argument {index} of `{program}`: {problem}")]
    Argument {
        program: String,
        index: usize,
        problem: String,
    },

    /// More devices are needed than a client or target has. `platform` says which, as a phrase
    /// ("the `cpu` client", "target `tpu-v5e:2x2`").
    #[error("{what} needs {needed} devices but {platform} has {available}; {fix}")]
    NotEnoughDevices {
        what: String,
        needed: usize,
        available: usize,
        platform: String,
        fix: String,
    },

    /// A shape or dtype error while building a graph: names the op and the operand types.
    #[error("{op}: {message}")]
    Shape { op: String, message: String },

    /// An op has no derivative rule for the requested input.
    #[error("no derivative rule for `{op}`{detail}")]
    NoDerivative { op: String, detail: String },

    /// A host array whose data does not match its shape and dtype, or a wrong conversion.
    #[error("array: {0}")]
    Array(String),

    /// Training diverged: the loss stopped being finite.
    #[error("training at step {step}: the loss is {loss}; training stopped, the last good checkpoint is {checkpoint}. Lower the learning rate or check the data")]
    Diverged {
        step: u64,
        loss: f64,
        checkpoint: String,
    },

    /// A worker thread of `basic` itself failed (a bug, not bad input).
    #[error("internal error: {0}")]
    Internal(String),

    /// Any other bad input: names the input and the fix.
    #[error("invalid {what}: {fix}")]
    InvalidArgument { what: String, fix: String },

    /// The multi-process coordinator, one of its processes, or a key-value store failed. `code`
    /// says which kind of failure (the PJRT key-value callbacks report it to the plugin); the
    /// message names the key, barrier, process or address and the fix.
    #[error("{message}")]
    Coordination { code: StatusCode, message: String },

    /// A file could not be read or written. The OS error is part of the message, not a
    /// separate source, so a report of the whole chain says it once.
    #[error("{}: {cause}", .path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
}

/// What kind of failure a [`Error::Coordination`] is: the subset of the status codes of
/// `pjrt_c_api.h` (`PJRT_Error_Code`, after absl) that coordination produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StatusCode {
    /// A request that can never succeed as written (a key too long, an id out of range).
    InvalidArgument,
    /// A wait ran past its deadline.
    DeadlineExceeded,
    /// A key that is not set (try-get).
    NotFound,
    /// A write-once key written again, or a process id taken twice.
    AlreadyExists,
    /// A peer without the job's token.
    PermissionDenied,
    /// The job has failed: a process died, got stuck or reported an error.
    Aborted,
    /// The coordinator cannot be reached, or was lost.
    Unavailable,
    /// A malformed message, or a bug.
    Internal,
}

impl StatusCode {
    /// The `PJRT_Error_Code` value of the 0.81 header.
    pub fn pjrt_code(self) -> i32 {
        match self {
            StatusCode::InvalidArgument => 3,
            StatusCode::DeadlineExceeded => 4,
            StatusCode::NotFound => 5,
            StatusCode::AlreadyExists => 6,
            StatusCode::PermissionDenied => 7,
            StatusCode::Aborted => 10,
            StatusCode::Internal => 13,
            StatusCode::Unavailable => 14,
        }
    }

    /// The absl name, e.g. `DEADLINE_EXCEEDED`.
    pub fn name(self) -> &'static str {
        match self {
            StatusCode::InvalidArgument => "INVALID_ARGUMENT",
            StatusCode::DeadlineExceeded => "DEADLINE_EXCEEDED",
            StatusCode::NotFound => "NOT_FOUND",
            StatusCode::AlreadyExists => "ALREADY_EXISTS",
            StatusCode::PermissionDenied => "PERMISSION_DENIED",
            StatusCode::Aborted => "ABORTED",
            StatusCode::Internal => "INTERNAL",
            StatusCode::Unavailable => "UNAVAILABLE",
        }
    }
}

impl std::fmt::Display for StatusCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Error {
    /// A coordination failure of kind `code`; `message` names the thing and the fix.
    pub fn coord(code: StatusCode, message: impl Into<String>) -> Error {
        Error::Coordination {
            code,
            message: message.into(),
        }
    }

    /// The status code of a coordination error; `None` for every other kind.
    pub fn status_code(&self) -> Option<StatusCode> {
        match self {
            Error::Coordination { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Bad input: `what` names it (with its value), `fix` says what to do instead.
    pub fn invalid(what: impl Into<String>, fix: impl Into<String>) -> Error {
        Error::InvalidArgument {
            what: what.into(),
            fix: fix.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            cause: source,
        }
    }
}

/// Shorthand for a shape error.
pub(crate) fn shape_err<T>(op: &str, message: impl Into<String>) -> Result<T> {
    Err(Error::Shape {
        op: op.to_string(),
        message: message.into(),
    })
}
