//! What a page or API call answers when it cannot do what was asked.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// A refusal or failure, with a status and a message for the person. Handlers return it; the
/// [`crate::access::guard`] middleware renders it as an HTML page in the dashboard's frame, or
/// as `{"error": ".."}` under `/api/`.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{title}: {message}")]
pub(crate) struct PageError {
    pub(crate) status: StatusCode,
    pub(crate) title: &'static str,
    pub(crate) message: String,
}

impl PageError {
    pub(crate) fn new(status: StatusCode, title: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            title,
            message: message.into(),
        }
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "Not found", message)
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "Bad request", message)
    }

    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "Forbidden", message)
    }
}

impl From<firelane::Error> for PageError {
    fn from(e: firelane::Error) -> Self {
        use firelane::Error as E;
        match &e {
            E::JobNotFound(_) | E::RecurringNotFound(_) => Self::not_found(e.to_string()),
            E::InvalidJobId(_) | E::InvalidState(_) => Self::not_found(e.to_string()),
            E::Refused { .. } => Self::new(StatusCode::CONFLICT, "Refused", e.to_string()),
            E::InvalidQueue(_) | E::InvalidRecurringId(_) => Self::bad_request(e.to_string()),
            _ => {
                tracing::warn!(error = %e, "dashboard: store error");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Store error",
                    e.to_string(),
                )
            }
        }
    }
}

impl From<askama::Error> for PageError {
    fn from(e: askama::Error) -> Self {
        tracing::warn!(error = %e, "dashboard: template error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Template error",
            e.to_string(),
        )
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let mut response = self.status.into_response();
        response.extensions_mut().insert(self);
        response
    }
}

/// A page's answer.
pub(crate) type PageResult<T = Response> = Result<T, PageError>;
