//! `cairn job`: the job file's jobs checked, listed, run now, their history, and installed as
//! systemd timers (the `cairn-jobs` crate).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use cairn_jobs::record::{self, Outcome, Run};
use cairn_jobs::{Job, JobFile};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::table::{Align, Table};

/// Where the job file is when none is named.
const DEFAULT_FILE: &str = "/etc/cairn/jobs.toml";

#[derive(Debug, Args)]
pub struct FileArg {
    /// The job file.
    #[arg(long = "file", env = "CAIRN_JOBS", value_name = "FILE", default_value = DEFAULT_FILE)]
    pub file: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Check a job file: every job's command, flags and schedule (exit 2 naming the line when
    /// one is wrong), and when each runs next.
    #[command(after_help = "Example:\n  cairn job check /etc/cairn/jobs.toml")]
    Check {
        /// The job file (else --file, CAIRN_JOBS, /etc/cairn/jobs.toml).
        path: Option<PathBuf>,
        #[command(flatten)]
        file: FileArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The jobs: what each runs, when it runs next, how its last run went.
    #[command(after_help = "Example:\n  cairn job list --file /etc/cairn/jobs.toml")]
    List {
        #[command(flatten)]
        file: FileArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run jobs now, one after the other, with the output of the commands they run; each run
    /// is recorded. Exit status: 0 when every run succeeded or was skipped, 1 otherwise.
    #[command(after_help = "Examples:\n  cairn job run web01\n  \
        cairn job run --all --quiet --json    # one JSON line per run, for journald")]
    Run {
        #[command(flatten)]
        file: FileArg,
        /// The jobs to run.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        names: Vec<String>,
        /// Every job of the file, in its order.
        #[arg(long)]
        all: bool,
        /// One JSON line per run (its record) on standard output, the commands' own output
        /// dropped.
        #[arg(long)]
        json: bool,
        /// What started the run (kept in its record).
        #[arg(long, default_value = "manual", value_parser = ["manual", "timer", "serve"])]
        trigger: String,
    },
    /// The runs of the jobs, newest last.
    #[command(after_help = "Example:\n  cairn job history web01 --last 10")]
    History {
        #[command(flatten)]
        file: FileArg,
        /// The job (every job when none).
        name: Option<String>,
        /// The last N runs of each job.
        #[arg(long, default_value_t = 20)]
        last: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a systemd service and timer per scheduled job (Persistent=true: a run missed while
    /// the machine was down runs once), and say how to enable them.
    #[command(
        after_help = "Example:\n  cairn job install && systemctl daemon-reload && \
        systemctl enable --now 'cairn-job-*.timer'"
    )]
    Install {
        #[command(flatten)]
        file: FileArg,
        /// Where the units go.
        #[arg(long, default_value = "/etc/systemd/system", value_name = "DIR")]
        dir: PathBuf,
        /// Print the units, write nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// The flags of cairn's own commands, from its argument parser: what a job may give.
struct CairnCommands(clap::Command);

impl cairn_jobs::Commands for CairnCommands {
    fn flags(&self, command: &str) -> Option<Vec<(String, bool)>> {
        let sub = self.0.find_subcommand(command)?;
        Some(
            sub.get_arguments()
                .filter_map(|a| {
                    let long = a.get_long()?;
                    (long != "help" && long != "version")
                        .then(|| (long.to_owned(), a.get_action().takes_values()))
                })
                .collect(),
        )
    }
}

/// Reads and checks the job file at `path`.
fn read(path: &Path) -> Result<JobFile> {
    let mut cli = crate::command();
    cli.build();
    Ok(JobFile::read(path, &CairnCommands(cli))?)
}

pub fn job(c: &JobCommand) -> Result<i32> {
    match c {
        JobCommand::Check { path, file, json } => check(path.as_ref().unwrap_or(&file.file), *json),
        JobCommand::List { file, json } => list(&file.file, *json),
        JobCommand::Run {
            file,
            names,
            all,
            json,
            trigger,
        } => run(&file.file, names, *all, *json, trigger),
        JobCommand::History {
            file,
            name,
            last,
            json,
        } => history(&file.file, name.as_deref(), *last, *json),
        JobCommand::Install { file, dir, dry_run } => install(&file.file, dir, *dry_run),
    }
}

/// When `job` runs next, in UTC (none: no schedule, or none to come).
fn next_run(job: &Job) -> Option<chrono::DateTime<chrono::Utc>> {
    job.schedule
        .as_ref()?
        .next_after(chrono::Utc::now(), &chrono::Local)
}

fn job_json(job: &Job) -> serde_json::Value {
    json!({
        "name": job.name, "run": job.command, "line": job.line,
        "schedule": job.schedule.as_ref().map(|s| s.text()),
        "normalized": job.schedule.as_ref().map(cairn_jobs::Calendar::normalized),
        "next": next_run(job),
        "overlap": format!("{:?}", job.overlap).to_lowercase(),
        "description": job.description,
        "command": job.argv(),
    })
}

fn check(path: &Path, as_json: bool) -> Result<i32> {
    let file = match read(path) {
        Ok(f) => f,
        Err(e) => crate::usage!("{e:#}"),
    };
    if as_json {
        crate::print_json(&json!({
            "file": path, "valid": true,
            "jobs": file.jobs.iter().map(job_json).collect::<Vec<_>>(),
        }))?;
        return Ok(0);
    }
    println!(
        "{}: {} valid",
        path.display(),
        crate::words::count(file.jobs.len() as u64, "job")
    );
    for job in &file.jobs {
        println!(
            "  {}: cairn {} ({}){}",
            job.name,
            job.argv().join(" "),
            job.schedule.as_ref().map_or_else(
                || "no schedule".to_owned(),
                |s| format!("{}: {}", s.text(), s.normalized())
            ),
            next_run(job)
                .map(|t| format!(
                    ", next {}",
                    t.with_timezone(&chrono::Local)
                        .format("%Y-%m-%d %H:%M:%S %Z")
                ))
                .unwrap_or_default()
        );
    }
    Ok(0)
}

/// The store a job works on (its `--store`, a replication's `--from`, else CAIRN_STORE).
fn store_of(job: &Job) -> Option<String> {
    job.flag("store")
        .or_else(|| job.flag("from"))
        .map(str::to_owned)
        .or_else(|| std::env::var("CAIRN_STORE").ok())
}

/// Where a job's runs are recorded: its store's `job-runs/` for a store folder, else this
/// machine's state folder (`$XDG_STATE_HOME/cairn/job-runs`, `~/.local/state/...`).
fn records_of(job: &Job) -> PathBuf {
    match store_of(job) {
        Some(s) if !cairn_remote::is_remote(&s) => Path::new(&s).join(record::RUNS_DIR),
        _ => std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/state")))
            .unwrap_or_else(std::env::temp_dir)
            .join("cairn")
            .join(record::RUNS_DIR),
    }
}

fn list(path: &Path, as_json: bool) -> Result<i32> {
    let file = read(path)?;
    let rows: Vec<(serde_json::Value, Option<Run>)> = file
        .jobs
        .iter()
        .map(|j| (job_json(j), record::runs_of(&records_of(j), &j.name).pop()))
        .collect();
    if as_json {
        let docs: Vec<_> = rows
            .into_iter()
            .map(|(mut d, last)| {
                d["last_run"] = serde_json::to_value(last).unwrap_or_default();
                d
            })
            .collect();
        crate::print_json(&docs)?;
        return Ok(0);
    }
    let mut t = Table::new(&[
        ("JOB", Align::Left),
        ("RUN", Align::Left),
        ("SCHEDULE", Align::Left),
        ("NEXT", Align::Left),
        ("LAST RUN", Align::Left),
        ("OUTCOME", Align::Left),
    ]);
    for (d, last) in &rows {
        t.row(vec![
            d["name"].as_str().unwrap_or("").to_owned(),
            d["run"].as_str().unwrap_or("").to_owned(),
            d["schedule"].as_str().unwrap_or("-").to_owned(),
            d["next"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| {
                    t.with_timezone(&chrono::Local)
                        .format("%Y-%m-%d %H:%M")
                        .to_string()
                })
                .unwrap_or_else(|| "-".into()),
            last.as_ref()
                .map(|r| {
                    r.started
                        .with_timezone(&chrono::Local)
                        .format("%Y-%m-%d %H:%M")
                        .to_string()
                })
                .unwrap_or_else(|| "never".into()),
            last.as_ref().map(outcome_word).unwrap_or_default(),
        ]);
    }
    t.print();
    Ok(0)
}

fn outcome_word(r: &Run) -> String {
    match r.outcome {
        Outcome::Ok => "ok".into(),
        Outcome::Skipped => "skipped".into(),
        Outcome::Failed => format!(
            "FAILED{}",
            r.exit_code
                .map(|c| format!(" (exit {c})"))
                .unwrap_or_default()
        ),
    }
}

fn run(path: &Path, names: &[String], all: bool, as_json: bool, trigger: &str) -> Result<i32> {
    let file = read(path)?;
    let jobs: Vec<&Job> = if all {
        file.jobs.iter().collect()
    } else {
        names
            .iter()
            .map(|n| {
                file.job(n).ok_or_else(|| {
                    anyhow::anyhow!(
                        "{}: no job {n:?} (the jobs: {})",
                        path.display(),
                        file.jobs
                            .iter()
                            .map(|j| j.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })
            })
            .collect::<Result<_>>()?
    };
    let exe = std::env::current_exe().context("finding the cairn binary")?;
    let mut failed = false;
    for job in jobs {
        let store = store_of(job);
        let server = server_of(job);
        let points = || match &server {
            Some(remote) => cairn_store::StoreRead::points(remote).ok().map(|ps| {
                ps.into_iter()
                    .map(|p| (p.id.to_string(), p.stats.new_stored_bytes))
                    .collect()
            }),
            None => points_of(store.as_deref()),
        };
        let runner = cairn_jobs::Runner {
            exe: exe.clone(),
            locks: cairn_jobs::run::lock_dir(),
            trigger,
            quiet: as_json || crate::quiet(),
            points: &points,
        };
        if !as_json {
            crate::say!("job {}: cairn {}", job.name, job.argv().join(" "));
        }
        let r = runner.run(job)?;
        let kept = records_of(job);
        if let Err(e) = record::append(&kept, &r) {
            eprintln!("warning: job {}: its run was not recorded: {e}", job.name);
        }
        // A job on a server's store: its store keeps the record too (for its report and
        // metrics).
        if let Some(remote) = &server
            && let Err(e) = remote.record_job_run(&serde_json::to_value(&r)?)
        {
            eprintln!(
                "warning: job {}: the server did not keep its run: {e}",
                job.name
            );
        }
        for e in file
            .notify
            .tell(job.notify.unwrap_or(file.notify.on), &r, &file.path)
        {
            eprintln!("warning: job {}: not told: {e}", job.name);
        }
        failed |= r.outcome == Outcome::Failed;
        if as_json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            say_run(&r);
        }
    }
    Ok(i32::from(failed))
}

/// The server a job's store is, reached with the job's own token and certificate check (none
/// when the store is a folder or the server cannot be reached now).
fn server_of(job: &Job) -> Option<cairn_remote::Remote> {
    let url = store_of(job).filter(|s| cairn_remote::is_remote(s))?;
    let token = match job.flag("token-file") {
        Some(f) => std::fs::read_to_string(f).ok()?,
        None => std::env::var("CAIRN_TOKEN").ok()?,
    };
    let opts = cairn_remote::Options {
        token: token.trim().to_owned(),
        tls: cairn_remote::TlsOptions {
            ca_file: job
                .flag("server-ca")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("CAIRN_SERVER_CA").map(PathBuf::from)),
            fingerprint: job
                .flag("fingerprint")
                .map(str::to_owned)
                .or_else(|| std::env::var("CAIRN_FINGERPRINT").ok()),
        },
    };
    cairn_remote::Remote::connect(&url, &opts).ok()
}

/// The store's points as `(id, bytes each added)`, for a store folder.
fn points_of(store: Option<&str>) -> Option<Vec<(String, u64)>> {
    let s = store.filter(|s| !cairn_remote::is_remote(s))?;
    let store = cairn_store::Store::open(Path::new(s), cairn_store::OpenMode::Read).ok()?;
    Some(
        store
            .points()
            .ok()?
            .into_iter()
            .map(|p| (p.id.to_string(), p.stats.new_stored_bytes))
            .collect(),
    )
}

fn say_run(r: &Run) {
    let took = (r.ended - r.started).num_milliseconds() as f64 / 1000.0;
    let made = if r.points.is_empty() {
        String::new()
    } else {
        format!(
            ", {} ({} stored)",
            crate::words::count(r.points.len() as u64, "point"),
            crate::words::human_bytes(r.bytes_stored)
        )
    };
    match r.outcome {
        Outcome::Ok => crate::say!("job {}: ok in {took:.1} s{made}", r.job),
        Outcome::Skipped => crate::say!(
            "job {}: skipped: {}",
            r.job,
            r.error.as_deref().unwrap_or("")
        ),
        Outcome::Failed => eprintln!(
            "job {}: FAILED{} after {took:.1} s: {}",
            r.job,
            r.exit_code
                .map(|c| format!(" (exit {c})"))
                .unwrap_or_default(),
            r.error
                .as_deref()
                .unwrap_or("")
                .lines()
                .last()
                .unwrap_or("")
        ),
    }
}

fn history(path: &Path, name: Option<&str>, last: usize, as_json: bool) -> Result<i32> {
    let file = read(path)?;
    let jobs: Vec<&Job> = match name {
        Some(n) => vec![
            file.job(n)
                .ok_or_else(|| anyhow::anyhow!("{}: no job {n:?}", path.display()))?,
        ],
        None => file.jobs.iter().collect(),
    };
    let mut runs: Vec<Run> = Vec::new();
    for job in jobs {
        let mut r = record::runs_of(&records_of(job), &job.name);
        r.drain(..r.len().saturating_sub(last));
        runs.extend(r);
    }
    runs.sort_by_key(|r| r.started);
    if as_json {
        crate::print_json(&runs)?;
        return Ok(0);
    }
    let mut t = Table::new(&[
        ("JOB", Align::Left),
        ("STARTED", Align::Left),
        ("SECONDS", Align::Right),
        ("TRIGGER", Align::Left),
        ("OUTCOME", Align::Left),
        ("POINTS", Align::Right),
        ("STORED", Align::Right),
        ("ERROR", Align::Left),
    ]);
    for r in &runs {
        t.row(vec![
            r.job.clone(),
            r.started
                .with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string(),
            format!(
                "{:.1}",
                (r.ended - r.started).num_milliseconds() as f64 / 1000.0
            ),
            r.trigger.clone(),
            outcome_word(r),
            r.points.len().to_string(),
            crate::words::human_bytes(r.bytes_stored),
            r.error
                .as_deref()
                .unwrap_or("")
                .lines()
                .last()
                .unwrap_or("")
                .to_owned(),
        ]);
    }
    t.print();
    Ok(0)
}

/// A job file's schedule, read and checked, to be run by `cairn serve --jobs` once it listens
/// (a run missed while it was down may be due at once, and may go through the server).
pub struct Schedule {
    file: JobFile,
    clock: cairn_jobs::schedule::Clock,
    exe: PathBuf,
}

impl Schedule {
    /// Reads and checks the job file at `path`.
    ///
    /// # Errors
    /// A job file with a mistake, a clock (`CAIRN_JOB_CLOCK`) that does not read.
    pub fn read(path: &Path) -> Result<Self> {
        Ok(Self {
            file: read(path)?,
            clock: cairn_jobs::schedule::Clock::from_env().map_err(anyhow::Error::msg)?,
            exe: std::env::current_exe().context("finding the cairn binary")?,
        })
    }

    /// Runs it on a thread of its own: each run as `cairn job run --trigger serve NAME`, said
    /// in this process's log.
    pub fn start(self) {
        let scheduled = self
            .file
            .jobs
            .iter()
            .filter(|j| j.schedule.is_some())
            .count();
        tracing::info!(file = %self.file.path.display(), jobs = scheduled, "running the job file's schedule");
        let spawned = std::thread::Builder::new()
            .name("job-schedule".into())
            .spawn(move || {
                let last = |job: &Job| {
                    record::runs_of(&records_of(job), &job.name)
                        .last()
                        .map(|r| r.started)
                };
                let run = |job: &Job| {
                    tracing::info!(job = %job.name, "job due: running it");
                    let status = std::process::Command::new(&self.exe)
                        .args(["job", "run", "--quiet", "--trigger", "serve", "--file"])
                        .arg(&self.file.path)
                        .arg(&job.name)
                        .stdin(std::process::Stdio::null())
                        .stdout(std::process::Stdio::null())
                        .status();
                    match status {
                        Ok(s) => tracing::info!(job = %job.name, %s, "job ended"),
                        Err(e) => tracing::warn!(job = %job.name, "job did not start: {e}"),
                    }
                };
                let stop = std::sync::atomic::AtomicBool::new(false);
                cairn_jobs::schedule::run_schedule(&self.file, &self.clock, &last, &run, &stop);
            });
        if let Err(e) = spawned {
            tracing::error!("the job schedule's thread did not start: {e}");
        }
    }
}

fn install(path: &Path, dir: &Path, dry_run: bool) -> Result<i32> {
    let file = read(path)?;
    let path = std::fs::canonicalize(path).with_context(|| format!("{}", path.display()))?;
    let file = JobFile { path, ..file };
    let exe = std::env::current_exe().context("finding the cairn binary")?;
    let units = cairn_jobs::units::units(&file, &exe);
    if units.is_empty() {
        bail!(
            "{}: no job has a schedule: nothing to install",
            file.path.display()
        );
    }
    for (name, text) in &units {
        if dry_run {
            println!("# {}\n{text}", dir.join(name).display());
            continue;
        }
        std::fs::create_dir_all(dir).with_context(|| format!("making {}", dir.display()))?;
        cairn_store::write_atomic_mode(&dir.join(name), text.as_bytes(), 0o644)
            .with_context(|| format!("writing {}", dir.join(name).display()))?;
        println!("wrote {}", dir.join(name).display());
    }
    if !dry_run {
        let timers: Vec<&str> = units
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| n.ends_with(".timer"))
            .collect();
        println!(
            "then: systemctl daemon-reload && systemctl enable --now {}",
            timers.join(" ")
        );
    }
    Ok(0)
}
