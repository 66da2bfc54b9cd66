//! The fuzz seed corpus (qemu-img and cairn output): each seed reads as the content it is known
//! to hold, from a file and from a stream; then every byte of its metadata flipped and every
//! sector truncation go through the file parser and the stream parser, which must give a value
//! or an error, never a panic. The stable-toolchain stand-in for `cargo fuzz run parse` and
//! `cargo fuzz run stream`, run by every test pass. Mutations are made in place on one buffer
//! and read through borrowed slices: no copy of a seed per mutation.

use std::io::{Cursor, Read, Seek};

use cairn_vhd::{BlockState, Chain, StreamOpen, StreamVhd, Vhd};

/// The one text a seed holds among zeros, and where.
type Text = Option<(usize, &'static [u8])>;

/// The line of text the dynamic and fixed seeds hold at byte 5000 (written with qemu-io).
const SEED_TEXT: Text = Some((5000, b"cairn fuzz seed"));

/// Each seed and the one text it holds among zeros (the empty one holds only zeros; the
/// differencing one, read without its parent, holds the sectors it changed).
const SEEDS: [(&str, Text); 6] = [
    ("qemu-dynamic.vhd", SEED_TEXT),
    ("qemu-dynamic-force.vhd", SEED_TEXT),
    ("qemu-fixed.vhd", SEED_TEXT),
    ("qemu-dynamic-empty.vhd", None),
    ("cairn-dynamic-4k.vhd", SEED_TEXT),
    ("cairn-differencing.vhd", Some((9000, b"changed"))),
];

fn seed_dir() -> std::path::PathBuf {
    // At run time: the shared target folder may hold a build made in a clone at another path.
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(
            || std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")),
            std::path::PathBuf::from,
        )
        .join("fuzz/seeds")
}

/// The content a file parser reads (a differencing disk alone: its own sectors, zeros for the
/// parent's), or `None` when the bytes do not parse.
fn read_file<R: Read + Seek>(r: R) -> Option<Vec<u8>> {
    let vhd = Vhd::open(r).ok()?;
    let size = vhd.disk_size().min(2 << 20) as usize;
    let mut chain = Chain::single("seed.vhd".into(), vhd);
    let mut out = vec![0u8; size];
    chain.read_at(0, &mut out).ok()?;
    Some(out)
}

/// The content the stream parser reads in one pass, or `None` when the bytes do not parse, need
/// seeking, or end early.
fn read_stream(data: &[u8]) -> Option<Vec<u8>> {
    let StreamOpen::OnePass(mut vhd) = StreamVhd::open(Cursor::new(data)).ok()? else {
        return None;
    };
    let size = vhd.disk_size().min(2 << 20) as usize;
    let bs = vhd.block_size() as usize;
    let mut out = vec![0u8; size];
    for (i, part) in out.chunks_mut(bs).enumerate() {
        let i = i as u32;
        if vhd.block_state(i).ok()? == BlockState::Unallocated {
            continue;
        }
        let bitmap = vhd.read_bitmap(i).ok()??.to_vec();
        vhd.read_block_data(i, 0, part).ok()?;
        for (s, sector) in part.chunks_mut(512).enumerate() {
            if bitmap.get(s / 8).is_none_or(|b| b & (0x80 >> (s % 8)) == 0) {
                sector.fill(0);
            }
        }
    }
    vhd.finish().ok()?;
    Some(out)
}

fn check_content(name: &str, text: Text, content: &[u8], how: &str) {
    let mut want = vec![0u8; content.len()];
    if let Some((at, text)) = text {
        want[at..at + text.len()].copy_from_slice(text);
    }
    let diff = content.iter().zip(&want).position(|(a, b)| a != b);
    assert_eq!(
        diff, None,
        "{name} read {how}: content differs at that byte"
    );
}

#[test]
fn seeds_hold_their_content_and_every_corruption_of_their_metadata_is_survived() {
    let dir = seed_dir();
    for (name, text) in SEEDS {
        let path = dir.join(name);
        let mut data =
            std::fs::read(&path).unwrap_or_else(|e| panic!("seed {}: {e}", path.display()));
        let content = read_file(Cursor::new(&data[..]))
            .unwrap_or_else(|| panic!("seed {name} does not parse"));
        check_content(name, text, &content, "as a file");
        if data.starts_with(b"conectix") {
            let streamed = read_stream(&data).unwrap_or_else(|| panic!("{name} as a stream"));
            assert_eq!(streamed, content, "{name}: stream and file read differ");
        }
        // Every byte of the footer, header and BAT region flipped (in place, then back), and
        // every truncation on a sector boundary.
        let len = data.len();
        let mut spots: Vec<usize> = (0..len.min(4096)).collect();
        spots.extend(len.saturating_sub(512)..len);
        for &at in &spots {
            data[at] ^= 0xA5;
            let _ = read_file(Cursor::new(&data[..]));
            let _ = read_stream(&data);
            data[at] ^= 0xA5;
        }
        for cut in (0..len).step_by(512) {
            let _ = read_file(Cursor::new(&data[..cut]));
            let _ = read_stream(&data[..cut]);
        }
    }
    let on_disk = std::fs::read_dir(&dir).expect("seed folder").count();
    assert_eq!(
        on_disk,
        SEEDS.len(),
        "every seed in {} is listed here",
        dir.display()
    );
}
