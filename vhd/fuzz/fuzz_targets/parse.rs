//! Fuzz target: any bytes given to the VHD parser and chain reader must give a value or an
//! error, never a panic. Run with `cargo +nightly fuzz run parse vhd/fuzz/seeds` from `vhd/`.
#![no_main]

use std::io::Cursor;

use cairn_vhd::{Chain, Vhd};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mut vhd) = Vhd::open(Cursor::new(data.to_vec())) else { return };
    for i in 0..vhd.bat().len().min(64) as u32 {
        let _ = vhd.read_bitmap(i);
    }
    for i in 0..8 {
        let _ = vhd.read_parent_locator(i);
    }
    let mut chain = Chain::single("fuzz.vhd".into(), vhd);
    let mut buf = vec![0u8; chain.block_size() as usize];
    for i in 0..chain.block_count().min(16) {
        let _ = chain.read_block(i, &mut buf);
    }
});
