//! Points' reference trees: built as a stream, read back a leaf at a time, shared between
//! points, counted by what they do not share, and of any depth.

mod common;

use std::collections::HashSet;

use cairn_store::chunk::{ChunkKind, encode};
use cairn_store::tree::{self, SEGMENT_REFS, span};
use cairn_store::{
    Body, ChunkId, ChunkRef, Found, NewPoint, OpenMode, PointLookup, RecoveryPoint, Store, Walk,
};

const CHUNK: u32 = 64 << 10;

fn new_point(vm: &str, chunks: u64) -> NewPoint {
    common::raw_point(vm, "xvda", chrono::Utc::now(), chunks * u64::from(CHUNK))
}

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("s");
    Store::init(&root, CHUNK).expect("init");
    let store = Store::open(&root, OpenMode::Write { wait: false }).expect("open");
    (dir, store)
}

/// Data chunks stored in the session, by seed.
fn data(s: &mut cairn_store::Session<'_>, seed: u32) -> ChunkRef {
    let mut bytes: Vec<u8> = (0..CHUNK)
        .map(|i| (i ^ seed.wrapping_mul(2654435761)) as u8)
        .collect();
    bytes[..4].copy_from_slice(&seed.to_le_bytes());
    let c = encode(&cairn_store::Keys::Clear, &bytes, ChunkKind::Data, 1).expect("encode");
    s.put(&c).expect("put");
    ChunkRef::Data(c.id)
}

/// Every data ref of a point with its index, walking its tree.
fn data_refs(store: &Store, p: &RecoveryPoint) -> Vec<(u64, ChunkRef)> {
    let mut out = Vec::new();
    let mut walk = Walk::new(store, p).expect("walk");
    let mut covered = 0;
    while let Some(x) = walk.next_extent().expect("extent") {
        assert_eq!(x.first, covered, "extents in order, without gaps");
        covered += x.count;
        match x.body {
            Body::Refs(r) => out.extend(
                r.iter()
                    .enumerate()
                    .filter(|(_, r)| **r != ChunkRef::Zero)
                    .map(|(k, r)| (x.first + k as u64, *r)),
            ),
            Body::Zero => {}
            Body::Unreadable(w) => panic!("unreadable: {w}"),
        }
    }
    assert_eq!(covered, p.chunk_count());
    out
}

#[test]
fn trees_of_every_shape_read_back_as_written() {
    let (_d, store) = store();
    let leaves_per_node = tree::FANOUT as u64 * SEGMENT_REFS as u64;
    for n in [1, 255, 256, 257, 255 * 256, 256 * 256, leaves_per_node + 3] {
        let mut s = store.session().expect("session");
        let mut w = s.tree_writer();
        let mut want = Vec::new();
        for i in 0..n {
            // Data every 97th chunk, zeros between, pushed one by one and as runs.
            let r = if i % 97 == 5 {
                data(&mut s, i as u32)
            } else {
                ChunkRef::Zero
            };
            want.push(r);
        }
        let mut i = 0usize;
        while i < want.len() {
            if want[i] == ChunkRef::Zero {
                let run = want[i..]
                    .iter()
                    .take_while(|r| **r == ChunkRef::Zero)
                    .count();
                w.push_zeros(&mut s, run as u64).expect("zeros");
                i += run;
            } else {
                w.push(&mut s, want[i]).expect("push");
                i += 1;
            }
        }
        let staged = s.stage_tree(new_point("vm", n), w).expect("stage");
        let p = s.commit_run(vec![staged]).expect("commit").remove(0);
        let segments = n.div_ceil(SEGMENT_REFS as u64);
        let depth = if segments < 256 {
            0
        } else if segments < 256 * 256 {
            1
        } else {
            2
        };
        assert_eq!(p.depth, depth, "{n} chunks");
        assert!(p.segments.len() < 256, "a root of at most 255 entries");
        assert_eq!(store.chunk_refs(&p).expect("refs"), want, "{n} chunks");
        let got = data_refs(&store, &p);
        let expect: Vec<(u64, ChunkRef)> = want
            .iter()
            .enumerate()
            .filter(|(_, r)| **r != ChunkRef::Zero)
            .map(|(i, r)| (i as u64, *r))
            .collect();
        assert_eq!(got, expect);
        // Random access: every chunk found as written, a subtree of zeros in one step.
        let lookup = PointLookup::new(&p).expect("lookup");
        let mut i = 0u64;
        while i < n {
            match lookup.find(&store, i).expect("find") {
                Found::Ref(r) => {
                    assert_eq!(r, want[i as usize], "chunk {i} of {n}");
                    i += 1;
                }
                Found::Zeros { end } => {
                    assert!(end > i);
                    let stop = end.min(n);
                    assert!(
                        want[i as usize..stop as usize]
                            .iter()
                            .all(|r| *r == ChunkRef::Zero)
                    );
                    i = stop;
                }
            }
        }
    }
}

#[test]
fn a_16_tib_sparse_tree_costs_a_few_chunks_and_walks_by_its_data() {
    let (_d, store) = store();
    // 16 TiB at 256 KiB chunks: 64 M chunks (the store's chunks are 64 KiB here; the count is
    // what matters to the tree).
    let n: u64 = 64 << 20;
    let mut s = store.session().expect("session");
    let mut w = s.tree_writer();
    let spots = [0u64, 1 << 22, (1 << 25) + 7, n - 1];
    let mut at = 0;
    let mut want = Vec::new();
    for (k, spot) in spots.iter().enumerate() {
        w.push_zeros(&mut s, spot - at).expect("zeros");
        let r = data(&mut s, k as u32 + 1);
        w.push(&mut s, r).expect("push");
        want.push((*spot, r));
        at = spot + 1;
    }
    let started = std::time::Instant::now();
    let staged = s.stage_tree(new_point("big", n), w).expect("stage");
    let p = s.commit_run(vec![staged]).expect("commit").remove(0);
    assert_eq!(p.depth, 2);
    assert_eq!(data_refs(&store, &p), want);
    // The tree: one zero leaf and one zero node per level, plus the paths to the four chunks.
    let tree_chunks = store
        .chunk_entries()
        .expect("entries")
        .into_iter()
        .filter(|(_, l)| l.kind == ChunkKind::Tree)
        .count();
    assert!(
        tree_chunks < 20,
        "{tree_chunks} tree chunks for a sparse 16 TiB disk"
    );
    // The walk reads the stretches of zeros as a few extents, not 64 M refs.
    let mut walk = Walk::new(&store, &p).expect("walk");
    let mut extents = 0;
    while walk.next_extent().expect("extent").is_some() {
        extents += 1;
    }
    assert!(extents < 3000, "{extents} extents");
    // Random lookups find the four chunks, and step over the zeros a subtree at a time.
    let lookup = PointLookup::new(&p).expect("lookup");
    let (mut i, mut steps, mut found) = (0u64, 0u64, Vec::new());
    while i < n {
        steps += 1;
        match lookup.find(&store, i).expect("find") {
            Found::Ref(ChunkRef::Zero) => i += 1,
            Found::Ref(r) => {
                found.push((i, r));
                i += 1;
            }
            Found::Zeros { end } => {
                assert!(end > i);
                i = end;
            }
        }
    }
    assert_eq!(found, want);
    assert!(steps < 3000, "{steps} lookups for a sparse 16 TiB disk");
    eprintln!("16 TiB sparse tree: {:?}", started.elapsed());
}

#[test]
fn a_point_taking_its_parents_subtrees_shares_them_and_counts_only_what_it_adds() {
    let (_d, store) = store();
    let n = 3 * span(1) + 10; // three full level-1 nodes and a bit
    let mut s = store.session().expect("session");
    let mut w = s.tree_writer();
    let mut refs = Vec::new();
    for i in 0..n {
        let r = if i % 1000 == 0 {
            data(&mut s, i as u32)
        } else {
            ChunkRef::Zero
        };
        refs.push(r);
        w.push(&mut s, r).expect("push");
    }
    let staged = s.stage_tree(new_point("vm", n), w).expect("stage");
    let a = s.commit_run(vec![staged]).expect("commit").remove(0);
    assert_eq!(a.depth, 1);

    // The child: the parent's first node whole, one chunk changed in the second, the rest
    // whole again.
    let mut s = store.session().expect("session");
    let mut w = s.tree_writer();
    let mut walk = Walk::new(&store, &a).expect("walk");
    let first = walk.peek().expect("peek").expect("entry");
    assert_eq!((first.level, first.count), (1, span(1)));
    w.push_subtree(&mut s, first.id, 1, span(1))
        .expect("subtree");
    let changed = span(1) + 464; // chunk 66000: a data chunk of the parent's
    assert_ne!(refs[changed as usize], ChunkRef::Zero);
    let new = data(&mut s, 999_999);
    for (i, r) in refs
        .iter()
        .enumerate()
        .take(2 * span(1) as usize)
        .skip(span(1) as usize)
    {
        w.push(&mut s, if i as u64 == changed { new } else { *r })
            .expect("push");
    }
    assert!(w.aligned(1));
    walk.skip();
    walk.skip();
    let third = walk.peek().expect("peek").expect("entry");
    w.push_subtree(&mut s, third.id, 1, span(1))
        .expect("subtree");
    let e = w
        .push_subtree(&mut s, third.id, 1, 10)
        .expect_err("a subtree that is not whole is refused");
    assert!(
        e.to_string().contains("is not whole or not at a boundary"),
        "{e:?}"
    );
    for r in &refs[3 * span(1) as usize..] {
        w.push(&mut s, *r).expect("push");
    }
    let staged = s.stage_tree(new_point("vm", n), w).expect("stage");
    let b = s.commit_run(vec![staged]).expect("commit").remove(0);
    let mut want = refs.clone();
    want[changed as usize] = new;
    assert_eq!(store.chunk_refs(&b).expect("refs"), want);
    assert_eq!(a.segments[0], b.segments[0], "the first node is shared");
    assert_ne!(a.segments[1], b.segments[1]);
    assert_eq!(a.segments[2], b.segments[2]);

    // The two differ in one chunk, found without reading the shared nodes.
    let mut diffs = Vec::new();
    tree::differences(&store, &a, &b, false, |x, y| diffs.push((x, y))).expect("diff");
    assert_eq!(diffs, vec![(changed, changed + 1)]);

    // Forgetting the parent frees only what the child does not hold: the parent's second node,
    // its leaf holding `changed`, and the data chunk that was there.
    store.forget(std::slice::from_ref(&a)).expect("forget");
    let garbage: HashSet<ChunkId> = store
        .garbage()
        .expect("garbage")
        .into_iter()
        .map(|g| g.id)
        .collect();
    let a_second = a.segments[1];
    assert!(
        garbage.contains(&a_second),
        "the parent's own node is garbage"
    );
    let ChunkRef::Data(old) = refs[changed as usize] else {
        unreachable!()
    };
    assert!(garbage.contains(&old));
    assert_eq!(
        garbage.len(),
        3,
        "its node, leaf and chunk, nothing else: {garbage:?}"
    );
    assert_eq!(store.chunk_refs(&b).expect("refs"), want);
    // Counting afresh agrees with the counts kept along the way.
    let before = store.garbage().expect("garbage").len();
    store.recount().expect("recount");
    assert_eq!(store.garbage().expect("garbage").len(), before);
}

#[test]
fn leaves_of_format_1_still_read() {
    let refs = [ChunkRef::Zero, ChunkRef::Data(ChunkId::of(b"x"))];
    let bare: Vec<u8> = refs.iter().flat_map(|r| r.to_bytes()).collect();
    assert_eq!(tree::decode_leaf(&bare).expect("v1"), refs);
    assert_eq!(
        tree::decode_leaf(&tree::encode_leaf(&refs)).expect("v2"),
        refs
    );
    let e = tree::decode(&[1, 2, 3]).expect_err("three bytes");
    assert!(e.contains("tree segment of 3 bytes"), "{e}");
    let mut bad = tree::encode_node(1, &[ChunkId::of(b"y")]);
    bad[12] = 9; // says 9 entries
    let e = tree::decode(&bad).expect_err("9 entries said, 1 there");
    assert!(e.contains("says 9 entries but holds 32 bytes"), "{e}");
}
