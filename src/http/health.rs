//! Liveness, readiness and metrics for load balancers and scrapers; none needs authentication.

use super::AppState;
use super::problem::ApiError;
use crate::store::reader::Ping;
use actix_web::{HttpResponse, web};
use serde::Serialize;
use std::time::Duration;
use utoipa::ToSchema;

/// How long readiness waits for the database before answering 503.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Serialize, ToSchema)]
#[schema(example = json!({"status": "ok"}))]
pub struct Health {
    #[schema(example = "ok")]
    pub status: String,
}

#[derive(Serialize, ToSchema)]
#[schema(example = json!({"status": "ready", "database": "ok"}))]
pub struct Readiness {
    #[schema(example = "ready")]
    pub status: String,
    #[schema(example = "ok")]
    pub database: String,
}

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    security(()),
    responses((status = 200, description = "The process runs", body = Health))
)]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health {
        status: "ok".into(),
    })
}

/// Readiness: the database answers within 2 seconds.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    security(()),
    responses(
        (status = 200, description = "The database answers", body = Readiness),
        (status = 503, description = "The database does not answer in time, or the live feed lags it by more than `live.max_lag_secs`", body = super::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn readyz(
    state: web::Data<AppState>,
    live: web::Data<crate::live::Live>,
) -> Result<HttpResponse, ApiError> {
    state
        .reader
        .send(Ping {
            timeout: READY_TIMEOUT,
        })
        .await??;
    if let Some(lag) = live.lagging() {
        return Err(ApiError::Unavailable(format!(
            "the live feed is {:.1} s behind the database's event log",
            lag.as_secs_f64()
        )));
    }
    Ok(HttpResponse::Ok().json(Readiness {
        status: "ready".into(),
        database: "ok".into(),
    }))
}

/// Prometheus metrics: HTTP requests by route and status with a latency histogram, orders
/// created, events published, SMS by status, SMS queue depth, WebSocket connections.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    security(()),
    responses((status = 200, description = "Prometheus text exposition format", content_type = "text/plain", body = String))
)]
pub async fn metrics() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(crate::metrics::render())
}
