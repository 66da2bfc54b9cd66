//! Fuzz target: any bytes a server sends (greeting, option replies, reply chunks) must give
//! the client a value or an error, never a panic, a hang or an allocation the request did not
//! ask for. From `nbd/`: `RUSTC_BOOTSTRAP=1 cargo fuzz run client -- -max_total_time=60`.
#![no_main]

use cairn_nbd::Client;
use cairn_nbd::replay::Replay;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let contexts = [
        "base:allocation".to_string(),
        "qemu:dirty-bitmap:b".to_string(),
    ];
    let Ok(mut c) = Client::handshake(Box::new(Replay::new(data.to_vec())), "d", &contexts) else {
        return;
    };
    let size = c.size();
    if size >= 4096 {
        let mut b = vec![0u8; 4096];
        let _ = c.read(0, &mut b);
        let _ = c.block_status(0, 4096);
    }
    let _ = c.disconnect();
});
