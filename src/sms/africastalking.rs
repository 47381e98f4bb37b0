//! Africa's Talking: `POST {base_url}/version1/messaging` (form-urlencoded `username`, `to`,
//! `message`, optional `from`; `apiKey` header). Success is HTTP 201 with
//! `SMSMessageData.Recipients[]`; each recipient's `statusCode` (not its `status` text)
//! says whether that message was taken.

use super::{Accepted, SendError, SmsProvider};
use crate::config::AfricasTalking as Settings;
use crate::domain::phone::mask;
use futures_util::future::BoxFuture;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, HeaderValue};
use serde::Deserialize;
use std::time::Duration;

pub struct AfricasTalking {
    client: reqwest::Client,
    url: String,
    username: String,
    api_key: HeaderValue,
    sender_id: String,
}

impl AfricasTalking {
    pub fn new(settings: &Settings, timeout: Duration) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let mut api_key = HeaderValue::from_str(&settings.api_key).map_err(|_| {
            "sms.africastalking.api_key: must be visible ASCII characters".to_string()
        })?;
        api_key.set_sensitive(true);
        Ok(Self {
            client,
            url: format!(
                "{}/version1/messaging",
                settings.base_url.trim_end_matches('/')
            ),
            username: settings.username.clone(),
            api_key,
            sender_id: settings.sender_id.clone(),
        })
    }

    async fn post(&self, to: &str, message: &str) -> Result<Accepted, SendError> {
        let mut form = vec![
            ("username", self.username.as_str()),
            ("to", to),
            ("message", message),
        ];
        if !self.sender_id.is_empty() {
            form.push(("from", self.sender_id.as_str()));
        }
        let response = self
            .client
            .post(&self.url)
            .header("apiKey", self.api_key.clone())
            .header(ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| SendError::Retry(describe(e)))?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED {
            // Every message would fail the same way: fail this one, loudly, and do not retry.
            tracing::error!(
                url = %self.url,
                username = %self.username,
                "Africa's Talking rejected the credentials (HTTP 401): check \
                 sms.africastalking.username and sms.africastalking.api_key"
            );
            return Err(SendError::Permanent(
                "Africa's Talking rejected the API key or username (HTTP 401)".into(),
            ));
        }
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            return Err(SendError::Retry(format!(
                "Africa's Talking answered {status}"
            )));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| SendError::Retry(describe(e)))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body);
            let text: String = text.trim().chars().take(200).collect();
            return Err(SendError::Permanent(format!(
                "Africa's Talking answered {status}: {text}"
            )));
        }
        let parsed: Response = serde_json::from_slice(&body).map_err(|e| {
            // The message may have been taken: failing it is better than sending it twice.
            tracing::error!(error = %e, "unreadable answer from Africa's Talking");
            SendError::Permanent(format!("unreadable answer from Africa's Talking: {e}"))
        })?;
        let data = parsed.data;
        let recipient = data
            .recipients
            .iter()
            .find(|r| r.number == to)
            .or_else(|| data.recipients.first())
            .ok_or_else(|| {
                SendError::Permanent(format!(
                    "Africa's Talking took no recipient: {}",
                    data.message
                ))
            })?;
        match classify(recipient.status_code) {
            Class::Accepted => Ok(Accepted {
                message_id: recipient
                    .message_id
                    .clone()
                    .filter(|id| !id.is_empty() && id != "None")
                    .ok_or_else(|| {
                        SendError::Permanent("Africa's Talking gave no messageId".into())
                    })?,
                cost: recipient.cost.clone().filter(|c| !c.is_empty()),
            }),
            Class::Retry(name) => Err(SendError::Retry(reason(name, recipient))),
            Class::Permanent(name) => Err(SendError::Permanent(reason(name, recipient))),
        }
    }
}

impl SmsProvider for AfricasTalking {
    fn name(&self) -> &'static str {
        "africastalking"
    }

    fn send<'a>(
        &'a self,
        to: &'a str,
        message: &'a str,
    ) -> BoxFuture<'a, Result<Accepted, SendError>> {
        Box::pin(async move {
            let result = self.post(to, message).await;
            if let Err(e) = &result {
                tracing::warn!(to = %mask(to), error = %e, "Africa's Talking did not take an SMS");
            }
            result
        })
    }
}

fn describe(e: reqwest::Error) -> String {
    if e.is_timeout() {
        "Africa's Talking did not answer in time".into()
    } else if e.is_connect() {
        "cannot connect to Africa's Talking".into()
    } else {
        // Without the URL: it is ours, and the error chain names what went wrong.
        format!("request to Africa's Talking failed: {}", e.without_url())
    }
}

fn reason(name: Option<&str>, r: &Recipient) -> String {
    let name = name.unwrap_or(r.status.as_str());
    format!("{name} (statusCode {})", r.status_code)
}

#[derive(Debug, PartialEq, Eq)]
enum Class {
    Accepted,
    Retry(Option<&'static str>),
    Permanent(Option<&'static str>),
}

/// A recipient's `statusCode`, as Africa's Talking documents them.
fn classify(code: i64) -> Class {
    match code {
        100..=102 => Class::Accepted,
        500 => Class::Retry(Some("InternalServerError")),
        501 => Class::Retry(Some("GatewayError")),
        401 => Class::Permanent(Some("RiskHold")),
        402 => Class::Permanent(Some("InvalidSenderId")),
        403 => Class::Permanent(Some("InvalidPhoneNumber")),
        404 => Class::Permanent(Some("UnsupportedNumberType")),
        405 => Class::Permanent(Some("InsufficientBalance")),
        406 => Class::Permanent(Some("UserInBlacklist")),
        407 => Class::Permanent(Some("CouldNotRoute")),
        409 => Class::Permanent(Some("DoNotDisturbRejection")),
        502 => Class::Permanent(Some("RejectedByGateway")),
        // Undocumented codes: a server-side one may pass, anything else will not.
        503..=599 => Class::Retry(None),
        _ => Class::Permanent(None),
    }
}

#[derive(Debug, Deserialize)]
struct Response {
    #[serde(rename = "SMSMessageData")]
    data: MessageData,
}

#[derive(Debug, Deserialize)]
struct MessageData {
    #[serde(rename = "Message", default)]
    message: String,
    #[serde(rename = "Recipients", default)]
    recipients: Vec<Recipient>,
}

#[derive(Debug, Deserialize)]
struct Recipient {
    #[serde(rename = "statusCode")]
    status_code: i64,
    #[serde(default)]
    status: String,
    #[serde(rename = "messageId", default)]
    message_id: Option<String>,
    #[serde(default)]
    cost: Option<String>,
    #[serde(default)]
    number: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_sort_into_accepted_retry_and_permanent() {
        for code in [100, 101, 102] {
            assert_eq!(classify(code), Class::Accepted);
        }
        for code in [500, 501, 503] {
            assert!(matches!(classify(code), Class::Retry(_)), "{code}");
        }
        for code in [401, 402, 403, 404, 405, 406, 407, 409, 502, 408, 200] {
            assert!(matches!(classify(code), Class::Permanent(_)), "{code}");
        }
        assert_eq!(classify(403), Class::Permanent(Some("InvalidPhoneNumber")));
    }

    #[test]
    fn parses_the_documented_answer() {
        let body = r#"{"SMSMessageData":{"Message":"Sent to 1/1 Total Cost: KES 0.8000",
            "Recipients":[{"statusCode":101,"number":"+254711082300","status":"Success",
            "cost":"KES 0.8000","messageId":"ATPid_SampleTxnId123"}]}}"#;
        let r: Response = serde_json::from_str(body).unwrap();
        let rec = &r.data.recipients[0];
        assert_eq!(rec.status_code, 101);
        assert_eq!(rec.message_id.as_deref(), Some("ATPid_SampleTxnId123"));
        assert_eq!(rec.cost.as_deref(), Some("KES 0.8000"));
        assert_eq!(reason(None, rec), "Success (statusCode 101)");
    }
}
