//! What one client can hold of `cairn serve`: session and request slots per token, connections
//! per address, idle connections and stalled bodies, each ended by the server.

use std::process::Command;

use cairn_tests::TestStore;
use cairn_tests::serve::{Server, token};

/// One token cannot hold every session slot, one address every connection.
#[test]
fn one_token_or_one_address_cannot_take_every_slot() {
    let store = TestStore::new("256K");
    let greedy = token(&store.path(), "greedy", "backup", "*");
    let other = token(&store.path(), "other", "backup", "*");
    let server = Server::start(&store.path(), 0, &[]);
    for i in 0..8 {
        let _ = server.open_session(&greedy, &format!("vm{i}"));
    }
    let (code, answer) = server.curl(
        "POST",
        "sessions",
        &greedy,
        Some(br#"{"vm": "vm8", "disks": ["xvda"]}"#),
    );
    assert_eq!(code, 429, "{}", String::from_utf8_lossy(&answer));
    let _ = server.open_session(&other, "vm9");
    // 32 idle connections from one address (no TLS handshake: each is held up to 10 s): the
    // next one from it is dropped at once; once they go, requests are served again.
    let addr = server.url.trim_start_matches("https://").to_owned();
    let idle: Vec<std::net::TcpStream> = (0..32)
        .map(|_| std::net::TcpStream::connect(&addr).expect("connect"))
        .collect();
    // (Until the server has accepted all 32, one more may still be served: asked until not.)
    cairn_tests::wait_until("a 33rd connection from one address to be dropped", || {
        server.curl("GET", "store", &other, None).0 == 0
    });
    drop(idle);
    cairn_tests::wait_until("requests to be served again", || {
        server.curl("GET", "store", &other, None).0 == 200
    });
}

/// A connection that sends nothing (after a request, or from the start of its TLS session) is
/// closed after 30 s: idle clients do not hold the server's connection slots.
#[test]
fn an_idle_connection_is_closed_after_thirty_seconds() {
    use std::io::Write;
    let store = TestStore::new("256K");
    let admin = token(&store.path(), "admin", "admin", "*");
    let server = Server::start(&store.path(), 0, &[]);
    let addr = server.url.trim_start_matches("https://").to_owned();
    let started = std::time::Instant::now();
    let mut client = Command::new("openssl")
        .args(["s_client", "-quiet", "-connect", &addr])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl s_client");
    let mut stdin = client.stdin.take().expect("stdin");
    write!(
        stdin,
        "GET /api/v1/store HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {admin}\r\n\r\n"
    )
    .expect("request");
    // stdin stays open: only the server can end the connection.
    let mut ended = false;
    while started.elapsed() < std::time::Duration::from_secs(90) {
        if client.try_wait().expect("s_client").is_some() {
            ended = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let _ = client.kill();
    let out = client.wait_with_output().expect("s_client");
    drop(stdin);
    assert!(ended, "an idle keep-alive connection was kept for 90 s");
    assert!(
        started.elapsed().as_secs() >= 25,
        "closed before its idle time"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("200 OK"),
        "the request before it was not answered"
    );
}

/// A request body that sends no byte for 30 s fails, and one token's requests in flight are
/// bounded: 16 requests trickling their bodies hold every slot of their token (a 17th is
/// answered 429, another token is served), and each ends at its stall, giving its slot back.
#[test]
fn stalled_bodies_end_and_one_token_holds_at_most_sixteen_requests() {
    use std::io::Write;
    let store = TestStore::new("256K");
    let admin = token(&store.path(), "admin", "admin", "*");
    let other = token(&store.path(), "other", "restore", "*");
    let server = Server::start(&store.path(), 0, &[]);
    let addr = server.url.trim_start_matches("https://").to_owned();
    let started = std::time::Instant::now();
    let stalled: Vec<(std::process::Child, std::process::ChildStdin)> = (0..16)
        .map(|_| {
            let mut c = Command::new("openssl")
                .args(["s_client", "-quiet", "-connect", &addr])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("openssl s_client");
            let mut stdin = c.stdin.take().expect("stdin");
            write!(
                stdin,
                "POST /api/v1/gc HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {admin}\r\n\
                 Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"dry"
            )
            .expect("request");
            (c, stdin)
        })
        .collect();
    // Once the server holds all 16 (each sent its headers), the token's next request is refused.
    cairn_tests::wait_until("the token's 17th request to be refused", || {
        server.curl("GET", "store", &admin, None).0 == 429
    });
    let (code, _) = server.curl("GET", "store", &other, None);
    assert_eq!(code, 200, "another token was held back");
    // Each stalled body fails by itself (the clients keep their side open).
    for (mut c, stdin) in stalled {
        while c.try_wait().expect("s_client").is_none() {
            assert!(
                started.elapsed().as_secs() < 90,
                "a stalled body held its request for 90 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        drop(stdin);
        let out = c.wait_with_output().expect("s_client");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(!said.contains("200 OK"), "a stalled body was taken: {said}");
    }
    assert!(started.elapsed().as_secs() >= 25, "ended before the stall");
    let (code, _) = server.curl("GET", "store", &admin, None);
    assert_eq!(code, 200, "the token's slots were not given back");
}
