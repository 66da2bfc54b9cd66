//! A source read from a stream (stdin, or any reader): a raw stream is read straight through; a
//! dynamic or differencing VHD stream in one pass when its layout allows (see
//! [`cairn_vhd::stream`]), else spooled to a file in the store's `tmp/` folder (removed when the
//! backup ends) and read from there. It is never held whole in memory.

use std::fs::File;
use std::io::{BufReader, Cursor, Read, Write};
use std::path::{Path, PathBuf};

use cairn_vhd::{StreamOpen, StreamVhd};

use crate::{Error, Format, Request, Result};

/// A stream to back up.
pub(crate) type Input = Box<dyn Read + Send>;

/// The stream, the bytes peeked at put back in front.
pub(crate) type Rest = std::io::Chain<Cursor<Vec<u8>>, Input>;

/// What a stream holds.
pub(crate) enum Stream {
    /// A raw image, or a fixed VHD: a fixed VHD's only footer is at its end, so the stream is
    /// read as raw and its last 512 bytes are held back until the end shows what they are.
    Raw(FixedTail<Rest>),
    /// A sparse VHD readable in one pass.
    Vhd(Box<StreamVhd<BufReader<Rest>>>),
    /// A VHD spooled to a file.
    Spooled(Spool),
}

/// A file spooled from a stream, removed on drop.
pub(crate) struct Spool(pub(crate) PathBuf);

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Reads up to `n` bytes from the stream.
fn peek(stdin: &mut Input, n: usize) -> Result<Vec<u8>> {
    let mut head = vec![0u8; n];
    let mut got = 0;
    while got < head.len() {
        match stdin.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(Error::Io {
                    path: "-".into(),
                    offset: got as u64,
                    what: "reading the stream",
                    source,
                });
            }
        }
    }
    head.truncate(got);
    Ok(head)
}

/// Looks at the front of a stream and decides how to read it.
pub(crate) fn open(
    mut stdin: Input,
    name: &str,
    req: &Request,
    spool_dir: &Path,
) -> Result<Stream> {
    let format = req.format;
    let head = peek(&mut stdin, 512)?;
    let sparse_vhd = head.starts_with(b"conectix");
    crate::open::check_not_foreign(name, &head, sparse_vhd, req)?;
    let is_vhd = match format {
        Format::Vhd => true,
        Format::Raw => false,
        Format::Auto => sparse_vhd,
    };
    let rest = Cursor::new(head).chain(stdin);
    if !sparse_vhd {
        // Raw, or a fixed VHD (its only footer is at the end): read straight through, the
        // footer found at the end is not disk data (refused with --format raw unless --force).
        let on_footer = match format {
            Format::Raw if req.force => OnFooter::Keep,
            Format::Raw => OnFooter::Refuse,
            Format::Auto | Format::Vhd => OnFooter::Strip,
        };
        let must = format == Format::Vhd;
        return Ok(Stream::Raw(FixedTail::new(rest, name, on_footer, must)));
    }
    if !is_vhd {
        return Ok(Stream::Raw(FixedTail::new(
            rest,
            name,
            OnFooter::Keep,
            false,
        )));
    }
    match StreamVhd::open(BufReader::with_capacity(1 << 20, rest)) {
        Ok(StreamOpen::OnePass(vhd)) => Ok(Stream::Vhd(vhd)),
        Ok(StreamOpen::NeedsSeek {
            consumed, reader, ..
        }) => spool(consumed, reader, spool_dir).map(Stream::Spooled),
        Err(e) => Err(Error::Vhd(e.in_file(name))),
    }
}

/// What to do with a fixed VHD footer found at the end of a raw stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnFooter {
    /// It is the footer of a fixed VHD: not disk data.
    Strip,
    /// Keep it as data (`--format raw --force`).
    Keep,
    /// Fail: the stream is a fixed VHD read with `--format raw`.
    Refuse,
}

/// A reader that holds back the last 512 bytes of its stream: at the end, a valid fixed-VHD
/// footer describing exactly the bytes before it is dropped (or refused), anything else is
/// passed on.
pub(crate) struct FixedTail<R> {
    inner: R,
    name: String,
    on_footer: OnFooter,
    /// The stream must be a fixed VHD (`--format vhd`).
    must: bool,
    held: Vec<u8>,
    out: Vec<u8>,
    out_at: usize,
    passed: u64,
    done: bool,
    /// Whether a fixed VHD footer was found and dropped.
    pub(crate) fixed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl<R: Read> FixedTail<R> {
    fn new(inner: R, name: &str, on_footer: OnFooter, must: bool) -> Self {
        Self {
            inner,
            name: name.to_owned(),
            on_footer,
            must,
            held: Vec::with_capacity(1 << 16),
            out: Vec::new(),
            out_at: 0,
            passed: 0,
            done: false,
            fixed: std::sync::Arc::default(),
        }
    }

    /// At the end: what the held bytes are.
    fn finish(&mut self) -> std::io::Result<()> {
        let footer = (self.held.len() == 512)
            .then(|| cairn_vhd::format::Footer::decode(&self.held, self.passed).ok())
            .flatten()
            .filter(|f| f.disk_type == cairn_vhd::DiskType::Fixed && f.current_size == self.passed);
        let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
        match (footer, self.on_footer) {
            (Some(_), OnFooter::Strip) => {
                self.fixed.store(true, std::sync::atomic::Ordering::Relaxed);
                self.held.clear();
            }
            (Some(_), OnFooter::Refuse) => {
                return Err(bad(format!(
                    "{}: the stream ends with the footer of a fixed VHD of {} bytes: it is a \
                     VHD, not a raw disk; read it with --format auto (or --format raw --force \
                     to store the footer as disk data)",
                    self.name, self.passed
                )));
            }
            // The cookie of a footer that does not decode, or describes other bytes: a fixed VHD
            // damaged, or cut short. Read as told only (`--format raw`).
            (None, OnFooter::Strip) if self.held.starts_with(b"conectix") => {
                let why = cairn_vhd::format::Footer::decode(&self.held, self.passed)
                    .err()
                    .map_or_else(
                        || "it does not describe the bytes before it".to_owned(),
                        |e| e.to_string(),
                    );
                return Err(bad(format!(
                    "{}: the stream ends with a damaged VHD footer ({why}): a fixed VHD damaged \
                     or cut short, not a raw disk; check it with `qemu-img info`; --format raw \
                     stores its bytes, footer included, as a raw disk",
                    self.name
                )));
            }
            (None, _) if self.must => {
                return Err(bad(format!(
                    "{}: --format vhd, but the stream is neither a dynamic VHD (no footer copy at \
                     its start) nor a fixed VHD (no valid fixed footer describing its {} bytes at \
                     its end)",
                    self.name, self.passed
                )));
            }
            _ => {}
        }
        self.out = std::mem::take(&mut self.held);
        self.out_at = 0;
        Ok(())
    }
}

impl<R: Read> Read for FixedTail<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.out_at < self.out.len() {
                let n = buf.len().min(self.out.len() - self.out_at);
                buf[..n].copy_from_slice(&self.out[self.out_at..self.out_at + n]);
                self.out_at += n;
                return Ok(n);
            }
            if self.done {
                return Ok(0);
            }
            let mut block = [0u8; 1 << 16];
            let n = match self.inner.read(&mut block) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                self.done = true;
                self.finish()?;
                continue;
            }
            self.held.extend_from_slice(&block[..n]);
            if self.held.len() > 512 {
                let keep = self.held.split_off(self.held.len() - 512);
                self.out = std::mem::replace(&mut self.held, keep);
                self.out_at = 0;
                self.passed += self.out.len() as u64;
            }
        }
    }
}

/// Writes `consumed` and the rest of `reader` to a new file in `dir`.
fn spool(consumed: Vec<u8>, mut reader: impl Read, dir: &Path) -> Result<Spool> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        offset: 0,
        what: "creating the spool folder",
        source,
    })?;
    let name = format!(
        "stdin-{}-{}.vhd",
        std::process::id(),
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
    );
    let spool = Spool(dir.join(name));
    let mut f = File::create(&spool.0).map_err(|source| Error::Io {
        path: spool.0.clone(),
        offset: 0,
        what: "creating the spool file",
        source,
    })?;
    f.write_all(&consumed)
        .and_then(|()| std::io::copy(&mut reader, &mut f).map(|_| ()))
        .map_err(|source| Error::Io {
            path: spool.0.clone(),
            offset: 0,
            what: "spooling stdin",
            source,
        })?;
    Ok(spool)
}
