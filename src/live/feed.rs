//! The feed: how the hub learns that the deployment's event log has grown.
//!
//! The events table is the log; a notification is only the doorbell. Every committed batch
//! of any instance sends one `pg_notify` (payload `first-last/tag`, in its transaction: see
//! `store::batch`), which a listener on a connection of its own turns into `LogAdvanced`.
//! Notifications with this instance's own tag are skipped: the writer hands those events
//! to the hub directly, and reading them back would only race it.
//! The latest seq is also polled every second, so that a lost notification, or a
//! listener connection that went half-open, only delays events: the hub then reads what it
//! has not seen from the table, in order. On SQLite (one process) the poll is all there is,
//! and the local writer's commits reach the hub directly.

use super::hub::Hub;
use super::protocol::LogAdvanced;
use crate::store::batch::EVENTS_CHANNEL;
use crate::store::reads;
use actix::Addr;
use sea_orm::DatabaseConnection;
use sea_orm::sqlx::postgres::PgListener;
use std::time::Duration;
use tokio::sync::watch;

/// How often the latest seq is read, whatever the notifications say.
pub const POLL_EVERY: Duration = Duration::from_secs(1);
/// The wait before connecting the listener again after a failure.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// Starts the poll and, on PostgreSQL (`listen`), the listener, on the current arbiter;
/// both end when `stop` turns true (the hub stopped), inside the runtime, so that their
/// connections close cleanly.
pub fn start(
    hub: Addr<Hub>,
    db: DatabaseConnection,
    listen: Option<Listen>,
    stop: watch::Receiver<bool>,
) {
    actix::spawn(until_stopped(stop.clone(), poll(hub.clone(), db)));
    if let Some(listen) = listen {
        actix::spawn(until_stopped(stop, listen.run(hub)));
    }
}

/// The listener's connection, and the tag of this instance's own notifications.
pub struct Listen {
    pub url: String,
    pub own_tag: String,
}

/// Runs `task` until `stop` turns true (or its sender is gone); then drops it here.
async fn until_stopped(mut stop: watch::Receiver<bool>, task: impl Future<Output = ()>) {
    tokio::select! {
        () = task => {}
        _ = stop.wait_for(|stopped| *stopped) => {}
    }
}

async fn poll(hub: Addr<Hub>, db: DatabaseConnection) {
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while hub.connected() {
        tick.tick().await;
        match reads::latest_seq(&db).await {
            Ok(latest) => hub.do_send(LogAdvanced { latest }),
            // Readiness reports a database that does not answer; the poll just goes on.
            Err(e) => tracing::debug!(error = %e, "live feed: cannot read the latest seq"),
        }
    }
}

/// The last seq and the tag of a notification's `first-last/tag` payload.
fn parse(payload: &str) -> Option<(i64, &str)> {
    let (range, tag) = payload.split_once('/')?;
    Some((range.rsplit('-').next()?.parse().ok()?, tag))
}

impl Listen {
    async fn run(self, hub: Addr<Hub>) {
        let Listen { url, own_tag } = self;
        let mut connected_once = false;
        while hub.connected() {
            let mut listener = match PgListener::connect(&url).await {
                Ok(listener) => listener,
                Err(e) => {
                    tracing::warn!(error = %e, "live feed: cannot connect the listener; polling meanwhile");
                    tokio::time::sleep(RECONNECT_AFTER).await;
                    continue;
                }
            };
            if let Err(e) = listener.listen(EVENTS_CHANNEL).await {
                tracing::warn!(error = %e, "live feed: LISTEN failed; polling meanwhile");
                tokio::time::sleep(RECONNECT_AFTER).await;
                continue;
            }
            if connected_once {
                crate::metrics::live_listener_reconnected();
            }
            connected_once = true;
            tracing::debug!("live feed: listening for commits");
            loop {
                match listener.try_recv().await {
                    Ok(Some(notification)) => match parse(notification.payload()) {
                        Some((_, tag)) if tag == own_tag => {}
                        Some((latest, _)) => hub.do_send(LogAdvanced { latest }),
                        None => tracing::warn!(
                            payload = notification.payload(),
                            "live feed: a notification without a seq"
                        ),
                    },
                    // The connection was lost: notifications may have been missed. The poll
                    // covers them; the next `try_recv` connects again.
                    Ok(None) => {
                        crate::metrics::live_listener_reconnected();
                        tracing::info!("live feed: listener connection lost; reconnecting");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "live feed: listener failed; reconnecting");
                        tokio::time::sleep(RECONNECT_AFTER).await;
                        break;
                    }
                }
                if !hub.connected() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn payloads_name_the_last_seq_and_the_instance() {
        assert_eq!(super::parse("41-57/ab12"), Some((57, "ab12")));
        assert_eq!(super::parse("9-9/x"), Some((9, "x")));
        assert_eq!(super::parse("41-57"), None);
        assert_eq!(super::parse("x/y"), None);
    }
}
