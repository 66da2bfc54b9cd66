//! Listening: TLS on a TCP address, HTTP/1.1, one log line per request, idle sessions dropped,
//! graceful shutdown on SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_store::{OpenMode, Store};

use crate::api::{App, router};
use crate::{Error, Result};

/// Bounds on what clients may take.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body, in bytes.
    pub body_bytes: usize,
    /// Sessions open at once.
    pub sessions: usize,
    /// A session without a request for this long is dropped.
    pub idle: Duration,
    /// Connections served at once.
    pub connections: usize,
    /// A request (its body read, its work done, its answer made) taking longer than this is
    /// answered 408 (a slow client holds a connection no longer).
    pub request: Duration,
    /// Connections one client address may hold at once.
    pub connections_per_address: usize,
    /// A request body that sends no byte for this long fails (the least rate a body keeps).
    pub body_stall: Duration,
    /// Sessions one token may hold open at once.
    pub sessions_per_token: usize,
    /// Requests one token may have in flight at once (each may hold a body of `body_bytes`).
    pub requests_per_token: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            body_bytes: 32 << 20,
            sessions: 64,
            idle: Duration::from_secs(600),
            connections: 256,
            request: Duration::from_secs(900),
            connections_per_address: 32,
            body_stall: Duration::from_secs(30),
            sessions_per_token: 8,
            requests_per_token: 16,
        }
    }
}

/// How to serve.
#[derive(Debug, Clone)]
pub struct Config {
    /// The store's folder.
    pub store: PathBuf,
    /// Where to listen.
    pub listen: SocketAddr,
    /// The admin's certificate and key (PEM); none: the store's own.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Bounds.
    pub limits: Limits,
}

/// What a started server tells its caller.
#[derive(Debug, Clone)]
pub struct Started {
    /// The address it listens on (the port chosen when 0 was asked).
    pub addr: SocketAddr,
    /// SHA-256 of its certificate.
    pub fingerprint: String,
    /// The certificate file (a client's `--ca-file` for a self-signed one).
    pub cert: PathBuf,
    /// Whether cairn made the certificate.
    pub self_signed: bool,
}

/// Serves the store until SIGTERM or SIGINT; `started` is called once it listens.
///
/// # Errors
/// The store cannot be opened for writing (another writer holds it), the address cannot be
/// bound, the certificate cannot be loaded.
pub fn serve(config: &Config, started: &dyn Fn(&Started)) -> Result<()> {
    let store = Store::open(&config.store, OpenMode::Write { wait: false })?;
    for w in store.warnings() {
        tracing::warn!("{w}");
    }
    let identity = match &config.tls {
        Some((cert, key)) => crate::tls::load(cert, key)?,
        None => crate::tls::own(store.root())?,
    };
    let tls = crate::tls::server_config(&identity)?;
    // The store lives as long as the process: sessions borrow it for the 'static lifetime
    // that request handlers need. It is leaked, not dropped, at exit; every commit is synced
    // before it answers, so nothing is left to flush.
    let store: &'static Store = Box::leak(Box::new(store));
    let app = Arc::new(App::new(store, config.limits));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io(&config.store, "starting the runtime", e))?;
    runtime.block_on(run(app, config, tls, &identity, started))
}

async fn run(
    app: Arc<App>,
    config: &Config,
    tls: Arc<rustls::ServerConfig>,
    identity: &crate::tls::Identity,
    started: &dyn Fn(&Started),
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::io(&PathBuf::from(config.listen.to_string()), "listening", e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io(&PathBuf::from(config.listen.to_string()), "listening", e))?;
    started(&Started {
        addr,
        fingerprint: identity.fingerprint(),
        cert: identity.cert_path.clone(),
        self_signed: identity.self_signed,
    });
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let limit = config.limits.request;
    let stall = config.limits.body_stall;
    let routes = router(Arc::clone(&app))
        .layer(axum::middleware::from_fn(move |req, next| {
            bounded(limit, req, next)
        }))
        .layer(axum::middleware::from_fn(move |req, next| {
            body_rate(stall, req, next)
        }))
        .layer(axum::middleware::from_fn(log_request));
    let per_address: crate::slots::Slots<std::net::IpAddr> = crate::slots::Slots::default();
    let per_address_max = config.limits.connections_per_address;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let slots = Arc::new(tokio::sync::Semaphore::new(config.limits.connections));
    let reaper = tokio::spawn(reap_idle_sessions(Arc::clone(&app)));
    let mut conns = tokio::task::JoinSet::new();
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, peer)) = accepted else { continue };
                let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                    tracing::warn!(%peer, "refused: too many connections");
                    continue;
                };
                let Some(own_slot) = per_address.take(&peer.ip(), per_address_max) else {
                    tracing::warn!(%peer, "refused: too many connections from this address");
                    continue;
                };
                let (acceptor, routes) = (acceptor.clone(), routes.clone());
                let stop = stop_rx.clone();
                conns.spawn(async move {
                    let _held = (permit, own_slot);
                    serve_connection(acceptor, tcp, peer, routes, stop).await;
                });
            }
            () = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    tracing::info!("shutting down: finishing the requests in flight");
    let _ = stop_tx.send(true);
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    reaper.abort();
    stop(&app).await;
    Ok(())
}

/// Every 5 s, drops the sessions idle past the limit (their chunks are not kept).
async fn reap_idle_sessions(app: Arc<App>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        let app = Arc::clone(&app);
        let idle = app.limits.idle;
        let gone = tokio::task::spawn_blocking(move || app.sessions.reap(idle))
            .await
            .unwrap_or_default();
        for id in gone {
            tracing::warn!(session = %id, "dropped after being idle; its chunks are not kept");
        }
    }
}

/// One connection: the TLS handshake (10 s at most), then HTTP/1.1 until the client closes it
/// or the server stops (then the requests in flight finish).
async fn serve_connection(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    routes: axum::Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
    else {
        tracing::warn!(%peer, "TLS handshake failed or timed out");
        return;
    };
    let service = hyper_util::service::TowerToHyperService::new(routes);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// The server's end: open sessions dropped (nothing of them was committed), and the store a
/// writer that finished (the next one finds no stale lock to report).
async fn stop(app: &Arc<App>) {
    let dropped = tokio::task::spawn_blocking({
        let app = Arc::clone(app);
        move || app.sessions.drop_all()
    })
    .await
    .unwrap_or_default();
    app.store.finish_writing();
    tracing::info!(
        sessions = dropped,
        "stopped; open sessions were dropped (nothing of them was committed)"
    );
}

/// A request body that sends no byte for `stall` fails (the extractor reading it answers 400
/// and the connection closes): a client trickling its body holds a connection and a request's
/// memory no longer than that per byte.
async fn body_rate(
    stall: Duration,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use futures_util::StreamExt;
    let (parts, body) = req.into_parts();
    let timed = futures_util::stream::unfold(
        (body.into_data_stream(), false),
        move |(mut data, ended)| async move {
            if ended {
                return None;
            }
            match tokio::time::timeout(stall, data.next()).await {
                Ok(Some(Ok(bytes))) => Some((Ok(bytes), (data, false))),
                Ok(Some(Err(e))) => Some((Err(std::io::Error::other(e.to_string())), (data, true))),
                Ok(None) => None,
                Err(_) => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no byte of the request body for {} s", stall.as_secs()),
                    )),
                    (data, true),
                )),
            }
        },
    );
    let req = axum::extract::Request::from_parts(parts, axum::body::Body::from_stream(timed));
    next.run(req).await
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Answers 408 when a request takes longer than `limit`.
async fn bounded(
    limit: Duration,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => (
            axum::http::StatusCode::REQUEST_TIMEOUT,
            axum::Json(serde_json::json!({
                "error": format!("the request took longer than {} s", limit.as_secs())
            })),
        )
            .into_response(),
    }
}

/// One line per request: method, path, status, time taken.
async fn log_request(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let start = Instant::now();
    let resp = next.run(req).await;
    crate::api::metrics::REQUESTS.count(
        method.as_str(),
        resp.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    tracing::info!(
        %method,
        %path,
        status = resp.status().as_u16(),
        ms = start.elapsed().as_millis() as u64,
        "request"
    );
    resp
}
