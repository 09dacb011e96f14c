//! The gateway's error answers: every 4xx and 5xx carries the same JSON body,
//! `{"error": {"code": …, "message": …, "fields": […]}}`, with a stable `code` for programs
//! and a `message` for people (docs/GATEWAY.md lists them).

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::event_json::FieldError;
use crate::domain::RetryClass;
use crate::ports::{PublishError, StoreError};

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub fields: Vec<FieldError>,
    /// Sent as `Retry-After`, in whole seconds (at least one).
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            fields: Vec::new(),
            retry_after: None,
        }
    }

    pub fn retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    pub fn invalid_event(fields: Vec<FieldError>) -> Self {
        let problems = if fields.len() == 1 {
            "1 problem".to_owned()
        } else {
            format!("{} problems", fields.len())
        };
        ApiError {
            fields,
            ..ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_event",
                format!("the event has {problems}; see fields"),
            )
        }
    }

    /// A request whose fields other than an event's are wrong (a path id).
    pub fn invalid_request(fields: Vec<FieldError>) -> Self {
        ApiError {
            fields,
            ..ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the request has a problem; see fields",
            )
        }
    }

    /// The client sent its body too slowly; the connection is closed after this answer.
    pub fn body_timeout(after: Duration) -> Self {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!("the body did not arrive within {after:?} (gateway.body_timeout_ms); nothing was accepted"),
        )
    }

    /// The answer the HTTP stack gave with a body of its own (`message`), in the one error
    /// form.
    pub fn from_status(status: StatusCode, message: String) -> Self {
        let code = match status {
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::REQUEST_TIMEOUT => "request_timeout",
            StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
            StatusCode::URI_TOO_LONG => "uri_too_long",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "headers_too_large",
            StatusCode::TOO_MANY_REQUESTS => "rate_limited",
            s if s.is_server_error() => "internal",
            _ => "bad_request",
        };
        let message = if message.trim().is_empty() {
            status.canonical_reason().unwrap_or("refused").to_owned()
        } else {
            message
        };
        ApiError::new(status, code, message)
    }

    pub fn timeout(after: Duration) -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!("the request took longer than {after:?}; an event may have been accepted, send it again with the same event_id (a re-send changes nothing)"),
        )
        .retry_after(Duration::from_secs(1))
    }

    /// The JSON body, also used for the entries of a batch.
    pub fn body(&self) -> serde_json::Value {
        let mut error = json!({"code": self.code, "message": self.message});
        if !self.fields.is_empty() {
            error["fields"] = json!(self.fields);
        }
        json!({ "error": error })
    }
}

/// When to come back after a transient failure: when the error knows (an open breaker), else
/// in a second.
fn come_back(error: &impl RetryClass) -> Duration {
    error.retry_after().unwrap_or(Duration::from_secs(1))
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        if error.is_transient() {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                error.to_string(),
            )
            .retry_after(come_back(&error))
        } else {
            tracing::error!("store: {error}");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the store answered in a way txflow does not expect; see the gateway's log",
            )
        }
    }
}

impl From<&PublishError> for ApiError {
    fn from(error: &PublishError) -> Self {
        if error.is_transient() {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "log_unavailable",
                error.to_string(),
            )
            .retry_after(come_back(error))
        } else {
            tracing::error!("publishing: {error}");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                error.to_string(),
            )
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        let headers = response.headers_mut();
        if let Some(wait) = self.retry_after {
            let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::REQUEST_TIMEOUT {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"txflow\""),
            );
        }
        response
    }
}
