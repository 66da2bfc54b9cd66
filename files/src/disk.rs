//! What volumes are read from ([`DiskRead`]: a point's disk in cairn, bytes in memory in a
//! test or a fuzz target), and a volume's bytes ([`Slice`]: a partition in one piece, a logical
//! volume in several).

use std::sync::Arc;

use crate::{Error, Result};

/// What volumes are read from: a point's disk (cairn's `PointDisk`), or bytes in memory (an
/// image in a test or a fuzz target). Reads are checked by whoever implements it.
pub trait DiskRead: Send + Sync {
    /// Its size in bytes.
    fn size(&self) -> u64;

    /// Fills `buf` from byte `offset`.
    ///
    /// # Errors
    /// A read past the end ([`Error::Outside`]); the store's errors.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
}

impl DiskRead for Vec<u8> {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let bytes = usize::try_from(offset)
            .ok()
            .and_then(|o| self.get(o..o.checked_add(buf.len())?))
            .ok_or(Error::Outside {
                offset,
                len: buf.len() as u64,
                size: self.len() as u64,
            })?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}

/// A disk image file, read where it lies (a raw image).
pub struct ImageFile {
    file: std::fs::File,
    name: String,
    size: u64,
}

impl ImageFile {
    /// Opens the raw image at `path`.
    ///
    /// # Errors
    /// A file that cannot be opened or whose size cannot be read.
    pub fn open(path: &std::path::Path) -> std::io::Result<Self> {
        let file = std::fs::File::open(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            file,
            name: path.display().to_string(),
            size,
        })
    }
}

impl DiskRead for ImageFile {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > self.size)
        {
            return Err(Error::Outside {
                offset,
                len: buf.len() as u64,
                size: self.size,
            });
        }
        std::os::unix::fs::FileExt::read_exact_at(&self.file, buf, offset).map_err(|e| {
            Error::Read {
                disk: self.name.clone(),
                offset,
                source: Box::new(e),
            }
        })
    }
}

/// A run of a disk's bytes that a volume holds: `len` bytes at `disk` on the disk are the
/// volume's bytes from `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// Where in the volume.
    pub at: u64,
    /// Where on the disk.
    pub disk: u64,
    /// How long.
    pub len: u64,
}

/// A volume of a disk, read from its start: a partition (one piece), or a logical volume
/// whose extents lie in several places (pieces in order, each after the last).
#[derive(Clone)]
pub struct Slice {
    disk: Arc<dyn DiskRead>,
    pieces: Arc<[Piece]>,
    len: u64,
    /// Where `std::io::Read` goes on from.
    pos: u64,
}

impl Slice {
    /// `len` bytes of `disk` from `start`.
    #[must_use]
    pub fn new(disk: Arc<dyn DiskRead>, start: u64, len: u64) -> Self {
        Self::of_pieces(
            disk,
            vec![Piece {
                at: 0,
                disk: start,
                len,
            }],
        )
    }

    /// The volume made of `pieces` (in order, each starting where the last ended).
    #[must_use]
    pub fn of_pieces(disk: Arc<dyn DiskRead>, pieces: Vec<Piece>) -> Self {
        let len = pieces.last().map_or(0, |p| p.at + p.len);
        Self {
            disk,
            pieces: pieces.into(),
            len,
            pos: 0,
        }
    }

    /// Its length.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it holds no byte.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Fills `buf` from `offset` of the slice.
    ///
    /// # Errors
    /// A read past the slice's end, or the disk's errors.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|e| e > self.len)
        {
            return Err(Error::Outside {
                offset,
                len: buf.len() as u64,
                size: self.len,
            });
        }
        let mut done = 0usize;
        // The piece holding `offset`, then the ones after it.
        let first = self.pieces.partition_point(|p| p.at + p.len <= offset);
        for p in &self.pieces[first..] {
            if done == buf.len() {
                break;
            }
            let at = offset + done as u64;
            let within = at - p.at;
            let n = ((p.len - within) as usize).min(buf.len() - done);
            self.disk
                .read_at(p.disk + within, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }
}

impl ext4_view::Ext4Read for Slice {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        self.read_at(start_byte, dst).map_err(|e| Box::new(e) as _)
    }
}

impl std::io::Read for Slice {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (self.len.saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        self.read_at(self.pos, &mut buf[..n])
            .map_err(std::io::Error::other)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl std::io::Seek for Slice {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        let new = match to {
            std::io::SeekFrom::Start(n) => Some(n),
            std::io::SeekFrom::End(d) => self.len.checked_add_signed(d),
            std::io::SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| std::io::Error::other("a seek before the start"))?;
        Ok(self.pos)
    }
}
