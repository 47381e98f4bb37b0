//! `/auth/*`: who am I, browser sessions (both modes) and the OIDC sign-in round trip.

use super::role::RoleFacts;
use super::session::{self, SESSION_COOKIE};
use super::{AuthFailure, Authenticator, ByCookie, Principal, oidc, same_origin};
use crate::http::body::{Form, JsonObject, text};
use crate::http::openapi::{PROBLEM_JSON, Problem, Routes};
use crate::http::problem::ApiError;
use actix_web::cookie::time::Duration as CookieDuration;
use actix_web::http::header;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use serde::Deserialize;

const LOGIN_COOKIE: &str = "duka_login";
const LOGIN_PATH: &str = "/auth/callback";

pub fn routes(auth: &mut Routes) {
    auth.add(__path_me, me)
        .add(__path_config, config)
        .add(__path_create_session, create_session)
        .add(__path_logout, logout)
        .add(__path_login, login)
        .add(__path_callback, callback);
}

/// How to sign in.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct SignInConfig {
    /// `token` or `oidc`.
    mode: &'static str,
}

/// The token a browser trades for a session cookie.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct SessionBody {
    /// An API token (token mode) or an ID/access token from the issuer (OIDC mode).
    token: String,
}

/// How to sign in, for the dashboard (no credentials needed).
#[utoipa::path(get, path = "/auth/config", tag = "auth", security(()),
    responses((status = 200, description = "The sign-in mode", body = SignInConfig)))]
async fn config(auth: web::Data<Authenticator>) -> HttpResponse {
    HttpResponse::Ok().json(SignInConfig {
        mode: auth.mode_name(),
    })
}

/// Who the credentials belong to.
#[utoipa::path(get, path = "/auth/me", tag = "auth",
    responses(
        (status = 200, description = "The caller", body = Principal),
        (status = 401, description = "No valid credentials", body = Problem, content_type = PROBLEM_JSON),
    ))]
async fn me(principal: Principal) -> HttpResponse {
    HttpResponse::Ok().json(principal)
}

/// `POST /auth/session {"token"}`: trades a bearer credential (an API token, or in OIDC
/// mode an ID token / access token the page got from the issuer) for a session cookie, so
/// the page need not keep the token where scripts can read it.
#[utoipa::path(post, path = "/auth/session", tag = "auth", security(()),
    request_body = SessionBody,
    responses(
        (status = 204, description = "Signed in: the session cookie is set"),
        (status = 400, description = "Malformed body", body = Problem, content_type = PROBLEM_JSON),
        (status = 401, description = "The token is not valid", body = Problem, content_type = PROBLEM_JSON),
        (status = 403, description = "Not allowed to sign in, or a cross-origin request", body = Problem, content_type = PROBLEM_JSON),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = PROBLEM_JSON),
        (status = 422, description = "No token", body = Problem, content_type = PROBLEM_JSON),
        (status = 408, description = "The body did not arrive in time", body = Problem, content_type = PROBLEM_JSON),
        (status = 429, description = "Rate limited per address, or too many failed attempts", body = Problem, content_type = PROBLEM_JSON),
    ))]
async fn create_session(
    auth: web::Data<Authenticator>,
    req: HttpRequest,
    body: JsonObject,
) -> Result<HttpResponse, ApiError> {
    // Another site must not sign a browser into an account of its choosing.
    if same_origin(&req) == Some(false) {
        return Err(AuthFailure::CrossOrigin.into_api_error());
    }
    let mut f = Form::new(body);
    let token = f.required(
        "token",
        text(|s| {
            if s.is_empty() {
                Err("must not be empty".to_string())
            } else {
                Ok(s.to_string())
            }
        }),
    );
    f.finish()?;
    let Some(token) = token else {
        return Err(ApiError::Internal("validated token missing".into()));
    };
    auth.guesses_allowed(&req)?;
    let verified = match auth.verify_bearer(&token).await {
        Ok(verified) => verified,
        Err(failure) => {
            auth.refused(&req, &failure)?;
            return Err(failure.into_api_error());
        }
    };
    // The session lasts no longer than the token it was traded for.
    let cookie = start_session(
        &auth,
        &req,
        &verified.principal,
        verified.facts,
        verified.expires_at,
    )
    .await?;
    Ok(HttpResponse::NoContent().cookie(cookie).finish())
}

/// Ends the session this browser had (a new sign-in replaces it, so a copy of the old
/// cookie stops working) and starts one for `principal`.
async fn start_session(
    auth: &Authenticator,
    req: &HttpRequest,
    principal: &Principal,
    facts: RoleFacts,
    until: Option<i64>,
) -> Result<actix_web::cookie::Cookie<'static>, ApiError> {
    if let Some(previous) = req.cookie(SESSION_COOKIE) {
        end_session(auth, req, previous.value()).await?;
    }
    auth.sessions.create(principal, facts, req, until).await
}

/// Ends a session and closes the WebSockets opened with it (with 1008).
async fn end_session(
    auth: &Authenticator,
    req: &HttpRequest,
    cookie: &str,
) -> Result<(), ApiError> {
    if let Some(hash) = auth.sessions.end(cookie).await?
        && let Some(live) = req.app_data::<web::Data<crate::live::Live>>()
    {
        live.session_ended(hash);
    }
    Ok(())
}

/// `POST /auth/logout`: ends the session on the server (the cookie's id is deleted, so a
/// copy of it no longer works) and tells the browser to forget it.
#[utoipa::path(post, path = "/auth/logout", tag = "auth", security(()),
    responses(
        (status = 204, description = "Signed out: the session no longer works anywhere"),
        (status = 403, description = "A cross-origin request", body = Problem, content_type = PROBLEM_JSON),
    ))]
async fn logout(
    auth: web::Data<Authenticator>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    if let Some(cookie) = req.cookie(SESSION_COOKIE) {
        // Another site may not sign the user out either.
        if same_origin(&req) == Some(false)
            || (same_origin(&req).is_none() && req.extensions().get::<ByCookie>().is_some())
        {
            return Err(AuthFailure::CrossOrigin.into_api_error());
        }
        end_session(&auth, &req, cookie.value()).await?;
    }
    Ok(HttpResponse::NoContent()
        .cookie(session::removal(SESSION_COOKIE, "/", &req))
        .finish())
}

#[derive(Deserialize, utoipa::IntoParams)]
struct LoginQuery {
    /// Where to go after signing in (a path on this site; anything else means `/`).
    next: Option<String>,
}

/// The OIDC mode when browser sign-in is possible, else 404.
fn oidc_of(auth: &Authenticator) -> Result<&oidc::OidcAuth, ApiError> {
    auth.oidc().filter(|o| o.can_sign_in()).ok_or_else(|| {
        ApiError::NotFound(
            "browser sign-in with OpenID Connect is not available here; post a token to /auth/session"
                .into(),
        )
    })
}

/// `GET /auth/login?next=/path`: sends the browser to the issuer.
#[utoipa::path(get, path = "/auth/login", tag = "auth", security(()), params(LoginQuery),
    responses(
        (status = 302, description = "To the issuer's sign-in page"),
        (status = 404, description = "Browser sign-in is not available (token mode)", body = Problem, content_type = PROBLEM_JSON),
        (status = 429, description = "Rate limited per address: retry after `Retry-After` seconds", body = Problem, content_type = PROBLEM_JSON),
    ))]
async fn login(
    auth: web::Data<Authenticator>,
    req: HttpRequest,
    query: web::Query<LoginQuery>,
) -> Result<HttpResponse, ApiError> {
    let oidc = oidc_of(&auth)?;
    let next = oidc::safe_next(query.next.as_deref());
    let (url, sealed) = oidc
        .start_login(next, &auth.sessions.key)
        .map_err(ApiError::Internal)?;
    let cookie = session::cookie(
        LOGIN_COOKIE,
        sealed,
        LOGIN_PATH,
        &req,
        Some(CookieDuration::minutes(10)),
    );
    Ok(HttpResponse::Found()
        .insert_header((header::LOCATION, url.to_string()))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .cookie(cookie)
        .finish())
}

#[derive(Deserialize, utoipa::IntoParams)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// `GET /auth/callback?code&state`: finishes the sign-in, starts a session, goes to `next`.
#[utoipa::path(get, path = "/auth/callback", tag = "auth", security(()), params(CallbackQuery),
    responses(
        (status = 302, description = "Signed in: on to `next`"),
        (status = 400, description = "A callback that does not belong to a sign-in in progress", body = Problem, content_type = PROBLEM_JSON),
        (status = 403, description = "Not allowed to sign in", body = Problem, content_type = PROBLEM_JSON),
        (status = 404, description = "Browser sign-in is not available (token mode)", body = Problem, content_type = PROBLEM_JSON),
        (status = 429, description = "Rate limited per address: retry after `Retry-After` seconds", body = Problem, content_type = PROBLEM_JSON),
    ))]
async fn callback(
    auth: web::Data<Authenticator>,
    req: HttpRequest,
    query: web::Query<CallbackQuery>,
) -> Result<HttpResponse, ApiError> {
    let oidc = oidc_of(&auth)?;
    // A failed callback leaves the sign-in cookie alone: a forged callback from another
    // site must not be able to cancel the user's own sign-in.
    if let Some(error) = &query.error {
        let code: String = error
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(64)
            .collect();
        return Err(ApiError::Unauthorized(format!(
            "sign-in failed: the issuer answered {code}"
        )));
    }
    let (Some(code), Some(state)) = (&query.code, &query.state) else {
        return Err(ApiError::bad_param("code", "code and state are required"));
    };
    let sealed = req.cookie(LOGIN_COOKIE);
    let result = oidc
        .finish_login(
            sealed.as_ref().map(|c| c.value()),
            &auth.sessions.key,
            code,
            state,
        )
        .await;
    let (principal, facts, next) = result.map_err(AuthFailure::into_api_error)?;
    let cookie = start_session(&auth, &req, &principal, facts, None).await?;
    tracing::info!(subject = %principal.subject, role = %principal.role, "signed in");
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, next))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .cookie(cookie)
        .cookie(session::removal(LOGIN_COOKIE, LOGIN_PATH, &req))
        .finish())
}
