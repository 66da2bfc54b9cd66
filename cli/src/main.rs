//! The `cairn` command: backups of VM disks into a content-addressed, deduplicating store, and
//! the `cairn vhd` tools for VHD files.
//!
//! `main` parses the command line, runs one command, prints the error chain on failure and
//! exits non-zero (1 for a failed operation, 2 for a usage error, as clap does).

mod adopt_cmd;
mod backup_cmd;
mod check_cmd;
mod diff_cmd;
mod files_cmd;
mod forget_cmd;
mod gc_cmd;
mod job_cmd;
mod key_cmd;
mod list_cmd;
mod mount_cmd;
mod nbd_cmd;
mod new_file;
mod point_rows;
mod policy_cmd;
mod progress;
mod protect_cmd;
mod prune_cmd;
mod replicate_cmd;
mod report_cmd;
mod restore_cmd;
mod serve_cmd;
mod standby_cmd;
mod store_cmd;
mod table;
mod values;
mod verify_cmd;
mod vhd_cmd;
mod words;

use clap::{Parser, Subcommand};

/// cairn: a content-addressed, deduplicating block store for forever-incremental VM disk
/// backups.
#[derive(Debug, Parser)]
#[command(
    name = "cairn",
    version,
    about,
    long_about = None,
    propagate_version = true,
    after_help = "Examples:\n  \
    export CAIRN_STORE=/backups/store\n  \
    cairn init $CAIRN_STORE\n  \
    cairn backup --vm web01 xvda=web01-xvda.vhd\n  \
    cairn restore web01/xvda@latest web01.raw\n\n\
    From restic: cairn prune is restic's forget --keep-*; cairn gc is restic's prune.\n\n\
    Exit status: 0 success, 1 failure (verify: damage found), 2 usage error, 3 partial result\n\
    (restore --ignore-errors wrote damaged ranges as zeros). Every command that works on a\n\
    store takes --store or CAIRN_STORE."
)]
struct Cli {
    /// No progress bars and no informational messages on standard error (warnings, errors and
    /// what was asked for on standard output still come).
    #[arg(short, long, global = true)]
    quiet: bool,
    /// An encrypted store's key file (default: the store's own, in ~/.config/cairn/keys).
    #[arg(long, global = true, env = "CAIRN_KEY_FILE", value_name = "FILE")]
    key_file: Option<std::path::PathBuf>,
    /// Read the key file's passphrase from this file descriptor (else CAIRN_PASSPHRASE, else
    /// a prompt on the terminal; never from an argument).
    #[arg(long, global = true, value_name = "FD")]
    passphrase_fd: Option<i32>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a store.
    Init(store_cmd::InitArgs),
    /// Back up the disks of a VM: raw images, VHDs (fixed, dynamic, differencing), stdin, or NBD
    /// exports (with a dirty bitmap or XCP-ng's changed blocks, only what changed is read).
    Backup(backup_cmd::BackupArgs),
    /// Restore a recovery point as raw, a dynamic VHD, or a VHD chain.
    Restore(restore_cmd::RestoreArgs),
    /// List recovery points.
    List(list_cmd::ListArgs),
    /// List a point's partitions, or the files of a folder inside it, read in place.
    Ls(files_cmd::LsArgs),
    /// Print a file inside a point, read in place.
    Cat(files_cmd::CatArgs),
    /// Copy a file or folder out of a point onto this machine, read in place.
    Extract(files_cmd::ExtractArgs),
    /// Find files by name inside a point, read in place.
    Find(files_cmd::FindArgs),
    /// Mount a point read-only (FUSE): its disk as a raw file, its file systems as folders.
    Mount(mount_cmd::MountArgs),
    /// What each VM, disk and point costs, and what dedup and compression saved.
    Report(report_cmd::ReportArgs),
    /// Copy the points another store lacks into it (an offsite copy, an initial seed).
    Replicate(replicate_cmd::ReplicateArgs),
    /// Keep a raw file or block device equal to a point, writing only what changed.
    Standby(standby_cmd::StandbyArgs),
    /// Serve points over NBD: boot, copy or mount a backup without restoring it first.
    ServeNbd(nbd_cmd::ServeNbdArgs),
    /// Boot a point in a throw-away VM (no network, nothing written back) and say whether it
    /// came up.
    CheckBoot(check_cmd::CheckBootArgs),
    /// Serve the store over HTTPS: many hosts back up into it at once, with scoped tokens.
    Serve(serve_cmd::ServeArgs),
    /// Jobs from a job file: check, list, run now, history, install as systemd timers.
    #[command(
        subcommand,
        after_help = "Examples:\n  cairn job check /etc/cairn/jobs.toml\n  cairn job run web01\n  \
        cairn job history\n  cairn job install"
    )]
    Job(job_cmd::JobCommand),
    /// Tokens for `cairn serve`: create (the secret is shown once), list, revoke.
    #[command(
        subcommand,
        after_help = "Examples:\n  cairn token create --store /srv/cairn --name host1 --role backup --vm 'web-*'\n  \
        cairn token list --store /srv/cairn\n  cairn token revoke --store /srv/cairn host1"
    )]
    Token(serve_cmd::TokenCommand),
    /// An encrypted store's keys: key files, their passphrase, paper copies, recovery keys.
    #[command(
        subcommand,
        after_help = "Examples:\n  cairn init --encrypt /backups/store\n  cairn key show --store /backups/store\n  \
        cairn key change-passphrase --store /backups/store\n  cairn key export --paper --store /backups/store"
    )]
    Key(key_cmd::KeyCommand),
    /// Repair a store: rebuild its index from the packs and root files.
    Repair(store_cmd::RepairArgs),
    /// The byte ranges that differ between two points of a disk.
    Diff(diff_cmd::DiffArgs),
    /// Drop points by retention rules (keep-last, hourly, daily, weekly, monthly, yearly).
    Prune(prune_cmd::PruneArgs),
    /// Drop the given points.
    Forget(forget_cmd::ForgetArgs),
    /// Join the history of a VM's old identity (renamed, or given a UUID later) to its new one.
    Adopt(adopt_cmd::AdoptArgs),
    /// Protect a point from prune and forget.
    Protect(protect_cmd::ProtectArgs),
    /// Lift a point's protection.
    Unprotect(protect_cmd::ProtectArgs),
    /// Reclaim the space of chunks no point references.
    Gc(gc_cmd::GcArgs),
    /// Read chunks, check them against their ids, and name what a bad one damages.
    Verify(verify_cmd::VerifyArgs),
    /// Per-VM policies (key backup interval).
    #[command(
        subcommand,
        after_help = "Examples:\n  cairn policy set --vm web01 --key-interval 7\n  cairn policy show --json"
    )]
    Policy(policy_cmd::PolicyCommand),
    /// Shell completion for bash, zsh, fish, elvish or PowerShell, on standard output.
    #[command(after_help = "Examples:\n  \
        cairn completions bash > /etc/bash_completion.d/cairn\n  \
        cairn completions zsh > \"${fpath[1]}/_cairn\"\n  \
        cairn completions fish > ~/.config/fish/completions/cairn.fish")]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Manual pages: cairn.1 and one per command (cairn-backup.1, ...), written into a folder.
    #[command(
        after_help = "Examples:\n  cairn man --out /usr/local/share/man/man1\n  \
        cairn man --out /tmp/man && man -l /tmp/man/cairn-restore.1"
    )]
    Man {
        /// The folder the pages are written into (made if missing).
        #[arg(long, value_name = "DIR")]
        out: std::path::PathBuf,
    },
    /// Inspect, check, convert and create VHD files (fixed, dynamic, differencing chains).
    #[command(
        subcommand,
        after_help = "Examples:\n  cairn vhd info --json delta.vhd\n  cairn vhd check day2.vhd\n  \
        cairn vhd to-raw day2.vhd day2.raw\n  cairn vhd from-raw day1.raw day1.vhd --parent day0.vhd"
    )]
    Vhd(vhd_cmd::VhdCommand),
}

/// A mistake in what was typed (a value out of range, options that do not go together): exit
/// status 2, as clap gives for the mistakes it finds, whichever check finds it.
#[derive(Debug)]
pub(crate) struct Usage(pub(crate) String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// Returns early with a [`Usage`] error (exit status 2).
#[macro_export]
macro_rules! usage {
    ($($arg:tt)*) => {
        return Err(anyhow::Error::new($crate::Usage(format!($($arg)*))))
    };
}

/// `--quiet` was given.
static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether informational messages and progress bars are to be left out (`--quiet`).
pub(crate) fn quiet() -> bool {
    QUIET.load(std::sync::atomic::Ordering::Relaxed)
}

/// An informational message on standard error, left out under `--quiet`.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        if !$crate::quiet() {
            eprintln!($($arg)*);
        }
    };
}

/// `cairn --version`: the program's version and the store format it writes (and the oldest it
/// reads).
fn version_text() -> &'static str {
    let text = format!(
        "{} (store format {}, {} encrypted; reads formats {} to {})",
        env!("CARGO_PKG_VERSION"),
        cairn_store::config::FORMAT_VERSION,
        cairn_store::config::ENCRYPTED_FORMAT_VERSION,
        cairn_store::config::OLDEST_FORMAT_VERSION,
        cairn_store::config::ENCRYPTED_FORMAT_VERSION
    );
    Box::leak(text.into_boxed_str())
}

/// The command line as clap sees it, with the version text.
pub(crate) fn command() -> clap::Command {
    use clap::CommandFactory;
    Cli::command().version(version_text())
}

/// Writes the manual pages of `cmd` and its subcommands (`cairn-vhd-info.1`...) into `dir`.
fn write_man_pages(
    cmd: &clap::Command,
    prefix: &str,
    dir: &std::path::Path,
) -> anyhow::Result<u32> {
    use anyhow::Context;
    let name = if prefix.is_empty() {
        cmd.get_name().to_owned()
    } else {
        format!("{prefix}-{}", cmd.get_name())
    };
    let page = cmd.clone().name(&*Box::leak(name.clone().into_boxed_str()));
    let mut bytes = Vec::new();
    clap_mangen::Man::new(page).render(&mut bytes)?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    let mut n = 1;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        n += write_man_pages(sub, &name, dir)?;
    }
    Ok(n)
}

/// Prints a JSON document on standard output, as every `--json` does: pretty, one document per
/// command.
pub(crate) fn print_json<T: serde::Serialize + ?Sized>(v: &T) -> anyhow::Result<()> {
    use std::io::Write;
    // Written as it is serialized: a report of 100 000 points is not one string first.
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

/// A JSON array written an element at a time, laid out as [`print_json`] lays out a whole
/// one: a list of 100 000 points is never one value in memory.
pub(crate) struct JsonRows<'w, W: std::io::Write> {
    out: &'w mut W,
    rows: u64,
}

impl<'w, W: std::io::Write> JsonRows<'w, W> {
    pub(crate) fn new(out: &'w mut W) -> Self {
        JsonRows { out, rows: 0 }
    }

    /// Writes one element.
    pub(crate) fn push<T: serde::Serialize + ?Sized>(&mut self, v: &T) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(v)?;
        self.out
            .write_all(if self.rows == 0 { b"[\n" } else { b",\n" })?;
        for (i, line) in text.lines().enumerate() {
            if i > 0 {
                self.out.write_all(b"\n")?;
            }
            self.out.write_all(b"  ")?;
            self.out.write_all(line.as_bytes())?;
        }
        self.rows += 1;
        Ok(())
    }

    /// Closes the array.
    pub(crate) fn end(self) -> anyhow::Result<()> {
        self.out
            .write_all(if self.rows == 0 { b"[]\n" } else { b"\n]\n" })?;
        self.out.flush()?;
        Ok(())
    }
}

/// Whether `--json` was typed (before any `--`): errors are then JSON on standard output too.
fn json_asked() -> bool {
    std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json")
}

/// What kind of failure an error is, for `--json`'s `kind`: `usage` (exit status 2, also a
/// request a server answered 400), `locked`, `not-found` (a point, file or token that is not
/// there), `damaged` (the store's data is), `refused` (a rule or a server said no, or an
/// encrypted store was given no key), `io`, or `error`.
fn error_kind(err: &anyhow::Error) -> &'static str {
    use cairn_store::Error as E;
    for cause in err.chain() {
        if cause.is::<Usage>() {
            return "usage";
        }
        if let Some(cairn_gc::Error::Usage(_)) = cause.downcast_ref::<cairn_gc::Error>() {
            return "usage";
        }
        if let Some(e) = cause.downcast_ref::<E>() {
            return match e {
                E::Locked { .. } => "locked",
                E::Point(_) => "not-found",
                E::BadChunk { .. }
                | E::MissingChunk(_)
                | E::BadPack { .. }
                | E::CorruptIndex { .. }
                | E::ObjectMissing { .. } => "damaged",
                E::IdentityTaken(_)
                | E::Held(_)
                | E::AlreadyHeld(_)
                | E::NoKey { .. }
                | E::Sealed(_) => "refused",
                // A server's answer: a request it could not take is what was typed.
                E::Remote {
                    status: Some(400), ..
                } => "usage",
                E::Remote {
                    status: Some(404), ..
                } => "not-found",
                E::Remote {
                    status: Some(401 | 403 | 409),
                    ..
                } => "refused",
                E::Io { .. } => "io",
                _ => "error",
            };
        }
        if let Some(e) = cause.downcast_ref::<std::io::Error>() {
            return if e.kind() == std::io::ErrorKind::NotFound {
                "not-found"
            } else {
                "io"
            };
        }
    }
    "error"
}

/// Exit status of a mistake in what was typed.
const USAGE: i32 = 2;

/// Exit status of a command whose output was closed under it (`cairn list | head -1`): what a
/// shell reports for a process ended by SIGPIPE (128 + 13).
const CLOSED_PIPE: i32 = 141;

/// A command whose standard output is closed before it is done (a pager quit, `head`) ends
/// quietly, as other command-line tools do, instead of with a panic: Rust ignores SIGPIPE, so
/// the next print fails with EPIPE and `println!` panics.
fn end_quietly_on_a_closed_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.contains("Broken pipe") && msg.contains("failed printing to std") {
            std::process::exit(CLOSED_PIPE);
        }
        default(info);
    }));
}

/// For a command that writes an output under a temporary name (`restore`, `vhd to-raw` and
/// `from-raw`): on SIGINT, SIGTERM or SIGHUP the temporary files go (they are as large as the
/// disk), it says so, and exits as a process ended by that signal would (128 + its number).
pub(crate) fn remove_partials_when_interrupted() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        return;
    };
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            let removed = cairn_restore::partials::remove_all();
            eprintln!(
                "interrupted: {} removed; nothing that existed was \
                 replaced",
                words::count(removed as u64, "partial output file")
            );
            std::process::exit(128 + sig);
        }
    });
}

/// For `backup`: on SIGINT, SIGTERM or SIGHUP it says that nothing was stored (a run is
/// published whole or not at all) and how much the packs it left hold, which `cairn gc`
/// reclaims, then exits as a process ended by that signal would (128 + its number).
pub(crate) fn say_what_an_interrupted_backup_left(store: Option<std::path::PathBuf>) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        return;
    };
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            // Read-only, beside the writer this process still is: the packs no index entry
            // names are this run's (and any earlier killed run's).
            let left = store
                .as_deref()
                .and_then(|s| cairn_store::Store::open(s, cairn_store::OpenMode::Read).ok())
                .and_then(|s| s.unindexed_pack_files().ok())
                .map(|files| files.iter().map(|(_, len)| len).sum::<u64>());
            match left {
                Some(bytes) => eprintln!(
                    "interrupted: nothing was stored (a run is published whole or not at all); \
                     `cairn gc` reclaims the {} of packs it left",
                    words::human_bytes(bytes)
                ),
                None => eprintln!(
                    "interrupted: nothing was stored (a run is published whole or not at all; \
                     a server drops the session and its chunks)"
                ),
            }
            std::process::exit(128 + sig);
        }
    });
}

fn main() {
    end_quietly_on_a_closed_pipe();
    let json = json_asked();
    let parsed = command()
        .try_get_matches()
        .and_then(|m| <Cli as clap::FromArgMatches>::from_arg_matches(&m));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) => exit_on_a_parse_error(&e, json),
    };
    QUIET.store(cli.quiet, std::sync::atomic::Ordering::Relaxed);
    key_cmd::set_source(key_cmd::KeySource {
        key_file: cli.key_file.clone(),
        passphrase_fd: cli.passphrase_fd,
        needed: names_or_opens_chunks(&cli.command),
    });
    match run(cli.command) {
        Ok(code) => std::process::exit(code),
        Err(err) => exit_on_an_error(&err, json),
    }
}

/// Whether the command names or opens chunks, so that an encrypted store's key is needed
/// (asked before any work); the others run without it.
fn names_or_opens_chunks(c: &Command) -> bool {
    match c {
        Command::Backup(_)
        | Command::Restore(_)
        | Command::ServeNbd(_)
        | Command::Standby(_)
        | Command::Ls(_)
        | Command::Cat(_)
        | Command::Extract(_)
        | Command::Find(_)
        | Command::Mount(_)
        | Command::CheckBoot(_) => true,
        Command::Verify(a) => a.key,
        _ => false,
    }
}

/// Runs one command; its exit status.
fn run(asked: Command) -> anyhow::Result<i32> {
    match asked {
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut command(), "cairn", &mut std::io::stdout());
            Ok(0)
        }
        Command::Man { out } => std::fs::create_dir_all(&out)
            .map_err(anyhow::Error::from)
            .and_then(|()| write_man_pages(&command(), "", &out))
            .map(|n| {
                say!("wrote {n} manual pages into {}", out.display());
                0
            }),
        Command::Init(a) => store_cmd::init(&a),
        Command::Backup(a) => backup_cmd::backup(&a),
        Command::Restore(a) => restore_cmd::restore(&a),
        Command::List(a) => list_cmd::list(&a),
        Command::Ls(a) => files_cmd::ls(&a),
        Command::Cat(a) => files_cmd::cat(&a),
        Command::Extract(a) => files_cmd::extract(&a),
        Command::Find(a) => files_cmd::find(&a),
        Command::Mount(a) => mount_cmd::mount(&a),
        Command::Report(a) => report_cmd::report(&a),
        Command::Repair(a) => store_cmd::repair(&a),
        Command::Key(c) => key_cmd::key(&c),
        Command::ServeNbd(a) => nbd_cmd::serve_nbd(&a),
        Command::CheckBoot(a) => check_cmd::check_boot(&a),
        Command::Serve(a) => serve_cmd::serve(&a),
        Command::Job(c) => job_cmd::job(&c),
        Command::Token(c) => serve_cmd::token(&c),
        Command::Replicate(a) => replicate_cmd::replicate(&a),
        Command::Standby(a) => standby_cmd::standby(&a),
        Command::Diff(a) => diff_cmd::diff(&a),
        Command::Prune(a) => prune_cmd::prune(&a),
        Command::Forget(a) => forget_cmd::forget(&a),
        Command::Adopt(a) => adopt_cmd::adopt(&a),
        Command::Protect(a) => protect_cmd::protect(&a, true),
        Command::Unprotect(a) => protect_cmd::protect(&a, false),
        Command::Gc(a) => gc_cmd::gc(&a),
        Command::Verify(a) => verify_cmd::verify(&a),
        Command::Policy(cmd) => policy_cmd::policy(&cmd),
        Command::Vhd(cmd) => vhd_cmd::run(cmd),
    }
}

/// What was typed does not parse: clap's message (under `--json`, as a JSON error document),
/// with a hint for the commonest first mistake, and clap's exit status.
fn exit_on_a_parse_error(e: &clap::Error, json: bool) -> ! {
    let code = e.exit_code();
    if json && e.use_stderr() {
        let text = e.render().to_string();
        // The message is the first paragraph (the usage and the hint follow).
        let first = text.split("\n\n").next().unwrap_or_default();
        let first = first.split_whitespace().collect::<Vec<_>>().join(" ");
        let _ = print_json(&serde_json::json!({
            "error": first.trim_start_matches("error: "),
            "kind": "usage",
            "exit_status": code,
            "detail": text.trim_end(),
        }));
        std::process::exit(code);
    }
    // A missing store is the commonest first mistake: name both ways to give it.
    let hint = e.kind() == clap::error::ErrorKind::MissingRequiredArgument
        && e.to_string().contains("--store");
    let _ = e.print();
    if hint {
        eprintln!("hint: give the store as --store PATH, or set CAIRN_STORE=PATH");
    }
    std::process::exit(code);
}

/// A command failed: the error and the causes that add something (under `--json`, as a JSON
/// document on stdout), and the exit status of its kind.
fn exit_on_an_error(err: &anyhow::Error, json: bool) -> ! {
    // Output written through a buffer (a list of 100 000 points) meets a closed pipe as an
    // error, not a panic: ended as quietly.
    let pipe = Some(std::io::ErrorKind::BrokenPipe);
    if err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().map(std::io::Error::kind) == pipe
            || c.downcast_ref::<serde_json::Error>()
                .and_then(serde_json::Error::io_error_kind)
                == pipe
    }) {
        std::process::exit(CLOSED_PIPE);
    }
    let mut shown = err.to_string();
    // Library errors often repeat their source in their own text: show a cause only when it
    // adds something.
    let mut causes = Vec::new();
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        if !shown.contains(&text) {
            causes.push(text.clone());
            shown = text;
        }
    }
    let kind = error_kind(err);
    let code = if kind == "usage" { USAGE } else { 1 };
    if json {
        let _ = print_json(&serde_json::json!({
            "error": err.to_string(),
            "causes": causes,
            "kind": kind,
            "exit_status": code,
        }));
    } else {
        eprintln!("cairn: error: {err}");
        for c in &causes {
            eprintln!("  caused by: {c}");
        }
    }
    std::process::exit(code);
}
