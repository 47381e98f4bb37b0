//! The Reader actor answers queries. actix polls a handler's future on the arbiter of the
//! actor that received the message, so one reader would put every read on one thread:
//! instead each HTTP worker starts its own `Reader` on its own arbiter (see `lib.rs`), and
//! reads grow with the cores. All readers share the connection pool.

use super::OwnPool;
use super::entities::session;
use super::error::StoreError;
use super::reads::{self, NotificationFilter, OrderFilter, PageRequest};
use crate::domain::event::Event;
use crate::domain::time::Timestamp;
use crate::domain::views::{CustomerView, NotificationView, OrderView, Page};
use actix::prelude::*;
use sea_orm::{DatabaseConnection, EntityTrait};
use std::time::Duration;
use uuid::Uuid;

pub struct Reader {
    db: DatabaseConnection,
    /// A pool of its own to open when started (see `store::PoolPlan`).
    own_pool: Option<OwnPool>,
}

impl Reader {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db, own_pool: None }
    }

    /// Reads through a pool of its own, opened on the reader's thread (without one, or
    /// until it is open, through the shared pool).
    pub fn own_pool(mut self, pool: Option<OwnPool>) -> Self {
        self.own_pool = pool;
        self
    }
}

impl Actor for Reader {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Queries are answered concurrently; the pool bounds how many run at once.
        ctx.set_mailbox_capacity(super::repository::UNBOUNDED_MAILBOX);
        if let Some(pool) = self.own_pool.take() {
            pool.open_for(ctx, |act, db| act.db = db);
        }
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

        impl Handler<$name> for Reader {
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
    /// Messages for the SMS dispatcher to send (see `reads::due_notifications`).
    DueNotifications { now: Timestamp, horizon: Timestamp, limit: u64 }
        -> Vec<super::batch::QueuedSms>,
    |db, m| reads::due_notifications(&db, m.now, m.horizon, m.limit).await
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
    GetSession { id_hash: String } -> Option<session::Model>,
    |db, m| {
        let row = session::Entity::find_by_id(m.id_hash).one(&db).await?;
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
query!(
    /// Every retained event about an order, oldest first.
    OrderHistory { id: Uuid } -> Vec<Event>,
    |db, m| reads::order_history(&db, m.id).await
);
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
