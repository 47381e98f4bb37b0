//! The Repository actor: the only owner of the database connection.
//!
//! Reads run concurrently on the pool. Writes queue in the actor and run one batch at a
//! time, each batch in one transaction (group commit): under load a batch holds everything
//! that arrived while the previous one was committing. After each commit the listeners (the
//! live hub, the SMS dispatcher) get a `Committed` in commit order.

use super::error::StoreError;
use super::reads::{self, NotificationFilter, OrderFilter, PageRequest};
use super::views::{CustomerView, NotificationView, OrderView, Page};
use super::writes::{self, Committed, Pending, WriteConfig, WriteOp, WriteReply};
use crate::domain::event::Event;
use crate::domain::time::Timestamp;
use actix::prelude::*;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use uuid::Uuid;

/// The most operations one transaction takes.
const MAX_BATCH: usize = 256;
/// A mailbox that never pushes back. actix computes `MAX_CAPACITY - capacity` whenever an
/// `Addr` is cloned, so `usize::MAX` overflows (a panic in debug builds); this is the
/// largest capacity actix accepts.
pub const UNBOUNDED_MAILBOX: usize = usize::MAX >> 2;
/// Idempotency keys are kept at least this long.
const IDEMPOTENCY_TTL_MS: i64 = 24 * 3600 * 1000;

pub struct Repository {
    db: DatabaseConnection,
    cfg: Arc<WriteConfig>,
    pending: VecDeque<Pending>,
    writing: bool,
    listeners: Vec<Recipient<Committed>>,
}

impl Repository {
    pub fn new(db: DatabaseConnection, cfg: WriteConfig) -> Self {
        Self {
            db,
            cfg: Arc::new(cfg),
            pending: VecDeque::new(),
            writing: false,
            listeners: Vec::new(),
        }
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.writing || self.pending.is_empty() {
            return;
        }
        self.writing = true;
        let n = self.pending.len().min(MAX_BATCH);
        let batch: Vec<Pending> = self.pending.drain(..n).collect();
        let db = self.db.clone();
        let cfg = self.cfg.clone();
        ctx.spawn(
            async move { writes::run_batch(&db, &cfg, batch).await }
                .into_actor(self)
                .map(|committed, act, ctx| {
                    act.writing = false;
                    if let Some(committed) = committed
                        && (!committed.events.is_empty() || !committed.queued.is_empty())
                    {
                        count_published(&committed);
                        for listener in &act.listeners {
                            listener.do_send(committed.clone());
                        }
                    }
                    act.flush(ctx);
                }),
        );
    }
}

fn count_published(committed: &Committed) {
    use crate::domain::event::EventType;
    for kind in EventType::ALL {
        let n = committed.events.iter().filter(|e| e.kind == kind).count() as u64;
        if n > 0 {
            crate::metrics::events_published(kind.as_str(), n);
            if kind == EventType::OrderCreated {
                crate::metrics::orders_created(n);
            }
        }
    }
}

impl Actor for Repository {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // The mailbox must not push back on HTTP handlers; the pending queue is the buffer.
        ctx.set_mailbox_capacity(UNBOUNDED_MAILBOX);
        ctx.run_interval(Duration::from_secs(600), |act, ctx| {
            let db = act.db.clone();
            ctx.spawn(
                async move {
                    let now = Timestamp::now().millis();
                    use super::entities::session as s;
                    if let Err(e) = s::Entity::delete_many()
                        .filter(s::Column::ExpiresAt.lt(now))
                        .exec(&db)
                        .await
                    {
                        tracing::warn!(error = %e, "could not prune expired sessions");
                    }
                    let cutoff = now - IDEMPOTENCY_TTL_MS;
                    use super::entities::idempotency_key as k;
                    match k::Entity::delete_many()
                        .filter(k::Column::CreatedAt.lt(cutoff))
                        .exec(&db)
                        .await
                    {
                        Ok(r) if r.rows_affected > 0 => {
                            tracing::debug!(
                                removed = r.rows_affected,
                                "expired idempotency keys removed"
                            )
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "could not prune idempotency keys"),
                    }
                }
                .into_actor(act),
            );
        });
    }
}

/// Registers a listener for committed batches.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Listen(pub Recipient<Committed>);

impl Handler<Listen> for Repository {
    type Result = ();

    fn handle(&mut self, msg: Listen, _: &mut Self::Context) {
        self.listeners.push(msg.0);
    }
}

/// A change, applied in the next batch.
#[derive(Message)]
#[rtype(result = "Result<WriteReply, StoreError>")]
pub struct Write(pub WriteOp);

impl Handler<Write> for Repository {
    type Result = ResponseFuture<Result<WriteReply, StoreError>>;

    fn handle(&mut self, msg: Write, ctx: &mut Self::Context) -> Self::Result {
        let (reply, answer) = oneshot::channel();
        self.pending.push_back(Pending { op: msg.0, reply });
        self.flush(ctx);
        Box::pin(async move {
            answer
                .await
                .unwrap_or_else(|_| Err(StoreError::Unavailable("the writer stopped".into())))
        })
    }
}

/// A read-only query message, answered concurrently with other reads and with writes.
macro_rules! query {
    ($(#[$doc:meta])* $name:ident { $($field:ident : $ty:ty),* $(,)? } -> $out:ty, |$db:ident, $msg:ident| $body:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name { $(pub $field: $ty),* }

        impl Message for $name {
            type Result = Result<$out, StoreError>;
        }

        impl Handler<$name> for Repository {
            type Result = ResponseFuture<Result<$out, StoreError>>;

            fn handle(&mut self, $msg: $name, _: &mut Self::Context) -> Self::Result {
                let $db = self.db.clone();
                Box::pin(async move { $body })
            }
        }
    };
}

query!(GetCustomer { id: Uuid } -> CustomerView, |db, m| reads::get_customer(&db, m.id).await);
query!(ListCustomers { q: Option<String>, page: PageRequest } -> Page<CustomerView>,
    |db, m| reads::list_customers(&db, m.q.as_deref(), m.page).await);
query!(GetOrder { id: Uuid } -> OrderView, |db, m| reads::get_order(&db, m.id).await);
query!(ListOrders { filter: OrderFilter, page: PageRequest } -> Page<OrderView>,
    |db, m| reads::list_orders(&db, &m.filter, m.page).await);
query!(ListNotifications { filter: NotificationFilter, page: PageRequest } -> Page<NotificationView>,
    |db, m| reads::list_notifications(&db, &m.filter, m.page).await);
query!(
    /// Orders and SMS per day in the business time zone (see `reports::stats`).
    Stats { window: super::reports::StatsWindow } -> super::reports::StatsRows,
    |db, m| super::reports::stats(&db, &m.window).await
);
query!(
    /// Which of these phones and codes customers already have.
    TakenCustomerKeys { phones: Vec<String>, codes: Vec<String> } -> super::reports::Taken,
    |db, m| super::reports::taken(&db, &m.phones, &m.codes).await
);
query!(
    /// Messages for the SMS dispatcher to send (see `reads::due_notifications`).
    DueNotifications { ids: Option<Vec<Uuid>>, now: Timestamp, horizon: Timestamp, limit: u64 }
        -> Vec<reads::DueNotification>,
    |db, m| reads::due_notifications(&db, m.ids, m.now, m.horizon, m.limit).await
);
query!(
    /// Answers when the database does, within `timeout`.
    Ping { timeout: Duration } -> (),
    |db, m| match tokio::time::timeout(m.timeout, db.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(StoreError::Unavailable(e.to_string())),
        Err(_) => Err(StoreError::Unavailable("the database did not answer in time".into())),
    }
);
query!(
    /// The live session with this id hash (`None` when unknown or expired).
    GetSession { id_hash: String } -> Option<super::entities::session::Model>,
    |db, m| {
        use super::entities::session as s;
        let row = s::Entity::find_by_id(m.id_hash).one(&db).await?;
        Ok(row.filter(|r| r.expires_at > Timestamp::now().millis()))
    }
);
query!(
    /// The last `seq` ever assigned.
    LatestSeq {} -> i64,
    |db, _m| reads::latest_seq(&db).await
);
query!(
    /// A page of the event log for a resuming live client: `after < seq <= upto`.
    EventsAfter { after: i64, upto: i64, limit: u64 } -> Vec<Event>,
    |db, m| reads::events_after(&db, m.after, m.upto, m.limit).await
);

/// Removes events older than `before` (but never the newest); answers how many went.
#[derive(Message)]
#[rtype(result = "Result<u64, StoreError>")]
pub struct PruneEvents {
    pub before: Timestamp,
}

impl Handler<PruneEvents> for Repository {
    type Result = ResponseFuture<Result<u64, StoreError>>;

    fn handle(&mut self, msg: PruneEvents, _: &mut Self::Context) -> Self::Result {
        let db = self.db.clone();
        Box::pin(async move { writes::prune_events(&db, msg.before).await })
    }
}
