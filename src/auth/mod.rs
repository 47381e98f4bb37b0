//! Authentication: who is calling. `token` mode checks bearer tokens from the settings (or
//! one generated at first start); `oidc` mode verifies JWTs from an OpenID issuer and signs
//! browsers in with it. In both, a browser may instead hold a session cookie (`session`).
//! The extractor and middleware are mode-agnostic.

pub mod failures;
pub mod oidc;
pub mod role;
pub mod routes;
pub mod session;
pub mod token;

use crate::http::problem::ApiError;
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::{Method, header};
use actix_web::middleware::Next;
use actix_web::{FromRequest, HttpMessage, HttpRequest, ResponseError, web};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use role::{Role, RoleFacts};
use serde::Serialize;
use session::{SESSION_COOKIE, Sessions};
use std::future::{Ready, ready};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// An authenticated caller.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[schema(example = json!({"subject": "token:3f2a9c1e5b7d", "name": "API token 1", "email": null, "mode": "token", "role": "admin"}))]
pub struct Principal {
    /// Stable and unique per caller; keys rate limits and idempotency records.
    pub subject: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub mode: &'static str,
    /// What the caller may do (see `auth::role`).
    pub role: Role,
}

impl Principal {
    /// The name to show for changes this principal made: its name, else its e-mail, else
    /// its subject.
    pub fn display_name(&self) -> &str {
        self.name
            .as_deref()
            .or(self.email.as_deref())
            .unwrap_or(&self.subject)
    }
}

impl From<&Principal> for crate::domain::event::Actor {
    fn from(p: &Principal) -> Self {
        Self::user(&p.subject, p.display_name())
    }
}

/// Why a credential was refused (the class only, never the credential or internals).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Invalid,
    Expired,
    NotYetValid,
    WrongAudience,
    WrongIssuer,
    BadSignature,
    UnknownKey,
    DisallowedAlgorithm,
    Malformed,
    /// The session cookie names no live session (ended or expired).
    SessionEnded,
    /// The session cookie's signature is wrong: not a cookie this service made.
    ForgedSession,
    /// A browser sign-in step failed.
    Login(&'static str),
    /// Authenticated, but the allow lists say no (403).
    NotAllowed(String),
    /// A cookie-authenticated change from another origin (403).
    CrossOrigin,
    /// The session store could not be asked.
    Unavailable(String),
}

impl AuthFailure {
    /// Which check failed, for the log: the answer names none of them, so that a caller
    /// probing the verifier learns nothing from it.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Invalid => "invalid",
            Self::Expired => "expired",
            Self::NotYetValid => "not yet valid (nbf)",
            Self::WrongAudience => "wrong audience (aud)",
            Self::WrongIssuer => "wrong issuer (iss)",
            Self::BadSignature => "bad signature",
            Self::UnknownKey => "unknown key (kid)",
            Self::DisallowedAlgorithm => "disallowed algorithm (alg)",
            Self::Malformed => "malformed",
            Self::SessionEnded => "session ended",
            Self::ForgedSession => "forged session cookie",
            Self::Login(why) => why,
            Self::NotAllowed(_) => "not allowed",
            Self::CrossOrigin => "cross origin",
            Self::Unavailable(_) => "unavailable",
        }
    }

    /// A credential was presented and it was wrong: counts as a guess. A genuine cookie of
    /// a session that has ended is not one (a dashboard left open polls with it).
    pub fn is_guess(&self) -> bool {
        matches!(
            self,
            Self::Invalid
                | Self::Expired
                | Self::NotYetValid
                | Self::WrongAudience
                | Self::WrongIssuer
                | Self::BadSignature
                | Self::UnknownKey
                | Self::DisallowedAlgorithm
                | Self::Malformed
                | Self::ForgedSession
        )
    }

    pub fn into_api_error(self) -> ApiError {
        let unauthorized = |s: &str| ApiError::Unauthorized(s.to_string());
        match self {
            Self::Missing => unauthorized(
                "credentials are required: send Authorization: Bearer <token> or sign in",
            ),
            Self::Invalid
            | Self::Expired
            | Self::NotYetValid
            | Self::WrongAudience
            | Self::WrongIssuer
            | Self::BadSignature
            | Self::UnknownKey
            | Self::DisallowedAlgorithm
            | Self::Malformed => unauthorized("the credentials are not valid"),
            Self::SessionEnded | Self::ForgedSession => {
                unauthorized("the session has ended; sign in again")
            }
            Self::Login(why) => unauthorized(&format!("sign-in failed: {why}")),
            Self::NotAllowed(why) => ApiError::Forbidden(why),
            Self::CrossOrigin => ApiError::Forbidden(
                "a cookie-authenticated change must come from this site (Origin)".into(),
            ),
            Self::Unavailable(cause) => ApiError::Unavailable(cause),
        }
    }
}

pub enum Mode {
    Token(token::TokenAuth),
    Oidc(Arc<oidc::OidcAuth>),
}

/// Authenticates requests and rate-limits them per principal (per client address before).
pub struct Authenticator {
    mode: Mode,
    pub sessions: Sessions,
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    checks: AtomicU64,
    /// Failed guesses per client address, apart from the normal rate.
    pub guesses: failures::FailureLimiter,
}

/// What a request proved itself with; kept by a WebSocket so it can be checked again.
#[derive(Clone)]
pub enum Credential {
    Bearer(String),
    /// The session cookie's value.
    Session(String),
}

/// A verified credential: who, and until when (a JWT's `exp`, in seconds since the epoch).
pub struct Verified {
    pub principal: Principal,
    pub expires_at: Option<i64>,
    /// What decided the role, for a session made from this credential.
    pub facts: RoleFacts,
}

/// A principal and how it was proven.
pub struct Authenticated {
    pub principal: Principal,
    pub by_cookie: bool,
    pub credential: Credential,
    pub expires_at: Option<i64>,
}

/// The credential behind a request's principal, for handlers that outlive the request
/// (the WebSocket re-checks it).
#[derive(Clone)]
pub struct Proof {
    pub credential: Credential,
    pub expires_at: Option<i64>,
}

impl Authenticator {
    pub fn new(mode: Mode, sessions: Sessions, rate: &crate::config::RateLimit) -> Self {
        let limiter = rate.enabled.then(|| {
            let per_second = NonZeroU32::new(rate.per_second).unwrap_or(NonZeroU32::MIN);
            let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
            RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst))
        });
        Self {
            mode,
            sessions,
            limiter,
            checks: AtomicU64::new(0),
            guesses: failures::FailureLimiter::new(rate.enabled),
        }
    }

    pub fn mode_name(&self) -> &'static str {
        match self.mode {
            Mode::Token(_) => "token",
            Mode::Oidc(_) => "oidc",
        }
    }

    pub fn oidc(&self) -> Option<&oidc::OidcAuth> {
        match &self.mode {
            Mode::Oidc(o) => Some(o),
            Mode::Token(_) => None,
        }
    }

    /// Checks a bearer credential (a configured token, or a JWT in OIDC mode).
    pub async fn verify_bearer(&self, bearer: &str) -> Result<Verified, AuthFailure> {
        match &self.mode {
            Mode::Token(tokens) => Ok(Verified {
                principal: tokens.authenticate(Some(bearer))?,
                expires_at: None,
                facts: RoleFacts::default(),
            }),
            Mode::Oidc(oidc) => oidc.verify_bearer(bearer).await,
        }
    }

    /// A bearer credential wins over a session cookie: a client that sends one means it.
    pub async fn authenticate(&self, req: &HttpRequest) -> Result<Authenticated, AuthFailure> {
        let credential = if let Some(bearer) = bearer_token(req) {
            Credential::Bearer(bearer)
        } else if let Some(cookie) = req.cookie(SESSION_COOKIE) {
            Credential::Session(cookie.value().to_string())
        } else {
            return Err(AuthFailure::Missing);
        };
        let verified = self.verify(&credential).await?;
        Ok(Authenticated {
            principal: verified.principal,
            by_cookie: matches!(credential, Credential::Session(_)),
            credential,
            expires_at: verified.expires_at,
        })
    }

    /// Checks a credential as it stands now (a session may have ended since, a token
    /// expired or left the settings).
    pub async fn verify(&self, credential: &Credential) -> Result<Verified, AuthFailure> {
        let cookie = match credential {
            Credential::Bearer(bearer) => return self.verify_bearer(bearer).await,
            Credential::Session(cookie) => cookie,
        };
        if self.sessions.id_hash_of(cookie).is_none() {
            return Err(AuthFailure::ForgedSession);
        }
        let (stored, facts, expires_at) = self
            .sessions
            .find(cookie)
            .await
            .map_err(|e| AuthFailure::Unavailable(e.to_string()))?
            .ok_or(AuthFailure::SessionEnded)?;
        // A session outlives neither a change of mode nor the removal of its token; the
        // allow lists and roles in force now apply.
        let principal = match &self.mode {
            Mode::Token(tokens) if stored.mode == "token" => tokens.principal_of(&stored.subject),
            Mode::Oidc(oidc) if stored.mode == "oidc" => {
                oidc.check_allowed(&stored, Some(facts.email_verified))?;
                let role = oidc.role_of(stored.email.as_deref(), facts);
                Some(Principal { role, ..stored })
            }
            _ => None,
        }
        .ok_or(AuthFailure::SessionEnded)?;
        Ok(Verified {
            principal,
            expires_at: Some(expires_at / 1000),
            facts,
        })
    }

    /// `Err(seconds to wait)` when `key` is over its rate.
    pub(crate) fn check_rate(&self, key: &str) -> Result<(), u64> {
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

    /// Logs a refused credential with the check that failed and, when it was a guess,
    /// counts it against the address; `Err` is the answer to give instead (429).
    pub fn refused(&self, req: &HttpRequest, failure: &AuthFailure) -> Result<(), ApiError> {
        if failure.is_guess() {
            tracing::info!(reason = failure.reason(), client = %client_key(req), "credentials refused");
            if !self.guesses.enabled() {
                return Ok(());
            }
            self.guesses
                .failed(&client_key(req))
                .map_err(|secs| ApiError::RateLimited {
                    retry_after_secs: secs,
                })?;
        }
        Ok(())
    }

    /// `Err` (429) while the request's address is held back for failed guesses.
    pub fn guesses_allowed(&self, req: &HttpRequest) -> Result<(), ApiError> {
        if !self.guesses.enabled() {
            return Ok(());
        }
        self.guesses
            .check(&client_key(req))
            .map_err(|secs| ApiError::RateLimited {
                retry_after_secs: secs,
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

pub use crate::http::security::client_key;

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
    if let Err(e) = auth.guesses_allowed(req.request()) {
        return Ok(refuse(req, e));
    }
    match auth.authenticate(req.request()).await {
        Ok(Authenticated {
            principal,
            by_cookie,
            credential,
            expires_at,
        }) => {
            if by_cookie && !cookie_use_allowed(req.request()) {
                return Ok(refuse(req, AuthFailure::CrossOrigin.into_api_error()));
            }
            if let Err(secs) = auth.check_rate(&principal.subject) {
                return Ok(refuse(
                    req,
                    ApiError::RateLimited {
                        retry_after_secs: secs.max(1),
                    },
                ));
            }
            req.extensions_mut().insert(principal);
            req.extensions_mut().insert(Proof {
                credential,
                expires_at,
            });
            Ok(next.call(req).await?.map_into_left_body())
        }
        Err(failure) => {
            if let Err(e) = auth.refused(req.request(), &failure) {
                return Ok(refuse(req, e));
            }
            if let Err(secs) = auth.check_rate(&client_key(req.request())) {
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

/// Lets a request through when its principal (attached by `require_principal`) has at
/// least `needed`; 403 naming the role otherwise, before anything is read or changed.
/// Every `/api/v1` route is wrapped in it by the route table (`Routes::add_for`).
pub async fn require_role(
    needed: Role,
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let role = req.extensions().get::<Principal>().map(|p| p.role);
    match role {
        Some(role) if role >= needed => Ok(next.call(req).await?.map_into_left_body()),
        Some(role) => {
            let error = ApiError::Forbidden(format!(
                "this needs the {needed} role (or a higher one); yours is {role}"
            ));
            Ok(refuse(req, error))
        }
        None => Ok(refuse(req, AuthFailure::Missing.into_api_error())),
    }
}

/// Attaches a principal when the request has valid credentials, refusing nothing.
pub async fn authenticate_optional(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    if let Some(auth) = req.app_data::<web::Data<Authenticator>>().cloned() {
        // Sign-in attempts are held to the per-address API rate, and to the guess limit.
        let limited = auth.guesses_allowed(req.request()).err().or_else(|| {
            auth.check_rate(&client_key(req.request()))
                .err()
                .map(|secs| ApiError::RateLimited {
                    retry_after_secs: secs.max(1),
                })
        });
        if let Some(e) = limited {
            return Ok(req.into_response(e.error_response()).map_into_right_body());
        }
        match auth.authenticate(req.request()).await {
            Ok(found) => {
                req.extensions_mut().insert(found.principal);
                if found.by_cookie {
                    req.extensions_mut().insert(ByCookie);
                }
            }
            // Kept so that a handler needing a principal can say why there is none.
            Err(failure) => {
                req.extensions_mut().insert(failure);
            }
        }
    }
    Ok(next.call(req).await?.map_into_left_body())
}

/// Marks a request whose principal came from the session cookie.
#[derive(Clone, Copy)]
pub struct ByCookie;

/// Whether a request's `Origin` is this server itself (scheme and host, as a browser sees
/// them, `X-Forwarded-Proto`/`-Host` included when a trusted proxy sent them).
pub fn same_origin(req: &HttpRequest) -> Option<bool> {
    let origin = req.headers().get(header::ORIGIN)?.to_str().ok()?;
    let info = crate::http::security::client_info(req);
    Some(origin.eq_ignore_ascii_case(&format!("{}://{}", info.scheme, info.host)))
}

/// A session cookie may ride a safe request from anywhere (SameSite=Lax already keeps it
/// off cross-site subrequests), but a change, or a WebSocket (which browsers open
/// cross-site with cookies), needs this site's `Origin`. A change without any `Origin` is
/// refused too: every current browser sends one on POST, PATCH and DELETE, so its absence
/// means a non-browser client, which should send a bearer token instead.
fn cookie_use_allowed(req: &HttpRequest) -> bool {
    let unsafe_method = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    match same_origin(req) {
        Some(same) => same,
        None => !unsafe_method,
    }
}

fn refuse<B>(req: ServiceRequest, error: ApiError) -> ServiceResponse<EitherBody<B>> {
    req.into_response(error.error_response())
        .map_into_right_body()
}

impl FromRequest for Principal {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(req.extensions().get::<Principal>().cloned().ok_or_else(|| {
            req.extensions()
                .get::<AuthFailure>()
                .cloned()
                .unwrap_or(AuthFailure::Missing)
                .into_api_error()
        }))
    }
}
