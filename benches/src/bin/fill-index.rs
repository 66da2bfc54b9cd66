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
use std::path::Path;

use cairn_store::index::Location;
use cairn_store::{ChunkId, ChunkKind, Codec, OpenMode, PackId, Store};

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, store, count] = args.as_slice() else {
        return Err("usage: fill-index STORE COUNT".into());
    };
    let count: u64 = count.parse()?;
    let store = Store::open(Path::new(store), OpenMode::Write { wait: false })?;
    let pack = PackId::random();
    let mut batch = Vec::with_capacity(100_000);
    for i in 0..count {
        let loc = Location {
            pack,
            offset: i * 100_000,
            stored_len: 100_000,
            plain_len: 256 << 10,
            codec: Codec::Zstd,
            kind: ChunkKind::Data,
        };
        batch.push((ChunkId(*blake3::hash(&i.to_le_bytes()).as_bytes()), loc));
        if batch.len() >= 100_000 {
            store.index_synthetic(&batch)?;
            batch.clear();
        }
        if i > 0 && i % 5_000_000 == 0 {
            eprintln!("{i} entries");
        }
    }
    store.index_synthetic(&batch)?;
    store.compact_chunk_index()?;
    eprintln!(
        "indexed {count} synthetic chunks in {}",
        store.root().display()
    );
    Ok(())
}
