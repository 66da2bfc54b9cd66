//! Writing a restore past the page cache (`O_DIRECT`) where the file system takes it.
//!
//! A restore writes a disk's worth of bytes once. Through the page cache they become dirty
//! pages that evict everything else the host had cached, and the kernel copies each into a
//! fresh page: most of a raw restore's time on a VM whose host backs freed memory lazily (6.0 s
//! through the page cache against 1.5 s for `dd oflag=direct` of the same 2.4 GB, measured on
//! the 2-core machine this was written on). Pieces aligned to [`ALIGN`] go to the device from
//! an aligned buffer, written by a thread of their own while the next is filled; a piece that
//! is not aligned (a disk's last, shorter chunk, a VHD's footer), or every piece once the file
//! system refuses one (tmpfs refuses the flag itself), goes through the page cache, as does
//! every piece on a network or FUSE file system. Nothing is fsynced: what went past the cache
//! is on the device, the rest (metadata, a last piece) the kernel writes back.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;

/// Bytes of a write past the page cache.
const DIRECT_PIECE: usize = 4 << 20;
/// Bytes of a write through the page cache (from a buffer this thread keeps warm: the kernel
/// copies from it into the page cache much faster than straight from a window the decoding
/// threads filled, 3.6-4.1 s against 5.6-7.4 s for a 4 GiB point).
const CACHED_PIECE: usize = 1 << 20;
/// Buffers of writes past the page cache: one being filled while the other goes to the device.
const DIRECT_BUFFERS: usize = 2;
/// Alignment of the offsets, lengths and buffer of writes past the page cache (the strictest a
/// Linux file system or block device asks for).
const ALIGN: usize = 4096;

/// File systems written through the page cache even though they take `O_DIRECT`: over a
/// network (NFS, SMB, Ceph) every direct write is a synchronous round trip to the server,
/// slower than the kernel's write-back; FUSE passes it to a process of its own.
const CACHED_FILE_SYSTEMS: [i64; 6] = [
    0x6969,      // NFS
    0xff53_4d42, // CIFS
    0xfe53_4d42, // SMB2
    0x00c3_6400, // Ceph
    0x6573_5546, // FUSE
    0x0102_1997, // 9p
];

/// `path` opened again for writes past the page cache, or `None` where it cannot or should
/// not be.
pub(crate) fn reopen(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let kind = rustix::fs::statfs(path).ok()?.f_type;
    #[allow(clippy::unnecessary_cast)] // f_type's width depends on the platform
    if CACHED_FILE_SYSTEMS.contains(&(kind as i64)) {
        return None;
    }
    // Never through a link swapped in since the file was made.
    OpenOptions::new()
        .write(true)
        .custom_flags((rustix::fs::OFlags::DIRECT | rustix::fs::OFlags::NOFOLLOW).bits() as i32)
        .open(path)
        .ok()
}

/// A buffer whose bytes from `pad` on are [`ALIGN`]ed.
struct Aligned {
    bytes: Vec<u8>,
    pad: usize,
}

impl Aligned {
    fn new(len: usize) -> Self {
        let bytes = vec![0; len + ALIGN];
        let pad = bytes.as_ptr().align_offset(ALIGN);
        Self { bytes, pad }
    }

    fn get(&self, len: usize) -> &[u8] {
        &self.bytes[self.pad..self.pad + len]
    }

    fn get_mut(&mut self, len: usize) -> &mut [u8] {
        &mut self.bytes[self.pad..self.pad + len]
    }
}

/// A piece to write: its buffer, its length and its offset.
type Piece = (Aligned, usize, u64);

/// The thread that writes pieces past the page cache, and the buffers it gives back.
struct Device {
    to: Option<mpsc::Sender<Piece>>,
    back: mpsc::Receiver<(Aligned, std::io::Result<()>)>,
    free: Vec<Aligned>,
    made: usize,
    in_flight: usize,
    thread: Option<JoinHandle<()>>,
}

impl Device {
    fn start(direct: File, cached: File) -> Self {
        let (to, pieces) = mpsc::channel::<Piece>();
        let (done, back) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let mut refused = false;
            for (buf, len, at) in pieces {
                let bytes = buf.get(len);
                let mut r = if refused {
                    cached.write_all_at(bytes, at)
                } else {
                    direct.write_all_at(bytes, at)
                };
                // An alignment stricter than ours: through the page cache from here on.
                if r.as_ref().err().and_then(std::io::Error::raw_os_error)
                    == Some(rustix::io::Errno::INVAL.raw_os_error())
                {
                    refused = true;
                    r = cached.write_all_at(bytes, at);
                }
                let r =
                    r.map_err(|e| std::io::Error::new(e.kind(), format!("at offset {at}: {e}")));
                if done.send((buf, r)).is_err() {
                    return;
                }
            }
        });
        Self {
            to: Some(to),
            back,
            free: Vec::new(),
            made: 0,
            in_flight: 0,
            thread: Some(thread),
        }
    }

    /// Waits for the oldest write in flight; its error, if it failed.
    fn wait_one(&mut self) -> std::io::Result<()> {
        let (buf, r) = self
            .back
            .recv()
            .map_err(|_| std::io::Error::other("the restore's writing thread ended"))?;
        self.in_flight -= 1;
        self.free.push(buf);
        r
    }

    /// A buffer to fill: a free one, a new one, or the next to come back.
    fn buffer(&mut self) -> std::io::Result<Aligned> {
        if let Some(b) = self.free.pop() {
            return Ok(b);
        }
        if self.made < DIRECT_BUFFERS {
            self.made += 1;
            return Ok(Aligned::new(DIRECT_PIECE));
        }
        self.wait_one()?;
        self.free
            .pop()
            .ok_or_else(|| std::io::Error::other("no buffer came back"))
    }

    fn send(&mut self, piece: Piece) -> std::io::Result<()> {
        self.to
            .as_ref()
            .and_then(|to| to.send(piece).ok())
            .ok_or_else(|| std::io::Error::other("the restore's writing thread ended"))?;
        self.in_flight += 1;
        Ok(())
    }

    /// Waits for every write in flight; the first error.
    fn finish(&mut self) -> std::io::Result<()> {
        let mut first = Ok(());
        while self.in_flight > 0 {
            if let Err(e) = self.wait_one() {
                first = first.and(Err(e));
            }
        }
        first
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.to = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A file written at offsets (see the module). Pieces past the page cache are written by a
/// thread of their own while the next is filled; [`Direct::finish`] waits for them.
pub(crate) struct Direct {
    cached: File,
    device: Option<Device>,
    /// The piece being filled: for the device, or for the page cache (kept warm by this
    /// thread).
    filling: Option<Aligned>,
}

impl Direct {
    /// `cached` written through the page cache, and `direct` (the same file opened by
    /// [`reopen`]) past it.
    ///
    /// # Errors
    /// The file's descriptor cannot be duplicated.
    pub(crate) fn new(cached: File, direct: Option<File>) -> std::io::Result<Self> {
        let device = match direct {
            Some(d) => Some(Device::start(d, cached.try_clone()?)),
            None => None,
        };
        Ok(Self {
            cached,
            device,
            filling: None,
        })
    }

    /// Sets the file's length.
    pub(crate) fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.cached.set_len(len)
    }

    /// Bytes of one write.
    fn piece(&self) -> usize {
        if self.device.is_some() {
            DIRECT_PIECE
        } else {
            CACHED_PIECE
        }
    }

    /// The piece being filled (a whole piece's bytes).
    fn current(&mut self) -> std::io::Result<&mut [u8]> {
        let piece = self.piece();
        if self.filling.is_none() {
            self.filling = Some(match &mut self.device {
                Some(d) => d.buffer()?,
                None => Aligned::new(CACHED_PIECE),
            });
        }
        Ok(self
            .filling
            .as_mut()
            .map_or(&mut [][..], |b| b.get_mut(piece)))
    }

    /// Writes the piece's first `len` bytes at offset `at`: past the page cache when aligned.
    fn submit(&mut self, len: usize, at: u64) -> std::io::Result<()> {
        let aligned = at.is_multiple_of(ALIGN as u64) && len.is_multiple_of(ALIGN);
        match (&mut self.device, self.filling.take()) {
            (Some(d), Some(buf)) if aligned => d.send((buf, len, at)),
            (_, buf) => {
                self.filling = buf;
                self.write_cached(len, at)
            }
        }
    }

    /// Writes the piece's first `len` bytes at offset `at` through the page cache, and keeps
    /// them.
    fn write_cached(&mut self, len: usize, at: u64) -> std::io::Result<()> {
        let Some(buf) = &self.filling else {
            return Ok(());
        };
        self.cached
            .write_all_at(buf.get(len), at)
            .map_err(|e| std::io::Error::new(e.kind(), format!("at offset {at}: {e}")))
    }

    /// Writes `data` at offset `at`.
    ///
    /// # Errors
    /// This write's, or an earlier one's (each names its offset).
    pub(crate) fn write_at(&mut self, at: u64, data: &[u8]) -> std::io::Result<()> {
        let mut done = 0;
        while done < data.len() {
            let n = (data.len() - done).min(self.piece());
            self.current()?[..n].copy_from_slice(&data[done..done + n]);
            self.submit(n, at + done as u64)?;
            done += n;
        }
        Ok(())
    }

    /// Waits for the writes in flight.
    ///
    /// # Errors
    /// The first that failed.
    pub(crate) fn finish(&mut self) -> std::io::Result<()> {
        self.device.as_mut().map_or(Ok(()), Device::finish)
    }
}

/// Bytes in order into a file from its start (a new file, a block device), a piece at a time
/// (see [`Direct`]). A flush waits for the pieces in flight and writes what is buffered through
/// the page cache, keeping it, so that later pieces stay aligned.
pub(crate) struct InOrder {
    file: Direct,
    /// Offset of the piece being filled, and bytes in it.
    at: u64,
    len: usize,
}

impl InOrder {
    pub(crate) fn new(file: Direct) -> Self {
        Self {
            file,
            at: 0,
            len: 0,
        }
    }
}

impl Write for InOrder {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let piece = self.file.piece();
        let n = data.len().min(piece - self.len);
        let len = self.len;
        self.file.current()?[len..len + n].copy_from_slice(&data[..n]);
        self.len += n;
        if self.len == piece {
            self.file.submit(piece, self.at)?;
            self.at += piece as u64;
            self.len = 0;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.finish()?;
        self.file.write_cached(self.len, self.at)?;
        self.file.cached.flush()
    }
}
