//! Chunk ids and the encoding of one chunk: BLAKE3 of the plain bytes (keyed in an encrypted
//! store); zstd when it is smaller; a data chunk of an encrypted store sealed ([`crate::keys`]).

use std::fmt;

use crate::keys::{Keys, seal_aad};

/// The id of a chunk: the BLAKE3 hash of its plain (uncompressed) bytes, keyed by the store's id
/// key in an encrypted store ([`crate::keys::Keys::id_of`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The id of `data` in an unencrypted store.
    #[must_use]
    pub fn of(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }

    /// Lower-case hex.
    #[must_use]
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits.
    #[must_use]
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Self(out))
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &self.to_hex()[..16])
    }
}

/// One entry of a recovery point's reference list: a stored chunk, or a run of zeros that is
/// never stored.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ChunkRef {
    /// The chunk is all zeros.
    Zero,
    /// The chunk with this id.
    Data(ChunkId),
}

impl ChunkRef {
    /// The all-zero id stands for [`ChunkRef::Zero`] in encoded lists (BLAKE3 never yields it
    /// in practice).
    pub const ZERO_ID: [u8; 32] = [0; 32];

    /// The 32 bytes of this ref in an encoded list.
    #[must_use]
    pub fn to_bytes(self) -> [u8; 32] {
        match self {
            Self::Zero => Self::ZERO_ID,
            Self::Data(id) => id.0,
        }
    }

    /// The ref stored as these 32 bytes.
    #[must_use]
    pub fn from_bytes(b: [u8; 32]) -> Self {
        if b == Self::ZERO_ID {
            Self::Zero
        } else {
            Self::Data(ChunkId(b))
        }
    }
}

/// How a chunk's bytes are stored in a pack.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Codec {
    /// As they are.
    Plain,
    /// zstd-compressed.
    Zstd,
    /// As they are, then sealed (an encrypted store's data chunk).
    SealedPlain,
    /// zstd-compressed, then sealed.
    SealedZstd,
}

impl Codec {
    /// On-disk code (frozen).
    #[must_use]
    pub fn code(self) -> u8 {
        match self {
            Self::Plain => 0,
            Self::Zstd => 1,
            Self::SealedPlain => 2,
            Self::SealedZstd => 3,
        }
    }

    /// Whether the stored bytes are sealed.
    #[must_use]
    pub fn is_sealed(self) -> bool {
        matches!(self, Self::SealedPlain | Self::SealedZstd)
    }

    /// The codec of the bytes a seal holds (this codec for unsealed ones).
    #[must_use]
    pub fn inner(self) -> Self {
        match self {
            Self::SealedPlain => Self::Plain,
            Self::SealedZstd => Self::Zstd,
            c => c,
        }
    }

    /// This codec, sealed.
    #[must_use]
    fn sealed(self) -> Self {
        match self {
            Self::Plain => Self::SealedPlain,
            Self::Zstd => Self::SealedZstd,
            c => c,
        }
    }

    /// The codec of an on-disk code.
    #[must_use]
    pub fn from_code(c: u8) -> Option<Self> {
        match c {
            0 => Some(Self::Plain),
            1 => Some(Self::Zstd),
            2 => Some(Self::SealedPlain),
            3 => Some(Self::SealedZstd),
            _ => None,
        }
    }
}

/// What a chunk holds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ChunkKind {
    /// Disk data.
    Data,
    /// A segment of a recovery point's reference list (a "tree" chunk).
    Tree,
}

impl ChunkKind {
    /// On-disk code (frozen).
    #[must_use]
    pub fn code(self) -> u8 {
        match self {
            Self::Data => 0,
            Self::Tree => 1,
        }
    }

    /// The kind of an on-disk code.
    #[must_use]
    pub fn from_code(c: u8) -> Option<Self> {
        match c {
            0 => Some(Self::Data),
            1 => Some(Self::Tree),
            _ => None,
        }
    }
}

/// A chunk ready to be appended to a pack.
#[derive(Clone, Debug)]
pub struct EncodedChunk {
    /// Its id.
    pub id: ChunkId,
    /// What it holds.
    pub kind: ChunkKind,
    /// How `bytes` are stored.
    pub codec: Codec,
    /// Length of the plain chunk.
    pub plain_len: u32,
    /// The stored bytes.
    pub bytes: Vec<u8>,
}

impl EncodedChunk {
    /// The borrowed view of this chunk's stored form.
    #[must_use]
    pub fn stored(&self) -> Stored<'_> {
        Stored {
            id: &self.id,
            kind: self.kind,
            codec: self.codec,
            plain_len: self.plain_len,
            bytes: &self.bytes,
        }
    }
}

/// A chunk as stored, borrowed: what a frame says of it and its stored bytes.
#[derive(Clone, Copy, Debug)]
pub struct Stored<'a> {
    /// Its id.
    pub id: &'a ChunkId,
    /// What it holds.
    pub kind: ChunkKind,
    /// How `bytes` are stored.
    pub codec: Codec,
    /// Length of the plain chunk.
    pub plain_len: u32,
    /// The stored bytes.
    pub bytes: &'a [u8],
}

/// Names, compresses and (in an encrypted store, a data chunk) seals a chunk; keeps it plain
/// when zstd does not make it smaller.
///
/// # Errors
/// [`ChunkError::Random`]: the system gave no randomness for a seal.
pub fn encode(
    keys: &Keys,
    data: &[u8],
    kind: ChunkKind,
    level: i32,
) -> Result<EncodedChunk, ChunkError> {
    encode_with_id(keys, keys.id_of(data), data, kind, level)
}

/// As [`encode`], for a chunk whose id (by `keys`) is already known.
///
/// # Errors
/// [`ChunkError::Random`]: the system gave no randomness for a seal.
pub fn encode_with_id(
    keys: &Keys,
    id: ChunkId,
    data: &[u8],
    kind: ChunkKind,
    level: i32,
) -> Result<EncodedChunk, ChunkError> {
    let mut chunk = compress(id, data, kind, level);
    if let (Keys::Sealed(key), ChunkKind::Data) = (keys, kind) {
        chunk.codec = chunk.codec.sealed();
        let aad = seal_aad(&id, kind, chunk.codec, chunk.plain_len);
        // Sealed where it lies: the tag and nonce appended (a large buffer grows in place).
        key.seal_in_place(&aad, &mut chunk.bytes)
            .map_err(|e| ChunkError::Random(e.to_string()))?;
    }
    Ok(chunk)
}

/// Compresses a chunk whose id is known; keeps it plain when zstd does not make it smaller.
fn compress(id: ChunkId, data: &[u8], kind: ChunkKind, level: i32) -> EncodedChunk {
    thread_local! {
        // One compression context per thread and level: making one per chunk costs more
        // than compressing a small chunk.
        static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
            const { std::cell::RefCell::new(None) };
    }
    let compressed = COMPRESSOR.with_borrow_mut(|slot| {
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            *slot = Some((level, zstd::bulk::Compressor::new(level)?));
        }
        match slot.as_mut() {
            Some((_, c)) => c.compress(data),
            None => zstd::bulk::compress(data, level),
        }
    });
    let (codec, bytes) = match compressed {
        Ok(c) if c.len() < data.len() => (Codec::Zstd, c),
        _ => (Codec::Plain, data.to_vec()),
    };
    EncodedChunk {
        id,
        kind,
        codec,
        plain_len: data.len() as u32,
        bytes,
    }
}

/// What is wrong with a chunk's stored bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkError {
    /// The chunk's length is not its place's on the disk.
    #[error("the chunk is {len} bytes where its place on the disk holds {place}")]
    NotItsPlace {
        /// The chunk's length.
        len: usize,
        /// Its place's.
        place: usize,
    },
    /// The stored bytes do not decompress.
    #[error("zstd: {0}")]
    Zstd(String),
    /// They decode to another length than the frame says.
    #[error("decodes to {got} bytes, expected {expected}")]
    Length {
        /// Bytes decoded.
        got: usize,
        /// Bytes the frame says.
        expected: u32,
    },
    /// They hash to another id.
    #[error("content hashes to {hashed}, not to its id")]
    Hash {
        /// What they hash to.
        hashed: ChunkId,
    },
    /// A sealed chunk that does not open under its id with the store's key.
    #[error(
        "failed authentication: the sealed chunk was altered, put under another id, or sealed \
         with another key"
    )]
    Unsealed,
    /// A data chunk of an encrypted store, asked of a reader without the key.
    #[error("the chunk is sealed and the store's key was not given")]
    Locked,
    /// A sealed chunk in an unencrypted store.
    #[error("a sealed chunk in an unencrypted store")]
    SealedInClear,
    /// A data chunk stored unsealed in an encrypted store.
    #[error("an unsealed data chunk in an encrypted store")]
    NotSealed,
    /// No randomness for a seal.
    #[error("no randomness for a seal: {0}")]
    Random(String),
}

/// Decodes stored bytes and checks them against their id.
///
/// # Errors
/// As [`decode_into`].
pub fn decode(keys: Option<&Keys>, chunk: &Stored<'_>) -> Result<Vec<u8>, ChunkError> {
    let mut plain = vec![0u8; chunk.plain_len as usize];
    decode_into(keys, chunk, &mut plain)?;
    Ok(plain)
}

/// Decodes stored bytes into `out`, which the chunk must fill exactly (`plain_len` bytes: a
/// chunk's place on a disk is the chunk size, or what is left of the disk for its last chunk),
/// and checks them against the chunk's id: the allocation-free form of [`decode`] (but for an
/// unsealed copy of a sealed chunk). A chunk shorter than its place is an error, never a place
/// left holding what a buffer held before.
///
/// `keys` are the store's: `None` for an encrypted store not given its key, which reads tree
/// chunks unchecked against their ids (their frames' CRCs checked them) and is refused data.
///
/// # Errors
/// What is wrong (a length that is not its place's, a seal that does not open, decompression
/// failure, wrong decoded length, hash mismatch), or [`ChunkError::Locked`].
pub fn decode_into(
    keys: Option<&Keys>,
    chunk: &Stored<'_>,
    out: &mut [u8],
) -> Result<(), ChunkError> {
    let want = chunk.plain_len as usize;
    if out.len() != want {
        return Err(ChunkError::NotItsPlace {
            len: want,
            place: out.len(),
        });
    }
    match (keys, chunk.codec.is_sealed()) {
        (Some(Keys::Sealed(key)), true) => {
            thread_local! {
                // Opened where they are copied, in a buffer each thread keeps: a fresh one per
                // chunk costs an mmap, its page faults and an munmap.
                static OPENED: std::cell::RefCell<Vec<u8>> =
                    const { std::cell::RefCell::new(Vec::new()) };
            }
            let aad = seal_aad(chunk.id, chunk.kind, chunk.codec, chunk.plain_len);
            OPENED.with_borrow_mut(|opened| {
                opened.clear();
                opened.extend_from_slice(chunk.bytes);
                key.open_in_place(&aad, opened)
                    .map_err(|_| ChunkError::Unsealed)?;
                inflate(keys, chunk, opened, out)
            })
        }
        (None, true) => Err(ChunkError::Locked),
        (Some(Keys::Clear), true) => Err(ChunkError::SealedInClear),
        // Only an encrypted store has no keys: its data chunks are all sealed.
        (Some(Keys::Sealed(_)) | None, false) if chunk.kind == ChunkKind::Data => {
            Err(ChunkError::NotSealed)
        }
        (_, false) => inflate(keys, chunk, chunk.bytes, out),
    }
}

/// The last steps of [`decode_into`]: `stored` (the chunk's bytes, opened when sealed)
/// decompressed into `out`, their length and (with `keys`) their id checked.
fn inflate(
    keys: Option<&Keys>,
    chunk: &Stored<'_>,
    stored: &[u8],
    out: &mut [u8],
) -> Result<(), ChunkError> {
    let got = decompress(chunk.codec.inner(), stored, out)?;
    if got != out.len() {
        return Err(ChunkError::Length {
            got,
            expected: chunk.plain_len,
        });
    }
    if let Some(keys) = keys {
        let hashed = keys.id_of(out);
        if &hashed != chunk.id {
            return Err(ChunkError::Hash { hashed });
        }
    }
    Ok(())
}

/// Checks a chunk as stored for a copy of it (replication, a repack through a bucket): decoded
/// into `scratch` and hashed to its id, as far as `keys` allow: without an encrypted store's key,
/// a sealed chunk is taken as its frame's CRC checked it.
///
/// # Errors
/// As [`decode_into`], but for [`ChunkError::Locked`].
pub fn check(
    keys: Option<&Keys>,
    chunk: &Stored<'_>,
    scratch: &mut Vec<u8>,
) -> Result<(), ChunkError> {
    scratch.resize(chunk.plain_len as usize, 0);
    match decode_into(keys, chunk, scratch) {
        Err(ChunkError::Locked) => Ok(()),
        r => r,
    }
}

/// Decompresses (or copies) `stored` of codec `codec` (not a sealed one) into `out`: the bytes
/// it gave.
fn decompress(codec: Codec, stored: &[u8], out: &mut [u8]) -> Result<usize, ChunkError> {
    match codec {
        Codec::Zstd => {
            thread_local! {
                static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
                    const { std::cell::RefCell::new(None) };
            }
            DECOMPRESSOR
                .with_borrow_mut(|slot| {
                    if slot.is_none() {
                        *slot = Some(zstd::bulk::Decompressor::new()?);
                    }
                    match slot.as_mut() {
                        Some(d) => d.decompress_to_buffer(stored, out),
                        None => zstd::bulk::decompress_to_buffer(stored, out),
                    }
                })
                .map_err(|e| ChunkError::Zstd(e.to_string()))
        }
        _ => {
            if stored.len() == out.len() {
                out.copy_from_slice(stored);
            }
            Ok(stored.len())
        }
    }
}

/// Whether every byte is zero.
#[must_use]
pub fn is_zero(data: &[u8]) -> bool {
    let words = data.chunks_exact(8);
    let rest = words.remainder();
    words.into_iter().all(|w| w == [0u8; 8]) && rest.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip_and_detect_corruption() {
        let data: Vec<u8> = (0..65536u32).map(|i| (i % 7) as u8).collect();
        let e = encode(&Keys::Clear, &data, ChunkKind::Data, 3).expect("encode");
        assert_eq!(e.codec, Codec::Zstd);
        assert!(e.bytes.len() < data.len());
        assert_eq!(
            decode(Some(&Keys::Clear), &e.stored()).expect("decode"),
            data
        );
        let mut bad = e.clone();
        let n = bad.bytes.len();
        bad.bytes[n / 2] ^= 1;
        assert!(decode(Some(&Keys::Clear), &bad.stored()).is_err());
    }

    #[test]
    fn incompressible_chunks_stay_plain() {
        let mut x = 1u64;
        let data: Vec<u8> = (0..4096)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 56) as u8
            })
            .collect();
        let e = encode(&Keys::Clear, &data, ChunkKind::Data, 3).expect("encode");
        assert_eq!(e.codec, Codec::Plain);
        assert_eq!(e.bytes, data);
    }

    #[test]
    fn sealed_chunks_open_with_their_key_under_their_id_only() {
        let key = std::sync::Arc::new(cairn_crypt::MasterKey::from_bytes(&[9; 32]));
        let keys = Keys::Sealed(key);
        let data: Vec<u8> = (0..65536u32).map(|i| (i % 7) as u8).collect();
        let e = encode(&keys, &data, ChunkKind::Data, 3).expect("encode");
        assert_eq!(e.codec, Codec::SealedZstd);
        assert_ne!(e.id, ChunkId::of(&data), "keyed ids");
        assert_eq!(decode(Some(&keys), &e.stored()).expect("opens"), data);
        // Without the key: refused, not misread. In an unencrypted store: refused.
        assert_eq!(decode(None, &e.stored()), Err(ChunkError::Locked));
        assert_eq!(
            decode(Some(&Keys::Clear), &e.stored()),
            Err(ChunkError::SealedInClear)
        );
        // A flipped bit, another id, a changed header: failed authentication.
        let mut flipped = e.clone();
        flipped.bytes[50] ^= 1;
        let mut moved = e.clone();
        moved.id = keys.id_of(b"another chunk");
        let mut relabelled = e.clone();
        relabelled.codec = Codec::SealedPlain;
        for bad in [flipped, moved, relabelled] {
            assert_eq!(
                decode(Some(&keys), &bad.stored()),
                Err(ChunkError::Unsealed)
            );
        }
        // Trees are not sealed (gc and verify walk them without the key), and checked against
        // their keyed id by whoever has the key.
        let tree = encode(&keys, &data, ChunkKind::Tree, 3).expect("encode");
        assert_eq!(tree.codec, Codec::Zstd);
        assert_eq!(decode(None, &tree.stored()).expect("keyless"), data);
        let mut forged = tree.clone();
        forged.id = ChunkId::of(&data);
        assert!(matches!(
            decode(Some(&keys), &forged.stored()),
            Err(ChunkError::Hash { .. })
        ));
        // An unsealed data chunk in an encrypted store is refused.
        let plain = encode(&Keys::Clear, &data, ChunkKind::Data, 3).expect("encode");
        assert_eq!(
            decode(Some(&keys), &plain.stored()),
            Err(ChunkError::NotSealed)
        );
    }

    #[test]
    fn zero_test() {
        assert!(is_zero(&[0; 1000]));
        let mut v = vec![0u8; 1001];
        v[1000] = 1;
        assert!(!is_zero(&v));
        v[1000] = 0;
        v[3] = 1;
        assert!(!is_zero(&v));
    }
}
