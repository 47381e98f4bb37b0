//! Liveness and readiness for load balancers; neither needs authentication.

use super::AppState;
use super::problem::ApiError;
use crate::store::repository::Ping;
use actix_web::{HttpResponse, web};
use std::time::Duration;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state
        .repo
        .send(Ping {
            timeout: Duration::from_secs(2),
        })
        .await??;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "status": "ready", "database": "ok" })))
}
