//! Our client against our server, over a unix socket pair, on a memory device.

use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_nbd::server::{self, Config, Device, DeviceError, Exports};
use cairn_nbd::{Client, Error, Extent, proto};

/// A memory disk: bytes, zero where never written, and a range that fails with EIO.
struct Memory {
    bytes: Arc<Mutex<Vec<u8>>>,
    read_only: bool,
    bad: Option<(u64, u64)>,
}

impl Device for Memory {
    fn size(&self) -> u64 {
        self.bytes.lock().expect("lock").len() as u64
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        if let Some((a, b)) = self.bad
            && offset < b
            && offset + buf.len() as u64 > a
        {
            return Err(DeviceError {
                errno: proto::EIO,
                message: "bad bytes".into(),
                offset: Some(a.max(offset)),
            });
        }
        let m = self.bytes.lock().expect("lock");
        buf.copy_from_slice(&m[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
    fn allocation(&mut self, offset: u64, length: u32) -> Result<Vec<Extent>, DeviceError> {
        // 4 KiB granules: zero ones are holes.
        let m = self.bytes.lock().expect("lock");
        let mut out: Vec<Extent> = Vec::new();
        let mut at = offset;
        let end = (offset + u64::from(length)).min(m.len() as u64);
        while at < end {
            let next = ((at / 4096 + 1) * 4096).min(end);
            let zero = m[at as usize..next as usize].iter().all(|&b| b == 0);
            let flags = if zero {
                proto::STATE_HOLE | proto::STATE_ZERO
            } else {
                0
            };
            match out.last_mut() {
                Some(e) if e.flags == flags => e.length += (next - at) as u32,
                _ => out.push(Extent {
                    length: (next - at) as u32,
                    flags,
                }),
            }
            at = next;
        }
        Ok(out)
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        let mut m = self.bytes.lock().expect("lock");
        m[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn write_zeroes(&mut self, offset: u64, length: u32) -> Result<(), DeviceError> {
        let mut m = self.bytes.lock().expect("lock");
        m[offset as usize..offset as usize + length as usize].fill(0);
        Ok(())
    }
}

struct One {
    bytes: Arc<Mutex<Vec<u8>>>,
    read_only: bool,
    bad: Option<(u64, u64)>,
}

impl Exports for One {
    fn list(&self) -> Vec<(String, String)> {
        vec![
            ("disk".into(), "a memory disk".into()),
            ("other".into(), String::new()),
        ]
    }
    fn find(&self, name: &str) -> Option<(String, String)> {
        (name == "disk" || name == "alias").then(|| ("disk".into(), "a memory disk".into()))
    }
    fn open(&self, _: &str) -> Result<Box<dyn Device>, String> {
        Ok(Box::new(Memory {
            bytes: Arc::clone(&self.bytes),
            read_only: self.read_only,
            bad: self.bad,
        }))
    }
}

fn disk() -> Vec<u8> {
    let mut v = vec![0u8; 4 << 20];
    for (i, b) in v[..1 << 20].iter_mut().enumerate() {
        *b = (i * 7 + i / 251) as u8;
    }
    v[3 << 20..(3 << 20) + 5000].fill(0xab);
    v
}

/// Serves `exports` on one end of a socket pair in a thread; returns the other end.
fn serve(
    exports: One,
) -> (
    UnixStream,
    std::thread::JoinHandle<cairn_nbd::Result<server::Session>>,
) {
    let (a, b) = UnixStream::pair().expect("pair");
    a.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    b.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let h = std::thread::spawn(move || {
        server::serve(Box::new(b), &exports, &Config::default(), &|_| {})
    });
    (a, h)
}

#[test]
fn read_write_status_and_errors() {
    let bytes = Arc::new(Mutex::new(disk()));
    let (sock, server) = serve(One {
        bytes: Arc::clone(&bytes),
        read_only: false,
        bad: Some((2 << 20, (2 << 20) + 10)),
    });
    let mut c = Client::handshake(
        Box::new(sock),
        "alias",
        &[
            proto::CONTEXT_BASE_ALLOCATION.to_string(),
            "qemu:dirty-bitmap:x".to_string(),
        ],
    )
    .expect("handshake");
    assert_eq!(c.size(), 4 << 20);
    assert!(c.structured());
    assert_eq!(c.contexts(), vec![proto::CONTEXT_BASE_ALLOCATION]);
    assert_eq!(c.info().description.as_deref(), Some("a memory disk"));
    let want = disk();
    let mut got = vec![0u8; 1 << 20];
    c.read(0, &mut got).expect("read");
    assert_eq!(got, want[..1 << 20]);
    // Pipelined reads, completed in any order.
    let cookies: Vec<u64> = (0..8)
        .map(|i| c.submit_read(i * 65536, 65536).expect("submit"))
        .collect();
    let mut seen = Vec::new();
    for _ in 0..8 {
        let done = c.wait().expect("wait");
        let data = done.result.expect("data");
        assert_eq!(
            data,
            want[done.offset as usize..done.offset as usize + 65536]
        );
        seen.push(done.cookie);
    }
    seen.sort_unstable();
    assert_eq!(seen, cookies);
    // Block status: data, then holes, then the 0xab stretch.
    let st = c.block_status(0, 4 << 20).expect("status");
    assert_eq!(st.len(), 1);
    let ext = &st[0].1;
    assert_eq!(
        ext[0],
        Extent {
            length: 1 << 20,
            flags: 0
        }
    );
    assert_eq!(ext[1].flags, proto::STATE_HOLE | proto::STATE_ZERO);
    // A bad range is an error for that read only, naming its offset; the connection goes on.
    let mut b = vec![0u8; 4096];
    let e = c.read((2 << 20) - 100, &mut b).expect_err("EIO");
    match e {
        Error::Request { errno, offset, .. } => {
            assert_eq!(errno, proto::EIO);
            assert_eq!(offset, 2 << 20);
        }
        other => panic!("{other}"),
    }
    c.read(0, &mut b).expect("read after an error");
    // Past the end: refused by the client before sending.
    let e = c.read((4 << 20) - 10, &mut b).expect_err("past the end");
    assert!(e.to_string().contains("passes the end of export"), "{e}");
    // Writes.
    c.write(4096, &[9u8; 512]).expect("write");
    c.write_zeroes(0, 4096).expect("zeroes");
    c.trim(8192, 4096).expect("trim");
    c.flush().expect("flush");
    c.read(0, &mut b).expect("read");
    assert!(b.iter().all(|&x| x == 0));
    let mut s = vec![0u8; 512];
    c.read(4096, &mut s).expect("read");
    assert!(s.iter().all(|&x| x == 9));
    assert_eq!(bytes.lock().expect("lock")[4096], 9);
    c.disconnect().expect("disc");
    let session = server.join().expect("join").expect("session");
    assert_eq!(session.export.as_deref(), Some("disk"));
    assert!(session.errors >= 1);
}

#[test]
fn read_only_and_unknown_export() {
    let bytes = Arc::new(Mutex::new(disk()));
    let (sock, _server) = serve(One {
        bytes: Arc::clone(&bytes),
        read_only: true,
        bad: None,
    });
    let e = Client::handshake(Box::new(sock), "nope", &[]).expect_err("unknown");
    assert!(e.to_string().contains("nope"), "{e}");
    let (sock, _server) = serve(One {
        bytes,
        read_only: true,
        bad: None,
    });
    let mut c = Client::handshake(Box::new(sock), "disk", &[]).expect("handshake");
    assert!(c.info().read_only());
    let e = c.write(0, &[1]).expect_err("a read-only export");
    assert!(e.to_string().contains("is read-only"), "{e}");
    let e = c.block_status(0, 10).expect_err("no context selected");
    assert!(e.to_string().contains("needs a metadata context"), "{e}");
}

/// A server of the old kind (as XAPI's NBD server is): it knows neither structured replies
/// nor `NBD_OPT_GO`, takes `NBD_OPT_EXPORT_NAME` and answers reads with simple replies.
fn old_server(mut s: UnixStream, disk: Vec<u8>) {
    use cairn_nbd::wire;
    use std::io::{Read, Write};
    let mut greeting = proto::NBDMAGIC.to_be_bytes().to_vec();
    greeting.extend_from_slice(&proto::IHAVEOPT.to_be_bytes());
    greeting.extend_from_slice(&proto::FLAG_FIXED_NEWSTYLE.to_be_bytes());
    s.write_all(&greeting).expect("greet");
    let mut flags = [0u8; 4];
    s.read_exact(&mut flags).expect("client flags");
    loop {
        let opt = wire::read_option(&mut s, 1 << 16).expect("option");
        if opt.option == proto::OPT_EXPORT_NAME {
            assert_eq!(opt.data, b"/vdi-uuid?session_id=OpaqueRef:1");
            let mut reply = (disk.len() as u64).to_be_bytes().to_vec();
            reply.extend_from_slice(&(proto::FLAG_HAS_FLAGS | proto::FLAG_READ_ONLY).to_be_bytes());
            reply.extend_from_slice(&[0u8; 124]);
            s.write_all(&reply).expect("export");
            break;
        }
        wire::write_option_reply(&mut s, opt.option, proto::REP_ERR_UNSUP, &[]).expect("unsup");
    }
    loop {
        let mut head = [0u8; wire::REQUEST_LEN];
        if s.read_exact(&mut head).is_err() {
            return;
        }
        let req = wire::Request::decode(&head).expect("request");
        if req.command == proto::CMD_DISC {
            return;
        }
        let (o, l) = (req.offset as usize, req.length as usize);
        s.write_all(&wire::simple_reply(0, req.cookie))
            .expect("reply");
        s.write_all(&disk[o..o + l]).expect("data");
    }
}

#[test]
fn an_old_server_is_reached_with_export_name_and_simple_replies() {
    let (a, b) = UnixStream::pair().expect("pair");
    let want = disk();
    let d = want.clone();
    let server = std::thread::spawn(move || old_server(b, d));
    let mut c = Client::handshake(
        Box::new(a),
        "/vdi-uuid?session_id=OpaqueRef:1",
        &[proto::CONTEXT_BASE_ALLOCATION.to_string()],
    )
    .expect("handshake");
    assert!(!c.structured());
    assert!(
        c.contexts().is_empty(),
        "no contexts without structured replies"
    );
    assert_eq!(c.size(), want.len() as u64);
    let mut got = vec![0u8; 3 << 20];
    c.read(512, &mut got).expect("read");
    assert_eq!(got, want[512..512 + (3 << 20)]);
    c.disconnect().expect("disc");
    server.join().expect("server");
}
