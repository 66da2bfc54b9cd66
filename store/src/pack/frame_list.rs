//! A pack's frame list: every frame's header and offset, a few kilobytes, so that a pack in a
//! bucket is indexed without reading it.

use crate::error::Result;

use super::{FRAME_HEADER_SIZE, PACK_HEADER_SIZE, PackScan};
use super::{FrameHeader, PackId, ScannedFrame};

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
