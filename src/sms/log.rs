//! The default provider: writes each message to the log and calls it sent, so that a fresh
//! checkout works end to end without an SMS account.

use super::{Accepted, SendError, SmsProvider};
use crate::domain::phone::mask;
use futures_util::future::BoxFuture;

pub struct LogProvider;

impl SmsProvider for LogProvider {
    fn name(&self) -> &'static str {
        "log"
    }

    fn send<'a>(
        &'a self,
        to: &'a str,
        message: &'a str,
    ) -> BoxFuture<'a, Result<Accepted, SendError>> {
        Box::pin(async move {
            let message_id = format!("log-{}", uuid::Uuid::now_v7());
            tracing::info!(to = %mask(to), %message_id, %message, "SMS (log provider, not sent)");
            Ok(Accepted {
                message_id,
                cost: None,
            })
        })
    }
}
