//! Cataloguing the points from their root files (a bucket's first fetched here: they are the
//! truth), and naming the points the old index held that have no root file.

use std::collections::HashSet;
use std::path::Path;

use rocksdb::WriteBatch;

use super::Rebuild;
use crate::catalogue::read_root_file;
use crate::db::sync_write;
use crate::error::Result;
use crate::files::files_under;
use crate::index::{CF_POINTS, to_json};

impl Rebuild<'_> {
    /// Catalogues every readable root file in one synced batch; a point whose root file cannot
    /// be read is left out (the file left in place for a look).
    pub(super) fn catalogue_points(&mut self) -> Result<()> {
        let mut batch = WriteBatch::default();
        let mut catalogued: HashSet<String> = HashSet::new();
        crate::run::abandon_unfinished(self.root)?;
        if let Some(b) = &self.bucket {
            crate::bucket::fetch_roots(b.as_ref(), self.root)?;
            crate::bucket::prefetch_trees(b.as_ref(), self.root, std::mem::take(&mut self.trees))?;
        }
        for path in files_under(&self.root.join("points"), "json")? {
            let p = match read_root_file(&path) {
                Ok(p) => p,
                Err(e) => {
                    self.report
                        .problems
                        .push(format!("{e}: the point is left out of the index"));
                    self.report.points_left_out += 1;
                    continue;
                }
            };
            let entry = to_json(&p, "a catalogue entry")?;
            if catalogued.contains(p.id.as_str()) {
                // Two root files of one point: the entry the batch holds is written first, so
                // that the second takes its places in the orders out.
                self.db
                    .write(std::mem::take(&mut batch))
                    .map_err(self.err())?;
            }
            crate::orders::put_entry(&self.db, &mut batch, &p, &entry)?;
            catalogued.insert(p.id.to_string());
            self.report.points += 1;
        }
        if let Some(aside) = &self.old_index {
            self.report.problems.extend(lost_roots(aside, &catalogued));
        }
        crate::orders::mark_built(&self.db, &mut batch)?;
        self.db
            .write_opt(batch, &sync_write())
            .map_err(self.err())?;
        Ok(())
    }
}

/// The points the old index catalogued that have no root file (deleted or lost by hand): the
/// rebuilt index does not hold them, and the admin is told which, with what the old index says
/// of them (a copy of the root file, or of the old index's entry, brings one back). Nothing when
/// the old index cannot be read (that is often why it is rebuilt).
fn lost_roots(aside: &Path, catalogued: &HashSet<String>) -> Vec<String> {
    let Some(db) = crate::index::open_as_it_is(aside) else {
        return Vec::new();
    };
    let Some(points) = db.cf_handle(CF_POINTS) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (k, v) in db
        .iterator_cf(points, rocksdb::IteratorMode::Start)
        .flatten()
    {
        let id = hex::encode(&k);
        if catalogued.contains(&id) {
            continue;
        }
        let what = serde_json::from_slice::<crate::RecoveryPoint>(&v)
            .map(|p| {
                format!(
                    " ({}/{} {}, root file {})",
                    p.vm,
                    p.disk,
                    p.time.to_rfc3339(),
                    p.root_file()
                )
            })
            .unwrap_or_default();
        out.push(format!(
            "point {id}{what} was in the old index but has no root file: it is not in the \
             rebuilt index (its entry stays in {}; put its root file back and repair again to \
             bring it back)",
            aside.display()
        ));
    }
    out
}
