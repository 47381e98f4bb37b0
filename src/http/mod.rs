//! HTTP: routes (one file per resource), problem+json errors, request ids and access logs.

pub mod assets;
pub mod body;
pub mod customers;
pub mod health;
pub mod openapi;
pub mod orders;
pub mod params;
pub mod problem;
pub mod reports;
pub mod security;
pub mod webhooks;

/// How much of a response an HTTP/1 connection buffers before it writes to the socket
/// (actix's default is 32 KiB). A whole body given at once is still written at once; what
/// this bounds is a streamed body, above all a WebSocket's: with `live::session`'s turns,
/// a dashboard that falls behind holds at most this much (and one turn) in its
/// connection's buffer, rather than everything it is behind by.
pub const WRITE_BUFFER: usize = 8 * 1024;

use crate::auth::{self, Principal};
use crate::domain::money::Currency;
use crate::domain::phone::Region;
use crate::store::ops::{IdemKey, StoredReply, WriteOp, WriteReply};
use crate::store::repository::Write;
use crate::store::{Reader, Repository};
use actix::Addr;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use body::JsonObject;
use openapi::Routes;
use problem::ApiError;
use serde::Serialize;
use std::time::Instant;
use tracing::Instrument;

/// What handlers share. Each HTTP worker has its own (see `lib.rs`): the writer is one
/// for all, the reader is the worker's own.
#[derive(Clone)]
pub struct AppState {
    pub repo: Addr<Repository>,
    pub reader: Addr<Reader>,
    pub region: Region,
    pub currency: Currency,
    /// `business.timezone`: whose calendar days dates and stats mean.
    pub timezone: chrono_tz::Tz,
}

/// Every route, for the app factory.
pub fn configure(cfg: &mut web::ServiceConfig, auth: web::Data<auth::Authenticator>) {
    let routes = api_routes();
    // Before the /api/v1 scope: openapi.json (and webhooks) must not require a principal.
    routes.public.register(cfg);
    cfg.service(web::resource(openapi::DOCS).route(web::get().to(openapi::docs_redirect)))
        .service(openapi::docs())
        .service(
            web::scope("/auth")
                .configure(|c| routes.auth.register(c))
                .default_service(web::to(problem::not_found))
                .wrap(actix_web::middleware::from_fn(auth::authenticate_optional)),
        )
        .service(
            web::scope("/api/v1")
                .configure(|c| routes.api.register(c))
                .default_service(web::to(problem::not_found))
                .wrap(actix_web::middleware::from_fn(auth::require_principal)),
        )
        .app_data(auth)
        // Typed query strings (the /auth callbacks) fail as problem+json too.
        .app_data(web::QueryConfig::default().error_handler(|e, _| {
            ApiError::BadRequest {
                detail: format!("bad query string: {e}"),
                param: None,
            }
            .into()
        }))
        .configure(assets::routes)
        .default_service(web::to(problem::not_found));
}

/// Answers the /api/v1 middleware (and the JSON body reader) may give to any operation.
const API_ERRORS: &[(u16, &str)] = &[
    (
        400,
        "Malformed request: a bad query parameter, header or JSON body",
    ),
    (401, "Missing or invalid credentials"),
    (
        408,
        "The request body did not arrive within `http.body_timeout_secs`",
    ),
    (
        429,
        "Rate limited, or too many failed credentials from this address: retry after `Retry-After` seconds",
    ),
    (
        503,
        "The database is unavailable: retry after `Retry-After` seconds",
    ),
];

/// Every documented route, by the scope that serves it. A route is added here (through
/// `Routes::add`, with its `#[utoipa::path]`) or it is neither served nor documented.
pub struct ApiRoutes {
    /// At the root, no authentication: health, metrics, the OpenAPI document, webhooks.
    pub public: Routes,
    /// Under /auth: a principal is attached when the request carries one.
    pub auth: Routes,
    /// Under /api/v1: a principal is required (401), and rate limited (429).
    pub api: Routes,
}

impl ApiRoutes {
    pub fn groups(&self) -> [&Routes; 3] {
        [&self.public, &self.auth, &self.api]
    }

    /// Every (method, full path) the app serves through these groups.
    pub fn operations(&self) -> Vec<(actix_web::http::Method, String)> {
        self.groups().iter().flat_map(|g| g.operations()).collect()
    }
}

pub fn api_routes() -> ApiRoutes {
    let mut public = Routes::new("", &[]);
    public
        .add(health::__path_healthz, health::healthz)
        .add(health::__path_readyz, health::readyz)
        .add(health::__path_metrics, health::metrics)
        .add(openapi::__path_openapi_json, openapi::openapi_json)
        // Provider callbacks carry their own secret: served before the /api/v1 scope so
        // that user authentication does not apply to them.
        .add(
            webhooks::__path_africastalking_delivery,
            webhooks::africastalking_delivery,
        );
    let mut auth_routes = Routes::new("/auth", &[]);
    auth::routes::routes(&mut auth_routes);
    let mut api = Routes::with_roles("/api/v1", API_ERRORS);
    // Before the resources they would otherwise match as an `{id}`.
    reports::routes(&mut api);
    customers::routes(&mut api);
    orders::routes(&mut api);
    crate::live::routes(&mut api);
    ApiRoutes {
        public,
        auth: auth_routes,
        api,
    }
}

/// A resource whose unsupported methods answer 405 as problem+json.
pub fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(problem::method_not_allowed))
}

pub fn ok(body: impl Serialize) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(body))
}

/// Applies `op` for `principal` (the actor of the events it makes).
pub async fn write(
    state: &AppState,
    principal: &Principal,
    op: WriteOp,
) -> Result<WriteReply, ApiError> {
    Ok(state
        .repo
        .send(Write::new(op, crate::domain::event::Actor::from(principal)))
        .await??)
}

/// 201 with `Location` for a created resource under `collection`.
pub fn created(collection: &str, reply: WriteReply) -> Result<HttpResponse, ApiError> {
    let id = match &reply {
        WriteReply::Customer(c) => Some(c.id.to_string()),
        WriteReply::Order(o) => Some(o.id.to_string()),
        // A replay is rare: its id is read back from the stored body.
        WriteReply::Replay(StoredReply { body, .. }) => {
            serde_json::from_str::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v.get("id").and_then(|id| id.as_str()).map(str::to_string))
        }
        _ => None,
    };
    let StoredReply { status, body } = render_created(&reply).map_err(ApiError::Internal)?;
    let status = StatusCode::from_u16(status).map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut response = HttpResponse::build(status);
    if let Some(id) = id.filter(|_| status == StatusCode::CREATED) {
        response.insert_header((header::LOCATION, format!("{collection}/{id}")));
    }
    Ok(response.content_type("application/json").body(body))
}

/// The response to a create: 201 and the resource as JSON. `created` answers it, and an
/// `Idempotency-Key` keeps it (`IdemKey::render`) to replay byte for byte.
fn render_created(reply: &WriteReply) -> Result<StoredReply, String> {
    let body = match reply {
        WriteReply::Customer(c) => serde_json::to_string(c),
        WriteReply::Order(o) => serde_json::to_string(o),
        WriteReply::Replay(stored) => return Ok(stored.clone()),
        _ => return Err("a create answered with something other than a resource".into()),
    };
    Ok(StoredReply {
        status: StatusCode::CREATED.as_u16(),
        body: body.map_err(|e| e.to_string())?,
    })
}

pub fn reply(reply: WriteReply) -> Result<HttpResponse, ApiError> {
    reply_with(StatusCode::OK, reply)
}

pub fn reply_with(status: StatusCode, reply: WriteReply) -> Result<HttpResponse, ApiError> {
    if matches!(reply, WriteReply::Deleted | WriteReply::Done) {
        return Ok(HttpResponse::NoContent().finish());
    }
    let (status, body) = body_of(status, reply)?;
    Ok(HttpResponse::build(status)
        .content_type("application/json")
        .body(body))
}

fn body_of(status: StatusCode, reply: WriteReply) -> Result<(StatusCode, String), ApiError> {
    let json =
        |r: Result<String, serde_json::Error>| r.map_err(|e| ApiError::Internal(e.to_string()));
    Ok(match reply {
        WriteReply::Customer(c) => (status, json(serde_json::to_string(&c))?),
        WriteReply::Order(o) => (status, json(serde_json::to_string(&o))?),
        WriteReply::Notification(n) => (status, json(serde_json::to_string(&n))?),
        WriteReply::Deleted
        | WriteReply::Done
        | WriteReply::Claimed(_)
        | WriteReply::Recorded(_) => (StatusCode::NO_CONTENT, String::new()),
        WriteReply::Replay(StoredReply { status, body }) => (
            StatusCode::from_u16(status).map_err(|e| ApiError::Internal(e.to_string()))?,
            body,
        ),
    })
}

/// The request's `Idempotency-Key`, bound to the principal, the route and the body.
pub fn idempotency_key(
    req: &HttpRequest,
    principal: &Principal,
    route: &'static str,
    body: &JsonObject,
) -> Result<Option<IdemKey>, ApiError> {
    let Some(value) = req.headers().get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::bad_param(
                "Idempotency-Key",
                "must be 1 to 255 visible ASCII characters",
            )
        })?;
    Ok(Some(IdemKey {
        principal: principal.subject.clone(),
        route,
        key: key.to_string(),
        request_hash: body.hash(),
        render: render_created,
    }))
}

/// The request's id: `X-Request-Id` when the client sent a sane one, else a new one.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Gives each request an id and a span, echoes the id, and logs one line per request.
pub async fn request_span(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| (1..=200).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        path = %req.path(),
    );
    let started = Instant::now();
    let mut response = next.call(req).instrument(span.clone()).await?;
    let status = response.status().as_u16();
    let route = response
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".into());
    let latency = started.elapsed();
    crate::metrics::http_request(response.request().method(), &route, status, latency);
    let latency_ms = latency.as_secs_f64() * 1000.0;
    // Who made the request (never the credential): the subject, once authenticated.
    {
        let extensions = response.request().extensions();
        let subject = extensions
            .get::<Principal>()
            .map_or("-", |p| p.subject.as_str());
        span.in_scope(|| tracing::info!(%route, status, latency_ms, subject, "request finished"));
    }
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(X_REQUEST_ID, value);
    }
    Ok(response)
}
