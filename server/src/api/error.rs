//! An error answer: a status and a message. The one place where the store's and gc's errors
//! become HTTP statuses.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::token::Token;

/// An error answer: a status and a message, sent as `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    pub(super) status: StatusCode,
    pub(super) message: String,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub(super) fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub(super) fn internal(message: &str) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    pub(super) fn vm(token: &Token, vm: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            format!(
                "token {:?} reaches VMs {:?}, not VM {vm:?}",
                token.name, token.vms
            ),
        )
    }
}

impl From<cairn_store::Error> for ApiError {
    fn from(e: cairn_store::Error) -> Self {
        use cairn_store::Error as E;
        let status = match &e {
            E::Usage(_) | E::Point(_) => StatusCode::BAD_REQUEST,
            E::Incomplete { .. } | E::AlreadyHeld(_) => StatusCode::CONFLICT,
            E::MissingChunk(_) => StatusCode::NOT_FOUND,
            E::IdentityTaken(_) | E::Held(_) => StatusCode::FORBIDDEN,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, e.to_string())
    }
}

impl From<cairn_gc::Error> for ApiError {
    fn from(e: cairn_gc::Error) -> Self {
        match e {
            cairn_gc::Error::Store(e) => e.into(),
            cairn_gc::Error::Usage(m) => Self::bad(m),
            cairn_gc::Error::Refused(m) => Self::new(StatusCode::CONFLICT, m),
            e => Self::internal(&e.to_string()),
        }
    }
}

/// The store's folder as a server's answers never show it (set once, when it starts).
pub(super) static STORE_ROOT: std::sync::OnceLock<String> = std::sync::OnceLock::new();

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut message = self.message;
        if self.status.is_server_error() {
            // Logged whole for the admin; answered without the server's own paths.
            tracing::error!(error = %message, "a request failed in the server");
            if let Some(root) = STORE_ROOT.get().filter(|r| !r.is_empty()) {
                message = message.replace(root.as_str(), "STORE");
            }
        }
        (self.status, Json(serde_json::json!({ "error": message }))).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_inside_cairn_is_a_server_error_and_a_bad_request_is_the_clients() {
        use cairn_store::Error as E;
        let status = |e: E| ApiError::from(e).status;
        assert_eq!(
            status(E::Internal("a pack's sync panicked".into())),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            status(E::Usage("no such disk".into())),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(status(E::AlreadyHeld("abc".into())), StatusCode::CONFLICT);
        let gc = ApiError::from(cairn_gc::Error::Store(E::Internal("no open pack".into())));
        assert_eq!(gc.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
}
