//! An HTTP(S) URL that takes a PUT of a VHD (XAPI's `import_raw_vdi?format=vhd&vdi=UUID`) as
//! a standby target: each run streams one VHD, dynamic (the whole point) or differencing (the
//! 2 MiB blocks that changed since the point the target holds, its parent that point's VHD as
//! `cairn restore` names it), with its `Content-Length` announced, made on the fly (never held
//! whole, never written to disk here). The target holds the point once the server answers
//! 2xx.

use std::path::Path;
use std::time::Duration;

use cairn_store::{RecoveryPoint, Store};

use super::{Files, Looks, StandbyOptions, StandbyReport, State, journal_point, refused};
use crate::vhd::VhdPlan;
use crate::{Error, Result};

/// How long one PUT may take, all of it (a whole disk over a slow link).
const PUT_TIME: Duration = Duration::from_secs(12 * 3600);

/// Keeps the import at `url` equal to `point` (see the module).
pub(super) fn run(
    store: &Store,
    point: &RecoveryPoint,
    url: &str,
    options: &StandbyOptions,
) -> Result<StandbyReport> {
    let endpoint = cairn_http::Endpoint::new(url, &options.http, Some(PUT_TIME))?;
    let shown = endpoint.shown().to_owned();
    if options.verify {
        return Err(refused(format!(
            "{shown}: an HTTP target cannot be read back to compare; --force sends the whole \
             point"
        )));
    }
    let f = Files::lock(store, &shown, options.dry_run)?;
    let find = |id: &str| -> Result<Option<RecoveryPoint>> { Ok(store.point_by_id(id)?) };
    let mut report = StandbyReport {
        target: shown.clone(),
        to: point.id.to_string(),
        ..StandbyReport::default()
    };
    let looks = |p: &RecoveryPoint| Looks {
        size: p.size,
        ..Looks::default()
    };
    let mut state = f.state()?;
    // 1. An interrupted PUT may have left any mix of its two points: its blocks are sent
    //    again, whole.
    if let Some(j) = f.journal()? {
        let to = journal_point(store, &j, &shown, point)?;
        let from = j.from.as_deref().map(find).transpose()?.flatten();
        let w = put(store, &endpoint, from.as_ref(), &to, options.dry_run)?;
        let s = State::new(&shown, &to, looks(&to));
        f.set_state(&s)?;
        state = Some(s);
        f.end()?;
        report.finished_interrupted = true;
        report.chunks_written += w.0;
        report.bytes_written += w.1;
    }
    // 2. The point it holds, unless --force sends the whole point.
    let held = match &state {
        Some(s) if !options.force => find(&s.point)?,
        _ => None,
    };
    report.from = held.as_ref().map(|p| p.id.to_string());
    if held.as_ref().is_some_and(|h| h.id == point.id) {
        return Ok(report);
    }
    // 3. The journal, the PUT, the state; the journal goes last.
    f.begin(held.as_ref(), point)?;
    let w = put(store, &endpoint, held.as_ref(), point, options.dry_run)?;
    report.chunks_written += w.0;
    report.bytes_written += w.1;
    f.set_state(&State::new(&shown, point, looks(point)))?;
    f.end()?;
    Ok(report)
}

/// PUTs the VHD of `point`, differencing against `base` when given (and of the same disk
/// size); returns (chunks, bytes) sent (a dry run sizes it and sends nothing).
fn put(
    store: &Store,
    endpoint: &cairn_http::Endpoint,
    base: Option<&RecoveryPoint>,
    point: &RecoveryPoint,
    dry_run: bool,
) -> Result<(u64, u64)> {
    let base = base
        .filter(|b| b.size == point.size && b.chunk_size == point.chunk_size)
        .map(|b| (b, crate::vhd_file_name(b)));
    let plan = VhdPlan::new(store, point, base, false)?;
    let len = plan.size()?;
    let chunks = plan.blocks() * plan.chunks_per_block();
    if dry_run {
        return Ok((chunks, len));
    }
    let shown = endpoint.shown();
    let (reader, mut writer) =
        std::io::pipe().map_err(super::io(Path::new(shown), "making a pipe"))?;
    std::thread::scope(|scope| {
        let made = scope.spawn(move || {
            let r = plan.write(
                scope,
                store,
                point,
                (Path::new(shown), &mut writer),
                false,
                &|_| {},
            );
            drop(writer);
            r
        });
        let request = endpoint
            .request(reqwest::Method::PUT)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(reqwest::blocking::Body::sized(reader, len));
        let sent = endpoint.send(request);
        let made = made
            .join()
            .unwrap_or_else(|_| Err(refused("the VHD writer panicked".into())));
        match (sent, made) {
            // The VHD could not be made (a chunk missing or damaged): that is the cause, the
            // PUT's failure only its echo.
            (_, Err(e @ (Error::Chunk { .. } | Error::Store(_)))) => Err(e),
            (Err(e), _) => Err(match endpoint.unreachable() {
                Some(cause) => cause.into(),
                None => refused(format!(
                    "{e}; the target may hold part of it: the next run sends it again"
                )),
            }),
            (Ok(_), Err(e)) => Err(e),
            (Ok(_), Ok((n, _))) => Ok((chunks, n)),
        }
    })
}
