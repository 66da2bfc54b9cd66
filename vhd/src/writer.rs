//! Writing VHDs: fixed, dynamic and differencing, front to back.
//!
//! Layout of a sparse disk written here (every offset known before the first byte is written,
//! so the output can be a pipe):
//!
//! ```text
//! 0          footer copy (512)
//! 512        dynamic disk header (1024)
//! 1536       BAT, max table entries × 4, padded to a sector
//! ...        parent locator data (differencing only): W2ku, then W2ru, one sector each or more
//! ...        allocated blocks in index order: sector bitmap (padded to a sector), then data
//! end - 512  footer
//! ```
//!
//! Every bit of an allocated block's bitmap is set: libvhdi reads clear bits of a dynamic disk
//! as zeros, and Xen Orchestra's vhd-lib merges whole blocks and ignores bitmaps, so a
//! differencing disk must hold whole blocks.

use std::io::Write;

use uuid::Uuid;

use crate::error::{Error, Result};
use crate::format::{
    BAT_UNALLOCATED, DiskType, FOOTER_SIZE, Footer, HEADER_SIZE, Header, MAX_BLOCK_SIZE,
    MAX_DISK_SIZE, MIN_BLOCK_SIZE, PLATFORM_W2KU, PLATFORM_W2RU, ParentLocator, SECTOR_SIZE,
    bitmap_size,
};

/// What the footer of a new disk says.
#[derive(Debug, Clone)]
pub struct DiskSpec {
    /// Size of the disk in bytes, a multiple of 512.
    pub size: u64,
    /// Block size of a sparse disk, a power of two (2 MiB is what every tool expects).
    pub block_size: u32,
    /// The new disk's UUID.
    pub uuid: Uuid,
    /// Creation time, seconds since 2000-01-01.
    pub timestamp: u32,
}

/// The parent of a new differencing disk.
#[derive(Debug, Clone)]
pub struct ParentSpec {
    /// The parent footer's UUID.
    pub uuid: Uuid,
    /// The parent's modification time, seconds since 2000-01-01.
    pub timestamp: u32,
    /// The parent's path relative to the child's folder, with `/` separators: it goes into the
    /// header's parent unicode name (vhd-lib resolves it there) and the `W2ru` locator.
    pub relative_path: String,
    /// The parent's absolute path, for the `W2ku` locator; empty to leave it out.
    pub absolute_path: String,
}

/// Where each part of a sparse disk goes.
#[derive(Debug, Clone)]
struct Layout {
    entries: u32,
    table_offset: u64,
    locators: Vec<(ParentLocator, Vec<u8>)>,
    data_start: u64,
    block_span: u64,
}

impl Layout {
    /// The layout of a sparse VHD whose blocks are stored as `allocated` says (one flag per
    /// block).
    fn for_blocks(
        spec: &DiskSpec,
        parent: Option<&ParentSpec>,
        allocated: &[bool],
    ) -> Result<Self> {
        let layout = Self::new(spec, parent)?;
        if allocated.len() != layout.entries as usize {
            return Err(Error::Usage(format!(
                "{} allocation flags for {} blocks",
                allocated.len(),
                layout.entries
            )));
        }
        Ok(layout)
    }

    fn new(spec: &DiskSpec, parent: Option<&ParentSpec>) -> Result<Self> {
        validate(spec)?;
        let entries =
            u32::try_from(spec.size.div_ceil(u64::from(spec.block_size))).map_err(|_| {
                Error::Usage(format!("a disk of {} bytes has too many blocks", spec.size))
            })?;
        let table_offset = (FOOTER_SIZE + HEADER_SIZE) as u64;
        let mut next = table_offset + (u64::from(entries) * 4).div_ceil(SECTOR_SIZE) * SECTOR_SIZE;
        let mut locators = Vec::new();
        if let Some(p) = parent {
            let mut add = |code: u32, text: &str| {
                let data: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
                let space = (data.len() as u64).max(1).div_ceil(SECTOR_SIZE) * SECTOR_SIZE;
                let loc = ParentLocator {
                    platform_code: code,
                    // In sectors, as the spec says and vhd-lib reads it.
                    data_space: (space / SECTOR_SIZE) as u32,
                    data_length: data.len() as u32,
                    data_offset: next,
                };
                next += space;
                locators.push((loc, data));
            };
            if !p.absolute_path.is_empty() {
                add(PLATFORM_W2KU, &p.absolute_path);
            }
            add(
                PLATFORM_W2RU,
                &format!(".\\{}", p.relative_path.replace('/', "\\")),
            );
        }
        Ok(Self {
            entries,
            table_offset,
            locators,
            data_start: next,
            block_span: bitmap_size(spec.block_size) + u64::from(spec.block_size),
        })
    }

    fn footer(&self, spec: &DiskSpec, parent: Option<&ParentSpec>) -> Footer {
        let kind = if parent.is_some() {
            DiskType::Differencing
        } else {
            DiskType::Dynamic
        };
        Footer::new(kind, spec.size, spec.uuid, spec.timestamp)
    }

    fn header(&self, spec: &DiskSpec, parent: Option<&ParentSpec>) -> Header {
        let mut h = Header::new(self.table_offset, self.entries, spec.block_size);
        if let Some(p) = parent {
            h.parent_uuid = p.uuid;
            h.parent_timestamp = p.timestamp;
            h.parent_name = p.relative_path.clone();
            for (slot, (loc, _)) in h.locators.iter_mut().zip(&self.locators) {
                *slot = *loc;
            }
        }
        h
    }

    fn bitmap(&self, spec: &DiskSpec) -> Vec<u8> {
        let mut bitmap = vec![0u8; bitmap_size(spec.block_size) as usize];
        let bits = (u64::from(spec.block_size) / SECTOR_SIZE) as usize;
        bitmap[..bits / 8].fill(0xFF);
        if !bits.is_multiple_of(8) {
            bitmap[bits / 8] = 0xFF << (8 - bits % 8);
        }
        bitmap
    }
}

fn validate(spec: &DiskSpec) -> Result<()> {
    if !spec.size.is_multiple_of(SECTOR_SIZE) || spec.size == 0 {
        return Err(Error::Usage(format!(
            "disk size {} is not a positive multiple of 512",
            spec.size
        )));
    }
    if spec.size > MAX_DISK_SIZE {
        return Err(Error::Usage(format!(
            "a disk of {} bytes is larger than a VHD holds (2040 GiB, {MAX_DISK_SIZE} bytes): \
             write it as a raw image",
            spec.size
        )));
    }
    if !spec.block_size.is_power_of_two()
        || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&spec.block_size)
    {
        return Err(Error::Usage(format!(
            "block size {} is not a power of two from 512 to 256 MiB",
            spec.block_size
        )));
    }
    Ok(())
}

/// Counts what goes through a writer so errors can name the output offset.
struct Counted<W> {
    inner: W,
    pos: u64,
}

impl<W: Write> Counted<W> {
    fn put(&mut self, bytes: &[u8], what: &'static str) -> Result<()> {
        self.inner
            .write_all(bytes)
            .map_err(Error::io(self.pos, what))?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    fn zeros(&mut self, mut n: u64, what: &'static str) -> Result<()> {
        const ZEROS: [u8; 4096] = [0; 4096];
        while n > 0 {
            let k = n.min(ZEROS.len() as u64) as usize;
            self.put(&ZEROS[..k], what)?;
            n -= k as u64;
        }
        Ok(())
    }
}

/// The bytes [`write_sparse`] writes for these arguments: known before the first byte, for an
/// upload that announces its length (an HTTP PUT with `Content-Length`).
///
/// # Errors
/// As [`write_sparse`]: a spec that is not valid, an `allocated` of the wrong length.
pub fn sparse_size(
    spec: &DiskSpec,
    parent: Option<&ParentSpec>,
    allocated: &[bool],
) -> Result<u64> {
    let layout = Layout::for_blocks(spec, parent, allocated)?;
    let stored = allocated.iter().filter(|a| **a).count() as u64;
    Ok(layout.data_start + stored * layout.block_span + FOOTER_SIZE as u64)
}

/// Writes a dynamic (`parent` is `None`) or differencing VHD to `out`, front to back.
///
/// `allocated[i]` says whether block `i` is stored; `read_block(i, buf)` fills the data of each
/// stored block, in increasing order (`buf` is one block; bytes past the disk's size must be
/// zero). Returns the bytes written.
///
/// # Errors
/// A spec that is not valid, an `allocated` of the wrong length, an error of `read_block`, or a
/// write error (with the output offset).
pub fn write_sparse<W: Write>(
    out: W,
    spec: &DiskSpec,
    parent: Option<&ParentSpec>,
    allocated: &[bool],
    mut read_block: impl FnMut(u32, &mut [u8]) -> std::io::Result<()>,
) -> Result<u64> {
    let layout = Layout::for_blocks(spec, parent, allocated)?;
    let mut out = Counted { inner: out, pos: 0 };
    let footer = layout.footer(spec, parent).encode();
    out.put(&footer, "writing the footer copy")?;
    out.put(&layout.header(spec, parent).encode(), "writing the header")?;
    let mut bat = Vec::with_capacity(layout.entries as usize * 4);
    let mut next = layout.data_start;
    for &a in allocated {
        let entry = if a {
            let sector = u32::try_from(next / SECTOR_SIZE)
                .map_err(|_| Error::Usage("the disk is too large for 32-bit BAT entries".into()))?;
            next += layout.block_span;
            sector
        } else {
            BAT_UNALLOCATED
        };
        bat.extend_from_slice(&entry.to_be_bytes());
    }
    bat.resize(
        bat.len().div_ceil(SECTOR_SIZE as usize) * SECTOR_SIZE as usize,
        0xFF,
    );
    out.put(&bat, "writing the BAT")?;
    for (loc, data) in &layout.locators {
        out.put(data, "writing a parent locator")?;
        out.zeros(
            u64::from(loc.data_space) * SECTOR_SIZE - data.len() as u64,
            "writing a parent locator",
        )?;
    }
    debug_assert_eq!(out.pos, layout.data_start);
    let bitmap = layout.bitmap(spec);
    let mut buf = vec![0u8; spec.block_size as usize];
    for (i, _) in allocated.iter().enumerate().filter(|(_, a)| **a) {
        read_block(i as u32, &mut buf)
            .map_err(Error::io(out.pos, "reading the data of a block to write"))?;
        out.put(&bitmap, "writing a sector bitmap")?;
        out.put(&buf, "writing block data")?;
    }
    out.put(&footer, "writing the footer")?;
    out.inner.flush().map_err(Error::io(out.pos, "flushing"))?;
    Ok(out.pos)
}

/// Writes a fixed VHD: the disk's data then the footer. `read_block(i, buf)` fills block `i` of
/// `spec.block_size` bytes (the last one is cut to the disk's size). Returns the bytes written.
///
/// # Errors
/// As [`write_sparse`].
pub fn write_fixed<W: Write>(
    out: W,
    spec: &DiskSpec,
    mut read_block: impl FnMut(u32, &mut [u8]) -> std::io::Result<()>,
) -> Result<u64> {
    validate(spec)?;
    let mut out = Counted { inner: out, pos: 0 };
    let bs = u64::from(spec.block_size);
    let mut buf = vec![0u8; spec.block_size as usize];
    let blocks = spec.size.div_ceil(bs);
    for i in 0..blocks {
        read_block(i as u32, &mut buf)
            .map_err(Error::io(out.pos, "reading the data of a block to write"))?;
        let n = (spec.size - i * bs).min(bs) as usize;
        out.put(&buf[..n], "writing disk data")?;
    }
    let footer = Footer::new(DiskType::Fixed, spec.size, spec.uuid, spec.timestamp);
    out.put(&footer.encode(), "writing the footer")?;
    out.inner.flush().map_err(Error::io(out.pos, "flushing"))?;
    Ok(out.pos)
}

/// Seconds since 2000-01-01 for a Unix time, clamped to the field's range.
#[must_use]
pub fn vhd_timestamp(unix_seconds: i64) -> u32 {
    (unix_seconds - crate::format::VHD_EPOCH_UNIX).clamp(0, i64::from(u32::MAX)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_size_announced_is_the_size_written() {
        let spec = DiskSpec {
            size: 40 << 20,
            block_size: 2 << 20,
            uuid: uuid::Uuid::from_bytes([7; 16]),
            timestamp: 1,
        };
        let parent = ParentSpec {
            uuid: uuid::Uuid::from_bytes([9; 16]),
            timestamp: 0,
            relative_path: "base-of-the-chain.vhd".into(),
            absolute_path: String::new(),
        };
        let allocated: Vec<bool> = (0..20).map(|i| i % 3 == 0).collect();
        for p in [None, Some(&parent)] {
            let mut out = Vec::new();
            let n = write_sparse(&mut out, &spec, p, &allocated, |_, b| {
                b.fill(1);
                Ok(())
            })
            .expect("written");
            assert_eq!(n, out.len() as u64);
            assert_eq!(sparse_size(&spec, p, &allocated).expect("size"), n);
        }
        assert!(sparse_size(&spec, None, &allocated[1..]).is_err());
    }
}
