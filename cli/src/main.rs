//! The `cairn` command: backups of VM disks into a content-addressed, deduplicating store, and
//! the `cairn vhd` tools for VHD files.
//!
//! `main` parses the command line, runs one command, prints the error chain on failure and
//! exits non-zero (1 for a failed operation, 2 for a usage error, as clap does).

mod progress;
mod store_cmd;
mod vhd_cmd;

use clap::{Parser, Subcommand};

/// cairn: a content-addressed, deduplicating block store for forever-incremental VM disk
/// backups.
#[derive(Debug, Parser)]
#[command(name = "cairn", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a store.
    Init(store_cmd::InitArgs),
    /// Back up the disks of a VM: raw images, VHDs (fixed, dynamic, differencing) or stdin.
    Backup(store_cmd::BackupArgs),
    /// Restore a recovery point as raw, a dynamic VHD, or a VHD chain.
    Restore(store_cmd::RestoreArgs),
    /// List recovery points.
    List(store_cmd::ListArgs),
    /// What each VM, disk and point costs, and what dedup and compression saved.
    Report(store_cmd::ReportArgs),
    /// Repair a store: rebuild its index from the packs and root files.
    Repair(store_cmd::RepairArgs),
    /// Inspect, check, convert and create VHD files (fixed, dynamic, differencing chains).
    #[command(subcommand)]
    Vhd(vhd_cmd::VhdCommand),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Init(a) => store_cmd::init(&a),
        Command::Backup(a) => store_cmd::backup(&a),
        Command::Restore(a) => store_cmd::restore(&a),
        Command::List(a) => store_cmd::list(&a),
        Command::Report(a) => store_cmd::report(&a),
        Command::Repair(a) => store_cmd::repair(&a),
        Command::Vhd(cmd) => vhd_cmd::run(cmd),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            let mut shown = err.to_string();
            eprintln!("cairn: error: {shown}");
            // Library errors often repeat their source in their own text: print a cause only
            // when it adds something.
            for cause in err.chain().skip(1) {
                let text = cause.to_string();
                if !shown.contains(&text) {
                    eprintln!("  caused by: {text}");
                    shown = text;
                }
            }
            std::process::exit(1);
        }
    }
}
