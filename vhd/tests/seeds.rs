//! The fuzz seed corpus (qemu-img and cairn output) through the parser, whole and mutated: the
//! stable-toolchain stand-in for `cargo fuzz run parse`, run by every test pass.

use std::io::Cursor;

use cairn_vhd::{Chain, Vhd};

fn exercise(data: Vec<u8>) {
    let Ok(vhd) = Vhd::open(Cursor::new(data)) else {
        return;
    };
    let mut chain = Chain::single("seed.vhd".into(), vhd);
    let mut buf = vec![0u8; chain.block_size() as usize];
    for i in 0..chain.block_count().min(8) {
        let _ = chain.read_block(i, &mut buf);
    }
}

#[test]
fn seeds_parse_and_every_single_byte_corruption_of_their_metadata_is_survived() {
    // At run time: the shared target folder may hold a build made in a clone at another path.
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(
            || std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")),
            std::path::PathBuf::from,
        )
        .join("fuzz/seeds");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("seed folder") {
        let path = entry.expect("entry").path();
        let data = std::fs::read(&path).expect("read seed");
        let vhd = Vhd::open(Cursor::new(data.clone()));
        assert!(
            vhd.is_ok(),
            "seed {} does not parse: {:?}",
            path.display(),
            vhd.err()
        );
        seen += 1;
        // Every byte of the footer, header and BAT region, flipped, and every truncation on a
        // sector boundary.
        let len = data.len();
        let mut spots: Vec<usize> = (0..len.min(4096)).collect();
        spots.extend(len.saturating_sub(512)..len);
        for &at in &spots {
            let mut bad = data.clone();
            bad[at] ^= 0xA5;
            exercise(bad);
        }
        for cut in (0..len).step_by(512) {
            exercise(data[..cut].to_vec());
        }
    }
    assert!(seen >= 5, "expected the seed corpus in {}", dir.display());
}
