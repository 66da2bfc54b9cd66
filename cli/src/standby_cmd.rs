//! `cairn standby`: a raw file, block device, NBD export or HTTP(S) import kept equal to a
//! point, writing only what changed.

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;

use crate::store_cmd::{StoreArg, open_read};
use crate::words::human_bytes;

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    cairn standby web01/xvda@latest --to /srv/standby/web01-xvda.raw     # after each backup\n  \
    cairn standby web01/xvda@latest --to /dev/vg0/web01-standby\n  \
    cairn standby web01/xvda@latest --to nbd://dr-host:10809/web01-xvda\n  \
    CAIRN_HTTP_PASSWORD=... cairn standby web01/xvda@latest --http-user root --ca-file pool-ca.pem \\\n    \
    --to 'https://dr-xcp/import_raw_vdi?format=vhd&vdi=UUID'\n\n\
    The first run writes the whole point (holes stay holes in a new file); each later run\n\
    writes only the chunks that differ between the point the target holds and the new one.\n\
    An NBD export is written in place and flushed. An HTTP(S) URL gets a PUT of a VHD: the\n\
    whole point first, then a differencing VHD of the 2 MiB blocks that changed (XAPI's\n\
    import_raw_vdi applies it to the VDI).\n\
    A run killed at any moment is finished by the next (a journal in STORE/standby says what\n\
    was being written). A target changed since the last run (the copy was started) is refused;\n\
    --force reads it all and rewrites what differs.")]
pub struct StandbyArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// The point (VM/DISK@latest, an id...).
    pub point: String,
    /// What to keep equal to it: a raw file, a block device, an NBD export
    /// (nbd://HOST:PORT/EXPORT, nbd+unix:///EXPORT?socket=PATH, nbds://...), or an HTTP(S) URL
    /// that takes a PUT of a VHD.
    #[arg(long, value_name = "TARGET")]
    pub to: String,
    #[command(flatten)]
    pub http: crate::store_cmd::HttpArgs,
    /// Take a target that changed behind cairn's back, or that cairn never wrote: read it all
    /// and rewrite what differs.
    #[arg(long)]
    pub force: bool,
    /// Read the whole target and compare with the point, even when it looks unchanged.
    #[arg(long)]
    pub verify_target: bool,
    /// Make every check and say what the run would write (reading a block target where the
    /// run would compare it), writing nothing: not the target, nor the store's record of it.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn standby(a: &StandbyArgs) -> Result<i32> {
    let store = open_read(&a.store.store)?;
    let point = store.resolve(&a.point)?;
    let started = std::time::Instant::now();
    let spinner = crate::progress::spinner(&format!("standby {}", point.short_id()));
    let r = cairn_restore::standby(
        &store,
        &point,
        &a.to,
        &cairn_restore::StandbyOptions {
            force: a.force,
            verify: a.verify_target,
            http: a.http.options(),
            dry_run: a.dry_run,
        },
    )
    .with_context(|| {
        format!(
            "keeping {} equal to point {}",
            cairn_http::redacted(&a.to),
            point.short_id()
        )
    })?;
    spinner.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    if a.json {
        crate::print_json(&json!({
            "target": r.target, "from": r.from, "to": r.to, "chunks_written": r.chunks_written,
            "bytes_written": r.bytes_written, "finished_interrupted": r.finished_interrupted,
            "compared": r.compared, "seconds": secs, "dry_run": a.dry_run,
        }))?;
        return Ok(0);
    }
    if a.dry_run {
        println!(
            "dry run: {}bringing {} to point {} ({}/{}) would write {} ({}){}; nothing was \
             written",
            if r.finished_interrupted {
                "finishing the interrupted run, then "
            } else {
                ""
            },
            r.target,
            point.short_id(),
            point.vm,
            point.disk,
            human_bytes(r.bytes_written),
            crate::words::count(r.chunks_written, "chunk"),
            match &r.from {
                Some(f) if *f == r.to => ": it holds it already".to_owned(),
                Some(f) => format!(", from point {}", cairn_store::point::short_id(f)),
                None if r.compared => ", after reading and comparing the whole target".to_owned(),
                None => String::new(),
            }
        );
        return Ok(0);
    }
    if r.finished_interrupted {
        println!("finished an interrupted run first");
    }
    println!(
        "{} holds point {} ({}/{}): {} written ({} chunks){} in {secs:.1}s",
        r.target,
        point.short_id(),
        point.vm,
        point.disk,
        human_bytes(r.bytes_written),
        r.chunks_written,
        match &r.from {
            Some(f) if *f == r.to => ", it held it already".to_owned(),
            Some(f) => format!(", from point {}", cairn_store::point::short_id(f)),
            None => String::new(),
        }
    );
    Ok(0)
}
