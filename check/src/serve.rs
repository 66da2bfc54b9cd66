//! The points served over NBD to the VM only: a unix socket in the check's own folder (mode
//! 0700: no other user reaches it), each connection on its own thread, the exports read-only
//! (qemu's overlay takes the guest's writes). Stopped when the check ends.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cairn_nbd::server::{self, Config};
use cairn_restore::PointExports;

use crate::{Error, Result};

/// The NBD server of one check.
pub struct Served {
    /// Its socket.
    pub socket: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Served {
    /// Serves `exports` on `dir/nbd.sock` until dropped.
    ///
    /// # Errors
    /// The socket that cannot be made.
    pub fn start(exports: PointExports, dir: &Path) -> Result<Self> {
        let socket = dir.join("nbd.sock");
        let listener = UnixListener::bind(&socket).map_err(|e| Error::io(&socket, e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io(&socket, e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let exports = Arc::new(exports);
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("check-boot-nbd".into())
            .spawn(move || accept(&listener, &exports, &stopping))
            .map_err(|e| Error::io(&socket, e))?;
        Ok(Self {
            socket,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept(listener: &UnixListener, exports: &Arc<PointExports>, stop: &AtomicBool) {
    let config = Config {
        multi_conn: true,
        idle_timeout: None,
        ..Config::default()
    };
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((conn, _)) => {
                let _ = conn.set_nonblocking(false);
                let exports = Arc::clone(exports);
                let config = config.clone();
                // Ends when qemu closes the connection (it ends with the VM).
                std::thread::spawn(move || {
                    let _ = server::serve(Box::new(conn), &*exports, &config, &|_| {});
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}
