//! SMS to customers: the `SmsProvider`s (Africa's Talking, or the log) and the
//! `SmsDispatcher` actor that drains the durable outbox (the `notifications` table), one
//! instance of the deployment at a time (the sender `lease`).

pub mod africastalking;
pub mod dispatcher;
pub mod lease;
pub mod log;

pub use dispatcher::{DispatchConfig, Drain, SmsDispatcher, Stop};

use crate::config::{Sms, SmsProviderKind};
use futures_util::future::BoxFuture;
use std::sync::Arc;

/// The provider took the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub message_id: String,
    /// As the provider states it, e.g. `KES 0.8000`.
    pub cost: Option<String>,
}

/// Why a message was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Worth another attempt later: timeouts, connection errors, 5xx, 429.
    #[error("{0}")]
    Retry(String),
    /// Another attempt would fail the same way: a bad number, a blacklist, bad credentials.
    #[error("{0}")]
    Permanent(String),
}

/// Something that sends one SMS to one E.164 number.
pub trait SmsProvider: Send + Sync {
    fn name(&self) -> &'static str;
    fn send<'a>(
        &'a self,
        to: &'a str,
        message: &'a str,
    ) -> BoxFuture<'a, Result<Accepted, SendError>>;
}

/// The provider `sms.provider` names.
pub fn provider_from(settings: &Sms) -> Result<Arc<dyn SmsProvider>, String> {
    Ok(match settings.provider {
        SmsProviderKind::Log => Arc::new(log::LogProvider),
        SmsProviderKind::Africastalking => Arc::new(africastalking::AfricasTalking::new(
            &settings.africastalking,
            std::time::Duration::from_secs(settings.request_timeout_secs),
        )?),
    })
}
