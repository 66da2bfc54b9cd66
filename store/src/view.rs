//! Read-only views of the index beside a writer.
//!
//! A reader opens RocksDB read-only while a writer may be recovering the last writer's log,
//! flushing, switching its log or compacting. An open that races with those can fail (`No such
//! file` for a log or table file the writer has just deleted, or `Corruption`) or, worse,
//! succeed on a state older than a commit that has already returned. So:
//!
//! - after every synced batch a writer notes the index's identity and last sequence number in
//!   `STORE/index.seq` (written after the batch, so it never runs ahead of what is durable; a
//!   writer that opens the index notes it too, so a rebuilt or replaced index is the truth);
//!   a read-only open whose sequence is behind the note has read a stale state, and opens again;
//! - a read-only open that fails with an I/O or corruption error is tried again, with backoff,
//!   for up to [`RETRY_FOR`]: a race passes in milliseconds, while a store that is really
//!   damaged fails the same way each time and its last error is reported;
//! - a read-only open that overlapped a writer's flush or reopen is done again: RocksDB
//!   writes a flush's table file, records it in the MANIFEST, then deletes the log it came
//!   from, and a reader that read the MANIFEST before the record but listed the logs after the
//!   delete would miss those commits with no error at all. So the reader lists the logs (and
//!   reads `CURRENT`) before and after it opens: a log gone or a new MANIFEST in between, and
//!   it opens again;
//! - a read-only open loads every table file as it opens (`max_open_files = -1`), so a file that
//!   a writer's compaction deletes afterwards stays readable to it.
//!
//! With reader registration (`readers`), which keeps the packs, this is what lets `restore`,
//! `verify`, `list` and `report` run beside any writer.

use std::path::Path;
use std::time::{Duration, Instant};

use rocksdb::{DB, ErrorKind, Options};

use crate::error::{Error, Result};

/// How long a read-only open keeps trying.
pub const RETRY_FOR: Duration = Duration::from_secs(10);

/// How long a read-only open that stays behind the note keeps trying before it takes the index
/// as it is (and says so): a race is over in milliseconds; an index that lost commits (a
/// damaged log) stays behind.
pub const BEHIND_FOR: Duration = Duration::from_secs(2);

/// The note's file name.
pub const NOTE_FILE: &str = "index.seq";

fn identity(index: &Path) -> Option<String> {
    std::fs::read_to_string(index.join("IDENTITY"))
        .ok()
        .map(|s| s.trim().to_owned())
}

/// Notes the index's last sequence number for readers (best effort: a note that cannot be
/// written only makes readers less demanding).
pub(crate) fn note_commit(root: &Path, db: &DB) {
    let Some(id) = identity(&root.join("index")) else {
        return;
    };
    let note = format!("{id} {}\n", db.latest_sequence_number());
    let path = root.join(NOTE_FILE);
    let tmp = root.join(format!("{NOTE_FILE}.tmp"));
    if std::fs::write(&tmp, note).is_ok() {
        let _ = std::fs::rename(&tmp, &path);
    }
}

/// The note: the identity of the index it is about and the sequence it had reached.
fn read_note(root: &Path) -> Option<(String, u64)> {
    let text = std::fs::read_to_string(root.join(NOTE_FILE)).ok()?;
    let (id, seq) = text.trim().split_once(' ')?;
    Some((id.to_owned(), seq.parse().ok()?))
}

/// What a read-only open depends on: the MANIFEST `CURRENT` names and the write-ahead logs.
#[derive(Debug, PartialEq, Eq)]
struct Files {
    current: Option<String>,
    logs: Vec<String>,
}

impl Files {
    /// Whether nothing `before` listed is gone, and the MANIFEST is the same.
    fn still_holds(&self, before: &Self) -> bool {
        self.current == before.current && before.logs.iter().all(|l| self.logs.contains(l))
    }
}

fn files_of(index: &Path) -> Files {
    let mut logs: Vec<String> = std::fs::read_dir(index)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".log"))
        .collect();
    logs.sort();
    Files {
        current: std::fs::read_to_string(index.join("CURRENT")).ok(),
        logs,
    }
}

fn retryable(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::IOError
            | ErrorKind::Corruption
            | ErrorKind::NotFound
            | ErrorKind::Incomplete
            | ErrorKind::TryAgain
            | ErrorKind::Busy
    )
}

/// Opens the index of the store at `root` read-only, as of every commit that returned before
/// this call (see the module doc).
///
/// # Errors
/// A missing index; an open that fails for longer than [`RETRY_FOR`], or fails in a way no
/// retry mends; an index that stays behind the last commit noted.
pub(crate) fn open_read_only(root: &Path, options: &Options) -> Result<(DB, Option<String>)> {
    let path = root.join("index");
    if !path.join("CURRENT").exists() {
        return Err(Error::Config {
            path,
            what: "the index is missing; rebuild it with `cairn repair --rebuild-index`".into(),
        });
    }
    let mut options = options.clone();
    options.set_max_open_files(-1);
    let started = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        let want = read_note(root);
        let before = files_of(&path);
        let last = match DB::open_cf_for_read_only(
            &options,
            &path,
            crate::index::families_in(&options, &path),
            false,
        ) {
            Ok(_) if !files_of(&path).still_holds(&before) => {
                "a writer flushed or reopened the index while it was opened".to_owned()
            }
            Ok(db) => {
                let have = db.latest_sequence_number();
                let behind = want
                    .filter(|(id, _)| identity(&path).as_ref() == Some(id))
                    .map(|(_, seq)| seq)
                    .filter(|seq| have < *seq);
                match behind {
                    None => return Ok((db, None)),
                    Some(seq) if started.elapsed() >= BEHIND_FOR => {
                        let said = format!(
                            "the index is at sequence {have}, but a commit at sequence {seq} had \
                             returned ({}): the index lost commits (a damaged log?); `cairn \
                             verify` lists the root files it lacks, and the next command that \
                             writes to the store publishes them",
                            root.join(NOTE_FILE).display()
                        );
                        return Ok((db, Some(said)));
                    }
                    Some(seq) => format!("the index is behind a commit at sequence {seq}"),
                }
            }
            // Damage that no writer is moving under us stays: said at once, with the way back.
            Err(source)
                if source.kind() == ErrorKind::Corruption && !crate::lock::writer_active(root) =>
            {
                return Err(Error::Index { path, source });
            }
            Err(e) if retryable(e.kind()) => e.to_string(),
            Err(source) => return Err(Error::Index { path, source }),
        };
        if started.elapsed() >= RETRY_FOR {
            return Err(Error::Config {
                path,
                what: format!(
                    "cannot open the index read-only (tried for {}s beside writers): {last}",
                    RETRY_FOR.as_secs()
                ),
            });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}
