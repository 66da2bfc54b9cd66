//! The report: its JSON document and the live pages, for what the token may read.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cairn_store::RecoveryPoint;

use super::{Answer, ApiError, Shared, blocking};
use crate::token::Role;

/// `GET /api/v1/report`: the report document (docs/report-json.md) of what the token may read,
/// the one the page is drawn from: an admin token's covers the whole store; a restore token's
/// its VMs' rows, without the store-wide figures.
pub(super) async fn report(
    State(app): State<Shared>,
    headers: HeaderMap,
) -> Answer<Json<serde_json::Value>> {
    let token = app.authorize(&headers, &[Role::Admin, Role::Restore], "read the report")?;
    blocking(move || Ok(Json(report_for(&app, &token, None)?))).await
}

/// The report document a token reads (of one VM, with `vm`): see [`report`].
pub(super) fn report_for(
    app: &Shared,
    token: &crate::token::Token,
    vm: Option<&str>,
) -> Answer<serde_json::Value> {
    let admin = token.role == Role::Admin;
    let reclaimable = if admin && vm.is_none() {
        app.reclaimable()
    } else {
        None
    };
    let shown = |p: &RecoveryPoint| token.allows_vm(&p.vm) && vm.is_none_or(|v| v == p.vm);
    // A VM's page reads that VM's points alone.
    let mut doc = match vm {
        Some(v) => cairn_report::document_of_vm(app.store, v, &shown),
        None => cairn_report::document(app.store, &shown, reclaimable.as_ref()),
    }
    .map_err(|e| ApiError::internal(&e.to_string()))?;
    if !admin {
        for f in cairn_report::STORE_WIDE {
            doc[f] = serde_json::Value::Null;
        }
    }
    Ok(doc)
}

/// `GET /`: the report page of what the token may read (an admin token: the whole store; a
/// restore token: its VMs' rows, without the store-wide figures).
pub(super) async fn page(State(app): State<Shared>, headers: HeaderMap) -> Response {
    page_for(app, headers, None).await
}

/// `GET /vm/{vm}`: one VM's page, every point listed.
pub(super) async fn vm_page(
    State(app): State<Shared>,
    axum::extract::Path(vm): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    page_for(app, headers, Some(vm)).await
}

/// The token of a page's request (a restore or admin one), or the answer that asks a browser
/// for one (the token as the password) or refuses it.
pub(super) fn page_token(
    app: &Shared,
    headers: &HeaderMap,
) -> Result<crate::token::Token, Box<Response>> {
    match app.authorize_page(headers, &[Role::Admin, Role::Restore]) {
        Ok(t) => Ok(t),
        Err(e) if e.status == StatusCode::UNAUTHORIZED => Err(Box::new(
            (
                StatusCode::UNAUTHORIZED,
                [(
                    header::WWW_AUTHENTICATE,
                    "Basic realm=\"cairn report: a token as the password\", charset=\"UTF-8\"",
                )],
                format!(
                    "{}: give a restore or admin token as the password",
                    e.message
                ),
            )
                .into_response(),
        )),
        Err(e) => Err(Box::new(e.into_response())),
    }
}

/// A page's answer: the HTML, whole in itself (nothing may be loaded from anywhere).
pub(super) fn html(page: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        page,
    )
        .into_response()
}

pub(super) async fn page_for(app: Shared, headers: HeaderMap, vm: Option<String>) -> Response {
    let token = match page_token(&app, &headers) {
        Ok(t) => t,
        Err(answer) => return *answer,
    };
    let made = blocking(move || {
        let doc = report_for(&app, &token, vm.as_deref())?;
        if let Some(v) = &vm
            && doc["vms"].as_array().is_none_or(Vec::is_empty)
        {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no VM {v:?} that this token reads"),
            ));
        }
        let options = cairn_report::page::PageOptions {
            points_per_vm: if vm.is_some() {
                usize::MAX
            } else {
                cairn_report::page::PageOptions::default().points_per_vm
            },
            vm_pages: vm.is_none(),
            browse_links: app.store.chunk_keys().is_some(),
        };
        Ok(cairn_report::page::render(&doc, &options))
    })
    .await;
    match made {
        Ok(page) => html(page),
        Err(e) => e.into_response(),
    }
}

/// `GET /point/{id}/boot-check.png`: the screenshot of the point's last boot check, for a
/// restore or admin token that reaches its VM.
pub(super) async fn boot_check_png(
    State(app): State<Shared>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    let token = match page_token(&app, &headers) {
        Ok(t) => t,
        Err(answer) => return *answer,
    };
    let found = blocking(move || {
        let point = super::points::point_of(&app, &token, &id)?;
        cairn_gc::history::boot_check_screenshot(app.store.root(), point.id.as_str()).ok_or_else(
            || {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("point {id} has no boot check screenshot"),
                )
            },
        )
    })
    .await;
    match found {
        Ok(png) => (
            [
                (header::CONTENT_TYPE, "image/png"),
                (header::CONTENT_SECURITY_POLICY, "default-src 'none'"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            png,
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}
