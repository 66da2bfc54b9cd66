//! Reading a pack front to back, past damage: every frame that can be found is kept.
//!
//! A scan follows the frames one header at a time, without reading their payloads. Damage does
//! not end it:
//! - a pack header that is not cairn's (overwritten, zeroed) is reported and the frames after
//!   it are read as usual (the pack's id is its file name);
//! - a frame header that does not decode (a flipped byte, an overwritten stretch) is reported,
//!   and the scan looks for the next frame: every frame starts with its own magic and carries
//!   a checksum of its header, so a frame found that way is one (a false find needs a 32-bit
//!   checksum to match by chance);
//! - a pack cut short (a killed writer, a truncated file) ends in a frame that runs past the
//!   end.
//!
//! The bytes no frame accounts for are the scan's [`Gap`]s. When a gap starts with a damaged
//! frame header and holds one frame's worth of bytes, its body is tried as a chunk (zstd, else
//! plain): the chunk's id is the hash of its plain bytes, so a body that was intact gives back
//! the very chunk the header named ([`Recovered`]; the caller stores it afresh and keeps it
//! only where a point names that id). A body that was damaged gives an id no point names.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::chunk::{ChunkId, ChunkKind, Codec, EncodedChunk};
use crate::error::{Error, Result};
use crate::pack::{
    FRAME_HEADER_SIZE, FRAME_MAGIC, FrameHeader, MAX_FRAME_PAYLOAD, PACK_HEADER_SIZE, PACK_MAGIC,
    PackId,
};

/// Bytes read at a time while looking for the next frame past damage.
const WINDOW: usize = 1 << 20;

/// One frame found by [`scan`].
#[derive(Debug, Clone, Copy)]
pub struct ScannedFrame {
    /// Offset of the frame header.
    pub offset: u64,
    /// Its header.
    pub header: FrameHeader,
}

/// A stretch of a pack no whole frame accounts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// What was found at `start`.
    pub why: String,
}

/// A chunk read back from a frame whose header is damaged (see the module doc).
#[derive(Debug, Clone)]
pub struct Recovered {
    /// Offset of the damaged frame.
    pub offset: u64,
    /// The chunk its body holds.
    pub chunk: EncodedChunk,
}

/// What [`scan`] found in one pack.
#[derive(Debug, Default)]
pub struct PackScan {
    /// The pack's id (its file name; its header's when the name is not an id).
    pub id: PackId,
    /// Every whole, well-formed frame, in order.
    pub frames: Vec<ScannedFrame>,
    /// Bytes of the file.
    pub len: u64,
    /// What is wrong with the pack header, when something is (the frames are read all the
    /// same).
    pub header_damage: Option<String>,
    /// The stretches no frame accounts for, in order: a torn tail after a killed writer, a
    /// truncated pack, damaged frame headers.
    pub gaps: Vec<Gap>,
    /// Chunks read back from frames whose header is damaged.
    pub recovered: Vec<Recovered>,
}

impl PackScan {
    /// Whether every byte of the pack belongs to a frame that was read.
    #[must_use]
    pub fn is_whole(&self) -> bool {
        self.gaps.is_empty()
    }

    /// Bytes that no frame accounts for.
    #[must_use]
    pub fn unaccounted(&self) -> u64 {
        self.gaps.iter().map(|g| g.end - g.start).sum()
    }

    /// One line naming what is wrong, or `None` for a whole pack with a good header.
    #[must_use]
    pub fn damage(&self) -> Option<String> {
        let mut parts: Vec<String> = self.header_damage.iter().cloned().collect();
        parts.extend(
            self.gaps
                .iter()
                .map(|g| format!("bytes {}..{}: {}", g.start, g.end, g.why)),
        );
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// Reads every frame header of a pack, front to back (payloads are skipped, not read), past
/// damage (see the module doc).
///
/// # Errors
/// I/O errors, and a file whose name is not a pack id and whose header is not a pack's.
pub fn scan(path: &Path) -> Result<PackScan> {
    let file = File::open(path).map_err(Error::io(path, "opening a pack"))?;
    let len = file
        .metadata()
        .map_err(Error::io(path, "reading pack metadata"))?
        .len();
    let (id, header_damage) = pack_identity(path, &file)?;
    let mut out = PackScan {
        id,
        len,
        header_damage,
        ..PackScan::default()
    };
    let io = |e: std::io::Error| Error::io(path, "scanning a pack")(e);
    let mut r = BufReader::with_capacity(1 << 16, &file);
    let mut at = PACK_HEADER_SIZE.min(len);
    r.seek(SeekFrom::Start(at)).map_err(io)?;
    while at < len {
        if len - at < FRAME_HEADER_SIZE {
            out.gaps.push(Gap {
                start: at,
                end: len,
                why: format!("{} bytes of a torn frame header at the end", len - at),
            });
            break;
        }
        let mut hb = [0u8; FRAME_HEADER_SIZE as usize];
        r.read_exact(&mut hb).map_err(io)?;
        match FrameHeader::decode(&hb) {
            Ok(h) => {
                let end = at + FRAME_HEADER_SIZE + u64::from(h.stored_len);
                if end > len {
                    out.gaps.push(Gap {
                        start: at,
                        end: len,
                        why: format!(
                            "a frame of {} bytes runs past the end of the pack ({} bytes are \
                             there: a torn tail, or the pack was cut short)",
                            h.stored_len,
                            len - at - FRAME_HEADER_SIZE
                        ),
                    });
                    break;
                }
                out.frames.push(ScannedFrame {
                    offset: at,
                    header: h,
                });
                r.seek(SeekFrom::Current(i64::from(h.stored_len)))
                    .map_err(io)?;
                at = end;
            }
            Err(why) => {
                at = past_damage(&file, at, len, &why.to_string(), &mut out).map_err(io)?;
                r.seek(SeekFrom::Start(at)).map_err(io)?;
            }
        }
    }
    Ok(out)
}

/// The pack's id (its name, or its header's when the name is not one) and what is wrong with
/// its header.
fn pack_identity(path: &Path, file: &File) -> Result<(PackId, Option<String>)> {
    let named = path
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(PackId::from_hex);
    let mut header = [0u8; PACK_HEADER_SIZE as usize];
    let got = read_up_to(file, &mut header, 0).map_err(Error::io(path, "scanning a pack"))?;
    let header_damage = if got < header.len() {
        Some(format!("{got} bytes, a pack header is {PACK_HEADER_SIZE}"))
    } else if header[0..8] != PACK_MAGIC {
        Some(format!("the pack header's magic is {:02x?}", &header[0..8]))
    } else {
        let version = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
        crate::format::PACK.check(version).err()
    };
    let id = match (named, &header_damage) {
        (Some(id), _) => id,
        (None, None) => {
            let mut id = [0u8; 16];
            id.copy_from_slice(&header[16..32]);
            PackId(id)
        }
        (None, Some(what)) => {
            return Err(Error::BadPack {
                path: path.into(),
                offset: 0,
                what: format!("not a cairn pack ({what}) and its name is not a pack id"),
            });
        }
    };
    Ok((id, header_damage))
}

/// A damaged frame header at `at`: the gap to the next frame (or the end) is recorded, with
/// the chunk read back from under it if one is; returns where scanning goes on.
fn past_damage(
    file: &File,
    at: u64,
    len: u64,
    why: &str,
    out: &mut PackScan,
) -> std::io::Result<u64> {
    let end = next_frame(file, at + 1, len)?.unwrap_or(len);
    out.gaps.push(Gap {
        start: at,
        end,
        why: format!("damaged frame header ({why})"),
    });
    if let Some(chunk) = recover(file, at, end)? {
        out.recovered.push(Recovered { offset: at, chunk });
    }
    Ok(end)
}

/// Reads as much of `buf` as the file holds from `offset`.
fn read_up_to(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64)? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// The offset of the first whole frame at or after `from` (its magic found, its header
/// decoding, its payload within the file).
fn next_frame(file: &File, from: u64, len: u64) -> std::io::Result<Option<u64>> {
    let h = FRAME_HEADER_SIZE as usize;
    let mut buf = vec![0u8; WINDOW + h - 1];
    let mut pos = from;
    while pos + FRAME_HEADER_SIZE <= len {
        let n = (buf.len() as u64).min(len - pos) as usize;
        file.read_exact_at(&mut buf[..n], pos)?;
        let mut i = 0;
        while i + h <= n {
            if buf[i..i + 4] == FRAME_MAGIC
                && let Ok(hb) = <&[u8; FRAME_HEADER_SIZE as usize]>::try_from(&buf[i..i + h])
                && let Ok(fh) = FrameHeader::decode(hb)
                && pos + (i + h) as u64 + u64::from(fh.stored_len) <= len
            {
                return Ok(Some(pos + i as u64));
            }
            i += 1;
        }
        if n < buf.len() {
            break;
        }
        // The last h - 1 bytes are looked at again with what follows them.
        pos += (n - (h - 1)) as u64;
    }
    Ok(None)
}

/// The chunk held by the body of a frame at `start` whose header is damaged and which ends at
/// `end`, when that body decodes (zstd) or is a plausible plain chunk.
fn recover(file: &File, start: u64, end: u64) -> std::io::Result<Option<EncodedChunk>> {
    let body = end - start;
    if body <= FRAME_HEADER_SIZE || body - FRAME_HEADER_SIZE > u64::from(MAX_FRAME_PAYLOAD) {
        return Ok(None);
    }
    let mut bytes = vec![0u8; (body - FRAME_HEADER_SIZE) as usize];
    file.read_exact_at(&mut bytes, start + FRAME_HEADER_SIZE)?;
    let (codec, plain) = match zstd::bulk::decompress(&bytes, MAX_FRAME_PAYLOAD as usize) {
        Ok(plain) => (Codec::Zstd, plain),
        Err(_) => (Codec::Plain, bytes.clone()),
    };
    let kind = if plain.starts_with(crate::tree::TREE_MAGIC) {
        ChunkKind::Tree
    } else {
        ChunkKind::Data
    };
    Ok(Some(EncodedChunk {
        id: ChunkId::of(&plain),
        kind,
        codec,
        plain_len: plain.len() as u32,
        bytes,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::PackWriter;

    fn chunk(seed: u8, len: usize, kind: ChunkKind) -> EncodedChunk {
        let data: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(seed).wrapping_add(seed))
            .collect();
        crate::chunk::encode(&crate::Keys::Clear, &data, kind, 3).expect("encode")
    }

    /// A pack of five frames; the frames' offsets and ends.
    fn sample(dir: &Path) -> (std::path::PathBuf, Vec<EncodedChunk>, Vec<u64>, Vec<u64>) {
        let mut w = PackWriter::create(dir).expect("create");
        let chunks = vec![
            chunk(3, 7000, ChunkKind::Data),
            chunk(5, 300, ChunkKind::Data),
            chunk(7, 9000, ChunkKind::Data),
            chunk(11, 50, ChunkKind::Data),
            chunk(13, 4000, ChunkKind::Data),
        ];
        let offsets: Vec<u64> = chunks
            .iter()
            .map(|c| w.append(c).expect("append"))
            .collect();
        w.sync().expect("sync");
        let ends = chunks
            .iter()
            .zip(&offsets)
            .map(|(c, at)| at + FRAME_HEADER_SIZE + c.bytes.len() as u64)
            .collect();
        (w.path().to_path_buf(), chunks, offsets, ends)
    }

    #[test]
    fn a_whole_pack_scans_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, chunks, offsets, _) = sample(dir.path());
        let s = scan(&path).expect("scan");
        assert!(s.is_whole() && s.header_damage.is_none() && s.damage().is_none());
        let got: Vec<(u64, ChunkId)> = s.frames.iter().map(|f| (f.offset, f.header.id)).collect();
        let want: Vec<(u64, ChunkId)> = offsets
            .iter()
            .copied()
            .zip(chunks.iter().map(|c| c.id))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_damaged_pack_header_hides_no_frame() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, chunks, _, _) = sample(dir.path());
        let mut bytes = std::fs::read(&path).expect("read");
        for b in &mut bytes[..PACK_HEADER_SIZE as usize] {
            *b = 0;
        }
        std::fs::write(&path, &bytes).expect("write");
        let s = scan(&path).expect("scan");
        assert_eq!(s.frames.len(), chunks.len());
        assert!(s.is_whole());
        assert!(s.header_damage.is_some());
        // Named by its file, not by the header.
        assert_eq!(s.id.path(dir.path()), path);
    }

    #[test]
    fn every_flipped_byte_of_a_frame_header_loses_that_frame_only_and_its_chunk_comes_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, chunks, offsets, ends) = sample(dir.path());
        let clean = std::fs::read(&path).expect("read");
        for k in 0..chunks.len() {
            for i in 0..FRAME_HEADER_SIZE as usize {
                let mut bytes = clean.clone();
                bytes[offsets[k] as usize + i] ^= 0x10;
                std::fs::write(&path, &bytes).expect("write");
                let s = scan(&path).expect("scan");
                let ids: Vec<ChunkId> = s.frames.iter().map(|f| f.header.id).collect();
                let others: Vec<ChunkId> = chunks
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != k)
                    .map(|(_, c)| c.id)
                    .collect();
                assert_eq!(ids, others, "frame {k}, byte {i}");
                assert_eq!(
                    s.gaps.iter().map(|g| (g.start, g.end)).collect::<Vec<_>>(),
                    vec![(offsets[k], ends[k])],
                    "frame {k}, byte {i}"
                );
                let back: Vec<ChunkId> = s.recovered.iter().map(|r| r.chunk.id).collect();
                assert_eq!(back, vec![chunks[k].id], "frame {k}, byte {i}");
            }
        }
    }

    #[test]
    fn an_overwritten_stretch_loses_the_frames_it_touches_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, chunks, offsets, ends) = sample(dir.path());
        let mut bytes = std::fs::read(&path).expect("read");
        // From inside frame 1 to inside frame 2's body: frames 1 and 2 are gone.
        let (a, b) = (offsets[1] as usize + 10, offsets[2] as usize + 100);
        for x in &mut bytes[a..b] {
            *x = 0x5a;
        }
        std::fs::write(&path, &bytes).expect("write");
        let s = scan(&path).expect("scan");
        let ids: Vec<ChunkId> = s.frames.iter().map(|f| f.header.id).collect();
        assert_eq!(ids, vec![chunks[0].id, chunks[3].id, chunks[4].id]);
        assert_eq!(s.gaps.len(), 1);
        assert_eq!((s.gaps[0].start, s.gaps[0].end), (offsets[1], ends[2]));
        assert!(
            s.recovered
                .iter()
                .all(|r| chunks.iter().all(|c| c.id != r.chunk.id))
        );
    }

    #[test]
    fn every_truncation_keeps_the_whole_frames_and_names_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, chunks, offsets, ends) = sample(dir.path());
        let bytes = std::fs::read(&path).expect("read");
        let cut_path = dir
            .path()
            .join(format!("{}.pack", PackId::random().to_hex()));
        for cut in 0..=bytes.len() {
            std::fs::write(&cut_path, &bytes[..cut]).expect("write");
            let s = scan(&cut_path).expect("scan");
            let whole = ends.iter().filter(|&&e| e <= cut as u64).count();
            assert_eq!(s.frames.len(), whole, "cut {cut}");
            let at_boundary = cut as u64 == PACK_HEADER_SIZE || ends.contains(&(cut as u64));
            assert_eq!(s.header_damage.is_some(), (cut as u64) < PACK_HEADER_SIZE);
            if (cut as u64) <= PACK_HEADER_SIZE {
                assert!(s.gaps.is_empty(), "cut {cut}");
                continue;
            }
            let torn_at = if whole == 0 {
                offsets[0]
            } else {
                ends[whole - 1]
            };
            match s.gaps.as_slice() {
                [] => assert!(at_boundary, "cut {cut}: torn tail not reported"),
                [g] => {
                    assert!(!at_boundary, "cut {cut}: {}", g.why);
                    assert_eq!((g.start, g.end), (torn_at, cut as u64), "cut {cut}");
                }
                more => panic!("cut {cut}: {more:?}"),
            }
            assert!(
                s.recovered
                    .iter()
                    .all(|r| chunks.iter().all(|c| c.id != r.chunk.id))
            );
        }
    }
}
