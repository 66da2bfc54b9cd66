//! Bad-chunk marks: chunks verify found bad or missing, kept in the index until a backup stores
//! them afresh or a later verify reads them well.

use rocksdb::{IteratorMode, WriteBatch};

use crate::chunk::ChunkId;
use crate::error::Result;
use crate::index::{BadMark, CF_BAD, fixed_key, to_json};
use crate::store::Store;

impl Store {
    /// Every chunk marked bad or missing, with why.
    ///
    /// # Errors
    /// Index errors.
    pub fn bad_chunks(&self) -> Result<Vec<(ChunkId, BadMark)>> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_BAD)?, IteratorMode::Start) {
            let (k, v) = item.map_err(self.index_err())?;
            let id = fixed_key::<32>(&k).map_err(self.corrupt(CF_BAD, &k))?;
            let mark = serde_json::from_slice::<BadMark>(&v)
                .map_err(|e| self.corrupt(CF_BAD, &k)(e.to_string()))?;
            out.push((ChunkId(id), mark));
        }
        Ok(out)
    }

    /// Marks chunks bad (`Some`) or clears their mark (`None`), in one synced batch.
    ///
    /// # Errors
    /// Index errors.
    pub fn mark_bad(&self, marks: &[(ChunkId, Option<BadMark>)]) -> Result<()> {
        self.require_writer()?;
        let cf = self.cf(CF_BAD)?;
        let mut batch = WriteBatch::default();
        for (id, mark) in marks {
            match mark {
                Some(m) => batch.put_cf(cf, id.0, to_json(m, "a bad-chunk mark")?),
                None => batch.delete_cf(cf, id.0),
            }
        }
        self.write_synced(batch)
    }
}
