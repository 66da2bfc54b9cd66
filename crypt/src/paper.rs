//! A key file on paper: the same sealed key (it still needs its passphrase), as numbered lines
//! of hex that a person can type back, each line with check digits so that a typo is found in
//! the line that holds it, and a checksum of the whole.
//!
//! ```text
//! cairn key file (paper form 1), fingerprint 0f3c…
//! 1: 434b 5031 0001 0000 0000 0003 0000 0001 4d2a
//! ...
//! 8: ....                                    9c01
//! check: 5be0 41a7
//! ```
//!
//! The bytes: `CKP1`, Argon2id's memory (KiB), passes and lanes (each 4 bytes, big-endian), the
//! salt (16), the nonce (24), the sealed key (48) and the fingerprint (16): 120 bytes, 15 a
//! line. Each line's check digits are the first 2 bytes of BLAKE3 of its number and bytes; the
//! last line, the first 4 bytes of BLAKE3 of all 120.

use crate::{Error, KdfParams, KeyFile, Result};

const MAGIC: &[u8; 4] = b"CKP1";
const LEN: usize = 120;
const PER_LINE: usize = 15;

impl KeyFile {
    /// The paper form of this key file (see the module).
    ///
    /// # Errors
    /// A key file whose fields are not what this format holds (not hex, wrong lengths).
    pub fn to_paper(&self) -> Result<String> {
        let bytes = self.paper_bytes()?;
        let mut out = format!(
            "cairn key file (paper form 1), fingerprint {}\n\
             It still needs its passphrase. Type it back with `cairn key import`.\n",
            self.fingerprint
        );
        for (i, line) in bytes.chunks(PER_LINE).enumerate() {
            let n = i + 1;
            out.push_str(&format!(
                "{n}: {} {}\n",
                groups(line),
                groups(&line_check(n, line))
            ));
        }
        out.push_str(&format!(
            "check: {}\n",
            groups(&blake3::hash(&bytes).as_bytes()[..4])
        ));
        Ok(out)
    }

    /// The key file a paper form holds; lines that are not numbered lines or the check line
    /// (a heading, blank lines) are passed over, spaces within lines too.
    ///
    /// # Errors
    /// [`Error::KeyFile`] naming the line whose digits do not check, a line missing, or a
    /// whole that does not check.
    pub fn from_paper(text: &str) -> Result<Self> {
        let mut lines: Vec<Option<Vec<u8>>> = vec![None; LEN / PER_LINE];
        let mut whole = None;
        for raw in text.lines() {
            let Some((label, rest)) = raw.trim().split_once(':') else {
                continue;
            };
            let digits: String = rest.chars().filter(|c| !c.is_whitespace()).collect();
            let bytes = hex::decode(&digits).map_err(|_| {
                Error::KeyFile(format!("paper line {label:?}: not hex digits: {rest:?}"))
            })?;
            if label.trim() == "check" {
                whole = Some(bytes);
                continue;
            }
            let Ok(n) = label.trim().parse::<usize>() else {
                continue;
            };
            let slot = n
                .checked_sub(1)
                .and_then(|i| lines.get_mut(i))
                .ok_or_else(|| {
                    Error::KeyFile(format!(
                        "paper line {n}: there are {} lines",
                        LEN / PER_LINE
                    ))
                })?;
            if bytes.len() != PER_LINE + 2 {
                return Err(Error::KeyFile(format!(
                    "paper line {n}: {} hex digits, a line holds {}",
                    bytes.len() * 2,
                    (PER_LINE + 2) * 2
                )));
            }
            let (data, check) = bytes.split_at(PER_LINE);
            if check != line_check(n, data) {
                return Err(Error::KeyFile(format!(
                    "paper line {n}: its check digits do not match: a digit of this line was \
                     mistyped"
                )));
            }
            *slot = Some(data.to_vec());
        }
        let mut bytes = Vec::with_capacity(LEN);
        for (i, line) in lines.into_iter().enumerate() {
            bytes.extend(
                line.ok_or_else(|| Error::KeyFile(format!("paper line {} is missing", i + 1)))?,
            );
        }
        match whole {
            Some(w) if w == blake3::hash(&bytes).as_bytes()[..4] => {}
            Some(_) => {
                return Err(Error::KeyFile(
                    "the paper form's check line does not match its lines (lines from two \
                     different key files?)"
                        .into(),
                ));
            }
            None => {
                return Err(Error::KeyFile(
                    "the paper form's check line is missing".into(),
                ));
            }
        }
        Self::from_paper_bytes(&bytes)
    }

    fn paper_bytes(&self) -> Result<Vec<u8>> {
        let field = |s: &str, len: usize, what: &str| {
            hex::decode(s)
                .ok()
                .filter(|b| b.len() == len)
                .ok_or_else(|| Error::KeyFile(format!("its {what} is not {len} bytes of hex")))
        };
        let mut b = Vec::with_capacity(LEN);
        b.extend_from_slice(MAGIC);
        for v in [
            self.params.memory_kib,
            self.params.iterations,
            self.params.parallelism,
        ] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        b.extend(field(&self.salt, 16, "salt")?);
        b.extend(field(&self.nonce, 24, "nonce")?);
        b.extend(field(&self.sealed_key, 48, "sealed key")?);
        b.extend(field(&self.fingerprint, 16, "fingerprint")?);
        Ok(b)
    }

    fn from_paper_bytes(b: &[u8]) -> Result<Self> {
        if b.len() != LEN || &b[..4] != MAGIC {
            return Err(Error::KeyFile("not a paper form of a key file".into()));
        }
        let word = |at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let params = KdfParams {
            memory_kib: word(4),
            iterations: word(8),
            parallelism: word(12),
        };
        params.check()?;
        let base = Self::seal_shape(params);
        Ok(Self {
            salt: hex::encode(&b[16..32]),
            nonce: hex::encode(&b[32..56]),
            sealed_key: hex::encode(&b[56..104]),
            fingerprint: hex::encode(&b[104..120]),
            ..base
        })
    }
}

/// `bytes` as groups of 4 hex digits.
fn groups(bytes: &[u8]) -> String {
    hex::encode(bytes)
        .as_bytes()
        .chunks(4)
        .map(|g| String::from_utf8_lossy(g).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A line's check digits: 2 bytes of BLAKE3 of its number and bytes.
fn line_check(n: usize, line: &[u8]) -> [u8; 2] {
    let mut h = blake3::Hasher::new();
    h.update(&(n as u32).to_be_bytes());
    h.update(line);
    let d = h.finalize();
    [d.as_bytes()[0], d.as_bytes()[1]]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MasterKey;
    use crate::keyfile::tests::LIGHT;

    #[test]
    fn the_paper_form_types_back_to_the_same_key_file_and_finds_each_typo_in_its_line() {
        let key = MasterKey::generate().expect("key");
        let file = KeyFile::seal(&key, b"pw", LIGHT).expect("seal");
        let paper = file.to_paper().expect("paper");
        assert!(!paper.contains(&file.sealed_key), "{paper}");
        let back = KeyFile::from_paper(&paper).expect("typed back");
        assert_eq!(back, file);
        assert_eq!(
            back.open(b"pw").expect("opens").fingerprint(),
            key.fingerprint()
        );
        // Any one digit changed is named in its line.
        let lines: Vec<&str> = paper.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let Some((label, _)) = line.split_once(':') else {
                continue;
            };
            let Ok(n) = label.parse::<usize>() else {
                continue;
            };
            let at = line.len() - 7;
            let mut typo: Vec<char> = line.chars().collect();
            typo[at] = if typo[at] == '0' { '1' } else { '0' };
            let mut changed = lines.clone();
            let typo: String = typo.into_iter().collect();
            changed[i] = &typo;
            let e = KeyFile::from_paper(&changed.join("\n")).expect_err("typo");
            assert!(e.to_string().contains(&format!("paper line {n}:")), "{e}");
        }
        // A line left out is named too.
        let missing: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| !l.starts_with("3:"))
            .collect();
        let e = KeyFile::from_paper(&missing.join("\n")).expect_err("missing");
        assert!(e.to_string().contains("paper line 3 is missing"), "{e}");
    }
}
