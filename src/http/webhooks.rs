//! Callbacks from providers, outside user authentication.
//!
//! Africa's Talking signs nothing: the delivery-report URL carries a shared secret
//! (`?secret=`, `sms.africastalking.webhook_secret`). With no secret configured every report
//! is refused, so an unprotected endpoint can never be left open by accident. The secret is
//! checked before a byte of the body is read, wrong guesses are held back per address, and
//! what is stored from a report is bounded.

use super::AppState;
use super::problem::ApiError;
use crate::auth::failures::FailureLimiter;
use crate::domain::FieldErrors;
use crate::domain::event::Actor;
use crate::store::StoreError;
use crate::store::ops::{DeliveryOutcome, WriteOp};
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use subtle::ConstantTimeEq;

/// The configured secret, kept as a digest so that comparing it takes the same time
/// whatever the length of the guess.
pub struct DeliveryWebhook {
    secret: Option<[u8; 32]>,
    /// Wrong secrets per client address.
    guesses: FailureLimiter,
}

/// A delivery report is a handful of short fields.
const MAX_REPORT_BODY: usize = 16 * 1024;
/// The longest provider message id accepted (Africa's Talking's are about 40 characters).
const MAX_ID: usize = 200;
/// The longest failure reason kept from a report.
const MAX_REASON: usize = 200;

impl DeliveryWebhook {
    /// `limit_guesses`: hold back addresses that keep sending wrong secrets (off with
    /// `http.rate_limit.enabled = false`).
    pub fn new(secret: &str, limit_guesses: bool) -> Self {
        Self {
            secret: (!secret.is_empty()).then(|| Sha256::digest(secret.as_bytes()).into()),
            guesses: FailureLimiter::new(limit_guesses),
        }
    }

    fn admits(&self, given: Option<&str>) -> bool {
        match (&self.secret, given) {
            (Some(expected), Some(given)) => {
                let given: [u8; 32] = Sha256::digest(given.as_bytes()).into();
                expected.ct_eq(&given).into()
            }
            _ => false,
        }
    }
}

/// A delivery report as Africa's Talking posts it (form-urlencoded); documentation only,
/// the handler reads the form field by field.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct DeliveryReportForm {
    /// The provider's message id (`messageId` of the send).
    id: String,
    /// Success, Failed, Rejected, AbsentSubscriber, Expired, Sent, Submitted or Buffered.
    status: String,
    #[schema(rename = "phoneNumber")]
    phone_number: Option<String>,
    #[schema(rename = "networkCode")]
    network_code: Option<String>,
    #[schema(rename = "failureReason")]
    failure_reason: Option<String>,
    #[schema(rename = "retryCount")]
    retry_count: Option<String>,
}

/// What a delivery report's `status` means for the message.
#[derive(Debug, PartialEq, Eq)]
enum Report {
    Final(DeliveryOutcome),
    /// Still on its way (`Sent`, `Submitted`, `Buffered`): nothing changes.
    Pending,
}

fn report(status: &str, failure_reason: Option<&str>) -> Option<Report> {
    Some(match status {
        "Success" => Report::Final(DeliveryOutcome::Delivered),
        "Failed" | "Rejected" | "AbsentSubscriber" | "Expired" => {
            let reason = failure_reason
                .filter(|r| !r.trim().is_empty())
                .map(|r| {
                    let r: String = r.trim().chars().filter(|c| !c.is_control()).collect();
                    let mut kept: String = r.chars().take(MAX_REASON).collect();
                    if kept.len() < r.len() {
                        kept.push('…');
                    }
                    format!("{status}: {kept}")
                })
                .unwrap_or_else(|| status.to_string());
            Report::Final(DeliveryOutcome::Failed { reason })
        }
        "Sent" | "Submitted" | "Buffered" => Report::Pending,
        _ => return None,
    })
}

/// Africa's Talking delivery-report callback (not behind user authentication).
#[utoipa::path(post, path = "/api/v1/webhooks/africastalking/delivery", tag = "sms",
    security(()),
    params(("secret" = String, Query, description = "The shared secret `sms.africastalking.webhook_secret`")),
    request_body(content = DeliveryReportForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Report applied, or ignored (unknown message id or status)"),
        (status = 401, description = "Wrong or missing secret", body = super::openapi::Problem, content_type = super::openapi::PROBLEM_JSON),
        (status = 413, description = "A body over 16 KiB", body = super::openapi::Problem, content_type = super::openapi::PROBLEM_JSON),
        (status = 422, description = "A report without `id` or `status`, or with a bad value", body = super::openapi::Problem, content_type = super::openapi::PROBLEM_JSON),
        (status = 429, description = "Too many wrong secrets from this address: retry after `Retry-After` seconds", body = super::openapi::Problem, content_type = super::openapi::PROBLEM_JSON),
        (status = 503, description = "The database is unavailable", body = super::openapi::Problem, content_type = super::openapi::PROBLEM_JSON),
    ))]
pub async fn africastalking_delivery(
    state: web::Data<AppState>,
    webhook: web::Data<DeliveryWebhook>,
    req: HttpRequest,
    mut payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let address = super::security::client_key(&req);
    webhook
        .guesses
        .check(&address)
        .map_err(|secs| ApiError::RateLimited {
            retry_after_secs: secs,
        })?;
    let query: HashMap<String, String> = url::form_urlencoded::parse(req.query_string().as_bytes())
        .into_owned()
        .collect();
    if !webhook.admits(query.get("secret").map(String::as_str)) {
        tracing::info!("delivery report with a wrong or missing secret refused");
        webhook
            .guesses
            .failed(&address)
            .map_err(|secs| ApiError::RateLimited {
                retry_after_secs: secs,
            })?;
        return Err(ApiError::Unauthorized(
            "a valid ?secret= is required (and sms.africastalking.webhook_secret must be set)"
                .into(),
        ));
    }
    // Read only once the secret is known to be right.
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(super::body::read_error)?;
        if body.len() + chunk.len() > MAX_REPORT_BODY {
            return Err(ApiError::PayloadTooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let mut errors = FieldErrors::default();
    for (name, value) in &form {
        if value.contains('\0') {
            errors.add(name.clone(), super::body::NUL_REFUSED);
        }
    }
    let field = |name: &str| form.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
    let id = field("id");
    let status = field("status");
    if id.is_none() {
        errors.add("id", "is required");
    }
    if id.is_some_and(|id| id.chars().count() > MAX_ID) {
        errors.add("id", format!("must be at most {MAX_ID} characters"));
    }
    if status.is_none() {
        errors.add("status", "is required");
    }
    let (Some(id), Some(status), true) = (id, status, errors.is_empty()) else {
        return Err(ApiError::Validation(errors));
    };
    let Some(report) = report(status, field("failureReason")) else {
        // Acknowledged, or Africa's Talking keeps retrying a status we cannot use.
        tracing::warn!(provider_message_id = %id, %status, "delivery report with an unknown status ignored");
        return Ok(HttpResponse::Ok().finish());
    };
    let Report::Final(outcome) = report else {
        return Ok(HttpResponse::Ok().finish());
    };
    let op = WriteOp::DeliveryReport {
        provider_message_id: id.to_string(),
        outcome,
    };
    let write = crate::store::repository::Write::new(op, Actor::africastalking());
    match state.repo.send(write).await? {
        Ok(_) => Ok(HttpResponse::Ok().finish()),
        Err(StoreError::NotFound(_)) => {
            tracing::info!(provider_message_id = %id, %status, "delivery report for an unknown message ignored");
            Ok(HttpResponse::Ok().finish())
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_outcomes() {
        assert_eq!(
            report("Success", None),
            Some(Report::Final(DeliveryOutcome::Delivered))
        );
        assert_eq!(
            report("Rejected", Some("UserInBlacklist")),
            Some(Report::Final(DeliveryOutcome::Failed {
                reason: "Rejected: UserInBlacklist".into()
            }))
        );
        assert_eq!(
            report("Expired", None),
            Some(Report::Final(DeliveryOutcome::Failed {
                reason: "Expired".into()
            }))
        );
        for pending in ["Sent", "Submitted", "Buffered"] {
            assert_eq!(report(pending, None), Some(Report::Pending));
        }
        assert_eq!(report("Teleported", None), None);
    }

    #[test]
    fn secrets_compare_exactly_and_empty_refuses() {
        let w = DeliveryWebhook::new("s3cret", true);
        assert!(w.admits(Some("s3cret")));
        assert!(!w.admits(Some("s3cre")));
        assert!(!w.admits(Some("")));
        assert!(!w.admits(None));
        let off = DeliveryWebhook::new("", true);
        assert!(!off.admits(Some("")));
        assert!(!off.admits(None));
    }
}
