//! What each run of a job leaves: a record (job, start, end, outcome, exit status, the error's
//! last lines, the points it made and the bytes they stored), the last [`KEPT`] of each job in
//! `DIR/JOB.json` (the store's `job-runs/` folder for a store folder), replaced atomically under
//! a lock of its own so that a run and a skipped run never lose each other's record.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use fs2::FileExt;
use serde::{Deserialize, Serialize};

/// The folder of a store that holds its jobs' records.
pub const RUNS_DIR: &str = "job-runs";

/// Records kept per job (the oldest go first).
pub const KEPT: usize = 200;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The command exited 0.
    Ok,
    /// The command failed (its exit status and error kept), or could not start.
    Failed,
    /// Another run of the job was running: this one did not run (`overlap = "skip"`).
    Skipped,
}

/// One run of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Run {
    /// The job.
    pub job: String,
    /// When it started (for a waiting run: when it got its turn).
    pub started: DateTime<Utc>,
    /// When it ended.
    pub ended: DateTime<Utc>,
    /// How.
    pub outcome: Outcome,
    /// The command's exit status (`None`: it did not run, or a signal ended it).
    pub exit_code: Option<i32>,
    /// Why it failed or was skipped: the error's last lines.
    pub error: Option<String>,
    /// The command line it ran (after `cairn`).
    pub command: Vec<String>,
    /// The ids of the points it made.
    pub points: Vec<String>,
    /// The bytes those points added to the store.
    pub bytes_stored: u64,
    /// The seconds it waited for an earlier run (`overlap = "wait"`).
    pub waited_seconds: Option<f64>,
    /// What started it: `manual` (`cairn job run`), `timer` (systemd), `serve` (`cairn serve`'s
    /// scheduler).
    pub trigger: String,
}

/// Why records could not be kept or read.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct RecordError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

fn io(path: &Path, source: std::io::Error) -> RecordError {
    RecordError {
        path: path.to_path_buf(),
        source,
    }
}

/// The longest text a record takes from elsewhere (its error), and the most of its lists.
const MAX_TEXT: usize = 16 << 10;
const MAX_ITEMS: usize = 1000;

/// Whether `name` may name a job (and so a record's file): letters, digits, `-`, `_`, `.`, not
/// starting with `.`, at most 100 bytes.
#[must_use]
pub fn is_job_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl Run {
    /// Checks a record that came from elsewhere (a client of `cairn serve`): a job name that
    /// names a file in the records' folder and nothing else, texts and lists of bounded size,
    /// point ids of 32 hex digits, a known trigger.
    ///
    /// # Errors
    /// What is wrong with it.
    pub fn check(&self) -> Result<(), String> {
        if !is_job_name(&self.job) {
            return Err(format!(
                "job {:?}: letters, digits, '-', '_' and '.', not first, at most 100",
                self.job
            ));
        }
        if self.error.as_ref().is_some_and(|e| e.len() > MAX_TEXT)
            || self.command.len() > MAX_ITEMS
            || self.command.iter().any(|c| c.len() > MAX_TEXT)
        {
            return Err(format!("error or command: at most {MAX_TEXT} bytes each"));
        }
        if self.points.len() > MAX_ITEMS
            || !self
                .points
                .iter()
                .all(|p| p.len() == 32 && p.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(format!("points: at most {MAX_ITEMS} ids of 32 hex digits"));
        }
        if !["manual", "timer", "serve"].contains(&self.trigger.as_str()) {
            return Err(format!(
                "trigger {:?}: manual, timer or serve",
                self.trigger
            ));
        }
        if self.ended < self.started {
            return Err("it ended before it started".into());
        }
        Ok(())
    }
}

/// Appends `run` to its job's records in `dir` (the oldest beyond [`KEPT`] dropped).
///
/// # Errors
/// The folder or file that cannot be written.
pub fn append(dir: &Path, run: &Run) -> Result<(), RecordError> {
    if !is_job_name(&run.job) {
        return Err(io(
            dir,
            std::io::Error::other(format!("{:?} cannot name a job", run.job)),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let lock_path = dir.join(format!(".{}.lock", run.job));
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| io(&lock_path, e))?;
    lock.lock_exclusive().map_err(|e| io(&lock_path, e))?;
    let mut runs = runs_of(dir, &run.job);
    runs.push(run.clone());
    if runs.len() > KEPT {
        runs.drain(..runs.len() - KEPT);
    }
    let path = dir.join(format!("{}.json", run.job));
    let bytes = serde_json::to_vec_pretty(&runs).unwrap_or_default();
    cairn_store::write_atomic(&path, &bytes)
        .map_err(|e| io(&path, std::io::Error::other(e.to_string())))
}

/// The records of job `job` in `dir`, oldest first (none when there is no file or it does not
/// read).
#[must_use]
pub fn runs_of(dir: &Path, job: &str) -> Vec<Run> {
    std::fs::read(dir.join(format!("{job}.json")))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Every job's records in `dir`, by job.
#[must_use]
pub fn all_runs(dir: &Path) -> std::collections::BTreeMap<String, Vec<Run>> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(job) = name.strip_suffix(".json")
            && !job.starts_with('.')
        {
            out.insert(job.to_owned(), runs_of(dir, job));
        }
    }
    out
}
