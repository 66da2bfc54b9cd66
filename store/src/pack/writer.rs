//! Writing a pack: frames appended, the file synced when sealed.

use crate::chunk::EncodedChunk;
use crate::error::{Error, Result};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{FRAME_HEADER_SIZE, PACK_HEADER_SIZE, PACK_MAGIC, PACK_VERSION, PackId, sync_dir};
use super::{FrameHeader, ScannedFrame, encode_frame_list};

/// Appends frames to a new pack file.
#[derive(Debug)]
pub struct PackWriter {
    id: PackId,
    path: PathBuf,
    file: std::io::BufWriter<File>,
    len: u64,
    chunks: u64,
    /// Every frame appended, for the pack's frame list ([`PackWriter::frame_list`]).
    frames: Vec<ScannedFrame>,
}

impl PackWriter {
    /// Creates a new, empty pack in `packs_dir`.
    ///
    /// # Errors
    /// I/O errors creating the file.
    pub fn create(packs_dir: &Path) -> Result<Self> {
        let id = PackId::random();
        let path = id.path(packs_dir);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(Error::io(dir, "creating the pack folder"))?;
        }
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(Error::io(&path, "creating a pack"))?;
        let mut w = Self {
            id,
            path,
            file: std::io::BufWriter::with_capacity(1 << 20, file),
            len: 0,
            chunks: 0,
            frames: Vec::new(),
        };
        let mut header = [0u8; PACK_HEADER_SIZE as usize];
        header[0..8].copy_from_slice(&PACK_MAGIC);
        header[8..12].copy_from_slice(&PACK_VERSION.to_be_bytes());
        header[16..32].copy_from_slice(&id.0);
        w.file
            .write_all(&header)
            .map_err(Error::io(&w.path, "writing the pack header"))?;
        w.len = PACK_HEADER_SIZE;
        Ok(w)
    }

    /// Appends a chunk; returns the offset of its frame.
    ///
    /// # Errors
    /// I/O errors.
    pub fn append(&mut self, chunk: &EncodedChunk) -> Result<u64> {
        self.append_frame(&FrameHeader::of(chunk), &chunk.bytes)
    }

    /// Appends a frame: `header` of the stored `bytes`, its lengths and CRC of them already
    /// checked (a frame read from a pack or an upload); returns its offset.
    ///
    /// # Errors
    /// A header that does not describe `bytes`' length; I/O errors.
    pub fn append_frame(&mut self, header: &FrameHeader, bytes: &[u8]) -> Result<u64> {
        if header.stored_len as usize != bytes.len() {
            return Err(Error::Internal(format!(
                "a frame header of {} stored bytes appended with {}",
                header.stored_len,
                bytes.len()
            )));
        }
        let header = FrameHeader {
            payload_crc: header.payload_crc.or_else(|| Some(crc32fast::hash(bytes))),
            ..*header
        };
        let at = self.len;
        self.file
            .write_all(&header.encode())
            .map_err(Error::io(&self.path, "appending a frame"))?;
        self.file
            .write_all(bytes)
            .map_err(Error::io(&self.path, "appending a frame"))?;
        self.len += FRAME_HEADER_SIZE + bytes.len() as u64;
        self.chunks += 1;
        self.frames.push(ScannedFrame { offset: at, header });
        Ok(at)
    }

    /// Flushes what was appended to the file (not synced: for a pack that is made durable
    /// elsewhere, uploaded to a bucket).
    ///
    /// # Errors
    /// I/O errors.
    pub fn flush(&mut self) -> Result<()> {
        self.file
            .flush()
            .map_err(Error::io(&self.path, "flushing a pack"))
    }

    /// Flushes and fsyncs the pack and its folder: what was appended is durable.
    ///
    /// # Errors
    /// I/O errors.
    pub fn sync(&mut self) -> Result<()> {
        self.file
            .flush()
            .map_err(Error::io(&self.path, "flushing a pack"))?;
        self.file
            .get_ref()
            .sync_all()
            .map_err(Error::io(&self.path, "syncing a pack"))?;
        if let Some(dir) = self.path.parent() {
            sync_dir(dir)?;
        }
        Ok(())
    }

    /// The pack's id.
    #[must_use]
    pub fn id(&self) -> PackId {
        self.id
    }

    /// Bytes written so far.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether no chunk was appended.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.chunks == 0
    }

    /// The pack file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every frame appended, in order.
    #[must_use]
    pub fn frames(&self) -> &[ScannedFrame] {
        &self.frames
    }

    /// Frames appended.
    #[must_use]
    pub fn chunks(&self) -> u64 {
        self.chunks
    }

    /// The pack's frame list ([`encode_frame_list`]): what an index rebuild reads of a pack
    /// kept in a bucket instead of its data.
    #[must_use]
    pub fn frame_list(&self) -> Vec<u8> {
        encode_frame_list(self.id, self.len, &self.frames)
    }
}
