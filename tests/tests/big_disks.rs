//! Disks far larger than what they hold: a 2040 GiB VHD (the format's largest) and a 16 TiB
//! sparse raw disk, each holding a few MiB, back up, take a delta and restore bit-exact, and
//! every step reads what the disk holds, not its size (checked by what the points record as
//! read, never by a time).

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use cairn_tests::{TestStore as Store, json, num, ok, run};

const MIB: u64 = 1 << 20;

/// Deterministic bytes for region `k`.
fn pattern(k: u64, len: u64) -> Vec<u8> {
    (0..len)
        .map(|i| ((i.wrapping_mul(2_654_435_761) >> 13) ^ k.wrapping_mul(97)) as u8)
        .collect()
}

/// A sparse file of `size` bytes holding `regions` (offset, length, pattern key).
fn sparse(path: &Path, size: u64, regions: &[(u64, u64, u64)]) {
    let f = File::create(path).expect("create");
    f.set_len(size).expect("set_len");
    for (off, len, k) in regions {
        f.write_all_at(&pattern(*k, *len), *off).expect("write");
    }
}

/// Checks that `got` is `size` bytes holding `regions` and zeros around them (probed at each
/// region's edges and at a few places between), and that it is sparse.
fn check(got: &Path, size: u64, regions: &[(u64, u64, u64)]) {
    let f = File::open(got).expect("open restored");
    let meta = f.metadata().expect("stat");
    assert_eq!(meta.len(), size, "{} has the disk's size", got.display());
    let data: u64 = regions.iter().map(|r| r.1).sum();
    assert!(
        meta.blocks() * 512 < data + 64 * MIB,
        "{} allocates {} bytes for {data} bytes of data: holes were written",
        got.display(),
        meta.blocks() * 512
    );
    for (off, len, k) in regions {
        let mut buf = vec![0u8; *len as usize];
        f.read_exact_at(&mut buf, *off).expect("read");
        assert!(buf == pattern(*k, *len), "region at {off} differs");
        for probe in [off.saturating_sub(4096), off + len] {
            if probe + 4096 <= size
                && !regions
                    .iter()
                    .any(|r| probe < r.0 + r.1 && r.0 < probe + 4096)
            {
                let mut z = vec![1u8; 4096];
                f.read_exact_at(&mut z, probe).expect("read");
                assert!(z.iter().all(|b| *b == 0), "bytes at {probe} are not zeros");
            }
        }
    }
    for probe in [size / 3, size / 2 + 12345 * 512, size - 4096] {
        if !regions
            .iter()
            .any(|r| probe < r.0 + r.1 && r.0 < probe + 4096)
        {
            let mut z = vec![1u8; 4096];
            f.read_exact_at(&mut z, probe).expect("read");
            assert!(z.iter().all(|b| *b == 0), "bytes at {probe} are not zeros");
        }
    }
}

#[test]
fn a_2040_gib_vhd_holding_a_few_mib_backs_up_takes_a_delta_and_restores_bit_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let size = 2040u64 << 30;
    let tib = 1u64 << 40;
    let day0 = [(0, 3 * MIB, 1), (tib, 2 * MIB, 2), (size - MIB, MIB, 3)];
    // Day 1: 1 MiB of the middle region rewritten, 1 MiB written where nothing was.
    let day1 = [
        (0, 3 * MIB, 1),
        (tib, MIB, 2),
        (tib + MIB, MIB, 4),
        (1500 << 30, MIB, 5),
        (size - MIB, MIB, 3),
    ];
    let (raw0, raw1) = (dir.path().join("day0.raw"), dir.path().join("day1.raw"));
    sparse(&raw0, size, &day0);
    sparse(&raw1, size, &day1);
    let (vhd0, vhd1) = cairn_tests::vhd_and_delta(&raw0, &raw1, dir.path());
    let store = Store::new("256K");

    let p0 = store.backup("big", "2026-11-01T02:00:00Z", "xvda", &vhd0, &[]);
    assert_eq!(num(&p0, "size"), size);
    assert!(num(&p0, "bytes_read") <= 8 * MIB, "a full backup read {p0}");
    let p1 = store.backup("big", "2026-11-02T02:00:00Z", "xvda", &vhd1, &[]);
    assert!(
        num(&p1, "bytes_read") <= 8 * MIB,
        "the delta's backup read more than the delta holds: {p1}"
    );
    assert!(num(&p1, "parent_chunks") > 8_000_000, "{p1}");

    let out = dir.path().join("out.raw");
    store.restore("big/xvda@2026-11-01T02:00:00Z", &out, "raw");
    check(&out, size, &day0);
    store.restore("big/xvda@latest", &out, "raw");
    check(&out, size, &day1);

    // The VHD of the point and a chain of both: backed up again they are the same disk, which
    // `cairn diff` shows without reading the shared leaves.
    let vhd = dir.path().join("out.vhd");
    store.restore("big/xvda@latest", &vhd, "vhd");
    assert!(std::fs::metadata(&vhd).expect("vhd").len() < 64 * MIB);
    let again = store.backup("again", "2026-11-02T02:00:00Z", "xvda", &vhd, &[]);
    assert_eq!(num(&again, "new_chunks"), 0, "the same disk: {again}");
    store.restore(&cairn_tests::id(&again), &out, "raw");
    check(&out, size, &day1);
    let chain = dir.path().join("chain");
    ok(store
        .cmd(&["restore", "--format", "vhd-chain", "big/xvda@latest"])
        .arg(&chain));
    let files = std::fs::read_dir(&chain).expect("chain").count();
    assert_eq!(files, 2, "a key VHD and one differencing VHD");
    let changed = json(&ok(&mut store.cmd(&[
        "diff",
        "--json",
        "big/xvda@2026-11-01T02:00:00Z",
        "big/xvda@latest",
    ])));
    assert_eq!(num(&changed, "changed_bytes"), 2 * MIB, "{changed}");
}

#[test]
fn a_16_tib_sparse_raw_disk_round_trips_reading_only_its_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 16 TiB less 1 MiB: ext4 holds files up to 16 TiB less 4 KiB.
    let size = (16u64 << 40) - MIB;
    let regions = [(0, 2 * MIB, 7), (8u64 << 40, MIB, 8), (size - MIB, MIB, 9)];
    let raw = dir.path().join("huge.raw");
    sparse(&raw, size, &regions);
    let store = Store::new("256K");
    let p = store.backup("huge", "2026-11-01T02:00:00Z", "xvda", &raw, &[]);
    assert_eq!(num(&p, "size"), size);
    assert!(num(&p, "bytes_read") <= 8 * MIB, "holes were read: {p}");
    let out = dir.path().join("out.raw");
    store.restore("huge/xvda@latest", &out, "raw");
    check(&out, size, &regions);

    // A VHD cannot hold it: refused, with what to do instead.
    let vhd = dir.path().join("huge.vhd");
    let r = run(store
        .cmd(&["restore", "--format", "vhd", "huge/xvda@latest"])
        .arg(&vhd));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && err.contains("larger than a VHD holds"),
        "{err}"
    );
    assert!(!vhd.exists(), "a refused restore leaves no file");

    ok(&mut store.cmd(&["verify"]));
    ok(&mut store.cmd(&["forget", "huge/xvda@latest"]));
    ok(&mut store.cmd(&["gc"]));
    let left: u64 = store
        .pack_files()
        .iter()
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum();
    assert!(
        left < 64 << 10,
        "{left} bytes of packs left after the only point went"
    );
}

#[test]
fn many_short_writers_leave_the_index_in_few_files() {
    // A store's first year is hundreds of short writers (a backup, a forget, each a second
    // long). Each open writes the log of the last into small new table files, which RocksDB
    // would never merge where their keys do not overlap (the packs', the points'): 80 backups
    // left 246 files of a few kilobytes, all opened by every later open.
    let store = Store::new("64K");
    let work = tempfile::tempdir().expect("tempdir");
    let disk = work.path().join("d.raw");
    for day in 0..80u64 {
        std::fs::write(&disk, pattern(day, 256 << 10)).expect("disk");
        let time = format!("2026-{:02}-{:02}T02:00:00Z", 1 + day / 28, 1 + day % 28);
        store.backup("many", &time, "xvda", &disk, &[]);
    }
    let tables = std::fs::read_dir(store.path().join("index"))
        .expect("index")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".sst"))
        })
        .count();
    assert!(tables < 64, "{tables} table files after 80 backups");
    assert_eq!(store.list().len(), 80);
    // And the store still reads right: the last day restores.
    let out = work.path().join("got.raw");
    store.restore("many/xvda@latest", &out, "raw");
    assert_eq!(
        std::fs::read(&out).expect("restored"),
        pattern(79, 256 << 10)
    );
}
