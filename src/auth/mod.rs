//! Authentication: who is calling. `token` mode checks bearer tokens from the settings (or
//! one generated at first start); the extractor and middleware are mode-agnostic so that
//! other modes slot in beside it.

pub mod token;

use crate::http::problem::ApiError;
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{FromRequest, HttpMessage, HttpRequest, HttpResponse, ResponseError, web};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Serialize;
use std::future::{Ready, ready};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

/// An authenticated caller.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[schema(example = json!({"subject": "token:3f2a9c1e5b7d", "name": "API token 1", "email": null, "mode": "token"}))]
pub struct Principal {
    /// Stable and unique per caller; keys rate limits and idempotency records.
    pub subject: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub mode: &'static str,
}

/// Why a credential was refused (the class only, never the credential).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Invalid,
}

impl AuthFailure {
    pub fn into_api_error(self) -> ApiError {
        ApiError::Unauthorized(match self {
            Self::Missing => "credentials are required: send Authorization: Bearer <token>".into(),
            Self::Invalid => "the credentials are not valid".into(),
        })
    }
}

pub enum Mode {
    Token(token::TokenAuth),
}

/// Authenticates requests and rate-limits them per principal (per client address before).
pub struct Authenticator {
    mode: Mode,
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    checks: AtomicU64,
}

impl Authenticator {
    pub fn new(mode: Mode, rate: &crate::config::RateLimit) -> Self {
        let limiter = rate.enabled.then(|| {
            let per_second = NonZeroU32::new(rate.per_second).unwrap_or(NonZeroU32::MIN);
            let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
            RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst))
        });
        Self {
            mode,
            limiter,
            checks: AtomicU64::new(0),
        }
    }

    pub fn authenticate(&self, req: &HttpRequest) -> Result<Principal, AuthFailure> {
        let bearer = bearer_token(req);
        match &self.mode {
            Mode::Token(tokens) => tokens.authenticate(bearer.as_deref()),
        }
    }

    /// `Err(seconds to wait)` when `key` is over its rate.
    fn check_rate(&self, key: &str) -> Result<(), u64> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        if self
            .checks
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(4096)
        {
            limiter.retain_recent();
        }
        limiter.check_key(&key.to_string()).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
        })
    }
}

/// The bearer credential of a request; the WebSocket upgrade may carry it as
/// `?access_token=` because browsers cannot set headers there.
fn bearer_token(req: &HttpRequest) -> Option<String> {
    if let Some(value) = req.headers().get(actix_web::http::header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        return (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty())
            .then(|| token.trim().to_string());
    }
    if req.path().ends_with("/ws") {
        return url::form_urlencoded::parse(req.query_string().as_bytes())
            .find(|(k, _)| k == "access_token")
            .map(|(_, v)| v.into_owned());
    }
    None
}

fn client_key(req: &ServiceRequest) -> String {
    format!(
        "ip:{}",
        req.peer_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_default()
    )
}

/// Refuses requests without a valid principal (401) or over their rate (429).
pub async fn require_principal(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let Some(auth) = req.app_data::<web::Data<Authenticator>>().cloned() else {
        return Ok(refuse(
            req,
            ApiError::Internal("no authenticator configured".into()),
        ));
    };
    match auth.authenticate(req.request()) {
        Ok(principal) => {
            if let Err(secs) = auth.check_rate(&principal.subject) {
                return Ok(refuse(
                    req,
                    ApiError::RateLimited {
                        retry_after_secs: secs.max(1),
                    },
                ));
            }
            req.extensions_mut().insert(principal);
            Ok(next.call(req).await?.map_into_left_body())
        }
        Err(failure) => {
            if let Err(secs) = auth.check_rate(&client_key(&req)) {
                return Ok(refuse(
                    req,
                    ApiError::RateLimited {
                        retry_after_secs: secs.max(1),
                    },
                ));
            }
            Ok(refuse(req, failure.into_api_error()))
        }
    }
}

/// Attaches a principal when the request has valid credentials, refusing nothing.
pub async fn authenticate_optional(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if let Some(auth) = req.app_data::<web::Data<Authenticator>>().cloned()
        && let Ok(principal) = auth.authenticate(req.request())
    {
        req.extensions_mut().insert(principal);
    }
    next.call(req).await
}

fn refuse<B>(req: ServiceRequest, error: ApiError) -> ServiceResponse<EitherBody<B>> {
    req.into_response(error.error_response())
        .map_into_right_body()
}

impl FromRequest for Principal {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(
            req.extensions()
                .get::<Principal>()
                .cloned()
                .ok_or_else(|| AuthFailure::Missing.into_api_error()),
        )
    }
}

/// Who the credentials belong to.
#[utoipa::path(get, path = "/auth/me", tag = "auth",
    responses(
        (status = 200, description = "The caller", body = Principal),
        (status = 401, description = "No valid credentials", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    ))]
pub async fn me(principal: Principal) -> HttpResponse {
    HttpResponse::Ok().json(principal)
}
