//! Browser-facing protections on every response: a Content-Security-Policy for a dashboard
//! served from this origin with no inline scripts, no sniffing, no framing, no referrer; and
//! CORS closed unless `http.cors_allowed_origins` lists an origin.

use actix_cors::Cors;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::middleware::Next;

pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
    form-action 'self'";

/// Swagger UI sets `style` attributes from script (React), so /docs allows inline styles;
/// its scripts, the initializer included, are files, so scripts stay 'self' only.
pub const DOCS_CSP: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; \
    frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn csp_for(path: &str) -> &'static str {
    if path == super::openapi::DOCS || path.starts_with("/docs/") {
        DOCS_CSP
    } else {
        CSP
    }
}

/// Adds the security headers to every response, errors included.
pub async fn headers(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let csp = csp_for(req.path());
    let mut response = next.call(req).await?;
    let headers = response.headers_mut();
    let fixed = [
        (header::CONTENT_SECURITY_POLICY, csp),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
    Ok(response)
}

/// CORS for the configured origins only; with none, no cross-origin request is allowed
/// (same-origin requests, which carry no CORS headers or a matching `Origin`, are unaffected).
pub fn cors(allowed_origins: &[String]) -> Cors {
    let mut cors = Cors::default()
        .allowed_methods(["GET", "POST", "PATCH", "DELETE"])
        .allowed_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::ACCEPT,
            HeaderName::from_static("idempotency-key"),
            HeaderName::from_static("x-request-id"),
        ])
        .expose_headers([
            header::LOCATION,
            header::RETRY_AFTER,
            HeaderName::from_static("x-request-id"),
        ])
        .max_age(3600)
        // Refusing here would also break same-origin pages whose Origin is not listed (the
        // dashboard itself); without the allow headers the browser refuses cross-origin reads.
        .block_on_origin_mismatch(false);
    for origin in allowed_origins {
        cors = cors.allowed_origin(origin);
    }
    cors
}
