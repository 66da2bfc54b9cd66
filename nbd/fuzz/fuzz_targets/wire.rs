//! Fuzz target: every parser of the wire format (options, option data, reply headers, reply
//! chunk payloads, requests, URIs) takes any bytes. From `nbd/`:
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run wire -- -max_total_time=60`.
#![no_main]

use std::io::Cursor;

use cairn_nbd::wire::{self, Request};
use cairn_nbd::{Uri, proto};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wire::parse_go(data);
    let _ = wire::parse_meta_context(data);
    let _ = wire::parse_block_status(data);
    let _ = wire::parse_error_chunk(proto::REPLY_TYPE_ERROR_OFFSET, data);
    let _ = wire::read_option(&mut Cursor::new(data), 1 << 16);
    let _ = wire::read_option_reply(&mut Cursor::new(data), 1 << 16);
    let _ = wire::read_reply_header(&mut Cursor::new(data));
    if let Some(h) = data.get(..wire::REQUEST_LEN) {
        let mut b = [0u8; wire::REQUEST_LEN];
        b.copy_from_slice(h);
        let _ = Request::decode(&b);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = Uri::parse(s);
    }
});
