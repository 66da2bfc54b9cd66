//! The job file: named jobs, each a cairn command with its flags and a schedule, in TOML.
//!
//! ```toml
//! [defaults]                      # given to every job whose command takes them
//! store = "/var/lib/cairn/store"
//!
//! [jobs.web01]
//! run = "backup"                  # the command: backup, prune, gc, verify, replicate,
//! schedule = "Mon..Fri 02:00"     #   standby, check-boot; the schedule: systemd's syntax
//! vm = "web01"                    # the command's own flags, by their long names
//! vm-uuid = "6f1c2a4e-0b1d-4c3e-9a8f-1d2e3f4a5b6c"
//! tag = ["prod"]                  # a flag given several times
//! disks.xvda = "/exports/web01/xvda.vhd"        # backup's DISK=SOURCE
//! disks.xvdb = { command = "ssh xen1 cat /dev/vg/web01-b" }   # a disk read from a command
//!
//! [jobs.nightly-prune]
//! run = "prune"
//! schedule = "daily"
//! keep-daily = 7
//! keep-weekly = 4
//! ```
//!
//! A separate file rather than a section of the store's configuration: a job names where it
//! reads (hosts, NBD exports, commands) and often two stores (replicate, standby), while the
//! store's configuration travels with the store (replicas, buckets) and is written by cairn.
//!
//! Parsed strictly: TOML's own errors, an unknown key, a flag the command does not take, a
//! value of the wrong kind, a bad schedule, two disks named alike are errors naming the file
//! and the line. The flags are checked against the commands themselves ([`Commands`]), so the
//! file and the command line never drift apart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

use crate::calendar::Calendar;
use crate::notify::{Mail, Notify, When};

/// What is wrong with a job file: the file, the line and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {why}", file.display())]
pub struct FileError {
    /// The file.
    pub file: PathBuf,
    /// The line (1-based; 0 when the error is about the whole file).
    pub line: usize,
    /// What is wrong.
    pub why: String,
}

/// The commands a job may run, and their flags: what `cairn` itself takes (the CLI answers
/// from its argument parser).
pub trait Commands {
    /// The long flags of `command`, each with whether it takes a value (`false`: a switch);
    /// `None` when there is no such command.
    fn flags(&self, command: &str) -> Option<Vec<(String, bool)>>;
}

/// The commands a job may run.
pub const RUNNABLE: [&str; 7] = [
    "backup",
    "prune",
    "gc",
    "verify",
    "replicate",
    "standby",
    "check-boot",
];

/// What a second run of a job does while one runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlap {
    /// It does not run, and its record says so.
    Skip,
    /// It waits for the first to end, then runs.
    Wait,
}

/// A disk of a backup job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A path, NBD URI or URL, as `backup DISK=SOURCE` takes it.
    Given(String),
    /// The standard output of a command (run with `sh -c`), read as `DISK=-`.
    Command(String),
}

/// One job.
#[derive(Debug, Clone)]
pub struct Job {
    /// Its name (the table's key).
    pub name: String,
    /// Where it starts in the file.
    pub line: usize,
    /// The command it runs.
    pub command: String,
    /// When it runs by itself (none: only `cairn job run`).
    pub schedule: Option<Calendar>,
    /// What a run that finds the job running does.
    pub overlap: Overlap,
    /// What it says of itself.
    pub description: Option<String>,
    /// Its flags, in order: `--NAME=VALUE`, or `--NAME` for a switch.
    pub flags: Vec<(String, Option<String>)>,
    /// Its positional arguments (`args`).
    pub args: Vec<String>,
    /// A backup's disks, in the file's order.
    pub disks: Vec<(String, Source)>,
    /// When its runs are told, when it says so (else the file's `[notify] on`).
    pub notify: Option<When>,
}

impl Job {
    /// The command line it runs (after `cairn`), with the disk a command feeds as `DISK=-`.
    #[must_use]
    pub fn argv(&self) -> Vec<String> {
        let mut argv = vec![self.command.clone()];
        for (flag, value) in &self.flags {
            argv.push(match value {
                Some(v) => format!("--{flag}={v}"),
                None => format!("--{flag}"),
            });
        }
        argv.extend(self.args.iter().cloned());
        for (disk, source) in &self.disks {
            argv.push(match source {
                Source::Given(s) => format!("{disk}={s}"),
                Source::Command(_) => format!("{disk}=-"),
            });
        }
        argv
    }

    /// The command whose output a backup reads as its standard input, if any.
    #[must_use]
    pub fn stdin_command(&self) -> Option<&str> {
        self.disks.iter().find_map(|(_, s)| match s {
            Source::Command(c) => Some(c.as_str()),
            Source::Given(_) => None,
        })
    }

    /// The value of flag `name`, when given.
    #[must_use]
    pub fn flag(&self, name: &str) -> Option<&str> {
        self.flags
            .iter()
            .find(|(f, _)| f == name)
            .and_then(|(_, v)| v.as_deref())
    }
}

/// A parsed job file.
#[derive(Debug, Clone)]
pub struct JobFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// Its jobs, in the file's order.
    pub jobs: Vec<Job>,
    /// Where runs are told.
    pub notify: Notify,
}

impl JobFile {
    /// Reads and checks the job file at `path`.
    ///
    /// # Errors
    /// A file that cannot be read, or any [`FileError`].
    pub fn read(path: &Path, commands: &dyn Commands) -> Result<Self, FileError> {
        let text = std::fs::read_to_string(path).map_err(|e| FileError {
            file: path.to_path_buf(),
            line: 0,
            why: format!("cannot be read: {e}"),
        })?;
        Self::parse(&text, path, commands)
    }

    /// Parses and checks `text` (the contents of `path`).
    ///
    /// # Errors
    /// [`FileError`]: TOML's own errors, unknown keys, flags the command does not take, values
    /// of the wrong kind, bad schedules.
    pub fn parse(text: &str, path: &Path, commands: &dyn Commands) -> Result<Self, FileError> {
        let p = Parser { text, path };
        let root = DeTable::parse(text).map_err(|e| {
            let line = e.span().map_or(0, |s| p.line(s.start));
            p.err_at(line, e.message().trim().to_owned())
        })?;
        let mut defaults: Vec<Written> = Vec::new();
        let mut jobs = Vec::new();
        let mut notify = Notify::default();
        for (key, value) in root.get_ref() {
            let line = p.line(key.span().start);
            match key.get_ref().as_ref() {
                "defaults" => {
                    let table = p.table(value, "defaults")?;
                    for (k, v) in table {
                        let flag = p.flag_value(v, k.get_ref())?;
                        defaults.push((k.get_ref().to_string(), flag, p.line(k.span().start)));
                    }
                }
                "jobs" => {
                    for (name, job) in p.table(value, "jobs")? {
                        jobs.push(p.job(name.get_ref(), job, p.line(name.span().start))?);
                    }
                }
                "notify" => notify = p.notify(value)?,
                other => {
                    return Err(p.err_at(
                        line,
                        format!("unknown key {other:?}: a job file holds [defaults], [notify] and [jobs.NAME] tables"),
                    ));
                }
            }
        }
        if jobs.is_empty() {
            return Err(p.err_at(0, "no job: add a [jobs.NAME] table".into()));
        }
        let jobs = jobs
            .into_iter()
            .map(|(mut job, written)| {
                p.check_flags(&mut job, written, &defaults, commands)?;
                Ok(job)
            })
            .collect::<Result<_, FileError>>()?;
        Ok(Self {
            path: path.to_path_buf(),
            jobs,
            notify,
        })
    }

    /// The job named `name`.
    #[must_use]
    pub fn job(&self, name: &str) -> Option<&Job> {
        self.jobs.iter().find(|j| j.name == name)
    }
}

/// A flag's value in the file.
#[derive(Debug, Clone)]
enum Flag {
    Switch(bool),
    Values(Vec<String>),
}

/// A flag as written (its name, its value, its line), before its command's check.
type Written = (String, Flag, usize);

struct Parser<'a> {
    text: &'a str,
    path: &'a Path,
}

type Spanned<'i> = toml::Spanned<DeValue<'i>>;

impl Parser<'_> {
    fn line(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .bytes()
            .filter(|&b| b == b'\n')
            .count()
            + 1
    }

    fn err_at(&self, line: usize, why: String) -> FileError {
        FileError {
            file: self.path.to_path_buf(),
            line,
            why,
        }
    }

    fn err(&self, v: &Spanned<'_>, why: String) -> FileError {
        self.err_at(self.line(v.span().start), why)
    }

    fn table<'v, 'i>(&self, v: &'v Spanned<'i>, what: &str) -> Result<&'v DeTable<'i>, FileError> {
        match v.get_ref() {
            DeValue::Table(t) => Ok(t),
            _ => Err(self.err(v, format!("{what} must be a table"))),
        }
    }

    fn string(&self, v: &Spanned<'_>, what: &str) -> Result<String, FileError> {
        match v.get_ref() {
            DeValue::String(s) => Ok(s.to_string()),
            _ => Err(self.err(v, format!("{what} must be a string"))),
        }
    }

    /// A flag's value: a switch (`true`/`false`), a value (string or number), or several.
    fn flag_value(&self, v: &Spanned<'_>, key: &str) -> Result<Flag, FileError> {
        let one = |v: &Spanned<'_>| -> Result<String, FileError> {
            match v.get_ref() {
                DeValue::String(s) => Ok(s.to_string()),
                DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                    .map(|n| n.to_string())
                    .map_err(|_| {
                        self.err(
                            v,
                            format!("{key}: {} is not a whole number here", i.as_str()),
                        )
                    }),
                DeValue::Float(f) => Ok(f.as_str().to_owned()),
                _ => Err(self.err(
                    v,
                    format!("{key}: a flag's value is a string, a number, true/false or a list"),
                )),
            }
        };
        match v.get_ref() {
            DeValue::Boolean(b) => Ok(Flag::Switch(*b)),
            DeValue::Array(items) => {
                if items.is_empty() {
                    return Err(self.err(v, format!("{key}: an empty list")));
                }
                items
                    .iter()
                    .map(one)
                    .collect::<Result<_, _>>()
                    .map(Flag::Values)
            }
            _ => Ok(Flag::Values(vec![one(v)?])),
        }
    }

    /// A job, and its flags as written (checked once every job is read).
    fn job(
        &self,
        name: &str,
        v: &Spanned<'_>,
        line: usize,
    ) -> Result<(Job, Vec<Written>), FileError> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(self.err_at(
                line,
                format!("job {name:?}: a job's name is letters, digits, '-', '_' and '.' (it names a systemd unit)"),
            ));
        }
        let table = self.table(v, &format!("job {name}"))?;
        let mut job = Job {
            name: name.to_owned(),
            line,
            command: String::new(),
            schedule: None,
            overlap: Overlap::Skip,
            description: None,
            flags: Vec::new(),
            args: Vec::new(),
            disks: Vec::new(),
            notify: None,
        };
        let mut written: Vec<Written> = Vec::new();
        for (k, v) in table {
            let key = k.get_ref().as_ref();
            match key {
                "run" => {
                    let c = self.string(v, "run")?;
                    if !RUNNABLE.contains(&c.as_str()) {
                        return Err(self.err(
                            v,
                            format!(
                                "job {name}: run = {c:?}: a job runs one of {}",
                                RUNNABLE.join(", ")
                            ),
                        ));
                    }
                    job.command = c;
                }
                "schedule" => {
                    let s = self.string(v, "schedule")?;
                    job.schedule = Some(
                        Calendar::parse(&s).map_err(|e| self.err(v, format!("job {name}: {e}")))?,
                    );
                }
                "overlap" => {
                    job.overlap = match self.string(v, "overlap")?.as_str() {
                        "skip" => Overlap::Skip,
                        "wait" => Overlap::Wait,
                        o => {
                            return Err(
                                self.err(v, format!("job {name}: overlap = {o:?}: skip or wait"))
                            );
                        }
                    };
                }
                "description" => job.description = Some(self.string(v, "description")?),
                "notify" => job.notify = Some(self.when(v)?),
                "args" => {
                    job.args = match self.flag_value(v, "args")? {
                        Flag::Values(a) => a,
                        Flag::Switch(_) => {
                            return Err(
                                self.err(v, format!("job {name}: args is a list of strings"))
                            );
                        }
                    };
                }
                "disks" => {
                    for (disk, src) in self.table(v, "disks")? {
                        let source = match src.get_ref() {
                            DeValue::String(s) => Source::Given(s.to_string()),
                            DeValue::Table(t) => {
                                let mut command = None;
                                for (ck, cv) in t {
                                    if ck.get_ref().as_ref() != "command" {
                                        return Err(self.err(
                                            cv,
                                            format!("disk {}: unknown key {:?} (a disk is a source or {{ command = \"...\" }})", disk.get_ref(), ck.get_ref()),
                                        ));
                                    }
                                    command = Some(self.string(cv, "command")?);
                                }
                                Source::Command(command.ok_or_else(|| {
                                    self.err(
                                        src,
                                        format!("disk {}: {{ command = \"...\" }}", disk.get_ref()),
                                    )
                                })?)
                            }
                            _ => {
                                return Err(self.err(
                                    src,
                                    format!("disk {}: a source (path, NBD URI, URL) or {{ command = \"...\" }}", disk.get_ref()),
                                ));
                            }
                        };
                        job.disks.push((disk.get_ref().to_string(), source));
                    }
                }
                flag => written.push((
                    flag.to_owned(),
                    self.flag_value(v, flag)?,
                    self.line(k.span().start),
                )),
            }
        }
        if job.command.is_empty() {
            return Err(self.err_at(
                line,
                format!(
                    "job {name}: no run = \"...\" (one of {})",
                    RUNNABLE.join(", ")
                ),
            ));
        }
        if !job.disks.is_empty() && job.command != "backup" {
            return Err(self.err_at(line, format!("job {name}: disks are a backup's")));
        }
        if job.command == "backup" && job.disks.is_empty() && job.args.is_empty() {
            return Err(self.err_at(
                line,
                format!("job {name}: a backup needs disks.NAME = SOURCE"),
            ));
        }
        if job
            .disks
            .iter()
            .filter(|(_, s)| matches!(s, Source::Command(_)))
            .count()
            > 1
        {
            return Err(self.err_at(
                line,
                format!("job {name}: one disk only may come from a command (it is the backup's standard input)"),
            ));
        }
        Ok((job, written))
    }

    fn when(&self, v: &Spanned<'_>) -> Result<When, FileError> {
        let w = self.string(v, "notify")?;
        When::from_name(&w)
            .ok_or_else(|| self.err(v, format!("notify = {w:?}: failure, always or never")))
    }

    /// The `[notify]` table.
    fn notify(&self, v: &Spanned<'_>) -> Result<Notify, FileError> {
        let mut n = Notify::default();
        for (k, v) in self.table(v, "notify")? {
            match k.get_ref().as_ref() {
                "on" => n.on = self.when(v)?,
                "webhook" => {
                    let url = self.string(v, "webhook")?;
                    if !url.starts_with("https://") && !url.starts_with("http://") {
                        return Err(self.err(v, format!("webhook {url:?}: an http(s):// URL")));
                    }
                    n.webhook = Some(url);
                }
                "mail" => n.mail = Some(self.mail(v)?),
                other => {
                    return Err(self.err(
                        v,
                        format!("[notify]: unknown key {other:?} (on, webhook, mail)"),
                    ));
                }
            }
        }
        Ok(n)
    }

    fn mail(&self, v: &Spanned<'_>) -> Result<Mail, FileError> {
        let (mut to, mut from, mut smtp) = (Vec::new(), None, None);
        let (mut user, mut password_file, mut ca_file) = (None, None, None);
        for (k, v) in self.table(v, "mail")? {
            match k.get_ref().as_ref() {
                "to" => {
                    to = match self.flag_value(v, "to")? {
                        Flag::Values(a) => a,
                        Flag::Switch(_) => return Err(self.err(v, "mail.to: addresses".into())),
                    }
                }
                "from" => from = Some(self.string(v, "mail.from")?),
                "smtp" => smtp = Some(self.string(v, "mail.smtp")?),
                "user" => user = Some(self.string(v, "mail.user")?),
                "password-file" => {
                    password_file = Some(PathBuf::from(self.string(v, "mail.password-file")?))
                }
                "ca-file" => ca_file = Some(PathBuf::from(self.string(v, "mail.ca-file")?)),
                other => {
                    return Err(self.err(
                        v,
                        format!("mail: unknown key {other:?} (to, from, smtp, user, password-file, ca-file)"),
                    ));
                }
            }
        }
        let missing = |what: &str| self.err(v, format!("mail: {what} is missing"));
        if to.is_empty() {
            return Err(missing("to"));
        }
        Ok(Mail {
            to,
            from: from.ok_or_else(|| missing("from"))?,
            smtp: smtp.ok_or_else(|| missing("smtp"))?,
            user,
            password_file,
            ca_file,
        })
    }

    /// Checks the flags `written` for `job` against its command, then gives it them and the
    /// defaults its command takes.
    fn check_flags(
        &self,
        job: &mut Job,
        written: Vec<Written>,
        defaults: &[Written],
        commands: &dyn Commands,
    ) -> Result<(), FileError> {
        let known = commands.flags(&job.command).ok_or_else(|| {
            self.err_at(
                job.line,
                format!("job {}: cairn has no command {:?}", job.name, job.command),
            )
        })?;
        let takes = |flag: &str| known.iter().find(|(f, _)| f == flag).map(|(_, v)| *v);
        let mut checked = Vec::new();
        for (name, value, line) in written {
            match (takes(&name), &value) {
                (None, _) => {
                    return Err(self.err_at(
                        line,
                        format!(
                            "job {}: `cairn {}` takes no --{name}",
                            job.name, job.command
                        ),
                    ));
                }
                (Some(true), Flag::Switch(_)) => {
                    return Err(self.err_at(
                        line,
                        format!("job {}: --{name} takes a value, not true/false", job.name),
                    ));
                }
                (Some(false), Flag::Values(_)) => {
                    return Err(self.err_at(
                        line,
                        format!("job {}: --{name} is a switch: true or false", job.name),
                    ));
                }
                _ => checked.push((name, value)),
            }
        }
        for (flag, value, _) in defaults {
            if takes(flag).is_some() && !checked.iter().any(|(f, _)| f == flag) {
                checked.push((flag.clone(), value.clone()));
            }
        }
        for (flag, value) in checked {
            match value {
                Flag::Switch(true) => job.flags.push((flag, None)),
                Flag::Switch(false) => {}
                Flag::Values(vs) => {
                    for v in vs {
                        job.flags.push((flag.clone(), Some(v)));
                    }
                }
            }
        }
        Ok(())
    }
}

/// The flags of `cairn`'s commands as a map, for tests and for [`Commands`] implementations
/// that have them at hand.
impl Commands for BTreeMap<String, Vec<(String, bool)>> {
    fn flags(&self, command: &str) -> Option<Vec<(String, bool)>> {
        self.get(command).cloned()
    }
}
