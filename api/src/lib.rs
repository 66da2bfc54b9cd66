//! The messages of `cairn serve`'s HTTPS API (docs/api.md) that the server and its clients
//! (`cairn-remote`) both speak: the request and answer bodies, the roles of tokens, and the
//! limits and record statuses of the binary endpoints. A client links these, not the server.

use cairn_store::RecoveryPoint;
use serde::{Deserialize, Serialize};

/// Ids a lookup or a read may name at once.
pub const MAX_IDS: usize = 4096;
/// Chunks one read returns at once.
pub const MAX_READ: usize = 64;

/// Record status of a chunk read: the frame follows.
pub const READ_OK: u8 = 0;
/// Record status of a chunk read: a length (u32, big-endian) and a message follow.
pub const READ_FAILED: u8 = 1;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Append only: new points of its VMs.
    Backup,
    /// Read only: its VMs' points and chunks.
    Restore,
    /// Everything.
    Admin,
}

impl Role {
    /// Parses `backup`, `restore` or `admin`.
    ///
    /// # Errors
    /// Any other word, said.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "backup" => Ok(Self::Backup),
            "restore" => Ok(Self::Restore),
            "admin" => Ok(Self::Admin),
            _ => Err(format!("role {s:?}: expected backup, restore or admin")),
        }
    }

    /// The role's name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Backup => "backup",
            Self::Restore => "restore",
            Self::Admin => "admin",
        }
    }
}

/// `GET /api/v1/store`.
#[derive(Debug, Serialize, Deserialize)]
pub struct StoreInfo {
    /// The store's configuration.
    pub config: cairn_store::StoreConfig,
    /// The server's version.
    pub server: String,
    /// The name of the token used, and its role.
    pub token: String,
    /// Its role.
    pub role: Role,
}

/// `POST /api/v1/sessions`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenSession {
    /// The VM.
    pub vm: String,
    /// Its UUID, when the backup gives one (a policy set for it wins over one for the name).
    #[serde(default)]
    pub vm_uuid: Option<String>,
    /// The disks this session will commit points of.
    pub disks: Vec<String>,
    /// Its points may take a VM identity (UUID within a pool) that another VM name owns: the
    /// VM was renamed (an admin token only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopt: bool,
}

/// The answer to [`OpenSession`].
#[derive(Debug, Serialize, Deserialize)]
pub struct SessionOpened {
    /// The session's id.
    pub session: String,
    /// The VM's policy: every N-th backup of each disk is a key backup (0: never forced).
    #[serde(default)]
    pub key_interval: u32,
}

/// The answer to `POST /api/v1/sessions/{id}/chunks`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Uploaded {
    /// Chunks in the body.
    pub received: u64,
    /// Of them, appended (the others the store or the session held already).
    pub stored: u64,
}

/// `POST /api/v1/sessions/{id}/commit`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Commit {
    /// The points, as the client staged them (the server sets their commit time).
    pub points: Vec<RecoveryPoint>,
}
