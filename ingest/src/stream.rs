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
    /// A raw image.
    Raw(Rest),
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
    if !is_vhd {
        return Ok(Stream::Raw(rest));
    }
    if !sparse_vhd {
        // A fixed VHD keeps its only footer at the end.
        return spool(Vec::new(), rest, spool_dir).map(Stream::Spooled);
    }
    match StreamVhd::open(BufReader::with_capacity(1 << 20, rest)) {
        Ok(StreamOpen::OnePass(vhd)) => Ok(Stream::Vhd(vhd)),
        Ok(StreamOpen::NeedsSeek {
            consumed, reader, ..
        }) => spool(consumed, reader, spool_dir).map(Stream::Spooled),
        Err(e) => Err(Error::Vhd(e.in_file(name))),
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
