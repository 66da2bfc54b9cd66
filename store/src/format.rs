//! The versions of what cairn writes (the store, its packs, tree chunks, root files, a
//! server's token file), each read by one rule: a version from the oldest this cairn reads to
//! the one it writes; any other is refused, naming both. (The shape of lsm-tree's
//! `FormatVersion`: one type guards every file written.)

/// One versioned format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormatVersion {
    what: &'static str,
    oldest: u32,
    current: u32,
}

impl FormatVersion {
    /// `what` (as messages name it) of versions `oldest` to `current` (the one written).
    #[must_use]
    pub const fn new(what: &'static str, oldest: u32, current: u32) -> Self {
        Self {
            what,
            oldest,
            current,
        }
    }

    /// The version written.
    #[must_use]
    pub const fn current(&self) -> u32 {
        self.current
    }

    /// The oldest version read.
    #[must_use]
    pub const fn oldest(&self) -> u32 {
        self.oldest
    }

    /// Whether version `found` is read here.
    ///
    /// # Errors
    /// What the version is and which this cairn reads (a newer one: use a newer cairn).
    pub fn check(&self, found: u32) -> Result<(), String> {
        if (self.oldest..=self.current).contains(&found) {
            return Ok(());
        }
        let reads = if self.oldest == self.current {
            format!("version {}", self.current)
        } else {
            format!("versions {} to {}", self.oldest, self.current)
        };
        let hint = if found > self.current {
            ": use a newer cairn"
        } else {
            ""
        };
        Err(format!(
            "{} version {found}, this cairn reads {reads}{hint}",
            self.what
        ))
    }
}

/// The store (`format_version` in `cairn.toml`): 2 writes trees of nodes over leaves; 3 is an
/// encrypted store (keyed ids, sealed data chunks: [`crate::keys`]).
pub const STORE: FormatVersion = FormatVersion::new("store format", 1, 3);
/// A pack file's header.
pub const PACK: FormatVersion = FormatVersion::new("pack", 1, 1);
/// A tree chunk's header (a leaf of format 1 has none: it is read as bare refs).
pub const TREE: FormatVersion = FormatVersion::new("tree chunk format", 2, 2);
/// A root file (`format`; one without it is of format 1).
pub const POINT: FormatVersion = FormatVersion::new("root file format", 1, 2);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_outside_the_range_are_named_with_what_is_read() {
        assert_eq!(STORE.check(1), Ok(()));
        assert_eq!(STORE.check(2), Ok(()));
        assert_eq!(
            STORE.check(4),
            Err(
                "store format version 4, this cairn reads versions 1 to 3: use a newer cairn"
                    .into()
            )
        );
        assert_eq!(
            PACK.check(0),
            Err("pack version 0, this cairn reads version 1".into())
        );
    }
}
