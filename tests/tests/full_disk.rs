//! Garbage collection on a nearly full disk: it frees whole dead packs before it copies
//! anything, skips the rewrites that do not fit, leaves no partial pack behind, and the store
//! stays writable (a small tmpfs filled with `fallocate`; needs root, as the test machines give).

use std::path::Path;
use std::process::Command;

use cairn_tests::{Tmpfs, cairn, id, json, num, ok, run};

fn random(path: &Path, mib: usize, seed: u8) {
    let mut x = u64::from(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let bytes: Vec<u8> = (0..mib << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(path, bytes).expect("write");
}

fn packs(store: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![store.join("packs")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("packs").flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                n += 1;
            }
        }
    }
    n
}

fn free_bytes(path: &Path) -> u64 {
    let out = Command::new("stat")
        .args(["-f", "-c", "%a %S"])
        .arg(path)
        .output()
        .expect("stat");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text
        .split_whitespace()
        .map(|x| x.parse::<u64>().expect("number"));
    it.next().expect("blocks") * it.next().expect("block size")
}

/// A new store on `fs`.
fn new_store(fs: &Tmpfs) -> std::path::PathBuf {
    let store = fs.path().join("store");
    ok(cairn(["init", "--timezone", "UTC", "--chunk-size", "64K"]).arg(&store));
    store
}

/// `cairn ARGS` on `store`.
fn on(store: &Path, args: &[&str]) -> Command {
    let mut cmd = cairn(args);
    cmd.env("CAIRN_STORE", store);
    cmd
}

#[test]
fn gc_on_a_nearly_full_disk_frees_first_skips_what_does_not_fit_and_leaves_no_partial_pack() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let fs = Tmpfs::mount(&w.join("mnt"), "64m");
    let store = new_store(&fs);
    let c = |args: &[&str]| on(&store, args);
    let (a, b, half) = (w.join("a.raw"), w.join("b.raw"), w.join("c.raw"));
    random(&a, 8, 1);
    random(&b, 8, 2);
    // C keeps A's first half and has a new second half.
    let mut bytes = std::fs::read(&a).expect("read");
    let mut other = vec![0u8; 4 << 20];
    random(&half, 4, 3);
    other.copy_from_slice(&std::fs::read(&half).expect("read"));
    bytes[4 << 20..].copy_from_slice(&other);
    std::fs::write(&half, &bytes).expect("write");
    let backup = |vm: &str, src: &Path| {
        json(&ok(
            c(&["backup", "--json", "--vm", vm]).arg(format!("xvda={}", src.display()))
        ))[0]
            .clone()
    };
    let pa = backup("a", &a);
    let pb = backup("b", &b);
    let pc = backup("c", &half);
    let fill_to = |left: u64| {
        let filler = fs.path().join("filler");
        let _ = std::fs::remove_file(&filler);
        let fill = free_bytes(fs.path()).saturating_sub(left);
        let st = Command::new("fallocate")
            .args(["-l", &fill.to_string()])
            .arg(&filler)
            .status()
            .expect("fallocate");
        assert!(st.success());
        filler
    };
    // A forgotten: its pack is half live (C shares it). With 2 MiB free, its 4 MiB of live
    // chunks do not fit: the rewrite is skipped, nothing partial is left, the store works.
    ok(&mut c(&["forget", &id(&pa)]));
    assert_eq!(packs(&store), 3);
    let filler = fill_to(2 << 20);
    let g = json(&ok(&mut c(&["gc", "--json", "--repack-below", "100"])));
    assert_eq!(num(&g, "rewrites_skipped_for_space"), 1, "{g}");
    assert_eq!(num(&g, "packs_rewritten"), 0, "{g}");
    assert_eq!(packs(&store), 3, "a partial pack was left");
    ok(&mut c(&["protect", &id(&pc)]));
    let out = w.join("out.raw");
    ok(c(&["restore", &id(&pc)]).arg(&out));
    assert_eq!(std::fs::read(&out).expect("read"), bytes);
    std::fs::remove_file(&out).expect("rm");
    // B forgotten too: its pack is wholly dead. gc deletes it first, and then A's rewrite
    // fits in the room that made.
    ok(&mut c(&["forget", &id(&pb)]));
    let _ = fill_to(2 << 20);
    let g = json(&ok(&mut c(&["gc", "--json", "--repack-below", "100"])));
    assert_eq!(num(&g, "packs_deleted"), 1, "{g}");
    assert_eq!(num(&g, "packs_rewritten"), 1, "{g}");
    assert_eq!(num(&g, "rewrites_skipped_for_space"), 0, "{g}");
    assert_eq!(packs(&store), 2);
    std::fs::remove_file(&filler).expect("rm");
    ok(c(&["restore", &id(&pc)]).arg(&out));
    assert_eq!(std::fs::read(&out).expect("read"), bytes);
    let v = run(&mut c(&["verify"]));
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
    drop(fs);
}

#[test]
fn gc_starts_on_a_disk_with_no_room_left_by_giving_up_the_store_reserve() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let fs = Tmpfs::mount(&w.join("mnt"), "96m");
    let store = new_store(&fs);
    let c = |args: &[&str]| on(&store, args);
    let (a, b) = (w.join("a.raw"), w.join("b.raw"));
    random(&a, 8, 4);
    random(&b, 8, 5);
    ok(c(&["backup", "--vm", "a"]).arg(format!("xvda={}", a.display())));
    let pb = json(&ok(
        c(&["backup", "--json", "--vm", "b"]).arg(format!("xvda={}", b.display()))
    ))[0]
        .clone();
    let reserve = store.join("reserve");
    assert!(
        reserve.exists(),
        "no reserve was kept while the disk had room"
    );
    ok(&mut c(&["forget", &id(&pb)]));
    // The disk filled to its last 16 KiB: the index could not even open for writing.
    let filler = fs.path().join("filler");
    let fill = free_bytes(fs.path()).saturating_sub(16 << 10);
    let st = Command::new("fallocate")
        .args(["-l", &fill.to_string()])
        .arg(&filler)
        .status()
        .expect("fallocate");
    assert!(st.success());
    let g = json(&ok(&mut c(&["gc", "--json"])));
    assert_eq!(g["reserve_given_up"], true, "{g}");
    assert_eq!(num(&g, "packs_deleted"), 1, "{g}");
    assert!(!reserve.exists());
    // Room again: the next writer keeps a reserve anew.
    std::fs::remove_file(&filler).expect("rm");
    ok(c(&["backup", "--vm", "b"]).arg(format!("xvda={}", b.display())));
    assert!(reserve.exists(), "the reserve was not made again");
    drop(fs);
}
