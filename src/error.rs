//! The error type for builders and setup (filesystem operations return `std::io::Error`).

use std::path::PathBuf;

/// Errors from building a backend or starting a device. Operations on a running filesystem
/// report `std::io::Error` with the errno Linux would return instead.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A builder or command-line option has an invalid value.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// A host path could not be used.
    #[error("{path}: {source}")]
    Path {
        /// The path involved.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The host filesystem lacks a feature the backend needs (for example user xattrs).
    #[error("unsupported host filesystem: {0}")]
    Unsupported(String),
    /// Any other I/O failure during setup.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wraps an I/O error with a description of what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// Wraps an I/O error with the host path involved.
    pub fn path(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Path {
            path: path.into(),
            source,
        }
    }
}
