//! Callbacks from providers, outside user authentication.
//!
//! Africa's Talking signs nothing: the delivery-report URL carries a shared secret
//! (`?secret=`, `sms.africastalking.webhook_secret`). With no secret configured every report
//! is refused, so an unprotected endpoint can never be left open by accident.

use super::AppState;
use super::problem::ApiError;
use crate::domain::FieldErrors;
use crate::store::StoreError;
use crate::store::ops::{DeliveryOutcome, WriteOp};
use actix_web::{HttpRequest, HttpResponse, web};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use subtle::ConstantTimeEq;

/// The configured secret, kept as a digest so that comparing it takes the same time
/// whatever the length of the guess.
pub struct DeliveryWebhook {
    secret: Option<[u8; 32]>,
}

impl DeliveryWebhook {
    pub fn new(secret: &str) -> Self {
        Self {
            secret: (!secret.is_empty()).then(|| Sha256::digest(secret.as_bytes()).into()),
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
                .map(|r| format!("{status}: {}", r.trim()))
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
        (status = 422, description = "A report without `id` or `status`", body = super::openapi::Problem, content_type = super::openapi::PROBLEM_JSON),
        (status = 503, description = "The database is unavailable", body = super::openapi::Problem, content_type = super::openapi::PROBLEM_JSON),
    ))]
pub async fn africastalking_delivery(
    state: web::Data<AppState>,
    webhook: web::Data<DeliveryWebhook>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let query: HashMap<String, String> = url::form_urlencoded::parse(req.query_string().as_bytes())
        .into_owned()
        .collect();
    if !webhook.admits(query.get("secret").map(String::as_str)) {
        return Err(ApiError::Unauthorized(
            "a valid ?secret= is required (and sms.africastalking.webhook_secret must be set)"
                .into(),
        ));
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let field = |name: &str| form.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
    let mut errors = FieldErrors::default();
    let id = field("id");
    let status = field("status");
    if id.is_none() {
        errors.add("id", "is required");
    }
    if status.is_none() {
        errors.add("status", "is required");
    }
    let (Some(id), Some(status)) = (id, status) else {
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
    match state.repo.send(crate::store::repository::Write(op)).await? {
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
        let w = DeliveryWebhook::new("s3cret");
        assert!(w.admits(Some("s3cret")));
        assert!(!w.admits(Some("s3cre")));
        assert!(!w.admits(Some("")));
        assert!(!w.admits(None));
        let off = DeliveryWebhook::new("");
        assert!(!off.admits(Some("")));
        assert!(!off.admits(None));
    }
}
