//! Pack files: append-only files of self-describing chunk frames.
//!
//! ```text
//! pack header (32 bytes, frozen):
//!   0  8  magic "CAIRNPAK"
//!   8  4  format version (1), big-endian
//!  12  4  reserved, zero
//!  16 16  pack id
//! frame (56-byte header, then the stored bytes):
//!   0  4  magic "CFRM"
//!   4  4  CRC-32 of header bytes 8..56, big-endian
//!   8 32  chunk id (BLAKE3 of the plain bytes)
//!  40  4  plain length
//!  44  4  stored length
//!  48  1  codec (0 plain, 1 zstd)
//!  49  1  kind (0 data, 1 tree)
//!  50  6  reserved, zero
//! ```
//! A frame says everything the index says of its chunk, so the index can be rebuilt from the
//! packs. A pack cut short by a killed writer ends in a partial frame that [`scan`] reports and
//! stops at; nothing committed ever points there.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::chunk::{ChunkId, ChunkKind, Codec, EncodedChunk};
use crate::error::{Error, Result};
pub use crate::scan::{Gap, PackScan, Recovered, ScannedFrame, scan};

/// Pack file magic (frozen).
pub const PACK_MAGIC: [u8; 8] = *b"CAIRNPAK";
/// Pack format version written by this code.
pub const PACK_VERSION: u32 = 1;
/// Size of the pack header.
pub const PACK_HEADER_SIZE: u64 = 32;
/// Frame magic (frozen).
pub const FRAME_MAGIC: [u8; 4] = *b"CFRM";
/// Size of a frame header.
pub const FRAME_HEADER_SIZE: u64 = 56;
/// Largest stored length a frame may claim (a chunk is at most 2 MiB; trees are smaller).
pub const MAX_FRAME_PAYLOAD: u32 = 4 << 20;

/// A pack's id: 16 random bytes, shown as hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct PackId(pub [u8; 16]);

impl PackId {
    /// A new random id.
    #[must_use]
    pub fn random() -> Self {
        Self(*uuid::Uuid::new_v4().as_bytes())
    }

    /// Hex form, the pack's file name.
    #[must_use]
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 32 hex digits.
    #[must_use]
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 16];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Self(out))
    }

    /// `STORE/packs/ab/abcdef....pack`.
    #[must_use]
    pub fn path(&self, packs_dir: &Path) -> PathBuf {
        let h = self.to_hex();
        packs_dir.join(&h[..2]).join(format!("{h}.pack"))
    }
}

/// The header of one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// The chunk's id.
    pub id: ChunkId,
    /// Length of the plain chunk.
    pub plain_len: u32,
    /// Length of the stored bytes that follow.
    pub stored_len: u32,
    /// How they are stored.
    pub codec: Codec,
    /// What the chunk holds.
    pub kind: ChunkKind,
}

impl FrameHeader {
    /// The header of `chunk`'s frame.
    #[must_use]
    pub fn of(chunk: &EncodedChunk) -> Self {
        Self {
            id: chunk.id,
            plain_len: chunk.plain_len,
            stored_len: chunk.bytes.len() as u32,
            codec: chunk.codec,
            kind: chunk.kind,
        }
    }

    /// The header's bytes, as a frame starts with them.
    #[must_use]
    pub fn encode(&self) -> [u8; FRAME_HEADER_SIZE as usize] {
        let mut b = [0u8; FRAME_HEADER_SIZE as usize];
        b[0..4].copy_from_slice(&FRAME_MAGIC);
        b[8..40].copy_from_slice(&self.id.0);
        b[40..44].copy_from_slice(&self.plain_len.to_be_bytes());
        b[44..48].copy_from_slice(&self.stored_len.to_be_bytes());
        b[48] = self.codec.code();
        b[49] = self.kind.code();
        let crc = crc32fast::hash(&b[8..]);
        b[4..8].copy_from_slice(&crc.to_be_bytes());
        b
    }

    /// Parses a frame header; `None`-like errors say what is wrong.
    ///
    /// # Errors
    /// Wrong magic, CRC mismatch, unknown codec or kind, or a length out of range.
    pub fn decode(b: &[u8; FRAME_HEADER_SIZE as usize]) -> Result<Self, String> {
        if b[0..4] != FRAME_MAGIC {
            return Err(format!(
                "frame magic is {:02x?}, expected \"CFRM\"",
                &b[0..4]
            ));
        }
        let crc = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
        let got = crc32fast::hash(&b[8..]);
        if crc != got {
            return Err(format!(
                "frame header CRC is {crc:#010x}, the bytes give {got:#010x}"
            ));
        }
        let mut id = [0u8; 32];
        id.copy_from_slice(&b[8..40]);
        let plain_len = u32::from_be_bytes([b[40], b[41], b[42], b[43]]);
        let stored_len = u32::from_be_bytes([b[44], b[45], b[46], b[47]]);
        let codec = Codec::from_code(b[48]).ok_or_else(|| format!("unknown codec {}", b[48]))?;
        let kind =
            ChunkKind::from_code(b[49]).ok_or_else(|| format!("unknown chunk kind {}", b[49]))?;
        if plain_len > MAX_FRAME_PAYLOAD || stored_len > MAX_FRAME_PAYLOAD {
            return Err(format!(
                "frame lengths {plain_len}/{stored_len} exceed {MAX_FRAME_PAYLOAD}"
            ));
        }
        Ok(Self {
            id: ChunkId(id),
            plain_len,
            stored_len,
            codec,
            kind,
        })
    }
}

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
        let header = FrameHeader::of(chunk);
        let at = self.len;
        self.file
            .write_all(&header.encode())
            .map_err(Error::io(&self.path, "appending a frame"))?;
        self.file
            .write_all(&chunk.bytes)
            .map_err(Error::io(&self.path, "appending a frame"))?;
        self.len += FRAME_HEADER_SIZE + chunk.bytes.len() as u64;
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

/// Frame list magic (frozen).
pub const FRAME_LIST_MAGIC: [u8; 8] = *b"CAIRNFRL";
/// Bytes of a frame list before its entries.
const FRAME_LIST_HEADER: usize = 40;
/// Bytes of one entry: the frame's offset, then its header.
const FRAME_LIST_ENTRY: usize = 8 + FRAME_HEADER_SIZE as usize;

/// A pack's frame list: every frame's offset and header, so that a pack kept where reading it
/// costs a request (a bucket) is indexed from a few kilobytes, not its data.
///
/// ```text
///  0  8  magic "CAIRNFRL"
///  8  4  version (1), big-endian
/// 12  4  frames, big-endian
/// 16 16  pack id
/// 32  8  pack length, big-endian
/// 40     per frame: offset (8, big-endian), frame header (56, as in the pack)
/// end 4  CRC-32 of everything before, big-endian
/// ```
#[must_use]
pub fn encode_frame_list(id: PackId, len: u64, frames: &[ScannedFrame]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_LIST_HEADER + frames.len() * FRAME_LIST_ENTRY + 4);
    out.extend_from_slice(&FRAME_LIST_MAGIC);
    out.extend_from_slice(&1u32.to_be_bytes());
    out.extend_from_slice(&(frames.len() as u32).to_be_bytes());
    out.extend_from_slice(&id.0);
    out.extend_from_slice(&len.to_be_bytes());
    for f in frames {
        out.extend_from_slice(&f.offset.to_be_bytes());
        out.extend_from_slice(&f.header.encode());
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// Reads a frame list ([`encode_frame_list`]) back as a scan of its pack.
///
/// # Errors
/// What is wrong with it (magic, version, CRC, a frame header, offsets out of order or past
/// the pack's end).
pub fn decode_frame_list(b: &[u8]) -> Result<PackScan, String> {
    if b.len() < FRAME_LIST_HEADER + 4 || b[0..8] != FRAME_LIST_MAGIC {
        return Err("not a cairn frame list".into());
    }
    let (body, crc) = b.split_at(b.len() - 4);
    let want = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32fast::hash(body) != want {
        return Err("frame list CRC does not match".into());
    }
    let be32 = |at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let version = be32(8);
    if version != 1 {
        return Err(format!("frame list version {version}, expected 1"));
    }
    let count = be32(12) as usize;
    if body.len() != FRAME_LIST_HEADER + count * FRAME_LIST_ENTRY {
        return Err(format!("{} bytes for {count} frames", body.len()));
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&b[16..32]);
    let mut l = [0u8; 8];
    l.copy_from_slice(&b[32..40]);
    let len = u64::from_be_bytes(l);
    let mut frames = Vec::with_capacity(count);
    let mut end = PACK_HEADER_SIZE;
    for e in body[FRAME_LIST_HEADER..].chunks_exact(FRAME_LIST_ENTRY) {
        let mut o = [0u8; 8];
        o.copy_from_slice(&e[..8]);
        let offset = u64::from_be_bytes(o);
        let mut hb = [0u8; FRAME_HEADER_SIZE as usize];
        hb.copy_from_slice(&e[8..]);
        let header = FrameHeader::decode(&hb).map_err(|w| format!("frame at {offset}: {w}"))?;
        if offset != end {
            return Err(format!("frame at {offset}, the previous one ends at {end}"));
        }
        end = offset + FRAME_HEADER_SIZE + u64::from(header.stored_len);
        frames.push(ScannedFrame { offset, header });
    }
    if end != len {
        return Err(format!("frames end at {end}, the pack is {len} bytes"));
    }
    Ok(PackScan {
        id: PackId(id),
        frames,
        len,
        header_damage: None,
        gaps: Vec::new(),
        recovered: Vec::new(),
    })
}

/// The frame at the front of `buf` (read from `name` at `offset`): its header and stored
/// bytes, which `buf` must hold whole.
///
/// # Errors
/// A malformed frame or a buffer too short for it.
pub fn parse_frame(buf: &[u8], stored: &mut Vec<u8>) -> Result<FrameHeader, String> {
    let hb: &[u8; FRAME_HEADER_SIZE as usize] = buf
        .get(..FRAME_HEADER_SIZE as usize)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("{} bytes, a frame header is {FRAME_HEADER_SIZE}", buf.len()))?;
    let header = FrameHeader::decode(hb)?;
    let start = FRAME_HEADER_SIZE as usize;
    let bytes = buf
        .get(start..start + header.stored_len as usize)
        .ok_or_else(|| {
            format!(
                "the frame says {} stored bytes, {} were read",
                header.stored_len,
                buf.len() - start
            )
        })?;
    stored.clear();
    stored.extend_from_slice(bytes);
    Ok(header)
}

/// Fsyncs a folder so that a new or renamed entry in it is durable.
///
/// # Errors
/// I/O errors.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io(dir, "syncing the folder"))
}

/// Reads one frame at `offset` of an open pack: its header and stored bytes.
///
/// # Errors
/// I/O errors and malformed frames, naming the pack and offset.
pub fn read_frame(file: &File, path: &Path, offset: u64) -> Result<(FrameHeader, Vec<u8>)> {
    let mut bytes = Vec::new();
    let header = read_frame_into(file, path, offset, &mut bytes)?;
    Ok((header, bytes))
}

/// As [`read_frame`], into a buffer the caller reuses (resized to the stored length).
///
/// # Errors
/// I/O errors and malformed frames, naming the pack and offset.
pub fn read_frame_into(
    file: &File,
    path: &Path,
    offset: u64,
    bytes: &mut Vec<u8>,
) -> Result<FrameHeader> {
    let mut hb = [0u8; FRAME_HEADER_SIZE as usize];
    file.read_exact_at(&mut hb, offset).map_err(Error::io(
        path,
        format!("reading the frame at offset {offset}"),
    ))?;
    let header = FrameHeader::decode(&hb).map_err(|what| Error::BadPack {
        path: path.to_path_buf(),
        offset,
        what,
    })?;
    bytes.resize(header.stored_len as usize, 0);
    file.read_exact_at(bytes, offset + FRAME_HEADER_SIZE)
        .map_err(Error::io(
            path,
            format!("reading the frame at offset {offset}"),
        ))?;
    Ok(header)
}

/// Appends `chunk` to `out` as a frame (header and stored bytes), the form chunks take in a
/// pack and on the wire of `cairn serve`.
pub fn encode_frame(chunk: &EncodedChunk, out: &mut Vec<u8>) {
    out.extend_from_slice(&FrameHeader::of(chunk).encode());
    out.extend_from_slice(&chunk.bytes);
}

/// Splits `body` into the frames it holds, at most `max` of them. Only the framing is checked
/// here (magic, header CRC, lengths within bounds and within the body); the caller checks each
/// chunk against its id.
///
/// # Errors
/// What is wrong, and at which byte offset of the body.
pub fn decode_frames(body: &[u8], max: usize) -> Result<Vec<EncodedChunk>, String> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < body.len() {
        if out.len() == max {
            return Err(format!("more than {max} chunks in one body"));
        }
        let Some(hb) = body
            .get(at..at + FRAME_HEADER_SIZE as usize)
            .and_then(|b| <&[u8; FRAME_HEADER_SIZE as usize]>::try_from(b).ok())
        else {
            return Err(format!(
                "offset {at}: {} bytes left, a frame header is {FRAME_HEADER_SIZE}",
                body.len() - at
            ));
        };
        let h = FrameHeader::decode(hb).map_err(|e| format!("offset {at}: {e}"))?;
        let start = at + FRAME_HEADER_SIZE as usize;
        let Some(bytes) = body.get(start..start + h.stored_len as usize) else {
            return Err(format!(
                "offset {at}: the frame says {} stored bytes, the body holds {}",
                h.stored_len,
                body.len() - start
            ));
        };
        out.push(EncodedChunk {
            id: h.id,
            kind: h.kind,
            codec: h.codec,
            plain_len: h.plain_len,
            bytes: bytes.to_vec(),
        });
        at = start + h.stored_len as usize;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::encode;

    fn chunk(seed: u8, len: usize, kind: ChunkKind) -> EncodedChunk {
        let data: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(seed) ^ (i / 251) as u8)
            .collect();
        encode(&data, kind, 1)
    }

    /// A pack of a few frames of every codec and kind; returns its path, the chunks and the
    /// offset each frame starts at.
    fn sample_pack(dir: &Path) -> (PathBuf, Vec<EncodedChunk>, Vec<u64>) {
        let chunks = vec![
            chunk(3, 70_000, ChunkKind::Data),
            chunk(0, 4096, ChunkKind::Data), // compresses well: zstd
            chunk(7, 1000, ChunkKind::Tree),
            encode(&[0xAB; 1][..], ChunkKind::Data, 1), // too small to compress: plain
        ];
        let mut w = PackWriter::create(dir).expect("create");
        let offsets: Vec<u64> = chunks
            .iter()
            .map(|c| w.append(c).expect("append"))
            .collect();
        w.sync().expect("sync");
        (w.path.clone(), chunks, offsets)
    }

    #[test]
    fn frames_round_trip_through_scan_and_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, chunks, offsets) = sample_pack(dir.path());
        assert!(chunks.iter().any(|c| c.codec == Codec::Plain));
        assert!(chunks.iter().any(|c| c.codec == Codec::Zstd));
        let scan = scan(&path).expect("scan");
        assert!(scan.is_whole());
        assert_eq!(scan.frames.len(), chunks.len());
        let file = File::open(&path).expect("open");
        for ((f, c), at) in scan.frames.iter().zip(&chunks).zip(&offsets) {
            assert_eq!(f.offset, *at);
            assert_eq!(
                (
                    f.header.id,
                    f.header.plain_len,
                    f.header.codec,
                    f.header.kind
                ),
                (c.id, c.plain_len, c.codec, c.kind)
            );
            let (h, stored) = read_frame(&file, &path, *at).expect("read");
            assert_eq!(h, f.header);
            assert_eq!(stored, c.bytes);
            crate::chunk::decode(&c.id, h.codec, h.plain_len, &stored).expect("decodes to its id");
        }
    }

    #[test]
    fn a_frame_list_says_what_a_scan_of_its_pack_finds_and_damage_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let chunks = [
            chunk(3, 70_000, ChunkKind::Data),
            chunk(7, 1000, ChunkKind::Tree),
        ];
        let mut w = PackWriter::create(dir.path()).expect("create");
        for c in &chunks {
            w.append(c).expect("append");
        }
        w.sync().expect("sync");
        let list = w.frame_list();
        let scanned = scan(w.path()).expect("scan");
        let listed = decode_frame_list(&list).expect("decodes");
        assert_eq!((listed.id, listed.len), (scanned.id, scanned.len));
        let key = |s: &PackScan| -> Vec<(u64, FrameHeader)> {
            s.frames.iter().map(|f| (f.offset, f.header)).collect()
        };
        assert_eq!(key(&listed), key(&scanned));
        for i in 0..list.len() {
            let mut bad = list.clone();
            bad[i] ^= 0x04;
            assert!(decode_frame_list(&bad).is_err(), "byte {i} flipped");
        }
        assert!(decode_frame_list(&list[..list.len() - 1]).is_err());
        let bytes = std::fs::read(w.path()).expect("read");
        let mut stored = Vec::new();
        let at = listed.frames[1].offset as usize;
        let h = parse_frame(&bytes[at..], &mut stored).expect("parses");
        assert_eq!(
            (h.id, stored.as_slice()),
            (chunks[1].id, &chunks[1].bytes[..])
        );
        assert!(parse_frame(&bytes[at..bytes.len() - 1], &mut stored).is_err());
    }

    #[test]
    fn frames_on_the_wire_round_trip_and_bad_ones_are_named() {
        let a = crate::chunk::encode(&[7u8; 5000], ChunkKind::Data, 3);
        let b = crate::chunk::encode(b"tree-ish bytes", ChunkKind::Tree, 3);
        let mut body = Vec::new();
        encode_frame(&a, &mut body);
        encode_frame(&b, &mut body);
        let got = decode_frames(&body, 10).expect("decodes");
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].id, got[0].bytes.clone()), (a.id, a.bytes.clone()));
        assert_eq!((got[1].id, got[1].kind), (b.id, ChunkKind::Tree));
        assert!(
            decode_frames(&body, 1)
                .expect_err("too many")
                .contains("more than 1")
        );
        let cut = decode_frames(&body[..body.len() - 1], 10).expect_err("cut");
        assert!(cut.contains("stored bytes"), "{cut}");
        let mut bad = body.clone();
        bad[10] ^= 1;
        assert!(decode_frames(&bad, 10).expect_err("crc").contains("CRC"));
    }

    proptest::proptest! {
        #[test]
        fn any_body_decodes_or_is_refused(body in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let _ = decode_frames(&body, 8);
        }

        #[test]
        fn mutated_bodies_never_panic(at in 0usize..200, byte in proptest::num::u8::ANY) {
            let mut body = Vec::new();
            encode_frame(&crate::chunk::encode(&[1u8; 100], ChunkKind::Data, 1), &mut body);
            encode_frame(&crate::chunk::encode(&[2u8; 30], ChunkKind::Data, 1), &mut body);
            let i = at % body.len();
            body[i] = byte;
            let _ = decode_frames(&body, 8);
        }
    }
}
