//! The store's settings beyond its format: per-VM policies (`policies.json`) and the time zone
//! (in `cairn.toml`).

use crate::error::{Error, Result};
use crate::store::{Store, write_atomic};

/// Name of the file of per-VM policies.
pub const POLICIES_FILE: &str = "policies.json";

/// What the store does for one VM's backups.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Policy {
    /// Every N-th backup of each disk is a key backup (a full read of the disk, even when a
    /// differencing VHD is given); 0 never forces one, 1 forces every backup.
    #[serde(default)]
    pub key_interval: u32,
}

impl Store {
    /// Every VM's policy (`STORE/policies.json`).
    ///
    /// # Errors
    /// An unreadable file.
    pub fn policies(&self) -> Result<std::collections::BTreeMap<String, Policy>> {
        let path = self.root.join(POLICIES_FILE);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::Config {
                path,
                what: format!("unreadable policies: {e}"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
            Err(e) => Err(Error::io(&path, "reading")(e)),
        }
    }

    /// Sets a VM's policy (the file is replaced atomically).
    ///
    /// # Errors
    /// I/O errors.
    pub fn set_policy(&self, vm: &str, policy: Policy) -> Result<()> {
        self.require_writer()?;
        crate::point::check_name("VM", vm).map_err(Error::Usage)?;
        let mut all = self.policies()?;
        all.insert(vm.to_owned(), policy);
        let json = serde_json::to_vec_pretty(&all).map_err(|e| Error::Usage(e.to_string()))?;
        write_atomic(&self.root.join(POLICIES_FILE), &json)
    }
}

impl Store {
    /// Sets the store's time zone (an IANA name) in `cairn.toml`. Needs the write lock.
    ///
    /// # Errors
    /// A name that is not a time zone, a store opened read-only, I/O errors.
    pub fn set_timezone(&mut self, name: &str) -> Result<()> {
        self.require_writer()?;
        let tz = crate::config::parse_timezone(name)?;
        let mut config = self.config.clone();
        config.timezone = tz.name().to_owned();
        self.write_config(config)
    }
}
