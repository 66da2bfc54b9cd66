//! `cairn vhd to-raw`: a VHD (or a chain) as the raw disk it stands for, to a file or stdout.

use super::open_chain;
use crate::new_file::NewFile;
use crate::progress;
use anyhow::{Context, Result, bail};
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// A VHD on stdin: read in one pass when its layout allows, else spooled to a temporary file
/// (removed after) and read from there. A differencing VHD on stdin has no parents to read.
pub(super) fn to_raw_from_stdin(out: &Path, force: bool) -> Result<i32> {
    use cairn_vhd::{BlockState, DiskType, StreamOpen, StreamVhd};
    let spool_and_convert = |consumed: &[u8], mut rest: Box<dyn Read>| -> Result<i32> {
        let mut spool = tempfile::NamedTempFile::new().context("creating a spool file")?;
        spool.write_all(consumed).context("spooling stdin")?;
        std::io::copy(&mut rest, &mut spool).context("spooling stdin")?;
        to_raw(spool.path(), out, force)
    };
    let mut stdin = std::io::stdin().lock();
    let mut head = Vec::with_capacity(512);
    (&mut stdin)
        .take(512)
        .read_to_end(&mut head)
        .context("reading stdin")?;
    if !head.starts_with(b"conectix") {
        // A fixed VHD keeps its only footer at the end.
        return spool_and_convert(&head, Box::new(stdin));
    }
    let input: Box<dyn Read> = Box::new(std::io::Cursor::new(head).chain(stdin));
    let mut vhd = match StreamVhd::open(std::io::BufReader::with_capacity(1 << 20, input))
        .map_err(|e| anyhow::Error::new(e.in_file("-")))?
    {
        StreamOpen::OnePass(v) => v,
        StreamOpen::NeedsSeek {
            consumed, reader, ..
        } => return spool_and_convert(&consumed, Box::new(reader)),
    };
    if vhd.footer().disk_type == DiskType::Differencing {
        bail!("-: a differencing VHD on stdin comes without its parents; give its path instead");
    }
    let size = vhd.disk_size();
    let bs = u64::from(vhd.block_size());
    let bar = progress::bytes(size, "to-raw");
    let mut buf = vec![0u8; bs as usize];
    let mut sink = open_raw_sink(out, &[], force)?;
    let to_stdout = out == Path::new("-");
    for i in 0..vhd.block_count() {
        let start = u64::from(i) * bs;
        let len = (size - start).min(bs) as usize;
        let present = vhd.block_state(i)? != BlockState::Unallocated;
        buf.fill(0);
        if present {
            vhd.read_block_data(i, 0, &mut buf)?;
        }
        if present && !cairn_store::chunk::is_zero(&buf[..len]) || to_stdout {
            sink.seek(SeekFrom::Start(start))
                .with_context(|| format!("seeking {} to {start}", out.display()))?;
            sink.write_all(&buf[..len])
                .with_context(|| format!("writing {} at offset {start}", out.display()))?;
        }
        bar.inc(len as u64);
    }
    vhd.finish()
        .map_err(|e| anyhow::Error::new(e.in_file("-")))?;
    sink.finish(size)
        .with_context(|| format!("finishing {}", out.display()))?;
    bar.finish_and_clear();
    Ok(0)
}

pub(super) fn open_raw_sink(
    out: &Path,
    inputs: &[&Path],
    force: bool,
) -> Result<Box<dyn WriteSeek>> {
    Ok(if out == Path::new("-") {
        Box::new(StdoutSink(BufWriter::with_capacity(
            1 << 20,
            std::io::stdout().lock(),
        )))
    } else {
        Box::new(RawFile(Some(NewFile::create(out, inputs, force)?)))
    })
}

pub(super) fn to_raw(top: &Path, out: &Path, force: bool) -> Result<i32> {
    if top == Path::new("-") {
        return to_raw_from_stdin(out, force);
    }
    let mut chain = open_chain(top)?;
    let size = chain.disk_size();
    let bs = u64::from(chain.block_size());
    let bar = progress::bytes(size, "to-raw");
    let mut buf = vec![0u8; bs as usize];
    let to_stdout = out == Path::new("-");
    let files: Vec<PathBuf> = chain.levels().iter().map(|l| l.path.clone()).collect();
    let inputs: Vec<&Path> = std::iter::once(top)
        .chain(files.iter().map(PathBuf::as_path))
        .collect();
    let mut sink = open_raw_sink(out, &inputs, force)?;
    for i in 0..chain.block_count() {
        let start = u64::from(i) * bs;
        let len = (size - start).min(bs) as usize;
        let present = chain.block_present(i)?;
        if present {
            chain.read_block(i, &mut buf)?;
        }
        if present && !cairn_store::chunk::is_zero(&buf[..len]) || to_stdout {
            if !present {
                buf.fill(0);
            }
            sink.seek(SeekFrom::Start(start))
                .with_context(|| format!("seeking {} to {start}", out.display()))?;
            sink.write_all(&buf[..len])
                .with_context(|| format!("writing {} at offset {start}", out.display()))?;
        }
        bar.inc(len as u64);
    }
    sink.finish(size)
        .with_context(|| format!("finishing {}", out.display()))?;
    bar.finish_and_clear();
    Ok(0)
}

pub(super) trait WriteSeek: Write + Seek {
    fn finish(&mut self, size: u64) -> std::io::Result<()>;
}

/// A raw image written to a new file (see [`NewFile`]): sized, synced and renamed into place
/// by `finish`.
pub(super) struct RawFile(Option<NewFile>);

impl RawFile {
    fn file(&mut self) -> std::io::Result<&mut File> {
        self.0
            .as_mut()
            .map(NewFile::file)
            .ok_or_else(|| std::io::Error::other("the file is finished"))
    }
}

impl Write for RawFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file()?.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file()?.flush()
    }
}

impl Seek for RawFile {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.file()?.seek(pos)
    }
}

impl WriteSeek for RawFile {
    fn finish(&mut self, size: u64) -> std::io::Result<()> {
        let f = self.file()?;
        if f.metadata()?.is_file() {
            f.set_len(size)?;
        }
        if let Some(done) = self.0.take() {
            done.finish().map_err(std::io::Error::other)?;
        }
        Ok(())
    }
}

/// stdout written strictly in order; seeks are only allowed to the current position.
pub(super) struct StdoutSink<W: Write>(W);

impl<W: Write> Write for StdoutSink<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl<W: Write> Seek for StdoutSink<W> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        match pos {
            SeekFrom::Start(p) => Ok(p),
            _ => Err(std::io::Error::other("stdout cannot seek")),
        }
    }
}

impl<W: Write> WriteSeek for StdoutSink<W> {
    fn finish(&mut self, _size: u64) -> std::io::Result<()> {
        self.0.flush()
    }
}
