//! Jobs: what an admin runs every night, said once in a file instead of in every script.
//!
//! - [`file`]: the job file (`cairn.jobs.toml`): named jobs, each a cairn command with its
//!   flags and a schedule, parsed strictly (an unknown key, a flag the command does not take, a
//!   bad schedule: an error naming the line).
//! - [`calendar`]: schedules in systemd's calendar syntax, normalized as systemd writes them,
//!   with the next elapse computed as systemd does.
//! - [`run`]: a run: the job's lock (never two runs of a job at once on a machine: the second
//!   skips or waits, as the job says), `cairn` started with the job's command line, its output
//!   passed through, the points it made found.
//! - [`record`]: every run's record (start, end, outcome, exit status, error, points, bytes)
//!   in the store's `job-runs/` folder.
//! - [`notify`]: a webhook and mail on a failed run (or every run), with the error and the
//!   command to run it again.
//! - [`units`]: the systemd service and timer of each scheduled job (`cairn job install`).
//! - [`schedule`]: the schedule run by a long-lived process (`cairn serve --jobs FILE`), a run
//!   missed while it was down run once.
//!
//! This crate knows no store internals: a job is a `cairn` command line, run as a process.

pub mod calendar;
pub mod file;
pub mod notify;
pub mod record;
pub mod run;
pub mod schedule;
pub mod units;

pub use calendar::{Calendar, CalendarError};
pub use file::{Commands, FileError, Job, JobFile, Overlap, Source};
pub use notify::{Notify, When};
pub use record::{Outcome, Run};
pub use run::Runner;
