//! A VM left running after its verdict (`check-boot --keep-running`), for an admin who wants
//! to log in: its serial console and its display are unix sockets in the check's private
//! folder; the disks are still served read-only and its writes still go to qemu's overlay.
//! It ends when the guest powers off or [`Kept::wait`] is told to stop; the folder goes then.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::qemu::Vm;
use crate::serve::Served;

/// A VM still running (fields drop in order: the VM, then its disks, then its folder).
pub struct Kept {
    vm: Vm,
    _served: Option<Served>,
    _dir: tempfile::TempDir,
}

impl Kept {
    pub(crate) fn new(vm: Vm, served: Option<Served>, dir: tempfile::TempDir) -> Self {
        Self {
            vm,
            _served: served,
            _dir: dir,
        }
    }

    /// The serial console's unix socket (`socat -,raw,echo=0 UNIX-CONNECT:PATH`).
    #[must_use]
    pub fn console(&self) -> Option<&Path> {
        self.vm.console_socket.as_deref()
    }

    /// The display's VNC unix socket (`vncviewer PATH`, or `socat` to a TCP port).
    #[must_use]
    pub fn display(&self) -> Option<&Path> {
        self.vm.vnc_socket.as_deref()
    }

    /// Waits until the guest ends or `stop` is set, then ends the VM and removes its folder.
    /// Says whether the guest ended by itself.
    pub fn wait(mut self, stop: &AtomicBool) -> bool {
        loop {
            if matches!(self.vm.ended(), Ok(Some(_)) | Err(_)) {
                return true;
            }
            if stop.load(Ordering::SeqCst) {
                self.vm.stop();
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
