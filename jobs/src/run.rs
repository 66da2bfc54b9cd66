//! Running a job: its lock taken (one run of a job at a time on a machine: a second skips or
//! waits, as the job says, and its record says which), `cairn` started with the job's command
//! line (its output passed through as the command prints it, its error's last lines kept), the
//! command that feeds a backup's standard input piped in, and the run's record written.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use chrono::Utc;
use fs2::FileExt;

use crate::file::{Job, Overlap};
use crate::record::{Outcome, Run};

/// Lines of a failed command's error kept in its record.
const ERROR_LINES: usize = 12;

/// How a run is made.
pub struct Runner<'a> {
    /// The `cairn` binary.
    pub exe: PathBuf,
    /// Where the jobs' locks are (a folder of this machine's).
    pub locks: PathBuf,
    /// What started the run (`manual`, `timer`, `serve`).
    pub trigger: &'a str,
    /// Whether the command's standard output is dropped (its errors still pass through).
    pub quiet: bool,
    /// The store's points before and after, as `(id, bytes it added)`: the run's points are the
    /// new ones. `None` when the store cannot be read here.
    pub points: &'a dyn Fn() -> Option<Vec<(String, u64)>>,
}

/// Why a run could not be made at all (a command that fails is a [`Run`] with
/// [`Outcome::Failed`]).
#[derive(Debug, thiserror::Error)]
#[error("job {job}: {what}: {source}")]
pub struct RunError {
    /// The job.
    pub job: String,
    /// What could not be done.
    pub what: String,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

impl Runner<'_> {
    /// Runs `job` and returns its record (not yet kept: see [`crate::record::append`]).
    ///
    /// # Errors
    /// The lock folder or file that cannot be made.
    pub fn run(&self, job: &Job) -> Result<Run, RunError> {
        let fail = |what: &str, source: std::io::Error| RunError {
            job: job.name.clone(),
            what: what.to_owned(),
            source,
        };
        std::fs::create_dir_all(&self.locks).map_err(|e| fail("making the lock folder", e))?;
        let lock_path = self.locks.join(format!("{}.lock", job.name));
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lock_path)
            .map_err(|e| fail("opening its lock", e))?;
        let asked = Utc::now();
        let waited = match lock.try_lock_exclusive() {
            Ok(()) => None,
            Err(_) if job.overlap == Overlap::Skip => {
                let since = std::fs::read_to_string(&lock_path).unwrap_or_default();
                return Ok(Run {
                    job: job.name.clone(),
                    started: asked,
                    ended: Utc::now(),
                    outcome: Outcome::Skipped,
                    exit_code: None,
                    error: Some(format!(
                        "another run of job {} was running{}: this one did not run (overlap = \"skip\")",
                        job.name,
                        since
                            .trim()
                            .split_once(' ')
                            .map(|(_, t)| format!(" (since {t})"))
                            .unwrap_or_default()
                    )),
                    command: job.argv(),
                    points: Vec::new(),
                    bytes_stored: 0,
                    waited_seconds: None,
                    trigger: self.trigger.to_owned(),
                });
            }
            Err(_) => {
                let t = Instant::now();
                lock.lock_exclusive()
                    .map_err(|e| fail("waiting for its lock", e))?;
                Some(t.elapsed().as_secs_f64())
            }
        };
        // Who holds it, for a run that finds it held.
        let _ = lock.set_len(0);
        let _ = (&lock).write_all(
            format!(
                "{} {}\n",
                std::process::id(),
                Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )
            .as_bytes(),
        );
        let started = Utc::now();
        let before = (self.points)();
        let (exit_code, error) = self.command(job);
        let after = (self.points)();
        let (points, bytes_stored) = made(before.as_deref(), after.as_deref());
        drop(lock);
        Ok(Run {
            job: job.name.clone(),
            started,
            ended: Utc::now(),
            outcome: if exit_code == Some(0) && error.is_none() {
                Outcome::Ok
            } else {
                Outcome::Failed
            },
            exit_code,
            error,
            command: job.argv(),
            points,
            bytes_stored,
            waited_seconds: waited,
            trigger: self.trigger.to_owned(),
        })
    }

    /// Runs the job's command (and the one feeding its standard input): its exit status and,
    /// when it failed, why.
    fn command(&self, job: &Job) -> (Option<i32>, Option<String>) {
        let mut feeder = match job.stdin_command() {
            Some(cmd) => match Command::new("sh")
                .args(["-c", cmd])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
            {
                Ok(c) => Some(c),
                Err(e) => return (None, Some(format!("`sh -c {cmd}` did not start: {e}"))),
            },
            None => None,
        };
        let stdin = match feeder.as_mut().and_then(|f| f.stdout.take()) {
            Some(out) => Stdio::from(out),
            None => Stdio::null(),
        };
        let child = Command::new(&self.exe)
            .args(job.argv())
            .stdin(stdin)
            .stdout(if self.quiet {
                Stdio::null()
            } else {
                Stdio::inherit()
            })
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                if let Some(f) = feeder.as_mut() {
                    let _ = f.kill();
                    let _ = f.wait();
                }
                return (
                    None,
                    Some(format!("{} did not start: {e}", self.exe.display())),
                );
            }
        };
        // Both error streams pass through as they come; their last lines are kept.
        let feeder_err = feeder
            .as_mut()
            .and_then(|f| f.stderr.take())
            .map(|e| std::thread::spawn(move || tee(e)));
        let err = child.stderr.take().map(tee).unwrap_or_default();
        let status = child.wait().ok();
        let feeder_status = feeder.as_mut().and_then(|f| f.wait().ok());
        let feeder_err = feeder_err.and_then(|t| t.join().ok()).unwrap_or_default();
        let code = status.and_then(|s| s.code());
        let mut why = None;
        if let (Some(s), Some(cmd)) = (feeder_status, job.stdin_command())
            && !s.success()
        {
            why = Some(format!(
                "the command feeding the backup (`{cmd}`) failed ({s}){}",
                last_lines(&feeder_err)
                    .map(|l| format!(": {l}"))
                    .unwrap_or_default()
            ));
        }
        if code != Some(0) {
            let said = last_lines(&err).unwrap_or_else(|| match status {
                Some(s) => format!("cairn {} ended: {s}", job.command),
                None => format!("cairn {} could not be waited for", job.command),
            });
            why = Some(match why {
                Some(w) => format!("{said}\n{w}"),
                None => said,
            });
        }
        (code, why)
    }
}

/// Copies `from` to this process's standard error line by line; returns what it copied (the
/// last 64 KiB of it).
fn tee(from: impl std::io::Read) -> String {
    let mut kept = String::new();
    let mut err = std::io::stderr();
    for line in BufReader::new(from).lines().map_while(Result::ok) {
        let _ = writeln!(err, "{line}");
        kept.push_str(&line);
        kept.push('\n');
        if kept.len() > 64 << 10 {
            let cut = kept.len() - (32 << 10);
            let cut = (cut..kept.len())
                .find(|&i| kept.is_char_boundary(i))
                .unwrap_or(cut);
            kept.drain(..cut);
        }
    }
    kept
}

/// The last [`ERROR_LINES`] lines of `text` that say something (progress bars left out).
fn last_lines(text: &str) -> Option<String> {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect();
    if lines.is_empty() {
        return None;
    }
    Some(lines[lines.len().saturating_sub(ERROR_LINES)..].join("\n"))
}

/// The points in `after` and not in `before`, and the bytes they added.
fn made(before: Option<&[(String, u64)]>, after: Option<&[(String, u64)]>) -> (Vec<String>, u64) {
    let (Some(before), Some(after)) = (before, after) else {
        return (Vec::new(), 0);
    };
    let old: std::collections::HashSet<&str> = before.iter().map(|(id, _)| id.as_str()).collect();
    let new: Vec<&(String, u64)> = after
        .iter()
        .filter(|(id, _)| !old.contains(id.as_str()))
        .collect();
    (
        new.iter().map(|(id, _)| id.clone()).collect(),
        new.iter().map(|(_, b)| b).sum(),
    )
}

/// The folder of this machine's job locks (`CAIRN_JOB_LOCKS`, else
/// `$XDG_RUNTIME_DIR/cairn-jobs`, else `/run/cairn-jobs` as root, `$TMPDIR/cairn-jobs-UID`
/// otherwise): one lock per job name, so two job files naming a job alike share its lock.
#[must_use]
pub fn lock_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CAIRN_JOB_LOCKS") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
        return Path::new(&d).join("cairn-jobs");
    }
    let uid = uid();
    if uid == 0 {
        PathBuf::from("/run/cairn-jobs")
    } else {
        std::env::temp_dir().join(format!("cairn-jobs-{uid}"))
    }
}

fn uid() -> u32 {
    // The owner of this process's /proc entry is its user.
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map_or(0, |m| m.uid())
}
