//! The store's settings beyond its format: per-VM policies (`policies.json`) and the time zone
//! (in `cairn.toml`).

use crate::error::{Error, Result};
use crate::files::write_atomic;
use crate::point::{RecoveryPoint, VmKey};
use crate::store::Store;
use std::collections::BTreeMap;

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

/// The key interval that applies to a VM: a policy set for its UUID wins over one set for its
/// name (a renamed VM keeps its policy; two VMs of one name can have their own); 0 when neither
/// has one.
#[must_use]
pub fn key_interval(policies: &BTreeMap<String, Policy>, vm: &str, vm_uuid: Option<&str>) -> u32 {
    vm_uuid
        .and_then(|u| policies.get(u))
        .or_else(|| policies.get(vm))
        .map_or(0, |p| p.key_interval)
}

/// Whether the next backup of `disk` of the VM `vm` must be a key backup under an interval of
/// `n`: every n-th backup of a disk is one, counted from its last key backup (so a disk with
/// none yet gets one now). `points` may hold any points; only that disk's history counts.
#[must_use]
pub fn key_due(points: &[RecoveryPoint], vm: &VmKey, disk: &str, n: u32) -> bool {
    if n == 0 {
        return false;
    }
    let mut mine: Vec<&RecoveryPoint> = points
        .iter()
        .filter(|p| p.disk == disk && &p.vm_key() == vm)
        .collect();
    mine.sort_by_key(|p| (p.time, p.committed));
    match mine.iter().rposition(|p| p.stats.key) {
        None => true,
        Some(i) => (mine.len() - 1 - i) as u64 + 1 >= u64::from(n),
    }
}

impl Store {
    /// Every VM's policy (`STORE/policies.json`).
    ///
    /// # Errors
    /// An unreadable file.
    pub fn policies(&self) -> Result<BTreeMap<String, Policy>> {
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
        let json = serde_json::to_vec_pretty(&all).map_err(|e| Error::Internal(e.to_string()))?;
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

    /// Sets the store's minimum retention (days; 0: none) in `cairn.toml`: no forget, prune or
    /// gc removes a point committed fewer days ago. Needs the write lock, so it is set on the
    /// store's machine with the server stopped; no API request changes it.
    ///
    /// # Errors
    /// More than 36 500 days, a store opened read-only, I/O errors.
    pub fn set_min_retention(&mut self, days: u32) -> Result<()> {
        self.require_writer()?;
        if days > 36_500 {
            return Err(Error::Usage(format!(
                "a minimum retention of {days} days: at most 36500 (a hundred years)"
            )));
        }
        let mut config = self.config.clone();
        config.min_retention_days = days;
        self.write_config(config)
    }

    /// Points committed after this instant are held by the minimum retention (none when the
    /// store has none).
    #[must_use]
    pub fn retention_cutoff(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.config.retention_cutoff(chrono::Utc::now())
    }

    /// When the minimum retention lets `point` go, if it holds it now.
    #[must_use]
    pub fn held_until(
        &self,
        point: &crate::RecoveryPoint,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        crate::claims::held(point.committed, self.retention_cutoff()).then(|| {
            point.committed + chrono::Duration::days(i64::from(self.config.min_retention_days))
        })
    }
}
