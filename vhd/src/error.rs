//! Errors of the VHD library. Every error says where (absolute file offset) and what was wrong;
//! [`Error::InFile`] adds which file, so a chain's error names the file at fault.

use std::path::PathBuf;

use uuid::Uuid;

/// The structure a cookie, checksum or version belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Structure {
    /// The 512-byte hard disk footer.
    Footer,
    /// The copy of the footer at offset 0 of a sparse disk.
    FooterCopy,
    /// The 1024-byte dynamic disk header.
    Header,
}

impl std::fmt::Display for Structure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Footer => "footer",
            Self::FooterCopy => "footer copy",
            Self::Header => "dynamic disk header",
        })
    }
}

fn show(bytes: &[u8]) -> String {
    bytes
        .iter()
        .flat_map(|b| std::ascii::escape_default(*b))
        .map(char::from)
        .collect()
}

/// What went wrong reading or writing a VHD.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error at an offset.
    #[error("at offset {offset}: {what}: {source}")]
    Io {
        /// Where the read or write started.
        offset: u64,
        /// What was being read or written.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file of a chain could not be opened.
    #[error("cannot open: {source}")]
    Open {
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A structure does not start with its cookie.
    #[error(
        "at offset {offset}: {structure} cookie is \"{}\", expected \"{}\"",
        show(found),
        show(expected)
    )]
    BadCookie {
        /// Which structure.
        structure: Structure,
        /// Where it starts.
        offset: u64,
        /// The bytes found.
        found: [u8; 8],
        /// The cookie expected.
        expected: [u8; 8],
    },
    /// A checksum does not match the structure's bytes.
    #[error(
        "at offset {offset}: {structure} checksum is {found:#010x}, the bytes sum to {expected:#010x}"
    )]
    ChecksumMismatch {
        /// Which structure.
        structure: Structure,
        /// Where the checksum field is.
        offset: u64,
        /// The checksum stored.
        found: u32,
        /// The checksum computed.
        expected: u32,
    },
    /// A version this library does not know.
    #[error("at offset {offset}: {structure} version is {found:#010x}, expected {expected:#010x}")]
    UnsupportedVersion {
        /// Which structure.
        structure: Structure,
        /// Where the version field is.
        offset: u64,
        /// The version found.
        found: u32,
        /// The version supported.
        expected: u32,
    },
    /// The file ends before a structure it must hold.
    #[error(
        "at offset {offset}: file is truncated: {what} needs {needed} bytes but the file is {file_len} bytes long"
    )]
    Truncated {
        /// Where the missing structure starts.
        offset: u64,
        /// What is missing.
        what: String,
        /// Bytes needed from `offset`.
        needed: u64,
        /// Length of the file.
        file_len: u64,
    },
    /// A field holds a value that is not allowed.
    #[error("at offset {offset}: {what}")]
    Invalid {
        /// Where the field is.
        offset: u64,
        /// What is wrong, with found and expected values.
        what: String,
    },
    /// A differencing disk's header names a parent UUID that is not its parent's.
    #[error(
        "at offset {offset}: parent UUID is {expected}, but the parent file {} has UUID {found}",
        parent.display()
    )]
    ParentUuidMismatch {
        /// Offset of the parent UUID field in the child.
        offset: u64,
        /// The parent file that was found.
        parent: PathBuf,
        /// The UUID the parent has.
        found: Uuid,
        /// The UUID the child names.
        expected: Uuid,
    },
    /// No parent file could be found for a differencing disk.
    #[error("parent \"{name}\" not found (looked for: {})", tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    ParentNotFound {
        /// The parent unicode name of the header.
        name: String,
        /// Every path tried.
        tried: Vec<PathBuf>,
    },
    /// A chain is deeper than [`crate::MAX_CHAIN_DEPTH`] or loops.
    #[error("chain has more than {0} levels (a loop of parent names?)")]
    ChainTooDeep(usize),
    /// A request outside what the API allows (a block index past the end, a wrong buffer size).
    #[error("{0}")]
    Usage(String),
    /// An error in one file of a chain, or in a named file.
    #[error("{}: {source}", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: Box<Error>,
    },
}

impl Error {
    /// Wraps this error with the file it happened in (once: an error already naming a file is
    /// returned as it is).
    #[must_use]
    pub fn in_file(self, path: impl Into<PathBuf>) -> Self {
        match self {
            Self::InFile { .. } => self,
            other => Self::InFile {
                path: path.into(),
                source: Box::new(other),
            },
        }
    }

    /// The same error said of the footer copy at offset 0 (a footer's cookie or checksum).
    #[must_use]
    pub(crate) fn of_footer_copy(self) -> Self {
        match self {
            Self::BadCookie {
                offset,
                found,
                expected,
                ..
            } => Self::BadCookie {
                structure: Structure::FooterCopy,
                offset,
                found,
                expected,
            },
            Self::ChecksumMismatch {
                offset,
                found,
                expected,
                ..
            } => Self::ChecksumMismatch {
                structure: Structure::FooterCopy,
                offset,
                found,
                expected,
            },
            other => other,
        }
    }

    pub(crate) fn io(offset: u64, what: &'static str) -> impl FnOnce(std::io::Error) -> Self {
        move |source| Self::Io {
            offset,
            what,
            source,
        }
    }
}

/// Result of the VHD library.
pub type Result<T, E = Error> = std::result::Result<T, E>;
