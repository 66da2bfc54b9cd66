//! `cairn vhd` against independent implementations: qemu-img, Xen Orchestra's vhd-lib and
//! libvhdi read what cairn writes, and cairn reads what they write.

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use cairn_tests::{
    assert_same_content, cairn, make_raw, modify_raw, node, num, ok, read, run, vhdi_to_raw,
    xo_chain3,
};

const SIZE: u64 = 40 << 20;

fn p(path: &Path) -> &OsStr {
    path.as_os_str()
}

#[test]
fn qemu_written_fixed_and_dynamic_read_back_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // An odd size: qemu rounds it up to CHS geometry unless force_size is on.
    let raw = d.join("disk.raw");
    make_raw(&raw, 102_403 * 512, 11);
    for (name, subformat, force) in [
        ("dyn.vhd", "dynamic", false),
        ("dyn_fs.vhd", "dynamic", true),
        ("fixed.vhd", "fixed", false),
        ("fixed_fs.vhd", "fixed", true),
    ] {
        let vhd = d.join(name);
        let opts = format!(
            "subformat={subformat}{}",
            if force { ",force_size=on" } else { "" }
        );
        ok(Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "vpc", "-o", &opts])
            .arg(&raw)
            .arg(&vhd));
        let info: serde_json::Value =
            serde_json::from_str(&ok(cairn(["vhd", "info", "--json"]).arg(&vhd))).expect("json");
        assert_eq!(info["type"], subformat, "{name}");
        let expect_creator = if force { "qem2" } else { "qemu" };
        assert_eq!(info["creator_application"], expect_creator, "{name}");
        ok(cairn(["vhd", "check"]).arg(&vhd));
        let out = d.join(format!("{name}.raw"));
        ok(cairn(["vhd", "to-raw"]).arg(&vhd).arg(&out));
        // Exact size with force_size; CHS-rounded (zero tail) without.
        assert_same_content(&out, &raw, force);
        // And qemu itself reads the same bytes back as cairn does.
        let q = d.join(format!("{name}.qemu.raw"));
        ok(Command::new("qemu-img")
            .args(["convert", "-f", "vpc", "-O", "raw"])
            .arg(&vhd)
            .arg(&q));
        assert!(read(&q) == read(&out), "{name}: qemu and cairn disagree");
    }
}

#[test]
fn vhd_lib_chains_with_partial_bitmaps_read_back_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (r0, r1, r2) = (d.join("r0.raw"), d.join("r1.raw"), d.join("r2.raw"));
    make_raw(&r0, SIZE, 21);
    modify_raw(&r0, &r1, 22);
    modify_raw(&r1, &r2, 23);
    let xo = d.join("xo");
    let made = xo_chain3(&r0, &r1, &r2, &xo);
    assert!(
        num(&made, "deltaPartialBlocks") > 0,
        "the delta must hold partial bitmaps: {made}"
    );
    for (top, want) in [("base.vhd", &r0), ("delta.vhd", &r1), ("delta2.vhd", &r2)] {
        let out = d.join(format!("{top}.raw"));
        ok(cairn(["vhd", "check"]).arg(xo.join(top)));
        ok(cairn(["vhd", "to-raw"]).arg(xo.join(top)).arg(&out));
        assert_same_content(&out, want, true);
    }
    // vhd-lib's own whole-block export disagrees on partial blocks; cairn honours the bitmaps.
    let synthetic = d.join("synthetic.raw");
    ok(&mut node(
        "xo_chain_to_raw.js",
        [
            p(&xo.join("delta2.vhd")),
            p(&synthetic),
            OsStr::new("--mode=synthetic"),
        ],
    ));
    assert!(
        read(&synthetic) != read(&r2),
        "vhd-lib synthetic export was expected to ignore partial bitmaps"
    );

    // A CHS-sized chain (size rounded up, raw read as zero-padded).
    let chs = d.join("chs");
    ok(&mut node(
        "xo_make_chain.js",
        [
            p(&r0),
            p(&r1),
            p(&chs),
            OsStr::new("--granularity=sector"),
            OsStr::new("--size=chs"),
        ],
    ));
    let out = d.join("chs.raw");
    ok(cairn(["vhd", "to-raw"])
        .arg(chs.join("delta.vhd"))
        .arg(&out));
    assert_same_content(&out, &r1, false);
}

#[test]
fn cairn_chains_are_accepted_and_read_identically_by_vhd_lib_and_libvhdi() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (r0, r1, r2) = (d.join("r0.raw"), d.join("r1.raw"), d.join("r2.raw"));
    make_raw(&r0, SIZE, 31);
    modify_raw(&r0, &r1, 32);
    modify_raw(&r1, &r2, 33);
    let chain = d.join("chain");
    std::fs::create_dir(&chain).expect("mkdir");
    ok(cairn(["vhd", "from-raw"])
        .arg(&r0)
        .arg(chain.join("base.vhd")));
    ok(cairn(["vhd", "from-raw"])
        .arg(&r1)
        .arg(chain.join("d1.vhd"))
        .arg("--parent")
        .arg(chain.join("base.vhd")));
    ok(cairn(["vhd", "from-raw"])
        .arg(&r2)
        .arg(chain.join("d2.vhd"))
        .arg("--parent")
        .arg(chain.join("d1.vhd")));

    // The delta holds only changed blocks, as whole blocks.
    let info: serde_json::Value = serde_json::from_str(&ok(
        cairn(["vhd", "info", "--json"]).arg(chain.join("d2.vhd"))
    ))
    .expect("json");
    assert_eq!(info["type"], "differencing");
    assert_eq!(info["header"]["parent"]["name"], "d1.vhd");
    assert_eq!(info["chain"]["files"].as_array().map(Vec::len), Some(3));
    let allocated = num(&info["header"], "allocated_blocks");
    assert!(
        allocated > 0 && allocated < SIZE / (2 << 20) / 2,
        "delta allocates {allocated} blocks"
    );
    let platforms: Vec<&str> = info["header"]["parent"]["locators"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["platform"].as_str())
        .collect();
    assert_eq!(platforms, ["W2ku", "W2ru"]);

    // vhd-lib: structure, chain uuids, BAT bounds; and its export of every level.
    ok(&mut node(
        "xo_check.js",
        [
            OsStr::new("--chain"),
            OsStr::new("--blocks"),
            p(&chain.join("d2.vhd")),
        ],
    ));
    for (top, want) in [("base.vhd", &r0), ("d1.vhd", &r1), ("d2.vhd", &r2)] {
        let xo = d.join(format!("{top}.xo.raw"));
        ok(&mut node(
            "xo_chain_to_raw.js",
            [p(&chain.join(top)), p(&xo), OsStr::new("--mode=synthetic")],
        ));
        assert_same_content(&xo, want, true);
        let vhdi = d.join(format!("{top}.vhdi.raw"));
        ok(&mut vhdi_to_raw(&chain.join(top), &vhdi));
        assert_same_content(&vhdi, want, true);
    }
    // qemu reads cairn's dynamic and fixed VHDs at their exact size.
    ok(cairn(["vhd", "from-raw", "--type", "fixed"])
        .arg(&r2)
        .arg(d.join("fixed.vhd")));
    for name in ["chain/base.vhd", "fixed.vhd"] {
        let q = d.join(format!("{}.qemu.raw", name.replace('/', "_")));
        ok(Command::new("qemu-img")
            .args(["convert", "-f", "vpc", "-O", "raw"])
            .arg(d.join(name))
            .arg(&q));
        assert_same_content(&q, if name == "fixed.vhd" { &r2 } else { &r0 }, true);
    }
    // The chain's own to-raw is sparse: holes where the disk is zero.
    let out = d.join("out.raw");
    ok(cairn(["vhd", "to-raw"]).arg(chain.join("d2.vhd")).arg(&out));
    assert_same_content(&out, &r2, true);
    let meta = std::fs::metadata(&out).expect("stat");
    assert!(
        meta.blocks() * 512 < meta.len(),
        "to-raw output is not sparse"
    );
}

#[test]
fn broken_files_are_refused_with_file_offset_and_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let raw = d.join("r.raw");
    make_raw(&raw, 8 << 20, 41);
    let good = d.join("good.vhd");
    ok(cairn(["vhd", "from-raw"]).arg(&raw).arg(&good));
    let bytes = read(&good);
    let len = bytes.len();
    let mut cases: Vec<(&str, Vec<u8>, &str)> = Vec::new();
    cases.push(("truncated.vhd", bytes[..len - 4096].to_vec(), "truncated"));
    cases.push(("tail-cut.vhd", bytes[..len / 2].to_vec(), "truncated"));
    let mut flip = bytes.clone();
    flip[len - 512 + 50] ^= 0x10;
    cases.push(("footer-flip.vhd", flip, "checksum"));
    let mut flip = bytes.clone();
    flip[512 + 33] ^= 0x01; // block size field of the header
    cases.push(("header-flip.vhd", flip, "checksum"));
    let mut bat = bytes.clone();
    bat[1536..1540].copy_from_slice(&0x0100_0000u32.to_be_bytes()); // block far past the end
    cases.push(("bat-out.vhd", bat, "BAT entry 0"));
    let mut cookie = bytes.clone();
    cookie[len - 512] = b'X';
    cookie[0] = b'X';
    cases.push(("cookie.vhd", cookie, "cookie"));
    let mut x = 0x1234_5678_u32;
    let random: Vec<u8> = (0..(3 << 20))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    cases.push(("random.vhd", random, "cookie"));
    cases.push(("empty.vhd", Vec::new(), "truncated"));
    for (name, data, reason) in cases {
        let path = d.join(name);
        std::fs::write(&path, &data).expect("write");
        for args in [
            vec!["vhd", "check"],
            vec!["vhd", "to-raw"],
            vec!["vhd", "info"],
        ] {
            let mut cmd = cairn(&args);
            cmd.arg(&path);
            if args[1] == "to-raw" {
                cmd.arg(d.join("out.raw"));
            }
            let out = run(&mut cmd);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{name}: {args:?} succeeded");
            assert!(
                err.contains(name),
                "{name}: error does not name the file: {err}"
            );
            assert!(
                err.contains("offset"),
                "{name}: error does not name the offset: {err}"
            );
            assert!(
                err.contains(reason),
                "{name}: error does not say {reason}: {err}"
            );
        }
    }
}
