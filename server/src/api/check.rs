//! Boot checks run by the server (`cairn check-boot --store https://...`, an admin token): the
//! server's machine boots the point over NBD in a throw-away VM (`cairn-check`), records the
//! outcome in its store and answers it. One check at a time; the guest's time is bounded so
//! the answer comes within the server's request limit.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use cairn_check::{Accel, FirmwareChoice, Options, Signals};
use serde::Deserialize;

use super::chunks::json_body;
use super::points::point_of;
use super::{ANY, Answer, ApiError, Shared, blocking};
use crate::token::Role;

/// The most memory a checked guest is given, in MiB.
const MAX_MEMORY_MIB: u32 = 16 << 10;

/// The most `--expect` texts, and their longest.
const MAX_EXPECT: usize = 16;
const MAX_EXPECT_LEN: usize = 256;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BootCheckBody {
    /// Texts on the console that mean the guest is up (default: a login prompt).
    #[serde(default)]
    expect: Vec<String>,
    /// How long the guest has, in seconds (300 by default).
    timeout_seconds: Option<u64>,
    /// The guest's memory (1024 MiB by default).
    memory_mib: Option<u32>,
    /// `auto`, `bios` or `uefi`.
    firmware: Option<String>,
    /// `auto`, `kvm` or `tcg`.
    accel: Option<String>,
    /// Up when the QEMU guest agent answers.
    #[serde(default)]
    guest_agent: bool,
    /// Up when this TCP port of the guest accepts a connection.
    port: Option<u16>,
}

impl BootCheckBody {
    /// The check's options, or why they are refused.
    fn options(&self, longest: Duration) -> Result<(Options, FirmwareChoice), ApiError> {
        if self.expect.len() > MAX_EXPECT
            || self
                .expect
                .iter()
                .any(|e| e.is_empty() || e.len() > MAX_EXPECT_LEN)
        {
            return Err(ApiError::bad(format!(
                "expect: at most {MAX_EXPECT} texts of 1 to {MAX_EXPECT_LEN} bytes"
            )));
        }
        let timeout = Duration::from_secs(self.timeout_seconds.unwrap_or(300));
        if timeout.is_zero() || timeout > longest {
            return Err(ApiError::bad(format!(
                "timeout_seconds: from 1 to {} on this server (its request limit less a minute)",
                longest.as_secs()
            )));
        }
        let memory_mib = self.memory_mib.unwrap_or(1024);
        if !(64..=MAX_MEMORY_MIB).contains(&memory_mib) {
            return Err(ApiError::bad(format!(
                "memory_mib: from 64 to {MAX_MEMORY_MIB}"
            )));
        }
        let firmware = FirmwareChoice::from_name(self.firmware.as_deref().unwrap_or("auto"))
            .ok_or_else(|| ApiError::bad("firmware: auto, bios or uefi"))?;
        let accel = match self.accel.as_deref().unwrap_or("auto") {
            "auto" => None,
            name => Some(
                Accel::from_name(name).ok_or_else(|| ApiError::bad("accel: auto, kvm or tcg"))?,
            ),
        };
        if self.port == Some(0) {
            return Err(ApiError::bad("port: from 1 to 65535"));
        }
        let signals = Signals::named(&self.expect, self.guest_agent || self.port.is_some());
        Ok((
            Options {
                signals,
                timeout,
                memory_mib,
                accel,
                screenshot: None,
                keep_running: false,
                agent: self.guest_agent,
                port: self.port,
            },
            firmware,
        ))
    }
}

/// `POST /api/v1/points/{id}/boot-check`: boots the point (with the other disks of its run)
/// on the server's machine and answers the outcome, which the store keeps.
pub(super) async fn boot_check(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Answer<Json<serde_json::Value>> {
    let t = app.authorize(&headers, &[Role::Admin], "check that points boot")?;
    let b: BootCheckBody = if body.is_empty() {
        BootCheckBody::default()
    } else {
        json_body(&body)?
    };
    let longest = app.limits.request.saturating_sub(Duration::from_secs(60));
    let (mut opts, firmware) = b.options(longest)?;
    blocking(move || {
        let point = point_of(&app, &t, &id)?;
        if app.store.chunk_keys().is_none() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "the store is encrypted and this server never holds its key: run cairn \
                     check-boot with the key on a machine with qemu (it boots the point there, \
                     reading its chunks through this server), point {id}"
                ),
            ));
        }
        let _one = app.booting.try_lock().map_err(|_| {
            ApiError::new(
                StatusCode::CONFLICT,
                "a boot check is running on this server (one at a time)",
            )
        })?;
        let shot = tempfile::Builder::new()
            .suffix(".png")
            .tempfile()
            .map_err(|e| ApiError::internal(&format!("a file for the screenshot: {e}")))?;
        opts.screenshot = Some(shot.path().to_path_buf());
        let store: cairn_restore::SharedStore = Arc::new(app.store);
        let checked =
            cairn_check::check_point(&store, &point, firmware, &opts).map_err(|e| match e {
                cairn_check::Error::Missing(m) => {
                    ApiError::new(StatusCode::NOT_IMPLEMENTED, format!("on the server: {m}"))
                }
                e => ApiError::internal(&format!("checking point {id}: {e}")),
            })?;
        let recorded =
            cairn_check::record::record(app.store.root(), point.id.as_str(), &checked.outcome)
                .map_err(|e| ApiError::internal(&e.to_string()))?;
        tracing::info!(
            point = %point.id,
            booted = checked.outcome.booted,
            why = %checked.outcome.why,
            "boot check"
        );
        let mut doc = checked.to_json();
        doc["recorded"] = recorded["time"].clone();
        doc["screenshot"] = match checked.outcome.screenshot {
            Some(_) => format!("/point/{}/boot-check.png", point.id).into(),
            None => serde_json::Value::Null,
        };
        Ok(Json(doc))
    })
    .await
}

/// `GET /api/v1/boot-checks`: the last boot check of each point the token reaches, by id.
pub(super) async fn boot_checks(
    State(app): State<Shared>,
    headers: HeaderMap,
) -> Answer<Json<std::collections::BTreeMap<String, serde_json::Value>>> {
    let t = app.authorize(&headers, ANY, "read boot checks")?;
    blocking(move || {
        let reached: std::collections::HashSet<String> = app
            .store
            .points()?
            .into_iter()
            .filter(|p| t.allows_vm(&p.vm))
            .map(|p| p.id.to_string())
            .collect();
        let mut checks = cairn_gc::history::boot_checks(app.store.root());
        checks.retain(|id, _| reached.contains(id));
        Ok(Json(checks))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordBody {
    /// The outcome, as `cairn-check` records it.
    record: serde_json::Value,
    /// The screenshot, a PNG in base64.
    #[serde(default)]
    screenshot_png: Option<String>,
}

/// `PUT /api/v1/points/{id}/boot-check`: the outcome of a check a client ran (an encrypted
/// store, whose key this server never holds), kept as the point's last check. An admin token;
/// the record is taken only in its expected shape and size, the screenshot only as a PNG.
pub(super) async fn keep_boot_check(
    State(app): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Answer<Json<serde_json::Value>> {
    use base64::Engine;
    let t = app.authorize(&headers, &[Role::Admin], "record boot checks")?;
    let b: RecordBody = json_body(&body)?;
    let png = match &b.screenshot_png {
        Some(text) => Some(
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|e| ApiError::bad(format!("screenshot_png: not base64: {e}")))?,
        ),
        None => None,
    };
    blocking(move || {
        let point = point_of(&app, &t, &id)?;
        let kept = cairn_check::record::keep(
            app.store.root(),
            point.id.as_str(),
            &b.record,
            png.as_deref(),
        )
        .map_err(|e| ApiError::bad(e.to_string()))?;
        Ok(Json(kept))
    })
    .await
}
