//! What can go wrong speaking NBD.

use crate::proto;

/// An NBD error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The connection failed (refused, reset, timed out, closed early).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The peer broke the protocol: what was found against what was expected. The connection
    /// cannot be used any more.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The server refused an option of the handshake.
    #[error("the server refused {option}: {} ({code:#x}){}", proto::rep_error_name(*code), with_message(.message))]
    Refused {
        /// The option.
        option: &'static str,
        /// The reply type.
        code: u32,
        /// The server's message, if any.
        message: String,
    },
    /// The server answered a request with an error.
    #[error("the server answered {command} at offset {offset} ({length} bytes) with {}{}", proto::errno_name(*errno), with_message(.message))]
    Request {
        /// The command.
        command: &'static str,
        /// The request's offset, or the offset the server named.
        offset: u64,
        /// The request's length.
        length: u64,
        /// The NBD error value.
        errno: u32,
        /// The server's message, if any.
        message: String,
    },
    /// A request the client refuses to send (past the export's end, unsupported by the server).
    #[error("{0}")]
    Usage(String),
    /// An NBD URI that cannot be read.
    #[error("{uri}: {what}")]
    Uri {
        /// The URI.
        uri: String,
        /// What is wrong with it.
        what: String,
    },
}

fn with_message(m: &str) -> String {
    if m.is_empty() {
        String::new()
    } else {
        format!(": {m}")
    }
}

impl Error {
    /// An I/O error while doing `what`.
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }

    /// Whether the connection is lost or unusable after this error (a retry needs a new one),
    /// as opposed to a request the server refused on a connection that still works.
    #[must_use]
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::Io { .. } | Self::Protocol(_))
    }
}

/// Result of NBD operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
