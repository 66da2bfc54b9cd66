//! The layout policy: a backup that reads a whole disk stores again the chunks it finds in packs
//! the disk's latest point barely uses (within `--rewrite PCT` of its data), their old frames
//! become garbage, and every point still restores bit-exact, before and after gc.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use cairn_tests::{TestStore as Store, assert_same_content, num, ok};

const CHUNK: u64 = 64 << 10;

/// Writes chunk `i` of `disk` with bytes made from `seed`.
fn write_chunk(disk: &Path, i: u64, seed: u64) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(disk)
        .expect("open");
    let bytes: Vec<u8> = (0..CHUNK)
        .map(|k| ((k * 31 + seed * 7919 + i * 131) % 251) as u8)
        .collect();
    f.write_all_at(&bytes, i * CHUNK).expect("write");
}

#[test]
fn a_full_read_stores_again_what_sits_in_packs_its_disk_barely_uses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("disk.raw");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(64 * CHUNK))
        .expect("create");
    for i in 0..64 {
        write_chunk(&disk, i, 1);
    }
    let store = Store::new("64K");
    let mut saved = Vec::new();
    let backup = |saved: &mut Vec<(String, PathBuf)>, day: u32, rewrite: &str| {
        let p = store.backup(
            "vm",
            &format!("2026-11-{:02}T02:00:00Z", day + 1),
            "xvda",
            &disk,
            &["--rewrite", rewrite],
        );
        let copy = dir.path().join(format!("day{day}.raw"));
        std::fs::copy(&disk, &copy).expect("copy");
        saved.push((cairn_tests::id(&p), copy));
        p
    };
    let p0 = backup(&mut saved, 0, "0");
    assert_eq!(num(&p0, "rewritten_chunks"), 0);
    // Day 1 writes chunks 0..8 (its pack holds those 8); day 2 writes 0..6 again, so the
    // latest point uses 2 of day 1's 8 chunks.
    for i in 0..8 {
        write_chunk(&disk, i, 2);
    }
    backup(&mut saved, 1, "0");
    for i in 0..6 {
        write_chunk(&disk, i, 3);
    }
    let p2 = backup(&mut saved, 2, "0");
    assert_eq!(
        num(&p2, "rewritten_chunks"),
        0,
        "--rewrite 0 never rewrites"
    );
    // Day 3 changes one chunk elsewhere; its full read finds chunks 6 and 7 in day 1's pack.
    write_chunk(&disk, 40, 4);
    let p3 = backup(&mut saved, 3, "50");
    assert_eq!(num(&p3, "rewritten_chunks"), 2, "{p3}");

    let check_all = |saved: &[(String, PathBuf)]| {
        for (id, want) in saved {
            let out = dir.path().join("out.raw");
            store.restore(id, &out, "raw");
            assert_same_content(&out, want, true);
        }
    };
    check_all(&saved);
    ok(&mut store.cmd(&["verify"]));
    // gc reclaims the old copies (garbage now), and every point still restores.
    ok(&mut store.cmd(&["gc", "--repack-below", "100"]));
    check_all(&saved);
    ok(&mut store.cmd(&["verify"]));
    // A budget too small for one chunk rewrites nothing.
    write_chunk(&disk, 41, 5);
    let p4 = backup(&mut saved, 4, "1");
    assert_eq!(num(&p4, "rewritten_chunks"), 0, "{p4}");
}
