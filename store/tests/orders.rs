//! The catalogue's orders (the timeline and the VM index) against the root files, the truth:
//! after commits, protects, an adoption that renames a VM, forgets, an index rebuild, and for an
//! index written before the orders existed.

mod common;

use std::path::Path;

use cairn_store::chunk::{ChunkKind, encode};
use cairn_store::select::Filter;
use cairn_store::{ChunkRef, NewPoint, OpenMode, RecoveryPoint, Store};

fn new_point(vm: &str, disk: &str, day: i64) -> NewPoint {
    let base: chrono::DateTime<chrono::Utc> = "2026-01-01T01:00:00Z".parse().expect("time");
    common::raw_point(vm, disk, base + chrono::Duration::days(day), 64 << 10)
}

/// Every root file, in the catalogue's order (time, VM, disk, commit time).
fn root_files(root: &Path) -> Vec<RecoveryPoint> {
    fn walk(dir: &Path, out: &mut Vec<RecoveryPoint>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "json") {
                let bytes = std::fs::read(&p).expect("root file");
                out.push(serde_json::from_slice(&bytes).expect("a point"));
            }
        }
    }
    let mut out = Vec::new();
    walk(&root.join("points"), &mut out);
    out.sort_by(|a, b| {
        (a.time, &a.vm, &a.disk, a.committed).cmp(&(b.time, &b.vm, &b.disk, b.committed))
    });
    out
}

fn ids(points: &[RecoveryPoint]) -> Vec<String> {
    points.iter().map(|p| p.id.to_string()).collect()
}

/// The store, as a writer and as a reader, says what the root files say: every point in order
/// (equal whole), and each VM's by name and by UUID.
fn agrees(store: &Store, what: &str) {
    let truth = root_files(store.root());
    assert_eq!(
        store.points().expect("points"),
        truth,
        "{what}: every point"
    );
    let mut names: Vec<String> = truth.iter().map(|p| p.vm.clone()).collect();
    names.extend(truth.iter().filter_map(|p| p.labels.vm_uuid.clone()));
    names.extend(["nobody".to_owned(), "a".to_owned()]);
    for vm in names {
        let f = Filter {
            vm: Some(vm.clone()),
            ..Default::default()
        };
        let want: Vec<RecoveryPoint> = truth.iter().filter(|p| f.matches(p)).cloned().collect();
        assert_eq!(
            ids(&store.points_matching(&f).expect("matching")),
            ids(&want),
            "{what}: --vm {vm}"
        );
        let mut streamed = Vec::new();
        store
            .each_point(&f, &mut |p| {
                streamed.push(p);
                Ok(())
            })
            .expect("each");
        assert_eq!(ids(&streamed), ids(&want), "{what}: each point of {vm}");
    }
    let f = Filter {
        disk: Some("xvdb".into()),
        ..Default::default()
    };
    let want: Vec<RecoveryPoint> = truth.iter().filter(|p| f.matches(p)).cloned().collect();
    assert_eq!(
        ids(&store.points_matching(&f).expect("matching")),
        ids(&want),
        "{what}: --disk"
    );
}

fn reader_agrees(root: &Path, what: &str) {
    let r = Store::open(root, OpenMode::Read).expect("reader");
    assert!(r.warnings().is_empty(), "{what}: {:?}", r.warnings());
    agrees(&r, &format!("{what} (a reader)"));
}

fn populate(store: &Store) {
    let c = encode(
        &cairn_store::Keys::Clear,
        &vec![7u8; 64 << 10],
        ChunkKind::Data,
        1,
    )
    .expect("encode");
    let mut s = store.session().expect("session");
    s.put(&c).expect("put");
    let mut staged = Vec::new();
    // "a" sorts before "ab" and "a b"; a VM named as another's UUID; a name JSON escapes;
    // points at one time; times before 1970.
    for (vm, uuid) in [
        ("a", Some("u-1")),
        ("ab", None),
        ("a b", Some("a")),
        ("wé \"q\"", Some("u-3")),
        ("u-1", None),
    ] {
        // "ab" is adopted into "a b": its history may not share a time with it.
        let days = if vm == "ab" {
            [5, 6, 7]
        } else {
            [-25_000, 0, 1]
        };
        for day in days {
            for disk in ["xvda", "xvdb"] {
                let mut p = new_point(vm, disk, day);
                p.labels.vm_uuid = uuid.map(str::to_owned);
                staged.push(s.stage(p, &[ChunkRef::Data(c.id)]).expect("stage"));
            }
        }
    }
    s.commit_run(staged).expect("commit");
}

#[test]
fn the_orders_follow_every_change_of_the_catalogue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("s");
    Store::init(&root, 64 << 10).expect("init");
    let store = Store::open(&root, OpenMode::Write { wait: false }).expect("open");
    populate(&store);
    agrees(&store, "committed");
    let points = store.points().expect("points");
    store.set_protected(&points[3], true).expect("protect");
    agrees(&store, "protected");
    // "ab" joins the history of "a b": its points take that name and UUID.
    let into = points.iter().find(|p| p.vm == "a b").expect("a b");
    let from = points.iter().find(|p| p.vm == "ab").expect("ab").vm_key();
    store.adopt(&from, into).expect("adopt");
    agrees(&store, "adopted");
    assert!(store.points().expect("points").iter().all(|p| p.vm != "ab"));
    let gone: Vec<RecoveryPoint> = store
        .points()
        .expect("points")
        .into_iter()
        .filter(|p| p.vm == "a" && !p.protected)
        .take(3)
        .collect();
    store.forget(&gone).expect("forget");
    agrees(&store, "forgotten");
    drop(store);
    reader_agrees(&root, "forgotten");

    Store::rebuild_index(&root, false).expect("rebuild");
    reader_agrees(&root, "rebuilt");
}

#[test]
fn an_index_from_before_the_orders_is_read_as_it_is_and_given_them_by_a_writer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("s");
    Store::init(&root, 64 << 10).expect("init");
    let store = Store::open(&root, OpenMode::Write { wait: false }).expect("open");
    populate(&store);
    drop(store);
    // What an older cairn's index is: no timeline, no VM index, no mark.
    {
        let path = root.join("index");
        let cfs = rocksdb::DB::list_cf(&rocksdb::Options::default(), &path).expect("families");
        let mut db = rocksdb::DB::open_cf(&rocksdb::Options::default(), &path, &cfs).expect("db");
        let meta = db.cf_handle("meta").expect("meta");
        db.delete_cf(meta, "orders").expect("unmark");
        db.drop_cf("timeline").expect("drop");
        db.drop_cf("by_vm").expect("drop");
    }
    reader_agrees(&root, "no orders");
    let store = Store::open(&root, OpenMode::Write { wait: false }).expect("writer");
    agrees(&store, "orders built by a writer");
    drop(store);
    reader_agrees(&root, "orders built");

    // A build killed half-way (the mark not written): what it left is cleared and built again.
    {
        let path = root.join("index");
        let cfs = rocksdb::DB::list_cf(&rocksdb::Options::default(), &path).expect("families");
        let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), &path, &cfs).expect("db");
        db.delete_cf(db.cf_handle("meta").expect("meta"), "orders")
            .expect("unmark");
        let by_vm = db.cf_handle("by_vm").expect("by_vm");
        db.put_cf(by_vm, b"nstale\0xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", b"")
            .expect("stale");
    }
    reader_agrees(&root, "half built");
    let store = Store::open(&root, OpenMode::Write { wait: false }).expect("writer");
    agrees(&store, "built again");
}

/// A writer that leaves megabytes in its memtables (a fleet's catalogue) writes them into
/// table files as it closes: no reader's open replays them from the log.
#[test]
fn a_writer_leaves_no_large_log_for_readers_to_replay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("s");
    Store::init(&root, 64 << 10).expect("init");
    let store = Store::open(&root, OpenMode::Write { wait: false }).expect("open");
    let c = encode(
        &cairn_store::Keys::Clear,
        &vec![9u8; 64 << 10],
        ChunkKind::Data,
        1,
    )
    .expect("encode");
    for vm in 0..60 {
        let mut s = store.session().expect("session");
        s.put(&c).expect("put");
        let mut staged = Vec::new();
        for day in 0..100 {
            let mut p = new_point(&format!("vm-{vm:02}"), "xvda", day);
            p.labels.vm_uuid = Some(format!("00000000-0000-0000-0000-0000000000{vm:02}"));
            staged.push(s.stage(p, &[ChunkRef::Data(c.id)]).expect("stage"));
        }
        s.commit_run(staged).expect("commit");
    }
    let logs = |root: &Path| -> u64 {
        std::fs::read_dir(root.join("index"))
            .expect("index")
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
            .map(|e| e.metadata().map_or(0, |m| m.len()))
            .sum()
    };
    assert!(
        logs(&root) > 4 << 20,
        "the test wrote too little: {}",
        logs(&root)
    );
    drop(store);
    assert!(logs(&root) < 1 << 20, "{} bytes of log left", logs(&root));
    let r = Store::open(&root, OpenMode::Read).expect("reader");
    assert_eq!(r.points().expect("points").len(), 6000);
}
