//! Disks of the shared workload, raw images and VHD chains made by the peer tools, content
//! compared, and chunks damaged by hand.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{TestStore, node, ok, python, shared_dir};
use crate::{cairn, json, peers_dir};

/// `vhdi_to_raw.py` with the libvhdi that setup installed.
pub fn vhdi_to_raw(top: &Path, out: &Path) -> Command {
    let mut c = Command::new(peers_dir().join("venv/bin/python"));
    c.arg(shared_dir().join("peers/vhdi_to_raw.py"))
        .arg(top)
        .arg(out);
    c
}

/// A deterministic raw disk of `size` bytes made by the shared `make_raw.py`.
pub fn make_raw(out: &Path, size: u64, seed: u32) {
    ok(&mut python(
        "make_raw.py",
        [
            out.as_os_str(),
            OsStr::new(&size.to_string()),
            OsStr::new("--seed"),
            OsStr::new(&seed.to_string()),
        ],
    ));
}

/// A deterministic "next day" of `input` made by the shared `modify_raw.py`.
pub fn modify_raw(input: &Path, out: &Path, seed: u32) {
    ok(&mut python(
        "modify_raw.py",
        [
            input.as_os_str(),
            out.as_os_str(),
            OsStr::new("--seed"),
            OsStr::new(&seed.to_string()),
        ],
    ));
}

/// A dynamic VHD of `base` and a differencing VHD of `next` on it, in `dir` (`base.vhd`,
/// `next.vhd`), made by `cairn vhd from-raw`.
pub fn vhd_and_delta(base: &Path, next: &Path, dir: &Path) -> (PathBuf, PathBuf) {
    let (bv, nv) = (dir.join("base.vhd"), dir.join("next.vhd"));
    ok(cairn(["vhd", "from-raw"]).arg(base).arg(&bv));
    ok(cairn(["vhd", "from-raw", "--parent"])
        .arg(&bv)
        .arg(next)
        .arg(&nv));
    (bv, nv)
}

/// Reads a whole file.
#[must_use]
pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Asserts that `got` is `want` followed only by zeros (a VHD rounded up to its CHS size), or
/// exactly `want` when `exact`.
pub fn assert_same_content(got: &Path, want: &Path, exact: bool) {
    let (g, w) = (read(got), read(want));
    if exact {
        assert!(
            g.len() == w.len(),
            "{} is {} bytes, {} is {}",
            got.display(),
            g.len(),
            want.display(),
            w.len()
        );
    }
    assert!(
        g.len() >= w.len(),
        "{} is shorter than {}",
        got.display(),
        want.display()
    );
    if let Some(i) = g.iter().zip(&w).position(|(a, b)| a != b) {
        panic!(
            "{} differs from {} first at byte {i}",
            got.display(),
            want.display()
        );
    }
    assert!(
        g[w.len()..].iter().all(|&b| b == 0),
        "{} has non-zero bytes past {}",
        got.display(),
        w.len()
    );
}

/// Day `day` of VM `seed` cloned from `template`, from the shared workload generator.
pub fn gen_disk(out: &Path, size: &str, seed: u32, template: u32, day: u32) {
    let script = shared_dir().join("workload/gen_disk.py");
    ok(Command::new("python3").arg(script).arg(out).args([
        "--size",
        size,
        "--seed",
        &seed.to_string(),
        "--template",
        &template.to_string(),
        "--day",
        &day.to_string(),
    ]));
}

/// `n` days of VM `seed` (built on `template`) of `size`, from the shared workload: one image
/// each, day 0 first.
#[must_use]
pub fn series(dir: &Path, size: &str, seed: u32, template: u32, n: u32) -> Vec<PathBuf> {
    (0..n)
        .map(|d| {
            let p = dir.join(format!("vm{seed}-t{template}-{size}-day{d}.raw"));
            gen_disk(&p, size, seed, template, d);
            p
        })
        .collect()
}

/// A 16 MiB disk of the shared workload (VM `seed` on template 7, day 0) named `name` in `dir`.
#[must_use]
pub fn small_disk(dir: &Path, name: &str, seed: u32) -> PathBuf {
    let p = dir.join(name);
    gen_disk(&p, "16M", seed, 7, 0);
    p
}

/// A 3-level vhd-lib chain in `dir` written sector by sector (so partially changed blocks get
/// partial bitmaps): `base.vhd` holding `r0`, `delta.vhd` holding `r1`, `delta2.vhd` holding
/// `r2`. Returns what `xo_make_chain.js` reported of the first delta.
pub fn xo_chain3(r0: &Path, r1: &Path, r2: &Path, dir: &Path) -> serde_json::Value {
    let sector = OsStr::new("--granularity=sector");
    let made = ok(&mut node(
        "xo_make_chain.js",
        [r0.as_os_str(), r1.as_os_str(), dir.as_os_str(), sector],
    ));
    let parent = format!("--parent={}", dir.join("delta.vhd").display());
    ok(&mut node(
        "xo_make_chain.js",
        [
            r1.as_os_str(),
            r2.as_os_str(),
            dir.as_os_str(),
            sector,
            OsStr::new(&parent),
            OsStr::new("--name=delta2.vhd"),
        ],
    ));
    json(made.trim())
}

/// Flips one byte inside the payload of the first data frame of the biggest pack of `store`;
/// returns the chunk id (hex) of that frame.
///
/// # Panics
/// A store without a data chunk.
#[must_use]
pub fn corrupt_a_data_chunk(store: &TestStore) -> String {
    let packs = store.pack_files();
    let pack = packs
        .iter()
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a pack");
    corrupt_a_data_chunk_in(pack)
}

/// Flips a byte in the first data chunk of the pack file `pack` and writes the frame's CRCs
/// of the changed bytes (a lying disk, or a server that sends what it likes): only the chunk's
/// id can tell. Returns the chunk's id.
#[must_use]
pub fn forge_a_data_chunk_in(pack: &Path) -> String {
    let id = corrupt_a_data_chunk_in(pack);
    let mut bytes = read(pack);
    let mut at = 32usize;
    loop {
        let stored = u32::from_be_bytes(bytes[at + 44..at + 48].try_into().expect("len")) as usize;
        let here: String = bytes[at + 8..at + 40]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if here == id {
            let payload = crate::serve::crc32(&bytes[at + 56..at + 56 + stored]);
            bytes[at + 52..at + 56].copy_from_slice(&payload.to_be_bytes());
            let header = crate::serve::crc32(&bytes[at + 8..at + 56]);
            bytes[at + 4..at + 8].copy_from_slice(&header.to_be_bytes());
            std::fs::write(pack, &bytes).expect("write");
            return id;
        }
        at += 56 + stored;
    }
}

/// Flips a byte in the first data chunk of the pack file `pack`; returns the chunk's id.
#[must_use]
pub fn corrupt_a_data_chunk_in(pack: &Path) -> String {
    let mut bytes = read(pack);
    // Pack header 32 bytes; frame header 56: id at 8..40, kind at 49, payload after.
    let mut at = 32usize;
    loop {
        let stored = u32::from_be_bytes(bytes[at + 44..at + 48].try_into().expect("len")) as usize;
        if bytes[at + 49] == 0 {
            let id = bytes[at + 8..at + 40]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>();
            bytes[at + 56 + stored / 2] ^= 0x5a;
            std::fs::write(pack, &bytes).expect("write");
            return id;
        }
        at += 56 + stored;
    }
}
