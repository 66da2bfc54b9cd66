//! Property tests: what the writers write, the reader reads back exactly; and no mutation of a
//! valid file makes the reader panic.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use cairn_vhd::{Chain, DiskSpec, ParentSpec, Vhd, write_fixed, write_sparse};
use proptest::prelude::*;
use uuid::Uuid;

const BS: u32 = 4096;

/// A disk of `blocks` blocks of BS where each block is zero, a pattern, or random bytes.
fn disk(blocks: usize, tail_sectors: usize) -> impl Strategy<Value = Vec<u8>> {
    let block = prop_oneof![Just(None), any::<u8>().prop_map(Some),];
    (proptest::collection::vec(block, blocks), any::<u64>()).prop_map(move |(kinds, seed)| {
        let mut data = Vec::new();
        let mut x = seed | 1;
        for k in kinds {
            match k {
                None => data.extend(std::iter::repeat_n(0u8, BS as usize)),
                Some(b) => data.extend((0..BS).map(|i| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    if b % 2 == 0 { b ^ (i as u8) } else { x as u8 }
                })),
            }
        }
        let cut = data.len() - (BS as usize - tail_sectors * 512).min(data.len()) % BS as usize;
        data.truncate(cut.max(512));
        data
    })
}

fn spec(size: u64, uuid: u128) -> DiskSpec {
    DiskSpec {
        size,
        block_size: BS,
        uuid: Uuid::from_u128(uuid),
        timestamp: 1000,
    }
}

fn block_of(data: &[u8], i: u32, buf: &mut [u8]) {
    let start = i as usize * BS as usize;
    let end = (start + BS as usize).min(data.len());
    buf.fill(0);
    buf[..end - start].copy_from_slice(&data[start..end]);
}

fn dynamic_bytes(data: &[u8], uuid: u128) -> Vec<u8> {
    let blocks = data.len().div_ceil(BS as usize);
    let allocated: Vec<bool> = (0..blocks)
        .map(|i| {
            data[i * BS as usize..data.len().min((i + 1) * BS as usize)]
                .iter()
                .any(|&b| b != 0)
        })
        .collect();
    let mut out = Vec::new();
    write_sparse(
        &mut out,
        &spec(data.len() as u64, uuid),
        None,
        &allocated,
        |i, buf| {
            block_of(data, i, buf);
            Ok(())
        },
    )
    .expect("write");
    out
}

fn content(chain: &mut Chain<Cursor<Vec<u8>>>) -> Vec<u8> {
    let mut out = vec![0u8; chain.disk_size() as usize];
    chain.read_at(0, &mut out).expect("read");
    out
}

/// Opens a chain from in-memory files keyed by path.
fn chain_of(files: &[(PathBuf, Vec<u8>)], top: &Path) -> Chain<Cursor<Vec<u8>>> {
    Chain::open(top, |p| {
        files
            .iter()
            .find(|(q, _)| q == p)
            .map(|(_, b)| Cursor::new(b.clone()))
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
    })
    .expect("open chain")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn dynamic_write_then_read_is_identity(data in disk(9, 3)) {
        let bytes = dynamic_bytes(&data, 1);
        let vhd = Vhd::open(Cursor::new(bytes)).expect("open");
        prop_assert!(vhd.warnings().is_empty(), "{:?}", vhd.warnings());
        let mut chain = Chain::single("d.vhd".into(), vhd);
        prop_assert_eq!(content(&mut chain), data);
    }

    #[test]
    fn fixed_write_then_read_is_identity(data in disk(5, 1)) {
        let mut out = Vec::new();
        write_fixed(&mut out, &spec(data.len() as u64, 2), |i, buf| { block_of(&data, i, buf); Ok(()) }).expect("write");
        prop_assert_eq!(out.len(), data.len() + 512);
        let vhd = Vhd::open(Cursor::new(out)).expect("open");
        let mut chain = Chain::single("f.vhd".into(), vhd);
        prop_assert_eq!(content(&mut chain), data);
    }

    #[test]
    fn three_level_chain_reads_the_newest(base in disk(8, 0), mid in disk(8, 0), top in disk(8, 0)) {
        let n = base.len().min(mid.len()).min(top.len());
        let (base, mid, top) = (&base[..n], &mid[..n], &top[..n]);
        let mut files = vec![(PathBuf::from("/v/base.vhd"), dynamic_bytes(base, 10))];
        for (name, parent, uuid, prev, data) in [("mid.vhd", "base.vhd", 11u128, base, mid), ("sub/top.vhd", "../mid.vhd", 12, mid, top)] {
            let differs: Vec<bool> = (0..n.div_ceil(BS as usize)).map(|i| {
                let r = i * BS as usize..n.min((i + 1) * BS as usize);
                prev[r.clone()] != data[r]
            }).collect();
            let parent_spec = ParentSpec { uuid: Uuid::from_u128(uuid - 1), timestamp: 5, relative_path: parent.into(), absolute_path: String::new() };
            let mut out = Vec::new();
            write_sparse(&mut out, &spec(n as u64, uuid), Some(&parent_spec), &differs, |i, buf| { block_of(data, i, buf); Ok(()) }).expect("write");
            files.push((PathBuf::from("/v").join(name), out));
        }
        let mut chain = chain_of(&files, Path::new("/v/sub/top.vhd"));
        prop_assert_eq!(chain.levels().len(), 3);
        prop_assert_eq!(content(&mut chain), top.to_vec());
    }

    #[test]
    fn mutated_files_never_panic(data in disk(4, 0), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8), cut in any::<usize>()) {
        let mut bytes = dynamic_bytes(&data, 3);
        for (at, x) in flips {
            let i = at % bytes.len();
            bytes[i] ^= x | 1;
        }
        if cut % 3 == 0 {
            let keep = cut % bytes.len();
            bytes.truncate(keep);
        }
        if let Ok(vhd) = Vhd::open(Cursor::new(bytes)) {
            let mut chain = Chain::single("m.vhd".into(), vhd);
            let mut buf = vec![0u8; chain.disk_size().min(1 << 20) as usize];
            let _ = chain.read_at(0, &mut buf);
        }
    }
}

#[test]
fn wrong_parent_uuid_is_refused_naming_both() {
    let data = vec![1u8; BS as usize * 2];
    let base = dynamic_bytes(&data, 20);
    let parent = ParentSpec {
        uuid: Uuid::from_u128(999),
        timestamp: 0,
        relative_path: "base.vhd".into(),
        absolute_path: "/v/base.vhd".into(),
    };
    let mut child = Vec::new();
    write_sparse(
        &mut child,
        &spec(data.len() as u64, 21),
        Some(&parent),
        &[true, false],
        |i, buf| {
            block_of(&data, i, buf);
            Ok(())
        },
    )
    .expect("write");
    let files = [
        (PathBuf::from("/v/base.vhd"), base),
        (PathBuf::from("/v/child.vhd"), child),
    ];
    let err = Chain::open(Path::new("/v/child.vhd"), |p| {
        files
            .iter()
            .find(|(q, _)| q == p)
            .map(|(_, b)| Cursor::new(b.clone()))
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
    })
    .expect_err("uuid mismatch");
    let text = err.to_string();
    assert!(
        text.contains("/v/child.vhd") && text.contains("/v/base.vhd"),
        "{text}"
    );
    assert!(text.contains(&Uuid::from_u128(999).to_string()), "{text}");
}

#[test]
fn parent_found_through_locator_when_name_is_wrong() {
    let data = vec![7u8; BS as usize];
    let base = dynamic_bytes(&data, 30);
    let parent = ParentSpec {
        uuid: Uuid::from_u128(30),
        timestamp: 0,
        relative_path: "gone.vhd".into(),
        absolute_path: "/elsewhere/base.vhd".into(),
    };
    let mut child = Vec::new();
    write_sparse(
        &mut child,
        &spec(data.len() as u64, 31),
        Some(&parent),
        &[false],
        |_, _| Ok(()),
    )
    .expect("write");
    let files = [
        (PathBuf::from("/elsewhere/base.vhd"), base),
        (PathBuf::from("/v/child.vhd"), child),
    ];
    let mut chain = chain_of(&files, Path::new("/v/child.vhd"));
    assert_eq!(chain.levels()[1].path, PathBuf::from("/elsewhere/base.vhd"));
    assert_eq!(content(&mut chain), data);
}
