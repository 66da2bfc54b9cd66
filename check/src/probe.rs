//! Success signals other than the console: the QEMU guest agent answering a ping (a guest with
//! no serial console, as most Windows VMs), and a TCP port of the guest accepting connections
//! (its SSH or RDP server up), each asked at most once a second while the VM boots.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::qemu::Vm;

/// How often a probe asks.
const EVERY: Duration = Duration::from_secs(1);

/// The guest agent, pinged over its virtio-serial channel until it answers.
pub(crate) struct Agent {
    socket: PathBuf,
    stream: Option<UnixStream>,
    said: Vec<u8>,
    next: Instant,
}

impl Agent {
    pub(crate) fn new(socket: PathBuf) -> Self {
        Self {
            socket,
            stream: None,
            said: Vec::new(),
            next: Instant::now(),
        }
    }

    /// The line that says the agent answered, once it has.
    pub(crate) fn answered(&mut self) -> Option<String> {
        if Instant::now() < self.next {
            return None;
        }
        self.next = Instant::now() + EVERY;
        if self.stream.is_none() {
            let s = UnixStream::connect(&self.socket).ok()?;
            s.set_nonblocking(true).ok()?;
            self.stream = Some(s);
        }
        let stream = self.stream.as_mut()?;
        // A ping each time: an agent that starts late answers the ones queued, any will do.
        if stream
            .write_all(b"{\"execute\": \"guest-ping\"}\n")
            .is_err()
        {
            self.stream = None;
            return None;
        }
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => {
                    self.stream = None;
                    break;
                }
                Ok(n) => {
                    self.said.extend_from_slice(&buf[..n]);
                    // Bounded: only the last few KiB matter.
                    if self.said.len() > 64 << 10 {
                        self.said.drain(..self.said.len() - (4 << 10));
                    }
                }
                Err(_) => break,
            }
        }
        let text = String::from_utf8_lossy(&self.said);
        text.lines()
            .any(|l| l.contains("\"return\""))
            .then(|| "the QEMU guest agent answered guest-ping".to_owned())
    }
}

/// A guest TCP port, reached through the forward from 127.0.0.1: open once the guest completed
/// a connection (qemu's user network says so: `TCP[ESTABLISHED]` to the port), or sent bytes.
pub(crate) struct Port {
    host: u16,
    guest: u16,
    next: Instant,
}

impl Port {
    pub(crate) fn new(host: u16, guest: u16) -> Self {
        Self {
            host,
            guest,
            next: Instant::now(),
        }
    }

    /// The line that says the port is open, once it is.
    pub(crate) fn open(&mut self, vm: &Vm) -> Option<String> {
        if Instant::now() < self.next {
            return None;
        }
        self.next = Instant::now() + EVERY;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.host));
        // The forward accepts at once whatever the guest does: the connection to the guest is
        // what tells.
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
        conn.set_read_timeout(Some(Duration::from_millis(300)))
            .ok()?;
        let mut banner = [0u8; 256];
        if let Ok(n) = conn.read(&mut banner)
            && n > 0
        {
            let first = String::from_utf8_lossy(&banner[..n]);
            return Some(format!(
                "port {} open: {}",
                self.guest,
                first.lines().next().unwrap_or("").trim()
            ));
        }
        // Held open (the connection counts while it lasts) while qemu is asked.
        let table = vm.usernet().ok()?;
        drop(conn);
        established(&table, self.guest).then(|| format!("port {} open", self.guest))
    }
}

/// Whether qemu's `info usernet` lists a connection established with the guest's port
/// `guest` (a forwarded one shows the forward's own address as its source).
fn established(table: &str, guest: u16) -> bool {
    let guest = guest.to_string();
    table.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // Protocol[State] FD Source-Address Port Dest-Address Port RecvQ SendQ
        f.len() >= 6 && f[0] == "TCP[ESTABLISHED]" && f[5] == guest
    })
}

#[cfg(test)]
mod tests {
    use super::established;

    #[test]
    fn an_established_connection_to_the_port_is_seen_and_a_forward_alone_is_not() {
        let listening = "Hub -1 (#net021):\n  Protocol[State]    FD  Source Address  Port   \
                         Dest. Address  Port RecvQ SendQ\n  TCP[HOST_FORWARD]   3       \
                         127.0.0.1 45555       10.0.2.15    22     0     0\n";
        assert!(!established(listening, 22));
        let syn = format!("{listening}  TCP[SYN_SENT]       14 127.0.0.1 45555 10.0.2.15 22 0 0\n");
        assert!(!established(&syn, 22));
        let up = format!("{listening}  TCP[ESTABLISHED]   14 127.0.0.1 45555 10.0.2.15 22 0 0\n");
        assert!(established(&up, 22));
        assert!(!established(&up, 3389));
    }
}
