//! Fills a cairn store's index with synthetic chunk entries, for the large-index benchmark
//! (`benches/run.sh --only index`): a store of 10 TB holds 40 M chunks, and backing that up to
//! build the index is out of reach of a benchmark run.
//!
//!     fill-index STORE COUNT
//!
//! Each entry is a chunk id no data has (BLAKE3 of a counter), indexed in a pack that does not
//! exist and counted once, as the index of a real store holds them. Nothing reads them: what is
//! measured is how a backup's lookups of new chunks behave beside them (bloom filters, block
//! cache, memory). Do not run it on a store that matters.

use std::error::Error;
use std::path::PathBuf;

use cairn_store::index::{CF_CHUNKS, CF_REFS, COLUMN_FAMILIES, Location};
use cairn_store::{ChunkKind, Codec, PackId};

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, store, count] = args.as_slice() else {
        return Err("usage: fill-index STORE COUNT".into());
    };
    let count: u64 = count.parse()?;
    let path = PathBuf::from(store).join("index");
    let _lock = cairn_store::lock::WriteLock::acquire(std::path::Path::new(store), false)?;
    let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), &path, COLUMN_FAMILIES)?;
    let (chunks, refs) = (
        db.cf_handle(CF_CHUNKS).ok_or("no chunks family")?,
        db.cf_handle(CF_REFS).ok_or("no refs family")?,
    );
    let pack = PackId::random();
    let mut write = rocksdb::WriteOptions::default();
    write.disable_wal(true);
    let mut batch = rocksdb::WriteBatch::default();
    for i in 0..count {
        let id = blake3::hash(&i.to_le_bytes());
        let loc = Location {
            pack,
            offset: i * 100_000,
            stored_len: 100_000,
            plain_len: 256 << 10,
            codec: Codec::Zstd,
            kind: ChunkKind::Data,
        };
        batch.put_cf(chunks, id.as_bytes(), loc.encode());
        batch.put_cf(refs, id.as_bytes(), 1u64.to_be_bytes());
        if batch.len() >= 200_000 {
            db.write_opt(std::mem::take(&mut batch), &write)?;
        }
        if i > 0 && i % 5_000_000 == 0 {
            eprintln!("{i} entries");
        }
    }
    db.write_opt(batch, &write)?;
    db.flush_cf(chunks)?;
    db.flush_cf(refs)?;
    db.compact_range_cf(chunks, None::<&[u8]>, None::<&[u8]>);
    db.compact_range_cf(refs, None::<&[u8]>, None::<&[u8]>);
    eprintln!("indexed {count} synthetic chunks in {}", path.display());
    Ok(())
}
