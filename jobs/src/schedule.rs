//! Running a job file's schedule in a long-lived process (`cairn serve --jobs FILE`: one process
//! for a server machine, where systemd timers are not wanted).
//!
//! - Each scheduled job runs at its schedule's next elapse after its last run; the jobs run one
//!   after the other (never two at once from here; the job's own lock keeps other runs apart).
//! - **A run missed while the process was down runs once** when it starts (its last recorded
//!   run is before an elapse that has passed), as systemd's `Persistent=true` does; elapses that
//!   pass while a job runs are one run after it, not one each.
//! - The clock can be sped up for tests (`CAIRN_JOB_CLOCK=START*FACTOR`: the time starts at
//!   START and runs FACTOR times as fast).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::file::{Job, JobFile};

/// The time the schedule is run against.
#[derive(Debug, Clone)]
pub struct Clock {
    real_start: Instant,
    start: DateTime<Utc>,
    factor: f64,
}

impl Clock {
    /// This machine's clock, or the one `CAIRN_JOB_CLOCK` (`START*FACTOR`) names.
    ///
    /// # Errors
    /// A `CAIRN_JOB_CLOCK` that does not read.
    pub fn from_env() -> Result<Self, String> {
        let Ok(spec) = std::env::var("CAIRN_JOB_CLOCK") else {
            return Ok(Self::real());
        };
        let (start, factor) = spec
            .split_once('*')
            .ok_or_else(|| format!("CAIRN_JOB_CLOCK={spec:?}: START*FACTOR"))?;
        Ok(Self {
            real_start: Instant::now(),
            start: DateTime::parse_from_rfc3339(start)
                .map_err(|e| format!("CAIRN_JOB_CLOCK: {start:?}: {e}"))?
                .to_utc(),
            factor: factor
                .parse()
                .ok()
                .filter(|f: &f64| *f > 0.0 && f.is_finite())
                .ok_or_else(|| format!("CAIRN_JOB_CLOCK: {factor:?} is not a speed"))?,
        })
    }

    /// This machine's clock.
    #[must_use]
    pub fn real() -> Self {
        Self {
            real_start: Instant::now(),
            start: Utc::now(),
            factor: 1.0,
        }
    }

    /// Now, by this clock.
    #[must_use]
    pub fn now(&self) -> DateTime<Utc> {
        let passed = self.real_start.elapsed().as_secs_f64() * self.factor;
        self.start + chrono::Duration::milliseconds((passed * 1000.0) as i64)
    }

    /// The real time until `at` by this clock.
    fn real_until(&self, at: DateTime<Utc>) -> Duration {
        let ms = (at - self.now()).num_milliseconds().max(0) as f64 / self.factor;
        Duration::from_millis(ms as u64)
    }
}

/// When each scheduled job of `file` is next due: after its last run (`last`), and at once when
/// an elapse passed since that run; after now for a job that never ran.
fn first_due(
    file: &JobFile,
    clock: &Clock,
    last: &dyn Fn(&Job) -> Option<DateTime<Utc>>,
) -> HashMap<String, DateTime<Utc>> {
    let now = clock.now();
    let mut due = HashMap::new();
    for job in &file.jobs {
        let Some(schedule) = &job.schedule else {
            continue;
        };
        let from = last(job).unwrap_or(now);
        if let Some(at) = schedule.next_after(from, &chrono::Local) {
            due.insert(job.name.clone(), at);
        }
    }
    due
}

/// Runs `file`'s schedule until `stop` is set: each job whose time came is handed to `run`
/// (which runs it to its end), one at a time. `last` says when a job last ran (its records).
pub fn run_schedule(
    file: &JobFile,
    clock: &Clock,
    last: &dyn Fn(&Job) -> Option<DateTime<Utc>>,
    run: &dyn Fn(&Job),
    stop: &AtomicBool,
) {
    let mut due = first_due(file, clock, last);
    while !stop.load(Ordering::SeqCst) {
        let now = clock.now();
        let ready: Vec<&Job> = file
            .jobs
            .iter()
            .filter(|j| due.get(&j.name).is_some_and(|at| *at <= now))
            .collect();
        for job in ready {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            run(job);
            // Elapses that passed while it ran are one run, the next one.
            let after = clock.now();
            match job
                .schedule
                .as_ref()
                .and_then(|s| s.next_after(after, &chrono::Local))
            {
                Some(at) => due.insert(job.name.clone(), at),
                None => due.remove(&job.name),
            };
        }
        // Sleep until the next is due, a second at most (stop is looked at each second).
        let next = due.values().min().copied();
        let wait = next.map_or(Duration::from_secs(1), |at| {
            clock.real_until(at).min(Duration::from_secs(1))
        });
        std::thread::sleep(wait.max(Duration::from_millis(10)));
    }
}
