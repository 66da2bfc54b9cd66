//! Fuzz target: any bytes given to the VHD stream parser, then read forward block by block and
//! to the end, must give a value or an error, never a panic or a hang. Run with
//! `cargo +nightly fuzz run stream vhd/fuzz/seeds` from `vhd/` (or `RUSTC_BOOTSTRAP=1 cargo fuzz
//! run stream ...` on a stable toolchain).
#![no_main]

use std::io::Cursor;

use cairn_vhd::{StreamOpen, StreamVhd};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(StreamOpen::OnePass(mut vhd)) = StreamVhd::open(Cursor::new(data)) else {
        return;
    };
    let mut buf = vec![0u8; 4096];
    for i in 0..vhd.block_count().min(64) {
        let _ = vhd.read_bitmap(i);
        let n = (vhd.block_size() as usize).min(buf.len());
        let _ = vhd.read_block_data(i, 0, &mut buf[..n]);
    }
    let _ = vhd.finish();
});
