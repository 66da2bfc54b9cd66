//! `GET /metrics` (the Prometheus text format, 0.0.4) and `GET /healthz`.
//!
//! `/metrics` wants a restore or admin token (`Authorization: Bearer`, as Prometheus's
//! `authorization: credentials_file` sends it): it names VMs. A restore token gets its VMs'
//! series only, without the store-wide ones, as the report page does. Everything it says is
//! read from the catalogue and the store's records, but the garbage figure: a collection's dry
//! run (it walks the points' trees), made at most every 10 minutes, so that scrapes stay cheap
//! however large the store is.
//!
//! `/healthz` takes no token and says nothing of the store but whether its catalogue reads:
//! `200 ok`, or `503` with why.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{Answer, Shared, blocking};
use crate::token::Role;

/// Upper bounds of the request duration histogram, in seconds.
const BUCKETS: [f64; 10] = [0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0];

/// What the server counts of the requests it answered.
#[derive(Default)]
pub struct Requests {
    /// Requests by method and status.
    counts: Mutex<BTreeMap<(String, u16), u64>>,
    /// The duration histogram: a count per bucket (and +Inf last), the sum in microseconds.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Requests {
    /// Counts a request.
    pub fn count(&self, method: &str, status: u16, seconds: f64) {
        if let Ok(mut c) = self.counts.lock() {
            *c.entry((method.to_owned(), status)).or_default() += 1;
        }
        let k = BUCKETS
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(BUCKETS.len());
        self.buckets[k].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }
}

/// How long a computed garbage figure is shown before it is computed again (it is a garbage
/// collection's dry run: not for every scrape).
const GARBAGE_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// The last garbage figure and when it was made.
static GARBAGE: Mutex<Option<(std::time::Instant, Option<u64>)>> = Mutex::new(None);

/// The server's request counters (one server per process).
pub static REQUESTS: std::sync::LazyLock<Requests> = std::sync::LazyLock::new(Requests::default);

/// A metric's header and samples, written in the text format.
struct Out(String);

impl Out {
    fn metric(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (k, (l, v)) in labels.iter().enumerate() {
                if k > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{l}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {}", number(value));
    }
}

/// A label value as the format wants it: `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

fn seconds_of(t: &chrono::DateTime<chrono::Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

/// `GET /metrics`.
pub(super) async fn metrics(State(app): State<Shared>, headers: HeaderMap) -> Answer<Response> {
    let t = app.authorize(&headers, &[Role::Admin, Role::Restore], "read the metrics")?;
    let whole = t.role == Role::Admin;
    let sessions = app.sessions.count();
    blocking(move || {
        let points = app.store.points()?;
        let mut o = Out(String::new());
        // Per VM: its points, the newest one's time, what its points hold.
        let mut vms: BTreeMap<&str, (u64, f64, u64, u64)> = BTreeMap::new();
        for p in points.iter().filter(|p| t.allows_vm(&p.vm)) {
            let e = vms.entry(p.vm.as_str()).or_default();
            e.0 += 1;
            e.1 = e.1.max(seconds_of(&p.time));
            e.2 += p.size;
            e.3 += p.stats.new_stored_bytes;
        }
        o.metric("cairn_vm_points", "gauge", "Recovery points of a VM.");
        for (vm, e) in &vms {
            o.sample("cairn_vm_points", &[("vm", vm)], e.0 as f64);
        }
        o.metric(
            "cairn_vm_last_backup_timestamp_seconds",
            "gauge",
            "The time the newest point of a VM stands for.",
        );
        for (vm, e) in &vms {
            o.sample("cairn_vm_last_backup_timestamp_seconds", &[("vm", vm)], e.1);
        }
        o.metric(
            "cairn_vm_new_stored_bytes",
            "gauge",
            "Bytes the points of a VM added to the store when they were backed up.",
        );
        for (vm, e) in &vms {
            o.sample("cairn_vm_new_stored_bytes", &[("vm", vm)], e.3 as f64);
        }
        if whole {
            let logical: u64 = points.iter().map(|p| p.size).sum();
            let stored: u64 = points.iter().map(|p| p.stats.new_stored_bytes).sum();
            o.metric(
                "cairn_store_points",
                "gauge",
                "Recovery points in the store.",
            );
            o.sample("cairn_store_points", &[], points.len() as f64);
            o.metric(
                "cairn_store_logical_bytes",
                "gauge",
                "The disks' sizes summed over every point: what restoring them all would write.",
            );
            o.sample("cairn_store_logical_bytes", &[], logical as f64);
            o.metric(
                "cairn_store_new_stored_bytes",
                "gauge",
                "Bytes the points added when backed up (before what gc reclaimed).",
            );
            o.sample("cairn_store_new_stored_bytes", &[], stored as f64);
            o.metric(
                "cairn_store_dedup_ratio",
                "gauge",
                "Logical bytes per byte the points added.",
            );
            o.sample(
                "cairn_store_dedup_ratio",
                &[],
                if stored == 0 {
                    0.0
                } else {
                    logical as f64 / stored as f64
                },
            );
            if let Some(v) = cairn_gc::history::last_verify(app.store.root()) {
                let when = v["time"]
                    .as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .map_or(0.0, |t| seconds_of(&t.to_utc()));
                o.metric(
                    "cairn_last_verify_timestamp_seconds",
                    "gauge",
                    "When the last verify ran.",
                );
                o.sample("cairn_last_verify_timestamp_seconds", &[], when);
                o.metric(
                    "cairn_last_verify_clean",
                    "gauge",
                    "1 when the last verify found no damage.",
                );
                o.sample(
                    "cairn_last_verify_clean",
                    &[],
                    f64::from(u8::from(v["clean"] == true)),
                );
            }
            let garbage = {
                let mut kept = GARBAGE
                    .lock()
                    .map_err(|_| super::ApiError::internal("metrics lock"))?;
                match *kept {
                    Some((at, bytes)) if at.elapsed() < GARBAGE_EVERY => bytes,
                    _ => {
                        let bytes = app.reclaimable().map(|g| g.garbage_freed + g.orphan_bytes);
                        *kept = Some((std::time::Instant::now(), bytes));
                        bytes
                    }
                }
            };
            if let Some(bytes) = garbage {
                o.metric(
                    "cairn_gc_reclaimable_bytes",
                    "gauge",
                    "What a garbage collection would free (computed at most every 10 minutes).",
                );
                o.sample("cairn_gc_reclaimable_bytes", &[], bytes as f64);
            }
            jobs(&mut o, &app.store.root().join(cairn_jobs::record::RUNS_DIR));
            o.metric("cairn_sessions_open", "gauge", "Backup sessions open now.");
            o.sample("cairn_sessions_open", &[], sessions as f64);
            requests(&mut o);
        }
        Ok(o.0)
    })
    .await
    .map(|text| {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response()
    })
}

/// Each job's last run and last success, from the store's records of them.
fn jobs(o: &mut Out, dir: &std::path::Path) {
    let runs = cairn_jobs::record::all_runs(dir);
    o.metric(
        "cairn_job_last_run_timestamp_seconds",
        "gauge",
        "When a job's last run ended.",
    );
    for (job, r) in &runs {
        if let Some(last) = r.last() {
            o.sample(
                "cairn_job_last_run_timestamp_seconds",
                &[("job", job)],
                seconds_of(&last.ended),
            );
        }
    }
    o.metric(
        "cairn_job_last_run_ok",
        "gauge",
        "1 when a job's last run succeeded (or was skipped), 0 when it failed.",
    );
    for (job, r) in &runs {
        if let Some(last) = r.last() {
            let ok = last.outcome != cairn_jobs::Outcome::Failed;
            o.sample(
                "cairn_job_last_run_ok",
                &[("job", job)],
                f64::from(u8::from(ok)),
            );
        }
    }
    o.metric(
        "cairn_job_last_success_timestamp_seconds",
        "gauge",
        "When a job last succeeded.",
    );
    for (job, r) in &runs {
        if let Some(ok) = r
            .iter()
            .rev()
            .find(|r| r.outcome == cairn_jobs::Outcome::Ok)
        {
            o.sample(
                "cairn_job_last_success_timestamp_seconds",
                &[("job", job)],
                seconds_of(&ok.ended),
            );
        }
    }
}

/// The requests answered since the server started.
fn requests(o: &mut Out) {
    o.metric(
        "cairn_http_requests_total",
        "counter",
        "Requests answered, by method and status.",
    );
    if let Ok(c) = REQUESTS.counts.lock() {
        for ((method, status), n) in c.iter() {
            o.sample(
                "cairn_http_requests_total",
                &[("method", method), ("status", &status.to_string())],
                *n as f64,
            );
        }
    }
    o.metric(
        "cairn_http_request_duration_seconds",
        "histogram",
        "Time to answer a request.",
    );
    let mut total = 0u64;
    for (k, b) in BUCKETS.iter().enumerate() {
        total += REQUESTS.buckets[k].load(Ordering::Relaxed);
        o.sample(
            "cairn_http_request_duration_seconds_bucket",
            &[("le", &number(*b))],
            total as f64,
        );
    }
    total += REQUESTS.buckets[BUCKETS.len()].load(Ordering::Relaxed);
    o.sample(
        "cairn_http_request_duration_seconds_bucket",
        &[("le", "+Inf")],
        total as f64,
    );
    o.sample(
        "cairn_http_request_duration_seconds_sum",
        &[],
        REQUESTS.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
    );
    o.sample(
        "cairn_http_request_duration_seconds_count",
        &[],
        total as f64,
    );
}

/// `POST /api/v1/job-runs`: the record of a job run on a client against this store (`cairn job
/// run` with `store = "https://..."`), kept beside the runs of the server's own jobs. A backup
/// or admin token (the hosts that run the jobs); the record is checked before it is kept.
pub(super) async fn record_job_run(
    State(app): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Answer<axum::Json<serde_json::Value>> {
    app.authorize(&headers, &[Role::Backup, Role::Admin], "record job runs")?;
    let run: cairn_jobs::Run = super::chunks::json_body(&body)?;
    run.check()
        .map_err(|e| super::ApiError::bad(format!("a job run's record: {e}")))?;
    blocking(move || {
        let dir = app.store.root().join(cairn_jobs::record::RUNS_DIR);
        cairn_jobs::record::append(&dir, &run)
            .map_err(|e| super::ApiError::internal(&e.to_string()))?;
        Ok(axum::Json(serde_json::json!({"recorded": run.job})))
    })
    .await
}

/// `GET /healthz`: whether the store's catalogue reads (no token; nothing else is said).
pub(super) async fn healthz(State(app): State<Shared>) -> Response {
    match blocking(move || Ok(app.store.points().map(|_| ())?)).await {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the store's catalogue does not read: {}\n", e.message),
        )
            .into_response(),
    }
}
