//! Errors as RFC 9457 problem documents (`application/problem+json`), in one place.

use crate::domain::FieldErrors;
use crate::store::StoreError;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;
use std::fmt;

#[derive(Debug, Clone)]
pub enum ApiError {
    /// A malformed request; `param` names the query parameter or header at fault.
    BadRequest {
        detail: String,
        param: Option<String>,
    },
    Unauthorized(String),
    Forbidden(String),
    NotFound(String),
    MethodNotAllowed,
    Conflict(String),
    PayloadTooLarge,
    /// The body did not arrive within `http.body_timeout_secs`.
    RequestTimeout,
    /// An upload over its own limits (size or rows), which `detail` names.
    FileTooLarge(String),
    UnsupportedMediaType,
    /// A body of another type than the one `detail` names.
    WrongMediaType(String),
    Validation(FieldErrors),
    RateLimited {
        retry_after_secs: u64,
    },
    /// Refused for now for the reason `detail` gives; 429 with `Retry-After`.
    TooSoon {
        detail: String,
        retry_after_secs: u64,
    },
    Unavailable(String),
    Internal(String),
}

impl ApiError {
    pub fn bad_param(param: &str, detail: impl Into<String>) -> Self {
        Self::BadRequest {
            detail: detail.into(),
            param: Some(param.to_string()),
        }
    }

    fn slug_title_detail(&self) -> (&'static str, &'static str, String) {
        match self {
            Self::BadRequest { detail, .. } => ("bad-request", "Bad request", detail.clone()),
            Self::Unauthorized(d) => ("unauthorized", "Unauthorized", d.clone()),
            Self::Forbidden(d) => ("forbidden", "Forbidden", d.clone()),
            Self::NotFound(d) => ("not-found", "Not found", d.clone()),
            Self::MethodNotAllowed => (
                "method-not-allowed",
                "Method not allowed",
                "this resource does not support that method".into(),
            ),
            Self::Conflict(d) => ("conflict", "Conflict", d.clone()),
            Self::PayloadTooLarge => (
                "payload-too-large",
                "Payload too large",
                "the request body is over 64 KiB".into(),
            ),
            Self::RequestTimeout => (
                "request-timeout",
                "Request timeout",
                "the request body took too long to arrive".into(),
            ),
            Self::FileTooLarge(d) => ("payload-too-large", "Payload too large", d.clone()),
            Self::UnsupportedMediaType => (
                "unsupported-media-type",
                "Unsupported media type",
                "send the body as application/json".into(),
            ),
            Self::WrongMediaType(d) => (
                "unsupported-media-type",
                "Unsupported media type",
                d.clone(),
            ),
            Self::Validation(_) => (
                "validation",
                "Validation failed",
                "one or more fields are invalid".into(),
            ),
            Self::RateLimited { .. } => (
                "rate-limited",
                "Too many requests",
                "the rate limit was exceeded; retry after the given delay".into(),
            ),
            Self::TooSoon { detail, .. } => ("rate-limited", "Too many requests", detail.clone()),
            Self::Unavailable(_) => (
                "unavailable",
                "Service unavailable",
                "the database is unavailable; retry shortly".into(),
            ),
            Self::Internal(_) => (
                "internal",
                "Internal server error",
                "an unexpected error occurred".into(),
            ),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (_, title, detail) = self.slug_title_detail();
        write!(f, "{title}: {detail}")
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge | Self::FileTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::UnsupportedMediaType | Self::WrongMediaType(_) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            Self::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::RateLimited { .. } | Self::TooSoon { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let (slug, title, detail) = self.slug_title_detail();
        let mut body = json!({
            "type": format!("urn:duka:problem:{slug}"),
            "title": title,
            "status": status.as_u16(),
            "detail": detail,
        });
        match self {
            Self::Validation(errors) => body["errors"] = json!(errors.0),
            Self::BadRequest {
                param: Some(param),
                detail,
            } => body["errors"] = json!({ param: [detail] }),
            Self::Unavailable(cause) => tracing::warn!(%cause, "answering 503"),
            Self::Internal(cause) => tracing::error!(%cause, "answering 500"),
            _ => {}
        }
        let mut response = HttpResponse::build(status);
        response.insert_header((header::CONTENT_TYPE, "application/problem+json"));
        match self {
            Self::Unauthorized(_) => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"duka\""));
            }
            Self::RateLimited { retry_after_secs }
            | Self::TooSoon {
                retry_after_secs, ..
            } => {
                response.insert_header((header::RETRY_AFTER, retry_after_secs.to_string()));
            }
            Self::Unavailable(_) => {
                response.insert_header((header::RETRY_AFTER, HeaderValue::from_static("2")));
            }
            _ => {}
        }
        response.body(body.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => Self::NotFound(format!("no such {what}")),
            StoreError::Conflict(d) => Self::Conflict(d),
            StoreError::Validation(errors) => Self::Validation(errors),
            StoreError::TooSoon {
                detail,
                retry_after_secs,
            } => Self::TooSoon {
                detail,
                retry_after_secs,
            },
            StoreError::Unavailable(d) => Self::Unavailable(d),
            StoreError::Internal(d) => Self::Internal(d),
        }
    }
}

impl From<actix::MailboxError> for ApiError {
    fn from(e: actix::MailboxError) -> Self {
        Self::Unavailable(format!("repository unreachable: {e}"))
    }
}

impl From<FieldErrors> for ApiError {
    fn from(errors: FieldErrors) -> Self {
        Self::Validation(errors)
    }
}

pub async fn not_found() -> HttpResponse {
    ApiError::NotFound("no such resource".into()).error_response()
}

pub async fn method_not_allowed() -> HttpResponse {
    ApiError::MethodNotAllowed.error_response()
}
