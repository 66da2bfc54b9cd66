//! The store through its API: sessions, commits, dedup, crash leftovers, index rebuild.

mod common;

use cairn_store::chunk::{ChunkKind, encode};
use cairn_store::{ChunkRef, Error, NewPoint, OpenMode, Store};

fn new_point(vm: &str, size: u64) -> NewPoint {
    common::raw_point(vm, "xvda", chrono::Utc::now(), size)
}

fn chunk(seed: u8) -> Vec<u8> {
    (0..65536u32)
        .map(|i| (i as u8).wrapping_mul(seed) ^ seed)
        .collect()
}

fn pack_count(root: &std::path::Path) -> usize {
    walk(&root.join("packs"))
}

fn walk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |rd| {
        rd.flatten()
            .map(|e| {
                if e.path().is_dir() {
                    walk(&e.path())
                } else {
                    1
                }
            })
            .sum()
    })
}

#[test]
fn commit_publishes_and_dedups_and_a_dropped_session_leaves_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("s");
    Store::init(&root, 64 << 10).expect("init");
    let store = Store::open(&root, OpenMode::Write { wait: false }).expect("open");
    let mut s = store.session().expect("session");
    let (a, b) = (
        encode(&cairn_store::Keys::Clear, &chunk(3), ChunkKind::Data, 3).expect("encode"),
        encode(&cairn_store::Keys::Clear, &chunk(5), ChunkKind::Data, 3).expect("encode"),
    );
    assert!(s.put(&a).expect("put"));
    assert!(
        !s.put(&a).expect("put again"),
        "a chunk is stored once per session"
    );
    assert!(s.put(&b).expect("put"));
    let refs = [
        ChunkRef::Data(a.id),
        ChunkRef::Zero,
        ChunkRef::Data(b.id),
        ChunkRef::Data(a.id),
    ];
    let p = s
        .commit(new_point("vm1", 4 * 65536), &refs)
        .expect("commit");
    assert_eq!(store.chunk_refs(&p).expect("refs"), refs);
    assert_eq!(store.read_chunk(&a.id).expect("read"), chunk(3));
    let packs = pack_count(&root);

    // A second session that only puts known chunks writes nothing new.
    let mut s = store.session().expect("session");
    assert!(!s.put(&a).expect("put"));
    // A dropped (failed) session removes what it wrote.
    let c = encode(&cairn_store::Keys::Clear, &chunk(7), ChunkKind::Data, 3).expect("encode");
    assert!(s.put(&c).expect("put"));
    drop(s);
    assert_eq!(
        pack_count(&root),
        packs,
        "a failed session leaves no pack behind"
    );
    assert!(store.location(&c.id).expect("lookup").is_none());

    // Refs that do not cover the disk are refused.
    let s = store.session().expect("session");
    let e = s
        .commit(new_point("vm1", 5 * 65536), &refs)
        .expect_err("refs short of the disk");
    assert!(matches!(e, Error::Usage(_)), "{e:?}");
    assert!(
        e.to_string().contains("4 refs for a disk of 327680 bytes"),
        "{e}"
    );
    // Bad names are refused.
    let s = store.session().expect("session");
    let e = s
        .commit(new_point("x\ny", 4 * 65536), &refs)
        .expect_err("a bad name");
    assert!(matches!(e, Error::Usage(_)), "{e:?}");
    assert!(e.to_string().contains("must be 1 to 128 printable"), "{e}");

    // A second writer is refused while the first holds the lock; a reader is not.
    let err = Store::open(&root, OpenMode::Write { wait: false }).expect_err("locked");
    assert!(err.to_string().contains("locked"), "{err}");
    drop(store);
    let reader = Store::open(&root, OpenMode::Read).expect("reader");
    assert_eq!(reader.points().expect("points").len(), 1);
    assert_eq!(reader.resolve("vm1/xvda@latest").expect("latest").id, p.id);
    assert_eq!(reader.resolve(&p.id[..8]).expect("prefix").id, p.id);
    drop(reader);

    // Rebuilding the index from the packs and root files gives the same catalogue.
    std::fs::remove_dir_all(root.join("index")).expect("rm index");
    let report = Store::rebuild_index(&root, false).expect("rebuild");
    assert_eq!(report.points, 1);
    let store = Store::open(&root, OpenMode::Read).expect("open");
    assert_eq!(
        store
            .chunk_refs(&store.resolve(&p.id).expect("point"))
            .expect("refs"),
        refs
    );
}

#[test]
fn chunk_sizes_outside_the_range_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    for bad in [0, 1000, 32 << 10, 4 << 20, (256 << 10) + 1] {
        let e = Store::init(&dir.path().join(format!("s{bad}")), bad).expect_err("refused");
        assert!(
            matches!(&e, Error::Usage(m) if m.contains("is not a power of two from 64 KiB to 2 MiB")),
            "{bad}: {e:?}"
        );
    }
    assert!(Store::init(&dir.path().join("ok"), 2 << 20).is_ok());
    let err = Store::open(&dir.path().join("nothing"), OpenMode::Read).expect_err("not a store");
    assert!(err.to_string().contains("not a cairn store"), "{err}");
}

/// Commits `ids` (as data refs) as one point of `vm`.
fn commit_point(store: &Store, vm: &str, chunks: &[Vec<u8>]) -> cairn_store::RecoveryPoint {
    let mut s = store.session().expect("session");
    let mut refs = Vec::new();
    for c in chunks {
        let e = encode(&cairn_store::Keys::Clear, c, ChunkKind::Data, 1).expect("encode");
        s.put(&e).expect("put");
        refs.push(ChunkRef::Data(e.id));
    }
    s.commit(new_point(vm, refs.len() as u64 * 65536), &refs)
        .expect("commit")
}

#[test]
fn reference_counts_follow_commits_and_forgets_and_a_recount_agrees() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("s");
    Store::init(&root, 64 << 10).expect("init");
    let store = Store::open(&root, OpenMode::Write { wait: false }).expect("open");
    // Two points share chunks 1 and 2; chunk 3 is only in the first, chunk 4 only in the second.
    let p1 = commit_point(&store, "a", &[chunk(1), chunk(2), chunk(3)]);
    let p2 = commit_point(&store, "b", &[chunk(1), chunk(2), chunk(4)]);
    let id = |seed| cairn_store::ChunkId::of(&chunk(seed));
    let counts = |seeds: &[u8]| -> Vec<u64> {
        store
            .refcounts(&seeds.iter().map(|s| id(*s)).collect::<Vec<_>>())
            .expect("counts")
    };
    // Each data chunk is counted once per live segment (one segment per point here).
    assert_eq!(counts(&[1, 2, 3, 4]), [2, 2, 1, 1]);
    assert!(store.garbage().expect("garbage").is_empty());
    // Forgetting the first point: only what it alone held becomes garbage (chunk 3 and its
    // tree segment), and no pack is touched.
    let packs = pack_count(&root);
    let f = store.forget(std::slice::from_ref(&p1)).expect("forget");
    assert_eq!(f.chunks_unreferenced, 2);
    assert_eq!(counts(&[1, 2, 3, 4]), [1, 1, 0, 1]);
    let garbage: Vec<_> = store
        .garbage()
        .expect("garbage")
        .into_iter()
        .map(|g| g.id)
        .collect();
    assert!(
        garbage.contains(&id(3)) && garbage.len() == 2,
        "{garbage:?}"
    );
    assert_eq!(pack_count(&root), packs);
    assert!(!root.join(p1.root_file()).exists());
    assert_eq!(store.points().expect("points").len(), 1);
    // A chunk on the garbage list comes back to life when a new point uses it again.
    let p3 = commit_point(&store, "c", &[chunk(3), chunk(5), chunk(5)]);
    assert_eq!(counts(&[3, 5]), [1, 1]);
    assert!(
        !store
            .garbage()
            .expect("garbage")
            .iter()
            .any(|g| g.id == id(3))
    );
    // Protected points cannot be forgotten.
    let p3 = store.set_protected(&p3, true).expect("protect");
    let e = store
        .forget(std::slice::from_ref(&p3))
        .expect_err("protected");
    assert!(
        matches!(&e, Error::Usage(m) if m.contains("is protected")),
        "{e:?}"
    );
    // A recount from the points gives the same counts and garbage list.
    let before = (
        counts(&[1, 2, 3, 4, 5]),
        store.garbage().expect("garbage").len(),
    );
    store.recount().expect("recount");
    assert_eq!(
        (
            counts(&[1, 2, 3, 4, 5]),
            store.garbage().expect("garbage").len()
        ),
        before
    );
    // Forgetting everything leaves every chunk on the garbage list.
    let p3 = store.set_protected(&p3, false).expect("unprotect");
    store.forget(&[p2, p3]).expect("forget");
    assert_eq!(counts(&[1, 2, 3, 4, 5]), [0, 0, 0, 0, 0]);
    assert_eq!(
        store.garbage().expect("garbage").len(),
        store.chunk_entries().expect("entries").len()
    );
}

/// The points a filter selects, read from the names of each catalogue entry first, are those
/// the filter selects among every point whole: names JSON escapes, UUIDs, pools, hosts, tags.
#[test]
fn points_matching_reads_the_same_points_as_a_filter_over_every_point() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("s");
    Store::init(&root, 64 << 10).expect("init");
    let store = Store::open(&root, OpenMode::Write { wait: false }).expect("open");
    let c = encode(&cairn_store::Keys::Clear, &chunk(7), ChunkKind::Data, 1).expect("encode");
    let names = ["web", "wéb \"quoted\" \\ back", "db/ctl", "mail 2"];
    let mut s = store.session().expect("session");
    s.put(&c).expect("put");
    let mut staged = Vec::new();
    for (i, vm) in names.iter().enumerate() {
        for day in 0..3 {
            let mut p = new_point(vm, 64 << 10);
            p.time = chrono::Utc::now() - chrono::Duration::days(day);
            p.disk = if day == 2 {
                "xvdb".into()
            } else {
                "xvda".into()
            };
            p.labels.vm_uuid = (i % 2 == 0).then(|| format!("uuid-{i}"));
            p.labels.pool = Some(format!("pool-{}", i % 2));
            p.labels.host = (day == 1).then(|| format!("host \"{i}\""));
            p.labels.tags = (0..day).map(|t| format!("tag-{t}")).collect();
            staged.push(s.stage(p, &[ChunkRef::Data(c.id)]).expect("stage"));
        }
    }
    s.commit_run(staged).expect("commit");
    let every = store.points().expect("points");
    assert_eq!(every.len(), 12);
    let mut filters = vec![cairn_store::select::Filter::default()];
    for vm in names
        .iter()
        .map(|n| n.to_string())
        .chain(["uuid-2".into(), "none".into()])
    {
        filters.push(cairn_store::select::Filter {
            vm: Some(vm),
            ..Default::default()
        });
    }
    filters.push(cairn_store::select::Filter {
        disk: Some("xvdb".into()),
        pool: Some("pool-1".into()),
        ..Default::default()
    });
    filters.push(cairn_store::select::Filter {
        host: Some("host \"2\"".into()),
        ..Default::default()
    });
    filters.push(cairn_store::select::Filter {
        tags: vec!["tag-1".into(), "tag-0".into()],
        ..Default::default()
    });
    for f in filters {
        let want: Vec<_> = every.iter().filter(|p| f.matches(p)).cloned().collect();
        let got = store.points_matching(&f).expect("matching");
        assert_eq!(
            got.iter().map(|p| &p.id).collect::<Vec<_>>(),
            want.iter().map(|p| &p.id).collect::<Vec<_>>(),
            "{f:?}"
        );
    }
}
