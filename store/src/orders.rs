//! The catalogue's two orders beside its entries by id, so that what a command shows costs what
//! it shows, not what the store holds:
//!
//! - the **timeline** (`timeline` column family): every point under a key that sorts as the
//!   catalogue lists them (time, VM, disk, commit time, id), its entry as compact JSON: `list`,
//!   `report` and `prune` read the points in order as a stream, nothing sorted in memory;
//! - the **VM index** (`by_vm`): for each point a key under its VM's name and one under its
//!   VM's UUID, each ending with the point's timeline key: the points of one VM are a range,
//!   read without touching another VM's (`list --vm`, the page `/vm/NAME`).
//!
//! Both change in the same batch as the entry they follow ([`put_entry`], [`delete_entry`]),
//! so they agree with the catalogue at every commit. A store whose index predates them gets
//! them built by its first writer ([`Store::build_orders`]); until `meta` says they are built
//! ([`META_ORDERS`]) readers read the catalogue by id as before.

use rocksdb::{DB, IteratorMode, WriteBatch};

use crate::catalogue::point_key;
use crate::error::{Error, Result};
use crate::index::{CF_BY_VM, CF_META, CF_POINTS, CF_TIMELINE, META_ORDERS};
use crate::point::RecoveryPoint;
use crate::select::Filter;
use crate::store::Store;

/// The first byte of a VM index key under the VM's name, and under its UUID.
const BY_NAME: u8 = b'n';
const BY_UUID: u8 = b'u';

/// Entries written in one batch while the orders are built for an older index.
const BUILD_BATCH: usize = 4096;

/// A time as bytes that sort as the time does (seconds with the sign bit flipped, then
/// nanoseconds, both big-endian).
fn time_bytes(t: &chrono::DateTime<chrono::Utc>, out: &mut Vec<u8>) {
    out.extend_from_slice(&((t.timestamp() as u64) ^ (1 << 63)).to_be_bytes());
    out.extend_from_slice(&t.timestamp_subsec_nanos().to_be_bytes());
}

/// The point's timeline key: time, VM, disk, commit time, id (the names end with a zero byte,
/// so `a` sorts before `ab`, as the catalogue sorts them).
#[must_use]
pub fn timeline_key(p: &RecoveryPoint) -> Vec<u8> {
    let mut k = Vec::with_capacity(48 + p.vm.len() + p.disk.len());
    time_bytes(&p.time, &mut k);
    k.extend_from_slice(p.vm.as_bytes());
    k.push(0);
    k.extend_from_slice(p.disk.as_bytes());
    k.push(0);
    time_bytes(&p.committed, &mut k);
    // The id is 32 hex digits in every entry the store writes; anything else sorts last.
    k.extend_from_slice(&point_key(&p.id).unwrap_or([0xff; 16]));
    k
}

/// The prefix of the VM index keys of the VM named (or of UUID) `vm`.
fn vm_prefix(kind: u8, vm: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + vm.len());
    k.push(kind);
    k.extend_from_slice(vm.as_bytes());
    k.push(0);
    k
}

/// The point's VM index keys: under its name, and under its UUID when it has one.
fn vm_keys(p: &RecoveryPoint, timeline: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(2);
    let mut by = |kind, name: &str| {
        let mut k = vm_prefix(kind, name);
        k.extend_from_slice(timeline);
        out.push(k);
    };
    by(BY_NAME, &p.vm);
    if let Some(u) = &p.labels.vm_uuid {
        by(BY_UUID, u);
    }
    out
}

fn family<'d>(db: &'d DB, name: &str) -> Result<&'d rocksdb::ColumnFamily> {
    db.cf_handle(name)
        .ok_or_else(|| Error::Point(format!("column family {name} is missing")))
}

/// Writes `p`'s catalogue entry (`entry`, its root file's bytes) and its places in the orders
/// into `batch`, first taking out those of the entry it replaces (a protect, an adopt that
/// renames the VM).
///
/// # Errors
/// Index errors, an id that is not one.
pub(crate) fn put_entry(
    db: &DB,
    batch: &mut WriteBatch,
    p: &RecoveryPoint,
    entry: &[u8],
) -> Result<()> {
    let key = point_key(&p.id)?;
    let points = family(db, CF_POINTS)?;
    let old = db
        .get_cf(points, key)
        .map_err(|e| Error::Point(format!("{}: reading its catalogue entry: {e}", p.id)))?
        .and_then(|v| serde_json::from_slice::<RecoveryPoint>(&v).ok());
    if let Some(old) = &old {
        delete_orders(db, batch, old)?;
    }
    batch.put_cf(points, key, entry);
    put_orders(db, batch, p)
}

/// Puts `p`'s places in the orders into `batch`.
fn put_orders(db: &DB, batch: &mut WriteBatch, p: &RecoveryPoint) -> Result<()> {
    let timeline = timeline_key(p);
    let compact = serde_json::to_vec(p).map_err(|e| Error::Point(e.to_string()))?;
    batch.put_cf(family(db, CF_TIMELINE)?, &timeline, compact);
    let by_vm = family(db, CF_BY_VM)?;
    for k in vm_keys(p, &timeline) {
        batch.put_cf(by_vm, k, []);
    }
    Ok(())
}

/// Takes `p`'s catalogue entry and its places in the orders out, in `batch`.
///
/// # Errors
/// Index errors, an id that is not one.
pub(crate) fn delete_entry(db: &DB, batch: &mut WriteBatch, p: &RecoveryPoint) -> Result<()> {
    batch.delete_cf(family(db, CF_POINTS)?, point_key(&p.id)?);
    delete_orders(db, batch, p)
}

fn delete_orders(db: &DB, batch: &mut WriteBatch, p: &RecoveryPoint) -> Result<()> {
    let timeline = timeline_key(p);
    let by_vm = family(db, CF_BY_VM)?;
    for k in vm_keys(p, &timeline) {
        batch.delete_cf(by_vm, k);
    }
    batch.delete_cf(family(db, CF_TIMELINE)?, timeline);
    Ok(())
}

/// Marks the orders built, in `batch` (the batch that completes them).
pub(crate) fn mark_built(db: &DB, batch: &mut WriteBatch) -> Result<()> {
    batch.put_cf(family(db, CF_META)?, META_ORDERS, b"1");
    Ok(())
}

fn unreadable(key: &[u8], e: &serde_json::Error) -> Error {
    Error::Point(format!(
        "timeline entry {}: unreadable: {e}",
        hex::encode(key)
    ))
}

impl Store {
    /// Whether the orders cover every catalogued point (an index written by an older cairn has
    /// none until a writer opens it).
    pub(crate) fn orders_ready(&self) -> bool {
        self.db.cf_handle(CF_TIMELINE).is_some()
            && self.db.cf_handle(CF_BY_VM).is_some()
            && self
                .cf(CF_META)
                .ok()
                .and_then(|cf| self.db.get_cf(cf, META_ORDERS).ok().flatten())
                .is_some()
    }

    /// Builds the orders of an index that lacks them, from the catalogue (a writer's open).
    /// What an earlier build killed half-way left is cleared first; the mark comes last.
    ///
    /// # Errors
    /// Index errors, an unreadable catalogue entry.
    pub(crate) fn build_orders(&self) -> Result<()> {
        if self.orders_ready() {
            return Ok(());
        }
        for name in [CF_TIMELINE, CF_BY_VM] {
            let cf = self.cf(name)?;
            let mut batch = WriteBatch::default();
            batch.delete_range_cf(cf, &[][..], &[0xff; 64][..]);
            // Keys longer than 64 bytes of 0xff cannot be: every key starts with a time or a
            // kind byte below 0xff.
            self.db.write(batch).map_err(self.index_err())?;
        }
        let mut batch = WriteBatch::default();
        let mut n = 0usize;
        self.each_entry(&mut |p| {
            put_orders(&self.db, &mut batch, &p)?;
            n += 1;
            if n.is_multiple_of(BUILD_BATCH) {
                self.db
                    .write(std::mem::take(&mut batch))
                    .map_err(self.index_err())?;
            }
            Ok(())
        })?;
        mark_built(&self.db, &mut batch)?;
        self.write_synced(batch)
    }

    /// Calls `f` with each point `filter` selects, oldest first, reading one entry at a time:
    /// memory holds one point whatever the store holds. With `--vm`, only that VM's points are
    /// read (the VM index); else every entry's names are read and the selected parsed whole.
    ///
    /// # Errors
    /// Index errors, an unreadable entry, and what `f` returns.
    pub fn each_point(
        &self,
        filter: &Filter,
        f: &mut dyn FnMut(RecoveryPoint) -> Result<()>,
    ) -> Result<()> {
        if !self.orders_ready() {
            for p in self.points_matching(filter)? {
                f(p)?;
            }
            return Ok(());
        }
        if let Some(vm) = &filter.vm {
            return self.each_point_of_vm(vm, filter, f);
        }
        let cf = self.cf(CF_TIMELINE)?;
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (k, v) = item.map_err(self.index_err())?;
            if !filter.is_empty() {
                let head: crate::PointHead<'_> =
                    serde_json::from_slice(&v).map_err(|e| unreadable(&k, &e))?;
                if !head.passes(filter) {
                    continue;
                }
            }
            f(serde_json::from_slice(&v).map_err(|e| unreadable(&k, &e))?)?;
        }
        Ok(())
    }

    /// The points of the VM named (or of UUID) `vm` that `filter` selects, oldest first: a
    /// range of the VM index and one read of the timeline per point.
    fn each_point_of_vm(
        &self,
        vm: &str,
        filter: &Filter,
        f: &mut dyn FnMut(RecoveryPoint) -> Result<()>,
    ) -> Result<()> {
        let by_vm = self.cf(CF_BY_VM)?;
        let mut keys: Vec<Vec<u8>> = Vec::new();
        for kind in [BY_NAME, BY_UUID] {
            let prefix = vm_prefix(kind, vm);
            let from = IteratorMode::From(&prefix, rocksdb::Direction::Forward);
            for item in self.db.iterator_cf(by_vm, from) {
                let (k, _) = item.map_err(self.index_err())?;
                let Some(timeline) = k.strip_prefix(prefix.as_slice()) else {
                    break;
                };
                keys.push(timeline.to_vec());
            }
        }
        // A VM whose name is another's UUID: each point once, in order.
        keys.sort_unstable();
        keys.dedup();
        let timeline = self.cf(CF_TIMELINE)?;
        for batch in keys.chunks(256) {
            let values = self.db.batched_multi_get_cf(timeline, batch.iter(), true);
            for (k, v) in batch.iter().zip(values) {
                let Some(v) = v.map_err(self.index_err())? else {
                    return Err(Error::Point(format!(
                        "the VM index names timeline entry {} that is not there: rebuild the \
                         index with `cairn repair --rebuild-index`",
                        hex::encode(k)
                    )));
                };
                let p: RecoveryPoint = serde_json::from_slice(&v).map_err(|e| unreadable(k, &e))?;
                if filter.matches(&p) {
                    f(p)?;
                }
            }
        }
        Ok(())
    }

    /// The ids of every catalogued point, from the VM index's keys (small: no entry is read).
    /// `None` when the orders are not built.
    pub(crate) fn catalogued_ids(&self) -> Result<Option<Vec<[u8; 16]>>> {
        if !self.orders_ready() {
            return Ok(None);
        }
        let mut out = Vec::new();
        let from = [BY_NAME];
        let mode = IteratorMode::From(&from, rocksdb::Direction::Forward);
        for item in self.db.iterator_cf(self.cf(CF_BY_VM)?, mode) {
            let (k, _) = item.map_err(self.index_err())?;
            if k.first() != Some(&BY_NAME) {
                break;
            }
            if let Some(id) = k
                .len()
                .checked_sub(16)
                .and_then(|at| k[at..].try_into().ok())
            {
                out.push(id);
            }
        }
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> chrono::DateTime<chrono::Utc> {
        s.parse().expect("time")
    }

    #[test]
    fn time_bytes_sort_as_times_do() {
        let times = [
            "1901-12-13T20:45:52Z",
            "1969-12-31T23:59:59.999999999Z",
            "1970-01-01T00:00:00Z",
            "1970-01-01T00:00:00.000000001Z",
            "2026-12-08T01:00:00Z",
            "2262-04-11T23:47:16Z",
        ];
        let keys: Vec<Vec<u8>> = times
            .iter()
            .map(|t| {
                let mut k = Vec::new();
                time_bytes(&at(t), &mut k);
                k
            })
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
    }
}
