//! Fuzz target: any bytes a client sends (handshake, options, requests) must end the session
//! with a value or an error, never a panic or a hang. From `nbd/`:
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run server -- -max_total_time=60`.
#![no_main]

use cairn_nbd::replay::{Replay, ZeroExport};
use cairn_nbd::server::{self, Config};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = server::serve(
        Box::new(Replay::new(data.to_vec())),
        &ZeroExport,
        &Config::default(),
        &|_| {},
    );
});
