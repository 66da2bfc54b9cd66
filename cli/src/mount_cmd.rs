//! `cairn mount`: a point's disk and file systems as a read-only folder (the `cairn-mount`
//! crate), until Ctrl-C or `fusermount -u`.

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;

use crate::store_cmd::StoreArg;

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    cairn mount web01/xvda@latest /mnt/web01        # then: ls /mnt/web01/p1/etc\n  \
    grep -r 'Out of memory' /mnt/web01/p2/var/log   # the tools you already use\n  \
    fusermount -u /mnt/web01                        # or Ctrl-C in cairn mount\n\n\
    DIR shows disk.raw (the whole disk), a folder per partition whose file system cairn\n\
    reads (p1/, p2/...: ext2/3/4, FAT, NTFS) and pN.raw for the others (XFS, swap...: mount\n\
    them with `mount -o loop,ro`). Read-only; only the chunks read are fetched from the\n\
    store. It stays in the foreground until unmounted.")]
pub struct MountArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// The point (any name `restore` takes).
    pub point: String,
    /// An empty folder to mount it on.
    pub dir: std::path::PathBuf,
    /// Say what is mounted as JSON (one object, printed once mounted).
    #[arg(long)]
    pub json: bool,
}

pub fn mount(a: &MountArgs) -> Result<i32> {
    let crate::files_cmd::Opened {
        files, point, path, ..
    } = crate::files_cmd::open(&a.store, &a.point)?;
    if let Some(p) = path {
        anyhow::bail!(
            "{}: `cairn mount` mounts a whole point (its partitions are its folders), not \
             {p:?} inside it",
            a.point
        );
    }
    let about = cairn_mount::About {
        name: format!("cairn:{}", point.short_id()),
        time: point.time.timestamp(),
    };
    let mounted = cairn_mount::mount(files, &about, &a.dir)
        .with_context(|| format!("mounting point {}", point.short_id()))?;
    if a.json {
        let shown: Vec<_> = mounted
            .shown()
            .iter()
            .map(|s| json!({"name": s.name, "what": s.what}))
            .collect();
        crate::print_json(&json!({
            "point": point.id.to_string(),
            "vm": point.vm,
            "disk": point.disk,
            "dir": a.dir.display().to_string(),
            "entries": shown,
        }))?;
    } else {
        crate::say!(
            "point {} ({} {}, {}) mounted read-only at {}:",
            point.short_id(),
            point.vm,
            point.disk,
            point.time.format("%Y-%m-%d %H:%M:%SZ"),
            a.dir.display()
        );
        for s in mounted.shown() {
            crate::say!("  {:<12} {}", s.name, s.what);
        }
        crate::say!(
            "unmount with Ctrl-C here or `fusermount -u {}`",
            a.dir.display()
        );
    }
    // Ctrl-C asks the kernel to unmount (refused while something uses the folder: said, and
    // the mount stays up for another Ctrl-C); the mount's end, whoever asked for it, ends this.
    let signals = interrupts()?;
    let mut asked = false;
    loop {
        crossbeam_channel::select! {
            recv(signals) -> _ => match cairn_mount::ask_unmount(&a.dir) {
                Ok(()) => asked = true,
                Err(e) => eprintln!("{e}: close what uses it, then Ctrl-C again"),
            },
            recv(mounted.ended()) -> _ => break,
        }
    }
    mounted.unmount().context("ending the mount")?;
    if asked {
        crate::say!("unmounted {}", a.dir.display());
    } else {
        crate::say!("{} was unmounted", a.dir.display());
    }
    Ok(0)
}

/// SIGINT, SIGTERM and SIGHUP, as a channel.
fn interrupts() -> Result<crossbeam_channel::Receiver<i32>> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        for sig in signals.forever() {
            let _ = tx.try_send(sig);
        }
    });
    Ok(rx)
}
