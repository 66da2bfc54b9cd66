//! Whatever a peer sends, the result is a value or an error: never a panic, never a hang.
//! Random and mutated bytes go to every parser and to both sides of a session.

use std::io::Cursor;

use cairn_nbd::replay::{Replay, ZeroExport};
use cairn_nbd::server::{self, Config};
use cairn_nbd::wire::{self, Request};
use cairn_nbd::{Client, proto};
use proptest::prelude::*;

fn replay(input: Vec<u8>) -> Replay {
    Replay::new(input)
}

/// The bytes a well-behaved client sends to reach transmission on export "d".
fn client_prefix() -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(proto::FLAG_C_FIXED_NEWSTYLE | proto::FLAG_C_NO_ZEROES).to_be_bytes());
    let opt = |v: &mut Vec<u8>, o: u32, d: &[u8]| {
        v.extend_from_slice(&proto::IHAVEOPT.to_be_bytes());
        v.extend_from_slice(&o.to_be_bytes());
        v.extend_from_slice(&(d.len() as u32).to_be_bytes());
        v.extend_from_slice(d);
    };
    opt(&mut v, proto::OPT_STRUCTURED_REPLY, &[]);
    opt(
        &mut v,
        proto::OPT_SET_META_CONTEXT,
        &wire::encode_meta_context("d", &["base:allocation"]),
    );
    opt(&mut v, proto::OPT_GO, &wire::encode_go("d", &[]));
    v
}

fn request(command: u16, offset: u64, length: u32) -> Vec<u8> {
    Request {
        flags: 0,
        command,
        // The cookies our client gives its first requests.
        cookie: u64::from(command == proto::CMD_BLOCK_STATUS) + 1,
        offset,
        length,
    }
    .encode()
    .to_vec()
}

/// What our server says to a client that reads 4 KiB at 0 and asks block status.
fn server_transcript() -> Vec<u8> {
    let mut input = client_prefix();
    input.extend(request(proto::CMD_READ, 0, 4096));
    input.extend(request(proto::CMD_BLOCK_STATUS, 0, 65536));
    input.extend(request(proto::CMD_DISC, 0, 0));
    let r = replay(input);
    let out = r.recorded();
    server::serve(Box::new(r), &ZeroExport, &Config::default(), &|_| {}).expect("a clean session");
    out.lock().expect("lock").clone()
}

#[test]
fn the_transcript_is_a_valid_session() {
    let t = server_transcript();
    let mut c = Client::handshake(Box::new(replay(t)), "d", &["base:allocation".to_string()])
        .expect("handshake");
    let mut b = vec![1u8; 4096];
    c.read(0, &mut b).expect("read");
    assert!(b.iter().all(|&x| x == 0));
    let st = c.block_status(0, 65536).expect("status");
    assert_eq!(st[0].1[0].flags, proto::STATE_ZERO);
}

fn client_session(server_bytes: Vec<u8>) {
    let Ok(mut c) = Client::handshake(
        Box::new(replay(server_bytes)),
        "d",
        &["base:allocation".to_string()],
    ) else {
        return;
    };
    if c.size() >= 4096 {
        let mut b = vec![0u8; 4096];
        let _ = c.read(0, &mut b);
    }
    if c.size() >= 65536 {
        let _ = c.block_status(0, 65536);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn parsers_take_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = wire::parse_go(&bytes);
        let _ = wire::parse_meta_context(&bytes);
        let _ = wire::parse_block_status(&bytes);
        let _ = wire::parse_error_chunk(proto::REPLY_TYPE_ERROR_OFFSET, &bytes);
        let _ = wire::parse_error_chunk(proto::REPLY_TYPE_ERROR, &bytes);
        let mut r = Cursor::new(bytes.clone());
        let _ = wire::read_option(&mut r, 1 << 16);
        let mut r = Cursor::new(bytes.clone());
        let _ = wire::read_option_reply(&mut r, 1 << 16);
        let mut r = Cursor::new(bytes.clone());
        let _ = wire::read_reply_header(&mut r);
        if bytes.len() >= wire::REQUEST_LEN {
            let mut h = [0u8; wire::REQUEST_LEN];
            h.copy_from_slice(&bytes[..wire::REQUEST_LEN]);
            let _ = Request::decode(&h);
        }
        let _ = cairn_nbd::Uri::parse(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn server_takes_any_handshake(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = server::serve(Box::new(replay(bytes)), &ZeroExport, &Config::default(), &|_| {});
    }

    #[test]
    fn server_takes_any_requests(
        tail in proptest::collection::vec(any::<u8>(), 0..600),
        valid in proptest::collection::vec((0u16..10, any::<u64>(), 0u32..(1 << 21)), 0..6),
    ) {
        let mut input = client_prefix();
        for (c, o, l) in valid {
            input.extend(request(c, o % (2 << 20), l));
            if c == proto::CMD_WRITE {
                input.extend(vec![0u8; (l as usize).min(4096)]);
            }
        }
        input.extend(tail);
        let _ = server::serve(Box::new(replay(input)), &ZeroExport, &Config::default(), &|_| {});
    }

    #[test]
    fn client_takes_any_server(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        client_session(bytes);
    }

    #[test]
    fn client_takes_a_mutated_server(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6), cut in any::<prop::sample::Index>()) {
        let mut t = server_transcript();
        for (i, b) in flips {
            let i = i.index(t.len());
            t[i] ^= b | 1;
        }
        let keep = cut.index(t.len() + 1);
        t.truncate(keep.max(t.len() / 2));
        client_session(t);
    }

    #[test]
    fn server_takes_a_mutated_client(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)) {
        let mut input = client_prefix();
        input.extend(request(proto::CMD_READ, 0, 4096));
        input.extend(request(proto::CMD_WRITE, 0, 512));
        input.extend(vec![9u8; 512]);
        input.extend(request(proto::CMD_BLOCK_STATUS, 0, 65536));
        for (i, b) in flips {
            let i = i.index(input.len());
            input[i] ^= b | 1;
        }
        let _ = server::serve(Box::new(replay(input)), &ZeroExport, &Config::default(), &|_| {});
    }
}
