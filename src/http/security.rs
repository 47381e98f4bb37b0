//! Browser-facing protections on every response: a Content-Security-Policy for a dashboard
//! served from this origin with no inline scripts, no sniffing, no framing, no referrer;
//! `Cache-Control: no-store` on the API and auth answers (customer data must not sit in shared
//! caches); HSTS over https; CORS closed unless `http.cors_allowed_origins` lists an origin.
//! And what a request says about its client, believing proxy headers only from
//! `http.trusted_proxies`.

use actix_cors::Cors;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpRequest, web};
use ipnet::IpNet;
use std::net::IpAddr;

/// `http.trusted_proxies`: the peers whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn parse(list: &[String]) -> Result<Self, String> {
        list.iter()
            .map(|p| crate::config::parse_proxy(p))
            .collect::<Result<_, _>>()
            .map(Self)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// IPv4-mapped IPv6 peers (`::ffff:10.0.0.1`) are their IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Where a request came from, as far as it can be believed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// The client's address: the peer, or behind trusted proxies the first address in
    /// `X-Forwarded-For` (from the right) that is not one of them.
    pub ip: Option<IpAddr>,
    /// `https` or `http` as the client used it.
    pub scheme: String,
    /// The host the client asked for.
    pub host: String,
}

/// The client of `req`. Forwarding headers (`Forwarded`, `X-Forwarded-For/-Proto/-Host`)
/// count only when the peer is a trusted proxy: anyone else could send them to pick their
/// rate-limit bucket, pass the Origin check or get Secure cookies over plain http.
pub fn client_info(req: &HttpRequest) -> ClientInfo {
    let peer = req.peer_addr().map(|a| canonical(a.ip()));
    let trusted = req
        .app_data::<web::Data<TrustedProxies>>()
        .map(|t| t.get_ref().clone())
        .unwrap_or_default();
    let direct_scheme = if req.app_config().secure() {
        "https"
    } else {
        "http"
    };
    let direct_host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| req.app_config().host().to_string());
    if !peer.is_some_and(|p| trusted.trusts(p)) {
        return ClientInfo {
            ip: peer,
            scheme: direct_scheme.into(),
            host: direct_host,
        };
    }
    let info = req.connection_info();
    let forwarded_for: Vec<IpAddr> = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .map(canonical)
        .collect();
    let ip = forwarded_for
        .iter()
        .rev()
        .find(|ip| !trusted.trusts(**ip))
        .or(forwarded_for.first())
        .copied()
        .or(peer);
    ClientInfo {
        ip,
        scheme: info.scheme().to_ascii_lowercase(),
        host: info.host().to_string(),
    }
}

/// The rate-limit key of an anonymous request.
pub fn client_key(req: &HttpRequest) -> String {
    format!(
        "ip:{}",
        client_info(req)
            .ip
            .map(|ip| ip.to_string())
            .unwrap_or_default()
    )
}

/// Whether the client reached us over https (directly or through a trusted proxy).
pub fn is_https(req: &HttpRequest) -> bool {
    client_info(req).scheme == "https"
}

/// One year, the usual HSTS lifetime; subdomains are left to the operator.
const HSTS: &str = "max-age=31536000";

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
    let path = req.path();
    let private = path == "/api/v1"
        || path.starts_with("/api/v1/")
        || path == "/auth"
        || path.starts_with("/auth/");
    let https = is_https(req.request());
    let mut response = next.call(req).await?;
    let headers = response.headers_mut();
    if private {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if https {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static(HSTS),
        );
    }
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
