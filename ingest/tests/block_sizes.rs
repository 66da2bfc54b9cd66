//! Every VHD block size against every chunk size: a dynamic VHD and a differencing VHD with
//! partial sector bitmaps over it, backed up from a file, from a stream, from a stream whose
//! blocks are out of BAT order (spooled) and, for the delta, as a key backup through its parent
//! file, must store exactly the disk's content, and every way must give the same reference list.
//!
//! Each block of the base is unallocated, allocated and zero, allocated with data, or allocated
//! with one sector of data; each block of the delta is absent, whole, or partial (random bitmap
//! bits, the sectors it does not hold filled with a marker that must never reach the store).

use std::io::Cursor;
use std::path::{Path, PathBuf};

use cairn_ingest::{Format, KeyMode, Request};
use cairn_store::{ChunkRef, OpenMode, RecoveryPoint, Store};
use cairn_vhd::format::SECTOR_SIZE;
use cairn_vhd::{DiskSpec, ParentSpec, Vhd, write_sparse};
use proptest::prelude::*;
use uuid::Uuid;

/// Bytes that a delta does not hold: must never be read as content.
const NOT_HELD: u8 = 0xEE;

/// A small deterministic generator (xorshift64*), so a case is described by its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Fills a sector with bytes unique to (`tag`, `sector`), never all zeros.
fn sector_data(tag: u64, sector: u64, out: &mut [u8]) {
    for (k, w) in out.chunks_mut(8).enumerate() {
        let v = (tag << 48) ^ (sector << 9) ^ k as u64 ^ 0x0101_0101_0101_0101;
        w.copy_from_slice(&v.to_le_bytes()[..w.len()]);
    }
}

/// A sparse VHD described block by block.
struct Sparse {
    size: u64,
    bs: u64,
    /// Per block: `None` unallocated, else the block's data and the sectors the bitmap holds.
    blocks: Vec<Option<(Vec<u8>, Vec<bool>)>>,
}

impl Sparse {
    /// Writes the VHD; blocks go in BAT order, or with the first two allocated ones swapped in
    /// the file when `out_of_order` (a valid file a stream cannot read in one pass).
    fn write(&self, uuid: u128, parent: Option<&ParentSpec>, out_of_order: bool) -> Vec<u8> {
        let spec = DiskSpec {
            size: self.size,
            block_size: self.bs as u32,
            uuid: Uuid::from_u128(uuid),
            timestamp: 1000,
        };
        let allocated: Vec<bool> = self.blocks.iter().map(Option::is_some).collect();
        let mut bytes = Vec::new();
        write_sparse(&mut bytes, &spec, parent, &allocated, |i, buf| {
            if let Some((data, _)) = &self.blocks[i as usize] {
                buf.copy_from_slice(data);
            }
            Ok(())
        })
        .expect("write_sparse");
        let vhd = Vhd::open(Cursor::new(bytes.clone())).expect("reopen");
        let header = vhd.header().expect("sparse").clone();
        let bat = vhd.bat().to_vec();
        let sectors = (self.bs / SECTOR_SIZE) as usize;
        for (i, b) in self.blocks.iter().enumerate() {
            let Some((_, held)) = b else { continue };
            let at = u64::from(bat[i]) as usize * 512;
            for (s, &h) in held.iter().enumerate().take(sectors) {
                if !h {
                    bytes[at + s / 8] &= !(0x80u8 >> (s % 8));
                }
            }
        }
        if out_of_order {
            let alloc: Vec<usize> = (0..bat.len()).filter(|&i| bat[i] != u32::MAX).collect();
            if let [a, b, ..] = alloc[..] {
                let span = (header.bitmap_size() + self.bs) as usize;
                let (pa, pb) = (bat[a] as usize * 512, bat[b] as usize * 512);
                let block_a = bytes[pa..pa + span].to_vec();
                bytes.copy_within(pb..pb + span, pa);
                bytes[pb..pb + span].copy_from_slice(&block_a);
                let t = header.table_offset as usize;
                bytes[t + 4 * a..t + 4 * a + 4].copy_from_slice(&bat[b].to_be_bytes());
                bytes[t + 4 * b..t + 4 * b + 4].copy_from_slice(&bat[a].to_be_bytes());
            }
        }
        bytes
    }
}

/// A base disk: each block unallocated, zero, full of data, or one sector of data.
fn base_disk(rng: &mut Rng, size: u64, bs: u64) -> (Sparse, Vec<u8>) {
    let n = size.div_ceil(bs) as usize;
    let mut content = vec![0u8; size as usize];
    let mut blocks = Vec::with_capacity(n);
    for i in 0..n {
        let start = i as u64 * bs;
        let in_disk = (size - start).min(bs) as usize;
        let mut data = vec![0u8; bs as usize];
        let sectors = in_disk / 512;
        match rng.below(4) {
            0 => {
                blocks.push(None);
                continue;
            }
            1 => {}
            2 => {
                for s in 0..sectors {
                    let sector = start / 512 + s as u64;
                    sector_data(1, sector, &mut data[s * 512..(s + 1) * 512]);
                }
            }
            _ => {
                let s = rng.below(sectors as u64) as usize;
                sector_data(1, start / 512 + s as u64, &mut data[s * 512..(s + 1) * 512]);
            }
        }
        content[start as usize..start as usize + in_disk].copy_from_slice(&data[..in_disk]);
        blocks.push(Some((data, vec![true; bs as usize / 512])));
    }
    (Sparse { size, bs, blocks }, content)
}

/// A delta over `base`: each block absent, whole, or partial (random bitmap bits).
fn delta_disk(rng: &mut Rng, base: &[u8], bs: u64) -> (Sparse, Vec<u8>) {
    let size = base.len() as u64;
    let n = size.div_ceil(bs) as usize;
    let mut content = base.to_vec();
    let mut blocks = Vec::with_capacity(n);
    for i in 0..n {
        let start = i as u64 * bs;
        let in_disk = (size - start).min(bs) as usize;
        let sectors = bs as usize / 512;
        let kind = rng.below(3);
        if kind == 0 {
            blocks.push(None);
            continue;
        }
        let mut data = vec![NOT_HELD; bs as usize];
        let mut held = vec![true; sectors];
        for (s, h) in held.iter_mut().enumerate() {
            if kind == 2 && rng.below(2) == 0 {
                *h = false;
                continue;
            }
            let sector = start / 512 + s as u64;
            if s * 512 < in_disk {
                sector_data(2, sector, &mut data[s * 512..(s + 1) * 512]);
                let at = start as usize + s * 512;
                content[at..at + 512].copy_from_slice(&data[s * 512..(s + 1) * 512]);
            }
        }
        data[in_disk..].fill(0);
        blocks.push(Some((data, held)));
    }
    (Sparse { size, bs, blocks }, content)
}

fn request(root: &Path, source: PathBuf, parent: Option<RecoveryPoint>, key: KeyMode) -> Request {
    Request {
        vm: "vm".into(),
        disk: "xvda".into(),
        time: chrono::Utc::now(),
        source,
        format: Format::Auto,
        parent,
        spool_dir: root.join("tmp"),
        key,
        run: None,
        labels: Default::default(),
        expected_size: None,
        allow_resize: false,
        force: false,
        rewrite_percent: 0,
        nbd_connections: 1,
        changed_blocks: None,
        http: Default::default(),
    }
}

/// The disk a point holds, read back chunk by chunk.
fn stored_content(store: &Store, p: &RecoveryPoint) -> (Vec<ChunkRef>, Vec<u8>) {
    let refs = store.chunk_refs(p).expect("refs");
    let mut out = Vec::with_capacity(p.size as usize);
    for r in &refs {
        let len = (p.size - out.len() as u64).min(u64::from(p.chunk_size)) as usize;
        match r {
            ChunkRef::Zero => out.resize(out.len() + len, 0),
            ChunkRef::Data(id) => {
                let b = store.read_chunk(id).expect("chunk");
                out.extend_from_slice(&b[..len]);
            }
        }
    }
    (refs, out)
}

/// Index of the first differing byte, for a readable failure.
fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or_else(|| (a.len() != b.len()).then(|| a.len().min(b.len())))
}

fn check(store: &Store, p: &RecoveryPoint, want: &[u8], what: &str) -> Vec<ChunkRef> {
    let (refs, got) = stored_content(store, p);
    assert_eq!(
        first_difference(&got, want),
        None,
        "{what}: the stored disk differs from the source"
    );
    refs
}

fn run_case(bs_log: u32, chunk_log: u32, seed: u64) {
    let (bs, chunk) = (1u64 << bs_log, 1u64 << chunk_log);
    let mut rng = Rng(seed | 1);
    let unit = bs.max(chunk);
    // Three units and a tail of a few sectors: chunks and blocks both end part-way.
    let size = 3 * unit + 512 * (1 + rng.below(7));
    let (base, base_content) = base_disk(&mut rng, size, bs);
    let (delta, delta_content) = delta_disk(&mut rng, &base_content, bs);

    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("store");
    Store::init(&root, chunk as u32).expect("init");
    let store = Store::open(&root, OpenMode::Write { wait: false }).expect("open");
    let base_path = dir.path().join("base.vhd");
    let base_bytes = base.write(1, None, false);
    std::fs::write(&base_path, &base_bytes).expect("write base");
    let parent = ParentSpec {
        uuid: Uuid::from_u128(1),
        timestamp: 1000,
        relative_path: "base.vhd".into(),
        absolute_path: String::new(),
    };
    let delta_path = dir.path().join("delta.vhd");
    let delta_bytes = delta.write(2, Some(&parent), false);
    std::fs::write(&delta_path, &delta_bytes).expect("write delta");
    let quiet = |_: u64, _: Option<u64>| {};

    // The base: from the file, from a stream, from a stream that must be spooled.
    let from_file = cairn_ingest::backup(
        &store,
        &request(&root, base_path.clone(), None, KeyMode::No),
        &quiet,
    )
    .expect("base from file");
    let base_refs = check(&store, &from_file, &base_content, "base from file");
    for (what, bytes) in [
        ("base from a stream", base_bytes.clone()),
        ("base from a spooled stream", base.write(1, None, true)),
    ] {
        let p = cairn_ingest::backup_stream(
            &store,
            &request(&root, "-".into(), None, KeyMode::No),
            Box::new(Cursor::new(bytes.clone())),
            &quiet,
        )
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(check(&store, &p, &base_content, what), base_refs, "{what}");
        if what == "base from a stream" {
            assert_eq!(p.stats.bytes_read, bytes.len() as u64, "{what}: one pass");
        }
    }

    // The delta applied to the base point: from the file, a stream, a spooled stream; and a
    // key backup through the parent file.
    let apply = |what: &str, source: PathBuf, input: Option<Vec<u8>>, key: KeyMode| {
        let parent = (key == KeyMode::No).then(|| from_file.clone());
        let req = request(&root, source, parent, key);
        let p = match input {
            Some(bytes) => {
                cairn_ingest::backup_stream(&store, &req, Box::new(Cursor::new(bytes)), &quiet)
            }
            None => cairn_ingest::backup(&store, &req, &quiet),
        }
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        (check(&store, &p, &delta_content, what), p)
    };
    let (delta_refs, p) = apply("delta from file", delta_path.clone(), None, KeyMode::No);
    assert_eq!(p.parent.as_deref(), Some(from_file.id.as_str()));
    assert!(!p.stats.key);
    for (what, bytes) in [
        ("delta from a stream", delta_bytes.clone()),
        (
            "delta from a spooled stream",
            delta.write(2, Some(&parent), true),
        ),
    ] {
        let (refs, _) = apply(what, "-".into(), Some(bytes), KeyMode::No);
        assert_eq!(refs, delta_refs, "{what}");
    }
    let (refs, p) = apply("delta as a key backup", delta_path, None, KeyMode::Forced);
    assert_eq!(refs, delta_refs, "key backup");
    assert!(p.stats.key && p.parent.is_none());
    // Every spooled copy was removed.
    let left = std::fs::read_dir(root.join("tmp")).map_or(0, Iterator::count);
    assert_eq!(left, 0, "spool files left in tmp/");
}

/// The cases the issue reproduced by hand, always run.
#[test]
fn reproduced_cases() {
    // 64 KiB blocks into 256 KiB chunks; 512 KiB blocks into 1 MiB chunks.
    for seed in 1..=3 {
        run_case(16, 18, seed);
        run_case(19, 20, seed);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn every_block_size_against_every_chunk_size(
        bs_log in 9u32..=22,
        chunk_log in 16u32..=21,
        seed in any::<u64>(),
    ) {
        run_case(bs_log, chunk_log, seed);
    }
}
