//! What an encrypted store must never hold: a 4 KiB-aligned block of a source image, or the
//! unkeyed BLAKE3 id of one of its chunks (which would tell anyone holding the same data that
//! the store holds it too).

use std::collections::HashMap;
use std::path::Path;

/// Needles to look for, found by an 8-byte word at a known offset in each.
pub struct Needles {
    needles: Vec<(String, Vec<u8>)>,
    /// The word at `k` of needle `i`: `(i, k)`.
    by_word: HashMap<[u8; 8], Vec<(usize, usize)>>,
}

impl Needles {
    /// Every distinct 4 KiB-aligned block of `images` that is not one byte repeated (those are
    /// in any file: zeros, padding), every unkeyed BLAKE3 id of their `chunk`-sized chunks that
    /// are not all zeros (as 32 bytes and as 64 hex digits).
    #[must_use]
    pub fn of_images(images: &[&Path], chunk: usize) -> Self {
        let mut n = Self {
            needles: Vec::new(),
            by_word: HashMap::new(),
        };
        let mut seen = std::collections::HashSet::new();
        for img in images {
            let bytes = std::fs::read(img).expect("read an image");
            for (b, block) in bytes.chunks(4096).enumerate() {
                if block.iter().all(|&x| x == block[0]) || !seen.insert(blake3::hash(block)) {
                    continue;
                }
                n.add(format!("{} block {b}", img.display()), block.to_vec());
            }
            for (c, piece) in bytes.chunks(chunk).enumerate() {
                if piece.iter().all(|&x| x == 0) {
                    continue;
                }
                let id = blake3::hash(piece);
                let what = format!("{} chunk {c}'s unkeyed id", img.display());
                n.add(format!("{what} (binary)"), id.as_bytes().to_vec());
                n.add(format!("{what} (hex)"), id.to_hex().as_bytes().to_vec());
            }
        }
        n
    }

    /// How many needles there are.
    #[must_use]
    pub fn len(&self) -> usize {
        self.needles.len()
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    fn add(&mut self, what: String, bytes: Vec<u8>) {
        // The first 8-byte word that is not one byte repeated: found wherever the needle is.
        let k = (0..bytes.len().saturating_sub(8))
            .find(|&k| bytes[k..k + 8].iter().any(|&x| x != bytes[k]))
            .unwrap_or(0);
        let word: [u8; 8] = bytes[k..k + 8].try_into().expect("8 bytes");
        self.by_word
            .entry(word)
            .or_default()
            .push((self.needles.len(), k));
        self.needles.push((what, bytes));
    }

    /// The first needle found in `hay`: what it is and where.
    #[must_use]
    pub fn find_in(&self, hay: &[u8]) -> Option<(String, usize)> {
        for p in 0..hay.len().saturating_sub(7) {
            let word: &[u8; 8] = hay[p..p + 8].try_into().expect("8 bytes");
            let Some(cands) = self.by_word.get(word) else {
                continue;
            };
            for &(i, k) in cands {
                let (what, needle) = &self.needles[i];
                if p >= k && hay.get(p - k..p - k + needle.len()) == Some(needle.as_slice()) {
                    return Some((what.clone(), p - k));
                }
            }
        }
        None
    }

    /// Every needle found in the files under `dir`: `(file, what, offset)`.
    #[must_use]
    pub fn found_under(&self, dir: &Path) -> Vec<(String, String, usize)> {
        let mut out = Vec::new();
        for f in crate::files_under(dir) {
            let Ok(hay) = std::fs::read(&f) else {
                continue;
            };
            if let Some((what, at)) = self.find_in(&hay) {
                out.push((f.display().to_string(), what, at));
            }
        }
        out
    }
}
