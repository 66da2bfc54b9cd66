//! Reading a dynamic or differencing VHD front to back from a stream (a pipe, stdin), in one
//! pass and without seeking.
//!
//! [`StreamVhd::open`] reads the footer copy, the header and the BAT from the front of the
//! stream and validates them as [`crate::Vhd::open`] validates a file: cookies, checksums,
//! versions, block size, a BAT large enough for the disk, and blocks that overlap neither the
//! metadata nor each other. A stream can be read in one pass only when the metadata comes first
//! and the BAT lists the blocks in the order they lie in the stream (Xen Orchestra, qemu and
//! cairn write them so); any other valid layout is handed back as [`StreamOpen::NeedsSeek`]
//! with every byte consumed, for the caller to spool to a file. Reads then go forward only,
//! and [`StreamVhd::finish`] checks that the stream ends with the footer.
#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use std::io::Read;

use crate::error::{Error, Result};
use crate::format::{
    BAT_UNALLOCATED, FOOTER_SIZE, Footer, HEADER_SIZE, Header, SECTOR_SIZE, bitmap_size,
};
use crate::reader::BlockState;

/// The largest metadata prefix (footer copy, header, BAT) read into memory from a stream:
/// 64 MiB holds the BAT of a 2 TiB disk at 32 KiB blocks. Larger metadata is spooled.
pub const MAX_STREAM_METADATA: u64 = 64 << 20;

/// What [`StreamVhd::open`] found at the front of a stream.
#[derive(Debug)]
pub enum StreamOpen<R> {
    /// The stream can be read in one pass.
    OnePass(Box<StreamVhd<R>>),
    /// The metadata is valid so far, but the layout needs seeking (a block before the BAT, blocks
    /// out of BAT order, metadata after the first block, a fixed disk): spool the stream to a
    /// file, starting with `consumed`, then the rest of `reader`.
    NeedsSeek {
        /// Every byte read from the stream so far, in order.
        consumed: Vec<u8>,
        /// The rest of the stream.
        reader: R,
        /// Why one pass is not possible.
        reason: String,
    },
}

/// A dynamic or differencing VHD read front to back from a stream.
#[derive(Debug)]
pub struct StreamVhd<R> {
    inner: R,
    /// Bytes consumed from the stream so far.
    pos: u64,
    footer: Footer,
    header: Header,
    bat: Vec<u32>,
    /// The sector bitmap last read, and its block.
    bitmap: Option<(u32, Vec<u8>)>,
}

fn truncated(offset: u64, what: &str, needed: u64) -> Error {
    Error::Truncated {
        offset,
        what: format!("{what} (the stream ended)"),
        needed,
        file_len: offset,
    }
}

/// Reads exactly `buf.len()` bytes, or fails naming the stream offset.
fn read_full<R: Read>(r: &mut R, pos: u64, buf: &mut [u8], what: &str) -> Result<()> {
    let mut done = 0usize;
    while let Some(rest) = buf.get_mut(done..) {
        if rest.is_empty() {
            break;
        }
        match r.read(rest) {
            Ok(0) => {
                let at = pos.saturating_add(done as u64);
                return Err(truncated(at, what, (rest.len()) as u64));
            }
            Ok(n) => done = done.saturating_add(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(Error::Io {
                    offset: pos.saturating_add(done as u64),
                    what: "reading the stream",
                    source,
                });
            }
        }
    }
    Ok(())
}

impl<R: Read> StreamVhd<R> {
    /// Reads and validates the metadata at the front of `inner`, which must start at the VHD's
    /// first byte.
    ///
    /// # Errors
    /// A stream that is not a valid VHD (bad cookie, checksum, version or block size, a BAT too
    /// small for the disk or overlapping the header, blocks overlapping the metadata or each
    /// other), or that ends inside its metadata; every error names the stream offset.
    pub fn open(mut inner: R) -> Result<StreamOpen<R>> {
        let mut meta = vec![0u8; FOOTER_SIZE];
        read_full(&mut inner, 0, &mut meta, "the footer copy")?;
        let footer = Footer::decode(&meta, 0).map_err(Error::of_footer_copy)?;
        let needs_seek = |consumed, inner, reason: String| {
            Ok(StreamOpen::NeedsSeek {
                consumed,
                reader: inner,
                reason,
            })
        };
        if !footer.disk_type.is_sparse() {
            let reason = format!(
                "a {} disk keeps its footer at the end",
                footer.disk_type.name()
            );
            return needs_seek(meta, inner, reason);
        }
        let (hoff, hend) = match header_place(&footer)? {
            Ok(place) => place,
            Err(reason) => return needs_seek(meta, inner, reason),
        };
        fill(&mut meta, &mut inner, hend, "the dynamic disk header")?;
        let mut hb = [0u8; HEADER_SIZE];
        hb.copy_from_slice(
            meta.get(hoff as usize..hend as usize)
                .unwrap_or(&[0; HEADER_SIZE]),
        );
        let header = Header::decode(&hb, hoff)?;
        let (toff, tend) = match bat_place(&footer, &header, hoff, hend)? {
            Ok(place) => place,
            Err(reason) => return needs_seek(meta, inner, reason),
        };
        fill(&mut meta, &mut inner, tend, "the BAT")?;
        let bat: Vec<u32> = meta
            .get(toff as usize..tend as usize)
            .unwrap_or_default()
            .chunks_exact(4)
            .map(|c| <[u8; 4]>::try_from(c).map_or(BAT_UNALLOCATED, u32::from_be_bytes))
            .collect();
        let layout = Layout {
            blocks: footer.current_size.div_ceil(u64::from(header.block_size)),
            span: header
                .bitmap_size()
                .saturating_add(u64::from(header.block_size)),
            header: (hoff, hend),
            table: (toff, tend),
        };
        if let Err(reason) = layout.blocks_in_order(&bat)? {
            return needs_seek(meta, inner, reason);
        }
        let pos = meta.len() as u64;
        Ok(StreamOpen::OnePass(Box::new(Self {
            inner,
            pos,
            footer,
            header,
            bat,
            bitmap: None,
        })))
    }

    /// Skips forward to stream offset `to`.
    fn skip_to(&mut self, to: u64, what: &str) -> Result<()> {
        let Some(gap) = to.checked_sub(self.pos) else {
            return Err(Error::Usage(format!(
                "stream offset {to} lies behind the position {}: streams are read forward only",
                self.pos
            )));
        };
        let n = std::io::copy(&mut (&mut self.inner).take(gap), &mut std::io::sink())
            .map_err(Error::io(self.pos, "reading the stream"))?;
        self.pos = self.pos.saturating_add(n);
        if n != gap {
            return Err(truncated(self.pos, what, gap.saturating_sub(n)));
        }
        Ok(())
    }

    fn read_here(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        read_full(&mut self.inner, self.pos, buf, what)?;
        self.pos = self.pos.saturating_add(buf.len() as u64);
        Ok(())
    }

    /// Reads the sector bitmap of block `index` (the most significant bit of byte 0 is the
    /// block's sector 0), or `None` for an unallocated block. Reading it again before moving on
    /// costs nothing.
    ///
    /// # Errors
    /// The stream ends, or the bitmap lies behind what was already read.
    pub fn read_bitmap(&mut self, index: u32) -> Result<Option<&[u8]>> {
        let BlockState::Allocated { offset } = self.block_state(index)? else {
            return Ok(None);
        };
        if self.bitmap.as_ref().is_none_or(|(b, _)| *b != index) {
            self.skip_to(offset, "a sector bitmap")?;
            let len = (u64::from(self.header.block_size) / SECTOR_SIZE).div_ceil(8);
            let mut bitmap = vec![0u8; len as usize];
            self.read_here(&mut bitmap, "a sector bitmap")?;
            self.bitmap = Some((index, bitmap));
        }
        Ok(self.bitmap.as_ref().map(|(_, b)| b.as_slice()))
    }

    /// Reads `buf.len()` bytes of block `index`'s data starting `at` bytes into the block.
    /// Returns `false` (buffer untouched) for an unallocated block.
    ///
    /// # Errors
    /// The stream ends, a range past the block's end, or data behind what was already read.
    pub fn read_block_data(&mut self, index: u32, at: u64, buf: &mut [u8]) -> Result<bool> {
        let BlockState::Allocated { offset } = self.block_state(index)? else {
            return Ok(false);
        };
        let bs = u64::from(self.header.block_size);
        if at.checked_add(buf.len() as u64).is_none_or(|end| end > bs) {
            return Err(Error::Usage(format!(
                "read of {} bytes at {at} runs past a block of {bs} bytes",
                buf.len()
            )));
        }
        let start = offset
            .saturating_add(bitmap_size(self.header.block_size))
            .saturating_add(at);
        self.skip_to(start, "block data")?;
        self.read_here(buf, "block data")?;
        Ok(true)
    }

    /// Where block `index` lies in the stream.
    ///
    /// # Errors
    /// [`Error::Usage`] for an index past the disk's blocks.
    pub fn block_state(&self, index: u32) -> Result<BlockState> {
        if index >= self.block_count() {
            return Err(Error::Usage(format!(
                "block {index} is past the disk's {} blocks",
                self.block_count()
            )));
        }
        Ok(match self.bat.get(index as usize) {
            None | Some(&BAT_UNALLOCATED) => BlockState::Unallocated,
            Some(&s) => BlockState::Allocated {
                offset: u64::from(s).saturating_mul(SECTOR_SIZE),
            },
        })
    }

    /// Reads the rest of the stream and checks that it ends with a copy of the footer.
    ///
    /// # Errors
    /// The stream fails, or does not end with the footer (truncated or damaged).
    pub fn finish(&mut self) -> Result<u64> {
        // Keep only the last 512 bytes: the tail may be long (blocks past the disk's end).
        let mut tail: Vec<u8> = Vec::with_capacity(2 * FOOTER_SIZE);
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = match self.inner.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(Error::Io {
                        offset: self.pos,
                        what: "reading the stream",
                        source,
                    });
                }
            };
            if n == 0 {
                break;
            }
            self.pos = self.pos.saturating_add(n as u64);
            tail.extend_from_slice(buf.get(..n).unwrap_or_default());
            if tail.len() > FOOTER_SIZE {
                tail.drain(..tail.len().saturating_sub(FOOTER_SIZE));
            }
        }
        let at = self.pos.saturating_sub(FOOTER_SIZE as u64);
        let ok =
            tail.len() == FOOTER_SIZE && Footer::decode(&tail, at).is_ok_and(|f| f == self.footer);
        if !ok {
            return Err(Error::Invalid {
                offset: at,
                what: "the stream does not end with the VHD's footer (truncated or damaged)".into(),
            });
        }
        Ok(self.pos)
    }
}

impl<R> StreamVhd<R> {
    /// The footer (its copy at the front of the stream).
    #[must_use]
    pub fn footer(&self) -> &Footer {
        &self.footer
    }

    /// The dynamic disk header.
    #[must_use]
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The disk's size in bytes.
    #[must_use]
    pub fn disk_size(&self) -> u64 {
        self.footer.current_size
    }

    /// Bytes per block.
    #[must_use]
    pub fn block_size(&self) -> u32 {
        self.header.block_size
    }

    /// Blocks covering the disk.
    #[must_use]
    pub fn block_count(&self) -> u32 {
        self.footer
            .current_size
            .div_ceil(u64::from(self.header.block_size))
            .min(u64::from(u32::MAX)) as u32
    }

    /// Bytes consumed from the stream so far.
    #[must_use]
    pub fn position(&self) -> u64 {
        self.pos
    }
}

/// What of a stream's metadata is read so far grows to `to` bytes (read from `inner`).
fn fill<R: Read>(meta: &mut Vec<u8>, inner: &mut R, to: u64, what: &str) -> Result<()> {
    let have = meta.len() as u64;
    if to <= have {
        return Ok(());
    }
    meta.resize(to as usize, 0);
    read_full(
        inner,
        have,
        meta.get_mut(have as usize..).unwrap_or_default(),
        what,
    )
}

/// Where the dynamic disk header lies (`start..end`), or why a stream cannot reach it in one
/// pass (`Err` inside: it lies far into the stream).
fn header_place(footer: &Footer) -> Result<std::result::Result<(u64, u64), String>> {
    let hoff = footer.data_offset;
    let hend = hoff.checked_add(HEADER_SIZE as u64).ok_or(Error::Invalid {
        offset: 16,
        what: format!("data offset {hoff} is past any stream"),
    })?;
    if hoff < FOOTER_SIZE as u64 {
        return Err(Error::Invalid {
            offset: 16,
            what: format!("data offset {hoff} puts the header over the footer copy"),
        });
    }
    if hend > MAX_STREAM_METADATA {
        return Ok(Err(format!(
            "the header lies at offset {hoff}, far into the stream"
        )));
    }
    Ok(Ok((hoff, hend)))
}

/// Where the BAT lies (`start..end`), checked against the disk and the header, or why a stream
/// cannot reach it in one pass.
fn bat_place(
    footer: &Footer,
    header: &Header,
    hoff: u64,
    hend: u64,
) -> Result<std::result::Result<(u64, u64), String>> {
    let bs = u64::from(header.block_size);
    let blocks = footer.current_size.div_ceil(bs);
    if u64::from(header.max_table_entries) < blocks {
        return Err(Error::Invalid {
            offset: hoff.saturating_add(28),
            what: format!(
                "max table entries is {}, but a disk of {} bytes in blocks of {bs} needs {blocks}",
                header.max_table_entries, footer.current_size
            ),
        });
    }
    let toff = header.table_offset;
    let tlen = u64::from(header.max_table_entries).saturating_mul(4);
    let tend = toff.saturating_add(tlen);
    if toff < FOOTER_SIZE as u64 || (toff < hend && hoff < tend) {
        return Err(Error::Invalid {
            offset: hoff.saturating_add(16),
            what: format!("BAT at {toff}..{tend} overlaps the header or the footer copy"),
        });
    }
    if tend > MAX_STREAM_METADATA {
        return Ok(Err(format!(
            "the BAT ends at offset {tend}, more metadata than a stream is read with"
        )));
    }
    Ok(Ok((toff, tend)))
}

/// Where a dynamic VHD's metadata lies, and its blocks' extent.
struct Layout {
    /// Blocks of the disk.
    blocks: u64,
    /// Bytes of a block with its bitmap.
    span: u64,
    /// The header's bytes.
    header: (u64, u64),
    /// The BAT's bytes.
    table: (u64, u64),
}

impl Layout {
    /// Blocks of the disk (entries past it are never read) must follow the metadata, in BAT
    /// order, without overlapping: a block over the metadata is an error; one out of order
    /// means the stream cannot be read in one pass (`Err` inside, why).
    fn blocks_in_order(&self, bat: &[u32]) -> Result<std::result::Result<(), String>> {
        let (hoff, hend) = self.header;
        let (toff, tend) = self.table;
        let mut last = hend.max(tend).next_multiple_of(SECTOR_SIZE);
        let mut prev: Option<usize> = None;
        for (i, &sector) in bat.iter().enumerate().take(self.blocks as usize) {
            if sector == BAT_UNALLOCATED {
                continue;
            }
            let entry_at = toff.saturating_add((i as u64).saturating_mul(4));
            let start = u64::from(sector).saturating_mul(SECTOR_SIZE);
            let stop = start.saturating_add(self.span);
            let over_meta = [(0, FOOTER_SIZE as u64), (hoff, hend), (toff, tend)]
                .iter()
                .any(|&(a, b)| start < b && a < stop);
            if over_meta {
                return Err(Error::Invalid {
                    offset: entry_at,
                    what: format!(
                        "BAT entry {i} puts the block at bytes {start}..{stop}, over the metadata"
                    ),
                });
            }
            if start < last {
                return Ok(Err(match prev {
                    Some(p) => format!(
                        "BAT entry {i} puts its block at byte {start}, before the end of block {p}'s"
                    ),
                    None => format!(
                        "BAT entry {i} puts its block at byte {start}, before the BAT's end"
                    ),
                }));
            }
            last = stop;
            prev = Some(i);
        }
        Ok(Ok(()))
    }
}

#[cfg(test)]
#[expect(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    reason = "tests build and patch VHDs of a known layout; a panic there is a failed test"
)]
mod tests {
    use super::*;
    use crate::writer::{DiskSpec, write_sparse};
    use std::io::Cursor;

    /// A dynamic VHD of 3 blocks of 4 KiB, the middle one unallocated.
    fn sample() -> Vec<u8> {
        let spec = DiskSpec {
            size: 3 * 4096,
            block_size: 4096,
            uuid: uuid::Uuid::from_u128(7),
            timestamp: 1,
        };
        let mut out = Vec::new();
        write_sparse(&mut out, &spec, None, &[true, false, true], |i, buf| {
            buf.fill(i as u8 + 1);
            Ok(())
        })
        .expect("write");
        out
    }

    /// Rewrites the header at 512 with `change` applied (checksum recomputed).
    fn with_header(bytes: &[u8], change: impl Fn(&mut Header)) -> Vec<u8> {
        let mut b = bytes.to_vec();
        let mut raw = [0u8; HEADER_SIZE];
        raw.copy_from_slice(&b[512..512 + HEADER_SIZE]);
        let mut h = Header::decode(&raw, 512).expect("header");
        change(&mut h);
        b[512..512 + HEADER_SIZE].copy_from_slice(&h.encode());
        b
    }

    #[test]
    fn reads_blocks_forward_and_checks_the_closing_footer() {
        let bytes = sample();
        let StreamOpen::OnePass(mut v) = StreamVhd::open(Cursor::new(&bytes[..])).expect("open")
        else {
            panic!("a cairn-written VHD is read in one pass");
        };
        let mut buf = [0u8; 4096];
        for (i, want) in [(0u32, Some(1u8)), (1, None), (2, Some(3))] {
            let held = v.read_bitmap(i).expect("bitmap").map(<[u8]>::to_vec);
            assert_eq!(held.is_some(), want.is_some());
            let read = v.read_block_data(i, 0, &mut buf).expect("data");
            assert_eq!(read, want.is_some());
            if let Some(w) = want {
                assert!(buf.iter().all(|&x| x == w));
            }
        }
        assert_eq!(v.finish().expect("footer"), bytes.len() as u64);
        // Going back is refused, not a wrong read.
        assert!(v.read_block_data(0, 0, &mut buf).is_err());
    }

    #[test]
    fn a_table_offset_near_the_end_of_u64_is_an_error_not_an_overflow() {
        for offset in [u64::MAX - 511, u64::MAX / 2 + 1, 1 << 62] {
            let bad = with_header(&sample(), |h| {
                h.table_offset = offset;
                h.max_table_entries = u32::MAX;
            });
            let r = StreamVhd::open(Cursor::new(&bad[..]));
            assert!(
                !matches!(r, Ok(StreamOpen::OnePass(_))),
                "table offset {offset} accepted"
            );
        }
    }

    #[test]
    fn blocks_out_of_bat_order_need_seeking_and_keep_every_byte() {
        let mut bytes = sample();
        // Swap the BAT entries of blocks 0 and 2 (at 1536): both valid, out of stream order.
        let (a, b) = (1536usize, 1536 + 8);
        let (ea, eb) = (bytes[a..a + 4].to_vec(), bytes[b..b + 4].to_vec());
        bytes[a..a + 4].copy_from_slice(&eb);
        bytes[b..b + 4].copy_from_slice(&ea);
        match StreamVhd::open(Cursor::new(bytes.clone())).expect("open") {
            StreamOpen::NeedsSeek {
                consumed,
                mut reader,
                reason,
            } => {
                assert!(reason.contains("BAT entry"), "{reason}");
                let mut all = consumed;
                reader.read_to_end(&mut all).expect("rest");
                assert_eq!(all, bytes, "the bytes handed back are the stream");
            }
            StreamOpen::OnePass(_) => panic!("blocks out of order read in one pass"),
        }
    }

    #[test]
    fn a_truncated_stream_names_where_it_ended() {
        let bytes = sample();
        let cut = &bytes[..bytes.len() - 700];
        let StreamOpen::OnePass(mut v) = StreamVhd::open(Cursor::new(cut)).expect("open") else {
            panic!("one pass");
        };
        let mut buf = [0u8; 4096];
        let mut err = None;
        for i in 0..3 {
            let r = match v.read_bitmap(i) {
                Ok(_) => v.read_block_data(i, 0, &mut buf).map(|_| ()),
                Err(e) => Err(e),
            };
            if let Err(e) = r {
                err = Some(e);
                break;
            }
        }
        let e = match err {
            Some(e) => e,
            None => v.finish().expect_err("a cut stream has no closing footer"),
        };
        assert!(e.to_string().contains("offset"), "{e}");
    }
}
