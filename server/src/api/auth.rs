//! Who may ask: the token of a request (`Bearer` for the API; for a browser on the report pages,
//! also `Basic`), refused before its body is read, and what a browser sends for another site.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{ANY, ApiError, Shared};

/// The token's secret of `Authorization: Bearer SECRET` (empty without one). A browser never
/// adds this header by itself, so a page of another site cannot make it send a request that
/// carries a token (cross-site request forgery): the API takes no other form.
pub(super) fn bearer_of(headers: &HeaderMap) -> String {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_owned()
}

/// The password of `Authorization: Basic` (a browser asked for credentials by the report
/// page sends the token as the password, any user name); empty without one.
pub(super) fn basic_password_of(headers: &HeaderMap) -> String {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .strip_prefix("Basic ")
        .and_then(|b| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|up| up.split_once(':').map(|(_, pw)| pw.to_owned()))
        .unwrap_or_default()
}

/// Refuses (401) a request that carries no live token, before anything of it is read.
pub(super) async fn require_token(
    State(app): State<Shared>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // The report and browse pages (GETs: no body to read) take the token a browser sends
    // (`Basic`, the token as the password) and ask a browser for one when none came.
    let path = req.uri().path();
    // The health check says nothing but whether the catalogue reads: a load balancer or a
    // supervisor asks it without a token.
    if req.method() == axum::http::Method::GET && path == "/healthz" {
        return next.run(req).await;
    }
    let page = req.method() == axum::http::Method::GET
        && (path == "/" || path.starts_with("/vm/") || path.starts_with("/point/"));
    let checked = if page {
        super::page::page_token(&app, req.headers())
    } else {
        app.authorize(req.headers(), ANY, "use this server")
            .and_then(|t| same_origin_json(&req).map(|()| t))
            .map_err(|e| Box::new(e.into_response()))
    };
    let token = match checked {
        Ok(t) => t,
        Err(answer) => return *answer,
    };
    // One token's requests in flight are bounded (each may hold a body in memory): a stolen
    // token cannot take the server's memory or every worker.
    let Some(_in_flight) = app.in_flight.take(&token.id, app.limits.requests_per_token) else {
        return ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "token {:?} has {} requests in flight, the most one token may; try again when \
                 one ended",
                token.name, app.limits.requests_per_token
            ),
        )
        .into_response();
    };
    next.run(req).await
}

/// Refuses what a browser sends on behalf of another site (defence in depth beside the
/// Bearer-only tokens): a request whose `Origin` is not this server's own (403), and a request
/// with a body of any type but the API's, `application/json` or `application/octet-stream`
/// (415): the types a page of another site can send without asking the server first
/// (`text/plain`, forms) are never taken.
pub(super) fn same_origin_json(req: &axum::extract::Request) -> Result<(), ApiError> {
    let headers = req.headers();
    if let Some(origin) = headers.get(header::ORIGIN) {
        let own = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(|h| format!("https://{h}"));
        let origin = origin.to_str().unwrap_or("");
        if own.is_none_or(|o| !o.eq_ignore_ascii_case(origin)) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "{} {}: a request from the page of another site ({origin:?}) is refused",
                    req.method(),
                    req.uri().path()
                ),
            ));
        }
    }
    let has_body = headers
        .get(header::CONTENT_LENGTH)
        .is_some_and(|l| l.as_bytes() != b"0")
        || headers.contains_key(header::TRANSFER_ENCODING);
    if !has_body {
        return Ok(());
    }
    let kind = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if kind == "application/json" || kind == "application/octet-stream" {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        format!(
            "{} {}: a body of type {kind:?}; the API takes application/json (metadata) or \
             application/octet-stream (chunk ids and frames)",
            req.method(),
            req.uri().path()
        ),
    ))
}
