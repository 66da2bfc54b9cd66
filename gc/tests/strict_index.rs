//! One malformed index value never reads as a default: a `packs` entry that does not parse
//! must stop garbage collection (else its pack looks unindexed and is deleted as an orphan), a
//! `chunks` entry must not read as "not stored", a reference count must not read as 0. Each is
//! damaged by hand in the RocksDB index; the store must refuse with an error naming the entry,
//! and no pack file may disappear.

use std::path::{Path, PathBuf};

use cairn_gc::{GcOptions, VerifyOptions, collect, verify};
use cairn_store::chunk::{ChunkKind, encode};
use cairn_store::index::{CF_CHUNKS, CF_PACKS, CF_REFS, COLUMN_FAMILIES};
use cairn_store::{BackupStats, ChunkRef, Error, NewPoint, OpenMode, SourceInfo, Store};

/// A store with one point of four chunks, and the ids of those chunks.
fn store_with_a_point(root: &Path) -> Vec<cairn_store::ChunkId> {
    Store::init(root, 64 << 10).expect("init");
    let store = Store::open(root, OpenMode::Write { wait: false }).expect("open");
    let mut s = store.session().expect("session");
    let mut refs = Vec::new();
    for seed in 1..=4u8 {
        let data: Vec<u8> = (0..65536u32).map(|i| (i as u8) ^ seed).collect();
        let c = encode(&cairn_store::Keys::Clear, &data, ChunkKind::Data, 1).expect("encode");
        s.put(&c).expect("put");
        refs.push(ChunkRef::Data(c.id));
    }
    let point = NewPoint {
        vm: "vm".into(),
        disk: "xvda".into(),
        time: chrono::Utc::now(),
        size: 4 * 65536,
        source: SourceInfo {
            kind: cairn_store::SourceKind::Raw,
            vhd_uuid: None,
            path: "test".into(),
        },
        parent: None,
        stats: BackupStats::default(),
        run: None,
        labels: Default::default(),
    };
    s.commit(point, &refs).expect("commit");
    refs.iter()
        .filter_map(|r| match r {
            ChunkRef::Data(id) => Some(*id),
            ChunkRef::Zero => None,
        })
        .collect()
}

/// Overwrites the value of the first key of `family` (or of `key`) with `value`.
fn damage(root: &Path, family: &str, key: Option<&[u8]>, value: &[u8]) -> Vec<u8> {
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(false);
    let db = rocksdb::DB::open_cf(&opts, root.join("index"), COLUMN_FAMILIES).expect("open index");
    let cf = db.cf_handle(family).expect("family");
    let key = match key {
        Some(k) => k.to_vec(),
        None => {
            let mut it = db.iterator_cf(cf, rocksdb::IteratorMode::Start);
            it.next().expect("an entry").expect("read").0.to_vec()
        }
    };
    db.put_cf(cf, &key, value).expect("put");
    key
}

fn pack_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.join("packs")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

fn is_corrupt(e: &dyn std::fmt::Display, family: &str) -> bool {
    let text = e.to_string();
    text.contains(&format!("{family} entry")) && text.contains("rebuild-index")
}

#[test]
fn a_malformed_pack_entry_stops_gc_and_deletes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("s");
    store_with_a_point(&root);
    let packs = pack_files(&root);
    assert!(!packs.is_empty());
    damage(&root, CF_PACKS, None, b"{not json");
    let store = Store::open(&root, OpenMode::Read).expect("open");
    let err = store
        .pack_infos()
        .expect_err("a malformed pack entry must not be skipped");
    assert!(matches!(err, Error::CorruptIndex { .. }), "{err}");
    drop(store);
    let opts = GcOptions {
        dry_run: false,
        repack: cairn_gc::Repack::Below(1.0),
        ..GcOptions::default()
    };
    let err = collect(&root, &opts, &|_| {}).expect_err("gc must stop");
    assert!(is_corrupt(&err, "packs"), "{err}");
    assert_eq!(pack_files(&root), packs, "gc deleted a pack");
}

#[test]
fn a_malformed_location_is_an_error_not_a_missing_chunk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("s");
    let ids = store_with_a_point(&root);
    damage(&root, CF_CHUNKS, Some(&ids[1].0), &[1, 2, 3]);
    let store = Store::open(&root, OpenMode::Read).expect("open");
    let err = store.location(&ids[1]).expect_err("malformed location");
    assert!(is_corrupt(&err, "chunks"), "{err}");
    let err = store.locations(&ids).expect_err("malformed location");
    assert!(is_corrupt(&err, "chunks"), "{err}");
    drop(store);
    // verify reports it (a failure, not a clean run).
    let err = verify(&root, &VerifyOptions::default(), &|_, _| {}).map(|r| r.clean());
    assert!(
        !matches!(err, Ok(true)),
        "verify called a damaged index clean"
    );
    // A writer refuses to dedup against it: a backup must not treat the chunk as absent.
    let store = Store::open(&root, OpenMode::Write { wait: false }).expect("open");
    let data: Vec<u8> = (0..65536u32).map(|i| (i as u8) ^ 2).collect();
    let c = encode(&cairn_store::Keys::Clear, &data, ChunkKind::Data, 1).expect("encode");
    assert_eq!(c.id, ids[1]);
    let mut s = store.session().expect("session");
    let err = s
        .put(&c)
        .expect_err("a malformed location read as not stored");
    assert!(is_corrupt(&err, "chunks"), "{err}");
}

#[test]
fn a_malformed_reference_count_is_an_error_not_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("s");
    let ids = store_with_a_point(&root);
    let packs = pack_files(&root);
    damage(&root, CF_REFS, Some(&ids[0].0), &[0, 1]);
    let store = Store::open(&root, OpenMode::Read).expect("open");
    let err = store.refcounts(&ids).expect_err("malformed count");
    assert!(is_corrupt(&err, "refs"), "{err}");
    drop(store);
    let opts = GcOptions {
        dry_run: false,
        repack: cairn_gc::Repack::Below(1.0),
        ..GcOptions::default()
    };
    // Nothing is garbage yet; a gc that reads counts must not take the damaged one as 0.
    let _ = collect(&root, &opts, &|_| {});
    assert_eq!(pack_files(&root), packs, "gc deleted a pack");
    let store = Store::open(&root, OpenMode::Read).expect("open");
    let err = store.refcounts(&ids).expect_err("a malformed count");
    assert!(is_corrupt(&err, "refs"), "{err}");
}
