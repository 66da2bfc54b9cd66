//! `fill-index` fills a real store's index with entries the store then reads as its own.

use cairn_store::{ChunkKind, OpenMode, Store};

#[test]
fn fill_index_indexes_synthetic_chunks_the_store_opens_with() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("store");
    Store::init(&root, 256 << 10).expect("init");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fill-index"))
        .arg(&root)
        .arg("5000")
        .output()
        .expect("run fill-index");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let store = Store::open(&root, OpenMode::Write { wait: false }).expect("open");
    let entries = store.chunk_entries().expect("entries");
    assert_eq!(entries.len(), 5000);
    assert!(entries.iter().all(|(_, l)| l.kind == ChunkKind::Data));
    let ids: Vec<_> = entries.iter().map(|(id, _)| *id).collect();
    assert!(
        store
            .refcounts(&ids)
            .expect("counts")
            .iter()
            .all(|c| *c == 1)
    );
    // A writer still works beside them.
    drop(store.session().expect("session"));
}
